//! Presence churn: users open and close connections at a set rate while watchers count the presence
//! events they cause.
//!
//! Churning user `u` of `users` opens connection `n = u + k·users` (its cycle `k`) at `go + n / rate`,
//! holds it open for `up_ms`, closes it cleanly, and is down until its next cycle. `users` is chosen
//! so that a user stays down longer than the grace period plus a margin: every cycle then causes
//! exactly one `online: true` and, a grace period after the close, one `online: false` at every
//! watcher of the user. Users are split into groups of at most 200 (the protocol's watch limit);
//! watcher `w` watches group `w % groups`, and a group's users and watchers live in the same worker
//! process (`group % shards`), so events are matched to cycles in that worker without a shared clock
//! beyond the machine's.
//!
//! Matching, per watcher and user: cycle `k` owns the events received from its open until the next
//! cycle's open (the end of the run for the last). Its first `online: true` gives the online latency
//! (connect start → event); its first `online: false` received after the close gives the offline
//! latency (close → event, which includes the grace period by design). A missing one is lost, a second
//! one of the same kind is a duplicate, an offline event before the close is unexpected. Watchers keep
//! listening `drain_ms` after the last close is due (the parent makes that the grace period plus a
//! margin), so a transition still missing then was lost.

use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, CONNECT_TIMEOUT, Ctx, Phase, Ws, close_label, fail, short, unix_ns};
use crate::plan::{WorkerSpec, source_ip};

/// Users one connection may watch (protocol v1).
pub const WATCH_MAX: usize = 200;
/// A watcher sends an app `ping` this often, well inside the gateway's idle timeout.
const WATCHER_PING: Duration = Duration::from_secs(20);

/// The churn of a run; every worker derives its own users and watchers from it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChurnPlan {
    /// Opens per second, over all workers.
    pub rate: f64,
    /// Churning users; each cycles through open → `up_ms` → close → down.
    pub users: usize,
    /// Watcher connections; at least one per group of [`WATCH_MAX`] users.
    pub watchers: usize,
    /// How long each connection stays open.
    pub up_ms: u64,
    /// The gateways' presence grace period, for the record.
    pub grace_ms: u64,
    /// Send an app `ping` right after `welcome`. Off by default: a gateway refreshes a connection's
    /// presence key on its first client frame, in the background, so when that frame is the Close the
    /// refresh can land after the close's delete and keep the user online for the presence TTL.
    /// A ping at open moves that first refresh away from the close.
    #[serde(default)]
    pub ping_on_open: bool,
}

impl ChurnPlan {
    pub fn groups(&self) -> usize {
        self.users.div_ceil(WATCH_MAX).max(1)
    }

    /// The watchers a worker plays.
    pub fn my_watchers(&self, spec: &WorkerSpec) -> Vec<usize> {
        (0..self.watchers)
            .filter(|w| (w % self.groups()) % spec.shards.max(1) == spec.shard)
            .collect()
    }

    /// The churning users a worker plays.
    pub fn my_users(&self, spec: &WorkerSpec) -> Vec<usize> {
        (0..self.users)
            .filter(|u| (u / WATCH_MAX) % spec.shards.max(1) == spec.shard)
            .collect()
    }

    fn group_users(&self, group: usize) -> std::ops::Range<usize> {
        group * WATCH_MAX..((group + 1) * WATCH_MAX).min(self.users)
    }
}

pub fn user(u: usize, run: &str) -> String {
    format!("c{u}-{run}")
}

fn user_no(name: &str) -> Option<usize> {
    name.strip_prefix('c')?.split('-').next()?.parse().ok()
}

/// What the churners and watchers of one worker recorded.
#[derive(Debug, Default)]
pub struct Record {
    /// Per user: the cycles whose connection opened, in order.
    cycles: HashMap<usize, Vec<Cycle>>,
    /// Per watcher: `(user, online, received at)`, in arrival order.
    events: HashMap<usize, Vec<(usize, bool, u64)>>,
    /// Watchers whose `watch` was answered before `go`.
    watching: Vec<usize>,
}

#[derive(Debug, Clone, Copy)]
struct Cycle {
    /// Unix ns just before the connect.
    open_ns: u64,
    /// Unix ns just before the Close was sent (or when the server closed it).
    close_ns: u64,
}

#[derive(Deserialize)]
struct Frame {
    #[serde(rename = "type")]
    ty: String,
    user: Option<String>,
    online: Option<bool>,
    room: Option<String>,
}

