//! The durable pull consumer that copies stream `CHAT` into the history store.
//!
//! One loop: fetch a batch (up to `batch_max` messages or `batch_wait`), sort it into records and
//! poison, write the records in one `write_batch`, set the poison aside, and only then ack. A crash at
//! any point leaves the unacked messages to be redelivered, and the idempotent write keeps one copy.
//! A failed write is retried with capped backoff and never acked, so nothing is skipped.
//!
//! The committed messages stay a prefix of the stream, as the conversation index needs (it takes a
//! message at or below its conversation's last seq for a redelivery). A delivery lost in transit, as
//! when the NATS node the persister is connected to dies mid-fetch, would otherwise come back only
//! after `ack_wait`, behind later messages already stored: so a batch that skips stream sequences
//! after the last committed one reads the skipped ones from the stream leader (`STREAM.MSG.GET`)
//! and writes them with it, in order. Their own redelivery later is an idempotent rewrite.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use async_nats::jetstream::{self, AckKind, consumer};
use futures_util::StreamExt;
use protocol::StoredMessage;
use protocol::subject::{self, Conversation};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::metrics::Metrics;
use crate::store::{DeadLetter, Record, Store};

/// First pause after a failure (stream missing, fetch or write failed); doubles up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest pause between retries.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Fraction of the stream's `max_age` that the oldest unpersisted message may reach before a warning.
pub const LAG_WARN_FRACTION: f64 = 0.5;
/// Least time between two lag warnings.
pub const LAG_WARN_INTERVAL: Duration = Duration::from_secs(10);
/// Unacked messages the server lets the consumer hold; a few batches' worth.
pub const MAX_ACK_PENDING_BATCHES: usize = 4;
/// Most skipped sequences a batch reads from the stream; a larger jump (a purge, `max_age` expiry
/// while the persister was away) is taken as it is, with a warning.
pub const MAX_GAP_FILL: u64 = 1024;
/// How long a batch keeps trying to read the sequences it skipped: longer than a leader election
/// (4.6–8.6 s measured), shorter than the default `ack_wait` (30 s).
pub const FILL_PATIENCE: Duration = Duration::from_secs(20);

/// How the consumer is set up.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// Durable consumer name.
    pub name: String,
    pub batch_max: usize,
    pub batch_wait: Duration,
    /// Time the server waits for an ack before redelivering.
    pub ack_wait: Duration,
}

/// Why a stream message cannot become a chat record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Poison {
    /// Metric label: `payload` or `subject`.
    pub reason: &'static str,
    pub error: String,
}

/// Maps one stream message to its conversation and message, or says why it is poison.
pub fn classify(subject: &str, payload: &[u8]) -> Result<(Conversation, StoredMessage), Poison> {
    let conv = Conversation::from_subject(subject).ok_or_else(|| Poison {
        reason: "subject",
        error: format!("subject {subject:?} names no conversation"),
    })?;
    let msg = StoredMessage::decode(payload).map_err(|e| Poison {
        reason: "payload",
        error: e.to_string(),
    })?;
    let belongs = match &conv {
        Conversation::Room(r) => {
            msg.room.as_ref() == Some(r)
                && msg.to.is_none()
                && msg.group.is_none()
                && msg.event.is_none()
        }
        Conversation::Group(g) => {
            msg.group.as_ref() == Some(g) && msg.room.is_none() && msg.to.is_none()
        }
        Conversation::Dm { lo, hi } => {
            msg.room.is_none()
                && msg.group.is_none()
                && msg.event.is_none()
                && msg.to.as_ref().is_some_and(|to| {
                    (&msg.from == lo && to == hi) || (&msg.from == hi && to == lo)
                })
        }
    };
    if !belongs {
        return Err(Poison {
            reason: "payload",
            error: format!("payload does not belong to the conversation of {subject:?}"),
        });
    }
    Ok((conv, msg))
}

