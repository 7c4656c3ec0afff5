//! The one way the services connect to NATS, so they all behave alike when NATS is away: each
//! accepts a comma-separated list of servers and tries them in the order given (the first is the
//! service's home node in a cluster; async-nats would otherwise pick one at random, so two gateways
//! meant for different nodes could share one), keeps trying when NATS is not up at start
//! (`retry_on_initial_connect`), reconnects without limit with a backoff of 100 ms doubling up to
//! [`MAX_RECONNECT_DELAY`], jittered so that a fleet does not reconnect in step, and logs
//! `NATS disconnected` / `NATS connected`.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use protocol::stream::StreamSettings;
use protocol::subject;
use tokio::sync::watch;

/// Longest pause between reconnect attempts.
pub const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(2);
/// Longest wait for one server to accept a connection before the next one in the list is tried.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// First pause between reconnect attempts; it doubles up to [`MAX_RECONNECT_DELAY`].
const FIRST_RECONNECT_DELAY: Duration = Duration::from_millis(100);

/// Why a NATS connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{url} is not a comma-separated list of NATS URLs")]
    Url {
        url: String,
        #[source]
        source: async_nats::Error,
    },
    #[error("connecting to NATS at {url}")]
    Connect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
}

/// A client and the count of its connections: the count goes up each time the client
/// (re)connects, so tasks that must redo work after a reconnect can follow it.
pub struct Connection {
    pub client: async_nats::Client,
    pub connects: watch::Receiver<u64>,
}

/// Connects to the servers in `url` (comma-separated) as client `name`.
pub async fn connect(url: &str, name: &str) -> Result<Connection, ConnectError> {
    let servers = url
        .split(',')
        .map(|u| u.trim().parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConnectError::Url {
            url: url.to_owned(),
            source: e.into(),
        })?;
    let (tx, connects) = watch::channel(0u64);
    let tx = Arc::new(tx);
    let client = async_nats::ConnectOptions::new()
        .name(name)
        .retain_servers_order()
        // Kept order means a reconnect tries the lost home node first; a host that is gone
        // without resetting connections must not cost async-nats's default 5 s per attempt.
        .connection_timeout(CONNECT_TIMEOUT)
        .reconnect_delay_callback(reconnect_delay)
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                match event {
                    async_nats::Event::Disconnected => tracing::warn!("NATS disconnected"),
                    async_nats::Event::Connected => {
                        tracing::info!("NATS connected");
                        tx.send_modify(|n| *n += 1);
                    }
                    other => tracing::debug!(event = %other, "NATS event"),
                }
            }
        })
        .retry_on_initial_connect()
        .connect(servers)
        .await
        .map_err(|source| ConnectError::Connect {
            url: url.to_owned(),
            source,
        })?;
    Ok(Connection { client, connects })
}

/// Why a service endpoint's subscription could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    #[error("subscribing {subject}")]
    Subscribe {
        subject: &'static str,
        #[source]
        source: async_nats::SubscribeError,
    },
    #[error("registering the subscription to {subject}")]
    Register {
        subject: &'static str,
        #[source]
        source: async_nats::client::FlushError,
    },
}

/// Subscribes `subject` in queue group `queue` and returns once the server has registered the
/// subscription (a flush round trip): a request sent after this returns finds this responder,
/// never "no responders". The services' request/reply endpoints start this way.
pub async fn queue_subscribe(
    client: &async_nats::Client,
    subject: &'static str,
    queue: &str,
) -> Result<async_nats::Subscriber, SubscribeError> {
    let sub = client
        .queue_subscribe(subject, queue.to_owned())
        .await
        .map_err(|source| SubscribeError::Subscribe { subject, source })?;
    client
        .flush()
        .await
        .map_err(|source| SubscribeError::Register { subject, source })?;
    Ok(sub)
}

/// Stream `CHAT` as the NATS client wants it, from its one definition in `protocol::stream`.
pub fn chat_stream_config(s: &StreamSettings) -> stream::Config {
    stream::Config {
        name: s.name().to_owned(),
        description: Some(protocol::stream::DESCRIPTION.to_owned()),
        subjects: vec![subject::INGEST_WILDCARD.to_owned()],
        republish: Some(stream::Republish {
            source: subject::INGEST_WILDCARD.to_owned(),
            destination: subject::DELIVER_WILDCARD.to_owned(),
            headers_only: false,
        }),
        duplicate_window: s.duplicate_window,
        max_age: s.max_age,
        max_bytes: s.max_bytes,
        num_replicas: s.replicas,
        storage: stream::StorageType::File,
        discard: stream::DiscardPolicy::Old,
        allow_direct: true,
        max_consumers: protocol::stream::MAX_CONSUMERS,
        ..Default::default()
    }
}

