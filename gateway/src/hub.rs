//! Subscriptions of this gateway, one per room, group and user with local connections.
//!
//! A topic (a room, a group, or a user's direct messages) has one NATS subscription on this gateway, whatever
//! the number of local connections in it, and a member list. The subscription task decodes each message
//! once, encodes its JSON frame once, and pushes the same bytes to every member's queue with `try_send`.
//! The member list is copy-on-write (`Arc<[Member]>`): fan-out takes a snapshot under a short lock and
//! never holds a lock across an `.await`. When the last member leaves, the topic is removed and its task
//! is aborted, which drops the subscription (an UNSUB to the server).
//!
//! With `GATEWAY_DM_SUBSCRIPTION=shared`, a user's topic has no subscription of its own: one task
//! subscribes `chat.out.dm.>` for the gateway and routes each direct message to the member lists of
//! its two users, dropping those with no local user before decoding them.
//!
//! RePublish is core NATS and at most once, so the topic task also keeps, per subject, the last
//! sequence it delivered. A message whose `prev_seq` is newer than that reveals a gap (this gateway was
//! disconnected or fell behind); the task reads the missing range from the stream and delivers it
//! first. After every NATS reconnect it also checks each subject's newest sequence, so a gap is filled
//! even when no further message arrives.
//!
//! A group's topic also acts on its membership events: after delivering a `removed` or `quit`
//! event, it takes the departed users' connections out of the topic, tells each one with a
//! `removed` frame, and hands it to the departure hook (which drops its group presence).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::HeaderMap;
use axum::extract::ws::Utf8Bytes;
use futures_util::StreamExt;
use protocol::control::UserControl;
use protocol::frame::Item;
use protocol::subject::Conversation;
use protocol::{GroupId, RoomId, ServerFrame, StoredMessage, UserId};
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tracing::Instrument;

use crate::backlog::{Backlog, Older, Replay};
use crate::config::DmSubscription;
use crate::conn::{self, Outbound, Outbox, Pushed, close_code};
use crate::metrics::Metrics;

/// How long a join waits for its subscription to be registered at the server.
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(5);
/// Backoff between attempts to subscribe while NATS is unreachable.
const SUBSCRIBE_RETRY: Duration = Duration::from_millis(500);
/// Largest gap filled from the stream; past it, receivers see the gap and page with `history`.
pub const MAX_GAP_FILL: usize = 1000;
/// Subjects whose last delivered sequence a topic remembers (a user topic sees one per DM thread).
const MAX_TRACKED_SUBJECTS: usize = 4096;
/// The same for the gateway's shared DM subscription, which sees every thread with a local user
/// (about 100 bytes each).
const MAX_TRACKED_SUBJECTS_SHARED: usize = 262_144;
/// Newest-sequence requests in flight at once when a topic checks its subjects after a reconnect.
const RECONNECT_CHECKS_IN_FLIGHT: usize = 16;
/// Frames a gate buffers while its connection resumes; past it the connection is closed (4008).
pub const GATE_BUFFER: usize = 4096;
/// How long a replay waits for room in one connection's queue before closing it as slow.
pub const REPLAY_PATIENCE: Duration = Duration::from_secs(10);

/// What a topic is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TopicKey {
    Room(RoomId),
    Group(GroupId),
    User(UserId),
}

impl TopicKey {
    fn subjects(&self) -> Vec<String> {
        match self {
            TopicKey::Room(room) => vec![Conversation::Room(room.clone()).deliver_subject()],
            TopicKey::Group(group) => vec![Conversation::Group(group.clone()).deliver_subject()],
            TopicKey::User(user) => protocol::subject::user_dm_subjects(user).into(),
        }
    }
}

/// Holds back one conversation's live frames for a connection while it replays older ones, so the
/// seam between replay and live has no gap and no duplicate.
#[derive(Debug)]
pub struct Gate {
    /// The subject held back; `None` holds back every subject.
    subject: Option<String>,
    state: Mutex<GateState>,
}

#[derive(Debug)]
enum GateState {
    Buffering {
        frames: Vec<(u64, Utf8Bytes)>,
        overflow: bool,
    },
    Open,
}

impl Gate {
    /// A gate on the conversation delivered on `deliver_subject`.
    pub fn new(deliver_subject: String) -> Self {
        Self::holding(Some(deliver_subject))
    }