/// Runs until `stop` is cancelled. Never gives up: every failure is logged and retried.
pub async fn run(
    js: jetstream::Context,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    settings: ConsumerSettings,
    ready: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    let Some((stream, consumer, max_age)) = setup(&js, &settings, &stop).await else {
        return;
    };
    // The next stream sequence the store needs, after the consumer's contiguous acks.
    let mut next = match consumer.clone().info().await {
        Ok(info) => Some(info.ack_floor.stream_sequence + 1),
        Err(e) => {
            tracing::warn!(error = %e, "consumer info failed; gap fill starts with the first batch");
            None
        }
    };
    ready.store(true, Ordering::Relaxed);
    tracing::info!(consumer = %settings.name, ?max_age, "persisting stream CHAT");
    let mut backoff = Backoff::new();
    let mut last_warn: Option<Instant> = None;
    while !stop.is_cancelled() {
        let batch = tokio::select! {
            _ = stop.cancelled() => break,
            b = fetch(&consumer, &settings) => b,
        };
        let msgs = match batch {
            Ok(msgs) => {
                backoff.reset();
                msgs
            }
            Err(e) => {
                tracing::warn!(error = %e, "fetching from stream CHAT failed; retrying");
                if backoff.wait(&stop).await.is_err() {
                    break;
                }
                continue;
            }
        };
        if msgs.is_empty() {
            metrics.lag_messages.set(0);
            metrics.oldest_unpersisted_age_seconds.set(0);
            continue;
        }
        observe_lag(&msgs, max_age, &metrics, &mut last_warn);
        let span = tracing::info_span!("batch", n = msgs.len());
        if persist(&msgs, &stream, &mut next, store.as_ref(), &metrics, &stop)
            .instrument(span)
            .await
            .is_err()
        {
            break;
        }
    }
    ready.store(false, Ordering::Relaxed);
}

