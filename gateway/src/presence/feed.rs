//! The shared room feed (`GATEWAY_ROOM_PRESENCE=shared`): one ordered consumer on every room's
//! presence keys per gateway, routed by room id to the watches of rooms with local members. A
//! room's current keys are read by a short-lived snapshot consumer when its watch starts; what the
//! feed delivers meanwhile is kept and merged with the snapshot by stream sequence, so the watch
//! ends in the bucket's state whichever of the two is ahead.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use protocol::RoomId;
use protocol::presence as keys;
use tokio::sync::watch;
use tracing::Instrument;

use super::watch_task::{WatchTask, sleep_until_opt, stream_sequence, until_ok};
use super::{MAX_SNAPSHOT_BUFFER, RETRY_PAUSE};

/// The rooms the shared feed delivers to, by id.
pub(super) struct RoomFeed {
    /// Keyed by the room id as text, as it comes in a subject.
    pub(super) rooms: Mutex<HashMap<String, Arc<RoomRoute>>>,
    /// Bumped each time the feed's consumer was re-created (after a reconnect to NATS, or a failed
    /// or ended stream): the rooms then look for removals the feed can no longer deliver.
    pub(super) reopened: watch::Sender<u64>,
}

impl Default for RoomFeed {
    fn default() -> Self {
        Self {
            rooms: Mutex::default(),
            reopened: watch::Sender::new(0),
        }
    }
}

/// One room's watch as the shared feed sees it.
pub(super) struct RoomRoute {
    pub(super) task: Arc<WatchTask>,
    pub(super) phase: Mutex<Phase>,
}

pub(super) enum Phase {
    /// The room's snapshot is being read: the feed keeps the room's messages.
    Reading(Pending),
    /// Live. Until the feed passes `max`, the highest sequence in the snapshot, a message no newer
    /// than the snapshot's for its key is already in the state and is dropped (the feed may lag
    /// behind the snapshot); past it, `seqs` is emptied.
    Live {
        seqs: HashMap<String, u64>,
        max: u64,
    },
}

#[derive(Default)]
pub(super) struct Pending {
    pub(super) messages: Vec<jetstream::Message>,
    /// More than [`MAX_SNAPSHOT_BUFFER`] arrived: the snapshot is read again.
    pub(super) overflowed: bool,
}

impl RoomFeed {
    /// Creates the gateway's consumer on `room.>` (new messages only) and starts routing it. The
    /// consumer exists when this returns, so every room registered afterwards misses nothing.
    pub(super) async fn start(
        stream: Arc<stream::Stream>,
        reconnects: watch::Receiver<u64>,
    ) -> anyhow::Result<Arc<Self>> {
        let feed = Arc::new(Self::default());
        let (messages, next) = Self::open(&stream, consumer::DeliverPolicy::New).await?;
        tokio::spawn(
            feed.clone()
                .run(stream, messages, next, reconnects)
                .instrument(tracing::debug_span!("presence_room_feed")),
        );
        Ok(feed)
    }

    /// Opens the feed's consumer; also returns the stream sequence it starts at.
    pub(super) async fn open(
        stream: &stream::Stream,
        deliver_policy: consumer::DeliverPolicy,
    ) -> anyhow::Result<(consumer::pull::Ordered, u64)> {
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: keys::ALL_ROOMS_FILTER.to_owned(),
                deliver_policy,
                ..Default::default()
            })
            .await?;
        let next = consumer.cached_info().delivered.stream_sequence + 1;
        Ok((consumer.messages().await?, next))
    }

    /// Routes messages for as long as the gateway runs. After a reconnect to NATS (whose restart
    /// loses the consumer, which async-nats would notice only after two missed 15 s heartbeats), or
    /// if the stream of messages fails or ends, a new consumer starts right after the last message
    /// routed, so an outage loses no presence change.
    pub(super) async fn run(
        self: Arc<Self>,
        stream: Arc<stream::Stream>,
        mut messages: consumer::pull::Ordered,
        mut next: u64,
        mut reconnects: watch::Receiver<u64>,
    ) {
        reconnects.mark_unchanged();
        let mut follow_reconnects = true;
        loop {
            tokio::select! {
                msg = messages.next() => match msg {
                    Some(Ok(msg)) => {
                        if let Ok(info) = msg.info() {
                            next = info.stream_sequence + 1;
                        }
                        self.route(msg);
                        continue;
                    }
                    // Re-created here rather than by async-nats, which may yield errors in a row.
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "presence room feed failed; re-creating it");
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                    None => {
                        tracing::warn!("presence room feed ended; re-creating it");
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                },
                changed = reconnects.changed(), if follow_reconnects => {
                    if changed.is_err() {
                        follow_reconnects = false;
                        continue;
                    }
                    tracing::debug!(next, "reconnected to NATS; re-creating the presence room feed");
                }
            }
            let policy = consumer::DeliverPolicy::ByStartSequence {
                start_sequence: next,
            };
            messages = until_ok("presence room feed", || Self::open(&stream, policy))
                .await
                .0;
            // After the old consumer is gone, so none of its messages is routed after a reconcile.
            self.reopened.send_modify(|n| *n += 1);
        }
    }

    /// Hands a message to its room's watch: kept while the snapshot is read, applied once live.
    pub(super) fn route(&self, msg: jetstream::Message) {
        let Some(room) = room_of(&msg.subject) else {
            return;
        };
        let route = {
            let rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
            match rooms.get(room) {
                Some(r) => r.clone(),
                None => return,
            }
        };
        let mut phase = route.phase.lock().unwrap_or_else(|e| e.into_inner());
        match &mut *phase {
            Phase::Reading(p) if p.overflowed => {}
            Phase::Reading(p) if p.messages.len() >= MAX_SNAPSHOT_BUFFER => {
                p.messages = Vec::new();
                p.overflowed = true;
            }
            Phase::Reading(p) => p.messages.push(msg),
            // Applied under the lock, so nothing overtakes the snapshot's merge.
            Phase::Live { seqs, max } => {
                let seq = stream_sequence(&msg);
                // Without a sequence (no reply subject to read it from) there is nothing to compare.
                if seq == 0 || seq > *max {
                    if !seqs.is_empty() {
                        *seqs = HashMap::new();
                    }
                } else if seq <= seqs.get(msg.subject.as_str()).copied().unwrap_or(0) {
                    return;
                }
                route.task.apply(&msg, true);
            }
        }
    }

    pub(super) fn insert(&self, room: &RoomId, route: Arc<RoomRoute>) {
        let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        rooms.insert(room.as_str().to_owned(), route);
    }

    pub(super) fn remove(&self, room: &RoomId, route: &Arc<RoomRoute>) {
        let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        if rooms
            .get(room.as_str())
            .is_some_and(|r| Arc::ptr_eq(r, route))
        {
            rooms.remove(room.as_str());
        }
    }
}

