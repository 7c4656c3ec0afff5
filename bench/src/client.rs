//! One simulated client: connect, join, wait for `go`, send at a pace, and account for every delivery.
//!
//! A client reads and writes its socket from one task. It keeps its own window of sends waiting for
//! their ack, no larger than the gateway's in-flight limit, so it never blocks on a socket the gateway
//! stopped reading; a tick that finds the window full is counted as skipped, and the achieved rate is
//! reported next to the offered one.
//!
//! Loss and duplicates are found without a set of messages per receiver. Deliveries of one
//! conversation arrive in stream order on one connection, so a `seq` that does not increase is a
//! duplicate. Each sender numbers its `client_msg_id`s densely from 0, so a receiver keeps one bit per
//! number and sender, and a number seen twice is a duplicate too; a number below the highest seen is
//! a reorder (stored in another order than sent, which v1 allows), counted apart. When a sender is
//! done it waits for its acks and sends an end marker; a receiver is done once it has every sender's
//! marker. Loss is counted by the parent: each sender's acked count times the receivers of its
//! conversation, minus what they got.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use protocol::UserId;
use serde::Deserialize;
use token::Signer;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::hist::Histogram;
use crate::plan::{ClientSpec, Target, WorkerSpec, dm_key, source_ip};

/// Sends one client may have waiting for an ack: the gateway's default `GATEWAY_MAX_INFLIGHT_SENDS`.
pub const SEND_WINDOW: usize = 32;
/// Longest handshake, welcome and join of one client.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Lifetime of the tokens the generator mints.
const TOKEN_TTL_SECS: u64 = 3600;
/// Client read buffer: frames are small, and a 19k-connection worker must stay small too.
const READ_BUFFER: usize = 4 * 1024;

pub type Ws = WebSocketStream<TcpStream>;

/// When the run started, shared by the clients of a worker.
#[derive(Debug, Clone, Copy)]
pub struct Phase {
    pub go: Instant,
    pub go_unix_ns: u64,
}

/// Counters of one worker, shared by its clients (one thread, so a `RefCell`).
#[derive(Default)]
pub struct Stats {
    pub connected: u64,
    pub connect_failed: u64,
    pub connect_errors: BTreeMap<String, u64>,
    pub closed_early: BTreeMap<String, u64>,
    pub timed_out: u64,
    pub sent: u64,
    pub acked: u64,
    pub unacked: u64,
    pub skipped: u64,
    pub send_errors: BTreeMap<String, u64>,
    pub other_frames: BTreeMap<String, u64>,
    pub deliveries: u64,
    pub dup_seq: u64,
    pub dup_cmid: u64,
    pub reordered: u64,
    pub unexpected: u64,
    pub markers_expected: u64,
    pub markers_got: u64,
    pub dup_events: u64,
    pub expected: u64,
    pub lost: u64,
    pub counters: BTreeMap<String, u64>,
    pub latency: Histogram,
    /// Deliveries slower than [`crate::report::SLOW_US`], by the unix second they were sent in:
    /// (count, slowest µs).
    pub slow: BTreeMap<u64, (u64, u64)>,
    pub ack_latency: Histogram,
    /// TCP connect → handshake → welcome → joins done, per client that connected.
    pub connect_latency: Histogram,
    pub offline_latency: Histogram,
    pub got: BTreeMap<String, u64>,
    pub receivers: BTreeMap<String, u64>,
    pub acked_by: BTreeMap<String, u64>,
    pub last_delivery_unix_ns: u64,
    pub first_send_unix_ns: u64,
    pub last_send_unix_ns: u64,
}

/// What the clients of one worker share.
pub struct Ctx {
    pub spec: WorkerSpec,
    pub signer: Signer,
    /// `iat` of every token this worker mints: a client that reconnects presents the token it
    /// already holds, as a real one does, rather than a new one.
    pub token_iat: u64,
    pub stats: RefCell<Stats>,
    pub go: watch::Receiver<Option<Phase>>,
    pub connecting: Semaphore,
    /// Set when the worker reported `ready`: a client that connects later takes no part, so it
    /// cannot miss messages sent before it joined.
    pub late: std::cell::Cell<bool>,
    /// What the churners and watchers of a presence-churn run recorded, matched at the end.
    pub churn: RefCell<crate::churn::Record>,
}

impl Stats {
    pub fn count(&mut self, name: &str, n: u64) {
        *self.counters.entry(name.to_owned()).or_default() += n;
    }
}

