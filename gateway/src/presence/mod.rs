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
//!
//! This module is the facade (writes, watches, queries); the parts are:
//! - `state`: a watch's state machine, without I/O (keys in, the clock in, events out);
//! - `watch_task`: a watch's consumer lifecycle (snapshot, re-creation, reconcile, grace timers);
//! - `feed`: the shared room feed and each room's place in it (snapshot merge).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, kv, message::PublishMessage, stream};
use protocol::frame::PresenceEntry;
use protocol::presence as keys;
use protocol::{RoomId, UserId};
use tokio::sync::{Notify, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tracing::Instrument;

pub mod count;
mod feed;
mod state;
mod watch_task;

use crate::conn::{self, Outbox};
use crate::metrics::Metrics;
use feed::{Pending, Phase, RoomFeed, RoomRoute};
use state::PresenceState;
use watch_task::WatchTask;

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

/// How a gateway follows the presence of its rooms (`GATEWAY_ROOM_PRESENCE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RoomPresenceWatch {
    /// `shared` (the default): one consumer on `room.>` of the presence bucket per gateway, routed to
    /// the room's watch by key; each room's current state is read once, when its first local member
    /// joins. The gateway receives every room presence write of the cluster and drops those of rooms
    /// it has no member in.
    #[default]
    Shared,
    /// `per-room`: one filtered consumer per room with local members. The gateway receives only its
    /// rooms' writes, but nats-server wakes a consumer per write that scans the bucket's messages
    /// since that room's previous write, which costs it more CPU than the shared consumer at any
    /// write rate measured (docs/benchmarks.md).
    PerRoom,
}

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

type Members = Arc<conn::ConnList<Outbox>>;
type State = Arc<Mutex<PresenceState>>;

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
        self.watch_capped(key, member, usize::MAX, false).await.0
    }

    /// [`Presence::watch`], listing at most `cap` entries (the first by user id) and counting all
    /// online ones. A join into a room of n members then costs O(n), not a sorted copy of the room.
    /// With `group`, the room key is a group's, and its events are labelled `group`.
    pub async fn watch_capped(
        &self,
        key: WatchKey,
        member: Outbox,
        cap: usize,
        group: bool,
    ) -> (Vec<PresenceEntry>, usize) {
        let (mut ready, state, large_view) = {
            let mut watchers = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
            let w = watchers
                .entry(key.clone())
                .or_insert_with(|| self.spawn_watcher(key.clone(), group));
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
        state.is_online(user)
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
                let task = self.task(key.clone(), Arc::default(), self.new_state(), false);
                for msg in task.read_snapshot().await? {
                    task.apply(&msg, false);
                }
                task.state
            }
        };
        Ok(view(&key, &state))
    }

    /// What the hub calls for a connection it took out of a group its user left: the connection
    /// stops watching the group's presence, and its key there is deleted in the background.
    pub fn departure_hook(&self) -> crate::hub::DepartureHook {
        let presence = self.clone();
        Arc::new(move |group: &protocol::GroupId, outbox: &Outbox| {
            let room = group.as_room();
            let shared = outbox.shared.clone();
            presence.unwatch(&WatchKey::Room(room.clone()), &shared.conn);
            let presence = presence.clone();
            tokio::spawn(async move {
                presence
                    .delete_room(&room, &shared.user, &shared.conn)
                    .await;
            });
        })
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

    /// An empty state for a new watch.
    fn new_state(&self) -> State {
        Arc::new(Mutex::new(PresenceState::new(self.settings.grace)))
    }

    fn task(&self, key: WatchKey, members: Members, state: State, group: bool) -> WatchTask {
        WatchTask {
            stream: self.stream.clone(),
            key,
            group,
            members,
            state,
            room_event_limit: self.settings.room_event_limit,
            metrics: self.metrics.clone(),
            wake: Notify::new(),
            recreate: self.recreate.clone(),
        }
    }

    /// Starts a watch. Called under the watchers lock, so a room's route is in the feed before its
    /// snapshot is read, and leaves it only when the watch is removed.
    fn spawn_watcher(&self, key: WatchKey, group: bool) -> Watcher {
        let members: Members = Arc::default();
        let state = self.new_state();
        let (ready_tx, ready) = watch::channel(false);
        let task = self.task(key.clone(), members.clone(), state.clone(), group);
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

/// The state a watch key exposes: the one user, or a room's online members, sorted by id.
fn view(key: &WatchKey, state: &State) -> Vec<PresenceEntry> {
    view_capped(key, state, usize::MAX).0
}

/// Like [`view`], but at most `cap` entries (the first by user id), with the number of online users
/// (for a user key, 1 if online).
fn view_capped(key: &WatchKey, state: &State, cap: usize) -> (Vec<PresenceEntry>, usize) {
    let state = state.lock().unwrap_or_else(|e| e.into_inner());
    match key {
        WatchKey::User(u) => {
            let entry = state.user(u);
            let online = usize::from(entry.online);
            let mut out = vec![entry];
            out.truncate(cap);
            (out, online)
        }
        WatchKey::Room(_) => state.online_capped(cap),
    }
}

/// Runs `attempt` up to [`ENSURE_ATTEMPTS`] times, about [`ENSURE_RETRY`] (jittered) apart: what
/// gateways starting together race to create.
async fn with_attempts<T, Fut>(what: &str, attempt: impl FnMut() -> Fut) -> anyhow::Result<T>
where
    Fut: Future<Output = anyhow::Result<T>>,
{
    let backoff = svc::retry::Backoff::constant(ENSURE_RETRY);
    svc::retry::with_attempts(what, ENSURE_ATTEMPTS, backoff, attempt)
        .await
        .map_err(|e| e.context(format!("{what}: {ENSURE_ATTEMPTS} attempts")))
}

#[cfg(test)]
mod tests {
    use super::feed::room_of;
    use super::state::Change;
    use super::*;
    use async_nats::jetstream::consumer;
    use futures_util::StreamExt;
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
        let task = || p.task(key.clone(), Arc::default(), p.new_state(), false);
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
        let task = p.task(
            WatchKey::Room(room.clone()),
            Arc::default(),
            p.new_state(),
            false,
        );
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
        let put_e = Change::Put {
            user: user("e"),
            conn: "ce".into(),
            seq: u64::MAX,
        };
        task.state
            .lock()
            .unwrap()
            .apply(put_e, false, Instant::now(), 0);
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
}
