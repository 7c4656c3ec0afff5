//! The handle other tasks hold to push frames to one connection.
//!
//! Every connection has a bounded queue of outbound frames. Fan-out pushes with `try_send`: it never
//! waits for a socket. A full queue means the client does not read fast enough; that one connection is
//! then closed with 4008 and nothing else slows down or grows.

use std::sync::{Arc, Mutex, OnceLock};

use axum::extract::ws::Utf8Bytes;
use protocol::{ConnId, UserId};
use tokio::sync::mpsc;
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
    /// Cancelled when the connection must close now; the reason is in `close`.
    pub closing: CancellationToken,
    close: OnceLock<(u16, &'static str)>,
}

impl ConnShared {
    pub fn new(conn: ConnId, user: UserId) -> Self {
        Self {
            conn,
            user,
            closing: CancellationToken::new(),
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

/// A cloneable sender to one connection.
#[derive(Debug, Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Outbound>,
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
    pub fn new(tx: mpsc::Sender<Outbound>, shared: Arc<ConnShared>) -> Self {
        Self { tx, shared }
    }

    /// Queues a frame without waiting. A full queue closes the connection as a slow consumer.
    pub fn push(&self, frame: Outbound) -> Pushed {
        match self.tx.try_send(frame) {
            Ok(()) => Pushed::Queued,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.shared
                    .close(close_code::SLOW_CONSUMER, "slow consumer");
                Pushed::Overflow
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Pushed::Gone,
        }
    }

    /// Queues a frame for this connection alone, waiting up to `patience` for room in the queue: for
    /// replays, which may be longer than the queue. A client that does not drain in time is closed as
    /// a slow consumer.
    pub async fn send_wait(&self, frame: Outbound, patience: std::time::Duration) -> bool {
        match tokio::time::timeout(patience, self.tx.send(frame)).await {
            Ok(Ok(())) => true,
            Ok(Err(_)) => false,
            Err(_) => {
                self.shared
                    .close(close_code::SLOW_CONSUMER, "slow consumer");
                false
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
