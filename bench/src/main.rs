//! `bench` binary: parse the arguments, start the servers, run a scenario, append the results.
//!
//! ```text
//! bench run idle      --conns 19000 --procs 2 [--join | --room-size 10]
//! bench run fanout    --subscribers 1000 --publishers 10 --rates 100,200,400,600 [--group] [--persister]
//! bench run pairs     --clients 2000 --rate 5 [--dm]
//! bench run cross     --rooms 500 --rate 20
//! bench run broadcast --conns 100000 --gateways 6 --procs 6 --rate 1
//! bench run resume-storm      --clients 10000 --rooms 100 --missed 100 [--no-persister]
//! bench run presence-churn    --rate 200 --duration 20 [--watchers 10] [--up 1] [--grace-ms 10000] [--ping-on-open]
//! bench run persister-catchup --messages 200000 --rooms 100
//! bench run idle      --attach 127.0.0.1:8080 --pids gateway=1234   (servers started by hand)
//! (every run: --gw-env K=V,… for the gateways, --nats-env K=V,… for nats-server, e.g. GOGC=100,
//!  --nats-nodes 3 for a 3-node cluster at 3 replicas, --nats-sync always for JetStream's
//!  sync_interval, --store cql for the persister on a Cassandra node started for the run)
//! bench table bench/results/*.jsonl
//! bench worker        (internal: one worker process, driven by `run` over stdin/stdout)
//! ```

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};

use bench::plan::{Mode, Shape};
use bench::report::{FIGURES_HEADER, MARKDOWN_HEADER, RunResult};
use bench::run::{CatchupOptions, RunOptions, WorkerLine, run_catchup, run_once, run_once_with};
use bench::stack::{Stack, StackOptions};
use tokio::io::AsyncBufReadExt;

/// The seed of the bench's own token signer. It signs tokens for the bench's own servers only.
const BENCH_SEED: [u8; 32] = *b"liaotian-bench-seed-not-a-secret";
/// Connections per worker process by default, under the 20,000 file descriptor limit.
const CONNS_PER_PROC: usize = 15_000;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("worker") => worker(),
        Some("run") => {
            let scenario = args.next().context("bench run <scenario>")?;
            let flags = Flags::parse(args)?;
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()?
                .block_on(run(&scenario, &flags))
        }
        Some("table") => table(args),
        _ => bail!(
            "usage: bench run <idle|fanout|pairs|cross|broadcast|resume-storm|presence-churn|persister-catchup> [--flags] | bench table FILES"
        ),
    }
}

/// `--name value` pairs; a flag without a value is `true`.
struct Flags(HashMap<String, String>);

impl Flags {
    fn parse(args: impl Iterator<Item = String>) -> anyhow::Result<Self> {
        let mut map = HashMap::new();
        let mut args = args.peekable();
        while let Some(a) = args.next() {
            let name = a
                .strip_prefix("--")
                .with_context(|| format!("expected --flag, got {a:?}"))?;
            let value = match args.peek() {
                Some(v) if !v.starts_with("--") => args.next().unwrap_or_default(),
                _ => "true".into(),
            };
            map.insert(name.to_owned(), value);
        }
        Ok(Self(map))
    }

    fn get<T: std::str::FromStr>(&self, name: &str, default: T) -> anyhow::Result<T> {
        match self.0.get(name) {
            Some(v) => v
                .parse()
                .map_err(|_| anyhow::anyhow!("--{name}: cannot read {v:?}")),
            None => Ok(default),
        }
    }