    /// A gate on every subject of the topic.
    pub fn all() -> Self {
        Self::holding(None)
    }

    fn holding(subject: Option<String>) -> Self {
        Self {
            subject,
            state: Mutex::new(GateState::Buffering {
                frames: Vec::new(),
                overflow: false,
            }),
        }
    }

    /// Takes the frame if the gate holds this subject back; `false` means deliver it normally.
    fn offer(&self, subject: &str, seq: u64, frame: &Utf8Bytes) -> bool {
        if self.subject.as_deref().is_some_and(|s| s != subject) {
            return false;
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match &mut *state {
            GateState::Buffering { frames, overflow } => {
                if frames.len() < GATE_BUFFER {
                    frames.push((seq, frame.clone()));
                } else {
                    *overflow = true;
                }
                true
            }
            GateState::Open => false,
        }
    }

    /// Queues the held frames newer than `after`, then opens the gate. Frames are taken out in
    /// batches and queued without holding the lock; the gate opens only when, under the lock, nothing
    /// is left, so no live frame can overtake a held one. Returns `false` if frames were lost to the
    /// buffer limit or the client did not drain its queue in time.
    pub async fn release(&self, outbox: &Outbox, after: u64) -> bool {
        loop {
            let batch = {
                let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
                match &mut *state {
                    GateState::Open => return true,
                    GateState::Buffering { overflow: true, .. } => {
                        *state = GateState::Open;
                        return false;
                    }
                    GateState::Buffering { frames, .. } if frames.is_empty() => {
                        *state = GateState::Open;
                        return true;
                    }
                    GateState::Buffering { frames, .. } => std::mem::take(frames),
                }
            };
            for (seq, frame) in batch {
                if seq > after
                    && !outbox
                        .send_wait(Outbound::Text(frame), REPLAY_PATIENCE)
                        .await
                {
                    return false;
                }
            }
        }
    }
}

/// A local connection in a topic.
#[derive(Debug, Clone)]
pub struct Member {
    pub outbox: Outbox,
    pub gate: Option<Arc<Gate>>,
}

type Members = Arc<conn::ConnList<Member>>;
type Topics = Arc<Mutex<HashMap<TopicKey, Topic>>>;

struct Topic {
    members: Members,
    ready: watch::Receiver<bool>,
    /// The topic's own subscription task; `None` for a user topic served by the shared DM
    /// subscription.
    task: Option<AbortHandle>,
}

/// Called for each connection a group's topic dropped because its user left the group.
pub type DepartureHook = Arc<dyn Fn(&GroupId, &Outbox) + Send + Sync>;

/// The registry of topics. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    topics: Topics,
    nats: async_nats::Client,
    backlog: Backlog,
    /// Bumped on every NATS (re)connect; topic tasks then look for gaps.
    reconnects: watch::Receiver<u64>,
    metrics: Arc<Metrics>,
    /// Whether the shared DM subscription is registered, when the gateway runs one.
    shared_dm: Option<watch::Receiver<bool>>,
    departure: Option<DepartureHook>,
}

