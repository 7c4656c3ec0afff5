//! Benchmarks of issue 15 (conversations): the conversation list's latency on a large SQLite store,
//! beside a history page measured in the same run, and sustained `read` frames through a gateway.
//!
//! Everything runs in this process except `nats-server` (a child, through `testkit::NatsServer`):
//! the persister through `persister::run`, the gateway through `gateway::run`, clients as tasks.
//! Every phase is bounded in count and in time. Results are printed as `key=value` lines.
//!
//! ```text
//! conv_bench list  <messages> <requests/level>   # `conversations` p50/p99 at 1, 16, 64 requesters
//! conv_bench reads <rate/s> <seconds>            # `read` frames through a gateway at a paced rate
//! ```

// A benchmark binary prints its results on stdout for the operator.
#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use persister::store::{Record, SqliteStore, Store};
use protocol::conv::{CONV_SUBJECT, ConvReply, ConvRequest};
use protocol::group::{EventKind, GroupEvent};
use protocol::history::{ConvRef, HISTORY_SUBJECT, HistoryReply, HistoryRequest};
use protocol::subject::Conversation;
use protocol::{ClientMsgId, GroupId, StoredMessage, UserId};
use testkit::{NatsServer, TempDir};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

/// The user whose list is read: 990 threads and 10 groups.
const HUB: &str = "hub";
const HUB_THREADS: u64 = 990;
const HUB_GROUPS: u64 = 10;
/// Records per write while building the store.
const BUILD_BATCH: usize = 5000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let num = |i: usize, d: u64| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    match args.get(1).map(String::as_str) {
        Some("list") => list(num(2, 1_000_000), num(3, 2000) as usize).await,
        Some("reads") => reads(num(2, 5000), num(3, 20)).await,
        _ => bail!("usage: conv_bench list|reads [n] [m]"),
    }
}

fn u(s: &str) -> UserId {
    UserId::parse(s).expect("valid user")
}

fn message(conv: &Conversation, seq: u64, from: &UserId) -> Record {
    let (to, group) = match conv {
        Conversation::Dm { lo, hi } => (Some(if lo == from { hi } else { lo }.clone()), None),
        Conversation::Group(g) => (None, Some(g.clone())),
        Conversation::Room(_) => (None, None),
    };
    Record {
        conv: conv.clone(),
        seq,
        msg: StoredMessage {
            mentions: Vec::new(),
            from: from.clone(),
            room: None,
            to,
            group,
            event: None,
            text: format!("benchmark message number {seq} with some filler text to look like chat"),
            client_msg_id: ClientMsgId::parse(format!("c{seq}")).expect("valid id"),
            ts: 1_764_000_000_000 + seq,
        },
    }
}

fn created(group: &GroupId, seq: u64, users: Vec<UserId>) -> Record {
    Record {
        conv: Conversation::Group(group.clone()),
        seq,
        msg: StoredMessage {
            mentions: Vec::new(),
            from: users[0].clone(),
            room: None,
            to: None,
            group: Some(group.clone()),
            event: Some(Box::new(GroupEvent {
                kind: EventKind::Created,
                users,
                name: Some(format!("group {group}")),
                role: None,
                owner: None,
            })),
            text: String::new(),
            client_msg_id: ClientMsgId::parse(format!("ev-{seq}")).expect("valid id"),
            ts: 1_764_000_000_000 + seq,
        },
    }
}

/// The hub's conversations: its threads, then its groups.
fn hub_convs() -> Vec<Conversation> {
    let hub = u(HUB);
    let mut v: Vec<Conversation> = (0..HUB_THREADS)
        .map(|i| Conversation::dm(hub.clone(), u(&format!("h{i}"))).expect("distinct users"))
        .collect();
    v.extend(
        (0..HUB_GROUPS)
            .map(|i| Conversation::Group(GroupId::parse(format!("hg{i}")).expect("valid group"))),
    );
    v
}

