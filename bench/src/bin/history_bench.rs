//! Benchmarks of issue 3 (persister and history): SQLite ingest and backlog catch-up, history-page
//! latency through the NATS service, request coalescing, and the 5,000-client resume storm.
//!
//! Everything runs in this process except `nats-server` (a child, through `testkit::NatsServer`):
//! the persister through `persister::run`, the gateway through `gateway::run`, the clients as tasks.
//! Every phase is bounded in count and in time. Results are printed as `key=value` lines.
//!
//! ```text
//! history_bench ingest  <messages> <batch_max>          # backlog catch-up into SQLite
//! history_bench latency <room_messages> <requests/level> # p50/p99 at 1, 16, 64 requesters + coalescing
//! history_bench storm   <clients> <missed>               # resume storm, persister up and down
//! ```

// A benchmark binary prints its results on stdout for the operator.
#![allow(clippy::print_stdout)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use anyhow::{Context, bail};
use async_nats::jetstream;
use futures_util::{SinkExt, StreamExt};
use protocol::history::{ConvRef, HISTORY_SUBJECT, HistoryReply, HistoryRequest};
use protocol::subject::Conversation;
use protocol::{ClientMsgId, RoomId, StoredMessage, UserId};
use testkit::{NatsServer, TempDir};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

/// Publishes waiting for their ack at once while filling the stream.
const PUBLISH_WINDOW: usize = 1024;
/// Longest catch-up that is waited for.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(900);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let num = |i: usize, d: usize| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    match args.get(1).map(String::as_str) {
        Some("ingest") => ingest(num(2, 1_000_000) as u64, num(3, 500)).await,
        Some("latency") => latency(num(2, 100_000) as u64, num(3, 2000)).await,
        Some("storm") => storm(num(2, 5000), num(3, 200) as u64).await,
        _ => bail!("usage: history_bench ingest|latency|storm [n] [m]"),
    }
}

/// A persister running in this process; dropping it aborts it, as a crash would.
struct Persister {
    http: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), persister::Error>>,
}

impl Persister {
    async fn start(nats: &NatsServer, dir: &TempDir, batch_max: usize) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let http = listener.local_addr()?;
        let config = persister::Config {
            nats_url: nats.url(),
            store: persister::StoreConfig::Sqlite {
                path: dir.path().join("history.db"),
            },
            batch_max,
            batch_wait: Duration::from_millis(20),
            ..persister::Config::default()
        };
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(persister::run(listener, config, async {
            let _ = rx.await;
        }));
        Ok(Self {
            http,
            stop: Some(tx),
            task,
        })
    }

    async fn shutdown(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut self.task).await;
    }

    async fn metric(&self, name: &str) -> anyhow::Result<f64> {
        metric(self.http, name).await
    }
}

impl Drop for Persister {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one unlabelled metric from `http://<addr>/metrics` (plain HTTP/1.0, no client crate).
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

fn room_msg(room: &RoomId, i: u64) -> StoredMessage {
    StoredMessage {
        mentions: Vec::new(),
        from: UserId::parse(format!("u{}", i % 1000)).expect("valid user"),
        room: Some(room.clone()),
        to: None,
        group: None,
        event: None,
        text: format!("benchmark message number {i} with some filler text to look like chat"),
        client_msg_id: ClientMsgId::parse(format!("c{i}")).expect("valid id"),
        ts: 1_764_000_000_000 + i,
    }
}

/// Starts nats-server and creates stream `CHAT` as the gateway would.
async fn nats_with_stream() -> anyhow::Result<(NatsServer, async_nats::Client, jetstream::Context)>
{
    let nats = NatsServer::start()?;
    let client = async_nats::connect(nats.url()).await?;
    let js = jetstream::new(client.clone());
    svc::nats::apply_chat_stream(&js, &stream_settings()).await?;
    Ok((nats, client, js))
}

/// The stream of these benchmarks: 4 GiB, for the large fills. A gateway started on it must have
/// the same settings, or it refuses to start.
fn stream_settings() -> gateway::config::StreamSettings {
    gateway::config::StreamSettings {
        max_bytes: 4 << 30,
        ..Default::default()
    }
}

/// Publishes `n` room messages spread over `rooms` rooms with many acks outstanding.
async fn fill(js: &jetstream::Context, n: u64, rooms: &[RoomId]) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let window = std::env::var("PUBLISH_WINDOW")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(PUBLISH_WINDOW);
    let mut acks = VecDeque::with_capacity(window);
    for i in 0..n {
        let room = &rooms[(i % rooms.len() as u64) as usize];
        let subject = Conversation::Room(room.clone()).ingest_subject();
        let ack = js
            .publish(subject, room_msg(room, i).encode().into())
            .await?;
        acks.push_back(ack);
        if acks.len() >= window {
            acks.pop_front().expect("non-empty").await?;
        }
    }
    for a in acks {
        a.await?;
    }
    Ok(t.elapsed())
}

