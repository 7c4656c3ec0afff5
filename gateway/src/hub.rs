//! Subscriptions of this gateway, one per room and per user with local connections.
//!
//! A topic (a room, or a user's direct messages) has one NATS subscription on this gateway, whatever
//! the number of local connections in it, and a member list. The subscription task decodes each message
//! once, encodes its JSON frame once, and pushes the same bytes to every member's queue with `try_send`.
//! The member list is copy-on-write (`Arc<[Outbox]>`): fan-out takes a snapshot under a short lock and
//! never holds a lock across an `.await`. When the last member leaves, the topic is removed and its task
//! is aborted, which drops the subscription (an UNSUB to the server).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::HeaderMap;
use axum::extract::ws::Utf8Bytes;
use futures_util::StreamExt;
use protocol::frame::MessageFrame;
use protocol::{RoomId, ServerFrame, StoredMessage, UserId};
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tracing::Instrument;

use crate::conn::{Outbound, Outbox, Pushed, close_code};
use crate::metrics::Metrics;
use protocol::control::UserControl;

/// How long a join waits for its subscription to be registered at the server.
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(5);
/// Backoff between attempts to subscribe while NATS is unreachable.
const SUBSCRIBE_RETRY: Duration = Duration::from_millis(500);

/// What a topic is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TopicKey {
    Room(RoomId),
    User(UserId),
}

impl TopicKey {
    fn subjects(&self) -> Vec<String> {
        match self {
            TopicKey::Room(room) => {
                vec![protocol::subject::Conversation::Room(room.clone()).deliver_subject()]
            }
            TopicKey::User(user) => {
                let [a, b] = protocol::subject::user_dm_subjects(user);
                vec![a, b, protocol::subject::user_control_subject(user)]
            }
        }
    }
}

type Members = Arc<Mutex<Arc<[Outbox]>>>;

struct Topic {
    members: Members,
    ready: watch::Receiver<bool>,
    task: AbortHandle,
}

/// The registry of topics. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    topics: Arc<Mutex<HashMap<TopicKey, Topic>>>,
    nats: async_nats::Client,
    metrics: Arc<Metrics>,
}

impl Hub {
    pub fn new(nats: async_nats::Client, metrics: Arc<Metrics>) -> Self {
        Self {
            topics: Arc::default(),
            nats,
            metrics,
        }
    }

