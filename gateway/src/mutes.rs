//! Muted conversations at the edge: `conversation_mute` writes or deletes the user's key in KV
//! bucket `mutes` (`protocol::mute`), and the conversation list marks the muted ones, read with
//! one batched direct get per list (`svc::kv::LiveKeys`). The notifier reads the same keys.

use std::collections::HashSet;
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use protocol::frame::ConvTarget;
use protocol::mute::{self, BUCKET};
use protocol::{UserId, conv::ConvItem};

/// Longest wait for one write.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// The gateway's handle on the bucket. Cheap to clone.
#[derive(Clone)]
pub struct Mutes {
    kv: kv::Store,
    live: svc::kv::LiveKeys,
}

impl Mutes {
    /// Opens bucket `mutes`, creating it when absent.
    pub async fn ensure(
        js: &jetstream::Context,
        replicas: usize,
        live: svc::kv::LiveKeys,
    ) -> anyhow::Result<Self> {
        let kv = svc::kv::open_or_create(
            js,
            kv::Config {
                bucket: BUCKET.into(),
                description: "liaotian muted conversations (protocol::mute)".into(),
                history: 1,
                storage: stream::StorageType::File,
                num_replicas: replicas,
                ..Default::default()
            },
            5,
            Duration::from_millis(100),
        )
        .await?;
        Ok(Self { kv, live })
    }

    /// Mutes or unmutes `target` for `user`.
    pub async fn set(&self, user: &UserId, target: &ConvTarget, muted: bool) -> anyhow::Result<()> {
        let key = mute::key(user, target);
        let write = async {
            if muted {
                self.kv.put(&key, bytes::Bytes::from_static(b"1")).await?;
            } else {
                // A purge, not a delete: nothing of the key stays behind.
                self.kv.purge(&key).await?;
            }
            anyhow::Ok(())
        };
        tokio::time::timeout(WRITE_TIMEOUT, write)
            .await
            .map_err(|_| anyhow::anyhow!("bucket {BUCKET} timed out"))?
    }

    /// Sets `muted` on the items of `user`'s list that they muted. A list whose mutes cannot be
    /// read is answered without them (and logged): the flag is a display hint.
    pub async fn mark(&self, user: &UserId, items: &mut [ConvItem]) {
        if items.is_empty() {
            return;
        }
        let keys = match self
            .live
            .read(BUCKET, &mute::user_filter(user), mute::MAX_PER_USER)
            .await
        {
            Ok(keys) => keys,
            Err(e) => {
                tracing::debug!(%user, error = %e, "mutes not read for a conversation list");
                return;
            }
        };
        let muted: HashSet<ConvTarget> = keys
            .iter()
            .filter_map(|k| mute::target_of_key(user, k))
            .collect();
        for item in items {
            let target = match (&item.group, &item.with) {
                (Some(g), _) => ConvTarget::Group(g.clone()),
                (None, Some(w)) => ConvTarget::With(w.clone()),
                (None, None) => continue,
            };
            item.muted = muted.contains(&target);
        }
    }
}
