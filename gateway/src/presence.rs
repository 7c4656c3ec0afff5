//! Presence in the NATS KV bucket `presence`, with per-key TTLs refreshed by client heartbeats.
//!
//! The keys (`conn.<user>.<conn>`, `room.<room>.<user>.<conn>`, and `seen.<user>`, kept 30 days)
//! are `protocol::presence`'s, since every gateway reads what the others write.
//!
//! A clean close deletes its keys. A crashed gateway's keys expire after the TTL, and the server then
//! writes a delete marker (`Nats-Marker-Reason: MaxAge`) that every watcher sees. Keys are written by
//! publishing to `$KV.presence.<key>` with `Nats-TTL`, never with `create_with_ttl`, which in
//! async-nats 0.51 re-creates an expired key without its TTL.
//!
//! A gateway watches only what its clients need. Rooms: by default one ordered consumer on
//! `room.>` per gateway ([`RoomPresenceWatch::Shared`]), routed to the watch of a room with local
//! members by key; a room's current state is read once, by a short-lived consumer, when its watch
//! starts, and merged with what the shared consumer delivered meanwhile by stream sequence. With
//! [`RoomPresenceWatch::PerRoom`], one filtered consumer per room instead. Users: one filtered consumer
//! per user watched by a local connection. Each watcher keeps the set of live keys per user and turns
//! it into events with a grace period: when a user's last key goes, the offline event waits `grace`; a
//! key coming back within it cancels the pair.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, message::PublishMessage, stream};
use axum::extract::ws::Utf8Bytes;
use futures_util::StreamExt;
use protocol::frame::PresenceEntry;
use protocol::presence as keys;
use protocol::{RoomId, ServerFrame, UserId};
use tokio::sync::{Notify, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tracing::Instrument;

pub use crate::config::RoomPresenceWatch;
use crate::conn::{self, Outbound, Outbox, Pushed};
use crate::metrics::Metrics;

pub use protocol::presence::BUCKET;
/// How long a delete marker stays (the server's minimum is 1 s).
const MARKER_TTL: Duration = Duration::from_secs(5);
/// How long a watch waits for its snapshot before answering with what it has.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(5);
/// Consumers allowed on the bucket's stream: one per room with local members and per watched user,
/// on every gateway. nats-server 2.15 otherwise applies its default of 1000 per stream, which a
/// few watchers of 200 contacts each exhaust.
pub const MAX_CONSUMERS: i32 = 1_000_000;
/// Attempts to open the bucket at start, and the pause between them.
const ENSURE_ATTEMPTS: u32 = 5;
const ENSURE_RETRY: Duration = Duration::from_millis(200);
/// Longest wait for a presence write's ack.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `seen.<user>` outlives the user's last activity, so the bucket does not grow forever.
pub const SEEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Default of [`PresenceSettings::room_event_limit`].
pub const DEFAULT_ROOM_EVENT_LIMIT: usize = 500;
/// How long a join into a room above the event limit may reuse the room's last `joined` view.
pub const LARGE_ROOM_VIEW_REUSE: Duration = Duration::from_millis(250);
/// Online users listed in `joined`; `online_count` gives the full number.
pub const ONLINE_LIST_CAP: usize = 100;
/// Shared room feed: messages of one room kept while its snapshot is read. Past this many the
/// buffer is dropped and the snapshot read again (a newer snapshot covers what was dropped).
pub const MAX_SNAPSHOT_BUFFER: usize = 65_536;
/// Watches re-creating their consumers at once after a reconnect to NATS.
pub const RECREATE_IN_FLIGHT: usize = 64;
/// Pause before a presence consumer that failed to start is tried again.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// Presence settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresenceSettings {
    /// Lifetime of a key without refresh (whole seconds, at least 1).
    pub ttl: Duration,
    /// Delay before an offline event, cancelled by a return.
    pub grace: Duration,
    /// Above this many online members, a room's presence changes are no longer sent to every member
    /// (that would be quadratic in the room size); clients of large rooms use `online_count` and
    /// `presence_query` instead.
    pub room_event_limit: usize,
    /// How rooms are watched.
    pub room_watch: RoomPresenceWatch,
}

impl PresenceSettings {
    /// Keys are refreshed at most this often per connection: three refreshes per TTL.
    pub fn refresh_every(&self) -> Duration {
        self.ttl / 3
    }
}

/// What a watch is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum WatchKey {
    User(UserId),
    Room(RoomId),
}

#[derive(Debug, Default)]
struct Tracked {
    /// Live connection keys, with the stream sequence of each one's latest put (0 if unknown).
    conns: HashMap<String, u64>,
    online: bool,
    last_seen: Option<u64>,
    /// Set while the user has no key left: when the offline event is due, and when the keys went.
    gone: Option<(Instant, u64)>,
}

impl Tracked {
    fn view(&self, user: &UserId) -> PresenceEntry {
        PresenceEntry {
            user: user.clone(),
            online: self.online,
            last_seen: self.last_seen,
        }
    }
}