/// Writes `n` messages into a fresh SQLite store the way the persister would: one tenth in the
/// hub's 1,000 conversations, the rest in 10,000 threads between other users.
async fn build(dir: &TempDir, n: u64) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let store = SqliteStore::open(dir.path().join("history.db")).await?;
    let hub = u(HUB);
    let convs = hub_convs();
    let mut batch = Vec::with_capacity(BUILD_BATCH);
    let mut seq = 0;
    for (i, conv) in convs.iter().enumerate() {
        if let Conversation::Group(g) = conv {
            seq += 1;
            let users = vec![hub.clone(), u(&format!("gm{i}a")), u(&format!("gm{i}b"))];
            batch.push(created(g, seq, users));
        }
    }
    let others: Vec<Conversation> = (0..10_000)
        .map(|j| Conversation::dm(u(&format!("o{j}")), u(&format!("o{j}x"))).expect("distinct"))
        .collect();
    for k in 0..n {
        seq += 1;
        let record = if k % 10 == 0 {
            let conv = &convs[((k / 10) % convs.len() as u64) as usize];
            let from = match conv {
                Conversation::Dm { lo, hi } => {
                    if k % 20 == 0 {
                        lo.clone()
                    } else {
                        hi.clone()
                    }
                }
                _ => u(&format!("gm{}a", (k / 10) % convs.len() as u64)),
            };
            message(conv, seq, &from)
        } else {
            let conv = &others[(k % 10_000) as usize];
            let Conversation::Dm { lo, .. } = conv else {
                unreachable!("threads")
            };
            message(conv, seq, lo)
        };
        batch.push(record);
        if batch.len() == BUILD_BATCH {
            store.write_batch(&batch).await?;
            batch.clear();
        }
    }
    store.write_batch(&batch).await?;
    Ok(started.elapsed())
}

/// Starts nats-server and creates stream `CHAT` as the gateway would.
async fn nats_with_stream() -> anyhow::Result<NatsServer> {
    let nats = NatsServer::start()?;
    let client = async_nats::connect(nats.url()).await?;
    let js = async_nats::jetstream::new(client);
    svc::nats::apply_chat_stream(&js, &gateway::config::StreamSettings::default()).await?;
    Ok(nats)
}

