//! Reading back what the live path did not deliver: resume after `since`, gap fill, and history.
//!
//! The recent window is read from stream `CHAT` itself (an ordered consumer filtered on the
//! conversation's subject), so resume works while the persister is down or behind. Only when the
//! stream may no longer hold the range (it starts after `since`) does the gateway ask the persisters'
//! history service, which keeps everything.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};

use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use protocol::StoredMessage;
use protocol::frame::Item;
use protocol::history::{
    ConvRef, HISTORY_SUBJECT, HistoryErrorCode, HistoryReply, HistoryRequest, MAX_LIMIT,
};
use protocol::subject::{self, Conversation};

use crate::metrics::Metrics;

/// Longest wait for the next message while replaying from the stream.
const REPLAY_STALL: Duration = Duration::from_secs(5);
/// Longest wait for the history service.
const HISTORY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a finding that the stream has dropped nothing is trusted before it is asked again.
///
/// Joining a conversation the stream holds nothing for must tell "never had a message" from "its
/// messages aged out" (then the history service knows the newest). Asking the stream's info on
/// every such join cost nats-server a sixth of its CPU in a connect storm into empty rooms
/// (docs/benchmarks.md, eighth round). The first sequence only grows, so once it is past 1 that is
/// kept for good; until then, the answer is reused for this long. In the one window where the
/// stream starts dropping, a join may answer `last_seq` 0 for a conversation whose every message
/// just aged out; its next message's `prev_seq` then shows the client the gap to page.
pub const NOTHING_DROPPED_TTL: Duration = Duration::from_secs(1);

/// The newest sequence of a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LastSeq {
    pub seq: u64,
    /// False when it could not be known (0 is then a placeholder).
    pub exact: bool,
}

/// A replayed range.
#[derive(Debug)]
pub enum Replay {
    /// Every message of the range, in order.
    Complete(Vec<Item>),
    /// The range holds more than the allowed number of messages.
    TooMany,
}

/// Why reading back failed.
#[derive(Debug, thiserror::Error)]
pub enum BacklogError {
    #[error("stream CHAT unreachable: {0}")]
    Stream(String),
    #[error("history service unavailable: {0}")]
    History(String),
    #[error("history service refused the request: {0}")]
    Refused(String),
}

/// Reads the stream and the history service. Cheap to clone.
#[derive(Clone)]
pub struct Backlog {
    js: jetstream::Context,
    nats: async_nats::Client,
    stream: Arc<tokio::sync::OnceCell<stream::Stream>>,
    /// Replays in progress, so that identical ones (a resume storm into one room) share one read.
    replays: Arc<Mutex<HashMap<ReplayKey, SharedReplay>>>,
    /// What [`NOTHING_DROPPED_TTL`] caches.
    dropped: Arc<Mutex<Dropped>>,
    metrics: Arc<Metrics>,
}

/// Whether stream `CHAT` has dropped any message, as last read.
#[derive(Debug, Default)]
enum Dropped {
    #[default]
    Unknown,
    /// Nothing, when read at that instant.
    No(tokio::time::Instant),
    /// For good: its first sequence only grows.
    Yes,
}

/// A replay, as the JSON bytes of its `message` frames, encoded once for every connection that
/// asked for the same range.
#[derive(Debug)]
pub enum EncodedReplay {
    Complete(Vec<(u64, Utf8Bytes)>),
    TooMany,
}

/// Where a replay reads a range that the stream no longer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Older {
    /// From the history service: a client's resume, which must not miss what retention dropped.
    FromHistory,
    /// Nowhere: the stream's part only (a gateway's own gap fill, which clients page past).
    Skip,
}

/// What makes two replays the same read, so they can share it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ReplayKey {
    subject: String,
    after: u64,
    until: u64,
    max: usize,
    older: Older,
}
type SharedReplay = Shared<BoxFuture<'static, Result<Arc<EncodedReplay>, Arc<BacklogError>>>>;

impl Backlog {
    pub fn new(nats: async_nats::Client, metrics: Arc<Metrics>) -> Self {
        Self {
            js: jetstream::new(nats.clone()),
            nats,
            stream: Arc::default(),
            replays: Arc::default(),
            dropped: Arc::default(),
            metrics,
        }
    }