type Members = Arc<conn::ConnList<Outbox>>;
type State = Arc<Mutex<HashMap<UserId, Tracked>>>;

struct Watcher {
    members: Members,
    state: State,
    ready: watch::Receiver<bool>,
    task: AbortHandle,
    /// The room's place in the shared feed ([`RoomPresenceWatch::Shared`]).
    route: Option<Arc<RoomRoute>>,
    /// The last capped view of a large room, reused by joins for [`LARGE_ROOM_VIEW_REUSE`].
    large_view: Arc<Mutex<Option<CachedView>>>,
}

/// A capped room view, when it was taken, and the online count then.
struct CachedView {
    at: Instant,
    entries: Vec<PresenceEntry>,
    online: usize,
}

/// Writes and watches presence. Cheap to clone.
#[derive(Clone)]
pub struct Presence {
    js: jetstream::Context,
    // Behind `Arc`s: both hold their stream's whole `Info`, and a `Presence` is cloned per refresh.
    kv: Arc<kv::Store>,
    stream: Arc<stream::Stream>,
    settings: PresenceSettings,
    watchers: Arc<Mutex<HashMap<WatchKey, Watcher>>>,
    /// Routes of the shared room feed; `None` in per-room mode.
    feed: Option<Arc<RoomFeed>>,
    /// Bumped on every reconnect to NATS: watches then re-create their consumers.
    reconnects: watch::Receiver<u64>,
    recreate: Arc<tokio::sync::Semaphore>,
    metrics: Arc<Metrics>,
}

/// The rooms the shared feed delivers to, by id.
struct RoomFeed {
    /// Keyed by the room id as text, as it comes in a subject.
    rooms: Mutex<HashMap<String, Arc<RoomRoute>>>,
    /// Bumped each time the feed's consumer was re-created (after a reconnect to NATS, or a failed
    /// or ended stream): the rooms then look for removals the feed can no longer deliver.
    reopened: watch::Sender<u64>,
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
struct RoomRoute {
    task: Arc<WatchTask>,
    phase: Mutex<Phase>,
}

enum Phase {
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
struct Pending {
    messages: Vec<jetstream::Message>,
    /// More than [`MAX_SNAPSHOT_BUFFER`] arrived: the snapshot is read again.
    overflowed: bool,
}

impl Presence {
    /// Creates the bucket if needed.
    pub async fn ensure(
        js: jetstream::Context,
        settings: PresenceSettings,
        replicas: usize,
        metrics: Arc<Metrics>,
        reconnects: watch::Receiver<u64>,
    ) -> anyhow::Result<Self> {
        // Gateways starting together race to create and configure the bucket: a loser's create or
        // update fails against the winner's result, and a second look finds the bucket ready.
        let (kv, stream) =
            with_attempts("presence bucket", || Self::open_bucket(&js, replicas)).await?;
        let stream = Arc::new(stream);
        let feed = match settings.room_watch {
            RoomPresenceWatch::PerRoom => None,
            RoomPresenceWatch::Shared => Some(
                with_attempts("presence room feed", || {
                    RoomFeed::start(stream.clone(), reconnects.clone())
                })
                .await?,
            ),
        };
        Ok(Self {
            js,
            kv: Arc::new(kv),
            stream,
            settings,
            watchers: Arc::default(),
            feed,
            reconnects,
            recreate: Arc::new(tokio::sync::Semaphore::new(RECREATE_IN_FLIGHT)),
            metrics,
        })
    }

    /// Opens the bucket, creating it and raising its consumer limit if needed.
    async fn open_bucket(
        js: &jetstream::Context,
        replicas: usize,
    ) -> anyhow::Result<(kv::Store, stream::Stream)> {
        use anyhow::Context;
        let kv = match js.get_key_value(BUCKET).await {
            Ok(kv) => kv,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: BUCKET.to_owned(),
                    description: "liaotian presence: conn.<user>.<conn>, room.<room>.<user>.<conn>, seen.<user>".into(),
                    history: 1,
                    storage: stream::StorageType::File,
                    num_replicas: replicas,
                    limit_markers: Some(MARKER_TTL),
                    ..Default::default()
                })
                .await
                .context("creating KV bucket presence (needs nats-server >= 2.11)")?,
        };
        let mut stream = js
            .get_stream(keys::STREAM)
            .await
            .context("reading stream KV_presence")?;
        // Every watch is a consumer; nats-server 2.15 caps a stream at 1000 unless it says otherwise.
        let config = &stream.cached_info().config;
        if config.max_consumers != MAX_CONSUMERS {
            let config = stream::Config {
                max_consumers: MAX_CONSUMERS,
                ..config.clone()
            };
            js.update_stream(config)
                .await
                .context("raising the consumer limit of stream KV_presence")?;
            stream = js
                .get_stream(keys::STREAM)
                .await
                .context("reading stream KV_presence")?;
        }
        Ok((kv, stream))
    }

    pub fn settings(&self) -> PresenceSettings {
        self.settings
    }

