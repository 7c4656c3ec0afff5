//! The handle other tasks hold to push frames to one connection.
//!
//! Every connection has a bounded queue of outbound frames. Fan-out pushes without waiting: it never
//! waits for a socket. A full queue means the client does not read fast enough; that one connection is
//! then closed with 4008 and nothing else slows down or grows.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};

use axum::extract::ws::Utf8Bytes;
use protocol::{ConnId, UserId};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Close codes the gateway uses.
pub mod close_code {
    /// The server is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// A frame was larger than the limit.
    pub const TOO_BIG: u16 = 1009;
    /// No client frame within the idle timeout.
    pub const IDLE: u16 = 4000;
    /// The token was revoked or the user logged out.
    pub const LOGGED_OUT: u16 = 4001;
    /// The user was banned (`protocol::access`).
    pub const BANNED: u16 = 4003;
    /// The outbound queue was full.
    pub const SLOW_CONSUMER: u16 = 4008;
}

/// What a session's writer sends.
#[derive(Debug)]
pub enum Outbound {
    /// A JSON text frame, shared with other sockets when it is a fan-out.
    Text(Utf8Bytes),
    /// A WebSocket Ping, for browsers.
    Ping,
    /// Send these frames first, then close with this code.
    Close(u16, &'static str),
}

/// State shared between a session's reader, its writer and fan-out tasks.
#[derive(Debug)]
pub struct ConnShared {
    pub conn: ConnId,
    pub user: UserId,
    /// Cancelled when the connection must close now; the reason is in `close`, or none was given
    /// when the token was cancelled by its parent (the gateway shutting down).
    pub closing: CancellationToken,
    close: OnceLock<(u16, &'static str)>,
}

impl ConnShared {
    /// `closing` is usually a child of the gateway's shutdown token.
    pub fn new(conn: ConnId, user: UserId, closing: CancellationToken) -> Self {
        Self {
            conn,
            user,
            closing,
            close: OnceLock::new(),
        }
    }

    /// Asks the connection to close with `code`. The first reason given wins.
    pub fn close(&self, code: u16, reason: &'static str) {
        let _ = self.close.set((code, reason));
        self.closing.cancel();
    }

    /// The close code and reason, if a close was asked for.
    pub fn close_reason(&self) -> Option<(u16, &'static str)> {
        self.close.get().copied()
    }
}

/// Queue storage kept when a queue drains; more is given back, so a connection that once had a
/// burst does not keep its size.
const QUEUE_KEEP: usize = 16;

/// One connection's bounded queue of outbound frames, filled by any task and emptied by its writer.
///
/// Its storage grows with what is queued and is given back when it drains: an idle connection holds
/// a few hundred bytes here (a tokio channel allocates a block of 32 slots up front, about 1.8 KB
/// with its cache padding, which was the largest item of an idle connection after its DM
/// subscriptions).
#[derive(Debug)]
pub struct Queue {
    state: Mutex<QueueState>,
    /// Woken when frames are taken out while a pusher waits for room.
    space: Notify,
    capacity: usize,
}

#[derive(Debug, Default)]
struct QueueState {
    frames: VecDeque<Outbound>,
    closed: bool,
    /// The writer, waiting for a frame.
    reader: Option<Waker>,
    /// A push found the queue full since the last pop.
    blocked: bool,
}

/// Why a frame was not queued.
enum Refused {
    Full(Outbound),
    Closed,
}

impl Queue {
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::default(),
            space: Notify::new(),
            capacity: capacity.max(1),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn try_push(&self, frame: Outbound) -> Result<(), Refused> {
        let reader = {
            let mut s = self.lock();
            if s.closed {
                return Err(Refused::Closed);
            }
            if s.frames.len() >= self.capacity {
                s.blocked = true;
                return Err(Refused::Full(frame));
            }
            s.frames.push_back(frame);
            s.reader.take()
        };
        if let Some(reader) = reader {
            reader.wake();
        }
        Ok(())
    }