impl Hub {
    pub fn new(
        nats: async_nats::Client,
        backlog: Backlog,
        reconnects: watch::Receiver<u64>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            topics: Arc::default(),
            nats,
            backlog,
            reconnects,
            metrics,
            shared_dm: None,
            departure: None,
        }
    }

    /// Sets what group topics call for each connection they drop. Call before the hub is cloned.
    pub fn set_departure_hook(&mut self, hook: DepartureHook) {
        self.departure = Some(hook);
    }

    /// With [`DmSubscription::Shared`], starts the gateway's one direct-message subscription, which
    /// user topics then use instead of their own. Call before the hub is cloned.
    pub fn start_dm(&mut self, mode: DmSubscription) -> Option<tokio::task::JoinHandle<()>> {
        if mode == DmSubscription::PerUser {
            return None;
        }
        let (ready, handle) = self.spawn_task(
            Route::Dm(self.topics.clone()),
            MAX_TRACKED_SUBJECTS_SHARED,
            vec![protocol::subject::DM_DELIVER_WILDCARD.to_owned()],
            None,
            None,
            tracing::debug_span!("shared_dm"),
        );
        self.shared_dm = Some(ready);
        Some(handle)
    }

    /// Adds a connection to the topic, subscribing if it is the first local member, and waits until
    /// the subscription is registered at the server so that nothing published afterwards is missed.
    /// Returns `false` if that could not be confirmed in time (NATS unreachable); the member stays in
    /// the topic and the subscription is restored once NATS is back.
    pub async fn join(&self, key: TopicKey, outbox: Outbox, gate: Option<Arc<Gate>>) -> bool {
        let mut ready = {
            let mut topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
            let topic = topics.entry(key.clone()).or_insert_with(|| match &key {
                TopicKey::User(_) if let Some(ready) = &self.shared_dm => Topic {
                    members: Arc::default(),
                    ready: ready.clone(),
                    task: None,
                },
                _ => self.spawn_topic(key),
            });
            add(&topic.members, Member { outbox, gate });
            topic.ready.clone()
        };
        tokio::time::timeout(SUBSCRIBE_WAIT, ready.wait_for(|r| *r))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Puts a gate on (or takes it off) a connection already in the topic.
    pub fn set_gate(&self, key: &TopicKey, outbox: &Outbox, gate: Option<Arc<Gate>>) {
        let topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(topic) = topics.get(key) {
            add(
                &topic.members,
                Member {
                    outbox: outbox.clone(),
                    gate,
                },
            );
        }
    }

    /// Removes a connection from a topic, unsubscribing when it was the last local member.
    pub fn leave(&self, key: &TopicKey, conn: &protocol::ConnId) {
        let mut topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
        let Some(topic) = topics.get(key) else { return };
        if remove(&topic.members, conn) == 0
            && let Some(topic) = topics.remove(key)
            && let Some(task) = topic.task
        {
            task.abort();
            self.metrics.subscriptions.dec();
        }
    }

    /// Subscribes every user's control subject once for this gateway, and routes each command to the
    /// local connections of its user. Returns once the server has registered the subscription.
    pub async fn start_control(
        &self,
        on_recount: impl Fn(&UserId) + Send + 'static,
    ) -> anyhow::Result<tokio::task::JoinHandle<()>> {
        use anyhow::Context;
        let mut sub = self
            .nats
            .subscribe(protocol::subject::USER_CONTROL_WILDCARD)
            .await
            .context("subscribing to control subjects")?;
        self.nats
            .flush()
            .await
            .context("registering the control subscription")?;
        let topics = self.topics.clone();
        Ok(tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                let Some(user) = protocol::subject::user_of_control_subject(&msg.subject) else {
                    continue;
                };
                let cmd = match serde_json::from_slice::<UserControl>(&msg.payload) {
                    Ok(UserControl::Recount) => {
                        on_recount(&user);
                        continue;
                    }
                    Ok(cmd) => cmd,
                    Err(e) => {
                        tracing::warn!(subject = %msg.subject, error = %e, "unknown control command ignored");
                        continue;
                    }
                };
                let members = topics
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&TopicKey::User(user))
                    .map(|t| t.members.clone());
                if let Some(members) = members {
                    control(&members, &msg.subject, cmd);
                }
            }
        }))
    }

    /// Closes every local connection of `user` with `code`; returns how many there were.
    pub fn close_user(&self, user: &UserId, code: u16, reason: &'static str) -> usize {
        let members = self
            .topics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&TopicKey::User(user.clone()))
            .map(|t| t.members.clone());
        let Some(members) = members else { return 0 };
        let snapshot = members.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for m in snapshot.iter() {
            m.outbox.shared.close(code, reason);
        }
        snapshot.len()
    }

    /// Number of topics (rooms and users with local connections) on this gateway.
    pub fn topic_count(&self) -> usize {
        self.topics.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn spawn_topic(&self, key: TopicKey) -> Topic {
        let members: Members = Arc::default();
        let conv = match &key {
            TopicKey::Room(room) => Some(Conversation::Room(room.clone())),
            TopicKey::Group(group) => Some(Conversation::Group(group.clone())),
            TopicKey::User(_) => None,
        };
        let departure = match (&key, &self.departure) {
            (TopicKey::Group(group), Some(hook)) => Some((group.clone(), hook.clone())),
            _ => None,
        };
        let (ready, handle) = self.spawn_task(
            Route::Members(members.clone()),
            MAX_TRACKED_SUBJECTS,
            key.subjects(),
            conv,
            departure,
            tracing::debug_span!("topic", key = ?key),
        );
        Topic {
            members,
            ready,
            task: Some(handle.abort_handle()),
        }
    }

    /// Starts a subscription task on `subjects` delivering along `route`; returns its readiness
    /// (the subscriptions are registered at the server) and its handle.
    fn spawn_task(
        &self,
        route: Route,
        max_tracked: usize,
        subjects: Vec<String>,
        conv: Option<Conversation>,
        departure: Option<(GroupId, DepartureHook)>,
        span: tracing::Span,
    ) -> (watch::Receiver<bool>, tokio::task::JoinHandle<()>) {
        let (ready_tx, ready) = watch::channel(false);
        let task = TopicTask {
            nats: self.nats.clone(),
            backlog: self.backlog.clone(),
            route,
            metrics: self.metrics.clone(),
            last: HashMap::new(),
            max_tracked,
            departure,
        };
        let handle = tokio::spawn(
            task.run(subjects, conv, ready_tx, self.reconnects.clone())
                .instrument(span),
        );
        self.metrics.subscriptions.inc();
        (ready, handle)
    }
}

