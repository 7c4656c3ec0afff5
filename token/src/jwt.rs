//! Ed25519-signed JWTs (`alg: EdDSA`, RFC 8037).
//!
//! The auth service signs with [`Signer`]; gateways check with [`KeySet::verify`], which needs only public
//! keys and makes no call per connection. [`VerifiedClaims`] can be made only by a successful verify, so a
//! function that takes it knows the token was checked.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
pub use ed25519_dalek::VerifyingKey;
use ed25519_dalek::{Signature, Signer as _, SigningKey};
use protocol::UserId;
use serde::{Deserialize, Serialize};

/// Allowed clock difference between the auth service and a gateway, in seconds.
pub const CLOCK_SKEW_SECS: u64 = 30;

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub iat: u64,
    pub exp: u64,
    pub iss: String,
    pub kid: String,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: String,
}

/// Claims of a token whose signature, issuer and expiry were checked.
#[derive(Debug, Clone)]
pub struct VerifiedClaims {
    user: UserId,
    exp: u64,
    iat: u64,
    /// Answered from the cache of tokens verified before (see [`crate::cache`]).
    cached: bool,
}

impl VerifiedClaims {
    pub fn user(&self) -> &UserId {
        &self.user
    }

    /// Expiry, in seconds since the Unix epoch.
    pub fn exp(&self) -> u64 {
        self.exp
    }

    /// Issue time, in seconds since the Unix epoch: what a revocation's "not before" is checked
    /// against.
    pub fn iat(&self) -> u64 {
        self.iat
    }

    /// Whether the token was verified before and this answer came from the cache.
    pub fn from_cache(&self) -> bool {
        self.cached
    }
}

/// Why a token was refused. Every variant is a client fault (HTTP 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("token is malformed")]
    Malformed,
    #[error("token uses an unsupported algorithm")]
    Algorithm,
    #[error("token is signed with an unknown key")]
    UnknownKey,
    #[error("token signature is invalid")]
    Signature,
    #[error("token was issued by someone else")]
    Issuer,
    #[error("token has expired")]
    Expired,
    #[error("token is issued in the future")]
    IssuedInFuture,
    #[error("token subject is not a valid user id")]
    Subject,
}

