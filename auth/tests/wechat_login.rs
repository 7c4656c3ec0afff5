//! WeChat login through the real auth service, a real redis-server and a fake WeChat API.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use auth::config::{Secret, WeChat};
use auth::fake_wechat::{FakeWeChat, SESSION_KEY_MARK};
use auth::http::AppState;
use auth::{Config, KeySet};
use serde_json::{Value, json};
use testkit::RedisServer;

/// Everything every test in this binary logged.
fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "auth=trace,reqwest=trace,hyper=debug,info",
            ))
            .with_writer(move || Capture(sink.clone()))
            .try_init();
        buf
    })
}

fn logged() -> String {
    String::from_utf8_lossy(&logs().lock().unwrap()).into_owned()
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct Auth {
    url: String,
    state: AppState,
    redis: RedisServer,
    fake: FakeWeChat,
    http: reqwest::Client,
    _task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: Value,
    raw: String,
}

fn config(fake: &FakeWeChat, redis: &RedisServer) -> Config {
    Config {
        wechat: Some(WeChat {
            appid: "wx-test".into(),
            secret: Secret("app-secret".into()),
            api_base: fake.base_url(),
            timeout: Duration::from_millis(800),
            retry_delay: Duration::from_millis(50),
        }),
        user_id_secret: Some(Secret(b"test-user-id-secret".to_vec())),
        redis_url: Some(Secret(redis.url())),
        login_per_ip_per_min: 1000,
        ..Config::default()
    }
}

async fn start_with(tweak: impl FnOnce(&mut Config)) -> Auth {
    logs();
    let redis = RedisServer::start().expect("start redis-server");
    let fake = FakeWeChat::start().await;
    let mut c = config(&fake, &redis);
    tweak(&mut c);
    let state = auth::start(c).await.expect("auth state");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let task = tokio::spawn(auth::serve(listener, state.clone(), std::future::pending()));
    Auth {
        url: format!("http://{addr}"),
        state,
        redis,
        fake,
        http: reqwest::Client::new(),
        _task: task,
    }
}

async fn start() -> Auth {
    start_with(|_| {}).await
}

impl Auth {
    async fn post(&self, path: &str, body: Value) -> Answer {
        self.post_with(path, body, None).await
    }

    async fn post_with(&self, path: &str, body: Value, bearer: Option<&str>) -> Answer {
        let mut req = self.http.post(format!("{}{path}", self.url)).json(&body);
        if let Some(t) = bearer {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        let raw = resp.text().await.unwrap();
        let body = serde_json::from_str(&raw).unwrap_or(Value::Null);
        Answer {
            status,
            retry_after,
            body,
            raw,
        }
    }

    async fn login(&self, code: &str) -> Answer {
        self.post("/api/login", json!({"code": code})).await
    }

    async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.redis.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn login_issues_tokens_and_keeps_session_key_server_side() {
    // A good code yields a verifiable access token and a refresh token; session_key stays in Redis only.
    let a = start().await;
    let r = a.login("ok-alice").await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(r.body["code"], 0);
    let d = &r.body["data"];
    let user = d["user"].as_str().unwrap();
    assert!(user.starts_with("u_") && user.len() <= 64, "{user}");
    assert!(
        !user.contains("alice"),
        "the user id does not show the openid"
    );
    assert_eq!(d["expires_in"], 7200);
    assert!(d["refresh_token"].as_str().unwrap().len() > 20);
    let keys = KeySet::new("liaotian");
    keys.replace(
        a.state
            .keys
            .public_keys()
            .into_iter()
            .map(|k| (auth::token::kid_of(&k), k)),
    );
    let claims = keys
        .verify(d["access_token"].as_str().unwrap(), auth::token::now_secs())
        .unwrap();
    assert_eq!(claims.user().as_str(), user);
    // Lenient parsing (no errcode, text/plain); the same openid always gets the same user id.
    let plain = a.login("plain-alice").await;
    assert_eq!(plain.status, 200, "{}", plain.raw);
    assert_eq!(plain.body["data"]["user"], r.body["data"]["user"]);
    let again = a.login("ok-alice2").await;
    assert_ne!(again.body["data"]["user"], r.body["data"]["user"]);
    let mut conn = a.redis().await;
    let sk: String = redis::cmd("GET")
        .arg(format!("auth:sk:{user}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(sk.contains(SESSION_KEY_MARK));
    let ttl: i64 = redis::cmd("TTL")
        .arg(format!("auth:sk:{user}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 0, "session_key has a TTL");
    let (openid, unionid): (String, String) = redis::cmd("HMGET")
        .arg(format!("auth:user:{user}"))
        .arg("openid")
        .arg("unionid")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!((openid.as_str(), unionid.as_str()), ("o-alice", "un-alice"));
    for body in [&r.raw, &plain.raw, &again.raw] {
        assert!(
            !body.contains(SESSION_KEY_MARK),
            "session_key in a response"
        );
    }
    let refreshed = a
        .post("/api/refresh", json!({"refresh_token": d["refresh_token"]}))
        .await;
    assert!(!refreshed.raw.contains(SESSION_KEY_MARK));
    assert!(logged().contains("wechat login"), "logs were captured");
    assert!(
        !logged().contains(SESSION_KEY_MARK),
        "session_key in the logs"
    );
}

#[tokio::test]
async fn every_errcode_gets_its_documented_answer() {
    // Each WeChat errcode maps to the documented status, reason and headers, without internal details.
    let a = start().await;
    let cases: &[(&str, u16, &str)] = &[
        ("err40029", 401, "relogin"),
        ("serr40029", 401, "relogin"),
        ("err40163", 401, "relogin"),
        ("serr40163", 401, "relogin"),
        ("err40226", 403, "login_blocked"),
        ("err45011", 429, "rate_limited"),
        ("err40013", 500, "internal"),
        ("err40125", 500, "internal"),
        ("err41002", 500, "internal"),
        ("err41004", 500, "internal"),
        ("err-1", 503, "unavailable"),
        ("hang", 503, "unavailable"),
        ("html", 503, "unavailable"),
    ];
    for (code, status, reason) in cases {
        let r = a.login(code).await;
        assert_eq!(r.status, *status, "{code}: {}", r.raw);
        assert_eq!(r.body["code"], u64::from(*status) * 100, "{code}");
        assert_eq!(r.body["data"]["reason"], *reason, "{code}");
        // WeChat's own errcode and errmsg are internal details: neither reaches the client.
        let errcode = code.trim_start_matches(|c: char| c.is_ascii_alphabetic());
        let message = r.body["message"].as_str().unwrap();
        let errcode = (!errcode.is_empty()).then_some(errcode);
        for secret in errcode
            .into_iter()
            .chain(["rid", "fake", "appid", "secret", "AUTH_"])
        {
            assert!(
                !message.contains(secret) && !r.raw.contains(secret),
                "{code}: {secret:?} in {}",
                r.raw
            );
        }
        // The answer comes from WeChat's errcode: one upstream call per code (-1 is retried once).
        if code.starts_with("err") || code.starts_with("serr") {
            let calls = if *code == "err-1" { 2 } else { 1 };
            assert_eq!(a.fake.code_calls(code), calls, "{code}");
        }
    }
    assert_eq!(a.login("err45011").await.retry_after.as_deref(), Some("60"));
    // -1 gets exactly one quick retry with the same code; a retry that succeeds logs the user in.
    assert_eq!(a.fake.code_calls("err-1"), 2);
    assert_eq!(a.fake.code_calls("err40029"), 1);
    let busy = a.login("busy-dora").await;
    assert_eq!(busy.status, 200, "{}", busy.raw);
    assert_eq!(a.fake.code_calls("busy-dora"), 2);
    // Configuration errors name the setting in the log.
    let log = logged();
    assert!(
        log.contains("AUTH_WECHAT_APPID"),
        "appid errors name the setting"
    );
    assert!(
        log.contains("AUTH_WECHAT_SECRET"),
        "secret errors name the setting"
    );
    assert!(!log.contains("app-secret"), "the AppSecret is never logged");
}

#[tokio::test]
async fn concurrent_exchanges_of_one_code_are_merged() {
    // Two concurrent logins with one code make one upstream call and get the same answer; so does a later tap.
    let a = start().await;
    let (x, y) = tokio::join!(a.login("slow-carol"), a.login("slow-carol"));
    assert_eq!(x.status, 200, "{}", x.raw);
    assert_eq!(x.body, y.body);
    assert_eq!(a.fake.code_calls("slow-carol"), 1);
    let z = a.login("slow-carol").await;
    assert_eq!(z.body, x.body);
    assert_eq!(a.fake.code_calls("slow-carol"), 1);
    // A failure is not cached: the next attempt asks WeChat again.
    a.login("err40029").await;
    a.login("err40029").await;
    assert_eq!(a.fake.code_calls("err40029"), 2);
}

#[tokio::test]
async fn refresh_rotates_and_reuse_revokes_the_family() {
    // Each refresh returns a new refresh token; presenting a used one revokes every token of its family.
    let a = start().await;
    let login = a.login("ok-erin").await;
    let rt1 = login.body["data"]["refresh_token"].clone();
    let r2 = a.post("/api/refresh", json!({"refresh_token": rt1})).await;
    assert_eq!(r2.status, 200, "{}", r2.raw);
    let rt2 = r2.body["data"]["refresh_token"].clone();
    assert_ne!(rt1, rt2);
    assert_eq!(r2.body["data"]["user"], login.body["data"]["user"]);
    let r3 = a.post("/api/refresh", json!({"refresh_token": rt2})).await;
    assert_eq!(r3.status, 200);
    let rt3 = r3.body["data"]["refresh_token"].clone();
    // rt1 again: reuse.
    let reuse = a.post("/api/refresh", json!({"refresh_token": rt1})).await;
    assert_eq!(reuse.status, 401);
    assert_eq!(reuse.body["data"]["reason"], "refresh_reused");
    // The newest token of the family is dead too.
    let dead = a.post("/api/refresh", json!({"refresh_token": rt3})).await;
    assert_eq!(dead.status, 401);
    assert_eq!(dead.body["data"]["reason"], "invalid_refresh_token");
    // Another login is another family, unaffected.
    let other = a.login("ok-erin-phone").await;
    let fine = a
        .post(
            "/api/refresh",
            json!({"refresh_token": other.body["data"]["refresh_token"]}),
        )
        .await;
    assert_eq!(fine.status, 200);
    let junk = a
        .post("/api/refresh", json!({"refresh_token": "rt_nope"}))
        .await;
    assert_eq!(junk.status, 401);
}

#[tokio::test]
async fn logout_revokes_refresh_tokens() {
    // Logout with the access token or with a refresh token revokes the user's refresh tokens.
    let a = start().await;
    let l = a.login("ok-fay").await;
    let d = &l.body["data"];
    let out = a
        .post_with("/api/logout", json!({}), d["access_token"].as_str())
        .await;
    assert_eq!(out.status, 200, "{}", out.raw);
    assert_eq!(out.body["data"]["revoked_families"], 1);
    let r = a
        .post("/api/refresh", json!({"refresh_token": d["refresh_token"]}))
        .await;
    assert_eq!(r.status, 401);
    let l2 = a.login("ok-fay-2").await;
    let out2 = a
        .post(
            "/api/logout",
            json!({"refresh_token": l2.body["data"]["refresh_token"]}),
        )
        .await;
    assert_eq!(out2.status, 200, "{}", out2.raw);
    let none = a.post("/api/logout", json!({})).await;
    assert_eq!(none.status, 401);
}

#[tokio::test]
async fn login_attempts_are_rate_limited_per_ip_and_per_code() {
    // Beyond the per-IP and per-code limits, login answers 429 with Retry-After.
    let a = start_with(|c| {
        c.login_per_ip_per_min = 4;
        c.login_per_code = 2;
    })
    .await;
    assert_eq!(a.login("err40029").await.status, 401);
    assert_eq!(a.login("err40029").await.status, 401);
    let third = a.login("err40029").await;
    assert_eq!(third.status, 429, "{}", third.raw);
    assert!(third.retry_after.is_some());
    assert_eq!(a.fake.code_calls("err40029"), 2);
    assert_eq!(a.login("ok-gus").await.status, 200);
    let over = a.login("ok-hal").await;
    assert_eq!(over.status, 429, "{}", over.raw);
    let secs: u64 = over.retry_after.unwrap().parse().unwrap();
    assert!((1..=60).contains(&secs));
}

#[tokio::test]
async fn redis_down_gives_503_and_recovers() {
    // Without Redis, login and refresh answer 503 and /readyz fails; when Redis is back, login works again.
    let mut a = start().await;
    let l = a.login("ok-ivy").await;
    assert_eq!(l.status, 200);
    let ready = a
        .http
        .get(format!("{}/readyz", a.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    a.redis.stop();
    let down = a.login("ok-ivy-2").await;
    assert_eq!(down.status, 503, "{}", down.raw);
    assert_eq!(down.body["data"]["reason"], "unavailable");
    let r = a
        .post(
            "/api/refresh",
            json!({"refresh_token": l.body["data"]["refresh_token"]}),
        )
        .await;
    assert_eq!(r.status, 503);
    let ready = a
        .http
        .get(format!("{}/readyz", a.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    a.redis.restart().unwrap();
    let mut last = 0;
    for _ in 0..50 {
        last = a.login("ok-ivy-3").await.status;
        if last == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(last, 200);
}

#[tokio::test]
async fn dev_login_is_off_next_to_wechat_unless_flagged() {
    // With WeChat credentials and no dev flag, dev login is refused.
    let a = start().await;
    let r = a.post("/api/login", json!({"dev_user": "mallory"})).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.body["data"]["reason"], "dev_login_disabled");
    let b = start_with(|c| c.dev_login = true).await;
    assert_eq!(
        b.post("/api/login", json!({"dev_user": "dev"}))
            .await
            .status,
        200
    );
    // The server's own account is never issued a token.
    let r = b.post("/api/login", json!({"dev_user": "system"})).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body["data"]["reason"], "invalid_id");
}

#[tokio::test]
async fn keys_rotate_on_reload() {
    // After a reload, /api/keys serves the new and the previous key at once; new tokens use the new
    // key only after the activation delay, so every gateway can fetch it first.
    let dir = testkit::temp_dir("auth-keys").unwrap();
    let current = dir.path().join("current");
    let previous = dir.path().join("previous");
    let delay = Duration::from_secs(2);
    let a = start_with(|c| {
        c.key = auth::config::KeySource::File(current.clone());
        c.previous_key_files = vec![previous.clone()];
        c.key_activation_delay = delay;
    })
    .await;
    let kids = |a: &Auth| {
        a.state
            .keys
            .jwks()
            .keys
            .into_iter()
            .map(|k| k.kid)
            .collect::<Vec<_>>()
    };
    let before = kids(&a);
    assert_eq!(before.len(), 1);
    std::fs::rename(&current, &previous).unwrap();
    let reloaded = tokio::time::Instant::now();
    a.state.keys.reload(&a.state.config).unwrap();
    let after = kids(&a);
    assert_eq!(after.len(), 2, "{after:?}");
    assert!(after.contains(&before[0]));
    // The new key is served but does not sign yet.
    let old_signer = a.state.keys.signer().kid().to_owned();
    assert!(
        old_signer == before[0] || reloaded.elapsed() >= delay,
        "the new key signed before the activation delay"
    );
    let new_kid = after.iter().find(|k| **k != before[0]).unwrap().clone();
    while a.state.keys.signer().kid() != new_kid {
        assert!(
            reloaded.elapsed() < delay + Duration::from_secs(5),
            "the new key never started signing"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        reloaded.elapsed() >= delay,
        "signing with the new key after {:?}, before the delay",
        reloaded.elapsed()
    );
    assert_eq!(kids(&a).len(), 2, "the old key is still served");
    let served = a
        .http
        .get(format!("{}/api/keys", a.url))
        .send()
        .await
        .unwrap();
    let served: Value = served.json().await.unwrap();
    assert_eq!(served["data"]["keys"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn build_info_names_the_version() {
    let auth = start().await;
    let body = auth
        .http
        .get(format!("{}/metrics", auth.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let name = format!(
        "auth_build_info{{version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(testkit::metric_in(&body, &name), Some(1.0), "{body}");
}