/// Runs one client from connect to close; everything it observes goes into `ctx.stats`.
pub async fn run(ctx: Rc<Ctx>, c: ClientSpec) {
    let ws = {
        let _permit = ctx.connecting.acquire().await;
        let started = tokio::time::Instant::now();
        match tokio::time::timeout(CONNECT_TIMEOUT, setup(&ctx, &c)).await {
            Ok(Ok(ws)) => {
                let us = started.elapsed().as_micros() as u64;
                ctx.stats.borrow_mut().connect_latency.record(us);
                ws
            }
            Ok(Err(e)) => return fail(&ctx, short(&format!("{e:#}"))),
            Err(_) => return fail(&ctx, "timeout".into()),
        }
    };
    if ctx.late.get() {
        return fail(&ctx, "connected after the ready deadline".into());
    }
    ctx.stats.borrow_mut().connected += 1;
    let senders = c
        .expect_from
        .iter()
        .map(|u| SenderState {
            user: u.clone(),
            got: 0,
            max_n: None,
            seen: Vec::new(),
        })
        .collect();
    let conn = Conn {
        ctx: ctx.clone(),
        c,
        inflight: HashMap::new(),
        next_n: 0,
        acked: 0,
        marker_sent: false,
        marker_acked: false,
        last_seq: 0,
        markers: 0,
        senders,
    };
    conn.run(ws).await;
}

pub fn fail(ctx: &Ctx, why: String) {
    let mut s = ctx.stats.borrow_mut();
    s.connect_failed += 1;
    *s.connect_errors.entry(why).or_default() += 1;
}

/// The first line of an error, short enough to be a map key.
pub fn short(e: &str) -> String {
    e.lines().next().unwrap_or("").chars().take(80).collect()
}

async fn setup(ctx: &Ctx, c: &ClientSpec) -> anyhow::Result<Ws> {
    let mut ws = connect(ctx, c.gateway, source_ip(c.idx), &c.user).await?;
    if let Some(room) = &c.join {
        let kind = if c.group { "group" } else { "room" };
        let frame = format!(r#"{{"type":"join","id":"j","{kind}":"{room}"}}"#);
        ws.send(Message::text(frame)).await?;
        loop {
            let t = next_text(&mut ws).await?;
            if t.starts_with(r#"{"type":"joined""#) {
                break;
            }
            if t.starts_with(r#"{"type":"error""#) {
                bail!("join refused: {t}");
            }
        }
    }
    Ok(ws)
}

/// Opens a WebSocket as `user` to gateway `gateway`, from `source` when the spec says so, and reads
/// the `welcome`.
pub async fn connect(
    ctx: &Ctx,
    gateway: usize,
    source: std::net::Ipv4Addr,
    user: &str,
) -> anyhow::Result<Ws> {
    let addr = ctx.spec.gateways[gateway];
    let sock = TcpSocket::new_v4()?;
    if ctx.spec.source_ips {
        sock.bind((source, 0).into()).context("bind source")?;
    }
    let tcp = sock.connect(addr).await.context("tcp connect")?;
    tcp.set_nodelay(true)?;
    let token = ctx
        .signer
        .issue(&UserId::parse(user)?, ctx.token_iat, TOKEN_TTL_SECS);
    let mut req = format!("ws://{addr}/ws").into_client_request()?;
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    req.headers_mut()
        .insert("sec-websocket-protocol", "chat.v1".parse()?);
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(req, tcp, Some(config))
        .await
        .context("ws handshake")?;
    let welcome = next_text(&mut ws).await?;
    if !welcome.starts_with(r#"{"type":"welcome""#) {
        bail!("expected welcome, got {welcome}");
    }
    Ok(ws)
}

pub async fn next_text(ws: &mut Ws) -> anyhow::Result<String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(t.to_string()),
            Some(Ok(Message::Close(f))) => bail!("closed: {f:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => bail!("ws error: {e}"),
            None => bail!("stream ended"),
        }
    }
}

struct SenderState {
    user: String,
    got: u64,
    /// The highest message number seen from this sender.
    max_n: Option<u64>,
    /// Bit `n` is set once message `n` arrived: numbers are dense from 0, so this stays small.
    seen: Vec<u64>,
}

impl SenderState {
    /// Marks `n` as seen; `false` if it already was.
    fn first_time(&mut self, n: u64) -> bool {
        let (word, bit) = ((n / 64) as usize, 1u64 << (n % 64));
        if self.seen.len() <= word {
            self.seen.resize(word + 1, 0);
        }
        let fresh = self.seen[word] & bit == 0;
        self.seen[word] |= bit;
        fresh
    }
}

