//! Opening a bucket that several processes may be first to create ([`open_or_create`]), and
//! reading the live keys of a KV bucket that match a subject filter in one round trip: a batched
//! direct get of the last message of every matching subject (`multi_last`), which creates no
//! consumer. A key whose last message is a delete, a purge or an expiry marker is gone; the others
//! are live. The per-user connection count (gateway presence), the mute list, the notifier's
//! online check and the webhook relay's presence read this way.
//!
//! Replies come on one wildcard subscription per [`LiveKeys`], routed to each read by the last
//! token of its reply subject: a read costs one request and its replies, not a subscription made
//! and dropped. (Measured: with a subscription per read, the notifier's checks made nats-server
//! spend about five times its CPU per pairs delivery; docs/benchmarks.md, tenth round.)

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;

/// Opens bucket `config.bucket`, creating it with `config` when absent. Processes starting
/// together race to create it: the loser's create fails and its next attempt reads the winner's,
/// so this tries `attempts` times, `pause` apart.
pub async fn open_or_create(
    js: &async_nats::jetstream::Context,
    config: async_nats::jetstream::kv::Config,
    attempts: u32,
    pause: Duration,
) -> anyhow::Result<async_nats::jetstream::kv::Store> {
    let name = config.bucket.clone();
    crate::retry::with_attempts(
        &format!("bucket {name}"),
        attempts,
        crate::retry::Backoff::constant(pause),
        || async {
            match js.get_key_value(&name).await {
                Ok(kv) => Ok(kv),
                Err(_) => js.create_key_value(config.clone()).await,
            }
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("bucket {name}: {e}"))
}

/// Most filters one request carries.
pub const MAX_FILTERS: usize = 64;
/// Longest wait for the whole answer.
const TIMEOUT: Duration = Duration::from_secs(2);

type Pending = Arc<Mutex<HashMap<u64, mpsc::Sender<async_nats::Message>>>>;

/// The reader. Cheap to clone; one wildcard subscription for all its reads.
#[derive(Clone)]
pub struct LiveKeys {
    nats: async_nats::Client,
    prefix: String,
    pending: Pending,
    next: Arc<AtomicU64>,
}

/// Forgets a read's route when the read ends, however it ends.
struct Route<'a>(&'a Pending, u64);

impl Drop for Route<'_> {
    fn drop(&mut self) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.1);
    }
}

impl LiveKeys {
    /// Subscribes the reply subjects and starts routing them.
    pub async fn new(nats: async_nats::Client) -> anyhow::Result<Self> {
        let prefix = format!("{}.", nats.new_inbox());
        let mut sub = nats.subscribe(format!("{prefix}*")).await?;
        let pending: Pending = Arc::default();
        let routes = pending.clone();
        let strip = prefix.clone();
        tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                let Some(id) = msg
                    .subject
                    .as_str()
                    .strip_prefix(&strip)
                    .and_then(|t| t.parse::<u64>().ok())
                else {
                    continue;
                };
                let tx = routes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&id)
                    .cloned();
                if let Some(tx) = tx {
                    // A full route belongs to a read that is giving up anyway.
                    let _ = tx.try_send(msg);
                }
            }
        });
        Ok(Self {
            nats,
            prefix,
            pending,
            next: Arc::default(),
        })
    }

    /// The keys (without the `$KV.<bucket>.` prefix) of the live entries of `bucket` whose
    /// subjects match `filter` (a key pattern such as `conn.alice.*`), at most `max` messages read.
    pub async fn read(
        &self,
        bucket: &str,
        filter: &str,
        max: usize,
    ) -> anyhow::Result<Vec<String>> {
        self.read_many(bucket, std::slice::from_ref(&filter), max)
            .await
    }

    /// [`LiveKeys::read`] for several filters in one request (at most [`MAX_FILTERS`]): the live
    /// keys matching any of them, at most `max` messages read in all. A truncated answer (more
    /// keys than `max`) returns the keys read.
    pub async fn read_many(
        &self,
        bucket: &str,
        filters: &[impl AsRef<str>],
        max: usize,
    ) -> anyhow::Result<Vec<String>> {
        anyhow::ensure!(
            !filters.is_empty() && filters.len() <= MAX_FILTERS,
            "1 to {MAX_FILTERS} filters, not {}",
            filters.len()
        );
        let key_prefix = format!("$KV.{bucket}.");
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::channel(max + 2);
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        let _route = Route(&self.pending, id);
        let body = serde_json::json!({
            "multi_last": filters
                .iter()
                .map(|f| format!("{key_prefix}{}", f.as_ref()))
                .collect::<Vec<_>>(),
            "batch": max,
        });
        self.nats
            .publish_with_reply(
                format!("$JS.API.DIRECT.GET.KV_{bucket}"),
                format!("{}{id}", self.prefix),
                serde_json::to_vec(&body)?.into(),
            )
            .await?;
        let mut live = Vec::new();
        let read = async {
            while let Some(msg) = rx.recv().await {
                // The end of the batch (204), or no key at all (404).
                if msg.status.is_some() {
                    break;
                }
                let headers = msg.headers.as_ref();
                let op = headers
                    .and_then(|h| h.get("KV-Operation"))
                    .map(|v| v.as_str());
                let marker = headers.and_then(|h| h.get("Nats-Marker-Reason")).is_some();
                let subject = headers
                    .and_then(|h| h.get("Nats-Subject"))
                    .map(|v| v.as_str().to_owned());
                if !marker
                    && !matches!(op, Some("DEL" | "PURGE"))
                    && let Some(key) = subject.as_deref().and_then(|s| s.strip_prefix(&key_prefix))
                {
                    live.push(key.to_owned());
                }
                let pending = headers
                    .and_then(|h| h.get("Nats-Num-Pending"))
                    .and_then(|v| v.as_str().parse::<u64>().ok());
                if pending == Some(0) {
                    break;
                }
            }
            anyhow::Ok(())
        };
        tokio::time::timeout(TIMEOUT, read)
            .await
            .map_err(|_| anyhow::anyhow!("no complete answer within {TIMEOUT:?}"))??;
        Ok(live)
    }
}