    /// Writes (or refreshes) a connection's key and its user's `seen` time.
    pub async fn put_conn(&self, user: &UserId, conn: &protocol::ConnId) {
        self.put_ttl(keys::conn_key(user, conn)).await;
        self.put_seen(user).await;
    }

    /// Writes (or refreshes) a connection's key in a room.
    pub async fn put_room(&self, room: &RoomId, user: &UserId, conn: &protocol::ConnId) {
        self.put_ttl(keys::room_key(room, user, conn)).await;
    }

    pub async fn delete_conn(&self, user: &UserId, conn: &protocol::ConnId) {
        self.delete(keys::conn_key(user, conn)).await;
        self.put_seen(user).await;
    }

    pub async fn delete_room(&self, room: &RoomId, user: &UserId, conn: &protocol::ConnId) {
        self.delete(keys::room_key(room, user, conn)).await;
    }

    async fn put_ttl(&self, key: String) {
        let msg = PublishMessage::build()
            .payload(bytes::Bytes::from_static(b"1"))
            .ttl(self.settings.ttl);
        self.write(key, msg).await;
    }

    async fn put_seen(&self, user: &UserId) {
        let body = serde_json::to_vec(&keys::Seen {
            ts: crate::publish::now_ms(),
        })
        .unwrap_or_default();
        self.write(
            keys::seen_key(user),
            PublishMessage::build().payload(body.into()),
        )
        .await;
    }

    async fn write(&self, key: String, msg: PublishMessage) {
        let subject = keys::key_subject(&key);
        let result = async {
            let ack = self.js.send_publish(subject, msg).await?;
            tokio::time::timeout(WRITE_TIMEOUT, ack).await??;
            anyhow::Ok(())
        }
        .await;
        self.metrics.presence_writes.inc();
        if let Err(e) = result {
            self.metrics.presence_write_errors.inc();
            tracing::debug!(%key, error = %e, "presence write failed");
        }
    }

    async fn delete(&self, key: String) {
        self.metrics.presence_writes.inc();
        if let Err(e) = tokio::time::timeout(WRITE_TIMEOUT, self.kv.delete(&key))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
        {
            self.metrics.presence_write_errors.inc();
            tracing::debug!(%key, error = %e, "presence delete failed");
        }
    }

    /// Adds a connection to a watch (starting the watch if it is the first) and returns the current
    /// state once the watch has read its snapshot.
    pub async fn watch(&self, key: WatchKey, member: Outbox) -> Vec<PresenceEntry> {
        self.watch_capped(key, member, usize::MAX).await.0
    }

    /// [`Presence::watch`], listing at most `cap` entries (the first by user id) and counting all
    /// online ones. A join into a room of n members then costs O(n), not a sorted copy of the room.
    pub async fn watch_capped(
        &self,
        key: WatchKey,
        member: Outbox,
        cap: usize,
    ) -> (Vec<PresenceEntry>, usize) {
        let (mut ready, state, large_view) = {
            let mut watchers = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
            let w = watchers
                .entry(key.clone())
                .or_insert_with(|| self.spawn_watcher(key.clone()));
            let shared = member.shared.clone();
            conn::upsert(&w.members, member, |m| Arc::ptr_eq(&m.shared, &shared));
            (w.ready.clone(), w.state.clone(), w.large_view.clone())
        };
        let _ = tokio::time::timeout(SNAPSHOT_WAIT, ready.wait_for(|r| *r)).await;
        if cap == usize::MAX || matches!(key, WatchKey::User(_)) {
            return view_capped(&key, &state, cap);
        }
        // Building the view scans the whole room, so n joins into a room of n would cost n². Above
        // the event limit (where members no longer get every change either) a view is reused for a
        // moment; below it, every join sees the exact state.
        let mut cached = large_view.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cached.as_ref()
            && c.at.elapsed() < LARGE_ROOM_VIEW_REUSE
            && c.entries.len() >= cap
        {
            return (c.entries.clone(), c.online);
        }
        let (entries, online) = view_capped(&key, &state, cap);
        *cached = (online > self.settings.room_event_limit).then(|| CachedView {
            at: Instant::now(),
            entries: entries.clone(),
            online,
        });
        (entries, online)
    }

    /// Whether this gateway's watch of `room` already counts `user` as online.
    pub fn is_online_in(&self, room: &RoomId, user: &UserId) -> bool {
        let state = {
            let watchers = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
            match watchers.get(&WatchKey::Room(room.clone())) {
                Some(w) => w.state.clone(),
                None => return false,
            }
        };
        let state = state.lock().unwrap_or_else(|e| e.into_inner());
        state.get(user).is_some_and(|t| t.online)
    }

