//! One WebSocket connection, one task: a read loop that owns the session state, and the
//! [`Writer`] that owns the socket's sink, polled by the same task.
//!
//! The read loop is a single `select!` over a closed set of events: a client frame, a finished
//! publish, the ping and idle timer, the writer stopping, and a close request (shutdown included).
//! Everything the connection sends, replies and fan-out alike, goes through one bounded queue to the
//! writer. When the writer stops, or the connection's token is cancelled, the loop ends.

use std::collections::HashSet;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use axum::extract::ws::{Message, Utf8Bytes, WebSocket};
use futures_util::StreamExt;
use futures_util::stream::{FuturesUnordered, SplitStream};
use protocol::subject::Conversation;
use protocol::{ClientFrame, ConnId, ErrorCode, FrameId, RoomId, ServerFrame, Target, UserId};
use tracing::Instrument;

use crate::backlog::{BacklogError, EncodedReplay, LastSeq, Older};
use crate::conn::{ConnShared, Outbound, Outbox, Pushed, Queue, close_code};
use crate::hub::{Gate, TopicKey};
use crate::presence::{ONLINE_LIST_CAP, WatchKey};
use crate::publish::{Stored, now_ms, stored_message};
use crate::ratelimit::TokenBucket;
use crate::state::AppState;
use crate::writer::Writer;
use protocol::control::ContentDecision;
use protocol::frame::{MAX_WATCHED, PresenceTarget};
use protocol::history::{ConvRef, HistoryRequest};

/// How long an ordered close may take to write what is queued before its Close frame, and how long
/// the client then has to answer it.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// What a finished in-flight request produces.
enum Done {
    Send(Option<FrameId>, protocol::ClientMsgId, SendOutcome),
    Reply(ServerFrame),
}

/// How a `send` ended.
enum SendOutcome {
    Stored(Stored),
    Unavailable(String),
    Rejected,
    Held,
}
type Inflight = FuturesUnordered<Pin<Box<dyn Future<Output = Done> + Send>>>;

/// Runs a connection from the upgrade until it is closed and cleaned up.
pub async fn run(socket: WebSocket, user: UserId, state: AppState) {
    let conn = ConnId::parse(nuid::next().to_string())
        .unwrap_or_else(|_| unreachable!("a NUID is alphanumeric"));
    let span = tracing::info_span!("conn", conn_id = %conn, user = %user);
    run_inner(socket, conn, user, state).instrument(span).await;
}

