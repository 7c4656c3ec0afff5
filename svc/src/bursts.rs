//! Pulling a durable JetStream consumer in bursts, for readers that need not see a message the
//! moment it is stored: the notifier waits `NOTIFY_OFFLINE_AFTER_SECS` before it sends anything,
//! and a webhook is at least once, not at once.
//!
//! A continuous pull (`consumer.messages()`) is handed each message as it is stored, and each ack
//! goes back when that message's work ends: on a stream taking a few thousand small messages a
//! second, nats-server then wakes for one delivery and one ack per message and reader, which made
//! the notifier and the relay cost it 2.2–4.6 times its CPU per pairs delivery (docs/benchmarks.md,
//! tenth round). Here a [`Reader`] asks once per tick for what has piled up (`fetch`, which answers
//! at once and does not wait), so the messages come in one burst, and asks again at once while
//! the answers come full. Acks are still one per message (explicit acks, so several instances can
//! share the consumer and a crash redelivers only what that instance held), but those of a window
//! go out together ([`Acks`]).
//!
//! Bounds: a pull asks for at most [`Bursts::max`] messages, and never for more than the room the
//! consumer's `max_ack_pending` leaves beside what this reader holds unacked; at most
//! [`MAX_QUEUED_ACKS`] acks wait, [`ACK_BATCH`] at most go in one batch.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::jetstream::{AckKind, Message, consumer::PullConsumer};
use futures_util::StreamExt;
use tokio::sync::mpsc;

/// Acks waiting to be sent, at most; a full queue makes [`Acks::send`] wait.
pub const MAX_QUEUED_ACKS: usize = 4096;
/// Most acks one batch holds.
pub const ACK_BATCH: usize = 256;

/// When and how much a reader pulls.
#[derive(Debug, Clone, Copy)]
pub struct Bursts {
    /// Time between pulls while the consumer is caught up: the longest a stored message waits.
    /// Acks wait at most as long.
    pub every: Duration,
    /// Most messages one pull asks for.
    pub max: usize,
}

/// A consumer read in bursts, with its acks.
#[derive(Debug)]
pub struct Reader {
    consumer: PullConsumer,
    bursts: Bursts,
    /// The consumer's `max_ack_pending`.
    limit: usize,
    /// Messages handed out and not yet acked (their acks not yet sent).
    held: Arc<AtomicUsize>,
    acks: Acks,
    /// The next pull is now, not a tick later: the first one, and the one after a pull that got
    /// all it asked for (more may be waiting).
    now: bool,
}

impl Reader {
    /// Reads `consumer`, whose `max_ack_pending` is `limit`, in `bursts`.
    pub fn new(consumer: PullConsumer, bursts: Bursts, limit: usize) -> Self {
        let held = Arc::new(AtomicUsize::new(0));
        let batch = ACK_BATCH.min((limit / 4).max(1));
        Self {
            acks: Acks::start(bursts.every, batch, held.clone()),
            consumer,
            bursts,
            limit: limit.max(1),
            held,
            now: true,
        }
    }

    /// Where this reader's acks go: every message [`Reader::next`] returns must be sent there.
    pub fn acks(&self) -> Acks {
        self.acks.clone()
    }

    /// Waits for the next tick (not for the first call, nor after a full burst), then returns
    /// what the consumer has: at most [`Bursts::max`] messages and the room `max_ack_pending`
    /// leaves, possibly none. With no room at all it waits for acks, a tenth of a tick at a
    /// time, without asking the server. An error (the server gone, the consumer deleted) is the
    /// caller's to log; the next call tries again a tick later.
    pub async fn next(&mut self) -> Result<Vec<Message>, async_nats::Error> {
        if !std::mem::take(&mut self.now) {
            tokio::time::sleep(self.bursts.every).await;
        }
        let mut room = self.limit.saturating_sub(self.held.load(Ordering::Relaxed));
        while room == 0 {
            tokio::time::sleep(self.bursts.every / 10).await;
            room = self.limit.saturating_sub(self.held.load(Ordering::Relaxed));
        }
        let ask = room.min(self.bursts.max);
        let mut burst = self.consumer.fetch().max_messages(ask).messages().await?;
        let mut msgs = Vec::new();
        while let Some(m) = burst.next().await {
            match m {
                Ok(m) => msgs.push(m),
                Err(e) => {
                    // A status other than "no more now" (404) ends the burst: "max_ack_pending
                    // reached" (409, when redeliveries held room this reader did not count).
                    tracing::trace!(error = %e, "burst ended by a status");
                    break;
                }
            }
        }
        self.held.fetch_add(msgs.len(), Ordering::Relaxed);
        self.now = msgs.len() >= ask;
        Ok(msgs)
    }
}

/// Sends acks in batches. Cheap to clone; the task ends with the last clone.
#[derive(Clone, Debug)]
pub struct Acks {
    tx: mpsc::Sender<(Message, AckKind)>,
}

impl Acks {
    /// Starts the task that sends the acks queued within `every` of the first one together, at
    /// most `batch` at once, and counts each sent off `held`.
    fn start(every: Duration, batch: usize, held: Arc<AtomicUsize>) -> Self {
        let (tx, mut rx) = mpsc::channel::<(Message, AckKind)>(MAX_QUEUED_ACKS);
        tokio::spawn(async move {
            let mut queued = Vec::new();
            // A batch opens with its first ack and closes `every` later, or once it is full.
            while let Some(first) = rx.recv().await {
                queued.push(first);
                let close = tokio::time::Instant::now() + every;
                while queued.len() < batch {
                    match tokio::time::timeout_at(close, rx.recv()).await {
                        Ok(Some(a)) => queued.push(a),
                        Ok(None) | Err(_) => break,
                    }
                }
                for (msg, kind) in queued.drain(..) {
                    if let Err(e) = msg.ack_with(kind).await {
                        tracing::debug!(error = %e, "ack failed; the message comes again");
                    }
                    let _ = held.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |h| {
                        Some(h.saturating_sub(1))
                    });
                }
            }
        });
        Self { tx }
    }

    /// Queues `kind` for `msg`; it goes out with its batch.
    pub async fn send(&self, msg: Message, kind: AckKind) {
        if self.tx.send((msg, kind)).await.is_err() {
            tracing::debug!("ack task gone; the message comes again");
        }
    }
}