/// Adds `member`, or replaces the entry of its connection; returns the member count.
fn add(members: &Members, member: Member) -> usize {
    let shared = member.outbox.shared.clone();
    conn::upsert(members, member, |m| Arc::ptr_eq(&m.outbox.shared, &shared))
}

/// Removes the member for `conn`, if any; returns the member count.
fn remove(members: &Members, conn: &protocol::ConnId) -> usize {
    conn::remove(members, |m| m.outbox.conn() == conn)
}

/// A decoded delivery, encoded once for every local socket.
struct Delivery {
    subject: String,
    seq: u64,
    prev_seq: u64,
    frame: Utf8Bytes,
    /// For a group's `removed` or `quit` event: the users who left.
    departed: Vec<UserId>,
}

/// Snapshots of the member lists one message goes to: a topic's, or a direct message's two users'.
type Targets = [Option<Arc<Vec<Member>>>; 2];

/// Where a topic task's messages go.
enum Route {
    /// To the members of its topic.
    Members(Members),
    /// Every direct message of the cluster (the shared DM subscription): each to the local
    /// connections of its two users, if any.
    Dm(Topics),
}

impl Route {
    /// Snapshots of the member lists a message on `subject` goes to.
    fn targets(&self, subject: &str) -> Targets {
        let snapshot = |m: &Members| m.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match self {
            Route::Members(members) => [Some(snapshot(members)), None],
            Route::Dm(topics) => {
                let Some(Conversation::Dm { lo, hi }) = Conversation::from_subject(subject) else {
                    return [None, None];
                };
                let topics = topics.lock().unwrap_or_else(|e| e.into_inner());
                let of = |user| {
                    topics
                        .get(&TopicKey::User(user))
                        .map(|t| snapshot(&t.members))
                };
                [of(lo), of(hi)]
            }
        }
    }
}

struct TopicTask {
    nats: async_nats::Client,
    backlog: Backlog,
    route: Route,
    metrics: Arc<Metrics>,
    /// Per deliver subject, the last sequence delivered to local sockets.
    last: HashMap<String, u64>,
    /// Bound on `last`.
    max_tracked: usize,
    /// A group's topic: the group, and what to call for each connection it drops.
    departure: Option<(GroupId, DepartureHook)>,
}