/// A persister on the store in `dir`; dropping the sender stops it.
async fn persister(nats: &NatsServer, dir: &TempDir) -> anyhow::Result<oneshot::Sender<()>> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let config = persister::Config {
        nats_url: nats.url(),
        store: persister::StoreConfig::Sqlite {
            path: dir.path().join("history.db"),
        },
        batch_wait: Duration::from_millis(20),
        ..persister::Config::default()
    };
    let (tx, rx) = oneshot::channel();
    tokio::spawn(persister::run(listener, config, async {
        let _ = rx.await;
    }));
    // Ready when the conversation service answers.
    let client = async_nats::connect(nats.url()).await?;
    let probe = serde_json::to_vec(&ConvRequest::GroupCounts { users: vec![] })?;
    for _ in 0..600 {
        if client
            .request(CONV_SUBJECT, probe.clone().into())
            .await
            .is_ok()
        {
            return Ok(tx);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("the conversation service did not start")
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

/// One request of the measured kind; returns the number of items it got.
async fn request(
    client: &async_nats::Client,
    subject: &'static str,
    body: &[u8],
) -> anyhow::Result<usize> {
    let reply = tokio::time::timeout(
        Duration::from_secs(10),
        client.request(subject, body.to_vec().into()),
    )
    .await??;
    if subject == CONV_SUBJECT {
        match serde_json::from_slice::<ConvReply>(&reply.payload)? {
            ConvReply::List { items, .. } => Ok(items.len()),
            other => bail!("unexpected {other:?}"),
        }
    } else {
        match serde_json::from_slice::<HistoryReply>(&reply.payload)? {
            HistoryReply::Page { messages, .. } => Ok(messages.len()),
            HistoryReply::Error { message, .. } => bail!("history: {message}"),
        }
    }
}

async fn list(n: u64, per_level: usize) -> anyhow::Result<()> {
    let dir = testkit::temp_dir("cbench-list")?;
    let built = build(&dir, n).await?;
    let db = std::fs::metadata(dir.path().join("history.db")).map_or(0, |m| m.len());
    println!(
        "store messages={n} hub_conversations={} build_s={:.1} sqlite_bytes={db}",
        HUB_THREADS + HUB_GROUPS,
        built.as_secs_f64()
    );
    let nats = nats_with_stream().await?;
    let _stop = persister(&nats, &dir).await?;
    let list = serde_json::to_vec(&ConvRequest::List {
        user: u(HUB),
        limit: 50,
        before: None,
    })?;
    // The peer: the newest history page of one of the hub's threads, through the history service.
    let page = serde_json::to_vec(&HistoryRequest {
        conv: ConvRef::from(&hub_convs()[0]),
        before: None,
        after: None,
        limit: 50,
    })?;
    let kinds: [(&str, &'static str, Arc<Vec<u8>>); 2] = [
        ("conversations", CONV_SUBJECT, Arc::new(list)),
        ("history_page", HISTORY_SUBJECT, Arc::new(page)),
    ];
    for conc in [1usize, 16, 64] {
        // Alternated, so both see the same machine.
        for (name, subject, body) in kinds.iter().cloned() {
            let per_task = per_level.div_ceil(conc);
            let started = Instant::now();
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..conc {
                // One NATS connection per requester, as separate gateways would have.
                let c = async_nats::connect(nats.url()).await?;
                let body = body.clone();
                tasks.spawn(async move {
                    let mut lat = Vec::with_capacity(per_task);
                    for _ in 0..per_task {
                        let t0 = Instant::now();
                        let got = request(&c, subject, &body).await?;
                        lat.push(t0.elapsed());
                        anyhow::ensure!(got == 50, "{subject}: {got} items");
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
            println!(
                "latency kind={name} concurrency={conc} requests={} p50_ms={:.2} p99_ms={:.2} max_ms={:.2} throughput_rps={:.0}",
                all.len(),
                pct(&all, 0.50),
                pct(&all, 0.99),
                pct(&all, 1.0),
                all.len() as f64 / wall.as_secs_f64()
            );
        }
    }
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
    let (ws, _) = tokio_tungstenite::connect_async(req).await?;
    Ok(ws)
}

/// The next frame of type `ty`, skipping others.
async fn next_of(ws: &mut Ws, ty: &str, t: Duration) -> anyhow::Result<serde_json::Value> {
    let deadline = Instant::now() + t;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await? {
            Some(Ok(Message::Text(t))) => {
                let v: serde_json::Value = serde_json::from_str(&t)?;
                if v["type"] == ty || v["type"] == "error" {
                    return Ok(v);
                }
            }
            Some(Ok(Message::Close(c))) => bail!("closed: {c:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => bail!("ws: {e}"),
            None => bail!("ended"),
        }
    }
}

/// Readers per thread pair and messages per thread for the reads run.
const READERS: u64 = 500;

async fn reads(rate: u64, secs: u64) -> anyhow::Result<()> {
    // Each reader has one thread with enough messages that every read moves its position by one.
    let per_reader = rate * secs / READERS + 10;
    let dir = testkit::temp_dir("cbench-reads")?;
    let nats = nats_with_stream().await?;
    let _stop = persister(&nats, &dir).await?;
    let signer = token::Signer::generate("liaotian");
    let keys = token::KeySet::new("liaotian");
    keys.insert(signer.kid().to_owned(), signer.public_key());
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let config = gateway::Config {
        nats_url: nats.url(),
        rate_per_sec: 100_000.0,
        rate_burst: 100_000.0,
        user_sends_per_sec: 100_000.0,
        user_send_burst: 100_000.0,
        ..gateway::Config::default()
    };
    let (_gw_stop, gw_rx) = oneshot::channel::<()>();
    tokio::spawn(gateway::run(listener, config, keys, async {
        let _ = gw_rx.await;
    }));
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    // The writers fill the threads through the gateway (JetStream, then the persister).
    let started = Instant::now();
    let mut fills = tokio::task::JoinSet::new();
    for i in 0..READERS {
        let token = signer.issue(&u(&format!("w{i}")), now, 3600);
        fills.spawn(async move {
            let mut ws = ws_connect(addr, &token).await?;
            let mut seqs = Vec::with_capacity(per_reader as usize);
            for k in 0..per_reader {
                let f = serde_json::json!({"type":"send","to":format!("r{i}"),"text":"x","client_msg_id":format!("m{k}")});
                ws.send(Message::text(f.to_string())).await?;
                let ack = next_of(&mut ws, "ack", Duration::from_secs(30)).await?;
                seqs.push(ack["seq"].as_u64().context("ack seq")?);
            }
            Ok::<_, anyhow::Error>((i, seqs))
        });
    }
    let mut threads = vec![Vec::new(); READERS as usize];
    while let Some(r) = fills.join_next().await {
        let (i, seqs) = r??;
        threads[i as usize] = seqs;
    }
    println!(
        "filled threads={READERS} messages={} fill_s={:.1}",
        READERS * per_reader,
        started.elapsed().as_secs_f64()
    );
    // Wait until the persister has the newest of each (one probe per thread).
    let client = async_nats::connect(nats.url()).await?;
    let deadline = Instant::now() + Duration::from_secs(300);
    for (i, seqs) in threads.iter().enumerate() {
        let req = serde_json::to_vec(&ConvRequest::State {
            user: u(&format!("r{i}")),
            conv: ConvRef::from(
                &Conversation::dm(u(&format!("w{i}")), u(&format!("r{i}"))).context("pair")?,
            ),
        })?;
        loop {
            let reply = client.request(CONV_SUBJECT, req.clone().into()).await?;
            if let ConvReply::State { state, .. } = serde_json::from_slice(&reply.payload)?
                && state.unread == seqs.len() as u64
            {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "persister did not catch up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Each reader reads its thread one message further, paced to `rate / READERS` per second.
    let interval = Duration::from_secs_f64(READERS as f64 / rate as f64);
    let n_reads = (rate * secs / READERS) as usize;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, seqs) in threads.into_iter().enumerate() {
        let token = signer.issue(&u(&format!("r{i}")), now, 3600);
        tasks.spawn(async move {
            let mut ws = ws_connect(addr, &token).await?;
            next_of(&mut ws, "welcome", Duration::from_secs(20)).await?;
            let mut lat = Vec::with_capacity(n_reads);
            let mut late = 0u32;
            let t0 = Instant::now() + interval.mul_f64((i as f64) / READERS as f64);
            for (k, seq) in seqs.iter().take(n_reads).enumerate() {
                let due = t0 + interval * k as u32;
                if Instant::now() > due + interval {
                    late += 1;
                }
                tokio::time::sleep_until(due).await;
                let f = serde_json::json!({"type":"read","with":format!("w{i}"),"seq":seq});
                let sent = Instant::now();
                ws.send(Message::text(f.to_string())).await?;
                let r = next_of(&mut ws, "read", Duration::from_secs(30)).await?;
                anyhow::ensure!(r["type"] == "read", "{r}");
                anyhow::ensure!(r["read_seq"] == *seq, "read moved to {r}, not {seq}");
                lat.push(sent.elapsed());
            }
            Ok::<_, anyhow::Error>((lat, late))
        });
    }
    let mut all = Vec::new();
    let mut late = 0;
    while let Some(r) = tasks.join_next().await {
        let (lat, l) = r??;
        all.extend(lat);
        late += l;
    }
    let wall = started.elapsed();
    all.sort();
    println!(
        "reads offered_per_s={rate} done={} achieved_per_s={:.0} p50_ms={:.2} p99_ms={:.2} max_ms={:.2} late_sends={late}",
        all.len(),
        all.len() as f64 / wall.as_secs_f64(),
        pct(&all, 0.5),
        pct(&all, 0.99),
        pct(&all, 1.0)
    );
    Ok(())
}
