//! Reading the live keys of a KV bucket that match a subject filter in one round trip: a batched
//! direct get of the last message of every matching subject (`multi_last`), which creates no
//! consumer. A key whose last message is a delete, a purge or an expiry marker is gone; the others
//! are live. The per-user connection count (gateway presence) and the mute list read this way.

use std::time::Duration;

use futures_util::StreamExt;

/// Longest wait for the whole answer.
const TIMEOUT: Duration = Duration::from_secs(2);

/// The keys (without the `$KV.<bucket>.` prefix) of the live entries of `bucket` whose subjects
/// match `filter` (a key pattern such as `conn.alice.*`), at most `max` messages read.
pub async fn live_keys(
    nats: &async_nats::Client,
    bucket: &str,
    filter: &str,
    max: usize,
) -> anyhow::Result<Vec<String>> {
    let prefix = format!("$KV.{bucket}.");
    let inbox = nats.new_inbox();
    let mut sub = nats.subscribe(inbox.clone()).await?;
    let body = serde_json::json!({
        "multi_last": [format!("{prefix}{filter}")],
        "batch": max,
    });
    nats.publish_with_reply(
        format!("$JS.API.DIRECT.GET.KV_{bucket}"),
        inbox,
        serde_json::to_vec(&body)?.into(),
    )
    .await?;
    let mut live = Vec::new();
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
            let subject = headers
                .and_then(|h| h.get("Nats-Subject"))
                .map(|v| v.as_str().to_owned());
            if !marker
                && !matches!(op, Some("DEL" | "PURGE"))
                && let Some(key) = subject.as_deref().and_then(|s| s.strip_prefix(&prefix))
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
    let _ = sub.unsubscribe().await;
    Ok(live)
}