async fn run_inner(socket: WebSocket, conn: ConnId, user: UserId, state: AppState) {
    let metrics = state.metrics.clone();
    metrics.connections.inc();
    metrics.connections_accepted.inc();
    let shared = Arc::new(ConnShared::new(
        conn,
        user.clone(),
        state.shutdown.child_token(),
    ));
    let queue = Queue::new(state.config.outbound_queue);
    let outbox = Outbox::new(queue.clone(), shared.clone());
    let (sink, mut stream) = socket.split();
    let mut writer = Writer::new(sink, queue, shared.clone(), metrics.clone());

    let user_topic = TopicKey::User(user.clone());
    let next_refresh = Instant::now() + first_refresh(&state.presence);
    let mut session = Session {
        bucket: TokenBucket::new(
            state.config.rate_per_sec,
            state.config.rate_burst,
            Instant::now(),
        ),
        state,
        outbox: outbox.clone(),
        joined: HashSet::new(),
        watched: HashSet::new(),
        // The keys are written at open; the first refresh is due within a period.
        next_refresh,
        refreshing: None,
        inflight: FuturesUnordered::new(),
    };
    // Subscribe to the user's direct messages before welcoming, so nothing sent after the welcome
    // is missed, and hold them back until the welcome is queued, so it stays the first frame.
    let hold = Arc::new(Gate::all());
    // Setup and teardown awaits are boxed: the session future lives as long as the connection,
    // and should not carry their state inline.
    let joined = Box::pin(session.state.hub.join(
        user_topic.clone(),
        outbox.clone(),
        Some(hold.clone()),
    ));
    if !joined.await {
        tracing::warn!("direct-message subscription not confirmed; NATS unreachable");
    }
    // The presence key is stored before the welcome, so a client that has its welcome is online
    // for every watch that reads the bucket afterwards.
    Box::pin(session.state.presence.put_conn(&user, &shared.conn)).await;
    session.reply(ServerFrame::Welcome {
        user: user.clone(),
        conn: shared.conn.clone(),
        heartbeat_ms: u64::try_from(session.state.config.heartbeat.as_millis()).unwrap_or(u64::MAX),
        server_time: now_ms(),
        protocol: protocol::PROTOCOL_VERSION,
    });
    // Direct messages held since the subscription may be more than the queue takes at once.
    writer.drive(Box::pin(hold.release(&outbox, 0))).await;
    session.state.hub.set_gate(&user_topic, &outbox, None);
    tracing::debug!("session open");

    let end = session.read_loop(&mut stream, &mut writer).await;

    // An ordered close writes what is queued up to its Close first; a writer that cannot within
    // the timeout has a slow consumer. Then the Close frame goes out, and the client gets a moment
    // to answer it, so it sees a clean close.
    if end == Flow::Ordered
        && tokio::time::timeout(CLOSE_TIMEOUT, writer.stopped())
            .await
            .is_err()
    {
        shared.close(close_code::SLOW_CONSUMER, "slow consumer");
    }
    Box::pin(writer.finish()).await;
    if let Some((code, _)) = shared.close_reason() {
        metrics.closes.with_label_values(&[&code.to_string()]).inc();
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            while let Some(Ok(msg)) = stream.next().await {
                if matches!(msg, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
    let presence = session.state.presence.clone();
    if let Some(refreshing) = session.refreshing.take() {
        // Its writes are bounded by the presence write timeout.
        let _ = refreshing.await;
    }
    for room in session.joined.drain() {
        session
            .state
            .hub
            .leave(&TopicKey::Room(room.clone()), &shared.conn);
        presence.unwatch(&WatchKey::Room(room.clone()), &shared.conn);
        Box::pin(presence.delete_room(&room, &user, &shared.conn)).await;
    }
    for watched in session.watched.drain() {
        presence.unwatch(&WatchKey::User(watched), &shared.conn);
    }
    session.state.hub.leave(&user_topic, &shared.conn);
    Box::pin(presence.delete_conn(&user, &shared.conn)).await;
    metrics.connections.dec();
    tracing::debug!(close = ?shared.close_reason(), "session closed");
}

struct Session {
    state: AppState,
    outbox: Outbox,
    joined: HashSet<RoomId>,
    /// Users whose presence this connection watches.
    watched: HashSet<UserId>,
    /// When the presence keys are due for a refresh.
    next_refresh: Instant,
    /// The refresh running in the background, if any: teardown waits for it before deleting the
    /// keys, so a late refresh cannot re-create them and leave the user online until the TTL.
    refreshing: Option<tokio::task::JoinHandle<()>>,
    bucket: TokenBucket,
    inflight: Inflight,
}

/// Time until a connection's next presence refresh: jittered (75–100 % of the period), so
/// connections opened together do not refresh together.
fn refresh_period(presence: &crate::presence::Presence) -> std::time::Duration {
    jittered(presence, 0.75)
}

/// Time until a connection's first presence refresh: 25–100 % of the period. Connections opened
/// together (clients coming back after a gateway restart, a benchmark's ramp) would otherwise make
/// their first refreshes within a quarter of the period, three times as dense as later ones.
fn first_refresh(presence: &crate::presence::Presence) -> std::time::Duration {
    jittered(presence, 0.25)
}

/// A random share, from `low` to 1, of the refresh period.
fn jittered(presence: &crate::presence::Presence, low: f64) -> std::time::Duration {
    presence
        .settings()
        .refresh_every()
        .mul_f64(low + rand::random::<f64>() * (1.0 - low))
}

/// What a client frame led to: done (with how the read loop goes on), or a handler that must wait.
enum Step {
    Done(Flow),
    Async(Option<FrameId>, ClientFrame),
}

/// Whether the read loop goes on, and if not, how the connection ends.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    /// Stop now: the client is gone, or a close was already requested through the token.
    Stop,
    /// An `Outbound::Close` is queued behind frames the client must still get.
    Ordered,
}

impl Session {
    async fn read_loop(
        &mut self,
        stream: &mut SplitStream<WebSocket>,
        writer: &mut Writer,
    ) -> Flow {
        let cfg = self.state.config.clone();
        let shared = self.outbox.shared.clone();
        let mut last_activity = tokio::time::Instant::now();
        let mut next_ping = last_activity + cfg.heartbeat;
        // Made once, not on every wake: each would register with its token or the timer wheel
        // again. One timer serves the ping and the idle deadline; it is moved on only when it
        // fires, so activity costs no timer work.
        let mut closing = pin!(shared.closing.cancelled());
        let mut timer = pin!(tokio::time::sleep_until(
            next_ping.min(last_activity + cfg.idle_timeout)
        ));
        let end = loop {
            tokio::select! {
                biased;
                // A close asked for, or shutdown: the connection's token is a child of the
                // gateway's shutdown token, and a close asked for first keeps its own reason.
                () = &mut closing => {
                    shared.close(close_code::GOING_AWAY, "server shutting down");
                    break Flow::Stop;
                }
                // Before the writer: an ack queued here goes out in the same socket write as the
                // frames already queued, usually the sender's own echo (JetStream sends the echo
                // and the publish ack together).
                Some(done) = self.inflight.next(), if !self.inflight.is_empty() => {
                    match done {
                        Done::Send(id, cmid, outcome) => self.finish_send(id, cmid, outcome),
                        Done::Reply(frame) => {
                            if let ServerFrame::Error { code, .. } = &frame {
                                self.state.metrics.error(*code);
                            }
                            self.reply(frame);
                        }
                    }
                }
                // Polled before the socket's read side: reads spend the task's cooperative budget,
                // and a client that keeps sending must not leave its own replies unwritten.
                // Ready when the socket failed or a queued Close was written up to.
                _ = std::future::poll_fn(|cx| writer.poll_write(cx)) => break Flow::Stop,
                msg = stream.next(), if self.inflight.len() < cfg.max_inflight_sends => {
                    last_activity = tokio::time::Instant::now();
                    self.refresh_presence();
                    let flow = match msg {
                        Some(Ok(msg)) => match self.on_message(msg) {
                            Step::Done(flow) => flow,
                            // Boxed: the session future, held by every idle connection, then
                            // carries none of the rarer handlers' state inline.
                            // The writer keeps writing meanwhile: a replay waits for room in
                            // this connection's queue.
                            Step::Async(id, frame) => {
                                writer.drive(Box::pin(self.dispatch_async(id, frame))).await;
                                Flow::Continue
                            }
                        },
                        Some(Err(e)) if is_capacity_error(&e) => {
                            self.too_large(None);
                            Flow::Ordered
                        }
                        Some(Err(e)) => {
                            tracing::debug!(error = %e, "socket error");
                            Flow::Stop
                        }
                        None => Flow::Stop,
                    };
                    if flow != Flow::Continue {
                        break flow;
                    }
                }
                () = &mut timer => {
                    let now = tokio::time::Instant::now();
                    let idle_deadline = last_activity + cfg.idle_timeout;
                    if now >= idle_deadline {
                        self.outbox.push(Outbound::Close(close_code::IDLE, "idle timeout"));
                        break Flow::Ordered;
                    }
                    if now >= next_ping {
                        self.outbox.push(Outbound::Ping);
                        next_ping = now + cfg.heartbeat;
                    }
                    timer.as_mut().reset(next_ping.min(idle_deadline));
                }
            }
        };
        // Sends still waiting for their ack are dropped: the client did not get an ack, so it resends
        // with the same client_msg_id and JetStream stores the message once.
        end
    }

    /// Handles one client frame; the frames that need to wait (join, resume, watch, presence
    /// queries, leave) come back as [`Step::Async`] for [`Session::dispatch_async`].
    fn on_message(&mut self, msg: Message) -> Step {
        self.on_frame(msg).unwrap_or(Step::Done(Flow::Continue))
    }

    fn on_frame(&mut self, msg: Message) -> Option<Step> {
        let flow = |f| Some(Step::Done(f));
        let text = match msg {
            Message::Text(t) => t,
            Message::Binary(b) => {
                self.state.metrics.frames_in.inc();
                if b.len() > self.state.config.max_frame_bytes {
                    self.too_large(None);
                    return flow(Flow::Ordered);
                }
                self.error(
                    None,
                    ErrorCode::BadRequest,
                    "binary frames are not supported; send JSON text frames",
                );
                return None;
            }
            Message::Close(_) => return flow(Flow::Stop),
            Message::Ping(_) | Message::Pong(_) => return None,
        };
        self.state.metrics.frames_in.inc();
        if text.len() > self.state.config.max_frame_bytes {
            self.too_large(None);
            return flow(Flow::Ordered);
        }
        let parsed = ClientFrame::parse(text.as_str());
        if !self.bucket.try_take(Instant::now()) {
            let id = parsed.as_ref().ok().and_then(|(id, _)| id.clone());
            self.error(id, ErrorCode::RateLimited, "too many frames; slow down");
            return None;
        }
        match parsed {
            Ok((id, frame)) => return self.dispatch(id, frame),
            Err(e) => {
                self.state.metrics.error(e.code);
                self.reply(e.to_frame());
            }
        }
        None
    }

    /// Refreshes this connection's presence keys, at most every third of their TTL, in the background.
    fn refresh_presence(&mut self) {
        if Instant::now() < self.next_refresh
            || self.refreshing.as_ref().is_some_and(|r| !r.is_finished())
        {
            return;
        }
        let presence = self.state.presence.clone();
        self.next_refresh = Instant::now() + refresh_period(&presence);
        let (user, conn) = (
            self.outbox.shared.user.clone(),
            self.outbox.shared.conn.clone(),
        );
        let rooms: Vec<RoomId> = self.joined.iter().cloned().collect();
        self.refreshing = Some(tokio::spawn(
            async move {
                presence.put_conn(&user, &conn).await;
                for room in rooms {
                    presence.put_room(&room, &user, &conn).await;
                }
            }
            .in_current_span(),
        ));
    }

    async fn watch(&mut self, id: Option<FrameId>, users: Vec<UserId>) {
        let new: HashSet<UserId> = users
            .into_iter()
            .filter(|u| !self.watched.contains(u))
            .collect();
        if self.watched.len() + new.len() > MAX_WATCHED {
            return self.error(
                id,
                ErrorCode::BadRequest,
                format!("a connection may watch at most {MAX_WATCHED} users"),
            );
        }
        // The watches start together: each waits for its own snapshot (a consumer created at the
        // server), and one after another, 200 of them took seconds.
        let presence = self.state.presence.clone();
        let states = futures_util::future::join_all(
            new.iter()
                .map(|user| presence.watch(WatchKey::User(user.clone()), self.outbox.clone())),
        )
        .await;
        self.watched.extend(new);
        for p in states.into_iter().flatten() {
            self.reply(ServerFrame::Presence {
                room: None,
                user: p.user,
                online: p.online,
                last_seen: p.last_seen,
            });
        }
        let watching = self.watched.len();
        self.reply(ServerFrame::Watched { id, watching });
    }

    fn unwatch(&mut self, id: Option<FrameId>, users: Vec<UserId>) {
        for user in users {
            if self.watched.remove(&user) {
                self.state
                    .presence
                    .unwatch(&WatchKey::User(user), self.outbox.conn());
            }
        }
        let watching = self.watched.len();
        self.reply(ServerFrame::Unwatched { id, watching });
    }

    async fn presence_query(&mut self, id: Option<FrameId>, target: PresenceTarget) {
        let (room, keys) = match target {
            PresenceTarget::Room(room) => (Some(room.clone()), vec![WatchKey::Room(room)]),
            PresenceTarget::Users(users) => (None, users.into_iter().map(WatchKey::User).collect()),
        };
        let mut users = Vec::new();
        for key in keys {
            match self.state.presence.query(key).await {
                Ok(state) => users.extend(state),
                Err(e) => {
                    tracing::warn!(error = %e, "presence query failed");
                    return self.error(
                        id,
                        ErrorCode::Unavailable,
                        "presence is unavailable; try again",
                    );
                }
            }
        }
        self.reply(ServerFrame::PresenceState { id, room, users });
    }

    /// Answers the frames that need no waiting; hands back the others.
    fn dispatch(&mut self, id: Option<FrameId>, frame: ClientFrame) -> Option<Step> {
        match frame {
            ClientFrame::Unwatch { users } => self.unwatch(id, users),
            ClientFrame::Ping => self.reply(ServerFrame::Pong {
                id,
                server_time: now_ms(),
            }),
            ClientFrame::History {
                target,
                before,
                after,
                limit,
            } => self.history(id, target, before, after, limit),
            ClientFrame::Send {
                target,
                text,
                client_msg_id,
            } => self.send(id, target, text, client_msg_id),
            frame => return Some(Step::Async(id, frame)),
        }
        None
    }

    /// The frames that wait on NATS before they are answered.
    async fn dispatch_async(&mut self, id: Option<FrameId>, frame: ClientFrame) {
        match frame {
            ClientFrame::Watch { users } => self.watch(id, users).await,
            ClientFrame::PresenceQuery { target } => self.presence_query(id, target).await,
            ClientFrame::Join { room, since } => self.join(id, room, since).await,
            ClientFrame::Resume { with, since } => self.resume(id, with, since).await,
            ClientFrame::Leave { room } => {
                if self.joined.remove(&room) {
                    self.state
                        .hub
                        .leave(&TopicKey::Room(room.clone()), self.outbox.conn());
                    let presence = &self.state.presence;
                    presence.unwatch(&WatchKey::Room(room.clone()), self.outbox.conn());
                    let shared = &self.outbox.shared;
                    presence
                        .delete_room(&room, &shared.user, &shared.conn)
                        .await;
                    self.reply(ServerFrame::Left { id, room });
                } else {
                    self.error(id, ErrorCode::NotJoined, format!("not in room {room}"));
                }
            }
            // Never handed here by `dispatch`, which answers these at once.
            other => {
                let _ = self.dispatch(id, other);
            }
        }
    }

    async fn join(&mut self, id: Option<FrameId>, room: RoomId, since: Option<u64>) {
        let fresh = !self.joined.contains(&room);
        if fresh && self.joined.len() >= self.state.config.max_rooms_per_conn {
            let max = self.state.config.max_rooms_per_conn;
            self.error(
                id,
                ErrorCode::BadRequest,
                format!("a connection may join at most {max} rooms"),
            );
            return;
        }
        let key = TopicKey::Room(room.clone());
        let conv = Conversation::Room(room.clone());
        // A resume holds the room's live frames back until the replay is queued.
        let gate = since.map(|_| Arc::new(Gate::new(conv.deliver_subject())));
        if fresh {
            // Subscribe before reading the last sequence, so nothing stored after it is missed.
            self.state
                .hub
                .join(key.clone(), self.outbox.clone(), gate.clone())
                .await;
            self.joined.insert(room.clone());
        } else if gate.is_some() {
            self.state.hub.set_gate(&key, &self.outbox, gate.clone());
        }
        let last = match self.state.backlog.last_seq(&conv).await {
            Ok(last) => last,
            Err(e) => {
                tracing::warn!(error = %e, %room, "join: stream unreachable");
                if fresh {
                    self.joined.remove(&room);
                    self.state.hub.leave(&key, self.outbox.conn());
                } else if gate.is_some() {
                    self.state.hub.set_gate(&key, &self.outbox, None);
                }
                self.error(
                    id,
                    ErrorCode::Unavailable,
                    "the message store is unreachable; try again",
                );
                return;
            }
        };
        let last_seq = last.seq;
        // Announce this connection in the room, then read who is online (including itself).
        let shared = self.outbox.shared.clone();
        let presence = self.state.presence.clone();
        presence.put_room(&room, &shared.user, &shared.conn).await;
        let (members, mut online_count) = presence
            .watch_capped(
                WatchKey::Room(room.clone()),
                self.outbox.clone(),
                ONLINE_LIST_CAP,
            )
            .await;
        let mut online: Vec<UserId> = members.into_iter().map(|p| p.user).collect();
        // A watch already running here may not have seen this connection's own key yet.
        if let Err(at) = online.binary_search(&shared.user) {
            // Online but not listed: either not seen yet, or listed past the cap.
            if at < ONLINE_LIST_CAP {
                online.insert(at, shared.user.clone());
                online.truncate(ONLINE_LIST_CAP);
            }
            if !presence.is_online_in(&room, &shared.user) {
                online_count += 1;
            }
        }
        match (since, gate) {
            (Some(since), Some(gate)) => {
                self.replay(&key, &conv, since, last, &gate, |recovered| {
                    ServerFrame::Joined {
                        id,
                        room,
                        last_seq,
                        recovered: Some(recovered),
                        online,
                        online_count,
                    }
                })
                .await;
            }
            _ => self.reply(ServerFrame::Joined {
                id,
                room,
                last_seq,
                recovered: None,
                online,
                online_count,
            }),
        }
    }

    /// `resume {with, since}`: the direct-message counterpart of `join {room, since}`.
    async fn resume(&mut self, id: Option<FrameId>, with: UserId, since: u64) {
        let Some(conv) = Conversation::dm(self.outbox.shared.user.clone(), with.clone()) else {
            return self.error(
                id,
                ErrorCode::BadRequest,
                "there is no thread with yourself",
            );
        };
        let key = TopicKey::User(self.outbox.shared.user.clone());
        let gate = Arc::new(Gate::new(conv.deliver_subject()));
        self.state
            .hub
            .set_gate(&key, &self.outbox, Some(gate.clone()));
        let last = match self.state.backlog.last_seq(&conv).await {
            Ok(last) => last,
            Err(e) => {
                tracing::warn!(error = %e, "resume: stream unreachable");
                self.state.hub.set_gate(&key, &self.outbox, None);
                return self.error(
                    id,
                    ErrorCode::Unavailable,
                    "the message store is unreachable; try again",
                );
            }
        };
        let last_seq = last.seq;
        self.replay(&key, &conv, since, last, &gate, |recovered| {
            ServerFrame::Resumed {
                id,
                with,
                last_seq,
                recovered,
            }
        })
        .await;
    }

    /// Queues `head(recovered)`, then every message in `(since, last_seq]`, then the live frames the
    /// gate held back that are newer than `last_seq`, and removes the gate: no gap, no duplicate.
    async fn replay(
        &mut self,
        key: &TopicKey,
        conv: &Conversation,
        since: u64,
        last: LastSeq,
        gate: &Arc<Gate>,
        head: impl FnOnce(bool) -> ServerFrame,
    ) {
        let max = self.state.config.max_resume;
        let last_seq = last.seq;
        let replayed = if last.exact {
            self.state
                .backlog
                .replay_shared(conv, since, last_seq, max, Older::FromHistory)
                .await
        } else {
            Err(Arc::new(BacklogError::History(
                "the newest sequence is unknown".into(),
            )))
        };
        let frames: Option<&[(u64, Utf8Bytes)]> = match replayed.as_deref() {
            Ok(EncodedReplay::Complete(frames)) => Some(frames),
            Ok(EncodedReplay::TooMany) => None,
            Err(e) => {
                tracing::warn!(error = %e, since, last_seq, "resume could not read the backlog");
                None
            }
        };
        let recovered = frames.is_some();
        self.state
            .metrics
            .resumes
            .with_label_values(&[if recovered { "true" } else { "false" }])
            .inc();
        self.reply(head(recovered));
        let patience = crate::hub::REPLAY_PATIENCE;
        let mut complete = true;
        for (_, json) in frames.unwrap_or_default() {
            if !self
                .outbox
                .send_wait(Outbound::Text(json.clone()), patience)
                .await
            {
                complete = false;
                break;
            }
        }
        complete = complete && gate.release(&self.outbox, last_seq).await;
        self.state.hub.set_gate(key, &self.outbox, None);
        if !complete {
            self.outbox
                .shared
                .close(close_code::SLOW_CONSUMER, "slow consumer");
        }
    }

    fn history(
        &mut self,
        id: Option<FrameId>,
        target: Target,
        before: Option<u64>,
        after: Option<u64>,
        limit: u32,
    ) {
        let me = self.outbox.shared.user.clone();
        // Rooms are public: anyone may read a room's history without joining it. A thread is named
        // by its other participant, so a user can only ever name a thread they are part of.
        let (conv, room, with) = match target {
            Target::Room(room) => (Conversation::Room(room.clone()), Some(room), None),
            Target::User(other) => match Conversation::dm(me, other.clone()) {
                Some(conv) => (conv, None, Some(other)),
                None => {
                    return self.error(
                        id,
                        ErrorCode::BadRequest,
                        "there is no thread with yourself",
                    );
                }
            },
        };
        let req = HistoryRequest {
            conv: ConvRef::from(&conv),
            before,
            after,
            limit,
        };
        let backlog = self.state.backlog.clone();
        self.inflight.push(Box::pin(async move {
            let frame = match backlog.history(&req).await {
                Ok((messages, more)) => ServerFrame::History {
                    id,
                    room,
                    with,
                    messages,
                    more,
                },
                Err(BacklogError::Refused(message)) => ServerFrame::Error {
                    id,
                    code: ErrorCode::BadRequest,
                    message,
                },
                Err(e) => ServerFrame::Error {
                    id,
                    code: ErrorCode::Unavailable,
                    message: format!("history is unavailable: {e}"),
                },
            };
            Done::Reply(frame)
        }));
    }

    fn send(
        &mut self,
        id: Option<FrameId>,
        target: Target,
        text: String,
        cmid: protocol::ClientMsgId,
    ) {
        let cfg = &self.state.config;
        if text.is_empty() {
            return self.error(id, ErrorCode::BadRequest, "text must not be empty");
        }
        if text.chars().count() > cfg.max_text_chars {
            let max = cfg.max_text_chars;
            return self.error(
                id,
                ErrorCode::TooLarge,
                format!("text is longer than {max} characters"),
            );
        }
        let me = self.outbox.shared.user.clone();
        let conv = match &target {
            Target::Room(room) if !self.joined.contains(room) => {
                return self.error(
                    id,
                    ErrorCode::NotJoined,
                    format!("join room {room} before sending to it"),
                );
            }
            Target::Room(room) => Conversation::Room(room.clone()),
            Target::User(to) => match Conversation::dm(me.clone(), to.clone()) {
                Some(conv) => conv,
                None => {
                    return self.error(
                        id,
                        ErrorCode::BadRequest,
                        "cannot send a direct message to yourself",
                    );
                }
            },
        };
        let msg = stored_message(me, &target, text, cmid.clone());
        // The future holds the shared state (one pointer), not clones of the publisher and the
        // checker (half a kilobyte), and boxes the content check and the publish's retry and
        // duplicate paths: at about 650 bytes it stays within glibc's per-thread cache (1 KiB); at
        // 3 KB each send took malloc's slow path.
        let state = self.state.clone();
        self.inflight.push(Box::pin(async move {
            if let Some(checker) = &state.content {
                match Box::pin(checker.check(&msg.from, &msg.text)).await {
                    Ok(ContentDecision::Deliver) => {}
                    Ok(ContentDecision::Reject) => {
                        return Done::Send(id, cmid, SendOutcome::Rejected);
                    }
                    Ok(ContentDecision::Hold) => return Done::Send(id, cmid, SendOutcome::Held),
                    Err(e) => {
                        return Done::Send(id, cmid, SendOutcome::Unavailable(e.to_string()));
                    }
                }
            }
            let outcome = match state.publisher.publish(&conv, &msg).await {
                Ok(stored) => SendOutcome::Stored(stored),
                Err(e) => SendOutcome::Unavailable(e.to_string()),
            };
            Done::Send(id, cmid, outcome)
        }));
    }

    fn finish_send(
        &mut self,
        id: Option<FrameId>,
        client_msg_id: protocol::ClientMsgId,
        outcome: SendOutcome,
    ) {
        match outcome {
            SendOutcome::Stored(Stored { seq, ts }) => self.reply(ServerFrame::Ack {
                id,
                client_msg_id,
                seq,
                ts,
            }),
            SendOutcome::Unavailable(e) => self.error(
                id,
                ErrorCode::Unavailable,
                format!("message not stored: {e}; resend with the same client_msg_id"),
            ),
            SendOutcome::Rejected => self.error(
                id,
                ErrorCode::ContentRejected,
                "the message was rejected by the content check and not stored",
            ),
            SendOutcome::Held => self.error(
                id,
                ErrorCode::ContentHeld,
                "the message is held for review and was not delivered",
            ),
        }
    }

    /// Answers an oversize frame: an error frame, then close 1009.
    fn too_large(&mut self, id: Option<FrameId>) {
        let max = self.state.config.max_frame_bytes;
        self.error(
            id,
            ErrorCode::TooLarge,
            format!("frame is larger than {max} bytes"),
        );
        self.outbox
            .push(Outbound::Close(close_code::TOO_BIG, "frame too large"));
    }

    fn error(&mut self, id: Option<FrameId>, code: ErrorCode, message: impl Into<String>) {
        self.state.metrics.error(code);
        self.reply(ServerFrame::Error {
            id,
            code,
            message: message.into(),
        });
    }

    fn reply(&mut self, frame: ServerFrame) {
        if self
            .outbox
            .push(Outbound::Text(Utf8Bytes::from(frame.to_json())))
            == Pushed::Overflow
        {
            tracing::info!("outbound queue full; closing as slow consumer");
        }
    }
}

/// Whether a read error is tungstenite's own size limit, which we answer with 1009.
fn is_capacity_error(e: &axum::Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<tungstenite::Error>() {
            return matches!(t, tungstenite::Error::Capacity(_));
        }
        cur = err.source();
    }
    false
}