    /// The current state without subscribing: from the local watch if there is one, otherwise from a
    /// one-off snapshot of the bucket.
    pub async fn query(&self, key: WatchKey) -> anyhow::Result<Vec<PresenceEntry>> {
        let local = {
            let watchers = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
            watchers.get(&key).map(|w| w.state.clone())
        };
        let state = match local {
            Some(state) => state,
            None => {
                let task = self.task(key.clone(), Arc::default(), State::default());
                for msg in task.read_snapshot().await? {
                    task.apply(&msg, false);
                }
                task.state
            }
        };
        Ok(view(&key, &state))
    }

    /// Removes a connection from a watch, stopping the watch when it was the last.
    pub fn unwatch(&self, key: &WatchKey, conn: &protocol::ConnId) {
        let mut watchers = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
        let Some(w) = watchers.get(key) else { return };
        let empty = conn::remove(&w.members, |m| m.conn() == conn) == 0;
        if empty && let Some(w) = watchers.remove(key) {
            w.task.abort();
            if let (Some(feed), Some(route), WatchKey::Room(room)) = (&self.feed, &w.route, key) {
                feed.remove(room, route);
            }
            self.metrics.presence_watches.dec();
        }
    }

    fn task(&self, key: WatchKey, members: Members, state: State) -> WatchTask {
        WatchTask {
            stream: self.stream.clone(),
            key,
            members,
            state,
            grace: self.settings.grace,
            room_event_limit: self.settings.room_event_limit,
            metrics: self.metrics.clone(),
            online: AtomicUsize::new(0),
            due: Mutex::new(None),
            wake: Notify::new(),
            recreate: self.recreate.clone(),
        }
    }

    /// Starts a watch. Called under the watchers lock, so a room's route is in the feed before its
    /// snapshot is read, and leaves it only when the watch is removed.
    fn spawn_watcher(&self, key: WatchKey) -> Watcher {
        let members: Members = Arc::default();
        let state: State = Arc::default();
        let (ready_tx, ready) = watch::channel(false);
        let task = self.task(key.clone(), members.clone(), state.clone());
        let span = tracing::debug_span!("presence_watch", key = ?key);
        let (handle, route) = match (&self.feed, &key) {
            (Some(feed), WatchKey::Room(room)) => {
                let route = Arc::new(RoomRoute {
                    task: Arc::new(task),
                    phase: Mutex::new(Phase::Reading(Pending::default())),
                });
                feed.insert(room, route.clone());
                let run = route.clone().run(ready_tx, feed.reopened.subscribe());
                let handle = tokio::spawn(run.instrument(span));
                (handle, Some(route))
            }
            _ => {
                let run = task.run(ready_tx, self.reconnects.clone());
                (tokio::spawn(run.instrument(span)), None)
            }
        };
        self.metrics.presence_watches.inc();
        Watcher {
            members,
            state,
            ready,
            task: handle.abort_handle(),
            route,
            large_view: Arc::default(),
        }
    }
}

