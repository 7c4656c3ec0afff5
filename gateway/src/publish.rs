//! Publishing client messages into stream `CHAT` (defined in `protocol::stream`).
//!
//! A message is acked to its sender only after JetStream acked the publish, that is after it was stored.
//! Every attempt carries the same `Nats-Msg-Id` (`<sender>:<client_msg_id>`), so a retry after a lost
//! ack, or a client resend, is stored once and answered with the original sequence.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use async_nats::jetstream::{self, message::PublishMessage, stream};
use bytes::Bytes;
use protocol::subject::{self, Conversation};
use protocol::{StoredMessage, UserId};

use crate::metrics::Metrics;

/// First pause between publish attempts; doubles up to [`MAX_BACKOFF`]. The publish loop keeps its
/// own backoff rather than `svc::retry`'s: its future is held by every in-flight send, and its size
/// was measured (648 bytes with the retry path boxed, docs/benchmarks.md, fifth round); a jitter
/// would need a random draw per retry there, and a publish retries only while JetStream is away.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Longest wait for one attempt's ack.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a publish did not get stored.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("JetStream did not store the message within {0:?}")]
    Unavailable(Duration),
    #[error(
        "stream CHAT is nearly full of messages no persister has stored yet; resend with the same client_msg_id later"
    )]
    Full,
}

/// The stored result of a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub seq: u64,
    /// The stored message's timestamp (the original one for a duplicate).
    pub ts: u64,
}

/// Publishes messages with retries and reads back what was stored.
#[derive(Clone)]
pub struct Publisher {
    /// For publishes: its timeout bounds the wait for each attempt's ack.
    js: jetstream::Context,
    /// For reading the stream back, with the client's default timeout.
    api: jetstream::Context,
    stream: Arc<tokio::sync::OnceCell<stream::Stream>>,
    budget: Duration,
    metrics: Arc<Metrics>,
    guard: crate::retention::Guard,
}

impl Publisher {
    pub fn new(
        api: jetstream::Context,
        budget: Duration,
        metrics: Arc<Metrics>,
        guard: crate::retention::Guard,
    ) -> Self {
        // The client's own wait for an ack bounds each attempt: one timer per publish, not two.
        let mut js = api.clone();
        js.set_timeout(ATTEMPT_TIMEOUT);
        Self {
            js,
            api,
            stream: Arc::default(),
            budget,
            metrics,
            guard,
        }
    }

    /// Stores `msg` in conversation `conv`, retrying within the budget.
    pub async fn publish(
        &self,
        conv: &Conversation,
        msg: &StoredMessage,
    ) -> Result<Stored, PublishError> {
        if self.guard.closed() {
            return Err(PublishError::Full);
        }
        let started = Instant::now();
        let payload = Bytes::from(msg.encode());
        let subject = conv.ingest_subject();
        let mut backoff = FIRST_BACKOFF;
        loop {
            let pm = publish_message(conv, msg, payload.clone());
            match self.attempt(subject.clone(), pm).await {
                Ok(ack) => {
                    self.metrics
                        .publish_seconds
                        .observe(started.elapsed().as_secs_f64());
                    // The duplicate and retry paths are boxed, so the publish future is 400
                    // bytes, not 2.2 KB.
                    let ts = if ack.duplicate {
                        Box::pin(self.stored_ts(ack.sequence))
                            .await
                            .unwrap_or(msg.ts)
                    } else {
                        msg.ts
                    };
                    if !ack.duplicate {
                        self.metrics.published.inc();
                    }
                    return Ok(Stored {
                        seq: ack.sequence,
                        ts,
                    });
                }
                Err(e) => {
                    if started.elapsed() + backoff >= self.budget {
                        tracing::warn!(error = %e, %subject, "publish failed; giving up");
                        return Err(PublishError::Unavailable(self.budget));
                    }
                    tracing::debug!(error = %e, %subject, "publish failed; retrying");
                    Box::pin(tokio::time::sleep(backoff)).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    async fn attempt(
        &self,
        subject: String,
        pm: PublishMessage,
    ) -> anyhow::Result<jetstream::publish::PublishAck> {
        // The request future is 840 bytes, the ack future a fifth of it: boxed, the first is freed
        // before the wait for the ack.
        let ack = Box::pin(self.js.send_publish(subject, pm)).await?;
        Ok(ack.await?)
    }

    /// The timestamp stored with sequence `seq`, for answering a duplicate with the original ack.
    async fn stored_ts(&self, seq: u64) -> Option<u64> {
        let stream = self
            .stream
            .get_or_try_init(|| self.api.get_stream(subject::STREAM))
            .await
            .ok()?;
        let raw = stream.direct_get(seq).await.ok()?;
        StoredMessage::decode(&raw.payload).ok().map(|m| m.ts)
    }
}

/// How a message is stored in `conv`: its encoded `payload`, `Nats-Msg-Id: <sender>:<client_msg_id>`
/// (so a resend is stored once; a group event's is `protocol::subject::event_msg_id`) and the readable headers operators follow with the `nats` CLI.
pub fn publish_message(conv: &Conversation, msg: &StoredMessage, payload: Bytes) -> PublishMessage {
    let id = match (conv, &msg.event) {
        (Conversation::Group(group), Some(_)) => subject::event_msg_id(group, &msg.client_msg_id),
        _ => subject::msg_id(&msg.from, &msg.client_msg_id),
    };
    let pm = PublishMessage::build()
        .payload(payload)
        .message_id(id)
        .header(subject::HDR_FROM, msg.from.as_str())
        .header("Content-Type", subject::CONTENT_TYPE_MSGPACK);
    match conv {
        Conversation::Room(room) => pm.header(subject::HDR_ROOM, room.as_str()),
        Conversation::Group(group) => pm.header(subject::HDR_GROUP, group.as_str()),
        Conversation::Dm { .. } => match &msg.to {
            Some(to) => pm.header(subject::HDR_TO, to.as_str()),
            None => pm,
        },
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The message a `send` stores.
pub fn stored_message(
    from: UserId,
    conv_target: &protocol::Target,
    text: String,
    cmid: protocol::ClientMsgId,
) -> StoredMessage {
    let (room, to, group) = match conv_target {
        protocol::Target::Room(r) => (Some(r.clone()), None, None),
        protocol::Target::Group(g) => (None, None, Some(g.clone())),
        protocol::Target::User(u) => (None, Some(u.clone()), None),
    };
    StoredMessage {
        mentions: Vec::new(),
        from,
        room,
        to,
        group,
        event: None,
        text,
        client_msg_id: cmid,
        ts: now_ms(),
    }
}