    fn str(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    fn on(&self, name: &str) -> bool {
        self.0.get(name).is_some_and(|v| v == "true")
    }

    /// A CPU list, `none` for no pinning, or the default when the machine has two CPUs or more.
    fn cpus(&self, name: &str, default: &str) -> Option<String> {
        match self.str(name) {
            Some("none") => None,
            Some(v) => Some(v.to_owned()),
            None if std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2 => {
                Some(default.to_owned())
            }
            None => None,
        }
    }
}

/// Margin on top of the grace period that a churning user stays down, so that its offline event
/// has arrived before it opens again.
const CHURN_MARGIN_MS: u64 = 2000;
/// The gateways' default presence grace period (`GATEWAY_PRESENCE_GRACE_MS`).
const GATEWAY_GRACE_MS: u64 = 10_000;

/// A scenario's traffic, the gateway count it needs, its rates, and what its clients do.
fn scenario(name: &str, f: &Flags) -> anyhow::Result<(Shape, usize, Vec<f64>, Mode)> {
    let gateways = |d: usize| f.get("gateways", d);
    if let Some(mode) = special(name, f)? {
        let shape = match &mode {
            Mode::ResumeStorm { .. } => {
                let clients = f.get("clients", 10_000usize)?;
                let rooms = f.get("rooms", 100usize)?.clamp(1, clients.max(1));
                Shape {
                    rooms,
                    members: clients / rooms,
                    senders: 0,
                    rate_per_sender: 0.0,
                    dm: false,
                    join: true,
                    group: false,
                }
            }
            Mode::PresenceChurn(plan) => Shape {
                rooms: plan.watchers,
                members: 1,
                senders: 0,
                rate_per_sender: 0.0,
                dm: false,
                join: false,
                group: false,
            },
            Mode::Traffic => unreachable!("special scenarios have their own mode"),
        };
        return Ok((shape, gateways(1)?, vec![0.0], mode));
    }
    let (shape, gateways, rates) = traffic(name, f)?;
    Ok((shape, gateways, rates, Mode::Traffic))
}

/// The mode of a scenario with its own clients, or `None` for traffic.
fn special(name: &str, f: &Flags) -> anyhow::Result<Option<Mode>> {
    Ok(match name {
        "resume-storm" => Some(Mode::ResumeStorm {
            missed: f.get("missed", 100u64)?,
        }),
        "presence-churn" => {
            let rate = f.get("rate", 100.0f64)?;
            anyhow::ensure!(rate > 0.0, "--rate: opens per second, above 0");
            let up_ms = (f.get("up", 1.0f64)? * 1000.0) as u64;
            let grace_ms = f.get("grace-ms", GATEWAY_GRACE_MS)?;
            let down_ms = grace_ms + CHURN_MARGIN_MS;
            let min_users = (rate * (up_ms + down_ms) as f64 / 1000.0).ceil() as usize;
            let users = f.get("users", min_users)?;
            anyhow::ensure!(
                users >= min_users,
                "--users {users}: at --rate {rate} each user must stay down longer than the grace \
                 period plus {CHURN_MARGIN_MS} ms, which needs at least {min_users} users"
            );
            let mut plan = bench::churn::ChurnPlan {
                rate,
                users,
                watchers: 0,
                up_ms,
                grace_ms,
                ping_on_open: f.on("ping-on-open"),
            };
            plan.watchers = f.get("watchers", plan.groups())?;
            anyhow::ensure!(
                plan.watchers >= plan.groups(),
                "--watchers {}: {users} users need at least {} watchers (200 users each)",
                plan.watchers,
                plan.groups()
            );
            Some(Mode::PresenceChurn(plan))
        }
        _ => None,
    })
}

/// A traffic scenario's shape, the gateway count it needs, and its rates per sender.
fn traffic(name: &str, f: &Flags) -> anyhow::Result<(Shape, usize, Vec<f64>)> {
    let gateways = |d: usize| f.get("gateways", d);
    Ok(match name {
        "idle" => {
            let conns = f.get("conns", 1000usize)?;
            // `--room-size N` puts N connections in each room, and implies `--join`.
            let room_size = f.get("room-size", 1usize)?.max(1);
            let join = f.on("join") || room_size > 1;
            (
                Shape {
                    rooms: conns.div_ceil(room_size),
                    members: room_size,
                    senders: 0,
                    rate_per_sender: 0.0,
                    dm: false,
                    join,
                    group: false,
                },
                gateways(1)?,
                vec![0.0],
            )
        }
        "fanout" => {
            let subs = f.get("subscribers", 1000usize)?;
            let pubs = f.get("publishers", 10usize)?.max(1);
            let rates: Vec<f64> = match f.str("rates") {
                Some(list) => list
                    .split(',')
                    .map(|r| r.trim().parse().context("--rates: a list of msg/s"))
                    .collect::<anyhow::Result<_>>()?,
                None => vec![f.get("rate", 100.0)?],
            };
            (
                Shape {
                    rooms: 1,
                    members: subs + pubs,
                    senders: pubs,
                    rate_per_sender: 0.0,
                    dm: false,
                    join: true,
                    group: f.on("group"),
                },
                gateways(1)?,
                rates.into_iter().map(|r| r / pubs as f64).collect(),
            )
        }
        "pairs" => {
            let clients = f.get("clients", 2000usize)?;
            let dm = f.on("dm");
            (
                Shape {
                    rooms: clients / 2,
                    members: 2,
                    senders: 2,
                    rate_per_sender: 0.0,
                    dm,
                    join: !dm,
                    group: false,
                },
                gateways(1)?,
                vec![f.get("rate", 5.0)?],
            )
        }
        "cross" => {
            let rooms = f.get("rooms", 500usize)?;
            (
                Shape {
                    rooms,
                    members: 2,
                    senders: 1,
                    rate_per_sender: 0.0,
                    dm: false,
                    join: true,
                    group: false,
                },
                gateways(2)?,
                vec![f.get("rate", 20.0)?],
            )
        }
        "broadcast" => {
            let conns = f.get("conns", 100_000usize)?;
            (
                Shape {
                    rooms: 1,
                    members: conns,
                    senders: 1,
                    rate_per_sender: 0.0,
                    dm: false,
                    join: true,
                    group: false,
                },
                gateways(6)?,
                vec![f.get("rate", 1.0)?],
            )
        }
        other => bail!("unknown scenario {other:?}"),
    })
}

async fn run(name: &str, f: &Flags) -> anyhow::Result<()> {
    let (shape, gateways, rates, mode) = if name == "persister-catchup" {
        (
            Shape::default(),
            f.get("gateways", 1usize)?,
            vec![],
            Mode::Traffic,
        )
    } else {
        scenario(name, f)?
    };
    let exe = std::env::current_exe()?;
    let persister_bin = match f.str("persister-bin") {
        Some(p) => PathBuf::from(p),
        None => exe.with_file_name("persister"),
    };
    // Groups need the persister's conversation index (members' group counts).
    let needs_persister = name == "persister-catchup"
        || shape.group
        || f.on("persister")
        || (matches!(mode, Mode::ResumeStorm { .. }) && !f.on("no-persister"));
    anyhow::ensure!(
        !needs_persister || persister_bin.exists(),
        "{} not found: build it with `cargo build --release -p persister`, pass --persister-bin, \
         or --no-persister (resume-storm)",
        persister_bin.display()
    );
    anyhow::ensure!(
        !(needs_persister || mode != Mode::Traffic) || f.str("attach").is_none(),
        "{name} starts its own servers; --attach is for traffic scenarios"
    );
    let gateway_bin = match f.str("gateway-bin") {
        Some(p) => PathBuf::from(p),
        None => exe.with_file_name("gateway"),
    };
    anyhow::ensure!(
        f.str("attach").is_some() || gateway_bin.exists(),
        "{} not found: build it with `cargo build --release -p gateway` or pass --gateway-bin",
        gateway_bin.display()
    );
    let mut gateway_env = env_list(f.str("gw-env"));
    if let Mode::PresenceChurn(plan) = &mode {
        gateway_env.push((
            "GATEWAY_PRESENCE_GRACE_MS".into(),
            plan.grace_ms.to_string(),
        ));
    }
    // `--store cql`: the persister on the ScyllaDB store, against a Cassandra node started for
    // this run (testkit's, the one the tests use), kept until the run ends.
    let cql = match f.str("store") {
        None | Some("sqlite") => None,
        Some("cql") => Some(
            tokio::task::block_in_place(testkit::cassandra::CassandraServer::start)
                .context("starting the Cassandra node for --store cql")?,
        ),
        Some(other) => bail!("--store {other:?}: sqlite or cql"),
    };
    let stack_opts = StackOptions {
        gateways,
        gateway_bin,
        nats_bin: f
            .str("nats-bin")
            .map_or_else(testkit::nats::nats_server_bin, str::to_owned),
        server_cpus: f.cpus("server-cpus", "0"),
        gateway_env,
        nats_env: env_list(f.str("nats-env")),
        seed: BENCH_SEED,
        issuer: "liaotian".into(),
        // The catch-up starts its persister itself, after the backlog.
        persister_bin: (needs_persister && name != "persister-catchup")
            .then(|| persister_bin.clone()),
        nats_nodes: f.get("nats-nodes", 1usize)?,
        nats_sync: f.str("nats-sync").map(str::to_owned),
        persister_store: cql
            .as_ref()
            .map(|c| format!("scylla://{}/bench_{}", c.host(), std::process::id())),
    };
    // What the bench started its servers with, for the results; none when attached to servers
    // started by hand.
    let started = f.str("attach").is_none().then_some(&stack_opts);
    let mut stack = match f.str("attach") {
        // Gateways started by hand (for example under a profiler) that trust BENCH_SEED.
        Some(addrs) => Stack::attach(
            addrs
                .split(',')
                .map(|a| a.parse().context("--attach: comma-separated host:port"))
                .collect::<anyhow::Result<_>>()?,
            f.str("pids")
                .unwrap_or("")
                .split(',')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| Ok((k.to_owned(), v.parse().context("--pids: name=pid")?)))
                .collect::<anyhow::Result<_>>()?,
        ),
        None => Stack::start(&stack_opts).await?,
    };
    tracing::info!(gateways = ?stack.gateway_addrs, nats = %stack.nats_url, "servers ready");
    let out = PathBuf::from(
        f.str("out")
            .map_or_else(|| format!("bench/results/{name}.jsonl"), str::to_owned),
    );
    if name == "persister-catchup" {
        let o = CatchupOptions {
            scenario: name.to_owned(),
            label: f.str("label").unwrap_or("").to_owned(),
            messages: f.get("messages", 200_000u64)?,
            rooms: f.get("rooms", 100usize)?,
            text_bytes: f.get("text-bytes", 64)?,
            persister_bin,
            bound: Duration::from_secs_f64(f.get("drain", 600.0)?),
        };
        let result = run_catchup(&mut stack, &o).await?;
        return finish(&out, &result, started);
    }

