//! One run: spawn the worker processes, wait until every connection is up, start them together, and
//! turn their reports and the servers' `/proc` readings into a [`RunResult`].
//!
//! The parent and a worker talk in JSON lines: the parent writes the [`WorkerSpec`] and later `go` to
//! the worker's stdin; the worker writes [`WorkerLine::Ready`] and then [`WorkerLine::Report`] to its
//! stdout. Everything else a worker says goes to stderr.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::client::unix_ns;
use crate::plan::{Mode, Shape, WorkerSpec};
use crate::procstat;
use crate::report::{RunResult, ServerUsage, Totals, merge};
use crate::stack::Stack;
use crate::worker::{ReadyInfo, WorkerReport};

/// A line a worker writes to its stdout.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum WorkerLine {
    Ready(ReadyInfo),
    Report(Box<WorkerReport>),
}

/// Extra time the parent allows beyond a run's own bounds before it kills the workers.
const PARENT_SLACK: Duration = Duration::from_secs(60);

/// What to run against a stack.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub scenario: String,
    pub label: String,
    pub shape: Shape,
    pub procs: usize,
    /// CPU list for the workers' `taskset -c`, or `None`.
    pub gen_cpus: Option<String>,
    pub send_ms: u64,
    pub drain_ms: u64,
    pub hold_ms: u64,
    /// Pause between "all connected" and the memory reading (idle runs).
    pub settle_ms: u64,
    pub ramp_per_sec: u32,
    pub max_connecting: usize,
    pub text_bytes: usize,
    pub source_ips: bool,
    pub seed: [u8; 32],
    pub issuer: String,
    pub mode: Mode,
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

/// Runs once against `stack` with `o.procs` worker processes.
pub async fn run_once(stack: &Stack, o: &RunOptions) -> anyhow::Result<RunResult> {
    run_once_with(stack, o, |_| async { Ok(WorkerReport::default()) }).await
}

