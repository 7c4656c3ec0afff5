//! Offline notifications through WeChat subscribe messages (`docs/wechat.md`, "Offline
//! notifications"): the grants a client reports after `wx.requestSubscribeMessage` ([`grants`]),
//! the notifier that decides and sends ([`worker`]), and the message it sends ([`message`]).
//!
//! It runs inside auth, which already holds the WeChat app secret, the one access token holder of
//! the process, and the Redis where openids live; a process of its own would need all three.

pub mod grants;
pub mod message;
pub mod worker;

use std::sync::Arc;

use crate::config::Notify;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::wechat::TokenHolder;

/// Starts the notifier in the background: it opens the buckets the gateways create and its
/// consumer on stream `CHAT`, waiting for them (auth may start before any gateway), then runs
/// until the process ends.
pub fn spawn(
    settings: Notify,
    tokens: Arc<TokenHolder>,
    store: Store,
    metrics: Arc<Metrics>,
    nats: async_nats::Client,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let (notifier, consumer) = loop {
            let opened = async {
                let n = worker::Notifier::new(
                    settings.clone(),
                    tokens.clone(),
                    store.clone(),
                    metrics.clone(),
                    nats.clone(),
                )
                .await?;
                let c = n.consumer().await?;
                anyhow::Ok((n, c))
            };
            match opened.await {
                Ok(ready) => break ready,
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "notifier not ready; trying again in 5 s");
                    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                }
            }
        };
        tracing::info!(consumer = worker::CONSUMER, "notifier running");
        if let Err(e) = notifier.run(consumer).await {
            tracing::error!(error = %format!("{e:#}"), "notifier stopped");
        }
    })
}
