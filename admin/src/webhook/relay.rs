//! The webhook relay: two durable consumers, one on stream `CHAT` (messages and group events) and
//! one on the presence bucket's connection keys, whose events it POSTs, signed, to the app
//! backend's endpoint.
//!
//! Delivery is at least once: an event's message is acked only once the endpoint answered 2xx, or
//! once it was dead-lettered. A failed request is retried after 1 s, 2 s, 4 s, … up to
//! `WEBHOOK_MAX_ATTEMPTS` requests in all; then the event goes to stream `WEBHOOK_DEAD` (kept 7
//! days, 256 MiB at most), with the last error, and is counted.
//!
//! Stream `CHAT` is pulled in bursts (`svc::bursts`): every [`BURST_EVERY`] while caught up, at most
//! `BURST_SLOTS × WEBHOOK_CONCURRENCY` events a pull, which then wait for one of the
//! `WEBHOOK_CONCURRENCY` slots. The consumers' `ack_wait` is longer than the last event of a burst
//! can take (`BURST_SLOTS` longest retry sequences, plus 30 s), so an event is never redelivered
//! while it waits or is retried; after a restart, the events in flight are redelivered once their
//! `ack_wait` has passed.
//!
//! A slow or failing endpoint never slows chat: the relay reads the stream like any consumer, the
//! retention guard does not wait for it, and at most `WEBHOOK_CONCURRENCY` events are in flight. An
//! endpoint down for longer than stream `CHAT` keeps messages loses their events (counted by the
//! consumer's pending count; `nats consumer info CHAT webhook`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer, stream};
use futures_util::StreamExt;
use protocol::StoredMessage;
use tokio::sync::Semaphore;

use super::events::{self, Event, Kind};
use super::sign;
use crate::metrics::Metrics;

/// The relay's durable consumer on stream `CHAT`.
pub const CHAT_CONSUMER: &str = "webhook";
/// Its durable consumer on the presence bucket's stream.
pub const PRESENCE_CONSUMER: &str = "webhook-presence";
/// The dead-letter stream, and its subjects (`webhook.dead.<type>`).
pub const DEAD_STREAM: &str = "WEBHOOK_DEAD";
pub const DEAD_SUBJECTS: &str = "webhook.dead.>";
/// How long dead letters are kept, and how many bytes at most.
pub const DEAD_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
pub const DEAD_MAX_BYTES: i64 = 256 * 1024 * 1024;
/// How often stream `CHAT` is pulled while the relay is caught up: the longest an event waits
/// before its first request (see `svc::bursts`).
pub const BURST_EVERY: Duration = Duration::from_millis(100);
/// A pull takes up to this many events per slot of `WEBHOOK_CONCURRENCY`.
pub const BURST_SLOTS: usize = 4;
/// First pause between two requests of one event; doubles, up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The relay's settings (`WEBHOOK_*`).
#[derive(Debug, Clone)]
pub struct Settings {
    pub url: String,
    pub secret: Vec<u8>,
    pub kinds: HashSet<Kind>,
    pub timeout: Duration,
    pub max_attempts: u32,
    pub concurrency: usize,
    /// The first retry's pause (tests shorten it).
    pub first_backoff: Duration,
}

impl Settings {
    /// The longest one event can take: every request timing out, with every pause between.
    pub fn worst_case(&self) -> Duration {
        let mut total = self.timeout * self.max_attempts;
        let mut pause = self.first_backoff;
        for _ in 1..self.max_attempts {
            total += pause;
            pause = (pause * 2).min(MAX_BACKOFF);
        }
        total
    }

    /// Longer than the time the last event of a burst can take: it waits for the
    /// `BURST_SLOTS - 1` slots' worth of events before it, then takes its own worst case.
    fn ack_wait(&self) -> Duration {
        self.worst_case() * u32::try_from(BURST_SLOTS).unwrap_or(u32::MAX) + Duration::from_secs(30)
    }

    /// Stream `CHAT` is pulled every [`BURST_EVERY`], at most `BURST_SLOTS ×
    /// WEBHOOK_CONCURRENCY` messages (its consumer's `max_ack_pending`) a pull.
    fn bursts(&self) -> svc::bursts::Bursts {
        svc::bursts::Bursts {
            every: BURST_EVERY,
            max: self.concurrency * BURST_SLOTS,
        }
    }
}

