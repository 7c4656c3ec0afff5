//! `bench` binary: parse the arguments, start the servers, run a scenario, append the results.
//!
//! ```text
//! bench run idle      --conns 19000 --procs 2
//! bench run fanout    --subscribers 1000 --publishers 10 --rates 100,200,400,600
//! bench run pairs     --clients 2000 --rate 5 [--dm]
//! bench run cross     --rooms 500 --rate 20
//! bench run broadcast --conns 100000 --gateways 6 --procs 6 --rate 1
//! bench run idle      --attach 127.0.0.1:8080 --pids gateway=1234   (servers started by hand)
//! bench table bench/results/*.jsonl
//! bench worker        (internal: one worker process, driven by `run` over stdin/stdout)
//! ```

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};
use bench::plan::Shape;
use bench::report::{MARKDOWN_HEADER, RunResult};
use bench::run::{RunOptions, WorkerLine, run_once};
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
            "usage: bench run <idle|fanout|pairs|cross|broadcast> [--flags] | bench table FILES"
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

/// A scenario's traffic and the gateway count it needs.
fn scenario(name: &str, f: &Flags) -> anyhow::Result<(Shape, usize, Vec<f64>)> {
    let gateways = |d: usize| f.get("gateways", d);
    Ok(match name {
        "idle" => {
            let conns = f.get("conns", 1000usize)?;
            let join = f.on("join");
            (
                Shape {
                    rooms: conns,
                    members: 1,
                    senders: 0,
                    rate_per_sender: 0.0,
                    dm: false,
                    join,
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
                },
                gateways(6)?,
                vec![f.get("rate", 1.0)?],
            )
        }
        "resume-storm" => {
            bail!("resume-storm needs history and `since` on join, which are not built yet")
        }
        "presence-churn" => bail!("presence-churn needs presence events, which are not built yet"),
        "persister-catchup" => {
            bail!("persister-catchup needs the persister, which is a stub today")
        }
        other => bail!("unknown scenario {other:?}"),
    })
}

async fn run(name: &str, f: &Flags) -> anyhow::Result<()> {
    let (shape, gateways, rates) = scenario(name, f)?;
    let exe = std::env::current_exe()?;
    let gateway_bin = match f.str("gateway-bin") {
        Some(p) => PathBuf::from(p),
        None => exe.with_file_name("gateway"),
    };
    anyhow::ensure!(
        f.str("attach").is_some() || gateway_bin.exists(),
        "{} not found: build it with `cargo build --release -p gateway` or pass --gateway-bin",
        gateway_bin.display()
    );
    let gateway_env = f
        .str("gw-env")
        .map(|s| {
            s.split(',')
                .filter_map(|kv| {
                    kv.split_once('=')
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                })
                .collect()
        })
        .unwrap_or_default();
    let stack_opts = StackOptions {
        gateways,
        gateway_bin,
        nats_bin: f
            .str("nats-bin")
            .map_or_else(testkit::nats::nats_server_bin, str::to_owned),
        server_cpus: f.cpus("server-cpus", "0"),
        gateway_env,
        seed: BENCH_SEED,
        issuer: "liaotian".into(),
    };
    let stack = match f.str("attach") {
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

    let secs =
        |name: &str, d: f64| -> anyhow::Result<u64> { Ok((f.get(name, d)? * 1000.0) as u64) };
    let procs = f.get("procs", shape.clients().div_ceil(CONNS_PER_PROC).max(1))?;
    let out = PathBuf::from(
        f.str("out")
            .map_or_else(|| format!("bench/results/{name}.jsonl"), str::to_owned),
    );
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
            send_ms: secs("duration", if name == "idle" { 0.0 } else { 10.0 })?,
            drain_ms: secs("drain", 15.0)?,
            hold_ms: secs("hold", if name == "idle" { 5.0 } else { 0.0 })?,
            settle_ms: secs("settle", if name == "idle" { 3.0 } else { 0.5 })?,
            ramp_per_sec: f.get("ramp", 2000)?,
            max_connecting: f.get("max-connecting", 200)?,
            text_bytes: f.get("text-bytes", 64)?,
            source_ips: !f.on("no-source-ips"),
            seed: BENCH_SEED,
            issuer: "liaotian".into(),
        };
        let result = run_once(&stack, &o).await?;
        append(&out, &result)?;
        tracing::info!(row = %result.markdown_row(), saturated = result.saturated, "run done");
        tracing::info!(totals = %serde_json::to_string(&result.totals)?, "totals");
        if stepping && result.saturated {
            tracing::info!("saturated; not stepping further");
            break;
        }
    }
    Ok(())
}

fn append(path: &PathBuf, r: &RunResult) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    writeln!(file, "{}", serde_json::to_string(r)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// Prints the markdown table of every result in the given JSON-lines files.
fn table(files: impl Iterator<Item = String>) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{MARKDOWN_HEADER}")?;
    for file in files {
        let text = std::fs::read_to_string(&file).with_context(|| format!("reading {file}"))?;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let r: RunResult =
                serde_json::from_str(line).with_context(|| format!("a line of {file}"))?;
            writeln!(out, "{}", r.markdown_row())?;
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