impl RoomRoute {
    /// Reads the room's snapshot, merges what the feed delivered meanwhile, then runs the grace
    /// timers while the feed applies live messages.
    pub(super) async fn run(
        self: Arc<Self>,
        ready: watch::Sender<bool>,
        mut reopened: watch::Receiver<u64>,
    ) {
        reopened.mark_unchanged();
        loop {
            let snapshot = until_ok("presence room snapshot", || self.task.read_snapshot()).await;
            if self.merge(&snapshot) {
                break;
            }
            self.task.metrics.presence_snapshot_retries.inc();
        }
        let _ = ready.send(true);
        let mut follow_feed = true;
        // Polled beside the grace timers, which keep running while it waits for NATS.
        let mut reconcile: Option<Pin<Box<dyn Future<Output = ()> + Send + '_>>> = None;
        loop {
            let due = self.task.next_due();
            tokio::select! {
                () = sleep_until_opt(due) => self.task.expire_graces(),
                () = self.task.wake.notified() => {}
                () = async { reconcile.as_mut().expect("guarded").await }, if reconcile.is_some() => {
                    reconcile = None;
                }
                // The feed re-created its consumer; what it can no longer deliver is found here. A
                // reconcile still running is replaced: the new one reads a later snapshot.
                changed = reopened.changed(), if follow_feed => match changed {
                    Ok(()) => reconcile = Some(Box::pin(self.task.reconcile_after_reconnect())),
                    Err(_) => follow_feed = false,
                },
            }
        }
    }

    /// Applies the snapshot, then each message the feed kept that is newer than the snapshot's
    /// message for its key, and makes the watch live (the same rule then holds for what the feed
    /// delivers until it passes the snapshot). A kept message no newer than the snapshot's is
    /// already in it; one for a key the snapshot lacks was followed by that key's removal, which
    /// was kept too. Returns `false` (and empties the buffer) if the buffer overflowed: the
    /// snapshot must then be read again.
    pub(super) fn merge(&self, snapshot: &[jetstream::Message]) -> bool {
        let mut phase = self.phase.lock().unwrap_or_else(|e| e.into_inner());
        let Phase::Reading(p) = &mut *phase else {
            return true;
        };
        if p.overflowed {
            *p = Pending::default();
            return false;
        }
        let mut seqs: HashMap<String, u64> = HashMap::with_capacity(snapshot.len());
        for msg in snapshot {
            self.task.apply(msg, false);
            seqs.insert(msg.subject.to_string(), stream_sequence(msg));
        }
        for msg in &p.messages {
            if stream_sequence(msg) > seqs.get(msg.subject.as_str()).copied().unwrap_or(0) {
                self.task.apply(msg, false);
            }
        }
        let max = seqs.values().copied().max().unwrap_or(0);
        let passed = p.messages.last().is_some_and(|m| stream_sequence(m) > max);
        *phase = if passed {
            Phase::Live {
                seqs: HashMap::new(),
                max: 0,
            }
        } else {
            Phase::Live { seqs, max }
        };
        true
    }
}

/// The room of a `$KV.presence.room.<room>.<user>.<conn>` subject.
pub(super) fn room_of(subject: &str) -> Option<&str> {
    keys::Key::parse_subject(subject)?.room()
}
