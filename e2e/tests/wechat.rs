//! WeChat mini-program support end to end: real `auth::run`-style service and `gateway::run` instances
//! over a real nats-server and redis-server, with a fake WeChat API on 127.0.0.1:0.

use std::net::SocketAddr;
use std::time::Duration;

use auth::config::{ContentCheck, FailPolicy, ReviewPolicy, Secret, WeChat};
use auth::fake_wechat::FakeWeChat;
use auth::http::AppState;
use serde_json::{Value, json};
use testkit::ws::Ended;
use testkit::{NatsServer, RedisServer, WsClient};
use tokio::sync::oneshot;

struct Stack {
    nats: NatsServer,
    redis: RedisServer,
    fake: FakeWeChat,
    auth_url: String,
    auth: AppState,
    http: reqwest::Client,
    _auth_task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

struct Gw {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Drop for Gw {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn stack(tweak: impl FnOnce(&mut auth::Config)) -> Stack {
    testkit::init_tracing();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let nats = NatsServer::start().expect("start nats-server");
    let redis = RedisServer::start().expect("start redis-server");
    let fake = FakeWeChat::start().await;
    let mut c = auth::Config {
        wechat: Some(WeChat {
            appid: "wx-test".into(),
            secret: Secret("app-secret".into()),
            api_base: fake.base_url(),
            timeout: Duration::from_secs(2),
            retry_delay: Duration::from_millis(50),
        }),
        user_id_secret: Some(Secret(b"test-user-id-secret".to_vec())),
        redis_url: Some(Secret(redis.url())),
        nats_url: Some(nats.url()),
        login_per_ip_per_min: 1000,
        ..auth::Config::default()
    };
    tweak(&mut c);
    let state = auth::start(c).await.expect("auth start");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(auth::serve(listener, state.clone(), std::future::pending()));
    Stack {
        nats,
        redis,
        fake,
        auth_url: format!("http://{addr}"),
        auth: state,
        http: reqwest::Client::new(),
        _auth_task: task,
    }
}

impl Stack {
    async fn gateway(&self, tweak: impl FnOnce(&mut gateway::Config)) -> Gw {
        let mut config = gateway::Config {
            nats_url: self.nats.url(),
            keys: gateway::config::KeySource::AuthUrl(self.auth_url.clone()),
            keys_refresh: Duration::from_millis(200),
            ..gateway::Config::default()
        };
        tweak(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(gateway::run(
            listener,
            config,
            token::KeySet::new("liaotian"),
            async {
                let _ = rx.await;
            },
        ));
        e2e::wait_ready(addr).await;
        Gw {
            addr,
            _stop: tx,
            task,
        }
    }

    async fn post(&self, path: &str, body: Value, bearer: Option<&str>) -> (u16, Value) {
        let mut req = self
            .http
            .post(format!("{}{path}", self.auth_url))
            .json(&body);
        if let Some(t) = bearer {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Logs in with `code`; returns the user id and access token.
    async fn login(&self, code: &str) -> (String, String) {
        let (status, body) = self.post("/api/login", json!({"code": code}), None).await;
        assert_eq!(status, 200, "{body}");
        let d = &body["data"];
        (
            d["user"].as_str().unwrap().to_owned(),
            d["access_token"].as_str().unwrap().to_owned(),
        )
    }
}

async fn connect(gw: &Gw, token: &str) -> WsClient {
    WsClient::connect(gw.addr, token).await.expect("connect").0
}

async fn join(c: &mut WsClient, room: &str) {
    c.send(json!({"type": "join", "room": room, "id": format!("j-{room}")}))
        .await
        .unwrap();
    c.recv_type("joined").await.unwrap();
}

/// Sends `text` to `room` and returns the `ack` or `error` answering it.
async fn send(c: &mut WsClient, room: &str, text: &str, cmid: &str) -> Value {
    c.send(json!({"type": "send", "room": room, "text": text, "client_msg_id": cmid, "id": cmid}))
        .await
        .unwrap();
    loop {
        let v = c.recv().await.unwrap();
        if v["id"] == cmid && (v["type"] == "ack" || v["type"] == "error") {
            return v;
        }
    }
}

#[tokio::test]
async fn logout_closes_the_users_sockets_on_every_gateway() {
    // POST /api/logout publishes on chat.ctl.user.<user>, and both gateways close that user's sockets with 4001.
    let s = stack(|_| {}).await;
    let (g1, g2) = (s.gateway(|_| {}).await, s.gateway(|_| {}).await);
    let (_alice, token) = s.login("ok-alice").await;
    let (_bob, bob_token) = s.login("ok-bob").await;
    let mut a1 = connect(&g1, &token).await;
    let mut a2 = connect(&g2, &token).await;
    let mut b = connect(&g2, &bob_token).await;
    let (status, body) = s.post("/api/logout", json!({}), Some(&token)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        a1.closed(Duration::from_secs(5)).await.unwrap(),
        Ended::Closed(Some(4001))
    );
    assert_eq!(
        a2.closed(Duration::from_secs(5)).await.unwrap(),
        Ended::Closed(Some(4001))
    );
    // Other users are untouched.
    b.send(json!({"type": "ping", "id": "p"})).await.unwrap();
    assert_eq!(b.recv_type("pong").await.unwrap()["id"], "p");
}

/// The HTTP status a handshake with `token` was refused with, or `None` if it was accepted.
async fn refused_with(gw: &Gw, token: &str) -> Option<u16> {
    match WsClient::connect(gw.addr, token).await {
        Ok(_) => None,
        Err(e) => {
            // tungstenite's error says "HTTP error: <status> <reason>".
            let text = format!("{e:#}");
            let status = text
                .split("HTTP error: ")
                .nth(1)
                .and_then(|rest| rest.get(..3))
                .and_then(|code| code.parse().ok());
            // A handshake that passed and was closed at once (a logout's 4001) was accepted.
            if text.contains("closed:") {
                return None;
            }
            Some(status.unwrap_or_else(|| panic!("handshake failed otherwise: {text}")))
        }
    }
}

// Proves that logout revokes the access token itself: at once, on every gateway, the same token
// is refused at the handshake (401 token_revoked), while a token from a new login is accepted.
#[tokio::test]
async fn logout_revokes_the_access_token_on_every_gateway() {
    // Dev login: a WeChat code's login is answered from the code cache for 5 minutes, with the
    // same token, and this test needs two tokens of one user.
    let s = stack(|c| c.dev_login = true).await;
    let (g1, g2) = (s.gateway(|_| {}).await, s.gateway(|_| {}).await);
    let dev_login = || async {
        let (status, body) = s
            .post("/api/login", json!({"dev_user": "alice"}), None)
            .await;
        assert_eq!(status, 200, "{body}");
        body["data"]["access_token"].as_str().unwrap().to_owned()
    };
    let token = dev_login().await;
    assert_eq!(refused_with(&g1, &token).await, None);
    // `not_before` counts in seconds: a token issued in the second of the logout still passes.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, body) = s.post("/api/logout", json!({}), Some(&token)).await;
    assert_eq!(status, 200, "{body}");
    // The revocation reaches each gateway through its watch of bucket `access`: within
    // milliseconds, polled here for up to 1 s.
    for g in [&g1, &g2] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while refused_with(g, &token).await != Some(401) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the logged-out token still works"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let fresh = dev_login().await;
    assert_ne!(fresh, token);
    assert_eq!(refused_with(&g2, &fresh).await, None);
}

// Proves that a ban written to bucket `access` closes the user's sockets on every gateway with
// 4003 within 1 s and refuses their next handshake (403), and that lifting it lets them in again.
// The admin API that will write it does not exist yet: the test writes the record itself.
#[tokio::test]
async fn a_ban_closes_the_users_sockets_on_every_gateway_and_refuses_the_handshake() {
    let s = stack(|_| {}).await;
    let (g1, g2) = (s.gateway(|_| {}).await, s.gateway(|_| {}).await);
    let (alice, token) = s.login("ok-alice").await;
    let (_bob, bob_token) = s.login("ok-bob").await;
    let mut a1 = connect(&g1, &token).await;
    let mut a2 = connect(&g2, &token).await;
    let mut b = connect(&g2, &bob_token).await;
    let js = async_nats::jetstream::new(async_nats::connect(s.nats.url()).await.unwrap());
    let kv = js.get_key_value(protocol::access::BUCKET).await.unwrap();
    let key = protocol::access::key(&protocol::UserId::parse(alice).unwrap());
    let banned = protocol::access::Record {
        not_before: 0,
        banned: true,
    };
    let at = tokio::time::Instant::now();
    kv.put(&key, serde_json::to_vec(&banned).unwrap().into())
        .await
        .unwrap();
    for c in [&mut a1, &mut a2] {
        assert_eq!(
            c.closed(Duration::from_secs(1)).await.unwrap(),
            Ended::Closed(Some(4003))
        );
    }
    eprintln!("both sockets closed {:?} after the ban", at.elapsed());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    while refused_with(&g1, &token).await != Some(403) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the banned user's token still works"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, body) = s
        .post("/api/login", json!({"code": "ok-alice"}), None)
        .await;
    assert_eq!(status, 200, "{body}");
    let fresh = body["data"]["access_token"].as_str().unwrap().to_owned();
    assert_eq!(refused_with(&g2, &fresh).await, Some(403));
    b.send(json!({"type": "ping", "id": "p"})).await.unwrap();
    assert_eq!(b.recv_type("pong").await.unwrap()["id"], "p");
    // Lifted: the same token is accepted again.
    kv.put(
        &key,
        serde_json::to_vec(&protocol::access::Record::default())
            .unwrap()
            .into(),
    )
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while refused_with(&g1, &fresh).await.is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lifted ban still refuses"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn key_rotation_reaches_gateways_without_restart() {
    // After auth reloads a new key, it signs only after the activation delay; a running gateway has
    // fetched it by then (it refreshes every 200 ms here), so the first token of the new key is
    // accepted at once, and tokens of the previous key still are.
    let dir = testkit::temp_dir("gw-keys").unwrap();
    let current = dir.path().join("current");
    let previous = dir.path().join("previous");
    let delay = Duration::from_secs(2);
    let s = stack(|c| {
        c.key = auth::config::KeySource::File(current.clone());
        c.previous_key_files = vec![previous.clone()];
        c.key_activation_delay = delay;
    })
    .await;
    let gw = s.gateway(|_| {}).await;
    let (_, old_token) = s.login("ok-kim").await;
    connect(&gw, &old_token).await;
    let old_kid = s.auth.keys.signer().kid().to_owned();
    std::fs::rename(&current, &previous).unwrap();
    let reloaded = tokio::time::Instant::now();
    s.auth.keys.reload(&s.auth.config).unwrap();
    assert!(
        s.auth.keys.signer().kid() == old_kid || reloaded.elapsed() >= delay,
        "the new key signed before the activation delay"
    );
    while s.auth.keys.signer().kid() == old_kid {
        assert!(
            reloaded.elapsed() < delay + Duration::from_secs(5),
            "the new key never started signing"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(reloaded.elapsed() >= delay, "signing before the delay");
    let (_, new_token) = s.login("ok-lee").await;
    let (_, welcome) = WsClient::connect(gw.addr, &new_token)
        .await
        .expect("the first token of the new key is accepted");
    assert_eq!(welcome["type"], "welcome");
    connect(&gw, &old_token).await;
}

#[tokio::test]
async fn content_check_rejects_risky_and_follows_deliver_and_fail_open_policies() {
    // risky → content_rejected; pass → ack; review → ack (deliver policy); API failure → ack (fail open); a stale token is refreshed once.
    let s = stack(|c| {
        c.content_check = Some(ContentCheck {
            scene: 4,
            review: ReviewPolicy::Deliver,
            fail: FailPolicy::Open,
        })
    })
    .await;
    let gw = s.gateway(|c| c.content_check = true).await;
    let (_, token) = s.login("ok-mia").await;
    let mut c = connect(&gw, &token).await;
    join(&mut c, "r").await;
    let pass = send(&mut c, "r", "hello", "m1").await;
    assert_eq!(pass["type"], "ack", "{pass}");
    let check = s.fake.last_check().unwrap();
    assert_eq!(check["openid"], "o-mia");
    assert_eq!(check["scene"], 4);
    assert_eq!(check["version"], 2);
    assert_eq!(check["content"], "hello");
    let risky = send(&mut c, "r", "something risky", "m2").await;
    assert_eq!(risky["code"], "content_rejected", "{risky}");
    let review = send(&mut c, "r", "needs review", "m3").await;
    assert_eq!(review["type"], "ack", "{review}");
    let failed = send(&mut c, "r", "apifail", "m4").await;
    assert_eq!(failed["type"], "ack", "{failed}");
    assert_eq!(s.fake.token_calls(), 1, "one token holder, one fetch");
    s.fake.revoke_token("tok-1");
    let again = send(&mut c, "r", "hello again", "m5").await;
    assert_eq!(again["type"], "ack", "{again}");
    assert_eq!(s.fake.token_calls(), 2, "40001 refreshed the token once");
    let metrics = s
        .http
        .get(format!("{}/metrics", s.auth_url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("auth_content_check_seconds_bucket"));
    assert!(
        metrics.contains(r#"auth_content_checks_total{decision="deliver",reason="api_error"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn content_check_holds_review_and_fails_closed() {
    // With the hold and fail-closed policies, review and API failures (-1, quota) answer content_held; pass still delivers.
    let s = stack(|c| {
        c.content_check = Some(ContentCheck {
            scene: 2,
            review: ReviewPolicy::Hold,
            fail: FailPolicy::Closed,
        })
    })
    .await;
    let gw = s.gateway(|c| c.content_check = true).await;
    let (_, token) = s.login("ok-ned").await;
    let (_, other) = s.login("ok-ola").await;
    let mut c = connect(&gw, &token).await;
    let mut o = connect(&gw, &other).await;
    join(&mut c, "r").await;
    join(&mut o, "r").await;
    for (text, cmid) in [("please review", "h1"), ("apifail", "h2"), ("quota", "h3")] {
        let v = send(&mut c, "r", text, cmid).await;
        assert_eq!(v["code"], "content_held", "{text}: {v}");
    }
    let pass = send(&mut c, "r", "fine", "h4").await;
    assert_eq!(pass["type"], "ack");
    // The other member sees only the delivered message.
    let m = o.recv_type("message").await.unwrap();
    assert_eq!(m["text"], "fine");
}

#[tokio::test]
async fn redis_down_fails_login_but_open_sockets_keep_working() {
    // With Redis down, login answers 503 while sockets and already-issued tokens keep working.
    let mut s = stack(|_| {}).await;
    let gw = s.gateway(|_| {}).await;
    let (_, a_token) = s.login("ok-pat").await;
    let (_, b_token) = s.login("ok-quinn").await;
    let mut a = connect(&gw, &a_token).await;
    let mut b = connect(&gw, &b_token).await;
    join(&mut a, "r").await;
    join(&mut b, "r").await;
    s.redis.stop();
    let (status, body) = s.post("/api/login", json!({"code": "ok-ray"}), None).await;
    assert_eq!(status, 503, "{body}");
    let ack = send(&mut a, "r", "still here", "s1").await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(b.recv_type("message").await.unwrap()["text"], "still here");
    // A new socket with an already-issued token is accepted too.
    let mut again = connect(&gw, &a_token).await;
    join(&mut again, "r").await;
}