/// A private signing key with its key id.
#[derive(Clone)]
pub struct Signer {
    kid: String,
    key: SigningKey,
    issuer: String,
    /// The token header, encoded once: it is the same for every token of this key, and `sign`
    /// cannot emit an empty one.
    head: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("kid", &self.kid)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl Signer {
    /// A signer from a 32-byte Ed25519 seed. The key id is derived from the public key, so the same
    /// seed always gets the same `kid`.
    pub fn from_seed(seed: &[u8; 32], issuer: impl Into<String>) -> Self {
        let key = SigningKey::from_bytes(seed);
        let kid = kid_of(&key.verifying_key());
        // The kid is base64url, so it needs no JSON escaping.
        let head = B64.encode(format!(r#"{{"alg":"EdDSA","typ":"JWT","kid":"{kid}"}}"#));
        Self {
            kid,
            key,
            issuer: issuer.into(),
            head,
        }
    }

    /// A signer with a fresh random key.
    pub fn generate(issuer: impl Into<String>) -> Self {
        Self::from_seed(&rand::random::<[u8; 32]>(), issuer)
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn public_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// Signs an access token for `user`, valid from `now` for `ttl_secs`.
    pub fn issue(&self, user: &UserId, now: u64, ttl_secs: u64) -> String {
        let claims = Claims {
            sub: user.to_string(),
            iat: now,
            exp: now + ttl_secs,
            iss: self.issuer.clone(),
            kid: self.kid.clone(),
        };
        self.sign(&claims)
    }

    /// Signs arbitrary claims; tests use it to make expired or foreign tokens.
    pub fn sign(&self, claims: &Claims) -> String {
        let body = serde_json::to_vec(claims)
            .unwrap_or_else(|e| unreachable!("strings and integers always serialize: {e}"));
        self.sign_parts(&self.head, &B64.encode(body))
    }

    /// `<head>.<body>.<signature>` over the two encoded parts (RFC 7515's compact form).
    fn sign_parts(&self, head: &str, body: &str) -> String {
        let signing_input = format!("{head}.{body}");
        let sig = self.key.sign(signing_input.as_bytes());
        format!("{signing_input}.{}", B64.encode(sig.to_bytes()))
    }
}

/// The key id of a public key: the first 8 bytes of the key, base64url. Stable and short.
pub fn kid_of(key: &VerifyingKey) -> String {
    B64.encode(&key.as_bytes()[..8])
}

/// The public keys a gateway accepts, by key id. Shared and swappable at run time, so keys can rotate
/// without a restart.
#[derive(Clone, Debug)]
pub struct KeySet {
    issuer: String,
    keys: Arc<RwLock<HashMap<String, VerifyingKey>>>,
    /// Tokens verified lately, emptied when the keys change.
    verified: Arc<Mutex<crate::cache::Verified>>,
}

impl KeySet {
    pub fn new(issuer: impl Into<String>) -> Self {
        Self {
            issuer: issuer.into(),
            keys: Arc::default(),
            verified: Arc::default(),
        }
    }

    /// The same, with a cache of verified tokens holding at most `capacity` (tests).
    pub fn with_cache_capacity(issuer: impl Into<String>, capacity: usize) -> Self {
        Self {
            verified: Arc::new(Mutex::new(crate::cache::Verified::with_capacity(capacity))),
            ..Self::new(issuer)
        }
    }

    /// Replaces the accepted keys. A change empties the cache of verified tokens, so tokens of a
    /// withdrawn key are refused from now on.
    pub fn replace(&self, keys: impl IntoIterator<Item = (String, VerifyingKey)>) {
        let map: HashMap<_, _> = keys.into_iter().collect();
        let mut held = self.keys.write().unwrap_or_else(|e| e.into_inner());
        if *held != map {
            *held = map;
            self.verified
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
        }
    }

    pub fn insert(&self, kid: String, key: VerifyingKey) {
        let mut held = self.keys.write().unwrap_or_else(|e| e.into_inner());
        if held.insert(kid, key) != Some(key) {
            self.verified
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
        }
    }

    pub fn kids(&self) -> Vec<String> {
        let mut v: Vec<_> = self
            .keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        v.sort();
        v
    }

    pub fn is_empty(&self) -> bool {
        self.keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    /// Checks the signature, issuer and expiry of `token` at time `now` (seconds since the epoch).
    ///
    /// A token verified before and not yet expired is answered from the cache (see
    /// [`crate::cache`]) without checking its signature again.
    pub fn verify(&self, token: &str, now: u64) -> Result<VerifiedClaims, VerifyError> {
        let key = crate::cache::key(token);
        let (cached, generation) = {
            let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
            let hit = verified.get(&key, |exp| exp.saturating_add(CLOCK_SKEW_SECS) > now);
            (hit, verified.generation())
        };
        if let Some((user, exp, iat)) = cached {
            return Ok(VerifiedClaims {
                user,
                exp,
                iat,
                cached: true,
            });
        }
        let claims = self.verify_uncached(token, now)?;
        self.verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(generation, key, claims.user.clone(), claims.exp, claims.iat);
        Ok(claims)
    }

    fn verify_uncached(&self, token: &str, now: u64) -> Result<VerifiedClaims, VerifyError> {
        let mut parts = token.split('.');
        let (Some(head), Some(body), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(VerifyError::Malformed);
        };
        let header: Header = decode_json(head)?;
        if header.alg != "EdDSA" {
            return Err(VerifyError::Algorithm);
        }
        let key = *self
            .keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&header.kid)
            .ok_or(VerifyError::UnknownKey)?;
        let sig_bytes = B64.decode(sig).map_err(|_| VerifyError::Malformed)?;
        let sig = Signature::from_slice(&sig_bytes).map_err(|_| VerifyError::Malformed)?;
        let signing_input = &token[..head.len() + 1 + body.len()];
        key.verify_strict(signing_input.as_bytes(), &sig)
            .map_err(|_| VerifyError::Signature)?;
        let claims: Claims = decode_json(body)?;
        if claims.iss != self.issuer {
            return Err(VerifyError::Issuer);
        }
        // Saturating: `exp` and `iat` are whatever the token says, up to `u64::MAX`.
        if claims.exp.saturating_add(CLOCK_SKEW_SECS) <= now {
            return Err(VerifyError::Expired);
        }
        if claims.iat > now.saturating_add(CLOCK_SKEW_SECS) {
            return Err(VerifyError::IssuedInFuture);
        }
        let user = UserId::parse(claims.sub).map_err(|_| VerifyError::Subject)?;
        Ok(VerifiedClaims {
            user,
            exp: claims.exp,
            iat: claims.iat,
            cached: false,
        })
    }
}

fn decode_json<T: serde::de::DeserializeOwned>(part: &str) -> Result<T, VerifyError> {
    let bytes = B64.decode(part).map_err(|_| VerifyError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| VerifyError::Malformed)
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (Signer, KeySet, UserId) {
        let signer = Signer::generate("liaotian");
        let keys = KeySet::new("liaotian");
        keys.insert(signer.kid().to_owned(), signer.public_key());
        (signer, keys, UserId::parse("alice").unwrap())
    }

    #[test]
    fn issued_tokens_verify() {
        let (signer, keys, alice) = setup();
        let t = signer.issue(&alice, 1000, 60);
        let c = keys.verify(&t, 1010).unwrap();
        assert_eq!(c.user(), &alice);
        assert_eq!(c.exp(), 1060);
    }

    #[test]
    fn a_token_verified_again_comes_from_the_cache_until_it_expires() {
        let (signer, keys, alice) = setup();
        let t = signer.issue(&alice, 1000, 60);
        assert!(!keys.verify(&t, 1000).unwrap().from_cache());
        let again = keys.verify(&t, 1050).unwrap();
        assert_eq!(
            (again.user(), again.exp(), again.from_cache()),
            (&alice, 1060, true)
        );
        // Expiry is checked on every hit, with the same skew as a full verify.
        assert_eq!(
            keys.verify(&t, 1060 + CLOCK_SKEW_SECS).unwrap_err(),
            VerifyError::Expired
        );
    }

    #[test]
    fn only_the_same_bytes_hit_the_cache() {
        let (signer, keys, alice) = setup();
        let t = signer.issue(&alice, 1000, 60);
        keys.verify(&t, 1000).unwrap();
        // A signature with its last character changed is a different token: checked, and refused.
        let mut forged = t.clone();
        let last = forged.pop().unwrap();
        forged.push(if last == 'A' { 'B' } else { 'A' });
        assert!(keys.verify(&forged, 1000).is_err());
    }

    #[test]
    fn a_key_change_empties_the_cache() {
        let (signer, keys, alice) = setup();
        let t = signer.issue(&alice, 1000, 60);
        keys.verify(&t, 1000).unwrap();
        // The same keys again (a periodic refresh) keep it.
        keys.replace([(signer.kid().to_owned(), signer.public_key())]);
        assert!(keys.verify(&t, 1000).unwrap().from_cache());
        // The key withdrawn: its token is refused at once, not served from the cache.
        let next = Signer::generate("liaotian");
        keys.replace([(next.kid().to_owned(), next.public_key())]);
        assert_eq!(keys.verify(&t, 1000).unwrap_err(), VerifyError::UnknownKey);
    }

    #[test]
    fn the_cache_holds_at_most_its_capacity_oldest_out() {
        let signer = Signer::generate("liaotian");
        let keys = KeySet::with_cache_capacity("liaotian", 4);
        keys.insert(signer.kid().to_owned(), signer.public_key());
        let tokens: Vec<_> = (0..5)
            .map(|i| signer.issue(&UserId::parse(format!("u{i}")).unwrap(), 1000, 60))
            .collect();
        for t in &tokens {
            keys.verify(t, 1000).unwrap();
        }
        assert_eq!(keys.verified.lock().unwrap().len(), 4);
        assert!(
            keys.verify(&tokens[4], 1000).unwrap().from_cache(),
            "the newest is held"
        );
        assert!(
            !keys.verify(&tokens[0], 1000).unwrap().from_cache(),
            "the oldest was evicted"
        );
    }

    #[test]
    fn refuses_expired_foreign_and_tampered_tokens() {
        let (signer, keys, alice) = setup();
        let t = signer.issue(&alice, 1000, 60);
        assert_eq!(
            keys.verify(&t, 1060 + CLOCK_SKEW_SECS).unwrap_err(),
            VerifyError::Expired
        );
        let other = Signer::generate("liaotian");
        assert_eq!(
            keys.verify(&other.issue(&alice, 1000, 60), 1000)
                .unwrap_err(),
            VerifyError::UnknownKey
        );
        let wrong_iss = Signer::from_seed(&[7; 32], "someone-else");
        keys.insert(wrong_iss.kid().to_owned(), wrong_iss.public_key());
        assert_eq!(
            keys.verify(&wrong_iss.issue(&alice, 1000, 60), 1000)
                .unwrap_err(),
            VerifyError::Issuer
        );
        // Swap the body for another user's, keeping the signature.
        let bob = signer.issue(&UserId::parse("bob").unwrap(), 1000, 60);
        let forged: Vec<&str> = t.split('.').collect();
        let bob_body = bob.split('.').nth(1).unwrap();
        let forged = format!("{}.{}.{}", forged[0], bob_body, forged[2]);
        assert_eq!(
            keys.verify(&forged, 1000).unwrap_err(),
            VerifyError::Signature
        );
        assert_eq!(
            keys.verify("a.b", 1000).unwrap_err(),
            VerifyError::Malformed
        );
        assert_eq!(keys.verify("", 1000).unwrap_err(), VerifyError::Malformed);
    }

    // Proves a token issued later than the clock skew allows is refused, and one within it is not.
    #[test]
    fn refuses_tokens_issued_in_the_future() {
        let (signer, keys, alice) = setup();
        let t = signer.issue(&alice, 1000 + CLOCK_SKEW_SECS + 1, 60);
        assert_eq!(
            keys.verify(&t, 1000).unwrap_err(),
            VerifyError::IssuedInFuture
        );
        let within = signer.issue(&alice, 1000 + CLOCK_SKEW_SECS, 60);
        assert!(keys.verify(&within, 1000).is_ok());
    }

    // Proves every token carries the full header, and a token whose header names another
    // algorithm or is missing is refused.
    #[test]
    fn header_is_never_empty_and_is_checked() {
        let (signer, keys, alice) = setup();
        let t = signer.issue(&alice, 1000, 60);
        let head = t.split('.').next().unwrap();
        let header: serde_json::Value = serde_json::from_slice(&B64.decode(head).unwrap()).unwrap();
        assert_eq!(
            header,
            serde_json::json!({"alg": "EdDSA", "typ": "JWT", "kid": signer.kid()})
        );
        let body = t.split('.').nth(1).unwrap();
        let none = signer.sign_parts(&B64.encode(br#"{"alg":"none"}"#), body);
        assert_eq!(
            keys.verify(&none, 1000).unwrap_err(),
            VerifyError::Algorithm
        );
        let empty = signer.sign_parts("", body);
        assert_eq!(
            keys.verify(&empty, 1000).unwrap_err(),
            VerifyError::Malformed
        );
    }

    // Proves a signed token whose `exp` is near `u64::MAX` is accepted without overflow, also from
    // the cache: the fuzz target `token_verify` found `exp + skew` panicking on it.
    #[test]
    fn expiry_at_the_end_of_time_does_not_overflow() {
        let (signer, keys, alice) = setup();
        let claims = |exp| Claims {
            sub: alice.to_string(),
            iat: 1000,
            exp,
            iss: "liaotian".into(),
            kid: signer.kid().to_owned(),
        };
        for exp in [u64::MAX - CLOCK_SKEW_SECS + 1, u64::MAX] {
            let t = signer.sign(&claims(exp));
            let first = keys.verify(&t, 1000).unwrap();
            assert_eq!((first.exp(), first.from_cache()), (exp, false));
            assert!(keys.verify(&t, 1000).unwrap().from_cache());
        }
    }

    /// RFC 8037, appendix A.1: the Ed25519 private key `d` and its public key `x`.
    const RFC8037_D: &str = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A";
    const RFC8037_X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
    /// RFC 8037, appendix A.4: the JWS of "Example of Ed25519 signing" with header `{"alg":"EdDSA"}`.
    const RFC8037_JWS: &str = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc.hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg";

    // Proves the signing and the key encoding are RFC 8037's: its key pair and its signature.
    #[test]
    fn rfc8037_test_vectors() {
        let seed: [u8; 32] = B64.decode(RFC8037_D).unwrap().try_into().unwrap();
        let signer = Signer::from_seed(&seed, "i");
        assert_eq!(B64.encode(signer.public_key().as_bytes()), RFC8037_X);
        let mut parts = RFC8037_JWS.split('.');
        let (head, body) = (parts.next().unwrap(), parts.next().unwrap());
        assert_eq!(signer.sign_parts(head, body), RFC8037_JWS);
        let jwk = crate::Jwk::ed25519("k", &signer.public_key());
        assert_eq!(jwk.x, RFC8037_X);
        // Verification accepts the RFC's own signature, checked byte for byte by verify_strict.
        let sig = Signature::from_slice(&B64.decode(parts.next().unwrap()).unwrap()).unwrap();
        let input = &RFC8037_JWS[..head.len() + 1 + body.len()];
        assert!(
            signer
                .public_key()
                .verify_strict(input.as_bytes(), &sig)
                .is_ok()
        );
    }

    #[test]
    fn kid_is_stable_per_seed() {
        assert_eq!(
            Signer::from_seed(&[1; 32], "i").kid(),
            Signer::from_seed(&[1; 32], "i").kid()
        );
        assert_ne!(
            Signer::from_seed(&[1; 32], "i").kid(),
            Signer::from_seed(&[2; 32], "i").kid()
        );
    }
}
