//! A worker: the clients of one shard, in one process, on one thread.
//!
//! The worker ramps its connections at its share of the run's rate, reports `ready` once every client
//! has connected (or failed), waits for `go`, and returns a [`WorkerReport`] when every client is done
//! or past the run's time bound. The parent runs one worker per child process (`bench worker`), so a
//! run can hold more connections than one process has file descriptors; tests run one in-process.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, watch};
use tokio::task::LocalSet;
use tokio::time::Instant;

use crate::churn::{self, ChurnPlan};
use crate::client::{self, CONNECT_TIMEOUT, Ctx, Phase, Stats, unix_ns};
use crate::hist::Sparse;
use crate::plan::{ClientSpec, Mode, WorkerSpec};
use crate::storm;

/// Slack on top of a run's own bounds before a worker gives up on its clients.
const RUN_SLACK: Duration = Duration::from_secs(15);

/// A connection the worker ramps before `ready`.
enum Start {
    Client(ClientSpec),
    Storm(ClientSpec, u64),
    Watcher(ChurnPlan, usize),
}

/// What a worker tells the parent once its connections are up.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReadyInfo {
    pub clients: u64,
    pub connected: u64,
    pub failed: u64,
}

/// Everything one worker observed. Counters add up across workers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkerReport {
    pub clients: u64,
    pub connected: u64,
    pub connect_failed: u64,
    pub connect_errors: BTreeMap<String, u64>,
    /// Connections the server closed (or reset) before the client was done, by close code.
    pub closed_early: BTreeMap<String, u64>,
    /// Clients still waiting for deliveries or acks at the run's time bound.
    pub timed_out: u64,
    pub sent: u64,
    pub acked: u64,
    /// Sends without an ack or error when the client stopped.
    pub unacked: u64,
    /// Send ticks skipped because the client's window of unacked sends was full.
    pub skipped: u64,
    pub send_errors: BTreeMap<String, u64>,
    /// Server frames other than deliveries and replies, by type (for example presence events).
    pub other_frames: BTreeMap<String, u64>,
    /// Data messages received, each counted once.
    pub deliveries: u64,
    /// Deliveries whose `seq` did not increase on their connection.
    pub dup_seq: u64,
    /// Deliveries whose sender's message number (from `client_msg_id`) had already arrived.
    pub dup_cmid: u64,
    /// Deliveries that arrived after a later message of the same sender.
    pub reordered: u64,
    /// Frames that belong to no conversation of the client, or that could not be read.
    pub unexpected: u64,
    pub markers_expected: u64,
    pub markers_got: u64,
    /// Events seen more than once (presence-churn).
    #[serde(default)]
    pub dup_events: u64,
    /// Expected and lost items of a scenario that accounts its loss itself (presence-churn); added
    /// to the totals' `expected` and `lost`.
    #[serde(default)]
    pub expected: u64,
    #[serde(default)]
    pub lost: u64,
    /// Scenario counters, by name.
    #[serde(default)]
    pub counters: BTreeMap<String, u64>,
    /// Send → delivery to another user, in µs (resume-storm: `go` → caught up, per client;
    /// presence-churn: connect → online event at a watcher).
    pub latency: Sparse,
    /// Deliveries slower than [`crate::report::SLOW_US`]: (the unix second they were sent in,
    /// count, slowest µs), by second. A list, as JSON map keys are strings.
    #[serde(default)]
    pub slow: Vec<(u64, u64, u64)>,
    /// Send → ack, in µs.
    pub ack_latency: Sparse,
    /// Connect → handshake → welcome → joins, in µs.
    #[serde(default)]
    pub connect_latency: Sparse,
    /// presence-churn: close → offline event at a watcher, in µs, grace period included.
    #[serde(default)]
    pub offline_latency: Sparse,
    /// `conv|sender` → deliveries summed over the receivers of `conv`.
    pub got: BTreeMap<String, u64>,
    /// `conv` → connections that received it.
    pub receivers: BTreeMap<String, u64>,
    /// `conv|sender` → messages the sender had acked.
    pub acked_by: BTreeMap<String, u64>,
    pub go_unix_ns: u64,
    pub first_send_unix_ns: u64,
    pub last_send_unix_ns: u64,
    pub last_delivery_unix_ns: u64,
}

/// Runs the worker's clients. `ready` is called once they are connected; the run starts when `go`
/// resolves.
pub async fn run(
    spec: WorkerSpec,
    ready: impl FnOnce(ReadyInfo),
    go: impl Future<Output = ()>,
) -> anyhow::Result<WorkerReport> {
    LocalSet::new().run_until(run_local(spec, ready, go)).await
}

