//! Who may connect: the gateway's copy of KV bucket `access` (`protocol::access`), so that a
//! handshake refuses a revoked token or a banned user with no round trip, and a ban closes the
//! user's sockets here as soon as it is written anywhere.
//!
//! One watch holds the whole bucket in memory: its records are recent revocations (which expire
//! with the tokens they refuse) and standing bans, at most [`MAX_RECORDS`]. The gateway is not
//! ready until the watch has read the bucket once, so no handshake is checked against a partial
//! copy. After a watch fails (a NATS outage), it is made again and reads every record anew; a
//! record that went meanwhile stays until then, which can only refuse more, never less.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use futures_util::StreamExt;
use protocol::UserId;
use protocol::access::{BUCKET, Record, user_of_key};

use crate::conn::close_code;
use crate::hub::Hub;

/// Records held at most. Past it a new record is still applied (a ban must hold), with an error
/// logged: the bucket should hold only a TTL's worth of revocations and the bans.
pub const MAX_RECORDS: usize = 1_000_000;
/// Pause before a failed watch is made again.
const WATCH_RETRY: Duration = Duration::from_millis(500);
/// How long a bucket's delete marker is kept (records that only revoke expire with a TTL).
const MARKER_TTL: Duration = Duration::from_secs(60);
/// While the first read is under way, a watch that delivers nothing for this long has nothing left.
const QUIET: Duration = Duration::from_secs(2);
/// Tries at creating the bucket, for gateways starting together.
const ENSURE_ATTEMPTS: u32 = 10;

/// Why a handshake is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The token was issued before the user's `not_before`.
    Revoked,
    /// The user is banned.
    Banned,
}

/// Cheap to clone.
#[derive(Clone, Default)]
pub struct Access {
    records: Arc<RwLock<HashMap<UserId, Record>>>,
}

impl Access {
    /// Why a token of `user` issued at `iat` is refused, if it is.
    pub fn refusal(&self, user: &UserId, iat: u64) -> Option<Refusal> {
        let records = self.records.read().unwrap_or_else(|e| e.into_inner());
        let r = records.get(user)?;
        if r.banned {
            Some(Refusal::Banned)
        } else if r.refuses(iat) {
            Some(Refusal::Revoked)
        } else {
            None
        }
    }

    /// Opens bucket `access` (creating it when absent), reads it, and keeps following it; returns
    /// once the first read is complete. A record that bans a user closes their local sockets.
    pub async fn start(
        js: &jetstream::Context,
        replicas: usize,
        hub: Hub,
    ) -> anyhow::Result<(Self, tokio::task::JoinHandle<()>)> {
        let kv = ensure_bucket(js, replicas).await?;
        let access = Self::default();
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(access.clone().follow(kv, hub, ready_tx));
        tokio::time::timeout(Duration::from_secs(30), ready)
            .await
            .map_err(|_| anyhow::anyhow!("bucket {BUCKET} could not be read within 30 s"))??;
        Ok((access, task))
    }

    async fn follow(self, kv: kv::Store, hub: Hub, ready: tokio::sync::oneshot::Sender<()>) {
        let mut ready = Some(ready);
        loop {
            if let Err(e) = self.watch_once(&kv, &hub, &mut ready).await {
                tracing::warn!(error = %e, "access watch failed; making it again");
            }
            tokio::time::sleep(WATCH_RETRY).await;
        }
    }

    /// Reads every record, then applies changes until the watch ends.
    async fn watch_once(
        &self,
        kv: &kv::Store,
        hub: &Hub,
        ready: &mut Option<tokio::sync::oneshot::Sender<()>>,
    ) -> anyhow::Result<()> {
        let empty = kv.status().await?.values() == 0;
        let mut watch = kv.watch_with_history(">").await?;
        if empty && let Some(tx) = ready.take() {
            let _ = tx.send(());
        }
        let mut seen = ready.is_none().then(std::collections::HashSet::new);
        loop {
            // Until the first read is complete, a quiet watch means the records counted a moment
            // ago have expired meanwhile: nothing is left to read.
            let next = if ready.is_some() {
                match tokio::time::timeout(QUIET, watch.next()).await {
                    Ok(next) => next,
                    Err(_) => {
                        if let Some(tx) = ready.take() {
                            let _ = tx.send(());
                        }
                        continue;
                    }
                }
            } else {
                watch.next().await
            };
            let Some(entry) = next else { break };
            let entry = entry?;
            let Some(user) = user_of_key(&entry.key) else {
                continue;
            };
            if let Some(seen) = &mut seen {
                seen.insert(user.clone());
            }
            self.apply(&user, &entry, hub);
            if entry.delta == 0 {
                if let Some(tx) = ready.take() {
                    let _ = tx.send(());
                }
                // A watch made again has read the bucket anew: what it did not see is gone.
                if let Some(seen) = seen.take() {
                    self.records
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .retain(|u, _| seen.contains(u));
                }
            }
        }
        anyhow::bail!("the watch ended")
    }

    fn apply(&self, user: &UserId, entry: &kv::Entry, hub: &Hub) {
        let record = match entry.operation {
            kv::Operation::Put => match serde_json::from_slice::<Record>(&entry.value) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!(key = %entry.key, error = %e, "unreadable access record ignored");
                    return;
                }
            },
            kv::Operation::Delete | kv::Operation::Purge => None,
        };
        let mut records = self.records.write().unwrap_or_else(|e| e.into_inner());
        let was_banned = records.get(user).is_some_and(|r| r.banned);
        match record {
            Some(r) => {
                if records.len() >= MAX_RECORDS && !records.contains_key(user) {
                    tracing::error!(
                        max = MAX_RECORDS,
                        "bucket access holds more records than expected"
                    );
                }
                records.insert(user.clone(), r);
                drop(records);
                if r.banned && !was_banned {
                    let closed = hub.close_user(user, close_code::BANNED, "banned");
                    tracing::info!(%user, closed, "banned: closing the user's sockets");
                }
            }
            None => {
                records.remove(user);
            }
        }
    }
}

/// Opens bucket `access`, creating it when absent (gateways and the admin service starting
/// together race to; the loser reads the winner's).
pub async fn ensure_bucket(js: &jetstream::Context, replicas: usize) -> anyhow::Result<kv::Store> {
    svc::kv::open_or_create(
        js,
        kv::Config {
            bucket: BUCKET.into(),
            description: "liaotian access records (protocol::access)".into(),
            history: 1,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            // Per-key TTLs (revocations expire with their tokens).
            limit_markers: Some(MARKER_TTL),
            ..Default::default()
        },
        ENSURE_ATTEMPTS,
        Duration::from_millis(100),
    )
    .await
}