impl TopicTask {
    async fn run(
        mut self,
        subjects: Vec<String>,
        conv: Option<Conversation>,
        ready: watch::Sender<bool>,
        mut reconnects: watch::Receiver<u64>,
    ) {
        // A room's (or group's) chain starts at its newest stored message, read before subscribing:
        // a message stored in between then shows up as a gap and is filled, never skipped.
        if let Some(conv) = conv
            && let Ok(last) = Box::pin(self.backlog.last_seq(&conv)).await
            && last.exact
        {
            self.last.insert(conv.deliver_subject(), last.seq);
        }
        let mut subs = Vec::new();
        let retry = svc::retry::Backoff::constant(SUBSCRIBE_RETRY);
        for subject in subjects {
            let what = format!("subscribing {subject}");
            subs.push(
                svc::retry::until_ok(&what, retry, || self.nats.subscribe(subject.clone())).await,
            );
        }
        // A flush round trip means the server has processed our SUBs. While NATS is away, keep
        // trying: the client re-sends the SUBs itself on reconnect.
        svc::retry::until_ok("flushing the subscriptions", retry, || self.nats.flush()).await;
        let _ = ready.send(true);
        reconnects.mark_unchanged();
        let mut stream = futures_util::stream::select_all(subs);
        loop {
            tokio::select! {
                msg = stream.next() => {
                    let Some(msg) = msg else { break };
                    self.on_message(msg).await;
                }
                changed = reconnects.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    Box::pin(self.check_after_reconnect()).await;
                }
            }
        }
    }

    async fn on_message(&mut self, msg: async_nats::Message) {
        // The shared DM subscription looks its receivers up once, before decoding: a direct message
        // between users of other gateways is dropped, and its thread forgotten, so a local user who
        // connects later starts a fresh chain, as with a user topic of its own.
        let mut targets = None;
        if let Route::Dm(_) = self.route {
            let found = self.route.targets(&msg.subject);
            if found.iter().all(Option::is_none) {
                self.last.remove(msg.subject.as_str());
                return;
            }
            targets = Some(found);
        }
        let Some(d) = decode_delivery(&msg) else {
            self.metrics.undecodable.inc();
            tracing::warn!(subject = %msg.subject, "undecodable delivery skipped");
            return;
        };
        if let Some(&last) = self.last.get(&d.subject) {
            if d.seq <= last {
                // Already delivered, by a gap fill that read it from the stream.
                return;
            }
            if d.prev_seq > last {
                // Boxed: rare, and its state would otherwise sit in every idle topic task.
                Box::pin(self.fill(&d.subject, last, d.seq - 1)).await;
                // Receivers may have come or gone while the fill waited.
                targets = None;
            }
        }
        let targets = targets.unwrap_or_else(|| self.route.targets(&d.subject));
        self.deliver_to(&targets, &d.subject, d.seq, &d.frame);
        if !d.departed.is_empty() {
            self.depart(&d.departed);
        }
    }

    /// Takes the connections of users who left the group out of its topic, after they got the
    /// event that says so.
    fn depart(&self, users: &[UserId]) {
        let (Some((group, hook)), Route::Members(members)) = (&self.departure, &self.route) else {
            return;
        };
        let gone: Vec<Member> = {
            let list = members.lock().unwrap_or_else(|e| e.into_inner()).clone();
            list.iter()
                .filter(|m| users.contains(&m.outbox.shared.user))
                .cloned()
                .collect()
        };
        if gone.is_empty() {
            return;
        }
        let frame = Utf8Bytes::from(
            ServerFrame::Removed {
                group: group.clone(),
            }
            .to_json(),
        );
        for m in gone {
            remove(members, m.outbox.conn());
            m.outbox.push(Outbound::Text(frame.clone()));
            hook(group, &m.outbox);
        }
    }

    /// Delivers what the stream holds on `subject` in `(after, until]`.
    async fn fill(&mut self, subject: &str, after: u64, until: u64) {
        let Some(conv) = Conversation::from_subject(subject) else {
            return;
        };
        self.metrics.gap_fills.inc();
        match self
            .backlog
            .replay(&conv, after, until, MAX_GAP_FILL, Older::Skip)
            .await
        {
            Ok(Replay::Complete(frames)) => {
                tracing::info!(
                    subject,
                    after,
                    until,
                    filled = frames.len(),
                    "gap filled from the stream"
                );
                self.metrics.gap_filled_messages.inc_by(frames.len() as u64);
                for f in frames {
                    let seq = f.seq();
                    let departed = match &f {
                        Item::Event(e) => e.event.departed().to_vec(),
                        Item::Message(_) => Vec::new(),
                    };
                    let frame = Utf8Bytes::from(f.to_json());
                    self.deliver(subject, seq, &frame);
                    if !departed.is_empty() {
                        self.depart(&departed);
                    }
                }
            }
            Ok(Replay::TooMany) => {
                tracing::warn!(
                    subject,
                    after,
                    until,
                    "gap too large to fill; receivers page with history"
                );
            }
            Err(e) => tracing::warn!(subject, error = %e, "gap fill failed; receivers see the gap"),
        }
    }

    /// After a reconnect, messages may have been stored while this gateway was away and none may
    /// follow to reveal the gap: compare each known subject with the stream.
    async fn check_after_reconnect(&mut self) {
        use futures_util::stream;
        // Threads without a local user any more (shared DM subscription) are forgotten, not checked.
        let route = &self.route;
        if let Route::Dm(_) = route {
            self.last
                .retain(|subject, _| route.targets(subject).iter().any(Option::is_some));
        }
        let known: Vec<(String, u64)> = self.last.iter().map(|(s, l)| (s.clone(), *l)).collect();
        // The newest sequences are asked for a few at a time: the shared DM subscription may know
        // many threads, and its messages wait meanwhile.
        let backlog = &self.backlog;
        let behind: Vec<(String, u64, u64)> = stream::iter(known)
            .map(|(subject, last)| async move {
                let conv = Conversation::from_subject(&subject)?;
                let newest = backlog.last_seq(&conv).await.ok()?;
                (newest.seq > last).then_some((subject, last, newest.seq))
            })
            .buffer_unordered(RECONNECT_CHECKS_IN_FLIGHT)
            .filter_map(std::future::ready)
            .collect()
            .await;
        for (subject, last, newest) in behind {
            self.fill(&subject, last, newest).await;
        }
    }

    fn deliver(&mut self, subject: &str, seq: u64, frame: &Utf8Bytes) {
        let targets = self.route.targets(subject);
        self.deliver_to(&targets, subject, seq, frame);
    }

    fn deliver_to(&mut self, targets: &Targets, subject: &str, seq: u64, frame: &Utf8Bytes) {
        let mut queued = 0;
        for m in targets.iter().flatten().flat_map(|list| list.iter()) {
            if let Some(gate) = &m.gate
                && gate.offer(subject, seq, frame)
            {
                continue;
            }
            if m.outbox.push(Outbound::Text(frame.clone())) == Pushed::Queued {
                queued += 1;
            }
        }
        self.metrics.delivered.inc_by(queued);
        // A known subject is updated in place: no key allocated per message.
        if let Some(last) = self.last.get_mut(subject) {
            *last = seq;
            return;
        }
        if self.last.len() >= self.max_tracked {
            // Forgetting only loses gap detection for threads until their next message.
            self.last.clear();
        }
        self.last.insert(subject.to_owned(), seq);
    }
}

