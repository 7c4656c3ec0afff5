//! The servers under test, as real processes: nats-server with JetStream, gateways, and the persister
//! when a scenario needs history.
//!
//! The bench serves the token keys itself (`GET /api/keys`, in the auth service's envelope), from the
//! same Ed25519 seed its workers sign with, so no auth process is needed. Servers can be pinned to
//! CPUs with `taskset`, and each is killed when the stack is dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use token::{Jwk, JwkSet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a server may take to come up.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A server process, killed on drop.
pub struct Server {
    pub name: String,
    pub pid: u32,
    /// `None` for a process the bench did not start (`--attach`), which it leaves alone.
    child: Option<Child>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// How to start the servers.
#[derive(Debug, Clone)]
pub struct StackOptions {
    pub gateways: usize,
    pub gateway_bin: PathBuf,
    pub nats_bin: String,
    /// CPU list for `taskset -c`, or `None` for no pinning.
    pub server_cpus: Option<String>,
    /// Extra environment of the gateways (`KEY=VALUE`).
    pub gateway_env: Vec<(String, String)>,
    /// Extra environment of nats-server, after [`NATS_BENCH_ENV`].
    pub nats_env: Vec<(String, String)>,
    pub seed: [u8; 32],
    pub issuer: String,
    /// The persister binary, started with the stack when set (see [`Stack::start_persister`]).
    pub persister_bin: Option<PathBuf>,
    /// nats-server nodes: 1, or a cluster of 3 (or more) with stream `CHAT` and the buckets at that
    /// many replicas, gateway `i` connected to node `i % nodes` first.
    pub nats_nodes: usize,
    /// JetStream's `sync_interval` (`always`, or a duration such as `2m`); `None` keeps
    /// nats-server's default (2 minutes).
    pub nats_sync: Option<String>,
    /// The persister's store URI; `None` for a fresh SQLite file in the stack's directory.
    pub persister_store: Option<String>,
}

/// Environment the bench gives the persister: quiet logs; everything else is its default.
pub const PERSISTER_BENCH_ENV: &[(&str, &str)] = &[("RUST_LOG", "warn")];

/// Environment the bench gives every gateway before `gateway_env`: quiet logs, a rate limit high
/// enough that a fan-out publisher is not throttled (the limit is policy, not capacity), and
/// presence open to all, since the presence scenarios watch users who never wrote to each other.
pub const GATEWAY_BENCH_ENV: &[(&str, &str)] = &[
    ("RUST_LOG", "warn"),
    ("GATEWAY_RATE_PER_SEC", "100000"),
    ("GATEWAY_RATE_BURST", "100000"),
    ("GATEWAY_USER_SENDS_PER_SEC", "100000"),
    ("GATEWAY_USER_SEND_BURST", "100000"),
    ("GATEWAY_PRESENCE_PRIVACY", "open"),
];

/// Environment the bench gives nats-server before `nats_env`: the Go collector runs only when the
/// heap nears 4 GiB, as docs/operations.md recommends for a nats-server with a memory budget. With
/// Go's default (`GOGC=100`) and one core, each collection slows the server for 50–70 ms every
/// second or two, which decides the latency tail of every scenario (docs/benchmarks.md).
pub const NATS_BENCH_ENV: &[(&str, &str)] = &[("GOGC", "off"), ("GOMEMLIMIT", "4GiB")];

/// nats-server, the key server and the gateways.
pub struct Stack {
    /// nats-server first, then the gateways, then the persister if it runs.
    pub servers: Vec<Server>,
    pub gateway_addrs: Vec<SocketAddr>,
    pub nats_url: String,
    /// The persister's HTTP listener (`/metrics`), once it runs.
    pub persister_http: Option<SocketAddr>,
    /// The persister's SQLite file, once it runs on SQLite.
    pub persister_db: Option<PathBuf>,
    /// The persister's store URI when it is not a fresh SQLite file.
    persister_store: Option<String>,
    server_cpus: Option<String>,
    keys: Option<tokio::task::JoinHandle<()>>,
    _dir: Option<testkit::TempDir>,
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let Some(k) = &self.keys {
            k.abort();
        }
    }
}

