//! A fake WeChat server API for tests (feature `test-support`), on 127.0.0.1:0.
//!
//! `code2Session` answers by the shape of the code:
//!
//! | code | answer |
//! |---|---|
//! | `ok-<name>` | success: openid `o-<name>`, unionid `un-<name>`, a session_key containing [`SESSION_KEY_MARK`] |
//! | `plain-<name>` | success without `errcode`, as `text/plain` |
//! | `slow-<name>` | success after 300 ms |
//! | `busy-<name>` | `-1` on the first call, success after |
//! | `err<N>` | `{"errcode": N}` (N may be `-1`) |
//! | `serr<N>` | `{"errcode": "N"}`, the code as a string |
//! | `hang` | no answer for 30 s |
//! | `html` | HTTP 502 with an HTML body |
//!
//! `stable_token` hands out `tok-1`, `tok-2`, …; `msg_sec_check` answers `40001` for a token revoked with
//! [`FakeWeChat::revoke_token`], else by the text: `risky`, `review`, `apifail` (`-1`), `quota` (`45009`),
//! otherwise `pass`. Every call is counted.
//!
//! `subscribeMessage.send` (`/cgi-bin/message/subscribe/send`) answers `40001` for a revoked token;
//! otherwise the next answer scripted for the `touser` with [`FakeWeChat::script_send`] (an
//! errcode, or [`HTTP_502`] for a gateway error with an HTML body), and `ok` when none is left.
//! Every send it answers `ok` is kept ([`FakeWeChat::sent`]).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

/// A scripted answer of `subscribe/send` that is not an errcode: HTTP 502 with an HTML body, as a
/// proxy in front of WeChat failing.
pub const HTTP_502: i64 = 502;

/// Part of every session_key the fake hands out, so tests can look for it in logs and bodies.
pub const SESSION_KEY_MARK: &str = "FAKESESSIONKEY";

#[derive(Default)]
struct Fake {
    code_calls: Mutex<HashMap<String, usize>>,
    token_calls: AtomicUsize,
    check_calls: AtomicUsize,
    revoked: Mutex<HashSet<String>>,
    last_check: Mutex<Option<Value>>,
    send_script: Mutex<HashMap<String, std::collections::VecDeque<i64>>>,
    sent: Mutex<Vec<Value>>,
    send_calls: AtomicUsize,
}