/// Applies a control command to every local connection of a user.
fn control(members: &Members, subject: &str, cmd: UserControl) {
    match cmd {
        UserControl::Deliver { frame, except } => {
            let snapshot = members.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let frame = Utf8Bytes::from(frame);
            for m in snapshot.iter() {
                // A connection still being set up (gated until its welcome is queued) is skipped:
                // `welcome` stays its first frame, and these frames (read state, receipts, typing,
                // a group it was put in) are news its client reads again after the welcome anyway.
                if except.as_ref() != Some(m.outbox.conn()) && m.gate.is_none() {
                    m.outbox.push(Outbound::Text(frame.clone()));
                }
            }
        }
        UserControl::Logout => {
            let snapshot = members.lock().unwrap_or_else(|e| e.into_inner()).clone();
            tracing::info!(conns = snapshot.len(), %subject, "logout: closing the user's sockets");
            for m in snapshot.iter() {
                m.outbox.shared.close(close_code::LOGGED_OUT, "logged out");
            }
        }
        UserControl::Recount => {}
    }
}

/// Decodes a republished message and encodes its `message` frame: once per gateway.
fn decode_delivery(msg: &async_nats::Message) -> Option<Delivery> {
    let headers = msg.headers.as_ref()?;
    let seq = header_u64(headers, async_nats::header::NATS_SEQUENCE)?;
    let prev_seq = header_u64(headers, async_nats::header::NATS_LAST_SEQUENCE).unwrap_or(0);
    let stored = StoredMessage::decode(&msg.payload).ok()?;
    let departed = stored
        .event
        .as_ref()
        .map(|e| e.departed().to_vec())
        .unwrap_or_default();
    // Keys, ids and numbers take under 256 bytes besides the text.
    let capacity = 256 + stored.text.len();
    let json = match Item::from_stored(stored, seq, prev_seq) {
        Item::Message(m) => ServerFrame::Message(m).to_json_with_capacity(capacity),
        Item::Event(e) => ServerFrame::Event(e).to_json(),
    };
    Some(Delivery {
        subject: msg.subject.to_string(),
        seq,
        prev_seq,
        frame: Utf8Bytes::from(json),
        departed,
    })
}

fn header_u64(h: &HeaderMap, name: async_nats::header::HeaderName) -> Option<u64> {
    h.get(name)?.as_str().parse().ok()
}