impl Stack {
    pub async fn start(o: &StackOptions) -> anyhow::Result<Stack> {
        let dir = testkit::temp_dir("liaotian-bench")?;
        let nodes = o.nats_nodes.max(1);
        let ports: Vec<(u16, u16, u16)> = (0..nodes)
            .map(|_| Ok((free_port()?, free_port()?, free_port()?)))
            .collect::<anyhow::Result<_>>()?;
        let mut nats_servers = Vec::new();
        for (i, _) in ports.iter().enumerate() {
            let name = if nodes == 1 {
                "nats-server".to_owned()
            } else {
                format!("nats-server-{i}")
            };
            let conf = dir.path().join(format!("{name}.conf"));
            std::fs::write(&conf, nats_conf(i, &ports, &dir.path().join(&name), o))
                .with_context(|| format!("writing {}", conf.display()))?;
            nats_servers.push(spawn(
                &name,
                &o.server_cpus,
                Command::new(pinned_prog(&o.server_cpus, &o.nats_bin))
                    .args(pinned_args(&o.server_cpus, &o.nats_bin))
                    .arg("-c")
                    .arg(&conf)
                    .envs(NATS_BENCH_ENV.iter().copied())
                    .envs(o.nats_env.iter().map(|(k, v)| (k, v))),
                &dir.path().join(format!("{name}.log")),
            )?);
        }
        for (port, _, _) in &ports {
            wait_tcp(([127, 0, 0, 1], *port).into()).await?;
        }
        let urls: Vec<String> = ports
            .iter()
            .map(|(p, _, _)| format!("nats://127.0.0.1:{p}"))
            .collect();
        let nats_url = urls[0].clone();
        if nodes > 1 {
            wait_meta_leader(&urls[0]).await?;
        }

        let signer = token::Signer::from_seed(&o.seed, o.issuer.clone());
        let body = serde_json::json!({
            "code": 0,
            "message": "ok",
            "data": JwkSet { keys: vec![Jwk::ed25519(signer.kid(), &signer.public_key())] },
        })
        .to_string();
        let key_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let auth_url = format!("http://{}", key_listener.local_addr()?);
        let keys = tokio::spawn(serve_keys(key_listener, body));

        let mut gateways = Vec::new();
        let mut gateway_addrs = Vec::new();
        for i in 0..o.gateways {
            let addr: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
            let bin = o.gateway_bin.to_string_lossy().into_owned();
            let mut cmd = Command::new(pinned_prog(&o.server_cpus, &bin));
            cmd.args(pinned_args(&o.server_cpus, &bin))
                .envs(GATEWAY_BENCH_ENV.iter().copied())
                .env("GATEWAY_LISTEN", addr.to_string())
                .env("NATS_URL", rotated(&urls, i))
                .env("GATEWAY_AUTH_URL", &auth_url)
                .env("GATEWAY_JWT_ISSUER", &o.issuer)
                .env("CHAT_REPLICAS", nodes.to_string())
                .envs(o.gateway_env.iter().map(|(k, v)| (k, v)));
            let name = format!("gateway{i}");
            let log = dir.path().join(format!("{name}.log"));
            gateways.push(spawn(&name, &o.server_cpus, &mut cmd, &log)?);
            wait_ready(addr).await.with_context(|| {
                format!("{name} did not become ready; log in {}", log.display())
            })?;
            gateway_addrs.push(addr);
        }
        let mut servers = nats_servers;
        servers.extend(gateways);
        let mut stack = Stack {
            servers,
            gateway_addrs,
            nats_url,
            persister_http: None,
            persister_db: None,
            persister_store: o.persister_store.clone(),
            server_cpus: o.server_cpus.clone(),
            keys: Some(keys),
            _dir: Some(dir),
        };
        if let Some(bin) = &o.persister_bin {
            stack.start_persister(bin)?;
            stack.wait_persister_ready().await?;
        }
        Ok(stack)
    }

    /// Spawns the persister (`persister` binary) with the stack's store (by default a fresh SQLite
    /// file in the stack's directory), pinned like the other servers; it does not wait for it to be
    /// ready.
    pub fn start_persister(&mut self, bin: &Path) -> anyhow::Result<()> {
        let dir = self
            ._dir
            .as_ref()
            .context("no persister with --attach")?
            .path()
            .to_owned();
        let http: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
        let db = dir.join("history.db");
        let store = match &self.persister_store {
            Some(uri) => uri.clone(),
            None => format!("sqlite://{}", db.display()),
        };
        let bin = bin.to_string_lossy().into_owned();
        let mut cmd = Command::new(pinned_prog(&self.server_cpus, &bin));
        cmd.args(pinned_args(&self.server_cpus, &bin))
            .envs(PERSISTER_BENCH_ENV.iter().copied())
            .env("PERSISTER_LISTEN", http.to_string())
            .env("NATS_URL", &self.nats_url)
            .env("PERSISTER_STORE", &store);
        if store.starts_with("scylla://") && std::env::var_os("SCYLLA_REPLICATION").is_none() {
            // The bench's CQL server is one node: one replica, or LOCAL_QUORUM cannot be met.
            cmd.env(
                "SCYLLA_REPLICATION",
                "{'class': 'SimpleStrategy', 'replication_factor': 1}",
            );
        }
        let server = spawn(
            "persister",
            &self.server_cpus,
            &mut cmd,
            &dir.join("persister.log"),
        )?;
        self.servers.push(server);
        self.persister_http = Some(http);
        self.persister_db = self.persister_store.is_none().then_some(db);
        Ok(())
    }

