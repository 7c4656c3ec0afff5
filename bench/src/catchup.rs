//! Persister catch-up: a backlog is stored in stream `CHAT` while no persister runs, then the persister
//! starts, and the run measures how long it takes until the store holds all of it.
//!
//! The backlog goes straight into JetStream with the gateway's subjects, headers and payload
//! ([`crate::inject`]), `messages` spread over `rooms` rooms. The clock starts when the persister
//! process is spawned, so its start-up (opening SQLite, binding the consumer) is part of the time. It
//! stops when `persister_messages_persisted_total` reaches the backlog and the consumer has nothing
//! pending or unacked. The latency quantiles are of "persister start → message stored": the metric is
//! polled every [`POLL`], and each message is counted at the first poll that includes it.
//! Afterwards every room is paged through the history service (`chat.svc.history`, the path a
//! client's `history` takes): a message missing from the store is lost, an index seen twice is a
//! duplicate, and a message stored under another sequence than JetStream acked is unexpected.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::time::Instant;

use anyhow::{Context, bail};
use async_nats::jetstream;
use protocol::RoomId;
use protocol::history::{ConvRef, HISTORY_SUBJECT, HistoryReply, HistoryRequest, MAX_LIMIT};

use crate::hist::Histogram;
use crate::inject::{self, Published};

/// How often the persister's metrics are read while it catches up.
pub const POLL: Duration = Duration::from_millis(20);
/// Longest wait for one history page.
const HISTORY_TIMEOUT: Duration = Duration::from_secs(10);

/// How the catch-up went.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// Persister start → caught up.
    pub took: Duration,
    /// Persister start → its `/metrics` first answered.
    pub http_up: Option<Duration>,
    /// Per message: persister start → stored, µs.
    pub stored: Histogram,
    pub persisted: u64,
}

/// Waits until the persister whose HTTP listener is `http` has stored `n` messages and its consumer
/// `consumer` has nothing pending or unacked; `started` is when the persister was started.
pub async fn wait_caught_up(
    js: &jetstream::Context,
    http: SocketAddr,
    consumer: &str,
    n: u64,
    started: Instant,
    bound: Duration,
) -> anyhow::Result<Progress> {
    let mut p = Progress::default();
    let mut last_log = Instant::now();
    loop {
        if let Ok(v) = metric(http, "persister_messages_persisted_total").await {
            p.http_up.get_or_insert_with(|| started.elapsed());
            let now = v as u64;
            if now > p.persisted {
                let at = started.elapsed().as_micros() as u64;
                p.stored
                    .record_n(at, now.min(n).saturating_sub(p.persisted.min(n)));
                p.persisted = now;
            }
        }
        if p.persisted >= n && drained(js, consumer).await {
            p.took = started.elapsed();
            return Ok(p);
        }
        if started.elapsed() > bound {
            bail!(
                "not caught up after {bound:?}: {} of {n} persisted",
                p.persisted
            );
        }
        if last_log.elapsed() > Duration::from_secs(5) {
            last_log = Instant::now();
            tracing::info!(persisted = p.persisted, of = n, "catching up");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Whether consumer `name` on stream `CHAT` has nothing pending and nothing waiting for its ack.
async fn drained(js: &jetstream::Context, name: &str) -> bool {
    let Ok(stream) = js.get_stream(protocol::subject::STREAM).await else {
        return false;
    };
    let Ok(mut c) = stream
        .get_consumer::<jetstream::consumer::pull::Config>(name)
        .await
    else {
        return false;
    };
    c.info()
        .await
        .is_ok_and(|i| i.num_pending == 0 && i.num_ack_pending == 0)
}

/// What the store holds, checked against what JetStream acked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Check {
    pub expected: u64,
    /// Distinct backlog messages found at their acked sequence.
    pub found: u64,
    pub lost: u64,
    /// Backlog indexes found more than once.
    pub dup: u64,
    /// Messages that are not the backlog's, or are stored under another sequence than acked.
    pub unexpected: u64,
    /// Pages whose sequences did not increase.
    pub out_of_order: u64,
}

/// The store's contents checked, and how long each history page took to come back.
#[derive(Debug, Clone, Default)]
pub struct Verified {
    pub check: Check,
    /// Per history page of [`MAX_LIMIT`] (request sent → reply), µs, one requester at a time.
    pub pages: Histogram,
}

/// Pages every room of the backlog through the history service and checks it message by message.
pub async fn verify(
    nats: &async_nats::Client,
    rooms: &[String],
    published: &Published,
) -> anyhow::Result<Verified> {
    let mut pages = Histogram::default();
    let mut c = Check {
        expected: published.total(),
        ..Check::default()
    };
    for (r, room) in rooms.iter().enumerate() {
        let seqs = &published.seqs[r];
        let mut seen = vec![false; seqs.len()];
        let mut after = 0u64;
        loop {
            let req = HistoryRequest {
                conv: ConvRef::Room(RoomId::parse(room)?),
                before: None,
                after: Some(after),
                limit: MAX_LIMIT,
            };
            let asked = Instant::now();
            let reply = tokio::time::timeout(
                HISTORY_TIMEOUT,
                nats.request(HISTORY_SUBJECT, serde_json::to_vec(&req)?.into()),
            )
            .await
            .context("history request timed out")?
            .context("history request")?;
            pages.record(asked.elapsed().as_micros() as u64);
            let (messages, more) = match serde_json::from_slice::<HistoryReply>(&reply.payload)? {
                HistoryReply::Page { messages, more } => (messages, more),
                HistoryReply::Error { code, message } => {
                    bail!("history error {code:?}: {message}")
                }
            };
            for m in messages.iter().filter_map(protocol::frame::Item::message) {
                if m.seq <= after {
                    c.out_of_order += 1;
                    continue;
                }
                after = m.seq;
                match inject::index_of(&m.text).map(|i| i as usize) {
                    Some(i) if seqs.get(i) == Some(&m.seq) => {
                        if std::mem::replace(&mut seen[i], true) {
                            c.dup += 1;
                        } else {
                            c.found += 1;
                        }
                    }
                    _ => c.unexpected += 1,
                }
            }
            if !more || messages.is_empty() {
                break;
            }
        }
    }
    c.lost = c.expected - c.found;
    Ok(Verified { check: c, pages })
}

/// Reads one unlabelled metric from `http://<addr>/metrics` (plain HTTP/1.0, no client crate).
pub async fn metric(addr: SocketAddr, name: &str) -> anyhow::Result<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await?;
    let mut body = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut body)).await??;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .with_context(|| format!("metric {name} not found"))
}