    /// The next frame, or pending until one is pushed.
    pub fn poll_pop(&self, cx: &mut Context<'_>) -> Poll<Outbound> {
        let mut s = self.lock();
        let Some(frame) = s.frames.pop_front() else {
            if !s.reader.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                s.reader = Some(cx.waker().clone());
            }
            return Poll::Pending;
        };
        if s.frames.is_empty() && s.frames.capacity() > QUEUE_KEEP {
            s.frames = VecDeque::new();
        }
        let wake_pushers = std::mem::take(&mut s.blocked);
        drop(s);
        if wake_pushers {
            self.space.notify_waiters();
        }
        Poll::Ready(frame)
    }

    /// Refuses further frames and drops the queued ones: the writer stopped.
    pub fn close(&self) {
        let dropped = {
            let mut s = self.lock();
            s.closed = true;
            std::mem::take(&mut s.frames)
        };
        drop(dropped);
        self.space.notify_waiters();
    }
}

/// A cloneable sender to one connection.
#[derive(Debug, Clone)]
pub struct Outbox {
    queue: Arc<Queue>,
    pub shared: Arc<ConnShared>,
}

/// What happened to a pushed frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// The queue was full; the connection is now closing with 4008.
    Overflow,
    /// The connection is already gone.
    Gone,
}

impl Outbox {
    pub fn new(queue: Arc<Queue>, shared: Arc<ConnShared>) -> Self {
        Self { queue, shared }
    }

    /// Queues a frame without waiting. A full queue closes the connection as a slow consumer.
    pub fn push(&self, frame: Outbound) -> Pushed {
        match self.queue.try_push(frame) {
            Ok(()) => Pushed::Queued,
            Err(Refused::Full(_)) => {
                self.shared
                    .close(close_code::SLOW_CONSUMER, "slow consumer");
                Pushed::Overflow
            }
            Err(Refused::Closed) => Pushed::Gone,
        }
    }

    /// Queues a frame for this connection alone, waiting up to `patience` for room in the queue: for
    /// replays, which may be longer than the queue. A client that does not drain in time is closed as
    /// a slow consumer.
    pub async fn send_wait(&self, frame: Outbound, patience: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + patience;
        let mut frame = frame;
        loop {
            // Registered before trying, so a pop between the try and the wait is not missed.
            let mut room = std::pin::pin!(self.queue.space.notified());
            room.as_mut().enable();
            match self.queue.try_push(frame) {
                Ok(()) => return true,
                Err(Refused::Closed) => return false,
                Err(Refused::Full(f)) => frame = f,
            }
            if tokio::time::timeout_at(deadline, room).await.is_err() {
                self.shared
                    .close(close_code::SLOW_CONSUMER, "slow consumer");
                return false;
            }
        }
    }

    pub fn conn(&self) -> &ConnId {
        &self.shared.conn
    }
}

/// A copy-on-write list of local connections (a hub topic's members, a presence watch's watchers):
/// a fan-out clones the `Arc` under the lock and iterates outside it; changes happen in place
/// (`Arc::make_mut`) unless a fan-out holds a snapshot at that moment, so n joins cost O(n) in all.
pub type ConnList<T> = Mutex<Arc<Vec<T>>>;

/// Adds `item`, or replaces the entry `same` finds; returns the list's length.
pub fn upsert<T: Clone>(list: &ConnList<T>, item: T, same: impl Fn(&T) -> bool) -> usize {
    let mut guard = list.lock().unwrap_or_else(|e| e.into_inner());
    let items = Arc::make_mut(&mut guard);
    match items.iter().position(same) {
        Some(i) => items[i] = item,
        None => items.push(item),
    }
    items.len()
}

