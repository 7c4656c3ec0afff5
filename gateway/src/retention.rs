//! The retention guard: stream `CHAT` keeps at most `max_bytes` and, when full, deletes its oldest
//! messages whether or not a persister has stored them (`discard: old`). So that retention never
//! deletes an unpersisted message silently, every gateway watches how full the stream is and how far
//! the persisters have come (the highest ack floor of their durable consumers), and while the
//! stream is nearly full of messages no persister has stored, refuses sends with `unavailable`
//! instead of letting the next one push an unpersisted message out. Clients resend (same
//! `client_msg_id`), and the sends go through again once a persister catches up.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use protocol::subject;

use crate::metrics::Metrics;

/// How often the guard reads the stream and the persisters' consumers.
pub const DEFAULT_CHECK_EVERY: Duration = Duration::from_secs(1);
/// The guard closes when the stream holds at least this share of its `max_bytes`…
pub const FULL: f64 = 0.9;
/// …and less than this share of its messages is stored by a persister: the discard edge is close
/// to messages that exist nowhere else.
pub const PERSISTED_CLOSE: f64 = 0.1;
/// It opens again when this share is stored, or the stream is below [`FULL`] − 5 points.
pub const PERSISTED_OPEN: f64 = 0.2;

/// Whether sends are refused, shared by the publisher and the watch.
#[derive(Clone, Default)]
pub struct Guard(Arc<AtomicBool>);

impl Guard {
    pub fn closed(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    fn set(&self, closed: bool) {
        self.0.store(closed, Ordering::Relaxed);
    }
}

/// What one check read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    pub bytes: u64,
    pub max_bytes: i64,
    pub first_seq: u64,
    pub last_seq: u64,
    /// The highest ack floor among the persisters' consumers (0 when none exists).
    pub persisted_to: u64,
}

/// Whether the guard should be closed after `r`, given whether it is closed now (hysteresis).
pub fn decide(r: &Reading, closed: bool) -> bool {
    let Ok(max) = u64::try_from(r.max_bytes) else {
        return false; // No byte limit (-1): nothing is discarded for size.
    };
    if max == 0 || r.last_seq < r.first_seq {
        return false;
    }
    let fill = r.bytes as f64 / max as f64;
    let held = (r.last_seq - r.first_seq + 1) as f64;
    let persisted = r.persisted_to.saturating_sub(r.first_seq.saturating_sub(1)) as f64;
    let share = (persisted / held).min(1.0);
    if closed {
        !(share >= PERSISTED_OPEN || fill < FULL - 0.05)
    } else {
        fill >= FULL && share < PERSISTED_CLOSE
    }
}

/// Reads the stream and the consumers every `every`, and sets `guard`; runs until aborted. A failed
/// read leaves the guard as it was.
pub async fn watch(
    js: jetstream::Context,
    consumers: Vec<String>,
    every: Duration,
    guard: Guard,
    metrics: Arc<Metrics>,
) {
    loop {
        if let Some(r) = read(&js, &consumers).await {
            let closed = decide(&r, guard.closed());
            if closed != guard.closed() {
                if closed {
                    tracing::warn!(
                        bytes = r.bytes,
                        max_bytes = r.max_bytes,
                        first_seq = r.first_seq,
                        persisted_to = r.persisted_to,
                        "RETENTION GUARD: stream CHAT is nearly full of messages no persister has \
                         stored; refusing sends with unavailable until a persister catches up"
                    );
                } else {
                    tracing::info!("retention guard open: sends accepted again");
                }
            }
            guard.set(closed);
            metrics.retention_guard.set(i64::from(closed));
        }
        tokio::time::sleep(every).await;
    }
}

async fn read(js: &jetstream::Context, consumers: &[String]) -> Option<Reading> {
    let mut stream = js.get_stream(subject::STREAM).await.ok()?;
    let info = stream.info().await.ok()?.clone();
    let mut persisted_to = 0;
    for name in consumers {
        if let Ok(mut c) = stream
            .get_consumer::<jetstream::consumer::pull::Config>(name)
            .await
            && let Ok(ci) = c.info().await
        {
            persisted_to = persisted_to.max(ci.ack_floor.stream_sequence);
        }
    }
    Some(Reading {
        bytes: info.state.bytes,
        max_bytes: info.config.max_bytes,
        first_seq: info.state.first_sequence,
        last_seq: info.state.last_sequence,
        persisted_to,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(bytes: u64, first: u64, last: u64, persisted_to: u64) -> Reading {
        Reading {
            bytes,
            max_bytes: 1000,
            first_seq: first,
            last_seq: last,
            persisted_to,
        }
    }

    #[test]
    fn closes_when_full_of_unpersisted_messages_and_opens_with_hysteresis() {
        // Nearly full, nothing persisted: closed.
        assert!(decide(&r(950, 1, 100, 0), false));
        // Nearly full, but a persister has most of it: open.
        assert!(!decide(&r(950, 1, 100, 90), false));
        // Not full: open whatever the lag.
        assert!(!decide(&r(500, 1, 100, 0), false));
        // Closed stays closed at 15 % persisted, opens at 20 %.
        assert!(decide(&r(950, 1, 100, 15), true));
        assert!(!decide(&r(950, 1, 100, 20), true));
        // The stream's first messages gone (persisted earlier): the share counts from first_seq.
        assert!(decide(&r(950, 501, 600, 505), false));
        assert!(!decide(&r(950, 501, 600, 560), false));
        // No byte limit.
        let unlimited = Reading {
            max_bytes: -1,
            ..r(950, 1, 100, 0)
        };
        assert!(!decide(&unlimited, false));
    }
}
