//! Benchmarks of issue 4 (presence in NATS KV): the presence writes one gateway sustains with many
//! heartbeating connections, and the delay from a killed gateway to the offline events at a watcher.
//!
//! `nats-server` runs as a child (`testkit::NatsServer`); gateways run in this process through
//! `gateway::run`. For `writes` the WebSocket clients run in a second copy of this binary (mode
//! `clients`), so neither process needs more than one socket per connection under the fd limit.
//! Clients are spread over source addresses 127.0.0.2.. by binding before connect.
//!
//! ```text
//! presence_bench writes  <connections> <ping_ms> <window_secs> <ttl_secs>
//! presence_bench offline <users>
//! ```

// A benchmark binary prints its results on stdout for the operator.
#![allow(clippy::print_stdout)]

use std::io::BufRead;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use protocol::UserId;
use testkit::{NatsServer, TcpProxy};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

/// Signing seed shared by the gateway process and the client process.
const SEED: [u8; 32] = [7; 32];
/// Source addresses the clients spread over: 127.0.0.2 ..= 127.0.0.(1 + SOURCE_IPS).
const SOURCE_IPS: u32 = 10;

type Ws = tokio_tungstenite::WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let num = |i: usize, d: u64| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    match args.get(1).map(String::as_str) {
        Some("writes") => writes(num(2, 10_000), num(3, 500), num(4, 20), num(5, 3)).await,
        Some("clients") => {
            let addr: SocketAddr = args.get(2).context("addr")?.parse()?;
            clients(addr, num(3, 10_000), num(4, 500), num(5, 60)).await
        }
        Some("offline") => offline(num(2, 200) as usize).await,
        _ => bail!("usage: presence_bench writes|offline ..."),
    }
}

struct Gateway {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Gateway {
    async fn start(nats_url: String, ttl: Duration, grace: Duration) -> anyhow::Result<Self> {
        let signer = token::Signer::from_seed(&SEED, "liaotian");
        let keys = token::KeySet::new("liaotian");
        keys.insert(signer.kid().to_owned(), signer.public_key());
        let listener = TcpListener::bind("0.0.0.0:0").await?;
        let port = listener.local_addr()?.port();
        let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
        let config = gateway::Config {
            nats_url,
            presence_ttl: ttl,
            presence_grace: grace,
            // The watcher watches users who never wrote to it.
            presence_privacy: gateway::config::PresencePrivacy::Open,
            ..gateway::Config::default()
        };
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(gateway::run(listener, config, keys, async {
            let _ = rx.await;
        }));
        for _ in 0..400 {
            if metric(addr, "gateway_presence_writes_total").await.is_ok() {
                return Ok(Self {
                    addr,
                    stop: Some(tx),
                    task,
                });
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        bail!("gateway did not come up")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task.abort();
    }
}

/// Reads one unlabelled metric from `http://<addr>/metrics` (plain HTTP/1.0).
async fn metric(addr: SocketAddr, name: &str) -> anyhow::Result<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await?;
    let mut body = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut body)).await??;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .with_context(|| format!("metric {name} not found"))
}

/// CPU seconds (user + system) used so far by process `pid`.
fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|s| s.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|s| s.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

/// The pid of the nats-server child of this process listening on `port` (found through /proc).
fn nats_pid(port: u16) -> Option<u32> {
    let me = std::process::id().to_string();
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let pid: u32 = e.file_name().to_str()?.parse().ok().unwrap_or(0);
        if pid == 0 {
            continue;
        }
        let cmd = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let ppid = stat
            .rsplit(')')
            .next()
            .and_then(|s| s.split_whitespace().nth(1));
        if cmd.contains("nats-server") && cmd.contains(&port.to_string())
            || (cmd.contains("nats-server") && ppid == Some(me.as_str()))
        {
            return Some(pid);
        }
    }
    None
}

async fn ws_connect(addr: SocketAddr, source: Option<Ipv4Addr>, user: &str) -> anyhow::Result<Ws> {
    let signer = token::Signer::from_seed(&SEED, "liaotian");
    let token = signer.issue(&UserId::parse(user)?, token::now_secs(), 3600);
    let sock = tokio::net::TcpSocket::new_v4()?;
    if let Some(ip) = source {
        sock.bind(SocketAddr::new(IpAddr::V4(ip), 0))?;
    }
    let tcp = sock.connect(addr).await?;
    let mut req = format!("ws://{addr}/ws").into_client_request()?;
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    req.headers_mut()
        .insert("sec-websocket-protocol", "chat.v1".parse()?);
    let (mut ws, _) = tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(tcp)).await?;
    let welcome = next_json(&mut ws, Duration::from_secs(20)).await?;
    anyhow::ensure!(welcome["type"] == "welcome", "expected welcome: {welcome}");
    Ok(ws)
}

