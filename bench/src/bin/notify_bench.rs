//! The notifier's throughput, and what it costs chat: auth in-process with the notifier, Redis and
//! the local fake WeChat API (so WeChat's own time is not in the figures), a gateway in-process,
//! one nats-server.
//!
//! 1. **send**: `recipients` offline users, each with a grant, get one direct message each; the
//!    time until every one of them was sent gives decisions (with a WeChat send) per second.
//! 2. **online**: 200 connected users get `5 × recipients` direct messages round robin; every
//!    decision is "online, skip" (the most common one), per second.
//! 3. **pairs**: `pairs` pairs of connected users send each other direct messages at 10 msgs/s
//!    each for `secs` seconds, alternately without and with a notifier (off, on, off, on): send →
//!    delivery latency and the CPU of this process (gateway and clients) per delivered message, so
//!    each "on" run compares with the "off" run beside it. The notifier then runs as its own
//!    process (`auth` from the same target directory, with a template), as in a deployment, and
//!    its CPU per decision is reported apart; so does the webhook relay's (`admin` with
//!    `WEBHOOK_URL` at a local endpoint that takes every event). Every message of an "on" run is
//!    decided and relayed.
//!
//! ```text
//! notify_bench [recipients] [pairs] [secs]
//! ```
//!
//! A persister (its own process, SQLite) runs in every round, as in any deployment.
//!
//! `NOTIFY_BENCH_CPUS=split` places the parts as a deployment does, on a 2-core machine: chat (this
//! process and nats-server) on CPU 0, the persister, the notifier, the relay and the webhook
//! endpoint on CPU 1, as if on hosts of their own. The off and on rounds are then compared for what the two cost chat
//! through nats-server alone. Unset, nothing is pinned and everything shares both cores.
//!
//! `NOTIFY_BENCH_ONLY=notifier` or `=relay` runs one of the two in the "on" rounds;
//! `=cursor` runs neither, but `bench/scripts/cursor_reader.py` (Python with `nats-py`), a reader
//! of stream `CHAT` without a consumer (docs/benchmarks.md, eleventh round, run L).

// A benchmark binary prints its results on stdout for the operator.
#![allow(clippy::print_stdout)]

use std::time::Duration;
use tokio::time::Instant;