/// Sends events to the endpoint, retrying and dead-lettering.
#[derive(Clone)]
pub struct Relay {
    settings: Arc<Settings>,
    http: reqwest::Client,
    js: jetstream::Context,
    metrics: Arc<Metrics>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Relay {
    pub fn new(
        settings: Settings,
        nats: async_nats::Client,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .user_agent("liaotian-webhook/1")
            .build()?;
        Ok(Self {
            settings: Arc::new(settings),
            http,
            js: jetstream::new(nats),
            metrics,
        })
    }

    /// Opens the dead-letter stream and the consumers, then relays until the process ends.
    pub async fn run(self) -> anyhow::Result<()> {
        self.js
            .get_or_create_stream(stream::Config {
                name: DEAD_STREAM.into(),
                description: Some("liaotian webhook events given up on (admin)".into()),
                subjects: vec![DEAD_SUBJECTS.into()],
                max_age: DEAD_MAX_AGE,
                max_bytes: DEAD_MAX_BYTES,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow::anyhow!("stream {DEAD_STREAM}: {e}"))?;
        let kinds = &self.settings.kinds;
        let chat = kinds.contains(&Kind::Message) || kinds.contains(&Kind::Membership);
        let presence = kinds.contains(&Kind::Presence);
        let chat_task = chat.then(|| tokio::spawn(self.clone().relay_chat()));
        let presence_task = presence.then(|| tokio::spawn(self.clone().relay_presence()));
        tracing::info!(url = %self.settings.url, chat, presence, "webhook relay running");
        if let Some(t) = chat_task {
            t.await??;
        }
        if let Some(t) = presence_task {
            t.await??;
        }
        Ok(())
    }

    async fn consumer(
        &self,
        stream: &str,
        name: &str,
        filter: &str,
        max_ack_pending: i64,
    ) -> anyhow::Result<consumer::PullConsumer> {
        let stream = svc::retry::until_deadline(
            "the relay's stream",
            Duration::from_secs(60),
            svc::retry::Backoff::constant(Duration::from_secs(1)),
            || self.js.get_stream(stream),
        )
        .await
        .map_err(|e| anyhow::anyhow!("stream {stream}: {e}"))?;
        Ok(stream
            .get_or_create_consumer(
                name,
                consumer::pull::Config {
                    durable_name: Some(name.into()),
                    description: Some("liaotian webhook relay (admin)".into()),
                    filter_subject: filter.into(),
                    deliver_policy: consumer::DeliverPolicy::New,
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: self.settings.ack_wait(),
                    max_ack_pending,
                    ..Default::default()
                },
            )
            .await?)
    }

    async fn relay_chat(self) -> anyhow::Result<()> {
        // A pull takes at most what the consumer lets out unacked: one number for both.
        let bursts = self.settings.bursts();
        let consumer = self
            .consumer(
                protocol::subject::STREAM,
                CHAT_CONSUMER,
                protocol::subject::INGEST_WILDCARD,
                i64::try_from(bursts.max).unwrap_or(i64::MAX),
            )
            .await?;
        let limit = Arc::new(Semaphore::new(self.settings.concurrency));
        let (message, membership) = (
            self.settings.kinds.contains(&Kind::Message),
            self.settings.kinds.contains(&Kind::Membership),
        );
        let mut reader = svc::bursts::Reader::new(consumer, bursts, bursts.max);
        let acks = reader.acks();
        loop {
            let msgs = match reader.next().await {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook: consumer unavailable; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            for msg in msgs {
                let permit = limit.clone().acquire_owned().await?;
                let (this, acks) = (self.clone(), acks.clone());
                tokio::spawn(async move {
                    let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
                    let event = StoredMessage::decode(&msg.payload)
                        .ok()
                        .and_then(|m| events::from_stored(m, seq, message, membership));
                    if let Some(event) = event {
                        this.deliver(&event).await;
                    }
                    acks.send(msg, AckKind::Ack).await;
                    drop(permit);
                });
            }
        }
    }

    /// Online and offline events from the connection keys, in order, one at a time. The relay
    /// keeps the connections it saw per user; a user it knows nothing of (after a restart) is
    /// counted in the bucket, so a restart may repeat a `user.online` of a user already online.
    async fn relay_presence(self) -> anyhow::Result<()> {
        let consumer = self
            .consumer(
                protocol::presence::STREAM,
                PRESENCE_CONSUMER,
                &format!("{}conn.>", protocol::presence::KEY_PREFIX),
                16,
            )
            .await?;
        let live = svc::kv::LiveKeys::new(self.js.client()).await?;
        let mut conns: HashMap<String, HashSet<String>> = HashMap::new();
        loop {
            let mut msgs = match consumer.messages().await {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook: presence consumer unavailable; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            while let Some(msg) = msgs.next().await {
                let Ok(msg) = msg else { continue };
                let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
                let key = msg
                    .subject
                    .as_str()
                    .strip_prefix(protocol::presence::KEY_PREFIX)
                    .and_then(|k| k.strip_prefix("conn."))
                    .and_then(|k| k.split_once('.'))
                    .map(|(u, c)| (u.to_owned(), c.to_owned()));
                let Some((user, conn)) = key else {
                    let _ = msg.ack().await;
                    continue;
                };
                let headers = msg.headers.as_ref();
                let gone = headers.and_then(|h| h.get("Nats-Marker-Reason")).is_some()
                    || matches!(
                        headers
                            .and_then(|h| h.get("KV-Operation"))
                            .map(|v| v.as_str()),
                        Some("DEL" | "PURGE")
                    );
                let live = || async {
                    live.read(protocol::presence::BUCKET, &format!("conn.{user}.*"), 256)
                        .await
                        .map(|k| k.len())
                        .unwrap_or(1)
                };
                let event = if gone {
                    let set = conns.entry(user.clone()).or_default();
                    set.remove(&conn);
                    if set.is_empty() {
                        conns.remove(&user);
                        (live().await == 0).then(|| events::presence(&user, false, seq, now_ms()))
                    } else {
                        None
                    }
                } else {
                    let known = conns.contains_key(&user);
                    let set = conns.entry(user.clone()).or_default();
                    let fresh = set.insert(conn);
                    // A refresh of a known connection is no change; a first connection is.
                    (fresh && !known && live().await <= 1)
                        .then(|| events::presence(&user, true, seq, now_ms()))
                };
                if let Some(event) = event {
                    self.deliver(&event).await;
                }
                let _ = msg.ack().await;
            }
        }
    }

    /// POSTs `event` until the endpoint answers 2xx, at most `max_attempts` times; then
    /// dead-letters it.
    pub async fn deliver(&self, event: &Event) {
        let body = serde_json::to_vec(event).unwrap_or_default();
        let mut pause = self.settings.first_backoff;
        let mut last_error = String::new();
        for attempt in 1..=self.settings.max_attempts {
            if attempt > 1 {
                self.metrics.webhook_retries.inc();
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_BACKOFF);
            }
            let ts = now_ms() / 1000;
            let sent = self
                .http
                .post(&self.settings.url)
                .header("Content-Type", "application/json")
                .header(sign::TIMESTAMP_HEADER, ts.to_string())
                .header(
                    sign::SIGNATURE_HEADER,
                    sign::signature(&self.settings.secret, ts, &body),
                )
                .header(sign::ID_HEADER, &event.id)
                .body(body.clone())
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => {
                    self.metrics
                        .webhook_delivered
                        .with_label_values(&[event.kind])
                        .inc();
                    return;
                }
                Ok(r) => last_error = format!("HTTP {}", r.status()),
                Err(e) => last_error = format!("{}", e.without_url()),
            }
            tracing::debug!(id = %event.id, attempt, error = %last_error, "webhook: delivery failed");
        }
        self.dead_letter(event, &body, &last_error).await;
    }

    async fn dead_letter(&self, event: &Event, body: &[u8], error: &str) {
        self.metrics
            .webhook_dead_letters
            .with_label_values(&[event.kind])
            .inc();
        tracing::warn!(id = %event.id, kind = event.kind, %error, "webhook: dead-lettered after every attempt");
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Liaotian-Error", error);
        headers.insert("Liaotian-Event-Id", event.id.as_str());
        headers.insert(
            "Liaotian-Attempts",
            self.settings.max_attempts.to_string().as_str(),
        );
        let subject = format!("webhook.dead.{}", event.kind.replace('.', "_"));
        let stored = async {
            self.js
                .publish_with_headers(subject, headers, body.to_vec().into())
                .await?
                .await?;
            anyhow::Ok(())
        };
        if let Err(e) = tokio::time::timeout(Duration::from_secs(5), stored)
            .await
            .map_err(|_| anyhow::anyhow!("timed out"))
            .and_then(|r| r)
        {
            tracing::error!(id = %event.id, error = %e, "webhook: the dead letter was not stored; the event is lost");
        }
    }
}
