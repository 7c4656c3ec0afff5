//! Counting a user's open connections across the cluster in one round trip: a batched direct get
//! of the last message of every `conn.<user>.*` subject of the presence stream (`multi_last`),
//! which creates no consumer. Keys whose last message is a delete or an expiry marker are gone;
//! the others are live connections. This is what the per-user connection limit reads at each
//! handshake (`userlimit.rs`).

use std::time::Duration;

use futures_util::StreamExt;
use protocol::UserId;
use protocol::presence as keys;

/// Most messages one count reads: live keys and the markers of closed connections. A user with
/// more is counted as having this many.
pub const MAX_COUNTED: usize = 256;
/// Longest wait for the whole answer.
const COUNT_TIMEOUT: Duration = Duration::from_secs(2);

/// The number of `user`'s live connection keys, at most [`MAX_COUNTED`].
pub async fn live_connections(nats: &async_nats::Client, user: &UserId) -> anyhow::Result<usize> {
    let inbox = nats.new_inbox();
    let mut sub = nats.subscribe(inbox.clone()).await?;
    let body = serde_json::json!({
        "multi_last": [format!("{}conn.{user}.*", keys::KEY_PREFIX)],
        "batch": MAX_COUNTED,
    });
    nats.publish_with_reply(
        format!("$JS.API.DIRECT.GET.{}", keys::STREAM),
        inbox,
        serde_json::to_vec(&body)?.into(),
    )
    .await?;
    let mut live = 0;
    let read = async {
        while let Some(msg) = sub.next().await {
            // The end of the batch (204), or no key at all (404).
            if msg.status.is_some() {
                break;
            }
            let headers = msg.headers.as_ref();
            let op = headers
                .and_then(|h| h.get("KV-Operation"))
                .map(|v| v.as_str());
            let marker = headers.and_then(|h| h.get("Nats-Marker-Reason")).is_some();
            if !marker && !matches!(op, Some("DEL" | "PURGE")) {
                live += 1;
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
    tokio::time::timeout(COUNT_TIMEOUT, read)
        .await
        .map_err(|_| anyhow::anyhow!("no complete answer within {COUNT_TIMEOUT:?}"))??;
    let _ = sub.unsubscribe().await;
    Ok(live)
}