    /// Waits until the persister's `/readyz` answers 200 (its consumer is bound to `CHAT`).
    pub async fn wait_persister_ready(&self) -> anyhow::Result<()> {
        let http = self.persister_http.context("no persister running")?;
        wait_ready(http)
            .await
            .context("the persister did not become ready")
    }

    /// Servers started by someone else: gateways at `addrs` that trust the bench's seed, and
    /// processes to read from `/proc` (`name=pid`; name nats-server or gateway…).
    pub fn attach(addrs: Vec<SocketAddr>, pids: Vec<(String, u32)>) -> Stack {
        Stack {
            servers: pids
                .into_iter()
                .map(|(name, pid)| Server {
                    name,
                    pid,
                    child: None,
                })
                .collect(),
            gateway_addrs: addrs,
            nats_url: String::new(),
            persister_http: None,
            persister_db: None,
            persister_store: None,
            server_cpus: None,
            keys: None,
            _dir: None,
        }
    }

    /// Every server process, nats-server first.
    pub fn servers(&self) -> impl Iterator<Item = &Server> {
        self.servers.iter()
    }
}

/// Node `i`'s configuration: loopback ports (client, route, monitoring), its own store, the stack's
/// `sync_interval`, and, in a cluster, routes to every node. The monitoring port (`/subsz`,
/// `/jsz`) is for looking at a run from outside; the bench does not read it.
fn nats_conf(i: usize, ports: &[(u16, u16, u16)], store: &Path, o: &StackOptions) -> String {
    let mut conf = format!(
        "server_name: n{i}\nlisten: 127.0.0.1:{}\nhttp: 127.0.0.1:{}\njetstream {{\n  store_dir: \"{}\"\n",
        ports[i].0,
        ports[i].2,
        store.display()
    );
    if let Some(sync) = &o.nats_sync {
        conf.push_str(&format!("  sync_interval: {sync}\n"));
    }
    conf.push_str("}\n");
    if ports.len() > 1 {
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, r, _)| format!("nats-route://127.0.0.1:{r}"))
            .collect();
        conf.push_str(&format!(
            "cluster {{\n  name: liaotian-bench\n  listen: 127.0.0.1:{}\n  routes: [{}]\n}}\n",
            ports[i].1,
            routes.join(", ")
        ));
    }
    conf
}

/// The node URLs with node `i % n` first: a gateway's `NATS_URL`, so gateways spread over nodes.
fn rotated(urls: &[String], i: usize) -> String {
    let n = urls.len();
    (0..n)
        .map(|k| urls[(i + k) % n].as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// Waits until the cluster has a JetStream meta leader: account info answers only then.
async fn wait_meta_leader(url: &str) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    let client = async_nats::connect(url).await?;
    let js = async_nats::jetstream::new(client);
    while tokio::time::Instant::now() < deadline {
        if js.query_account().await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("the nats cluster elected no JetStream leader within {START_TIMEOUT:?}")
}

fn pinned_prog(cpus: &Option<String>, bin: &str) -> String {
    if cpus.is_some() {
        "taskset".into()
    } else {
        bin.into()
    }
}

fn pinned_args(cpus: &Option<String>, bin: &str) -> Vec<String> {
    match cpus {
        Some(c) => vec!["-c".into(), c.clone(), bin.into()],
        None => Vec::new(),
    }
}

fn spawn(
    name: &str,
    cpus: &Option<String>,
    cmd: &mut Command,
    log: &Path,
) -> anyhow::Result<Server> {
    let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("starting {name} ({cmd:?})"))?;
    tracing::info!(name, pid = child.id(), cpus = ?cpus, "server started");
    // taskset execs the program, so the pid is the server's own.
    Ok(Server {
        name: name.into(),
        pid: child.id(),
        child: Some(child),
    })
}

/// A port that was free a moment ago.
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn wait_tcp(addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    while tokio::time::Instant::now() < deadline {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("nothing listening on {addr}")
}

/// Waits until `GET /readyz` answers 200.
async fn wait_ready(addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    while tokio::time::Instant::now() < deadline {
        if http_get_status(addr, "/readyz")
            .await
            .is_ok_and(|s| s == 200)
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{addr}/readyz never answered 200")
}

async fn http_get_status(addr: SocketAddr, path: &str) -> anyhow::Result<u16> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await??;
    let head = String::from_utf8_lossy(&buf);
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no HTTP status")
}

/// Answers every request with the key set: enough HTTP/1.1 for the gateway's key fetch.
async fn serve_keys(listener: tokio::net::TcpListener, body: String) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            continue;
        };
        let body = body.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            let mut n = 0;
            while n < buf.len() {
                match s.read(&mut buf[n..]).await {
                    Ok(0) | Err(_) => return,
                    Ok(k) => n += k,
                }
                if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(resp.as_bytes()).await;
            let _ = s.shutdown().await;
        });
    }
}
