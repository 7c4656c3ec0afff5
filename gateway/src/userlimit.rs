//! Per-user limits that hold across a user's connections and across gateways: at most
//! `GATEWAY_MAX_CONNS_PER_USER` open connections, and `GATEWAY_USER_SENDS_PER_SEC` sends per
//! second (a token bucket with a burst of `GATEWAY_USER_SEND_BURST`).
//!
//! Neither takes a round trip per message. The connection limit counts the user's live keys in the
//! presence bucket at the handshake (`presence::count`, one batched direct get). The send rate is a
//! token bucket per user on each gateway, shared by the user's connections there, whose rate is
//! the user's rate times this gateway's share of the user's connections (`local / total`). So
//! however the connections are spread, the shares add up to the user's rate. `total` is counted at
//! each local handshake, and again whenever a gateway announces a change for a user whose
//! connections span gateways (`UserControl::Recount` on the user's control subject, which every
//! gateway already follows), and at most every [`RECOUNT_EVERY`] while such a user sends.
//!
//! The limits are as exact as the counts. Handshakes racing on several gateways may each pass a
//! count taken before the others' keys were written, so a user may briefly hold a few connections
//! over the limit; a gateway that crashed leaves its keys until their TTL, and until then they
//! count (the limit errs on the side of refusing). A share is recomputed within a round trip of a
//! change announced elsewhere, so the combined rate overshoots by at most one burst while it is.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::UserId;
use protocol::control::UserControl;
use tokio::time::Instant;

use crate::ratelimit::TokenBucket;

/// How often a user whose connections span gateways is counted again while sending.
pub const RECOUNT_EVERY: Duration = Duration::from_secs(10);

/// The limits (from the gateway config).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    pub max_connections: usize,
    pub sends_per_sec: f64,
    pub send_burst: f64,
}

/// Why a handshake is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooMany {
    pub open: usize,
}

struct Entry {
    /// The user's connections on this gateway.
    local: usize,
    /// The user's connections in the cluster, as last counted (at least `local`).
    total: usize,
    bucket: TokenBucket,
    counted_at: Instant,
    recounting: bool,
}

impl Entry {
    /// Sets this gateway's share of the user's rate and burst after a count.
    fn resize(&mut self, s: &Settings, now: Instant) {
        let share = self.local as f64 / self.total.max(self.local).max(1) as f64;
        self.bucket.resize(
            s.sends_per_sec * share,
            (s.send_burst * share).max(1.0),
            now,
        );
    }
}

/// The per-user limits of one gateway. Cheap to clone.
#[derive(Clone)]
pub struct UserLimits {
    entries: Arc<Mutex<HashMap<UserId, Entry>>>,
    settings: Settings,
    nats: async_nats::Client,
    live: svc::kv::LiveKeys,
}

impl UserLimits {
    pub fn new(nats: async_nats::Client, live: svc::kv::LiveKeys, settings: Settings) -> Self {
        Self {
            entries: Arc::default(),
            settings,
            nats,
            live,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts `user`'s open connections at a handshake, and refuses one more when the limit is
    /// reached. Otherwise answers the count, for [`Self::open`] once the connection is set up.
    /// When the count cannot be read (NATS away), the connection is admitted: the limit is a guard
    /// against abuse, not a reason to refuse everyone while the presence bucket is unreachable.
    pub async fn check(&self, user: &UserId) -> Result<Option<usize>, TooMany> {
        let counted = match crate::presence::count::live_connections(&self.live, user).await {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::debug!(%user, error = %e, "counting connections failed; admitting");
                None
            }
        };
        match counted {
            Some(open) if open >= self.settings.max_connections => Err(TooMany { open }),
            _ => Ok(counted),
        }
    }

    /// Registers an admitted connection of `user`, counted at its handshake (`counted` connections
    /// besides it). Answers whether the user's connections span gateways: then, once the
    /// connection's presence key is written, [`Self::announce`] tells the others. A connection
    /// opened here is released with [`Self::release`].
    pub fn open(&self, user: &UserId, counted: Option<usize>) -> bool {
        let now = Instant::now();
        let mut entries = self.lock();
        let e = entries.entry(user.clone()).or_insert_with(|| Entry {
            local: 0,
            total: 0,
            bucket: TokenBucket::new(self.settings.sends_per_sec, self.settings.send_burst, now),
            counted_at: now,
            recounting: false,
        });
        e.local += 1;
        // The count was taken before this connection's key was written.
        e.total = counted.map_or(e.total + 1, |n| n + 1).max(e.local);
        e.counted_at = now;
        e.resize(&self.settings, now);
        e.total > e.local
    }

    /// Forgets one local connection of `user`, after its presence key was deleted.
    pub fn release(&self, user: &UserId) {
        let now = Instant::now();
        let spans = {
            let mut entries = self.lock();
            let Some(e) = entries.get_mut(user) else {
                return;
            };
            e.local = e.local.saturating_sub(1);
            if e.local == 0 {
                let spans = e.total > 1;
                entries.remove(user);
                spans
            } else {
                e.total = e.total.saturating_sub(1).max(e.local);
                e.resize(&self.settings, now);
                e.total > e.local
            }
        };
        if spans {
            self.announce(user);
        }
    }

    /// Takes one send of `user`; when the user's share is spent, how long until the next token.
    pub fn try_send(&self, user: &UserId, now: Instant) -> Result<(), Duration> {
        let (result, recount) = {
            let mut entries = self.lock();
            let Some(e) = entries.get_mut(user) else {
                return Ok(());
            };
            let result = if e.bucket.try_take(now) {
                Ok(())
            } else {
                Err(e.bucket.wait(now))
            };
            let recount = e.total > e.local
                && !e.recounting
                && now.saturating_duration_since(e.counted_at) >= RECOUNT_EVERY;
            if recount {
                e.recounting = true;
            }
            (result, recount)
        };
        if recount {
            self.spawn_recount(user.clone());
        }
        result
    }

    /// Another gateway changed `user`'s connections: count them again if any are here.
    pub fn on_recount(&self, user: &UserId) {
        let due = {
            let mut entries = self.lock();
            match entries.get_mut(user) {
                Some(e) if !e.recounting => {
                    e.recounting = true;
                    true
                }
                _ => false,
            }
        };
        if due {
            self.spawn_recount(user.clone());
        }
    }

    fn spawn_recount(&self, user: UserId) {
        let limits = self.clone();
        tokio::spawn(async move {
            let counted = crate::presence::count::live_connections(&limits.live, &user)
                .await
                .ok();
            let now = Instant::now();
            let mut entries = limits.lock();
            if let Some(e) = entries.get_mut(&user) {
                e.recounting = false;
                e.counted_at = now;
                if let Some(n) = counted {
                    e.total = n.max(e.local);
                    e.resize(&limits.settings, now);
                }
            }
        });
    }

    /// Tells the other gateways that `user`'s connections changed.
    pub fn announce(&self, user: &UserId) {
        let nats = self.nats.clone();
        let subject = protocol::subject::user_control_subject(user);
        let body = serde_json::to_vec(&UserControl::Recount).unwrap_or_default();
        tokio::spawn(async move {
            if let Err(e) = nats.publish(subject, body.into()).await {
                tracing::debug!(error = %e, "announcing a connection change failed");
            }
        });
    }

    /// `user`'s connections here and in the cluster, as last counted.
    pub fn share(&self, user: &UserId) -> Option<(usize, usize)> {
        self.lock().get(user).map(|e| (e.local, e.total))
    }
}