/// Creates stream `CHAT`, or updates it to `settings`, and returns it: the operator's step
/// (`gateway stream apply`), and the tests'. Gateways never change an existing stream: see
/// [`open_chat_stream`].
pub async fn apply_chat_stream(
    js: &jetstream::Context,
    settings: &StreamSettings,
) -> anyhow::Result<stream::Stream> {
    use anyhow::Context;
    js.create_or_update_stream(chat_stream_config(settings))
        .await
        .context("creating or updating stream CHAT")?;
    js.get_stream(settings.name())
        .await
        .context("reading stream CHAT")
}

/// Stream `CHAT` as a gateway finds it at start: created with `settings` if there is none, and
/// otherwise left as it is, with each operator setting where it differs from `settings`. One
/// gateway with smaller settings must not shrink the retention of every other, and delete messages
/// the persister has not stored yet: only [`apply_chat_stream`] changes them.
pub async fn open_chat_stream(
    js: &jetstream::Context,
    settings: &StreamSettings,
) -> anyhow::Result<(stream::Stream, Vec<String>)> {
    use anyhow::Context;
    let mut stream = js
        .get_or_create_stream(chat_stream_config(settings))
        .await
        .context("opening stream CHAT")?;
    let have = stream
        .info()
        .await
        .context("reading stream CHAT")?
        .config
        .clone();
    Ok((stream, settings_differences(&have, settings)))
}

/// How stream `CHAT` differs from `settings` (see [`settings_differences`]), without creating or
/// changing it; `None` when there is no stream.
pub async fn chat_stream_differences(
    js: &jetstream::Context,
    settings: &StreamSettings,
) -> anyhow::Result<Option<Vec<String>>> {
    use anyhow::Context;
    let Ok(mut stream) = js.get_stream(settings.name()).await else {
        return Ok(None);
    };
    let have = &stream.info().await.context("reading stream CHAT")?.config;
    Ok(Some(settings_differences(have, settings)))
}

/// The operator settings (`CHAT_*`) in which stream config `have` differs from `want`, each as
/// `name: stream has X, settings say Y`.
pub fn settings_differences(have: &stream::Config, want: &StreamSettings) -> Vec<String> {
    let mut out = Vec::new();
    let mut check = |name: &str, have: String, want: String| {
        if have != want {
            out.push(format!(
                "{name}: the stream has {have}, this process has {want}"
            ));
        }
    };
    check(
        "CHAT_MAX_AGE_SECS",
        have.max_age.as_secs().to_string(),
        want.max_age.as_secs().to_string(),
    );
    check(
        "CHAT_MAX_BYTES",
        have.max_bytes.to_string(),
        want.max_bytes.to_string(),
    );
    check(
        "CHAT_DUPLICATE_WINDOW_SECS",
        have.duplicate_window.as_secs().to_string(),
        want.duplicate_window.as_secs().to_string(),
    );
    check(
        "CHAT_REPLICAS",
        have.num_replicas.to_string(),
        want.replicas.to_string(),
    );
    out
}

/// The pause before reconnect attempt `attempts`: in the upper half of a step of 100 ms
/// doubling, at most [`MAX_RECONNECT_DELAY`].
fn reconnect_delay(attempts: usize) -> Duration {
    crate::retry::jittered(reconnect_step(attempts))
}

fn reconnect_step(attempts: usize) -> Duration {
    let step = FIRST_RECONNECT_DELAY.saturating_mul(1 << attempts.min(5));
    step.min(MAX_RECONNECT_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the backoff doubles from 100 ms, stops at the cap, and each pause lies in the upper
    // half of its step without being the same every time.
    #[test]
    fn reconnect_delay_doubles_up_to_the_cap_with_jitter() {
        let steps: Vec<u64> = (0..8)
            .map(|n| reconnect_step(n).as_millis() as u64)
            .collect();
        assert_eq!(steps, [100, 200, 400, 800, 1600, 2000, 2000, 2000]);
        for n in 0..8 {
            let step = reconnect_step(n);
            let pauses: Vec<Duration> = (0..50).map(|_| reconnect_delay(n)).collect();
            assert!(
                pauses.iter().all(|p| *p >= step / 2 && *p <= step),
                "{pauses:?}"
            );
            assert!(
                pauses.iter().any(|p| *p != pauses[0]),
                "no jitter: {pauses:?}"
            );
        }
    }
}