/// Waits until the persister consumer has nothing pending or unacked; returns its store count.
async fn caught_up(js: &jetstream::Context, p: &Persister, n: u64) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let mut last_print = Instant::now();
    loop {
        let persisted = p
            .metric("persister_messages_persisted_total")
            .await
            .unwrap_or(0.0);
        if persisted as u64 >= n {
            let mut stream = js.get_stream("CHAT").await?;
            let _ = stream.info().await?;
            let mut c: jetstream::consumer::PullConsumer = stream
                .get_consumer("persister")
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let info = c.info().await?;
            if info.num_pending == 0 && info.num_ack_pending == 0 {
                return Ok(t.elapsed());
            }
        }
        if last_print.elapsed() > Duration::from_secs(10) {
            last_print = Instant::now();
            eprintln!(
                "  .. {:.0}s persisted={persisted}",
                t.elapsed().as_secs_f64()
            );
        }
        if t.elapsed() > CATCH_UP_LIMIT {
            bail!("not caught up after {CATCH_UP_LIMIT:?} ({persisted} of {n})");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn ingest(n: u64, batch_max: usize) -> anyhow::Result<()> {
    let (nats, _client, js) = nats_with_stream().await?;
    let rooms: Vec<RoomId> = (0..100)
        .map(|i| RoomId::parse(format!("r{i}")).expect("valid room"))
        .collect();
    let fill_time = fill(&js, n, &rooms).await?;
    println!(
        "fill messages={n} secs={:.2} publish_rate={:.0}",
        fill_time.as_secs_f64(),
        n as f64 / fill_time.as_secs_f64()
    );
    let dir = testkit::temp_dir("hbench-ingest")?;
    let p = Persister::start(&nats, &dir, batch_max).await?;
    let took = caught_up(&js, &p, n).await?;
    let batches = p.metric("persister_batches_total").await?;
    let persisted = p.metric("persister_messages_persisted_total").await?;
    println!(
        "ingest batch_max={batch_max} messages={n} catch_up_secs={:.2} rate={:.0} persisted={persisted} batches={batches} avg_batch={:.0}",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64(),
        persisted / batches.max(1.0)
    );
    let db = std::fs::metadata(dir.path().join("history.db")).map_or(0, |m| m.len());
    println!("sqlite_bytes={db}");
    p.shutdown().await;
    Ok(())
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

/// A small deterministic generator, so runs are repeatable without a `rand` dependency.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

async fn history_request(
    client: &async_nats::Client,
    req: &HistoryRequest,
) -> anyhow::Result<usize> {
    let body = serde_json::to_vec(req)?;
    let reply = tokio::time::timeout(
        Duration::from_secs(10),
        client.request(HISTORY_SUBJECT, body.into()),
    )
    .await??;
    match serde_json::from_slice::<HistoryReply>(&reply.payload)? {
        HistoryReply::Page { messages, .. } => Ok(messages.len()),
        HistoryReply::Error { code, message } => bail!("history error {code:?}: {message}"),
    }
}

async fn latency(n: u64, per_level: usize) -> anyhow::Result<()> {
    let (nats, _client, js) = nats_with_stream().await?;
    let room = RoomId::parse("hist").expect("valid room");
    fill(&js, n, std::slice::from_ref(&room)).await?;
    let dir = testkit::temp_dir("hbench-latency")?;
    let p = Persister::start(&nats, &dir, 2000).await?;
    caught_up(&js, &p, n).await?;
    let db = std::fs::metadata(dir.path().join("history.db")).map_or(0, |m| m.len());
    println!("room_messages={n} sqlite_bytes={db}");

    for conc in [1usize, 16, 64] {
        let reads0 = p.metric("persister_store_reads_total").await?;
        let reqs0 = p.metric("persister_history_requests_total").await?;
        let per_task = per_level.div_ceil(conc);
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for t in 0..conc {
            // One NATS connection per requester, as separate gateways would have.
            let c = async_nats::connect(nats.url()).await?;
            let room = room.clone();
            tasks.spawn(async move {
                let mut rng = XorShift(0x9E37_79B9_7F4A_7C15 ^ (t as u64 + 1));
                let mut lat = Vec::with_capacity(per_task);
                for _ in 0..per_task {
                    let before = 51 + rng.next() % (n - 50);
                    let req = HistoryRequest {
                        conv: ConvRef::Room(room.clone()),
                        before: Some(before),
                        after: None,
                        limit: 50,
                    };
                    let t0 = Instant::now();
                    let got = history_request(&c, &req).await?;
                    lat.push(t0.elapsed());
                    anyhow::ensure!(got == 50, "page of {got}");
                }
                Ok::<_, anyhow::Error>(lat)
            });
        }
        let mut all = Vec::new();
        while let Some(r) = tasks.join_next().await {
            all.extend(r??);
        }
        let wall = started.elapsed();
        all.sort();
        let reads = p.metric("persister_store_reads_total").await? - reads0;
        let reqs = p.metric("persister_history_requests_total").await? - reqs0;
        println!(
            "latency concurrency={conc} requests={} p50_ms={:.2} p99_ms={:.2} max_ms={:.2} throughput_rps={:.0} store_reads={reads} history_requests={reqs}",
            all.len(),
            pct(&all, 0.50),
            pct(&all, 0.99),
            pct(&all, 1.0),
            all.len() as f64 / wall.as_secs_f64()
        );
    }

    // Coalescing: N identical requests sent at once over N connections.
    let conns: Vec<async_nats::Client> = {
        let mut v = Vec::new();
        for _ in 0..64 {
            v.push(async_nats::connect(nats.url()).await?);
        }
        v
    };
    for identical in [16usize, 64, 256, 1000] {
        for round in 0..3u64 {
            let reads0 = p.metric("persister_store_reads_total").await?;
            let reqs0 = p.metric("persister_history_requests_total").await?;
            let coal0 = p.metric("persister_history_coalesced_total").await?;
            let req = Arc::new(HistoryRequest {
                conv: ConvRef::Room(room.clone()),
                before: Some(n / 2 + round * 1000 + identical as u64),
                after: None,
                limit: 50,
            });
            let barrier = Arc::new(tokio::sync::Barrier::new(identical));
            let mut tasks = tokio::task::JoinSet::new();
            for i in 0..identical {
                let (c, req, barrier) =
                    (conns[i % conns.len()].clone(), req.clone(), barrier.clone());
                tasks.spawn(async move {
                    barrier.wait().await;
                    let t0 = Instant::now();
                    history_request(&c, &req).await.map(|_| t0.elapsed())
                });
            }
            let mut lat = Vec::new();
            while let Some(r) = tasks.join_next().await {
                lat.push(r??);
            }
            lat.sort();
            let reads = p.metric("persister_store_reads_total").await? - reads0;
            let reqs = p.metric("persister_history_requests_total").await? - reqs0;
            let coal = p.metric("persister_history_coalesced_total").await? - coal0;
            println!(
                "coalesce identical={identical} round={round} history_requests={reqs} store_reads={reads} coalesced={coal} p50_ms={:.2} p99_ms={:.2}",
                pct(&lat, 0.5),
                pct(&lat, 0.99)
            );
        }
    }
    p.shutdown().await;
    Ok(())
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws_connect(addr: SocketAddr, token: &str) -> anyhow::Result<Ws> {
    let mut req = format!("ws://{addr}/ws").into_client_request()?;
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    req.headers_mut()
        .insert("sec-websocket-protocol", "chat.v1".parse()?);
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await?;
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

/// What one resuming client saw.
#[derive(Default)]
struct Resumed {
    got: usize,
    dup: usize,
    out_of_range: usize,
    recovered: bool,
    done_after: Option<Duration>,
    error: Option<String>,
}

async fn storm(clients: usize, missed: u64) -> anyhow::Result<()> {
    let (nats, _client, js) = nats_with_stream().await?;
    let signer = token::Signer::generate("liaotian");
    let keys = token::KeySet::new("liaotian");
    keys.insert(signer.kid().to_owned(), signer.public_key());
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let config = gateway::Config {
        nats_url: nats.url(),
        max_connections: clients + 100,
        stream: stream_settings(),
        ..gateway::Config::default()
    };
    let (gw_tx, gw_rx) = oneshot::channel::<()>();
    let gw = tokio::spawn(gateway::run(listener, config, keys, async {
        let _ = gw_rx.await;
    }));
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let room = RoomId::parse("storm").expect("valid room");
    let dir = testkit::temp_dir("hbench-storm")?;
    // Some older history first, so the store is not trivially small.
    fill(&js, 10_000, std::slice::from_ref(&room)).await?;

    for persister_up in [true, false] {
        let p = if persister_up {
            let p = Persister::start(&nats, &dir, 2000).await?;
            let total = js.get_stream("CHAT").await?.info().await?.state.messages;
            caught_up(&js, &p, total).await.ok();
            Some(p)
        } else {
            None
        };
        // Connect every client first (bounded concurrency), then resume all at once.
        let t = Instant::now();
        let sem = Arc::new(tokio::sync::Semaphore::new(200));
        let mut set = tokio::task::JoinSet::new();
        for i in 0..clients {
            let token = signer.issue(
                &UserId::parse(format!("s{i}")).expect("valid user"),
                token::now_secs(),
                3600,
            );
            let sem = sem.clone();
            set.spawn(async move {
                let _permit = sem.acquire_owned().await;
                ws_connect(addr, &token).await
            });
        }
        let mut socks = Vec::with_capacity(clients);
        while let Some(r) = set.join_next().await {
            socks.push(r??);
        }
        println!(
            "storm persister_up={persister_up} connected={} connect_secs={:.1}",
            socks.len(),
            t.elapsed().as_secs_f64()
        );
        let mut stream = js.get_stream("CHAT").await?;
        let since = stream.info().await?.state.last_sequence;
        let base = stream.info().await?.state.messages;
        fill(&js, missed, std::slice::from_ref(&room)).await?;
        let last = stream.info().await?.state.last_sequence;
        anyhow::ensure!(last - since == missed, "stream holds other messages");
        let _ = base;

        let reads0 = match &p {
            Some(p) => Some((
                p.metric("persister_store_reads_total").await?,
                p.metric("persister_history_requests_total").await?,
            )),
            None => None,
        };
        let go = Arc::new(tokio::sync::Barrier::new(socks.len() + 1));
        let start = Arc::new(std::sync::OnceLock::<Instant>::new());
        let mut set = tokio::task::JoinSet::new();
        for (i, mut ws) in socks.into_iter().enumerate() {
            let (go, start, room) = (go.clone(), start.clone(), room.clone());
            set.spawn(async move {
                let mut r = Resumed::default();
                go.wait().await;
                let t0 = *start.get().expect("start set");
                let frame = serde_json::json!({"type":"join","id":format!("j{i}"),"room":room.as_str(),"since":since});
                if let Err(e) = ws.send(Message::text(frame.to_string())).await {
                    r.error = Some(e.to_string());
                    return (r, ws);
                }
                let mut seen = vec![false; missed as usize];
                let deadline = Duration::from_secs(120);
                while r.got < missed as usize {
                    match next_json(&mut ws, deadline.saturating_sub(t0.elapsed())).await {
                        Ok(v) if v["type"] == "joined" => r.recovered = v["recovered"] == true,
                        Ok(v) if v["type"] == "message" => {
                            let seq = v["seq"].as_u64().unwrap_or(0);
                            if seq <= since || seq > last {
                                r.out_of_range += 1;
                            } else if std::mem::replace(&mut seen[(seq - since - 1) as usize], true) {
                                r.dup += 1;
                            } else {
                                r.got += 1;
                            }
                        }
                        Ok(v) if v["type"] == "error" => {
                            r.error = Some(v.to_string());
                            return (r, ws);
                        }
                        Ok(_) => {}
                        Err(e) => {
                            r.error = Some(e.to_string());
                            return (r, ws);
                        }
                    }
                }
                r.done_after = Some(t0.elapsed());
                // Anything more within a short while would be a duplicate.
                while let Ok(v) = next_json(&mut ws, Duration::from_millis(300)).await {
                    if v["type"] == "message" {
                        r.dup += 1;
                    }
                }
                (r, ws)
            });
        }
        start.set(Instant::now()).ok();
        go.wait().await;
        let mut results = Vec::new();
        let mut keep = Vec::new();
        while let Some(j) = set.join_next().await {
            let (r, ws) = j?;
            results.push(r);
            keep.push(ws);
        }
        let mut done: Vec<Duration> = results.iter().filter_map(|r| r.done_after).collect();
        done.sort();
        let lost: usize = results.iter().map(|r| missed as usize - r.got).sum();
        let dup: usize = results.iter().map(|r| r.dup).sum();
        let oor: usize = results.iter().map(|r| r.out_of_range).sum();
        let errors: Vec<&String> = results.iter().filter_map(|r| r.error.as_ref()).collect();
        let recovered = results.iter().filter(|r| r.recovered).count();
        println!(
            "storm persister_up={persister_up} clients={clients} missed={missed} caught_up={} all_caught_up_secs={:.2} p50_s={:.2} p99_s={:.2} lost={lost} duplicated={dup} out_of_range={oor} recovered_true={recovered} errors={}",
            done.len(),
            done.last().map_or(f64::NAN, Duration::as_secs_f64),
            pct(&done, 0.5) / 1000.0,
            pct(&done, 0.99) / 1000.0,
            errors.len()
        );
        if let Some(e) = errors.first() {
            println!("  first error: {e}");
        }
        if let (Some(p), Some((r0, q0))) = (&p, reads0) {
            println!(
                "storm history_requests={} store_reads={}",
                p.metric("persister_history_requests_total").await? - q0,
                p.metric("persister_store_reads_total").await? - r0
            );
        }
        for mut ws in keep {
            let _ = ws.close(None).await;
        }
        if let Some(p) = p {
            p.shutdown().await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let _ = gw_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), gw).await;
    drop(nats);
    Ok(())
}