struct Conn {
    ctx: Rc<Ctx>,
    c: ClientSpec,
    /// Sends waiting for their ack: number → send time (Unix ns).
    inflight: HashMap<u64, u64>,
    next_n: u64,
    acked: u64,
    marker_sent: bool,
    marker_acked: bool,
    last_seq: u64,
    markers: usize,
    senders: Vec<SenderState>,
}

#[derive(Deserialize)]
struct Reply {
    #[serde(rename = "type")]
    ty: String,
    id: Option<String>,
    code: Option<String>,
}

/// Why the loop ended.
enum End {
    Done,
    Closed(String),
    TimedOut,
}

impl Conn {
    async fn run(mut self, mut ws: Ws) {
        let mut go = self.ctx.go.clone();
        // Keep reading while waiting, so WebSocket pings are answered during a long ramp.
        let phase = loop {
            tokio::select! {
                r = go.wait_for(|p| p.is_some()) => match r.ok().and_then(|p| *p) {
                    Some(p) => break p,
                    None => return,
                },
                m = ws.next() => match m {
                    Some(Ok(Message::Text(t))) => self.on_text(&t),
                    Some(Ok(Message::Close(f))) => {
                        self.record(End::Closed(close_label(f.as_ref().map(|f| u16::from(f.code)))));
                        return;
                    }
                    Some(Ok(_)) => {}
                    _ => {
                        self.record(End::Closed("reset".into()));
                        return;
                    }
                },
            }
        };
        let spec = &self.ctx.spec;
        let send_end = phase.go + Duration::from_millis(spec.send_ms);
        let hard_end = send_end + Duration::from_millis(spec.drain_ms);
        let hold_end = phase.go + Duration::from_millis(spec.hold_ms);
        let rate = spec.shape.rate_per_sender;
        let mut sending = self.c.send.is_some() && rate > 0.0;
        let period = Duration::from_secs_f64(1.0 / rate.max(1e-3));
        // Spread the senders' first ticks over one period, as independent clients would be.
        let offset = period.mul_f64(((self.c.idx * 7919) % 1000) as f64 / 1000.0);
        let mut tick = tokio::time::interval_at(phase.go + offset, period);
        tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let mut held = spec.hold_ms == 0;
        let end = loop {
            if self.c.send.is_some() && !sending && !self.marker_sent && self.inflight.is_empty() {
                let frame = self.marker_frame();
                if ws.send(Message::text(frame)).await.is_err() {
                    break End::Closed("reset".into());
                }
                self.marker_sent = true;
            }
            if held
                && self.markers >= self.c.expect_from.len()
                && (self.c.send.is_none() || self.marker_acked)
            {
                break End::Done;
            }
            tokio::select! {
                biased;
                m = ws.next() => match m {
                    Some(Ok(Message::Text(t))) => self.on_text(&t),
                    Some(Ok(Message::Close(f))) => {
                        break End::Closed(close_label(f.as_ref().map(|f| u16::from(f.code))));
                    }
                    Some(Ok(_)) => {}
                    _ => break End::Closed("reset".into()),
                },
                _ = tick.tick(), if sending => {
                    if Instant::now() >= send_end {
                        sending = false;
                    } else if self.inflight.len() < SEND_WINDOW {
                        let frame = self.data_frame();
                        if ws.send(Message::text(frame)).await.is_err() {
                            break End::Closed("reset".into());
                        }
                    } else {
                        self.ctx.stats.borrow_mut().skipped += 1;
                    }
                }
                () = tokio::time::sleep_until(send_end), if sending => sending = false,
                () = tokio::time::sleep_until(hold_end), if !held => held = true,
                () = tokio::time::sleep_until(hard_end) => break End::TimedOut,
            }
        };
        let closing = matches!(end, End::Done | End::TimedOut);
        self.record(end);
        if closing {
            let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
        }
    }

    fn data_frame(&mut self) -> String {
        let n = self.next_n;
        self.next_n += 1;
        let now = unix_ns();
        self.inflight.insert(n, now);
        {
            let mut s = self.ctx.stats.borrow_mut();
            s.sent += 1;
            if s.first_send_unix_ns == 0 {
                s.first_send_unix_ns = now;
            }
            s.last_send_unix_ns = s.last_send_unix_ns.max(now);
        }
        let mut text = format!("d|{now}|");
        while text.len() < self.ctx.spec.text_bytes {
            text.push('x');
        }
        let run = &self.ctx.spec.run;
        match self.c.send.as_ref() {
            Some(Target::Room(r)) => format!(
                r#"{{"type":"send","id":"{n}","room":"{r}","text":"{text}","client_msg_id":"{run}-{n}"}}"#
            ),
            Some(Target::Group(g)) => format!(
                r#"{{"type":"send","id":"{n}","group":"{g}","text":"{text}","client_msg_id":"{run}-{n}"}}"#
            ),
            Some(Target::User(u)) => format!(
                r#"{{"type":"send","id":"{n}","to":"{u}","text":"{text}","client_msg_id":"{run}-{n}"}}"#
            ),
            None => String::new(),
        }
    }