/// Runs once, calling `before_go` with the run id once every worker is ready and before `go`; the
/// report it returns is merged with the workers' (the resume storm publishes its burst there and
/// reports what JetStream acked). The servers' CPU is counted from after `before_go`.
pub async fn run_once_with<F, Fut>(
    stack: &Stack,
    o: &RunOptions,
    before_go: F,
) -> anyhow::Result<RunResult>
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = anyhow::Result<WorkerReport>>,
{
    let run = format!("{:x}", unix_ns() % (1 << 40));
    if o.shape.group {
        create_groups(stack, o, &run).await?;
    }
    let load_before = procstat::loadavg();
    let before: Vec<_> = stack
        .servers()
        .map(|s| procstat::sample(s.pid).unwrap_or_default())
        .collect();
    let exe = std::env::current_exe().context("locating the bench binary")?;
    let mut workers = Vec::new();
    for shard in 0..o.procs {
        let spec = WorkerSpec {
            shape: o.shape.clone(),
            shard,
            shards: o.procs,
            gateways: stack.gateway_addrs.clone(),
            seed: o.seed,
            issuer: o.issuer.clone(),
            run: run.clone(),
            source_ips: o.source_ips,
            ramp_per_sec: o.ramp_per_sec,
            max_connecting: o.max_connecting,
            send_ms: o.send_ms,
            drain_ms: o.drain_ms,
            hold_ms: o.hold_ms,
            text_bytes: o.text_bytes,
            mode: o.mode.clone(),
        };
        let mut cmd = match &o.gen_cpus {
            Some(cpus) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(cpus).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        let mut child = cmd
            .arg("worker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("spawning a worker")?;
        let mut stdin = child.stdin.take().context("worker stdin")?;
        let stdout = child.stdout.take().context("worker stdout")?;
        stdin
            .write_all(format!("{}\n", serde_json::to_string(&spec)?).as_bytes())
            .await?;
        workers.push(Worker {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
        });
    }

    let clients = o.shape.clients() as u64;
    let ramp_bound = Duration::from_secs_f64(clients as f64 / f64::from(o.ramp_per_sec.max(1)));
    let ready_bound = ramp_bound + crate::client::CONNECT_TIMEOUT + PARENT_SLACK;
    let mut ready = ReadyInfo::default();
    for w in &mut workers {
        match next_line(&mut w.lines, ready_bound).await? {
            WorkerLine::Ready(r) => {
                ready.clients += r.clients;
                ready.connected += r.connected;
                ready.failed += r.failed;
            }
            WorkerLine::Report(_) => bail!("worker reported before it was ready"),
        }
    }
    tracing::info!(?ready, "all workers connected");
    tokio::time::sleep(Duration::from_millis(o.settle_ms)).await;
    let parent_report = before_go(run.clone()).await?;
    let at_ready: Vec<_> = stack
        .servers()
        .map(|s| procstat::sample(s.pid).unwrap_or_default())
        .collect();
    for w in &mut workers {
        w.stdin.write_all(b"go\n").await?;
        w.stdin.flush().await?;
    }
    let run_bound = Duration::from_millis(o.send_ms + o.drain_ms.max(o.hold_ms)) + PARENT_SLACK;
    let mut reports = Vec::new();
    for w in &mut workers {
        match next_line(&mut w.lines, run_bound).await? {
            WorkerLine::Report(r) => reports.push(*r),
            WorkerLine::Ready(_) => bail!("worker said ready twice"),
        }
    }
    let end: Vec<_> = stack
        .servers()
        .map(|s| procstat::sample(s.pid).unwrap_or_default())
        .collect();
    for mut w in workers {
        let _ = tokio::time::timeout(Duration::from_secs(10), w.child.wait()).await;
    }

    reports.push(parent_report);
    let totals = merge(&reports);
    let servers: Vec<ServerUsage> = stack
        .servers()
        .zip(before.iter().zip(at_ready.iter().zip(end.iter())))
        .map(|(s, (b, (r, e)))| ServerUsage {
            name: s.name.clone(),
            pid: s.pid,
            cpu_s: e.cpu_s - r.cpu_s,
            connect_cpu_s: r.cpu_s - b.cpu_s,
            rss_before_kib: b.rss_kib,
            rss_ready_kib: r.rss_kib,
            rss_end_kib: e.rss_kib,
            hwm_kib: e.hwm_kib,
        })
        .collect();
    let server_cpu: f64 = servers.iter().map(|s| s.cpu_s).sum();
    let cpu_per_delivery_us =
        (totals.deliveries > 0).then(|| server_cpu * 1e6 / totals.deliveries as f64);
    let gw: Vec<&ServerUsage> = servers
        .iter()
        .filter(|s| s.name.starts_with("gateway"))
        .collect();
    let gw_delta_kib: i64 = gw
        .iter()
        .map(|s| s.rss_ready_kib as i64 - s.rss_before_kib as i64)
        .sum();
    let gateway_rss_per_conn_bytes = (o.shape.senders == 0 && totals.connected > 0)
        .then(|| gw_delta_kib as f64 * 1024.0 / totals.connected as f64);
    let offered_msgs_per_sec =
        (o.shape.rooms * o.shape.senders.min(o.shape.members)) as f64 * o.shape.rate_per_sender;
    let offered_deliveries_per_sec = offered_msgs_per_sec * o.shape.members as f64;
    // Clients that never connected make any run's figures meaningless, idle runs included.
    let saturated = totals.connect_failed > 0
        || (o.shape.senders > 0
            && (totals.deliveries_per_sec < 0.9 * offered_deliveries_per_sec
                || totals.sends_per_sec < 0.9 * offered_msgs_per_sec
                || totals.lost > 0
                || !totals.closed_early.is_empty()));
    Ok(RunResult {
        scenario: o.scenario.clone(),
        label: o.label.clone(),
        run,
        unix_time: unix_ns() / 1_000_000_000,
        load_before,
        nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
        shape: o.shape.clone(),
        gateways: stack.gateway_addrs.len(),
        procs: o.procs,
        pinned: o.gen_cpus.is_some(),
        send_s: o.send_ms as f64 / 1000.0,
        offered_msgs_per_sec,
        offered_deliveries_per_sec,
        totals,
        servers,
        cpu_per_delivery_us,
        gateway_rss_per_conn_bytes,
        saturated,
        figures: Default::default(),
    })
}

async fn next_line(
    lines: &mut Lines<BufReader<ChildStdout>>,
    bound: Duration,
) -> anyhow::Result<WorkerLine> {
    let line = tokio::time::timeout(bound, lines.next_line())
        .await
        .context("worker did not answer in time")??
        .context("worker exited early")?;
    serde_json::from_str(&line).with_context(|| format!("worker said {line:?}"))
}

/// A persister catch-up run (see [`crate::catchup`]).
#[derive(Debug, Clone)]
pub struct CatchupOptions {
    pub scenario: String,
    pub label: String,
    /// Backlog size, spread evenly over `rooms` (rounded down to a multiple of `rooms`).
    pub messages: u64,
    pub rooms: usize,
    pub text_bytes: usize,
    pub persister_bin: std::path::PathBuf,
    /// Longest wait for the catch-up.
    pub bound: Duration,
}

/// Publishes the backlog with no persister running, starts the persister, and measures its catch-up.
pub async fn run_catchup(stack: &mut Stack, o: &CatchupOptions) -> anyhow::Result<RunResult> {
    anyhow::ensure!(
        stack.persister_http.is_none(),
        "the persister must not run before the backlog is published"
    );
    let run = format!("{:x}", unix_ns() % (1 << 40));
    let load_before = procstat::loadavg();
    let nats = async_nats::connect(&stack.nats_url)
        .await
        .context("connecting to nats-server")?;
    let js = async_nats::jetstream::new(nats.clone());
    let rooms: Vec<String> = (0..o.rooms.max(1))
        .map(|r| crate::plan::room_name(r, &run))
        .collect();
    let batch = crate::inject::Batch {
        per_room: o.messages / rooms.len() as u64,
        rooms: rooms.clone(),
        from: format!("backlog-{run}"),
        text_bytes: o.text_bytes,
        marker: false,
    };
    let before: Vec<_> = stack
        .servers()
        .map(|s| procstat::sample(s.pid).unwrap_or_default())
        .collect();
    let published = crate::inject::publish(&js, &batch).await?;
    let n = published.total();
    tracing::info!(
        messages = n,
        secs = published.took.as_secs_f64(),
        "backlog published"
    );
    let at_start: Vec<_> = stack
        .servers()
        .map(|s| procstat::sample(s.pid).unwrap_or_default())
        .collect();

    let started = tokio::time::Instant::now();
    stack.start_persister(&o.persister_bin)?;
    let http = stack.persister_http.context("persister address")?;
    let progress = crate::catchup::wait_caught_up(
        &js,
        http,
        persister::config::DEFAULT_CONSUMER,
        n,
        started,
        o.bound,
    )
    .await?;
    let end: Vec<_> = stack
        .servers()
        .map(|s| procstat::sample(s.pid).unwrap_or_default())
        .collect();
    tracing::info!(
        secs = progress.took.as_secs_f64(),
        "caught up; checking the store"
    );
    let verify_started = tokio::time::Instant::now();
    let verified = crate::catchup::verify(&nats, &rooms, &published).await?;
    let check = verified.check;
    let verify_s = verify_started.elapsed().as_secs_f64();

    let servers: Vec<ServerUsage> = stack
        .servers()
        .enumerate()
        .map(|(i, s)| {
            let zero = procstat::Sample::default();
            // The persister started after the first two readings: its whole life is the catch-up.
            let b = before.get(i).unwrap_or(&zero);
            let a = at_start.get(i).unwrap_or(&zero);
            let e = end.get(i).copied().unwrap_or_default();
            ServerUsage {
                name: s.name.clone(),
                pid: s.pid,
                cpu_s: e.cpu_s - a.cpu_s,
                rss_before_kib: b.rss_kib,
                rss_ready_kib: a.rss_kib,
                rss_end_kib: e.rss_kib,
                hwm_kib: e.hwm_kib,
                connect_cpu_s: 0.0,
            }
        })
        .collect();
    let took = progress.took.as_secs_f64();
    let mut totals = Totals {
        deliveries: check.found,
        expected: check.expected,
        lost: check.lost,
        dup_cmid: check.dup,
        unexpected: check.unexpected,
        latency_us: progress.stored.summary(),
        deliveries_per_sec: n as f64 / took.max(1e-9),
        ..Totals::default()
    };
    totals
        .counters
        .insert("out_of_order".into(), check.out_of_order);
    let db_bytes = stack
        .persister_db
        .as_ref()
        .and_then(|p| std::fs::metadata(p).ok())
        .map_or(0, |m| m.len());
    let mut figures: std::collections::BTreeMap<String, f64> = [
        ("backlog", n as f64),
        ("rooms", rooms.len() as f64),
        ("publish_s", published.took.as_secs_f64()),
        ("catch_up_s", took),
        ("catch_up_msgs_per_sec", n as f64 / took.max(1e-9)),
        ("verify_s", verify_s),
        ("pages", verified.pages.count() as f64),
        ("page_p50_ms", verified.pages.quantile(0.5) as f64 / 1000.0),
        ("page_p99_ms", verified.pages.quantile(0.99) as f64 / 1000.0),
        ("sqlite_mib", db_bytes as f64 / 1048576.0),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    if let Some(up) = progress.http_up {
        figures.insert("persister_http_up_s".into(), up.as_secs_f64());
    }
    Ok(RunResult {
        scenario: o.scenario.clone(),
        label: o.label.clone(),
        run,
        unix_time: unix_ns() / 1_000_000_000,
        load_before,
        nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
        shape: Shape::default(),
        gateways: stack.gateway_addrs.len(),
        procs: 0,
        pinned: false,
        send_s: published.took.as_secs_f64(),
        offered_msgs_per_sec: 0.0,
        offered_deliveries_per_sec: 0.0,
        saturated: check.lost > 0 || check.dup > 0 || check.unexpected > 0,
        totals,
        servers,
        cpu_per_delivery_us: None,
        gateway_rss_per_conn_bytes: None,
        figures,
    })
}

/// Creates the run's rooms as private groups, each owned by its first member with every other
/// member in it, before any client joins. Through the first gateway, as an app would.
async fn create_groups(stack: &Stack, o: &RunOptions, run: &str) -> anyhow::Result<()> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};
    let signer = token::Signer::from_seed(&o.seed, o.issuer.clone());
    let addr = *stack.gateway_addrs.first().context("no gateway")?;
    let user = |idx: usize| format!("u{idx}-{run}");
    for room_no in 0..o.shape.rooms {
        let first = room_no * o.shape.members;
        let owner = protocol::UserId::parse(user(first))?;
        let token = signer.issue(&owner, crate::client::unix_ns() / 1_000_000_000, 3600);
        let mut req = format!("ws://{addr}/ws").into_client_request()?;
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
        req.headers_mut()
            .insert("sec-websocket-protocol", "chat.v1".parse()?);
        let (mut ws, _) = tokio_tungstenite::connect_async(req).await?;
        let members: Vec<String> = (first + 1..first + o.shape.members).map(user).collect();
        let frame = serde_json::json!({
            "type": "group_create",
            "id": "c",
            "group": crate::plan::room_name(room_no, run),
            "name": "bench",
            "members": members,
        });
        ws.send(Message::text(frame.to_string())).await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let msg = tokio::time::timeout_at(deadline, ws.next())
                .await
                .context("group_create not answered")?;
            let Some(Ok(Message::Text(t))) = msg else {
                anyhow::ensure!(msg.is_some(), "socket ended");
                continue;
            };
            let v: serde_json::Value = serde_json::from_str(&t)?;
            match v["type"].as_str() {
                Some("group") => break,
                Some("error") => anyhow::bail!("group_create refused: {t}"),
                _ => {}
            }
        }
        let _ = ws.close(None).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_report_survives_its_line() {
        // The line is an internally tagged enum, which cannot read back maps with integer keys.
        let mut report = WorkerReport {
            sent: 7,
            slow: vec![(1_795_750_772, 3, 12_000)],
            ..Default::default()
        };
        report.got.insert("r|u0".into(), 5);
        let line = serde_json::to_string(&WorkerLine::Report(Box::new(report))).unwrap();
        let WorkerLine::Report(back) = serde_json::from_str(&line).unwrap() else {
            panic!("not a report: {line}");
        };
        assert_eq!(back.sent, 7);
        assert_eq!(back.slow, vec![(1_795_750_772, 3, 12_000)]);
        assert_eq!(back.got.get("r|u0"), Some(&5));
    }
}
