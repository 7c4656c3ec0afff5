//! One presence watch's task: the consumer on the keys it covers, re-created after a NATS
//! reconnect or a failed stream, the snapshot it starts from, the reconcile that finds removals
//! missed while cut off, and the grace timers. It turns KV messages into [`Change`]s for its
//! [`PresenceState`](super::state::PresenceState) and sends the events that come out.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_nats::jetstream::{self, consumer, stream};
use axum::extract::ws::Utf8Bytes;
use futures_util::StreamExt;
use protocol::frame::PresenceEntry;
use protocol::presence as keys;
use protocol::{ServerFrame, UserId};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use svc::retry::Backoff;

use super::state::Change;
use super::{Members, RETRY_PAUSE, SNAPSHOT_WAIT, State, WatchKey};
use crate::conn::{Outbound, Pushed};
use crate::metrics::Metrics;

pub(super) fn stream_sequence(msg: &jetstream::Message) -> u64 {
    msg.info().map_or(0, |i| i.stream_sequence)
}

pub(super) struct WatchTask {
    pub(super) stream: Arc<stream::Stream>,
    pub(super) key: WatchKey,
    /// The room key is a group's: events carry `group`, not `room`.
    pub(super) group: bool,
    pub(super) members: Members,
    pub(super) state: State,
    pub(super) room_event_limit: usize,
    pub(super) metrics: Arc<Metrics>,
    /// Told when `due` moves earlier, for a timer task that does not read the messages itself.
    pub(super) wake: Notify,
    /// Shared by the gateway's watches: at most [`RECREATE_IN_FLIGHT`] re-create their consumers
    /// at once after a reconnect.
    pub(super) recreate: Arc<tokio::sync::Semaphore>,
}

/// Whether a watch opens its consumer on its own (at start), or with every other watch of the
/// gateway at once (after a reconnect), when each attempt takes one of the gateway's
/// [`RECREATE_IN_FLIGHT`](super::RECREATE_IN_FLIGHT) permits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Recreate {
    Alone,
    WithOthers,
}

/// What a presence key means to a watcher.
pub(super) enum KeyKind {
    Conn { user: UserId, conn: String },
    Seen { user: UserId },
}

impl WatchTask {
    pub(super) fn filters(&self) -> Vec<String> {
        match &self.key {
            WatchKey::User(u) => keys::user_filters(u),
            WatchKey::Room(r) => vec![keys::room_filter(r)],
        }
    }

    pub(super) fn parse_key(&self, subject: &str) -> Option<KeyKind> {
        let key = keys::Key::parse_subject(subject)?;
        let user = UserId::parse(key.user()).ok()?;
        Some(match key {
            keys::Key::Conn { conn, .. } | keys::Key::Room { conn, .. } => KeyKind::Conn {
                user,
                conn: conn.to_owned(),
            },
            keys::Key::Seen { .. } => KeyKind::Seen { user },
        })
    }