    let secs =
        |name: &str, d: f64| -> anyhow::Result<u64> { Ok((f.get(name, d)? * 1000.0) as u64) };
    let procs = f.get("procs", shape.clients().div_ceil(CONNS_PER_PROC).max(1))?;
    // Time bounds: traffic sends for --duration and drains; a storm has no send phase, only the
    // catch-up bound (--drain) and a linger after catching up (--hold); watchers of a churn listen
    // until the last close's offline event is due, plus --drain.
    let (send_ms, drain_ms, hold_ms) = match &mode {
        Mode::Traffic => (
            secs("duration", if name == "idle" { 0.0 } else { 10.0 })?,
            secs("drain", 15.0)?,
            secs("hold", if name == "idle" { 5.0 } else { 0.0 })?,
        ),
        Mode::ResumeStorm { .. } => (0, secs("drain", 60.0)?, secs("hold", 0.5)?),
        Mode::PresenceChurn(plan) => (
            secs("duration", 10.0)?,
            plan.up_ms + plan.grace_ms + secs("drain", 5.0)?,
            0,
        ),
    };
    let stepping = rates.len() > 1;
    for rate in rates {
        let mut shape = shape.clone();
        shape.rate_per_sender = rate;
        let o = RunOptions {
            scenario: name.to_owned(),
            label: f.str("label").unwrap_or("").to_owned(),
            shape,
            procs,
            gen_cpus: f.cpus("gen-cpus", "1"),
            send_ms,
            drain_ms,
            hold_ms,
            settle_ms: secs("settle", if name == "idle" { 3.0 } else { 0.5 })?,
            ramp_per_sec: f.get("ramp", 2000)?,
            max_connecting: f.get("max-connecting", 200)?,
            text_bytes: f.get("text-bytes", 64)?,
            source_ips: !f.on("no-source-ips"),
            seed: BENCH_SEED,
            issuer: "liaotian".into(),
            mode: mode.clone(),
        };
        let result = match &mode {
            Mode::Traffic => run_once(&stack, &o).await?,
            Mode::ResumeStorm { missed } => storm_once(&stack, &o, *missed).await?,
            Mode::PresenceChurn(plan) => churn_once(&stack, &o, plan).await?,
        };
        finish(&out, &result, started)?;
        if stepping && result.saturated {
            tracing::info!("saturated; not stepping further");
            break;
        }
    }
    Ok(())
}