/// One watcher, from connect to the end of the run.
pub async fn watcher(ctx: Rc<Ctx>, plan: ChurnPlan, w: usize) {
    let group = w % plan.groups();
    let users: Vec<String> = plan
        .group_users(group)
        .map(|u| user(u, &ctx.spec.run))
        .collect();
    let mut ws = {
        let _permit = ctx.connecting.acquire().await;
        let setup = async {
            let name = format!("w{w}-{}", ctx.spec.run);
            let gw = w % ctx.spec.gateways.len().max(1);
            let mut ws = client::connect(&ctx, gw, source_ip(w), &name).await?;
            let frame = serde_json::json!({"type": "watch", "id": "w", "users": users});
            ws.send(Message::text(frame.to_string())).await?;
            loop {
                let t = client::next_text(&mut ws).await?;
                if t.starts_with(r#"{"type":"watched""#) {
                    return Ok::<Ws, anyhow::Error>(ws);
                }
                if t.starts_with(r#"{"type":"error""#) {
                    anyhow::bail!("watch refused: {t}");
                }
            }
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, setup).await {
            Ok(Ok(ws)) => ws,
            Ok(Err(e)) => return fail(&ctx, short(&format!("{e:#}"))),
            Err(_) => return fail(&ctx, "timeout".into()),
        }
    };
    if ctx.late.get() {
        return fail(&ctx, "connected after the ready deadline".into());
    }
    ctx.stats.borrow_mut().connected += 1;
    ctx.churn.borrow_mut().watching.push(w);

    let mut go = ctx.go.clone();
    let mut end: Option<Instant> = None;
    let mut ping = tokio::time::interval(WATCHER_PING);
    let why = loop {
        tokio::select! {
            r = go.wait_for(|p| p.is_some()), if end.is_none() => match r.ok().and_then(|p| *p) {
                Some(p) => {
                    end = Some(p.go + Duration::from_millis(ctx.spec.send_ms + ctx.spec.drain_ms));
                }
                None => return,
            },
            m = ws.next() => match m {
                Some(Ok(Message::Text(t))) => on_text(&ctx, w, &t),
                Some(Ok(Message::Close(f))) => {
                    break Some(close_label(f.as_ref().map(|f| u16::from(f.code))));
                }
                Some(Ok(_)) => {}
                _ => break Some("reset".into()),
            },
            _ = ping.tick() => {
                if ws.send(Message::text(r#"{"type":"ping"}"#)).await.is_err() {
                    break Some("reset".into());
                }
            }
            () = sleep_until_opt(end) => break None,
        }
    };
    match why {
        Some(why) => *ctx.stats.borrow_mut().closed_early.entry(why).or_default() += 1,
        None => {
            let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn on_text(ctx: &Ctx, w: usize, t: &str) {
    let now = unix_ns();
    let Ok(f) = serde_json::from_str::<Frame>(t) else {
        ctx.stats.borrow_mut().unexpected += 1;
        return;
    };
    match (f.ty.as_str(), f.user.as_deref().and_then(user_no), f.online) {
        ("presence", Some(u), Some(online)) if f.room.is_none() => {
            let mut rec = ctx.churn.borrow_mut();
            rec.events.entry(w).or_default().push((u, online, now));
        }
        ("pong", _, _) => {}
        (other, _, _) => {
            *ctx.stats
                .borrow_mut()
                .other_frames
                .entry(other.to_owned())
                .or_default() += 1;
        }
    }
}

/// Starts this worker's churning users at `go`.
pub fn start(ctx: &Rc<Ctx>, plan: &ChurnPlan, phase: Phase) -> Vec<JoinHandle<()>> {
    plan.my_users(&ctx.spec)
        .into_iter()
        .map(|u| tokio::task::spawn_local(churner(ctx.clone(), plan.clone(), u, phase)))
        .collect()
}

/// One churning user: open, hold, close, until the schedule passes `send_ms`.
async fn churner(ctx: Rc<Ctx>, plan: ChurnPlan, u: usize, phase: Phase) {
    let stop = phase.go + Duration::from_millis(ctx.spec.send_ms);
    let name = user(u, &ctx.spec.run);
    for k in 0.. {
        let n = u + k * plan.users;
        let due = phase.go + Duration::from_secs_f64(n as f64 / plan.rate.max(1e-3));
        if due >= stop {
            break;
        }
        tokio::time::sleep_until(due).await;
        let open_ns = unix_ns();
        let gw = (u + k) % ctx.spec.gateways.len().max(1);
        // Spread over 250 source addresses: closed sockets wait in TIME_WAIT on the client side.
        let src = std::net::Ipv4Addr::new(127, 0, 0, 2 + (n % 250) as u8);
        let opened = {
            let _permit = ctx.connecting.acquire().await;
            tokio::time::timeout(CONNECT_TIMEOUT, client::connect(&ctx, gw, src, &name)).await
        };
        let mut ws = match opened {
            Ok(Ok(ws)) => ws,
            Ok(Err(e)) => {
                let mut s = ctx.stats.borrow_mut();
                s.count("open_failed", 1);
                *s.connect_errors
                    .entry(short(&format!("{e:#}")))
                    .or_default() += 1;
                continue;
            }
            Err(_) => {
                let mut s = ctx.stats.borrow_mut();
                s.count("open_failed", 1);
                *s.connect_errors.entry("timeout".into()).or_default() += 1;
                continue;
            }
        };
        ctx.stats.borrow_mut().count("opens", 1);
        if plan.ping_on_open && ws.send(Message::text(r#"{"type":"ping"}"#)).await.is_err() {
            *ctx.stats
                .borrow_mut()
                .closed_early
                .entry("reset".into())
                .or_default() += 1;
            continue;
        }
        let hold = tokio::time::sleep(Duration::from_millis(plan.up_ms));
        tokio::pin!(hold);
        let early = loop {
            tokio::select! {
                () = &mut hold => break None,
                m = ws.next() => match m {
                    Some(Ok(Message::Close(f))) => break Some(close_label(f.as_ref().map(|f| u16::from(f.code)))),
                    Some(Ok(_)) => {}
                    _ => break Some("reset".into()),
                },
            }
        };
        let close_ns = unix_ns();
        match early {
            Some(why) => *ctx.stats.borrow_mut().closed_early.entry(why).or_default() += 1,
            None => {
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    let _ = ws.close(None).await;
                    while let Some(Ok(_)) = ws.next().await {}
                })
                .await;
            }
        }
        ctx.churn
            .borrow_mut()
            .cycles
            .entry(u)
            .or_default()
            .push(Cycle { open_ns, close_ns });
    }
}

/// Matches every watcher's events to the cycles of its users and writes the result into the stats.
pub fn account(ctx: &Ctx, plan: &ChurnPlan) {
    let rec = ctx.churn.borrow();
    let mut s = ctx.stats.borrow_mut();
    let no_events: Vec<(usize, bool, u64)> = Vec::new();
    let no_cycles: Vec<Cycle> = Vec::new();
    for &w in &rec.watching {
        let events = rec.events.get(&w).unwrap_or(&no_events);
        let mut by_user: HashMap<usize, Vec<(bool, u64)>> = HashMap::new();
        for &(u, online, at) in events {
            by_user.entry(u).or_default().push((online, at));
        }
        for u in plan.group_users(w % plan.groups()) {
            let cycles = rec.cycles.get(&u).unwrap_or(&no_cycles);
            let evs = by_user.remove(&u).unwrap_or_default();
            let first_open = cycles.first().map_or(u64::MAX, |c| c.open_ns);
            s.unexpected += evs.iter().filter(|(_, at)| *at < first_open).count() as u64;
            for (k, c) in cycles.iter().enumerate() {
                let until = cycles.get(k + 1).map_or(u64::MAX, |n| n.open_ns);
                let mine = evs.iter().filter(|(_, at)| *at >= c.open_ns && *at < until);
                let (mut on, mut off) = (None::<u64>, None::<u64>);
                let (mut on_n, mut off_n) = (0u64, 0u64);
                for &(online, at) in mine {
                    if online {
                        on_n += 1;
                        on.get_or_insert(at);
                    } else if at >= c.close_ns {
                        off_n += 1;
                        off.get_or_insert(at);
                    } else {
                        s.unexpected += 1;
                    }
                }
                s.expected += 2;
                s.dup_events += on_n.saturating_sub(1) + off_n.saturating_sub(1);
                s.count("online_events", on_n);
                s.count("offline_events", off_n);
                match on {
                    Some(at) => s.latency.record(at.saturating_sub(c.open_ns) / 1000),
                    None => {
                        s.lost += 1;
                        s.count("online_lost", 1);
                    }
                }
                match off {
                    Some(at) => s
                        .offline_latency
                        .record(at.saturating_sub(c.close_ns) / 1000),
                    None => {
                        s.lost += 1;
                        s.count("offline_lost", 1);
                    }
                }
            }
        }
        // Events about users of another group cannot happen; count them if they do.
        s.unexpected += by_user.values().map(|v| v.len() as u64).sum::<u64>();
    }
}
