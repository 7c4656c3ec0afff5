//! Latency the content check adds to a send, measured end to end: a client sends messages one at a
//! time and times each `send` → `ack`, through a gateway with the check on and one with it off, both
//! on the same nats-server. Auth runs in-process with Redis and the local fake WeChat API (the real
//! one is unreachable here), so the figure is our own overhead: one NATS round trip to auth, one
//! HTTP call to the fake, bookkeeping. In production add WeChat's own `msg_sec_check` time.
//!
//! ```text
//! content_bench [messages]
//! ```

// A benchmark binary prints its results on stdout for the operator.
#![allow(clippy::print_stdout)]

use std::time::Duration;
use tokio::time::Instant;

use anyhow::Context;
use auth::config::{ContentCheck, FailPolicy, ReviewPolicy, Secret, WeChat};
use auth::fake_wechat::FakeWeChat;
use serde_json::{Value, json};
use testkit::{NatsServer, RedisServer, WsClient};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let nats = NatsServer::start()?;
    let redis = RedisServer::start()?;
    let fake = FakeWeChat::start().await;
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
        login_per_ip_per_min: 100_000,
        content_check: Some(ContentCheck {
            scene: 2,
            review: ReviewPolicy::Deliver,
            fail: FailPolicy::Open,
        }),
        ..auth::Config::default()
    };
    let state = auth::start(config).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let auth_url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(auth::serve(listener, state, std::future::pending()));

    let mut rows = Vec::new();
    for check in [false, true] {
        let gw_config = gateway::Config {
            nats_url: nats.url(),
            keys: gateway::config::KeySource::AuthUrl(auth_url.clone()),
            content_check: check,
            rate_per_sec: 100_000.0,
            rate_burst: 100_000.0,
            user_sends_per_sec: 100_000.0,
            user_send_burst: 100_000.0,
            ..gateway::Config::default()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(gateway::run(
            listener,
            gw_config,
            token::KeySet::new("liaotian"),
            std::future::pending(),
        ));
        let token = login(&auth_url, &format!("ok-bench{check}")).await?;
        let mut client = None;
        for _ in 0..200 {
            if let Ok((c, _)) = WsClient::connect(addr, &token).await {
                client = Some(c);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut c = client.context("gateway did not come up")?;
        c.send(json!({"type":"join","room":"bench"})).await?;
        c.recv_type("joined").await?;
        let mut lat = Vec::with_capacity(n);
        for i in 0..n {
            let cmid = format!("m{check}{i}");
            let t = Instant::now();
            c.send(
                json!({"type":"send","room":"bench","text":"hello","client_msg_id":cmid,"id":cmid}),
            )
            .await?;
            loop {
                let v = c.recv().await?;
                if v["id"] == cmid.as_str() {
                    anyhow::ensure!(v["type"] == "ack", "not acked: {v}");
                    break;
                }
            }
            lat.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        lat.sort_by(f64::total_cmp);
        let q = |p: f64| lat[((lat.len() as f64 - 1.0) * p) as usize];
        println!(
            "content_check={check} messages={n} send_to_ack_ms p50={:.3} p90={:.3} p99={:.3} max={:.3}",
            q(0.5),
            q(0.9),
            q(0.99),
            q(1.0)
        );
        rows.push((q(0.5), q(0.99)));
    }
    println!(
        "added by the content check: p50 {:+.3} ms, p99 {:+.3} ms",
        rows[1].0 - rows[0].0,
        rows[1].1 - rows[0].1
    );
    Ok(())
}

async fn login(auth_url: &str, code: &str) -> anyhow::Result<String> {
    let body: Value = reqwest::Client::new()
        .post(format!("{auth_url}/api/login"))
        .json(&json!({"code": code}))
        .send()
        .await?
        .json()
        .await?;
    body["data"]["access_token"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("login failed: {body}"))
}