pub struct FakeWeChat {
    pub addr: SocketAddr,
    fake: Arc<Fake>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeWeChat {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeWeChat {
    pub async fn start() -> Self {
        let fake = Arc::new(Fake::default());
        let app = Router::new()
            .route("/sns/jscode2session", get(code2session))
            .route("/cgi-bin/stable_token", post(stable_token))
            .route("/wxa/msg_sec_check", post(msg_sec_check))
            .route("/cgi-bin/message/subscribe/send", post(subscribe_send))
            .with_state(fake.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("binding the fake WeChat API: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("fake address: {e}"));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, fake, task }
    }

    /// The value for `AUTH_WECHAT_API_BASE`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many times `code2Session` was called with `code`.
    pub fn code_calls(&self, code: &str) -> usize {
        lock(&self.fake.code_calls).get(code).copied().unwrap_or(0)
    }

    pub fn token_calls(&self) -> usize {
        self.fake.token_calls.load(Ordering::SeqCst)
    }

    pub fn check_calls(&self) -> usize {
        self.fake.check_calls.load(Ordering::SeqCst)
    }

    /// Makes `msg_sec_check` answer 40001 for this access token from now on.
    pub fn revoke_token(&self, token: &str) {
        lock(&self.fake.revoked).insert(token.to_owned());
    }

    /// Makes the next `subscribe/send` calls to `openid` answer these errcodes, in order.
    pub fn script_send(&self, openid: &str, answers: &[i64]) {
        lock(&self.fake.send_script)
            .entry(openid.to_owned())
            .or_default()
            .extend(answers);
    }

    /// The bodies of the subscribe messages answered `ok`, in order, each with its token under
    /// `access_token`.
    pub fn sent(&self) -> Vec<Value> {
        lock(&self.fake.sent).clone()
    }

    /// `subscribe/send` calls, whatever their answer.
    pub fn send_calls(&self) -> usize {
        self.fake.send_calls.load(Ordering::SeqCst)
    }

    /// The body of the last `msg_sec_check`, with the token under `access_token`.
    pub fn last_check(&self) -> Option<Value> {
        lock(&self.fake.last_check).clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn session(name: &str) -> Value {
    json!({
        "openid": format!("o-{name}"),
        "unionid": format!("un-{name}"),
        "session_key": format!("{SESSION_KEY_MARK}{name}=="),
    })
}

async fn code2session(
    State(fake): State<Arc<Fake>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let code = q.get("js_code").cloned().unwrap_or_default();
    let n = {
        let mut calls = lock(&fake.code_calls);
        let n = calls.entry(code.clone()).or_default();
        *n += 1;
        *n
    };
    if q.get("grant_type").map(String::as_str) != Some("authorization_code") {
        return Json(json!({"errcode": 40002, "errmsg": "invalid grant_type"})).into_response();
    }
    if let Some(name) = code.strip_prefix("ok-") {
        let mut v = session(name);
        v["errcode"] = json!(0);
        v["errmsg"] = json!("ok");
        return Json(v).into_response();
    }
    if let Some(name) = code.strip_prefix("plain-") {
        return (
            [(header::CONTENT_TYPE, "text/plain")],
            session(name).to_string(),
        )
            .into_response();
    }
    if let Some(name) = code.strip_prefix("slow-") {
        tokio::time::sleep(Duration::from_millis(300)).await;
        return Json(session(name)).into_response();
    }
    if let Some(name) = code.strip_prefix("busy-") {
        if n == 1 {
            return Json(json!({"errcode": -1, "errmsg": "system error, rid: fake"}))
                .into_response();
        }
        return Json(session(name)).into_response();
    }
    if let Some(n) = code.strip_prefix("serr") {
        return Json(json!({"errcode": n, "errmsg": "string errcode, rid: fake"})).into_response();
    }
    if let Some(n) = code.strip_prefix("err").and_then(|n| n.parse::<i64>().ok()) {
        return Json(json!({"errcode": n, "errmsg": format!("error {n}, rid: fake")}))
            .into_response();
    }
    if code == "hang" {
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
    if code == "html" {
        return (StatusCode::BAD_GATEWAY, "<html>bad gateway</html>").into_response();
    }
    Json(json!({"errcode": 40029, "errmsg": "invalid code, rid: fake"})).into_response()
}

async fn stable_token(State(fake): State<Arc<Fake>>, Json(body): Json<Value>) -> Response {
    let n = fake.token_calls.fetch_add(1, Ordering::SeqCst) + 1;
    if body["grant_type"] != "client_credential" {
        return Json(json!({"errcode": 40002, "errmsg": "invalid grant_type"})).into_response();
    }
    Json(json!({"access_token": format!("tok-{n}"), "expires_in": 7200})).into_response()
}

async fn msg_sec_check(
    State(fake): State<Arc<Fake>>,
    Query(q): Query<HashMap<String, String>>,
    Json(mut body): Json<Value>,
) -> Response {
    fake.check_calls.fetch_add(1, Ordering::SeqCst);
    let token = q.get("access_token").cloned().unwrap_or_default();
    body["access_token"] = json!(token);
    *lock(&fake.last_check) = Some(body.clone());
    if token.is_empty() || lock(&fake.revoked).contains(&token) {
        return Json(json!({"errcode": 40001, "errmsg": "invalid credential, rid: fake"}))
            .into_response();
    }
    let text = body["content"].as_str().unwrap_or_default();
    if text.contains("apifail") {
        return Json(json!({"errcode": -1, "errmsg": "system error"})).into_response();
    }
    if text.contains("quota") {
        return Json(json!({"errcode": 45009, "errmsg": "reach max api daily quota limit"}))
            .into_response();
    }
    let (suggest, label) = if text.contains("risky") {
        ("risky", 20001)
    } else if text.contains("review") {
        ("review", 21000)
    } else {
        ("pass", 100)
    };
    Json(json!({
        "errcode": 0,
        "errmsg": "ok",
        "trace_id": "trace-fake",
        "result": {"suggest": suggest, "label": label},
        "detail": [{"strategy": "content_model", "errcode": 0, "suggest": suggest, "label": label, "prob": 90}]
    }))
    .into_response()
}

async fn subscribe_send(
    State(fake): State<Arc<Fake>>,
    Query(q): Query<HashMap<String, String>>,
    Json(mut body): Json<Value>,
) -> Response {
    fake.send_calls.fetch_add(1, Ordering::SeqCst);
    let token = q.get("access_token").cloned().unwrap_or_default();
    if token.is_empty() || lock(&fake.revoked).contains(&token) {
        return Json(json!({"errcode": 40001, "errmsg": "invalid credential, rid: fake"}))
            .into_response();
    }
    let touser = body["touser"].as_str().unwrap_or_default().to_owned();
    let scripted = lock(&fake.send_script)
        .get_mut(&touser)
        .and_then(std::collections::VecDeque::pop_front);
    match scripted {
        Some(HTTP_502) => (StatusCode::BAD_GATEWAY, "<html>bad gateway</html>").into_response(),
        Some(errcode) if errcode != 0 => Json(json!({
            "errcode": errcode,
            "errmsg": format!("error {errcode}, rid: fake")
        }))
        .into_response(),
        _ => {
            body["access_token"] = json!(token);
            lock(&fake.sent).push(body);
            Json(json!({"errcode": 0, "errmsg": "ok"})).into_response()
        }
    }
}