async fn run_local(
    spec: WorkerSpec,
    ready: impl FnOnce(ReadyInfo),
    go: impl Future<Output = ()>,
) -> anyhow::Result<WorkerReport> {
    // The connections ramped before `ready`: clients, or the watchers of a presence-churn run.
    let starts: Vec<Start> = match &spec.mode {
        Mode::Traffic => spec.my_clients().into_iter().map(Start::Client).collect(),
        Mode::ResumeStorm { missed } => spec
            .my_clients()
            .into_iter()
            .map(|c| Start::Storm(c, *missed))
            .collect(),
        Mode::PresenceChurn(plan) => plan
            .my_watchers(&spec)
            .into_iter()
            .map(|w| Start::Watcher(plan.clone(), w))
            .collect(),
    };
    let total = starts.len();
    let (go_tx, go_rx) = watch::channel(None);
    let signer = token::Signer::from_seed(&spec.seed, spec.issuer.clone());
    let ctx = Rc::new(Ctx {
        signer,
        token_iat: token::now_secs(),
        stats: RefCell::new(Stats::default()),
        go: go_rx,
        connecting: Semaphore::new(spec.max_connecting.max(1)),
        late: std::cell::Cell::new(false),
        churn: RefCell::default(),
        spec,
    });

    // Ramp: start clients at this worker's share of the rate, checking every millisecond.
    let rate = (f64::from(ctx.spec.ramp_per_sec.max(1)) / ctx.spec.shards.max(1) as f64).max(1.0);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(total);
    let mut starts = starts.into_iter();
    while tasks.len() < total {
        let due = ((started.elapsed().as_secs_f64() * rate) as usize + 1).min(total);
        while tasks.len() < due {
            let Some(start) = starts.next() else { break };
            let ctx = ctx.clone();
            tasks.push(match start {
                Start::Client(c) => tokio::task::spawn_local(client::run(ctx, c)),
                Start::Storm(c, missed) => tokio::task::spawn_local(storm::run(ctx, c, missed)),
                Start::Watcher(plan, w) => tokio::task::spawn_local(churn::watcher(ctx, plan, w)),
            });
        }
        if tasks.len() < total {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let settle_deadline = Instant::now() + CONNECT_TIMEOUT + Duration::from_secs(5);
    loop {
        let settled = {
            let s = ctx.stats.borrow();
            (s.connected + s.connect_failed) as usize >= total
        };
        if settled || Instant::now() >= settle_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ctx.late.set(true);
    {
        let s = ctx.stats.borrow();
        ready(ReadyInfo {
            clients: total as u64,
            connected: s.connected,
            failed: total as u64 - s.connected,
        });
    }
    go.await;
    let phase = Phase {
        go: Instant::now(),
        go_unix_ns: unix_ns(),
    };
    let _ = go_tx.send(Some(phase));
    if let Mode::PresenceChurn(plan) = &ctx.spec.mode {
        tasks.extend(churn::start(&ctx, plan, phase));
    }
    let bound = Duration::from_millis(ctx.spec.send_ms + ctx.spec.drain_ms.max(ctx.spec.hold_ms))
        + RUN_SLACK;
    let all = futures_util::future::join_all(tasks);
    if tokio::time::timeout(bound, all).await.is_err() {
        tracing::warn!("clients still running past the run's bound; reporting what they saw");
    }
    if let Mode::PresenceChurn(plan) = &ctx.spec.mode {
        churn::account(&ctx, plan);
    }
    let s = ctx.stats.take();
    Ok(WorkerReport {
        clients: total as u64,
        connected: s.connected,
        connect_failed: s.connect_failed,
        connect_errors: s.connect_errors,
        closed_early: s.closed_early,
        timed_out: s.timed_out,
        sent: s.sent,
        acked: s.acked,
        unacked: s.unacked,
        skipped: s.skipped,
        send_errors: s.send_errors,
        other_frames: s.other_frames,
        deliveries: s.deliveries,
        dup_seq: s.dup_seq,
        dup_cmid: s.dup_cmid,
        reordered: s.reordered,
        unexpected: s.unexpected,
        markers_expected: s.markers_expected,
        markers_got: s.markers_got,
        dup_events: s.dup_events,
        expected: s.expected,
        lost: s.lost,
        counters: s.counters,
        latency: s.latency.to_sparse(),
        slow: s
            .slow
            .into_iter()
            .map(|(t, (n, max))| (t, n, max))
            .collect(),
        ack_latency: s.ack_latency.to_sparse(),
        connect_latency: s.connect_latency.to_sparse(),
        offline_latency: s.offline_latency.to_sparse(),
        got: s.got,
        receivers: s.receivers,
        acked_by: s.acked_by,
        go_unix_ns: phase.go_unix_ns,
        first_send_unix_ns: s.first_send_unix_ns,
        last_send_unix_ns: s.last_send_unix_ns,
        last_delivery_unix_ns: s.last_delivery_unix_ns,
    })
}