impl RoomFeed {
    /// Creates the gateway's consumer on `room.>` (new messages only) and starts routing it. The
    /// consumer exists when this returns, so every room registered afterwards misses nothing.
    async fn start(
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
    async fn open(
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
    async fn run(
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
    fn route(&self, msg: jetstream::Message) {
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

    fn insert(&self, room: &RoomId, route: Arc<RoomRoute>) {
        let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        rooms.insert(room.as_str().to_owned(), route);
    }

    fn remove(&self, room: &RoomId, route: &Arc<RoomRoute>) {
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
    async fn run(self: Arc<Self>, ready: watch::Sender<bool>, mut reopened: watch::Receiver<u64>) {
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
    fn merge(&self, snapshot: &[jetstream::Message]) -> bool {
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
fn room_of(subject: &str) -> Option<&str> {
    keys::Key::parse_subject(subject)?.room()
}

fn stream_sequence(msg: &jetstream::Message) -> u64 {
    msg.info().map_or(0, |i| i.stream_sequence)
}

struct WatchTask {
    stream: Arc<stream::Stream>,
    key: WatchKey,
    members: Members,
    state: State,
    grace: Duration,
    room_event_limit: usize,
    metrics: Arc<Metrics>,
    /// Users online in `state`, kept as they change: a room's event limit is checked per event, and
    /// counting a room of n users each time made n joins cost n².
    online: AtomicUsize,
    /// The earliest grace deadline (possibly one already cancelled by a return), so the task does not
    /// scan the whole state after every message.
    due: Mutex<Option<Instant>>,
    /// Told when `due` moves earlier, for a timer task that does not read the messages itself.
    wake: Notify,
    /// Shared by the gateway's watches: at most [`RECREATE_IN_FLIGHT`] re-create their consumers
    /// at once after a reconnect.
    recreate: Arc<tokio::sync::Semaphore>,
}

/// What a presence key means to a watcher.
enum KeyKind {
    Conn { user: UserId, conn: String },
    Seen { user: UserId },
}

impl WatchTask {
    fn filters(&self) -> Vec<String> {
        match &self.key {
            WatchKey::User(u) => keys::user_filters(u),
            WatchKey::Room(r) => vec![keys::room_filter(r)],
        }
    }

    fn parse_key(&self, subject: &str) -> Option<KeyKind> {
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
    async fn run(self, ready: watch::Sender<bool>, mut reconnects: watch::Receiver<u64>) {
        let policy = consumer::DeliverPolicy::LastPerSubject;
        let (mut messages, mut initial) = self.open_retrying(policy, false).await;
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
            let (m, pending) = self.open_retrying(policy, true).await;
            messages = m;
            if initial > 0 {
                // The current keys again, from the start: a key applied from the first, partial read
                // may have expired since (no event was sent while reading).
                self.state.lock().unwrap_or_else(|e| e.into_inner()).clear();
                self.online.store(0, Ordering::Relaxed);
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

    /// [`WatchTask::open`], retried so a watch survives a NATS outage; with `limited`, through
    /// [`WatchTask::until_ok_limited`].
    async fn open_retrying(
        &self,
        policy: consumer::DeliverPolicy,
        limited: bool,
    ) -> (consumer::pull::Ordered, u64) {
        let what = "presence watch";
        match limited {
            true => self.until_ok_limited(what, || self.open(policy)).await,
            false => until_ok(what, || self.open(policy)).await,
        }
    }

    /// [`until_ok`] for the work every watch does at once after a reconnect: each attempt holds
    /// one of the gateway's [`RECREATE_IN_FLIGHT`] permits, the pause between attempts none.
    async fn until_ok_limited<T, Fut>(&self, what: &str, mut attempt: impl FnMut() -> Fut) -> T
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
    async fn consumer(
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
    async fn open(
        &self,
        deliver_policy: consumer::DeliverPolicy,
    ) -> anyhow::Result<(consumer::pull::Ordered, u64)> {
        let consumer = self.consumer(deliver_policy).await?;
        let initial = consumer.cached_info().num_pending;
        Ok((consumer.messages().await?, initial))
    }

    /// The current message of every key the watch covers, read by a consumer that is deleted
    /// afterwards.
    async fn read_snapshot(&self) -> anyhow::Result<Vec<jetstream::Message>> {
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

    /// Applies one KV message; `live` ones may produce events, the snapshot never does.
    fn apply(&self, msg: &jetstream::Message, live: bool) {
        let Some(kind) = self.parse_key(&msg.subject) else {
            return;
        };
        let removed = is_removal(msg);
        let mut events = Vec::new();
        {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            match kind {
                KeyKind::Seen { user } => {
                    if let Ok(seen) = serde_json::from_slice::<keys::Seen>(&msg.payload) {
                        let t = state.entry(user).or_default();
                        t.last_seen = Some(t.last_seen.unwrap_or(0).max(seen.ts));
                    }
                }
                KeyKind::Conn { user, conn } => {
                    let t = state.entry(user.clone()).or_default();
                    if removed {
                        self.remove_conn(t, &conn, live);
                    } else {
                        t.conns.insert(conn, stream_sequence(msg));
                        if t.gone.take().is_some() {
                            // Back within the grace period: no offline/online pair.
                            self.metrics.presence_flaps_suppressed.inc();
                        } else if !t.online {
                            t.online = true;
                            self.online.fetch_add(1, Ordering::Relaxed);
                            if live {
                                events.push(t.view(&user));
                            }
                        }
                    }
                }
            }
            // Sent under the state lock (pushes never wait): with the shared room feed, the feed
            // task applies messages while the room's own task expires graces, and a return must
            // not overtake the offline event it follows.
            for e in events {
                self.emit(&e);
            }
        }
    }

    /// Removes one of a user's connection keys. When it was the last, a live removal starts the
    /// grace period; one from a snapshot takes the user offline at once.
    fn remove_conn(&self, t: &mut Tracked, conn: &str, live: bool) {
        t.conns.remove(conn);
        if t.conns.is_empty() && t.online && t.gone.is_none() {
            if live {
                let due = Instant::now() + self.grace;
                t.gone = Some((due, crate::publish::now_ms()));
                let mut earliest = self.due.lock().unwrap_or_else(|e| e.into_inner());
                *earliest = Some(earliest.map_or(due, |d| d.min(due)));
                self.wake.notify_one();
            } else {
                t.online = false;
                self.online.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// After a reconnect to NATS: removes the keys that went while the gateway was cut off and
    /// whose removal it can no longer read. A key that expires leaves only a delete marker, kept
    /// [`MARKER_TTL`]; once that is gone, nothing in the stream says the key went. So a key this
    /// watch holds from a put no later than `before` (the stream's last sequence, read before the
    /// snapshot) and that the snapshot lacks was removed meanwhile; a key put after `before` may
    /// be newer than the snapshot and is kept. Each removal starts the usual grace period; a key
    /// the live consumer then delivers again cancels it. Returns how many keys were removed.
    async fn reconcile(&self) -> anyhow::Result<usize> {
        let before = self.stream.get_info().await?.state.last_sequence;
        let snapshot = self.read_snapshot().await?;
        let mut present: HashMap<UserId, HashSet<String>> = HashMap::new();
        for msg in snapshot.iter().filter(|m| !is_removal(m)) {
            if let Some(KeyKind::Conn { user, conn }) = self.parse_key(&msg.subject) {
                present.entry(user).or_default().insert(conn);
            }
        }
        let mut missed = 0;
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for (user, t) in state.iter_mut() {
            let kept = present.get(user);
            let gone: Vec<String> = t
                .conns
                .iter()
                .filter(|&(conn, &seq)| seq <= before && !kept.is_some_and(|k| k.contains(conn)))
                .map(|(conn, _)| conn.clone())
                .collect();
            for conn in gone {
                missed += 1;
                self.remove_conn(t, &conn, true);
            }
        }
        Ok(missed)
    }

    /// [`WatchTask::reconcile`] after the watch's consumer was re-created, retried until it
    /// succeeds (a key whose marker is gone would otherwise stay for good).
    async fn reconcile_after_reconnect(&self) {
        let n = self
            .until_ok_limited("presence reconcile", || self.reconcile())
            .await;
        if n > 0 {
            self.metrics.presence_missed_removals.inc_by(n as u64);
            tracing::info!(key = ?self.key, removed = n, "presence keys gone while cut off from NATS");
        }
    }

    fn next_due(&self) -> Option<Instant> {
        *self.due.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn expire_graces(&self) {
        let now = Instant::now();
        let mut events = Vec::new();
        {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            for (user, t) in state.iter_mut() {
                if let Some((due, gone_ms)) = t.gone
                    && due <= now
                {
                    t.gone = None;
                    t.online = false;
                    self.online.fetch_sub(1, Ordering::Relaxed);
                    t.last_seen = Some(t.last_seen.unwrap_or(0).max(gone_ms));
                    events.push(t.view(user));
                }
            }
            *self.due.lock().unwrap_or_else(|e| e.into_inner()) =
                state.values().filter_map(|t| t.gone.map(|(d, _)| d)).min();
            // Under the state lock, like `apply`'s.
            for e in events {
                self.emit(&e);
            }
        }
    }

    fn emit(&self, p: &PresenceEntry) {
        let room = match &self.key {
            WatchKey::Room(r) => {
                if self.online.load(Ordering::Relaxed) > self.room_event_limit {
                    self.metrics.presence_events_suppressed.inc();
                    return;
                }
                Some(r.clone())
            }
            WatchKey::User(_) => None,
        };
        let frame = ServerFrame::Presence {
            room,
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

/// The state a watch key exposes: the one user, or a room's online members, sorted by id.
fn view(key: &WatchKey, state: &State) -> Vec<PresenceEntry> {
    let state = state.lock().unwrap_or_else(|e| e.into_inner());
    let mut out: Vec<PresenceEntry> = match key {
        WatchKey::User(u) => vec![
            state
                .get(u)
                .map_or_else(|| Tracked::default().view(u), |t| t.view(u)),
        ],
        WatchKey::Room(_) => state
            .iter()
            .filter(|(_, t)| t.online)
            .map(|(u, t)| t.view(u))
            .collect(),
    };
    out.sort_by(|a, b| a.user.cmp(&b.user));
    out
}

/// Like [`view`], but at most `cap` entries (the first by user id), with the number of online users
/// (for a user key, 1 if online). Keeps only `cap` candidates while it scans.
fn view_capped(key: &WatchKey, state: &State, cap: usize) -> (Vec<PresenceEntry>, usize) {
    if cap == usize::MAX || matches!(key, WatchKey::User(_)) {
        let mut all = view(key, state);
        let online = all.iter().filter(|p| p.online).count();
        all.truncate(cap);
        return (all, online);
    }
    let state = state.lock().unwrap_or_else(|e| e.into_inner());
    let mut online = 0;
    let mut first: std::collections::BinaryHeap<&UserId> = std::collections::BinaryHeap::new();
    for (user, _) in state.iter().filter(|(_, t)| t.online) {
        online += 1;
        if first.len() < cap {
            first.push(user);
        } else if first.peek().is_some_and(|largest| user < *largest) {
            first.pop();
            first.push(user);
        }
    }
    let out = first
        .into_sorted_vec()
        .into_iter()
        .map(|u| state[u].view(u))
        .collect();
    (out, online)
}

/// Whether a KV message removes its key: a delete, a purge, or a TTL/limit marker.
fn is_removal(msg: &jetstream::Message) -> bool {
    let Some(h) = msg.headers.as_ref() else {
        return false;
    };
    if h.get(async_nats::header::NATS_MARKER_REASON).is_some() {
        return true;
    }
    h.get("KV-Operation")
        .is_some_and(|v| matches!(v.as_str(), "DEL" | "PURGE"))
}

/// Runs `attempt` until it succeeds, pausing [`RETRY_PAUSE`] after each failure: what must come
/// back by itself after a NATS outage.
async fn until_ok<T, Fut>(what: &str, mut attempt: impl FnMut() -> Fut) -> T
where
    Fut: Future<Output = anyhow::Result<T>>,
{
    loop {
        match attempt().await {
            Ok(v) => return v,
            Err(e) => {
                tracing::warn!(error = %e, "{what} failed; retrying");
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
}

/// Runs `attempt` up to [`ENSURE_ATTEMPTS`] times, [`ENSURE_RETRY`] apart: what gateways starting
/// together race to create.
async fn with_attempts<T, Fut>(what: &str, mut attempt: impl FnMut() -> Fut) -> anyhow::Result<T>
where
    Fut: Future<Output = anyhow::Result<T>>,
{
    let mut n = 1;
    loop {
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) if n < ENSURE_ATTEMPTS => {
                tracing::debug!(error = %e, attempt = n, "{what} not ready; retrying");
                n += 1;
                tokio::time::sleep(ENSURE_RETRY).await;
            }
            Err(e) => return Err(e.context(format!("{what}: {ENSURE_ATTEMPTS} attempts"))),
        }
    }
}

async fn sleep_until_opt(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::ConnId;

    /// A per-room [`Presence`] with the given grace period on a fresh nats-server, which lives as
    /// long as the returned handle.
    async fn per_room_presence(grace: Duration) -> (testkit::NatsServer, Presence) {
        let server = testkit::NatsServer::start().unwrap();
        let js = jetstream::new(async_nats::connect(server.url()).await.unwrap());
        let settings = PresenceSettings {
            ttl: Duration::from_secs(60),
            grace,
            room_event_limit: DEFAULT_ROOM_EVENT_LIMIT,
            room_watch: RoomPresenceWatch::PerRoom,
        };
        let (_tx, reconnects) = watch::channel(0);
        let p = Presence::ensure(js, settings, 1, Arc::default(), reconnects)
            .await
            .unwrap();
        (server, p)
    }

    /// Online users of a room watch's state, by id.
    fn online(task: &WatchTask) -> Vec<String> {
        view(&task.key, &task.state)
            .into_iter()
            .filter(|p| p.online)
            .map(|p| p.user.to_string())
            .collect()
    }

    #[tokio::test]
    async fn merge_keeps_only_what_is_newer_than_the_snapshot() {
        // Real KV messages from a real nats-server. The feed may lag behind the snapshot (it kept
        // only older messages) or run past it (it kept newer ones too); both must end in the state
        // of the last message per key.
        let (_server, p) = per_room_presence(Duration::from_secs(1)).await;
        let room = RoomId::parse("r").unwrap();
        let key = WatchKey::Room(room.clone());
        let id = |u: &str| {
            (
                UserId::parse(u).unwrap(),
                ConnId::parse(format!("c{u}")).unwrap(),
            )
        };
        let (a, b, c, d) = (id("a"), id("b"), id("c"), id("d"));
        // A feed of the room, as the shared one sees it: each message as it is written (the
        // bucket keeps only the last per key), read all along.
        let mut feed = RoomFeed::open(&p.stream, consumer::DeliverPolicy::New)
            .await
            .unwrap()
            .0;
        let (feed_tx, mut feed_rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(Ok(msg)) = feed.next().await {
                let _ = feed_tx.send(msg);
            }
        });
        p.put_room(&room, &a.0, &a.1).await; // 1
        p.put_room(&room, &b.0, &b.1).await; // 2
        p.delete_room(&room, &a.0, &a.1).await; // 3
        p.put_room(&room, &c.0, &c.1).await; // 4
        let task = || p.task(key.clone(), Arc::default(), Arc::default());
        let snapshot = task().read_snapshot().await.unwrap();
        assert_eq!(snapshot.len(), 3, "the last message of a, b and c");
        p.delete_room(&room, &c.0, &c.1).await; // 5
        p.put_room(&room, &d.0, &d.1).await; // 6
        let mut all = Vec::new();
        while all.len() < 6 {
            let msg = tokio::time::timeout(Duration::from_secs(5), feed_rx.recv()).await;
            all.push(msg.unwrap().unwrap());
        }
        let cases: [(&[jetstream::Message], &[&str]); 3] = [
            // Lagging: a's put (1) is older than the snapshot's delete (3).
            (&all[..2], &["b", "c"]),
            (&[], &["b", "c"]),
            // Ahead: c's delete (5) and d's put (6) are newer than the snapshot.
            (&all[..], &["b", "d"]),
        ];
        let route_with = |kept: &[jetstream::Message], overflowed| {
            Arc::new(RoomRoute {
                task: Arc::new(task()),
                phase: Mutex::new(Phase::Reading(Pending {
                    messages: kept.to_vec(),
                    overflowed,
                })),
            })
        };
        for (kept, expected) in cases {
            let route = route_with(kept, false);
            assert!(route.merge(&snapshot));
            assert_eq!(online(&route.task), expected, "{} kept", kept.len());
            let live = matches!(*route.phase.lock().unwrap(), Phase::Live { .. });
            assert!(live, "live after the merge");
        }
        // Live, the feed may still lag behind the snapshot: what it delivers then is held to the
        // same rule, and a's put (1) does not bring a back after its delete (3).
        let feed = RoomFeed::default();
        let route = route_with(&all[..2], false);
        assert!(route.merge(&snapshot));
        feed.insert(&room, route.clone());
        feed.route(all[0].clone());
        assert_eq!(online(&route.task), ["b", "c"], "a stale put dropped");
        for msg in &all[2..] {
            feed.route(msg.clone());
        }
        // c's delete, seen live, waits out the grace period (1 s) before c goes offline.
        assert_eq!(online(&route.task), ["b", "c", "d"], "then the feed's news");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        route.task.expire_graces();
        assert_eq!(online(&route.task), ["b", "d"], "after the grace period");
        // The feed fills a reading room's buffer up to MAX_SNAPSHOT_BUFFER messages; the next one
        // empties it and marks it overflowed, and what follows is not kept.
        let full = vec![all[1].clone(); MAX_SNAPSHOT_BUFFER];
        let route = route_with(&full, false);
        feed.insert(&room, route.clone());
        let kept = |route: &RoomRoute| match &*route.phase.lock().unwrap() {
            Phase::Reading(p) => (p.messages.len(), p.overflowed),
            Phase::Live { .. } => panic!("still reading"),
        };
        assert_eq!(kept(&route), (MAX_SNAPSHOT_BUFFER, false));
        feed.route(all[2].clone());
        assert_eq!(kept(&route), (0, true), "overflowed");
        feed.route(all[3].clone());
        assert_eq!(kept(&route), (0, true), "nothing kept after");
        // An overflowed buffer is emptied and the snapshot must be read again.
        let route = route_with(&[], true);
        assert!(!route.merge(&snapshot));
        assert!(online(&route.task).is_empty(), "nothing applied");
        let phase = route.phase.lock().unwrap();
        let reset = matches!(&*phase, Phase::Reading(p) if !p.overflowed && p.messages.is_empty());
        assert!(reset, "the buffer is emptied and kept open");
    }

    #[tokio::test]
    async fn reconcile_removes_only_keys_gone_before_the_snapshot() {
        // After a reconnect, a key the watch holds but the bucket no longer has is removed, unless
        // the watch holds it from a put newer than the stream was before the snapshot.
        let (_server, p) = per_room_presence(Duration::from_millis(200)).await;
        let room = RoomId::parse("r").unwrap();
        let user = |u: &str| UserId::parse(u).unwrap();
        let conn = |u: &str| ConnId::parse(format!("c{u}")).unwrap();
        for u in ["a", "b"] {
            p.put_room(&room, &user(u), &conn(u)).await;
        }
        let task = p.task(WatchKey::Room(room.clone()), Arc::default(), Arc::default());
        for msg in task.read_snapshot().await.unwrap() {
            task.apply(&msg, false);
        }
        // a's key goes without a trace the watch could read (as when its delete marker expired),
        // and the watch holds e from a put it read after the stream's last sequence.
        p.stream
            .purge()
            .filter(keys::key_subject("room.r.a.ca"))
            .await
            .unwrap();
        {
            let mut state = task.state.lock().unwrap();
            let e = state.entry(user("e")).or_default();
            e.conns.insert("ce".into(), u64::MAX);
            e.online = true;
            task.online.fetch_add(1, Ordering::Relaxed);
        }
        assert_eq!(online(&task), ["a", "b", "e"]);
        assert_eq!(task.reconcile().await.unwrap(), 1, "only a");
        assert_eq!(
            online(&task),
            ["a", "b", "e"],
            "a waits out the grace period"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        task.expire_graces();
        assert_eq!(online(&task), ["b", "e"]);
        assert_eq!(task.reconcile().await.unwrap(), 0, "nothing more");
    }

    #[test]
    fn room_of_reads_room_keys_only() {
        assert_eq!(room_of("$KV.presence.room.lobby.alice.c1"), Some("lobby"));
        assert_eq!(room_of("$KV.presence.conn.alice.c1"), None);
    }

    #[test]
    fn capped_room_view_lists_the_first_online_users_and_counts_all() {
        let state: State = Arc::default();
        {
            let mut s = state.lock().unwrap();
            for i in 0..250 {
                let online = i % 5 != 0; // 200 online, 50 offline
                let tracked = Tracked {
                    online,
                    ..Tracked::default()
                };
                s.insert(UserId::parse(format!("u{i:03}")).unwrap(), tracked);
            }
        }
        let room = WatchKey::Room(RoomId::parse("big").unwrap());
        let (listed, online) = view_capped(&room, &state, 100);
        assert_eq!(online, 200);
        let full: Vec<PresenceEntry> = view(&room, &state);
        assert_eq!(full.len(), 200);
        assert_eq!(listed, full[..100].to_vec());
        assert!(listed.iter().all(|p| p.online));
        let (all, _) = view_capped(&room, &state, usize::MAX);
        assert_eq!(all, full);
    }
}