    /// Reads the watch's snapshot, then follows its keys. After a reconnect to NATS, or if the
    /// messages fail or end, the consumer is made again right after the last message applied
    /// (async-nats alone would notice a consumer lost in a server restart only after two missed 15 s
    /// heartbeats, by when the delete markers of keys that expired meanwhile may be gone).
    pub(super) async fn run(
        self,
        ready: watch::Sender<bool>,
        mut reconnects: watch::Receiver<u64>,
    ) {
        let policy = consumer::DeliverPolicy::LastPerSubject;
        let (mut messages, mut initial) = self.open_retrying(policy, Recreate::Alone).await;
        if initial == 0 {
            let _ = ready.send(true);
        }
        reconnects.mark_unchanged();
        let mut follow_reconnects = true;
        let mut next = None;
        loop {
            let due = self.next_due();
            let reopen = tokio::select! {
                msg = messages.next() => match msg {
                    Some(Ok(msg)) => {
                        if let Ok(info) = msg.info() {
                            next = Some(info.stream_sequence + 1);
                        }
                        let live = initial == 0;
                        self.apply(&msg, live);
                        if !live {
                            initial -= 1;
                            if initial == 0 {
                                let _ = ready.send(true);
                            }
                        }
                        false
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "presence watch failed; re-creating it");
                        tokio::time::sleep(RETRY_PAUSE).await;
                        true
                    }
                    None => {
                        tracing::warn!("presence watch ended; re-creating it");
                        tokio::time::sleep(RETRY_PAUSE).await;
                        true
                    }
                },
                changed = reconnects.changed(), if follow_reconnects => {
                    follow_reconnects = changed.is_ok();
                    follow_reconnects
                }
                () = sleep_until_opt(due) => {
                    self.expire_graces();
                    false
                }
            };
            if !reopen {
                continue;
            }
            // Live with a known position: from there. Otherwise the current keys again: still as
            // the snapshot if it was not complete, else as live changes to a state that has none.
            let policy = match next {
                Some(start_sequence) if initial == 0 => {
                    consumer::DeliverPolicy::ByStartSequence { start_sequence }
                }
                _ => consumer::DeliverPolicy::LastPerSubject,
            };
            // After a reconnect every watch of the gateway gets here at once.
            let (m, pending) = self.open_retrying(policy, Recreate::WithOthers).await;
            messages = m;
            if initial > 0 {
                // The current keys again, from the start: a key applied from the first, partial read
                // may have expired since (no event was sent while reading).
                self.state.lock().unwrap_or_else(|e| e.into_inner()).clear();
                initial = pending;
                if initial == 0 {
                    let _ = ready.send(true);
                }
            } else {
                // What the new consumer delivers (from `next`) waits meanwhile.
                self.reconcile_after_reconnect().await;
            }
        }
    }

    /// [`WatchTask::open`], retried so a watch survives a NATS outage.
    pub(super) async fn open_retrying(
        &self,
        policy: consumer::DeliverPolicy,
        when: Recreate,
    ) -> (consumer::pull::Ordered, u64) {
        let what = "presence watch";
        match when {
            Recreate::WithOthers => self.until_ok_limited(what, || self.open(policy)).await,
            Recreate::Alone => until_ok(what, || self.open(policy)).await,
        }
    }

    /// [`until_ok`] for the work every watch does at once after a reconnect: each attempt holds
    /// one of the gateway's [`RECREATE_IN_FLIGHT`] permits, the pause between attempts none.
    pub(super) async fn until_ok_limited<T, Fut>(
        &self,
        what: &str,
        mut attempt: impl FnMut() -> Fut,
    ) -> T
    where
        Fut: Future<Output = anyhow::Result<T>>,
    {
        until_ok(what, || {
            let attempt = attempt();
            async move {
                let _permit = self.recreate.acquire().await.ok();
                attempt.await
            }
        })
        .await
    }

    /// An ordered consumer on the watch's keys.
    pub(super) async fn consumer(
        &self,
        deliver_policy: consumer::DeliverPolicy,
    ) -> anyhow::Result<consumer::Consumer<consumer::pull::OrderedConfig>> {
        let config = consumer::pull::OrderedConfig {
            filter_subjects: self.filters(),
            deliver_policy,
            ..Default::default()
        };
        Ok(self.stream.create_consumer(config).await?)
    }

    /// A consumer on the watch's keys, and how many messages it has for now.
    pub(super) async fn open(
        &self,
        deliver_policy: consumer::DeliverPolicy,
    ) -> anyhow::Result<(consumer::pull::Ordered, u64)> {
        let consumer = self.consumer(deliver_policy).await?;
        let initial = consumer.cached_info().num_pending;
        Ok((consumer.messages().await?, initial))
    }

    /// The current message of every key the watch covers, read by a consumer that is deleted
    /// afterwards.
    pub(super) async fn read_snapshot(&self) -> anyhow::Result<Vec<jetstream::Message>> {
        let consumer = self
            .consumer(consumer::DeliverPolicy::LastPerSubject)
            .await?;
        let name = consumer.cached_info().name.clone();
        let initial = consumer.cached_info().num_pending;
        let mut snapshot = Vec::with_capacity(usize::try_from(initial).unwrap_or(0).min(4096));
        let read = async {
            if initial > 0 {
                let mut messages = consumer.messages().await?;
                while (snapshot.len() as u64) < initial {
                    match tokio::time::timeout(SNAPSHOT_WAIT, messages.next()).await {
                        Ok(Some(Ok(msg))) => snapshot.push(msg),
                        _ => break,
                    }
                }
            }
            anyhow::Ok(())
        }
        .await;
        // Deleted whatever happened: otherwise the server keeps it until its inactivity threshold
        // (30 s).
        let stream = self.stream.clone();
        tokio::spawn(async move {
            if let Err(e) = stream.delete_consumer(&name).await {
                tracing::debug!(error = %e, "deleting a presence snapshot consumer");
            }
        });
        read?;
        anyhow::ensure!(
            snapshot.len() as u64 == initial,
            "presence snapshot incomplete: {} of {initial}",
            snapshot.len()
        );
        Ok(snapshot)
    }

    /// What a KV message says about the keys this watch covers.
    pub(super) fn change_of(&self, msg: &jetstream::Message) -> Option<Change> {
        Some(match self.parse_key(&msg.subject)? {
            KeyKind::Seen { user } => {
                let seen = serde_json::from_slice::<keys::Seen>(&msg.payload).ok()?;
                Change::Seen { user, ts: seen.ts }
            }
            KeyKind::Conn { user, conn } if is_removal(msg) => Change::Remove { user, conn },
            KeyKind::Conn { user, conn } => Change::Put {
                user,
                conn,
                seq: stream_sequence(msg),
            },
        })
    }

    /// Applies one KV message; `live` ones may produce events, the snapshot never does.
    pub(super) fn apply(&self, msg: &jetstream::Message, live: bool) {
        let Some(change) = self.change_of(msg) else {
            return;
        };
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let applied = state.apply(change, live, Instant::now(), crate::publish::now_ms());
        if applied.flap_suppressed {
            self.metrics.presence_flaps_suppressed.inc();
        }
        if applied.grace_started {
            self.wake.notify_one();
        }
        // Sent under the state lock (pushes never wait): with the shared room feed, the feed
        // task applies messages while the room's own task expires graces, and a return must
        // not overtake the offline event it follows.
        if let Some(e) = applied.event {
            self.emit(&e, state.online());
        }
    }

    /// After a reconnect to NATS: removes the keys that went while the gateway was cut off and
    /// whose removal it can no longer read. A key that expires leaves only a delete marker, kept
    /// [`MARKER_TTL`]; once that is gone, nothing in the stream says the key went. So a key this
    /// watch holds from a put no later than `before` (the stream's last sequence, read before the
    /// snapshot) and that the snapshot lacks was removed meanwhile; a key put after `before` may
    /// be newer than the snapshot and is kept. Each removal starts the usual grace period; a key
    /// the live consumer then delivers again cancels it. Returns how many keys were removed.
    pub(super) async fn reconcile(&self) -> anyhow::Result<usize> {
        let before = self.stream.get_info().await?.state.last_sequence;
        let snapshot = self.read_snapshot().await?;
        let mut present: HashMap<UserId, HashSet<String>> = HashMap::new();
        for msg in snapshot.iter().filter(|m| !is_removal(m)) {
            if let Some(KeyKind::Conn { user, conn }) = self.parse_key(&msg.subject) {
                present.entry(user).or_default().insert(conn);
            }
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let missed =
            state.remove_missing(&present, before, Instant::now(), crate::publish::now_ms());
        if missed > 0 {
            self.wake.notify_one();
        }
        Ok(missed)
    }

    /// [`WatchTask::reconcile`] after the watch's consumer was re-created, retried until it
    /// succeeds (a key whose marker is gone would otherwise stay for good).
    pub(super) async fn reconcile_after_reconnect(&self) {
        let n = self
            .until_ok_limited("presence reconcile", || self.reconcile())
            .await;
        if n > 0 {
            self.metrics.presence_missed_removals.inc_by(n as u64);
            tracing::info!(key = ?self.key, removed = n, "presence keys gone while cut off from NATS");
        }
    }

    pub(super) fn next_due(&self) -> Option<Instant> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .next_due()
    }

    pub(super) fn expire_graces(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        // Under the state lock, like `apply`'s.
        for e in state.expire(Instant::now()) {
            self.emit(&e, state.online());
        }
    }

    /// Sends `p` to the watch's members; `online` is how many users the watch has online now.
    pub(super) fn emit(&self, p: &PresenceEntry, online: usize) {
        let room = match &self.key {
            WatchKey::Room(r) => {
                if online > self.room_event_limit {
                    self.metrics.presence_events_suppressed.inc();
                    return;
                }
                Some(r.clone())
            }
            WatchKey::User(_) => None,
        };
        let (room, group) = match room {
            Some(r) if self.group => (None, protocol::GroupId::parse(r.as_str()).ok()),
            other => (other, None),
        };
        let frame = ServerFrame::Presence {
            room,
            group,
            user: p.user.clone(),
            online: p.online,
            last_seen: p.last_seen,
        };
        let bytes = Utf8Bytes::from(frame.to_json());
        let snapshot = self
            .members
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        self.metrics.presence_events.inc();
        for m in snapshot.iter() {
            if m.push(Outbound::Text(bytes.clone())) == Pushed::Overflow {
                tracing::info!("presence event overflowed a slow consumer");
            }
        }
    }
}

/// Whether a KV message removes its key: a delete, a purge, or a TTL/limit marker.
pub(super) fn is_removal(msg: &jetstream::Message) -> bool {
    let Some(h) = msg.headers.as_ref() else {
        return false;
    };
    if h.get(async_nats::header::NATS_MARKER_REASON).is_some() {
        return true;
    }
    h.get("KV-Operation")
        .is_some_and(|v| matches!(v.as_str(), "DEL" | "PURGE"))
}

/// Runs `attempt` until it succeeds, pausing about [`RETRY_PAUSE`] (jittered) after each
/// failure: what must come back by itself after a NATS outage.
pub(super) async fn until_ok<T, Fut>(what: &str, attempt: impl FnMut() -> Fut) -> T
where
    Fut: Future<Output = anyhow::Result<T>>,
{
    svc::retry::until_ok(what, Backoff::constant(RETRY_PAUSE), attempt).await
}

pub(super) async fn sleep_until_opt(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}