    /// [`replay`](Self::replay), encoded, with identical concurrent requests coalesced into one read
    /// of the stream (or history service) and one encoding.
    pub async fn replay_shared(
        &self,
        conv: &Conversation,
        after: u64,
        until: u64,
        max: usize,
        older: Older,
    ) -> Result<Arc<EncodedReplay>, Arc<BacklogError>> {
        let key = ReplayKey {
            subject: conv.ingest_subject(),
            after,
            until,
            max,
            older,
        };
        let shared = {
            let mut replays = self.replays.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(existing) = replays.get(&key) {
                self.metrics.replays_coalesced.inc();
                existing.clone()
            } else {
                let this = self.clone();
                let conv = conv.clone();
                let fut: BoxFuture<'static, _> = Box::pin(async move {
                    match this.replay(&conv, after, until, max, older).await {
                        Ok(Replay::Complete(frames)) => Ok(Arc::new(EncodedReplay::Complete(
                            frames
                                .into_iter()
                                .map(|f| (f.seq(), Utf8Bytes::from(f.to_json())))
                                .collect(),
                        ))),
                        Ok(Replay::TooMany) => Ok(Arc::new(EncodedReplay::TooMany)),
                        Err(e) => Err(Arc::new(e)),
                    }
                });
                let shared = fut.shared();
                replays.insert(key.clone(), shared.clone());
                shared
            }
        };
        let result = shared.await;
        self.replays
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        result
    }

    async fn stream(&self) -> Result<&stream::Stream, BacklogError> {
        self.stream
            .get_or_try_init(|| self.js.get_stream(subject::STREAM))
            .await
            .map_err(|e| BacklogError::Stream(e.to_string()))
    }

    /// The newest sequence stored in a conversation, 0 if it has none.
    ///
    /// When the stream holds nothing for the conversation but has dropped messages (retention), the
    /// newest one may only be in the persisters' store, so they are asked; if they do not answer, the
    /// result is 0 and not `exact`.
    pub async fn last_seq(&self, conv: &Conversation) -> Result<LastSeq, BacklogError> {
        use async_nats::jetstream::stream::DirectGetErrorKind;
        let stream = self.stream().await?;
        match stream
            .direct_get_last_for_subject(conv.ingest_subject())
            .await
        {
            Ok(m) => {
                return Ok(LastSeq {
                    seq: m.sequence,
                    exact: true,
                });
            }
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => {}
            Err(e) => return Err(BacklogError::Stream(e.to_string())),
        }
        if !self.has_dropped().await? {
            return Ok(LastSeq {
                seq: 0,
                exact: true,
            });
        }
        let req = HistoryRequest {
            conv: ConvRef::from(conv),
            before: None,
            after: None,
            limit: 1,
        };
        match self.history(&req).await {
            Ok((messages, _)) => Ok(LastSeq {
                seq: messages.last().map_or(0, Item::seq),
                exact: true,
            }),
            Err(e) => {
                tracing::warn!(error = %e, "newest sequence unknown: the stream dropped it and history is unavailable");
                Ok(LastSeq {
                    seq: 0,
                    exact: false,
                })
            }
        }
    }

    /// Whether the stream has dropped a message, read at most once per [`NOTHING_DROPPED_TTL`].
    async fn has_dropped(&self) -> Result<bool, BacklogError> {
        let now = tokio::time::Instant::now();
        match *self.dropped.lock().unwrap_or_else(|e| e.into_inner()) {
            Dropped::Yes => return Ok(true),
            Dropped::No(at) if now.duration_since(at) < NOTHING_DROPPED_TTL => return Ok(false),
            _ => {}
        }
        self.metrics.stream_info_reads.inc();
        let dropped = self.first_seq().await? > 1;
        *self.dropped.lock().unwrap_or_else(|e| e.into_inner()) = if dropped {
            Dropped::Yes
        } else {
            Dropped::No(now)
        };
        Ok(dropped)
    }

    /// The stream's first stored sequence (1 for a stream that never dropped anything).
    async fn first_seq(&self) -> Result<u64, BacklogError> {
        let info = self
            .stream()
            .await?
            .get_info()
            .await
            .map_err(|e| BacklogError::Stream(e.to_string()))?;
        Ok(info.state.first_sequence.max(1))
    }

    /// The messages of `conv` with `after < seq <= until`, or [`Replay::TooMany`] past `max`.
    ///
    /// With [`Older::FromHistory`], a range the stream may no longer hold (its first sequence is
    /// past `after + 1`) is read from the history service instead.
    pub async fn replay(
        &self,
        conv: &Conversation,
        after: u64,
        until: u64,
        max: usize,
        older: Older,
    ) -> Result<Replay, BacklogError> {
        if until <= after {
            return Ok(Replay::Complete(Vec::new()));
        }
        if older == Older::FromHistory {
            let first = self.first_seq().await?;
            if after + 1 < first {
                // The stream no longer holds the start of the range: read that part from history,
                // and the rest, if any, from the stream.
                let split = until.min(first - 1);
                let Replay::Complete(mut older) =
                    self.replay_from_history(conv, after, split, max).await?
                else {
                    return Ok(Replay::TooMany);
                };
                if until <= split {
                    return Ok(Replay::Complete(older));
                }
                let from = older.last().map_or(split, |m| m.seq().max(split));
                let Replay::Complete(newer) = self
                    .replay_from_stream(conv, from, until, max.saturating_sub(older.len()))
                    .await?
                else {
                    return Ok(Replay::TooMany);
                };
                older.extend(newer);
                return Ok(Replay::Complete(older));
            }
        }
        self.replay_from_stream(conv, after, until, max).await
    }

    async fn replay_from_stream(
        &self,
        conv: &Conversation,
        after: u64,
        until: u64,
        max: usize,
    ) -> Result<Replay, BacklogError> {
        let err = |e: &dyn std::fmt::Display| BacklogError::Stream(e.to_string());
        let consumer = self
            .stream()
            .await?
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: conv.ingest_subject(),
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: after + 1,
                },
                ..Default::default()
            })
            .await
            .map_err(|e| err(&e))?;
        let mut messages = consumer.messages().await.map_err(|e| err(&e))?;
        let mut out = Vec::new();
        let mut prev = after;
        loop {
            let next = tokio::time::timeout(REPLAY_STALL, messages.next())
                .await
                .map_err(|_| BacklogError::Stream("replay stalled".into()))?;
            let Some(msg) = next else { break };
            let msg = msg.map_err(|e| err(&e))?;
            let info = msg.info().map_err(|e| err(&e))?;
            let (seq, pending) = (info.stream_sequence, info.pending);
            if seq > until {
                break;
            }
            // `pending` counts what follows this message in the stream, including messages published
            // after `until`; those are few, so past the limit the range is treated as too long.
            if out.is_empty()
                && usize::try_from(pending)
                    .unwrap_or(usize::MAX)
                    .saturating_add(1)
                    > max
            {
                return Ok(Replay::TooMany);
            }
            match StoredMessage::decode(&msg.payload) {
                Ok(stored) => {
                    out.push(Item::from_stored(stored, seq, prev));
                    prev = seq;
                }
                Err(e) => {
                    self.metrics.undecodable.inc();
                    tracing::warn!(seq, error = %e, "undecodable stored message skipped in replay");
                }
            }
            if seq >= until || pending == 0 {
                break;
            }
        }
        Ok(Replay::Complete(out))
    }

    async fn replay_from_history(
        &self,
        conv: &Conversation,
        after: u64,
        until: u64,
        max: usize,
    ) -> Result<Replay, BacklogError> {
        let mut out: Vec<Item> = Vec::new();
        let mut cursor = after;
        loop {
            let req = HistoryRequest {
                conv: ConvRef::from(conv),
                after: Some(cursor),
                before: Some(until + 1),
                limit: MAX_LIMIT,
            };
            let (messages, more) = self.history(&req).await?;
            let Some(last) = messages.last().map(Item::seq) else {
                return Ok(Replay::Complete(out));
            };
            out.extend(messages);
            if out.len() > max {
                return Ok(Replay::TooMany);
            }
            if !more {
                return Ok(Replay::Complete(out));
            }
            cursor = last;
        }
    }

    /// One page from the history service.
    pub async fn history(&self, req: &HistoryRequest) -> Result<(Vec<Item>, bool), BacklogError> {
        let body = serde_json::to_vec(req).unwrap_or_default();
        let answer = tokio::time::timeout(
            HISTORY_TIMEOUT,
            self.nats.request(HISTORY_SUBJECT, body.into()),
        )
        .await
        .map_err(|_| BacklogError::History(format!("no answer within {HISTORY_TIMEOUT:?}")))?
        .map_err(|e| BacklogError::History(e.to_string()))?;
        match serde_json::from_slice::<HistoryReply>(&answer.payload) {
            Ok(HistoryReply::Page { messages, more }) => Ok((messages, more)),
            Ok(HistoryReply::Error {
                code: HistoryErrorCode::BadRequest,
                message,
            }) => Err(BacklogError::Refused(message)),
            Ok(HistoryReply::Error { message, .. }) => Err(BacklogError::History(message)),
            Err(e) => Err(BacklogError::History(format!("bad reply: {e}"))),
        }
    }
}
