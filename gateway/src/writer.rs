//! The write half of a connection, driven by the session's own task.
//!
//! A connection is one task: the session polls the writer next to its reader, so an idle connection
//! holds one future and one task instead of two, and a queued frame reaches the socket without waking
//! a second task. The writer keeps its progress in itself (the frame the socket has not taken yet,
//! the frames not flushed yet), so the session may stop polling it at any point and resume later
//! without losing a frame.

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::conn::{ConnShared, Outbound, Queue, close_code};
use crate::metrics::Metrics;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::stream::SplitSink;
use futures_util::{Sink, SinkExt};

/// Frames written before one flush, when the queue has several waiting.
const WRITE_BATCH: u64 = 64;
/// How long the Close frame may take to go out.
const CLOSE_PATIENCE: Duration = Duration::from_secs(1);
/// How long a slow consumer's Close frame may wait for the client to read again.
const SLOW_CLOSE_PATIENCE: Duration = Duration::from_secs(15);

pub struct Writer {
    sink: SplitSink<WebSocket, Message>,
    queue: Arc<Queue>,
    shared: Arc<ConnShared>,
    metrics: Arc<Metrics>,
    /// A frame taken from the queue that the socket has not accepted yet.
    pending: Option<Message>,
    /// Frames handed to the socket since the last flush.
    unflushed: u64,
    /// The socket failed, an [`Outbound::Close`] was reached or a close was asked for: nothing
    /// more is written but the Close frame, in [`Writer::finish`].
    stopped: bool,
}

impl Writer {
    pub fn new(
        sink: SplitSink<WebSocket, Message>,
        queue: Arc<Queue>,
        shared: Arc<ConnShared>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            sink,
            queue,
            shared,
            metrics,
            pending: None,
            unflushed: 0,
            stopped: false,
        }
    }

    /// Writes what is queued and flushes; pending while there is nothing more to write. Ready only
    /// when the writer stopped, which closes the queue: later pushes fail at once.
    ///
    /// A queue that never empties does not keep the task: socket writes use tokio's cooperative
    /// budget, so a long run of frames ends in a pending flush and the task yields.
    pub fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.stopped {
            return Poll::Ready(());
        }
        let written = self.write_some(cx);
        if written.is_ready() {
            self.stop();
        }
        written
    }

    /// Stops writing: the queue refuses further frames and drops the queued ones.
    fn stop(&mut self) {
        self.stopped = true;
        self.queue.close();
    }

    /// Ready when writing must stop: the socket failed, or a queued Close was reached.
    fn write_some(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if let Some(msg) = self.pending.take() {
                match Pin::new(&mut self.sink).poll_ready(cx) {
                    Poll::Ready(Ok(())) => {
                        if Pin::new(&mut self.sink).start_send(msg).is_err() {
                            return Poll::Ready(());
                        }
                        self.unflushed += 1;
                    }
                    Poll::Ready(Err(_)) => return Poll::Ready(()),
                    Poll::Pending => {
                        self.pending = Some(msg);
                        return Poll::Pending;
                    }
                }
            }
            if self.unflushed < WRITE_BATCH {
                match self.queue.poll_pop(cx) {
                    Poll::Ready(Outbound::Text(t)) => {
                        self.pending = Some(Message::Text(t));
                        continue;
                    }
                    Poll::Ready(Outbound::Ping) => {
                        self.pending = Some(Message::Ping(bytes::Bytes::new()));
                        continue;
                    }
                    Poll::Ready(Outbound::Close(code, reason)) => {
                        // What was fed goes out with the Close frame, in `finish`.
                        self.shared.close(code, reason);
                        return Poll::Ready(());
                    }
                    Poll::Pending => {}
                }
            }
            if self.unflushed == 0 {
                return Poll::Pending;
            }
            match Pin::new(&mut self.sink).poll_flush(cx) {
                Poll::Ready(Ok(())) => {
                    self.metrics.frames_out.inc_by(self.unflushed);
                    self.unflushed = 0;
                }
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Waits until the writer stops.
    pub async fn stopped(&mut self) {
        std::future::poll_fn(|cx| self.poll_write(cx)).await
    }

    /// Runs `work` to completion while writing, so that work which waits for room in this
    /// connection's queue (a replay) sees it drain. If the writer stops meanwhile, or a close is
    /// asked for (a slow consumer overflowed by fan-out, a logout, the gateway shutting down), the
    /// queue is closed at once and `work` still runs to its end, its pushes failing at once: a
    /// replay is not kept going for a connection that is closing.
    pub async fn drive<T>(&mut self, work: impl Future<Output = T>) -> T {
        let shared = self.shared.clone();
        let mut closing = pin!(shared.closing.cancelled());
        let mut work = pin!(work);
        std::future::poll_fn(|cx| {
            if !self.stopped && closing.as_mut().poll(cx).is_ready() {
                self.stop();
            }
            let _ = self.poll_write(cx);
            work.as_mut().poll(cx)
        })
        .await
    }

    /// Sends the Close frame if a close was asked for (after what is already buffered), bounded in
    /// time, and tells everyone holding the connection that it is gone.
    pub async fn finish(mut self) {
        self.queue.close();
        if let Some((code, reason)) = self.shared.close_reason() {
            let frame = CloseFrame {
                code,
                reason: Utf8Bytes::from_static(reason),
            };
            // A slow consumer's socket is full: its Close frame goes out only once the client
            // reads again, so it gets longer (still bounded) before the socket is dropped without.
            let patience = if code == close_code::SLOW_CONSUMER {
                SLOW_CLOSE_PATIENCE
            } else {
                CLOSE_PATIENCE
            };
            let _ =
                tokio::time::timeout(patience, self.sink.send(Message::Close(Some(frame)))).await;
        }
        self.shared.closing.cancel();
    }
}