/// Removes the first entry `which` finds, if any; returns the list's length.
pub fn remove<T: Clone>(list: &ConnList<T>, which: impl Fn(&T) -> bool) -> usize {
    let mut guard = list.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(i) = guard.iter().position(which) {
        Arc::make_mut(&mut guard).swap_remove(i);
    }
    guard.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn outbox(capacity: usize) -> (Arc<Queue>, Outbox) {
        let queue = Queue::new(capacity);
        let shared = Arc::new(ConnShared::new(
            ConnId::parse("c1").unwrap(),
            UserId::parse("u1").unwrap(),
            CancellationToken::new(),
        ));
        (queue.clone(), Outbox::new(queue, shared))
    }

    fn text(s: &'static str) -> Outbound {
        Outbound::Text(Utf8Bytes::from_static(s))
    }

    fn spawn_send_wait(outbox: &Outbox, frame: &'static str) -> tokio::task::JoinHandle<bool> {
        let outbox = outbox.clone();
        tokio::spawn(async move { outbox.send_wait(text(frame), Duration::from_secs(5)).await })
    }

    fn pop(queue: &Queue) -> Option<String> {
        let mut cx = Context::from_waker(Waker::noop());
        match queue.poll_pop(&mut cx) {
            Poll::Ready(Outbound::Text(t)) => Some(t.to_string()),
            Poll::Ready(other) => Some(format!("{other:?}")),
            Poll::Pending => None,
        }
    }

    #[test]
    fn a_full_queue_closes_the_connection_as_a_slow_consumer() {
        let (queue, outbox) = outbox(2);
        assert_eq!(outbox.push(text("a")), Pushed::Queued);
        assert_eq!(outbox.push(text("b")), Pushed::Queued);
        assert_eq!(outbox.push(text("c")), Pushed::Overflow);
        assert_eq!(
            outbox.shared.close_reason(),
            Some((close_code::SLOW_CONSUMER, "slow consumer"))
        );
        assert_eq!(pop(&queue).as_deref(), Some("a"));
        assert_eq!(pop(&queue).as_deref(), Some("b"));
        assert_eq!(pop(&queue), None);
        queue.close();
        assert_eq!(outbox.push(text("d")), Pushed::Gone);
    }

    #[test]
    fn a_drained_queue_gives_its_storage_back() {
        let (queue, outbox) = outbox(1024);
        for _ in 0..500 {
            assert_eq!(outbox.push(text("x")), Pushed::Queued);
        }
        assert!(queue.lock().frames.capacity() >= 500);
        while pop(&queue).is_some() {}
        assert!(queue.lock().frames.capacity() <= QUEUE_KEEP);
    }

    #[tokio::test]
    async fn send_wait_waits_for_room_and_fails_once_the_writer_stopped() {
        let (queue, outbox) = outbox(1);
        assert_eq!(outbox.push(text("first")), Pushed::Queued);
        let waiting = spawn_send_wait(&outbox, "second");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "the queue is full: it waits");
        assert_eq!(pop(&queue).as_deref(), Some("first"));
        assert!(waiting.await.unwrap(), "queued once there was room");
        assert_eq!(pop(&queue).as_deref(), Some("second"));

        assert_eq!(outbox.push(text("third")), Pushed::Queued);
        let waiting = spawn_send_wait(&outbox, "fourth");
        tokio::time::sleep(Duration::from_millis(50)).await;
        queue.close();
        assert!(!waiting.await.unwrap(), "a closed queue refuses at once");
        assert_eq!(outbox.shared.close_reason(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn send_wait_gives_up_after_its_patience_as_a_slow_consumer() {
        let (_queue, outbox) = outbox(1);
        assert_eq!(outbox.push(text("first")), Pushed::Queued);
        assert!(
            !outbox
                .send_wait(text("second"), Duration::from_secs(10))
                .await
        );
        assert_eq!(
            outbox.shared.close_reason(),
            Some((close_code::SLOW_CONSUMER, "slow consumer"))
        );
    }
}