/// Appends the result, with the environment the servers ran with, and logs its rows.
fn finish(out: &PathBuf, result: &RunResult, stack: Option<&StackOptions>) -> anyhow::Result<()> {
    append(out, result, stack)?;
    tracing::info!(row = %result.markdown_row(), saturated = result.saturated, "run done");
    if result.has_figures() {
        tracing::info!(row = %result.figures_row(), "figures");
    }
    tracing::info!(totals = %serde_json::to_string(&result.totals)?, "totals");
    Ok(())
}

/// A resume storm: the burst is published between `ready` and `go`, straight into JetStream.
async fn storm_once(stack: &Stack, o: &RunOptions, missed: u64) -> anyhow::Result<RunResult> {
    let nats = async_nats::connect(&stack.nats_url)
        .await
        .context("connecting to nats-server")?;
    let js = async_nats::jetstream::new(nats);
    let rooms = o.shape.rooms;
    let text_bytes = o.text_bytes;
    let burst_s = std::cell::Cell::new(0.0);
    let mut result = run_once_with(stack, o, |run| {
        let (js, burst_s) = (js.clone(), &burst_s);
        async move {
            let batch = bench::inject::Batch {
                rooms: (0..rooms)
                    .map(|r| bench::plan::room_name(r, &run))
                    .collect(),
                per_room: missed,
                from: format!("burst-{run}"),
                text_bytes,
                marker: true,
            };
            let published = bench::inject::publish(&js, &batch).await?;
            burst_s.set(published.took.as_secs_f64());
            tracing::info!(
                messages = published.total(),
                secs = burst_s.get(),
                "burst published; resuming"
            );
            // What JetStream acked is what every resuming client of the room must get.
            let mut report = bench::WorkerReport::default();
            for (room, seqs) in batch.rooms.iter().zip(&published.seqs) {
                report
                    .acked_by
                    .insert(format!("{room}|{}", bench::storm::BURST), seqs.len() as u64);
            }
            report.acked = published.total();
            Ok(report)
        }
    })
    .await?;
    // The clients closed their first connections before `ready`, so RSS per connection means nothing.
    result.gateway_rss_per_conn_bytes = None;
    let t = &result.totals;
    result.saturated = t.lost > 0
        || t.dup_seq + t.dup_cmid > 0
        || t.timed_out > 0
        || !t.closed_early.is_empty()
        || t.connect_failed > 0;
    result.figures = [
        ("missed_per_room", missed as f64),
        ("rooms", rooms as f64),
        ("burst_publish_s", burst_s.get()),
        ("all_caught_up_s", t.latency_us.max as f64 / 1e6),
        (
            "persister",
            f64::from(u8::from(stack.persister_http.is_some())),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    Ok(result)
}

/// A presence churn: the workers do everything; the parent adds the figures.
async fn churn_once(
    stack: &Stack,
    o: &RunOptions,
    plan: &bench::churn::ChurnPlan,
) -> anyhow::Result<RunResult> {
    let mut result = run_once(stack, o).await?;
    result.gateway_rss_per_conn_bytes = None;
    let t = &result.totals;
    let opens = t.counters.get("opens").copied().unwrap_or(0);
    let send_s = o.send_ms as f64 / 1000.0;
    result.saturated = t.lost > 0
        || t.dup_events > 0
        || !t.closed_early.is_empty()
        || t.counters.get("open_failed").copied().unwrap_or(0) > 0
        // A watcher that never connected hears nothing, and its silence is not "nothing lost".
        || t.connect_failed > 0
        || (opens as f64) < 0.9 * plan.rate * send_s;
    let off = &t.offline_latency_us;
    result.figures = [
        ("offered_opens_per_sec", plan.rate),
        ("opens_per_sec", opens as f64 / send_s.max(1e-9)),
        ("users", plan.users as f64),
        ("watchers", plan.watchers as f64),
        ("up_s", plan.up_ms as f64 / 1000.0),
        ("grace_ms", plan.grace_ms as f64),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    if off.count > 0 {
        // The grace period is the design's delay; what is left is the system's.
        let grace = plan.grace_ms as f64;
        let (p50, p99) = (off.p50 as f64 / 1000.0, off.p99 as f64 / 1000.0);
        result
            .figures
            .insert("offline_minus_grace_p50_ms".into(), p50 - grace);
        result
            .figures
            .insert("offline_minus_grace_p99_ms".into(), p99 - grace);
    }
    Ok(result)
}

fn append(path: &PathBuf, r: &RunResult, stack: Option<&StackOptions>) -> anyhow::Result<()> {
    // The servers' settings go with the row, next to the free-text label: `bench table` ignores them.
    let mut row = serde_json::to_value(r)?;
    if let Some(stack) = stack {
        let with_defaults = |defaults: &[(&str, &str)], extra: &[(String, String)]| {
            let extra = extra.iter().map(|(k, v)| (k.as_str(), v.as_str()));
            serde_json::Value::from_iter(
                defaults
                    .iter()
                    .copied()
                    .chain(extra)
                    .map(|(k, v)| format!("{k}={v}")),
            )
        };
        row["gateway_env"] = with_defaults(bench::stack::GATEWAY_BENCH_ENV, &stack.gateway_env);
        row["nats_env"] = with_defaults(bench::stack::NATS_BENCH_ENV, &stack.nats_env);
        row["nats_nodes"] = stack.nats_nodes.into();
        row["nats_sync"] = stack.nats_sync.as_deref().unwrap_or("default").into();
        row["store"] = match &stack.persister_store {
            Some(_) => "cql",
            None => "sqlite",
        }
        .into();
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    writeln!(file, "{}", serde_json::to_string(&row)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// Prints the markdown table of every result in the given JSON-lines files, then a second table of
/// the runs with their own figures (resume-storm, presence-churn, persister-catchup).
fn table(files: impl Iterator<Item = String>) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let mut results = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).with_context(|| format!("reading {file}"))?;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let r: RunResult =
                serde_json::from_str(line).with_context(|| format!("a line of {file}"))?;
            results.push(r);
        }
    }
    writeln!(out, "{MARKDOWN_HEADER}")?;
    for r in &results {
        writeln!(out, "{}", r.markdown_row())?;
    }
    if results.iter().any(RunResult::has_figures) {
        writeln!(out, "\n{FIGURES_HEADER}")?;
        for r in results.iter().filter(|r| r.has_figures()) {
            writeln!(out, "{}", r.figures_row())?;
        }
    }
    Ok(())
}

/// One worker process: spec on the first stdin line, `go` on the second; ready and report on stdout.
fn worker() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        let spec_line = lines.next_line().await?.context("no spec on stdin")?;
        let spec: bench::WorkerSpec =
            serde_json::from_str(&spec_line).context("reading the spec")?;
        let report = bench::run_worker(
            spec,
            |ready| {
                let _ = say(&WorkerLine::Ready(ready));
            },
            async move {
                let _ = lines.next_line().await;
            },
        )
        .await?;
        say(&WorkerLine::Report(Box::new(report)))
    })
}

fn say(line: &WorkerLine) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", serde_json::to_string(line)?)?;
    out.flush()?;
    Ok(())
}

/// `K=V,K=V` as pairs (`--gw-env`, `--nats-env`).
fn env_list(arg: Option<&str>) -> Vec<(String, String)> {
    arg.map(|s| {
        s.split(',')
            .filter_map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
            })
            .collect()
    })
    .unwrap_or_default()
}