async fn next_json(ws: &mut Ws, t: Duration) -> anyhow::Result<serde_json::Value> {
    let deadline = tokio::time::Instant::now() + t;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await? {
            Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(&t)?),
            Some(Ok(Message::Close(c))) => bail!("closed: {c:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => bail!("ws: {e}"),
            None => bail!("ended"),
        }
    }
}

fn source_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 0, 2)) + (i as u32 % SOURCE_IPS))
}

/// Keeps one connection heartbeating with `ping` every `every`, first after a staggered offset.
async fn heartbeat(
    mut ws: Ws,
    every: Duration,
    offset: Duration,
    until: Instant,
    pongs: Arc<AtomicU64>,
) {
    tokio::time::sleep(offset).await;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0u64;
    while Instant::now() < until {
        tokio::select! {
            _ = tick.tick() => {
                n += 1;
                let f = format!(r#"{{"type":"ping","id":"{n}"}}"#);
                if ws.send(Message::text(f)).await.is_err() { return; }
            }
            m = ws.next() => match m {
                Some(Ok(Message::Text(t))) => if t.contains("\"pong\"") { pongs.fetch_add(1, Ordering::Relaxed); },
                Some(Ok(_)) => {}
                _ => return,
            },
        }
    }
    let _ = ws.close(None).await;
}

/// Client process: opens `n` connections, heartbeats them for `secs`, prints progress lines.
async fn clients(addr: SocketAddr, n: u64, ping_ms: u64, secs: u64) -> anyhow::Result<()> {
    let t = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(256));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n as usize {
        let sem = sem.clone();
        set.spawn(async move {
            let _p = sem.acquire_owned().await;
            ws_connect(addr, Some(source_ip(i)), &format!("p{i}")).await
        });
    }
    let mut socks = Vec::new();
    let mut errors = 0;
    let mut first_err = None;
    while let Some(r) = set.join_next().await {
        match r? {
            Ok(ws) => socks.push(ws),
            Err(e) => {
                errors += 1;
                first_err.get_or_insert(e.to_string());
            }
        }
    }
    println!(
        "connected={} errors={errors} connect_secs={:.1} first_error={first_err:?}",
        socks.len(),
        t.elapsed().as_secs_f64()
    );
    let pongs = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(secs);
    let every = Duration::from_millis(ping_ms);
    let count = socks.len().max(1) as u64;
    let mut set = tokio::task::JoinSet::new();
    for (i, ws) in socks.into_iter().enumerate() {
        let offset = every * (i as u32) / count as u32;
        set.spawn(heartbeat(ws, every, offset, until, pongs.clone()));
    }
    while set.join_next().await.is_some() {}
    println!("done pongs={}", pongs.load(Ordering::Relaxed));
    Ok(())
}

async fn writes(n: u64, ping_ms: u64, window: u64, ttl: u64) -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let nats_cpu_pid = nats_pid(nats.port());
    let gw = Gateway::start(
        nats.url(),
        Duration::from_secs(ttl),
        Duration::from_secs(10),
    )
    .await?;
    let warmup = 5;
    let run_secs = window + warmup + 5;
    let exe = std::env::current_exe()?;
    let mut child = std::process::Command::new(exe)
        .args([
            "clients",
            &gw.addr.to_string(),
            &n.to_string(),
            &ping_ms.to_string(),
            &run_secs.to_string(),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().context("child stdout")?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let line = tokio::time::timeout(Duration::from_secs(300), rx.recv())
        .await?
        .context("client process ended")?;
    println!("clients: {line}");
    tokio::time::sleep(Duration::from_secs(warmup)).await;
    let w0 = metric(gw.addr, "gateway_presence_writes_total").await?;
    let e0 = metric(gw.addr, "gateway_presence_write_errors_total").await?;
    let (g0, c0) = (
        cpu_secs(std::process::id()),
        nats_cpu_pid.map_or(f64::NAN, cpu_secs),
    );
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(window)).await;
    let dt = t0.elapsed().as_secs_f64();
    let w1 = metric(gw.addr, "gateway_presence_writes_total").await?;
    let e1 = metric(gw.addr, "gateway_presence_write_errors_total").await?;
    let (g1, c1) = (
        cpu_secs(std::process::id()),
        nats_cpu_pid.map_or(f64::NAN, cpu_secs),
    );
    // Each refresh writes two keys: `conn.<user>.<conn>` and `seen.<user>`.
    let expected = 2.0 * n as f64 / (ttl as f64 / 3.0);
    println!(
        "presence_writes connections={n} ttl_s={ttl} ping_ms={ping_ms} window_s={dt:.1} writes_per_s={:.0} write_errors_per_s={:.1} ideal_per_s={expected:.0} gateway_cpu_cores={:.2} nats_cpu_cores={:.2}",
        (w1 - w0) / dt,
        (e1 - e0) / dt,
        (g1 - g0) / dt,
        (c1 - c0) / dt
    );
    if let Ok(Some(line)) = tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
        println!("clients: {line}");
    }
    let _ = child.wait();
    drop(gw);
    Ok(())
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