    fn marker_frame(&self) -> String {
        let run = &self.ctx.spec.run;
        let acked = self.acked;
        match self.c.send.as_ref() {
            Some(Target::Room(r)) => format!(
                r#"{{"type":"send","id":"end","room":"{r}","text":"e|{acked}","client_msg_id":"{run}-end"}}"#
            ),
            Some(Target::Group(g)) => format!(
                r#"{{"type":"send","id":"end","group":"{g}","text":"e|{acked}","client_msg_id":"{run}-end"}}"#
            ),
            Some(Target::User(u)) => format!(
                r#"{{"type":"send","id":"end","to":"{u}","text":"e|{acked}","client_msg_id":"{run}-end"}}"#
            ),
            None => String::new(),
        }
    }

    fn on_text(&mut self, t: &str) {
        if t.starts_with(r#"{"type":"message""#) {
            self.on_message(t);
            return;
        }
        let Ok(r) = serde_json::from_str::<Reply>(t) else {
            self.ctx.stats.borrow_mut().unexpected += 1;
            return;
        };
        match r.ty.as_str() {
            "ack" if r.id.as_deref() == Some("end") => self.marker_acked = true,
            "ack" => {
                let sent =
                    r.id.and_then(|id| id.parse().ok())
                        .and_then(|n| self.inflight.remove(&n));
                if let Some(sent) = sent {
                    self.acked += 1;
                    let mut s = self.ctx.stats.borrow_mut();
                    s.acked += 1;
                    s.ack_latency.record(unix_ns().saturating_sub(sent) / 1000);
                }
            }
            "error" => {
                let code = r.code.unwrap_or_default();
                if r.id.as_deref() == Some("end") {
                    // The receivers will time out waiting for this marker; say why.
                    self.marker_acked = true;
                    *self
                        .ctx
                        .stats
                        .borrow_mut()
                        .send_errors
                        .entry(format!("end:{code}"))
                        .or_default() += 1;
                } else if let Some(n) = r.id.and_then(|id| id.parse::<u64>().ok()) {
                    self.inflight.remove(&n);
                    *self
                        .ctx
                        .stats
                        .borrow_mut()
                        .send_errors
                        .entry(code)
                        .or_default() += 1;
                } else {
                    *self
                        .ctx
                        .stats
                        .borrow_mut()
                        .send_errors
                        .entry(code)
                        .or_default() += 1;
                }
            }
            "joined" | "welcome" | "pong" => {}
            other => {
                *self
                    .ctx
                    .stats
                    .borrow_mut()
                    .other_frames
                    .entry(other.to_owned())
                    .or_default() += 1
            }
        }
    }

    /// The hot path: called for every delivery, so it slices the JSON instead of parsing it.
    fn on_message(&mut self, t: &str) {
        let now = unix_ns();
        let Some(m) = MessageView::slice(t) else {
            self.ctx.stats.borrow_mut().unexpected += 1;
            return;
        };
        let (from, text, seq, cmid) = (m.from, m.text, m.seq, m.cmid);
        let conv_ok = match (m.room, m.to, self.c.conv.as_deref()) {
            (Some(room), _, Some(conv)) => room == conv,
            (None, Some(to), Some(conv)) => dm_key(from, to) == conv,
            _ => false,
        };
        let mut s = self.ctx.stats.borrow_mut();
        if !conv_ok {
            s.unexpected += 1;
            return;
        }
        if seq <= self.last_seq {
            s.dup_seq += 1;
            return;
        }
        self.last_seq = seq;
        if text.starts_with("e|") {
            self.markers += 1;
            s.markers_got += 1;
            return;
        }
        let Some(sender) = self.senders.iter_mut().find(|x| x.user == from) else {
            s.unexpected += 1;
            return;
        };
        let n: u64 = cmid
            .rsplit('-')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        if !sender.first_time(n) {
            s.dup_cmid += 1;
            return;
        }
        if sender.max_n.is_some_and(|max| n < max) {
            // Stored in another order than sent: allowed by protocol v1 (a retried publish is
            // stored later), so counted but not treated as loss or duplication.
            s.reordered += 1;
        }
        sender.max_n = sender.max_n.max(Some(n));
        sender.got += 1;
        s.deliveries += 1;
        s.last_delivery_unix_ns = s.last_delivery_unix_ns.max(now);
        let sent = text.split('|').nth(1).and_then(|v| v.parse::<u64>().ok());
        if let Some(sent) = sent.filter(|_| from != self.c.user) {
            let micros = now.saturating_sub(sent) / 1000;
            s.latency.record(micros);
            if micros > crate::report::SLOW_US {
                let second = s.slow.entry(sent / 1_000_000_000).or_default();
                second.0 += 1;
                second.1 = second.1.max(micros);
            }
        }
    }

