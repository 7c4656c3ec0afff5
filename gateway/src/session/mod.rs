//! One WebSocket connection, one task: a read loop that owns the session state, and the
//! [`Writer`] that owns the socket's sink, polled by the same task.
//!
//! The read loop is a single `select!` over a closed set of events: a client frame, a finished
//! publish, the ping and idle timer, the writer stopping, and a close request (shutdown included).
//! Everything the connection sends, replies and fan-out alike, goes through one bounded queue to the
//! writer. When the writer stops, or the connection's token is cancelled, the loop ends.
//!
//! This module is the connection's life (setup, the read loop, dispatch, replies, teardown); the
//! frames' handlers are in `rooms` (join, leave, resume, replay), `send` (send, history) and
//! `watch` (watch, unwatch, presence queries, presence refresh).

use std::collections::HashSet;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use axum::extract::ws::{Message, Utf8Bytes, WebSocket};
use futures_util::StreamExt;
use futures_util::stream::{FuturesUnordered, SplitStream};
use protocol::{ClientFrame, ConnId, ErrorCode, FrameId, GroupId, RoomId, ServerFrame, UserId};
use tracing::Instrument;

use crate::conn::{ConnShared, Outbound, Outbox, Pushed, Queue, close_code};
use crate::hub::{Gate, TopicKey};
use crate::presence::WatchKey;
use crate::publish::{Stored, now_ms};
use crate::ratelimit::TokenBucket;
use crate::state::AppState;
use crate::writer::Writer;

mod convs;
mod groups;
mod rooms;
mod send;
mod typing;
mod watch;

/// How long an ordered close may take to write what is queued before its Close frame, and how long
/// the client then has to answer it.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// What a finished in-flight request produces.
enum Done {
    Send(Option<FrameId>, protocol::ClientMsgId, SendOutcome),
    Reply(ServerFrame),
    /// Nothing to answer (a `typing` passed on).
    Quiet,
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
/// `counted` is the user's connection count read at the handshake (`userlimit.rs`).
pub async fn run(socket: WebSocket, user: UserId, counted: Option<usize>, state: AppState) {
    let conn = ConnId::parse(nuid::next().to_string())
        .unwrap_or_else(|_| unreachable!("a NUID is alphanumeric"));
    let span = tracing::info_span!("conn", conn_id = %conn, user = %user);
    run_inner(socket, conn, user, counted, state)
        .instrument(span)
        .await;
}

async fn run_inner(
    socket: WebSocket,
    conn: ConnId,
    user: UserId,
    counted: Option<usize>,
    state: AppState,
) {
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
        groups: HashSet::new(),
        watched: HashSet::new(),
        // The keys are written at open; the first refresh is due within a period.
        next_refresh,
        refreshing: None,
        inflight: FuturesUnordered::new(),
        typing_at: None,
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
    let spans = session.state.user_limits.open(&user, counted);
    Box::pin(session.state.presence.put_conn(&user, &shared.conn)).await;
    if spans {
        // Now that its key is written, the user's other gateways count it in their share.
        session.state.user_limits.announce(&user);
    }
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
    for group in session.groups.drain() {
        session
            .state
            .hub
            .leave(&TopicKey::Group(group.clone()), &shared.conn);
        session.state.groups.unpin(&group);
        let room = group.as_room();
        presence.unwatch(&WatchKey::Room(room.clone()), &shared.conn);
        Box::pin(presence.delete_room(&room, &user, &shared.conn)).await;
    }
    for watched in session.watched.drain() {
        presence.unwatch(&WatchKey::User(watched), &shared.conn);
    }
    session.state.hub.leave(&user_topic, &shared.conn);
    Box::pin(presence.delete_conn(&user, &shared.conn)).await;
    session.state.user_limits.release(&user);
    metrics.connections.dec();
    tracing::debug!(close = ?shared.close_reason(), "session closed");
}

struct Session {
    state: AppState,
    outbox: Outbox,
    joined: HashSet<RoomId>,
    /// Groups this connection joined (each pinned in the gateway's group cache). A group its user
    /// left stays here, refused at every use, until `leave` or the end of the connection.
    groups: HashSet<GroupId>,
    /// Users whose presence this connection watches.
    watched: HashSet<UserId>,
    /// When the presence keys are due for a refresh.
    next_refresh: Instant,
    /// The refresh running in the background, if any: teardown waits for it before deleting the
    /// keys, so a late refresh cannot re-create them and leave the user online until the TTL.
    refreshing: Option<tokio::task::JoinHandle<()>>,
    bucket: TokenBucket,
    inflight: Inflight,
    /// When this connection's last `typing` was passed on.
    typing_at: Option<Instant>,
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
                        Done::Quiet => {}
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
        let now = Instant::now();
        if !self.bucket.try_take(now) {
            let id = parsed.as_ref().ok().and_then(|(id, _)| id.clone());
            self.state.metrics.error(ErrorCode::RateLimited);
            let retry_after_ms = Some(ms_ceil(self.bucket.wait(now)));
            self.reply(ServerFrame::Error {
                id,
                code: ErrorCode::RateLimited,
                message: "too many frames; slow down".into(),
                retry_after_ms,
            });
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
                mentions,
            } => self.send(id, target, text, client_msg_id, mentions),
            frame @ (ClientFrame::GroupCreate { .. }
            | ClientFrame::GroupAdd { .. }
            | ClientFrame::GroupRemove { .. }
            | ClientFrame::GroupQuit { .. }
            | ClientFrame::GroupRole { .. }
            | ClientFrame::GroupRename { .. }
            | ClientFrame::GroupInfo { .. }) => self.group_frame(id, frame),
            frame @ (ClientFrame::Conversations { .. }
            | ClientFrame::Read { .. }
            | ClientFrame::ConversationHide { .. }
            | ClientFrame::ConversationMute { .. }
            | ClientFrame::GroupReceipts { .. }) => self.conv_frame(id, frame),
            ClientFrame::Typing { target } => self.typing(id, target),
            frame => return Some(Step::Async(id, frame)),
        }
        None
    }

    /// The frames that wait on NATS before they are answered.
    async fn dispatch_async(&mut self, id: Option<FrameId>, frame: ClientFrame) {
        match frame {
            ClientFrame::Watch { users } => self.watch(id, users).await,
            ClientFrame::PresenceQuery { target } => self.presence_query(id, target).await,
            ClientFrame::Join { channel, since } => self.join(id, channel, since).await,
            ClientFrame::Resume { with, since } => self.resume(id, with, since).await,
            ClientFrame::Leave { channel } => self.leave(id, channel).await,
            // Never handed here by `dispatch`, which answers these at once.
            other => {
                let _ = self.dispatch(id, other);
            }
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
            retry_after_ms: None,
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

/// Whole milliseconds, rounded up, so that a client waiting that long finds the token there.
fn ms_ceil(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_micros().div_ceil(1000)).unwrap_or(u64::MAX)
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