async fn offline(users: usize) -> anyhow::Result<()> {
    let ttl = Duration::from_secs(2);
    let grace = Duration::from_secs(1);
    let nats = NatsServer::start()?;
    let proxy = TcpProxy::start(SocketAddr::from(([127, 0, 0, 1], nats.port()))).await?;
    let mut a = Gateway::start(format!("nats://{}", proxy.addr()), ttl, grace).await?;
    let b = Gateway::start(nats.url(), ttl, grace).await?;

    let mut watcher = ws_connect(b.addr, None, "watcher").await?;
    let names: Vec<String> = (0..users).map(|i| format!("o{i}")).collect();
    watcher
        .send(Message::text(
            serde_json::json!({"type":"watch","id":"w","users":names}).to_string(),
        ))
        .await?;
    let mut online = std::collections::HashSet::new();
    let until = Instant::now() + Duration::from_secs(60);
    let pongs = Arc::new(AtomicU64::new(0));
    let mut hb = tokio::task::JoinSet::new();
    for (i, name) in names.iter().enumerate() {
        let ws = ws_connect(a.addr, Some(source_ip(i)), name).await?;
        let every = Duration::from_millis(300);
        hb.spawn(heartbeat(
            ws,
            every,
            every * i as u32 / users as u32,
            until,
            pongs.clone(),
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while online.len() < users && Instant::now() < deadline {
        let v = next_json(&mut watcher, Duration::from_secs(30)).await?;
        if v["type"] == "presence" && v["online"] == true {
            online.insert(v["user"].as_str().unwrap_or("").to_owned());
        }
    }
    println!("watcher sees online={}", online.len());
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Kill: cut gateway A's NATS link, then stop its task; its keys can only expire.
    let t0 = Instant::now();
    proxy.cut();
    a.task.abort();
    a.stop.take();
    let mut delays = Vec::new();
    let mut offline_seen = std::collections::HashSet::new();
    let mut other = 0;
    while offline_seen.len() < users && t0.elapsed() < Duration::from_secs(30) {
        match next_json(
            &mut watcher,
            Duration::from_secs(30).saturating_sub(t0.elapsed()),
        )
        .await
        {
            Ok(v) if v["type"] == "presence" && v["online"] == false => {
                if offline_seen.insert(v["user"].as_str().unwrap_or("").to_owned()) {
                    delays.push(t0.elapsed().as_secs_f64());
                }
            }
            Ok(_) => other += 1,
            Err(e) => {
                println!("watcher: {e}");
                break;
            }
        }
    }
    delays.sort_by(f64::total_cmp);
    let floor = (ttl + grace).as_secs_f64();
    println!(
        "offline users={users} ttl_s=2 grace_s=1 events={} p50_s={:.3} p99_s={:.3} min_s={:.3} max_s={:.3} p50_after_ttl_grace_s={:.3} p99_after_ttl_grace_s={:.3} other_frames={other}",
        delays.len(),
        pct(&delays, 0.5),
        pct(&delays, 0.99),
        delays.first().copied().unwrap_or(f64::NAN),
        delays.last().copied().unwrap_or(f64::NAN),
        pct(&delays, 0.5) - floor,
        pct(&delays, 0.99) - floor,
    );
    hb.abort_all();
    drop(b);
    drop(nats);
    Ok(())
}