    fn record(&mut self, end: End) {
        let mut s = self.ctx.stats.borrow_mut();
        match end {
            End::Done => {}
            End::TimedOut => s.timed_out += 1,
            End::Closed(why) => *s.closed_early.entry(why).or_default() += 1,
        }
        s.unacked += self.inflight.len() as u64;
        s.markers_expected += self.c.expect_from.len() as u64;
        if let Some(conv) = &self.c.conv {
            *s.receivers.entry(conv.clone()).or_default() += 1;
            for x in &self.senders {
                *s.got.entry(format!("{conv}|{}", x.user)).or_default() += x.got;
            }
            if self.c.send.is_some() {
                *s.acked_by
                    .entry(format!("{conv}|{}", self.c.user))
                    .or_default() += self.acked;
            }
        }
    }
}

pub fn close_label(code: Option<u16>) -> String {
    code.map_or_else(|| "close".into(), |c| format!("close {c}"))
}

/// The fields of a `message` frame, sliced out of its JSON in one pass.
///
/// The gateway serializes the fields in a fixed order (`protocol::frame::MessageFrame`), and the
/// generator's own texts and ids hold no quotes or escapes, so slicing is exact for what it reads;
/// anything else is reported as unexpected.
#[derive(Debug, PartialEq)]
pub struct MessageView<'a> {
    pub room: Option<&'a str>,
    pub to: Option<&'a str>,
    pub from: &'a str,
    pub text: &'a str,
    pub seq: u64,
    pub cmid: &'a str,
}

impl<'a> MessageView<'a> {
    pub fn slice(t: &'a str) -> Option<Self> {
        let rest = t.strip_prefix(r#"{"type":"message""#)?;
        // A group's id stands where a room's would: the bench names both the same way.
        let (room, rest) = match rest
            .strip_prefix(r#","room":""#)
            .or_else(|| rest.strip_prefix(r#","group":""#))
        {
            Some(r) => until_quote(r).map(|(v, r)| (Some(v), r))?,
            None => (None, rest),
        };
        let (to, rest) = match rest.strip_prefix(r#","to":""#) {
            Some(r) => until_quote(r).map(|(v, r)| (Some(v), r))?,
            None => (None, rest),
        };
        let (from, rest) = until_quote(rest.strip_prefix(r#","from":""#)?)?;
        let (text, rest) = until_quote(rest.strip_prefix(r#","text":""#)?)?;
        let rest = rest.strip_prefix(r#","seq":"#)?;
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        let seq = rest[..digits].parse().ok()?;
        let key = r#""client_msg_id":""#;
        let at = rest.find(key)? + key.len();
        let (cmid, _) = until_quote(&rest[at..])?;
        Some(Self {
            room,
            to,
            from,
            text,
            seq,
            cmid,
        })
    }
}

/// The text up to the next quote, and what follows that quote.
fn until_quote(s: &str) -> Option<(&str, &str)> {
    let end = s.find('"')?;
    Some((&s[..end], &s[end + 1..]))
}

/// Nanoseconds since the Unix epoch; the clock every process on the machine shares.
pub fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_a_message_frame() {
        let t = r#"{"type":"message","room":"r0-x","from":"u1-x","text":"d|123|xx","seq":42,"prev_seq":40,"ts":1,"client_msg_id":"x-7"}"#;
        let m = MessageView::slice(t).unwrap();
        assert_eq!(
            m,
            MessageView {
                room: Some("r0-x"),
                to: None,
                from: "u1-x",
                text: "d|123|xx",
                seq: 42,
                cmid: "x-7"
            }
        );
        let dm = r#"{"type":"message","to":"b","from":"a","text":"e|3","seq":7,"prev_seq":0,"ts":1,"client_msg_id":"x-end"}"#;
        assert_eq!(MessageView::slice(dm).unwrap().to, Some("b"));
    }
}