use anyhow::Context;
use auth::config::{Notify, NotifyKind, Secret, Template, WeChat, parse_fields};
use auth::fake_wechat::FakeWeChat;
use futures_util::future::join_all;
use serde_json::{Value, json};
use testkit::{NatsServer, RedisServer, WsClient};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let arg = |i: usize, d: usize| {
        std::env::args()
            .nth(i)
            .and_then(|a| a.parse().ok())
            .unwrap_or(d)
    };
    let (recipients, pairs, secs) = (arg(1, 2000), arg(2, 100), arg(3, 8));
    let _ = rustls::crypto::ring::default_provider().install_default();
    let nats = NatsServer::start()?;
    let redis = RedisServer::start()?;
    let fake = FakeWeChat::start().await;
    let notify = Notify {
        templates: vec![Template {
            kind: NotifyKind::Dm,
            id: "tmpl-dm".into(),
            fields: parse_fields("thing1=sender,thing2=text,time3=time")
                .map_err(anyhow::Error::msg)?,
        }],
        offline_after: Duration::from_secs(30),
        page: "pages/chat/chat".into(),
        miniprogram_state: "formal".into(),
    };
    let config = auth::Config {
        wechat: Some(WeChat {
            appid: "wx-bench".into(),
            secret: Secret("bench-secret".into()),
            api_base: fake.base_url(),
            timeout: Duration::from_secs(2),
            retry_delay: Duration::from_millis(50),
        }),
        user_id_secret: Some(Secret(b"bench-user-id-secret".to_vec())),
        redis_url: Some(Secret(redis.url())),
        nats_url: Some(nats.url()),
        login_per_ip_per_min: 10_000_000,
        login_per_code: 1000,
        dev_login: true,
        notify: Some(notify.clone()),
        ..auth::Config::default()
    };
    let state = auth::start(config).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let auth_url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(auth::serve(listener, state.clone(), std::future::pending()));
    let gw_config = gateway::Config {
        nats_url: nats.url(),
        keys: gateway::config::KeySource::AuthUrl(auth_url.clone()),
        rate_per_sec: 100_000.0,
        rate_burst: 100_000.0,
        user_sends_per_sec: 100_000.0,
        user_send_burst: 100_000.0,
        ..gateway::Config::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let gw = listener.local_addr()?;
    tokio::spawn(gateway::run(
        listener,
        gw_config,
        token::KeySet::new("liaotian"),
        std::future::pending(),
    ));
    let http = reqwest::Client::new();
    let sender_token = login(&http, &auth_url, json!({"dev_user": "sender"})).await?;
    let mut sender = connect(gw, &sender_token).await?;
    // The notifier's consumer exists once auth saw stream CHAT, which the gateway created.
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    for _ in 0..300 {
        if let Ok(s) = js.get_stream("CHAT").await
            && s.consumer_info(auth::notify::worker::CONSUMER)
                .await
                .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // 1. Offline recipients with a grant each: every decision sends.
    let mut users = Vec::with_capacity(recipients);
    for i in 0..recipients {
        let (user, token) =
            login_user(&http, &auth_url, json!({"code": format!("ok-r{i}")})).await?;
        let r: Value = http
            .post(format!("{auth_url}/api/notify/grants"))
            .bearer_auth(&token)
            .json(&json!({"template_ids": ["tmpl-dm"]}))
            .send()
            .await?
            .json()
            .await?;
        anyhow::ensure!(r["code"] == 0, "grant: {r}");
        users.push(user);
    }
    let m = state.metrics.clone();
    let t = Instant::now();
    let frames: Vec<Value> = users
        .iter()
        .enumerate()
        .map(|(i, u)| json!({"type":"send","to":u,"text":"您有一条新消息","client_msg_id":format!("s{i}")}))
        .collect();
    send_all(&mut sender, frames).await?;
    wait_until(
        || m.notify_sent.get() >= recipients as u64,
        Duration::from_secs(120),
    )
    .await?;
    let send_rate = recipients as f64 / t.elapsed().as_secs_f64();
    println!(
        "send: {recipients} decisions with a WeChat send in {:.2} s: {send_rate:.0} decisions/s (fake sends answered: {})",
        t.elapsed().as_secs_f64(),
        fake.sent().len()
    );

    // 2. Online recipients: every decision is "online".
    let online: Vec<String> = (0..200).map(|i| format!("on{i}")).collect();
    let mut conns = Vec::new();
    for u in &online {
        let token = login(&http, &auth_url, json!({"dev_user": u})).await?;
        conns.push(connect(gw, &token).await?);
    }
    let n = recipients * 5;
    let skipped = || m.notify_skipped.with_label_values(&["online"]).get();
    let before = skipped();
    let t = Instant::now();
    let frames: Vec<Value> = (0..n)
        .map(|i| json!({"type":"send","to":online[i % online.len()],"text":"hi","client_msg_id":format!("o{i}")}))
        .collect();
    send_all(&mut sender, frames).await?;
    wait_until(|| skipped() - before >= n as u64, Duration::from_secs(120)).await?;
    let online_rate = n as f64 / t.elapsed().as_secs_f64();
    println!(
        "online: {n} decisions (skip: online) in {:.2} s: {online_rate:.0} decisions/s",
        t.elapsed().as_secs_f64()
    );
    drop(conns);

    // 3. Pairs, with the notifier off and on, alternately.
    let mut clients = Vec::new();
    for i in 0..pairs {
        for side in ["a", "b"] {
            let token = login(&http, &auth_url, json!({"dev_user": format!("p{i}{side}")})).await?;
            clients.push(connect(gw, &token).await?);
        }
    }
    let mut clients: Vec<Option<WsClient>> = clients.into_iter().map(Some).collect();
    // From here the notifier runs as a process of its own, as it does beside the gateways in a
    // deployment: the in-process one stops, and each "on" round starts `auth` with a template.
    if let Some(h) = &state.notifier {
        h.abort();
    }
    let auth_bin = std::env::current_exe()?.with_file_name("auth");
    let admin_bin = std::env::current_exe()?.with_file_name("admin");
    anyhow::ensure!(
        admin_bin.exists(),
        "{} not found: build it with `cargo build --release -p admin`",
        admin_bin.display()
    );
    let nats_pid = nats.pid().context("nats-server pid")?;
    let split = std::env::var("NOTIFY_BENCH_CPUS").as_deref() == Ok("split");
    if split {
        for pid in [std::process::id(), nats_pid] {
            let ok = std::process::Command::new("taskset")
                .args(["-a", "-p", "-c", "0", &pid.to_string()])
                .stdout(std::process::Stdio::null())
                .status()
                .context("taskset")?
                .success();
            anyhow::ensure!(ok, "taskset could not pin pid {pid}");
        }
    }
    // The notifier, the relay and the endpoint: on CPU 1 when split.
    let reach = |bin: &std::path::Path| {
        if split {
            let mut c = std::process::Command::new("taskset");
            c.args(["-c", "1"]).arg(bin);
            c
        } else {
            std::process::Command::new(bin)
        }
    };
    // A persister in every round, as in any deployment (its consumer is part of what nats-server
    // does per message without the notifier and the relay); on CPU 1 when split, like the other
    // readers of the stream that run on hosts of their own.
    let persister_bin = std::env::current_exe()?.with_file_name("persister");
    anyhow::ensure!(
        persister_bin.exists(),
        "{} not found: build it with `cargo build --release -p persister`",
        persister_bin.display()
    );
    let history = std::env::temp_dir().join(format!("notify-bench-{}.db", std::process::id()));
    let persister_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut persister = reach(&persister_bin)
        .env("PERSISTER_LISTEN", format!("127.0.0.1:{persister_port}"))
        .env("NATS_URL", nats.url())
        .env("PERSISTER_STORE", format!("sqlite://{}", history.display()))
        .env("RUST_LOG", "warn")
        .spawn()
        .context("starting the persister")?;
    // The webhook endpoint, a process of its own (so its CPU is not this one's): takes every
    // event at once, and counts them in a file.
    let sink_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let sink_url = format!("http://127.0.0.1:{sink_port}/hook");
    let count_file =
        std::env::temp_dir().join(format!("notify-bench-hooks-{}", std::process::id()));
    let mut sink = reach(std::path::Path::new("python3"))
        .args([
            "-c",
            SINK,
            &sink_port.to_string(),
            &count_file.display().to_string(),
        ])
        .spawn()
        .context("starting the webhook sink (python3)")?;
    let hooks = {
        let f = count_file.clone();
        move || {
            std::fs::read_to_string(&f)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .unwrap_or(0)
        }
    };
    // `NOTIFY_BENCH_ONLY=notifier` or `=relay` runs one of the two in the "on" rounds; `=cursor`
    // runs neither but `bench/scripts/cursor_reader.py`, a reader of stream CHAT without a
    // consumer (batched direct gets, its position in a KV key): an experiment for issue 19.
    let only = std::env::var("NOTIFY_BENCH_ONLY").unwrap_or_default();
    let cursor_file = count_file.with_extension("cursor");
    if only == "cursor" {
        let mut chat = js.get_stream("CHAT").await?;
        let mut config = chat.info().await?.config.clone();
        config.allow_direct = true;
        js.update_stream(config).await?;
    }
    let mut rows = Vec::new();
    for (round, on) in [false, true, false, true].into_iter().enumerate() {
        // A fresh consumer for each "on" round, so it decides this round's messages only.
        let _ = js
            .delete_consumer_from_stream(auth::notify::worker::CONSUMER, "CHAT")
            .await;
        let _ = js.delete_consumer_from_stream("webhook", "CHAT").await;
        let mut child = None;
        let mut relay = None;
        let mut metrics_url = String::new();
        if on && only == "cursor" {
            let script =
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/cursor_reader.py");
            relay = Some(
                reach(std::path::Path::new("python3"))
                    .arg(script)
                    .arg(nats.url())
                    .arg(&cursor_file)
                    .spawn()
                    .context("starting the cursor reader (python3 with nats-py)")?,
            );
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        if on && !matches!(only.as_str(), "relay" | "cursor") {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            metrics_url = format!("http://127.0.0.1:{port}/metrics");
            child = Some(
                reach(&auth_bin)
                    .env("AUTH_LISTEN", format!("127.0.0.1:{port}"))
                    .env("AUTH_WECHAT_APPID", "wx-bench")
                    .env("AUTH_WECHAT_SECRET", "bench-secret")
                    .env("AUTH_WECHAT_API_BASE", fake.base_url())
                    .env("AUTH_USER_ID_SECRET", "bench-user-id-secret")
                    .env("AUTH_REDIS_URL", redis.url())
                    .env("AUTH_NATS_URL", nats.url())
                    .env("AUTH_NOTIFY_DM_TEMPLATE", "tmpl-dm")
                    .env("RUST_LOG", "warn")
                    .spawn()
                    .context("starting the notifier")?,
            );
        }
        if on && !matches!(only.as_str(), "notifier" | "cursor") {
            let admin_port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            relay = Some(
                reach(&admin_bin)
                    .env("ADMIN_LISTEN", format!("127.0.0.1:{admin_port}"))
                    .env("ADMIN_KEYS", "bench-admin-key-0123456789abcdef0123")
                    .env("NATS_URL", nats.url())
                    .env("WEBHOOK_URL", &sink_url)
                    .env("WEBHOOK_SECRET", "bench-webhook-secret-0123456789abcdef")
                    // `NOTIFY_BENCH_WEBHOOK_EVENTS=membership`: the relay reads every message
                    // and sends none of them (the cost of its consumer alone).
                    .env(
                        "WEBHOOK_EVENTS",
                        std::env::var("NOTIFY_BENCH_WEBHOOK_EVENTS")
                            .unwrap_or_else(|_| "message,membership".into()),
                    )
                    .env("RUST_LOG", "warn")
                    .spawn()
                    .context("starting the webhook relay")?,
            );
        }
        if on && only != "cursor" {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Ok(s) = js.get_stream("CHAT").await
                    && (only == "relay"
                        || s.consumer_info(auth::notify::worker::CONSUMER)
                            .await
                            .is_ok())
                    && (only == "notifier" || s.consumer_info("webhook").await.is_ok())
                {
                    break;
                }
                anyhow::ensure!(Instant::now() < deadline, "the notifier did not start");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let pid = child.as_ref().map(std::process::Child::id);
        let rpid = relay.as_ref().map(std::process::Child::id);
        let rcpu0 = rpid
            .and_then(bench::procstat::sample)
            .map_or(0.0, |s| s.cpu_s);
        let hooks0 = hooks();
        let nats0 = bench::procstat::sample(nats_pid).map_or(0.0, |s| s.cpu_s);
        let ncpu0 = pid
            .and_then(bench::procstat::sample)
            .map_or(0.0, |s| s.cpu_s);
        let cpu0 = cpu();
        let (lat, delivered) = pairs_round(&mut clients, secs, round).await?;
        let cpu_s = cpu() - cpu0;
        let ncpu = pid
            .and_then(bench::procstat::sample)
            .map_or(0.0, |s| s.cpu_s)
            - ncpu0;
        let rcpu = rpid
            .and_then(bench::procstat::sample)
            .map_or(0.0, |s| s.cpu_s)
            - rcpu0;
        // The relay finishes this round's events before they are counted.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let relayed = hooks().saturating_sub(hooks0);
        let nats_cpu = bench::procstat::sample(nats_pid).map_or(0.0, |s| s.cpu_s) - nats0;
        let decided = if !metrics_url.is_empty() {
            let text = http.get(&metrics_url).send().await?.text().await?;
            text.lines()
                .find(|l| l.starts_with("auth_notify_skipped_total{reason=\"online\"}"))
                .and_then(|l| l.split_whitespace().last())
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0) as u64
        } else {
            0
        };
        if on && only == "cursor" {
            println!(
                "cursor reader: {} messages read in all so far",
                std::fs::read_to_string(&cursor_file).unwrap_or_default()
            );
        }
        for mut c in [child, relay].into_iter().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let q = |p: f64| lat[((lat.len() as f64 - 1.0) * p) as usize];
        let per = |s: f64| s * 1e6 / delivered.max(1) as f64;
        println!(
            "pairs notifier_and_relay={} pairs={pairs} secs={secs} delivered={delivered} decided={decided} relayed={relayed} p50_ms={:.2} p99_ms={:.2} gateway_and_clients_cpu_us_per_delivery={:.1} nats_cpu_us_per_delivery={:.1} notifier_cpu_us_per_decision={:.1} relay_cpu_us_per_event={:.1}",
            if on { "on" } else { "off" },
            q(0.5),
            q(0.99),
            per(cpu_s),
            per(nats_cpu),
            ncpu * 1e6 / decided.max(1) as f64,
            rcpu * 1e6 / relayed.max(1) as f64
        );
        rows.push((on, q(0.99), per(cpu_s), per(nats_cpu)));
    }
    for c in [&mut sink, &mut persister] {
        let _ = c.kill();
        let _ = c.wait();
    }
    let _ = std::fs::remove_file(&history);
    let _ = std::fs::remove_file(&cursor_file);
    let _ = std::fs::remove_file(&count_file);
    for pair in rows.chunks(2) {
        if let [
            (false, p99_off, cpu_off, nats_off),
            (true, p99_on, cpu_on, nats_on),
        ] = pair
        {
            println!(
                "on / off: p99 {:.2}, gateway and clients cpu per delivery {:.2}, nats-server cpu per delivery {:.2}, chat (both) cpu per delivery {:.2}",
                p99_on / p99_off,
                cpu_on / cpu_off,
                nats_on / nats_off,
                (cpu_on + nats_on) / (cpu_off + nats_off)
            );
        }
    }
    Ok(())
}

/// The webhook sink: HTTP/1.1 with keep-alive, 204 to every POST, the count written to a file
/// every 50 ms (replaced whole, so a read never sees it half written). Asyncio on raw sockets, so that it keeps up with the relay on one shared core.
const SINK: &str = r#"
import sys, os, asyncio
port, path = int(sys.argv[1]), sys.argv[2]
n = [0]
class Conn(asyncio.Protocol):
    def connection_made(self, t):
        self.t, self.buf = t, b""
    def data_received(self, data):
        self.buf += data
        while True:
            head_end = self.buf.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buf[:head_end].lower()
            length = 0
            i = head.find(b"content-length:")
            if i >= 0:
                length = int(head[i + 15:].split(b"\r\n", 1)[0])
            end = head_end + 4 + length
            if len(self.buf) < end:
                return
            self.buf = self.buf[end:]
            n[0] += 1
            self.t.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
async def count():
    while True:
        await asyncio.sleep(0.05)
        open(path + ".tmp", "w").write(str(n[0]))
        os.replace(path + ".tmp", path)
async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Conn, "127.0.0.1", port)
    await asyncio.gather(server.serve_forever(), count())
asyncio.run(main())
"#;

/// One round: each client sends to its partner at 10 msgs/s for `secs` s; returns the send →
/// delivery latencies (ms, sorted) and the deliveries.
async fn pairs_round(
    clients: &mut [Option<WsClient>],
    secs: usize,
    round: usize,
) -> anyhow::Result<(Vec<f64>, usize)> {
    let mut tasks = Vec::new();
    for (i, slot) in clients.iter_mut().enumerate() {
        let mut c = slot.take().context("client")?;
        let pair = i / 2;
        let partner = if i % 2 == 0 {
            format!("p{pair}b")
        } else {
            format!("p{pair}a")
        };
        tasks.push(tokio::spawn(async move {
            let until = Instant::now() + Duration::from_secs(secs as u64);
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let mut lat = Vec::new();
            let mut n = 0u64;
            loop {
                tokio::select! {
                    _ = tick.tick(), if Instant::now() < until => {
                        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_micros();
                        c.send(json!({"type":"send","to":partner,"text":now.to_string(),"client_msg_id":format!("r{round}-{i}-{n}")})).await?;
                        n += 1;
                    }
                    v = c.recv_timeout(Duration::from_secs(2)) => {
                        let Ok(v) = v else { break };
                        if v["type"] == "message" && v["from"] == partner.as_str() {
                            let sent: u128 = v["text"].as_str().and_then(|t| t.parse().ok()).unwrap_or(0);
                            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_micros();
                            lat.push(now.saturating_sub(sent) as f64 / 1000.0);
                        }
                        if Instant::now() > until + Duration::from_secs(1) { break; }
                    }
                }
            }
            anyhow::Ok((c, lat))
        }));
    }
    let mut all = Vec::new();
    for (i, r) in join_all(tasks).await.into_iter().enumerate() {
        let (c, lat) = r??;
        clients[i] = Some(c);
        all.extend(lat);
    }
    all.sort_by(f64::total_cmp);
    let n = all.len();
    anyhow::ensure!(n > 0, "nothing delivered");
    Ok((all, n))
}

/// Sends `frames` in windows of 256, reading each window's acks before the next, so the sender's
/// queue of answers never fills.
async fn send_all(c: &mut WsClient, frames: Vec<Value>) -> anyhow::Result<()> {
    for window in frames.chunks(256) {
        for f in window {
            c.send(f.clone()).await?;
        }
        let mut acks = 0;
        while acks < window.len() {
            let v = c.recv().await?;
            match v["type"].as_str() {
                Some("ack") => acks += 1,
                Some("error") => anyhow::bail!("send refused: {v}"),
                _ => {}
            }
        }
    }
    Ok(())
}

fn cpu() -> f64 {
    bench::procstat::sample(std::process::id()).map_or(0.0, |s| s.cpu_s)
}

async fn wait_until(cond: impl Fn() -> bool, max: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + max;
    while !cond() {
        anyhow::ensure!(Instant::now() < deadline, "not done within {max:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

async fn connect(addr: std::net::SocketAddr, token: &str) -> anyhow::Result<WsClient> {
    for _ in 0..200 {
        if let Ok((c, _)) = WsClient::connect(addr, token).await {
            return Ok(c);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("gateway did not come up")
}

async fn login_user(
    http: &reqwest::Client,
    auth_url: &str,
    body: Value,
) -> anyhow::Result<(String, String)> {
    let body: Value = http
        .post(format!("{auth_url}/api/login"))
        .json(&body)
        .send()
        .await?
        .json()
        .await?;
    let d = &body["data"];
    Ok((
        d["user"].as_str().context("user")?.to_owned(),
        d["access_token"]
            .as_str()
            .with_context(|| format!("login failed: {body}"))?
            .to_owned(),
    ))
}

async fn login(http: &reqwest::Client, auth_url: &str, body: Value) -> anyhow::Result<String> {
    Ok(login_user(http, auth_url, body).await?.1)
}