/// Waits for stream `CHAT` (the gateway creates it) and creates or binds the durable consumer.
async fn setup(
    js: &jetstream::Context,
    settings: &ConsumerSettings,
    stop: &CancellationToken,
) -> Option<(jetstream::stream::Stream, consumer::PullConsumer, Duration)> {
    let mut backoff = Backoff::new();
    loop {
        let attempt = async {
            let mut stream = js
                .get_stream(subject::STREAM)
                .await
                .map_err(|e| format!("stream CHAT: {e}"))?;
            let max_age = stream
                .info()
                .await
                .map_err(|e| format!("stream CHAT info: {e}"))?
                .config
                .max_age;
            let consumer = stream
                .get_or_create_consumer(
                    &settings.name,
                    consumer::pull::Config {
                        durable_name: Some(settings.name.clone()),
                        description: Some("liaotian persister: CHAT -> history store".into()),
                        ack_policy: consumer::AckPolicy::Explicit,
                        ack_wait: settings.ack_wait,
                        filter_subject: subject::INGEST_WILDCARD.to_owned(),
                        max_ack_pending: i64::try_from(
                            settings.batch_max.saturating_mul(MAX_ACK_PENDING_BATCHES),
                        )
                        .unwrap_or(i64::MAX),
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| format!("consumer {}: {e}", settings.name))?;
            Ok::<_, String>((stream, consumer, max_age))
        };
        match attempt.await {
            Ok(ok) => return Some(ok),
            Err(e) => tracing::warn!(error = %e, "waiting for stream CHAT and its consumer"),
        }
        backoff.wait(stop).await.ok()?;
    }
}

async fn fetch(
    consumer: &consumer::PullConsumer,
    settings: &ConsumerSettings,
) -> Result<Vec<jetstream::Message>, async_nats::Error> {
    let mut batch = consumer
        .batch()
        .max_messages(settings.batch_max)
        .expires(settings.batch_wait)
        .messages()
        .await?;
    let mut msgs = Vec::new();
    while let Some(m) = batch.next().await {
        msgs.push(m?);
    }
    Ok(msgs)
}

/// Writes one batch and acks it; retries the write until it commits. `Err` only on shutdown.
/// `next` is the first stream sequence not yet committed, if known; sequences the batch skips after
/// it are read from the stream and written too (see the module docs), and it moves past the batch.
async fn persist(
    msgs: &[jetstream::Message],
    stream: &jetstream::stream::Stream,
    next: &mut Option<u64>,
    store: &dyn Store,
    metrics: &Metrics,
    stop: &CancellationToken,
) -> Result<(), Stopped> {
    let mut records = Vec::with_capacity(msgs.len());
    let mut poison = Vec::new();
    let mut good = Vec::with_capacity(msgs.len());
    for (i, m) in msgs.iter().enumerate() {
        let seq = match m.info() {
            Ok(info) => info.stream_sequence,
            Err(e) => {
                // Not a JetStream delivery at all: nothing to ack or store.
                tracing::warn!(error = %e, subject = %m.subject, "message without JetStream metadata");
                continue;
            }
        };
        match classify(m.subject.as_str(), &m.payload) {
            Ok((conv, msg)) => {
                records.push(Record { conv, seq, msg });
                good.push(i);
            }
            Err(p) => {
                metrics.poison.with_label_values(&[p.reason]).inc();
                tracing::warn!(seq, subject = %m.subject, reason = p.reason, error = %p.error,
                    "poison message set aside in dead_letters");
                poison.push((
                    i,
                    DeadLetter {
                        seq,
                        subject: m.subject.to_string(),
                        payload: m.payload.to_vec(),
                        error: p.error,
                    },
                ));
            }
        }
    }

    let seen: std::collections::HashSet<u64> = msgs
        .iter()
        .filter_map(|m| m.info().ok().map(|i| i.stream_sequence))
        .collect();
    if let (Some(from), Some(&to)) = (*next, seen.iter().max()) {
        records.extend(fill_gap(stream, from, to, &seen, metrics, stop).await);
    }
    records.sort_by_key(|r| r.seq);

    let mut backoff = Backoff::new();
    while let Err(e) = store.write_batch(&records).await {
        metrics.write_errors.inc();
        tracing::error!(error = %ErrorChain(&e), "writing a batch failed; it stays unacked and is retried");
        keep_alive(msgs).await;
        backoff.wait(stop).await?;
    }
    for (_, letter) in &poison {
        while let Err(e) = store.dead_letter(letter).await {
            metrics.write_errors.inc();
            tracing::error!(seq = letter.seq, error = %ErrorChain(&e), "writing a dead letter failed; retrying");
            keep_alive(msgs).await;
            backoff.wait(stop).await?;
        }
    }
    metrics.batches.inc();
    metrics.persisted.inc_by(records.len() as u64);
    if let Some(&max) = seen.iter().max() {
        *next = Some(next.map_or(max + 1, |n| n.max(max + 1)));
    }

    // Committed: now, and only now, ack. A lost ack means a redelivery, which the store absorbs.
    for i in good {
        if let Err(e) = msgs[i].ack().await {
            tracing::debug!(error = %e, "ack failed; the message will be redelivered");
        }
    }
    for (i, _) in poison {
        if let Err(e) = msgs[i].ack_with(AckKind::Term).await {
            tracing::debug!(error = %e, "term failed; the message will be redelivered");
        }
    }
    Ok(())
}

/// The records of the stream sequences in `from..to` that the batch (`seen`) lacks, read from the
/// stream's leader. A read that fails (a leader election, which is when deliveries get lost) is
/// tried again with backoff for up to [`FILL_PATIENCE`]. A sequence the stream no longer has
/// (deleted, expired) is skipped; so is one still unreadable after that, or poison (its
/// redelivery sets it aside), with a warning.
async fn fill_gap(
    stream: &jetstream::stream::Stream,
    from: u64,
    to: u64,
    seen: &std::collections::HashSet<u64>,
    metrics: &Metrics,
    stop: &CancellationToken,
) -> Vec<Record> {
    use async_nats::jetstream::stream::RawMessageErrorKind;
    let missing: Vec<u64> = (from..to).filter(|s| !seen.contains(s)).collect();
    if missing.is_empty() {
        return Vec::new();
    }
    if missing.len() as u64 > MAX_GAP_FILL {
        tracing::warn!(
            from,
            to,
            missing = missing.len(),
            "the batch skips too many sequences to read them; taken as it is"
        );
        return Vec::new();
    }
    let mut records = Vec::new();
    let deadline = Instant::now() + FILL_PATIENCE;
    for seq in missing {
        let mut pause = FIRST_BACKOFF;
        loop {
            match stream.get_raw_message(seq).await {
                Ok(m) => {
                    match classify(m.subject.as_str(), &m.payload) {
                        Ok((conv, msg)) => records.push(Record { conv, seq, msg }),
                        Err(p) => tracing::warn!(
                            seq,
                            reason = p.reason,
                            "a skipped sequence is poison; its redelivery sets it aside"
                        ),
                    }
                    break;
                }
                Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => break,
                Err(e) if Instant::now() + pause > deadline || stop.is_cancelled() => {
                    tracing::warn!(seq, error = %e, "reading a skipped sequence failed; it is stored on its redelivery");
                    break;
                }
                Err(e) => {
                    tracing::debug!(seq, error = %e, "reading a skipped sequence failed; trying again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
            }
        }
    }
    if !records.is_empty() {
        metrics.gap_filled.inc_by(records.len() as u64);
        tracing::info!(
            n = records.len(),
            from,
            to,
            "stored sequences the batch skipped, read from the stream"
        );
    }
    records
}

/// Tells the server the batch is still being worked on, so a long retry does not trigger redelivery.
async fn keep_alive(msgs: &[jetstream::Message]) {
    for m in msgs {
        let _ = m.ack_with(AckKind::Progress).await;
    }
}

/// Updates the lag gauges from a fetched batch and warns when the stream may soon drop unpersisted data.
fn observe_lag(
    msgs: &[jetstream::Message],
    max_age: Duration,
    metrics: &Metrics,
    last_warn: &mut Option<Instant>,
) {
    let infos: Vec<_> = msgs.iter().filter_map(|m| m.info().ok()).collect();
    if let Some(last) = infos.last() {
        metrics
            .lag_messages
            .set(i64::try_from(last.pending).unwrap_or(i64::MAX));
    }
    let Some(first) = infos.first() else { return };
    let published_ns = first.published.unix_timestamp_nanos();
    let now_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    let age =
        Duration::from_nanos(u64::try_from((now_ns - published_ns).max(0)).unwrap_or(u64::MAX));
    metrics
        .oldest_unpersisted_age_seconds
        .set(i64::try_from(age.as_secs()).unwrap_or(i64::MAX));
    if max_age.is_zero() || age.as_secs_f64() < max_age.as_secs_f64() * LAG_WARN_FRACTION {
        return;
    }
    if last_warn.is_none_or(|t| t.elapsed() >= LAG_WARN_INTERVAL) {
        *last_warn = Some(Instant::now());
        tracing::warn!(
            age_secs = age.as_secs(),
            max_age_secs = max_age.as_secs(),
            pending = metrics.lag_messages.get(),
            "PERSISTER LAG: the oldest unpersisted message is past half the stream's max_age; \
             messages older than max_age are dropped from CHAT before they reach the store"
        );
    }
}

/// Shutdown was requested while waiting.
#[derive(Debug)]
pub(crate) struct Stopped;

/// Capped exponential backoff with jitter (`svc::retry`) that gives way to shutdown.
pub(crate) struct Backoff(svc::retry::Backoff);

impl Backoff {
    pub(crate) fn new() -> Self {
        Self(svc::retry::Backoff::new(FIRST_BACKOFF, MAX_BACKOFF))
    }

    fn reset(&mut self) {
        self.0.reset();
    }

    pub(crate) async fn wait(&mut self, stop: &CancellationToken) -> Result<(), Stopped> {
        let d = self.0.next_delay();
        tokio::select! {
            _ = stop.cancelled() => Err(Stopped),
            _ = tokio::time::sleep(d) => Ok(()),
        }
    }
}

/// Displays an error with its `source()` chain.
pub(crate) struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut src = self.0.source();
        while let Some(s) = src {
            write!(f, ": {s}")?;
            src = s.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{ClientMsgId, RoomId, UserId};

    fn msg(from: &str, room: Option<&str>, to: Option<&str>) -> StoredMessage {
        StoredMessage {
            mentions: Vec::new(),
            from: UserId::parse(from).unwrap(),
            room: room.map(|r| RoomId::parse(r).unwrap()),
            to: to.map(|t| UserId::parse(t).unwrap()),
            group: None,
            event: None,
            text: "t".into(),
            client_msg_id: ClientMsgId::parse("c").unwrap(),
            ts: 1,
        }
    }

    // Proves good room and DM messages classify, and each kind of poison is named by its reason.
    #[test]
    fn classify_sorts_good_from_poison() {
        let room = msg("alice", Some("general"), None).encode();
        assert!(classify("chat.in.room.general", &room).is_ok());
        let dm = msg("zoe", None, Some("adam")).encode();
        assert!(classify("chat.in.dm.adam.zoe", &dm).is_ok());
        assert_eq!(
            classify("chat.in.room.a.b", &room).unwrap_err().reason,
            "subject"
        );
        assert_eq!(
            classify("chat.in.room.general", b"garbage")
                .unwrap_err()
                .reason,
            "payload"
        );
        // A payload published on another conversation's subject.
        assert_eq!(
            classify("chat.in.room.other", &room).unwrap_err().reason,
            "payload"
        );
        assert_eq!(
            classify("chat.in.dm.adam.eve", &dm).unwrap_err().reason,
            "payload"
        );
    }
}