    /// Adds `member` to the topic, subscribing if it is the first local member, and waits until the
    /// subscription is registered at the server so that nothing published afterwards is missed.
    /// Returns `false` if that could not be confirmed in time (NATS unreachable); the member stays in
    /// the topic and the subscription is restored once NATS is back.
    pub async fn join(&self, key: TopicKey, member: Outbox) -> bool {
        let mut ready = {
            let mut topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
            let topic = topics
                .entry(key.clone())
                .or_insert_with(|| self.spawn_topic(key));
            let mut members = topic.members.lock().unwrap_or_else(|e| e.into_inner());
            let mut next: Vec<Outbox> = members
                .iter()
                .filter(|m| m.conn() != member.conn())
                .cloned()
                .collect();
            next.push(member);
            *members = next.into();
            drop(members);
            topic.ready.clone()
        };
        tokio::time::timeout(SUBSCRIBE_WAIT, ready.wait_for(|r| *r))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Removes a connection from a topic, unsubscribing when it was the last local member.
    pub fn leave(&self, key: &TopicKey, conn: &protocol::ConnId) {
        let mut topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
        let Some(topic) = topics.get(key) else { return };
        let empty = {
            let mut members = topic.members.lock().unwrap_or_else(|e| e.into_inner());
            let next: Vec<Outbox> = members
                .iter()
                .filter(|m| m.conn() != conn)
                .cloned()
                .collect();
            *members = next.into();
            members.is_empty()
        };
        if empty {
            if let Some(topic) = topics.remove(key) {
                topic.task.abort();
                self.metrics.subscriptions.dec();
            }
        }
    }

    /// Number of topics with a live subscription on this gateway.
    pub fn topic_count(&self) -> usize {
        self.topics.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Number of local members of a topic.
    pub fn member_count(&self, key: &TopicKey) -> usize {
        let topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
        topics.get(key).map_or(0, |t| {
            t.members.lock().unwrap_or_else(|e| e.into_inner()).len()
        })
    }

    fn spawn_topic(&self, key: TopicKey) -> Topic {
        let members: Members = Arc::new(Mutex::new(Arc::from(Vec::new())));
        let (ready_tx, ready) = watch::channel(false);
        let span = tracing::debug_span!("topic", key = ?key);
        let task = tokio::spawn(
            run_topic(
                self.nats.clone(),
                key.subjects(),
                members.clone(),
                ready_tx,
                self.metrics.clone(),
            )
            .instrument(span),
        );
        self.metrics.subscriptions.inc();
        Topic {
            members,
            ready,
            task: task.abort_handle(),
        }
    }
}

async fn run_topic(
    nats: async_nats::Client,
    subjects: Vec<String>,
    members: Members,
    ready: watch::Sender<bool>,
    metrics: Arc<Metrics>,
) {
    let mut subs = Vec::with_capacity(subjects.len());
    for subject in subjects {
        loop {
            match nats.subscribe(subject.clone()).await {
                Ok(sub) => {
                    subs.push(sub);
                    break;
                }
                Err(e) => {
                    tracing::warn!(%subject, error = %e, "subscribe failed; retrying");
                    tokio::time::sleep(SUBSCRIBE_RETRY).await;
                }
            }
        }
    }
    // A flush round trip means the server has processed our SUBs. While NATS is away, keep trying:
    // the client re-sends the SUBs itself on reconnect.
    while nats.flush().await.is_err() {
        tokio::time::sleep(SUBSCRIBE_RETRY).await;
    }
    let _ = ready.send(true);
    let mut stream = futures_util::stream::select_all(subs);
    while let Some(msg) = stream.next().await {
        if msg.subject.starts_with(CONTROL_PREFIX) {
            control(&msg, &members);
            continue;
        }
        let Some(frame) = encode_delivery(&msg) else {
            metrics.undecodable.inc();
            tracing::warn!(subject = %msg.subject, "undecodable delivery skipped");
            continue;
        };
        let snapshot = members.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut queued = 0;
        for m in snapshot.iter() {
            if m.push(Outbound::Text(frame.clone())) == Pushed::Queued {
                queued += 1;
            }
        }
        metrics.delivered.inc_by(queued);
    }
}

/// Prefix of control subjects, which carry commands rather than chat messages.
const CONTROL_PREFIX: &str = "chat.ctl.";

/// Applies a control command to every local connection of the topic.
fn control(msg: &async_nats::Message, members: &Members) {
    match serde_json::from_slice::<UserControl>(&msg.payload) {
        Ok(UserControl::Logout) => {
            let snapshot = members.lock().unwrap_or_else(|e| e.into_inner()).clone();
            tracing::info!(conns = snapshot.len(), subject = %msg.subject, "logout: closing the user's sockets");
            for m in snapshot.iter() {
                m.shared.close(close_code::LOGGED_OUT, "logged out");
            }
        }
        Err(e) => {
            tracing::warn!(subject = %msg.subject, error = %e, "unknown control command ignored")
        }
    }
}

/// Turns a republished message into the JSON bytes of its `message` frame: once per gateway.
pub fn encode_delivery(msg: &async_nats::Message) -> Option<Utf8Bytes> {
    let headers = msg.headers.as_ref()?;
    let seq = header_u64(headers, async_nats::header::NATS_SEQUENCE)?;
    let prev_seq = header_u64(headers, async_nats::header::NATS_LAST_SEQUENCE).unwrap_or(0);
    let stored = StoredMessage::decode(&msg.payload).ok()?;
    let json = ServerFrame::Message(MessageFrame::from_stored(stored, seq, prev_seq)).to_json();
    Some(Utf8Bytes::from(json))
}

fn header_u64(h: &HeaderMap, name: async_nats::header::HeaderName) -> Option<u64> {
    h.get(name)?.as_str().parse().ok()
}
