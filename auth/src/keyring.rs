//! The signing key and the keys served at `GET /api/keys`.
//!
//! Rotation: `AUTH_KEY_FILE` holds the current seed and `AUTH_PREVIOUS_KEY_FILES` older ones. A reload
//! (SIGHUP, or [`KeyRing::reload`]) reads them again. A new current key is served at once but signs only
//! after `AUTH_KEY_ACTIVATION_DELAY_SECS`, so every gateway has fetched it before it sees a token it
//! signed; the old current key keeps being served, and so do the previous ones.

use std::sync::{Arc, RwLock};
use tokio::time::Instant;

use crate::{Config, Signer};
use token::{Jwk, JwkSet};
use token::{KeySet, VerifyingKey, kid_of};

struct Ring {
    /// The key that signs now.
    active: Signer,
    /// A new key, served now, signing from the instant given.
    pending: Option<(Signer, Instant)>,
    /// Keys only served (and accepted by [`KeyRing::verifier`]).
    previous: Vec<VerifyingKey>,
}

#[derive(Clone)]
pub struct KeyRing {
    ring: Arc<RwLock<Ring>>,
}

impl KeyRing {
    /// Loads the keys of `config`; the current key signs at once.
    pub fn load(config: &Config) -> anyhow::Result<Self> {
        let active = config.signer()?;
        let previous = config.previous_keys()?;
        Ok(Self {
            ring: Arc::new(RwLock::new(Ring {
                active,
                pending: None,
                previous,
            })),
        })
    }

    /// Reads the key files of `config` again. A changed current key becomes pending for
    /// `config.key_activation_delay`.
    pub fn reload(&self, config: &Config) -> anyhow::Result<()> {
        if matches!(config.key, crate::config::KeySource::Ephemeral) {
            // An ephemeral key exists only in memory: there is nothing to read again.
            return Ok(());
        }
        let current = config.signer()?;
        let previous = config.previous_keys()?;
        let mut ring = self.ring.write().unwrap_or_else(|e| e.into_inner());
        promote(&mut ring);
        if current.kid() != ring.active.kid() {
            tracing::info!(
                kid = current.kid(),
                delay_secs = config.key_activation_delay.as_secs(),
                "new signing key: served now, signing after the activation delay"
            );
            ring.pending = Some((current, Instant::now() + config.key_activation_delay));
        } else {
            ring.pending = None;
        }
        ring.previous = previous;
        Ok(())
    }

    /// The key to sign with now.
    pub fn signer(&self) -> Signer {
        {
            let ring = self.ring.read().unwrap_or_else(|e| e.into_inner());
            match &ring.pending {
                Some((_, at)) if Instant::now() >= *at => {}
                _ => return ring.active.clone(),
            }
        }
        let mut ring = self.ring.write().unwrap_or_else(|e| e.into_inner());
        promote(&mut ring);
        ring.active.clone()
    }

    /// Every served public key, the signing one first, without duplicates.
    pub fn public_keys(&self) -> Vec<VerifyingKey> {
        let ring = self.ring.read().unwrap_or_else(|e| e.into_inner());
        let mut keys = vec![ring.active.public_key()];
        if let Some((s, _)) = &ring.pending {
            keys.push(s.public_key());
        }
        keys.extend(ring.previous.iter().copied());
        let mut seen = std::collections::HashSet::new();
        keys.retain(|k| seen.insert(*k.as_bytes()));
        keys
    }

    /// The JWK set of `GET /api/keys`.
    pub fn jwks(&self) -> JwkSet {
        JwkSet {
            keys: self
                .public_keys()
                .iter()
                .map(|k| Jwk::ed25519(&kid_of(k), k))
                .collect(),
        }
    }

    /// A verifier accepting every served key, for tokens presented to auth itself (logout).
    pub fn verifier(&self) -> KeySet {
        let ring = self.ring.read().unwrap_or_else(|e| e.into_inner());
        let issuer = ring.active.issuer().to_owned();
        drop(ring);
        let set = KeySet::new(issuer);
        set.replace(self.public_keys().into_iter().map(|k| (kid_of(&k), k)));
        set
    }
}

/// Makes a pending key active once its time has come; the old active key stays served.
fn promote(ring: &mut Ring) {
    if let Some((_, at)) = &ring.pending
        && Instant::now() >= *at
        && let Some((next, _)) = ring.pending.take()
    {
        let old = std::mem::replace(&mut ring.active, next);
        ring.previous.insert(0, old.public_key());
        tracing::info!(kid = ring.active.kid(), "signing with the new key");
    }
}
