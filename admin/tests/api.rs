//! The admin API end to end: `admin::start` and `admin::serve` on 127.0.0.1:0 over a real
//! nats-server, with two real gateways, a real persister on SQLite, real Redis for refresh tokens
//! and real WebSocket clients. Each test calls the API over HTTP as the app's backend would.

use std::net::SocketAddr;
use std::time::Duration;

use e2e::{Gateway, Persister, Stack, ask, next_within};
use serde_json::{Value, json};
use testkit::WsClient;
use testkit::ws::Ended;

const KEY: &str = "test-server-key-0123456789abcdef-0123";

struct Admin {
    base: String,
    http: reqwest::Client,
    _task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Admin {
    async fn start(stack: &Stack, redis: Option<&testkit::RedisServer>) -> Admin {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = admin::Config {
            listen: "127.0.0.1:0".into(),
            keys: vec![auth::config::Secret(KEY.into())],
            redis_url: redis.map(|r| auth::config::Secret(r.url())),
            access_ttl_secs: 3600,
            gateway: stack.config(),
            webhook: None,
        };
        let state = admin::start(config).await.expect("admin start");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let task = tokio::spawn(admin::serve(listener, state, std::future::pending()));
        Admin {
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
            _task: task,
        }
    }

    /// Calls `method path` with `body` (JSON when given) and `key` as the bearer.
    async fn call_as(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        key: Option<&str>,
    ) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call_as(method, path, body, Some(KEY)).await
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let (status, v) = self.call(reqwest::Method::POST, path, Some(body)).await;
        assert_eq!(status, 200, "{path}: {v}");
        assert_eq!(v["code"], 0, "{v}");
        v["data"].clone()
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }
}

/// The HTTP status a handshake with `token` was refused with, or `None` if it was accepted.
async fn refused_with(gw: &Gateway, token: &str) -> Option<u16> {
    match WsClient::connect(gw.addr, token).await {
        Ok(_) => None,
        Err(e) => {
            let text = format!("{e:#}");
            if text.contains("closed:") {
                return None;
            }
            let status = text
                .split("HTTP error: ")
                .nth(1)
                .and_then(|rest| rest.get(..3))
                .and_then(|code| code.parse().ok());
            Some(status.unwrap_or_else(|| panic!("handshake failed otherwise: {text}")))
        }
    }
}

/// Polls until a handshake with `token` on `gw` is refused with `status` (or accepted, for
/// `None`), for at most `within`.
async fn until_refused(gw: &Gateway, token: &str, status: Option<u16>, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let got = refused_with(gw, token).await;
        if got == status {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "handshake answered {got:?}, expected {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The next `message` or `event` frame.
async fn next_item(c: &mut WsClient) -> Value {
    loop {
        let v = c.recv().await.unwrap();
        if v["type"] == "message" || v["type"] == "event" {
            return v;
        }
    }
}

// Proves that only a configured server key opens the API: no key, a client's own access token
// and a wrong key are each a 401, `system` cannot connect; and that the OpenAPI document is served and names every route.
#[tokio::test]
async fn the_api_refuses_client_tokens_and_bad_keys() {
    let s = Stack::start();
    let gw = s.gateway().await;
    let admin = Admin::start(&s, None).await;
    // Nor is `system` a client: a token someone signed for it is refused at the handshake.
    assert_eq!(refused_with(&gw, &s.token("system")).await, Some(401));
    let path = "/v1/users/alice/presence";
    let client_token = s.token("alice");
    for (key, reason) in [
        (None, "missing_token"),
        (Some(client_token.as_str()), "invalid_key"),
        (Some("test-server-key-0123456789abcdef-0124"), "invalid_key"),
        (Some(""), "missing_token"),
    ] {
        let (status, v) = admin.call_as(reqwest::Method::GET, path, None, key).await;
        assert_eq!(status, 401, "{key:?}: {v}");
        assert_eq!(v["data"]["reason"], reason, "{v}");
    }
    // Every route is behind the key, writes included.
    let (status, _) = admin
        .call_as(
            reqwest::Method::POST,
            "/v1/users/alice/ban",
            None,
            Some(&client_token),
        )
        .await;
    assert_eq!(status, 401);
    let (status, v) = admin.get(path).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["data"], json!({"user": "alice", "online": false}));

    let (status, doc) = admin
        .call_as(reqwest::Method::GET, "/openapi.json", None, None)
        .await;
    assert_eq!(status, 200);
    let paths: Vec<&String> = doc["paths"].as_object().unwrap().keys().collect();
    for p in [
        "/v1/messages",
        "/v1/groups",
        "/v1/groups/{group}",
        "/v1/groups/{group}/members",
        "/v1/groups/{group}/members/{user}",
        "/v1/groups/{group}/members/{user}/role",
        "/v1/history",
        "/v1/users/{user}/presence",
        "/v1/users/{user}/ban",
        "/v1/users/{user}/unban",
        "/v1/users/{user}/revoke",
    ] {
        assert!(paths.iter().any(|x| *x == p), "{p} is not in {paths:?}");
    }
    assert!(doc["components"]["securitySchemes"]["server_key"].is_object());
}

// Proves that a group made through the API works like a member's, and that a system message
// reaches it in sequence on two gateways: members get the `created` event, the message from
// `system`, and an `added` event, each `prev_seq` the one before; the same idempotency key
// stores the message once; and the API reads it all back from the history store.
#[tokio::test]
async fn a_system_message_reaches_a_group_in_sequence() {
    let s = Stack::start();
    let _p = Persister::start(&s).await;
    let (g1, g2) = (s.gateway().await, s.gateway().await);
    let admin = Admin::start(&s, None).await;
    let mut alice = s.connect(&g1, "alice").await;
    let mut bob = s.connect(&g2, "bob").await;

    let g = admin
        .post(
            "/v1/groups",
            json!({"id": "order-1042", "name": "订单 1042", "owner": "alice", "members": ["bob"]}),
        )
        .await;
    assert_eq!(
        g["members"],
        json!([{"user": "alice", "role": "owner"}, {"user": "bob", "role": "member"}])
    );
    for c in [&mut alice, &mut bob] {
        let j = ask(
            c,
            json!({"type": "join", "group": "order-1042", "id": "j"}),
            "joined",
        )
        .await;
        assert_eq!(j["type"], "joined", "{j}");
    }
    let ack = ask(
        &mut alice,
        json!({"type": "send", "group": "order-1042", "text": "hi", "client_msg_id": "a1", "id": "a1"}),
        "ack",
    )
    .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let first = ack["seq"].as_u64().unwrap();

    let body =
        json!({"group": "order-1042", "text": "您的订单已发货", "idempotency_key": "ship-1042"});
    let sent = admin.post("/v1/messages", body.clone()).await;
    let seq = sent["seq"].as_u64().unwrap();
    assert!(seq > first);
    // A repeat with the same key is stored once and answered with the first seq.
    let again = admin.post("/v1/messages", body).await;
    assert_eq!(again, sent);
    let added = admin
        .post("/v1/groups/order-1042/members", json!({"users": ["carol"]}))
        .await;
    assert_eq!(added["members"].as_array().unwrap().len(), 3);

    // Alice's own copy of her message came before her ack, and `ask` passed over it.
    let theirs = next_item(&mut bob).await;
    assert_eq!(
        (theirs["seq"].as_u64(), theirs["from"].as_str()),
        (Some(first), Some("alice"))
    );
    for c in [&mut alice, &mut bob] {
        let m = next_item(c).await;
        assert_eq!(m["type"], "message");
        assert_eq!(m["from"], "system");
        assert_eq!(m["text"], "您的订单已发货");
        assert_eq!(m["group"], "order-1042");
        assert_eq!(
            (m["seq"].as_u64(), m["prev_seq"].as_u64()),
            (Some(seq), Some(first))
        );
        let e = next_item(c).await;
        assert_eq!(e["type"], "event", "{e}");
        assert_eq!(e["kind"], "added");
        assert_eq!(e["by"], "system");
        assert_eq!(e["prev_seq"].as_u64(), Some(seq));
        // Nothing else: the repeated publish was not delivered twice.
        assert_eq!(next_within(c, Duration::from_millis(300)).await, None);
    }

    // History through the API, once the persister has stored the four items.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let page = loop {
        let (status, v) = admin.get("/v1/history?group=order-1042&limit=10").await;
        if status == 200 && v["data"]["messages"].as_array().unwrap().len() == 4 {
            break v["data"].clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "history: {status} {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let items = page["messages"].as_array().unwrap();
    assert_eq!(items[0]["kind"], "created");
    assert_eq!(items[0]["by"], "system");
    assert_eq!(items[2]["seq"].as_u64(), Some(seq));
    assert_eq!(items[2]["from"], "system");
    assert_eq!(page["more"], false);
    let (status, v) = admin.get("/v1/groups/order-1042").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["data"]["members"][2]["user"], "carol");
}

// Proves a system message reaches a user's direct thread with `system` and an open room, and
// that the API's group changes follow the rules: removal, passing ownership on, refusing to
// remove the owner, a taken id, a group that does not exist.
#[tokio::test]
async fn system_messages_reach_threads_and_rooms_and_group_changes_follow_the_rules() {
    let s = Stack::start();
    let g1 = s.gateway().await;
    // The conversation service counts each user's groups for a create.
    let _p = Persister::start(&s).await;
    let admin = Admin::start(&s, None).await;
    let mut bob = s.connect(&g1, "bob").await;
    let dm = admin
        .post(
            "/v1/messages",
            json!({"user": "bob", "text": "welcome", "idempotency_key": "w-bob"}),
        )
        .await;
    let m = next_item(&mut bob).await;
    assert_eq!(
        (m["from"].as_str(), m["text"].as_str()),
        (Some("system"), Some("welcome"))
    );
    assert_eq!(m["seq"], dm["seq"]);
    assert_eq!(m["to"], "bob", "{m}");

    let j = ask(
        &mut bob,
        json!({"type": "join", "room": "lobby", "id": "j"}),
        "joined",
    )
    .await;
    assert_eq!(j["type"], "joined");
    admin
        .post(
            "/v1/messages",
            json!({"room": "lobby", "text": "maintenance at 2am", "idempotency_key": "m1"}),
        )
        .await;
    let m = next_item(&mut bob).await;
    assert_eq!(
        (m["room"].as_str(), m["from"].as_str()),
        (Some("lobby"), Some("system"))
    );

    admin
        .post(
            "/v1/groups",
            json!({"id": "cs-7", "name": "客服", "owner": "alice", "members": ["bob", "agent"]}),
        )
        .await;
    let (status, v) = admin
        .call(
            reqwest::Method::POST,
            "/v1/groups",
            Some(json!({"id": "cs-7", "name": "x", "owner": "alice"})),
        )
        .await;
    assert_eq!(
        (status, v["data"]["reason"].as_str()),
        (409, Some("conflict")),
        "{v}"
    );
    let (status, v) = admin
        .call(
            reqwest::Method::DELETE,
            "/v1/groups/cs-7/members/alice",
            None,
        )
        .await;
    assert_eq!(status, 400, "the owner cannot be removed: {v}");
    let (status, v) = admin
        .call(
            reqwest::Method::PUT,
            "/v1/groups/cs-7/members/agent/role",
            Some(json!({"role": "owner"})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["data"]["members"],
        json!([{"user": "alice", "role": "admin"}, {"user": "bob", "role": "member"}, {"user": "agent", "role": "owner"}])
    );
    let (status, v) = admin
        .call(
            reqwest::Method::DELETE,
            "/v1/groups/cs-7/members/alice",
            None,
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["data"]["members"].as_array().unwrap().len(), 2);
    for path in ["/v1/groups/nope", "/v1/groups/nope/members/bob"] {
        let method = if path.ends_with("bob") {
            reqwest::Method::DELETE
        } else {
            reqwest::Method::GET
        };
        let (status, v) = admin.call(method, path, None).await;
        assert_eq!(
            (status, v["data"]["reason"].as_str()),
            (404, Some("not_found")),
            "{path}: {v}"
        );
    }
    let (status, _) = admin
        .call(
            reqwest::Method::POST,
            "/v1/messages",
            Some(json!({"group": "nope", "text": "x", "idempotency_key": "k"})),
        )
        .await;
    assert_eq!(status, 404);
}

// Proves that malformed input is answered with a 4xx and a reason, never a 5xx, and stores
// nothing.
#[tokio::test]
async fn malformed_input_is_a_4xx_with_a_reason() {
    let s = Stack::start();
    let _g = s.gateway().await;
    let _p = Persister::start(&s).await;
    let admin = Admin::start(&s, None).await;
    use reqwest::Method as M;
    let cases: Vec<(M, &str, Option<Value>, &str)> = vec![
        (
            M::POST,
            "/v1/messages",
            Some(json!({"text": "x", "idempotency_key": "k"})),
            "bad_request",
        ),
        (
            M::POST,
            "/v1/messages",
            Some(json!({"room": "r", "user": "u", "text": "x", "idempotency_key": "k"})),
            "bad_request",
        ),
        (
            M::POST,
            "/v1/messages",
            Some(json!({"room": "r", "text": "  ", "idempotency_key": "k"})),
            "bad_request",
        ),
        (
            M::POST,
            "/v1/messages",
            Some(json!({"room": "r", "text": "x".repeat(4001), "idempotency_key": "k"})),
            "bad_request",
        ),
        (
            M::POST,
            "/v1/messages",
            Some(json!({"room": "a.b", "text": "x", "idempotency_key": "k"})),
            "bad_request",
        ),
        (
            M::POST,
            "/v1/messages",
            Some(json!({"user": "system", "text": "x", "idempotency_key": "k"})),
            "bad_request",
        ),
        (M::POST, "/v1/messages", Some(json!([1, 2])), "bad_request"),
        (
            M::POST,
            "/v1/groups",
            Some(json!({"name": "", "owner": "alice"})),
            "bad_request",
        ),
        (
            M::POST,
            "/v1/groups",
            Some(json!({"name": "n", "owner": "system"})),
            "bad_request",
        ),
        (
            M::POST,
            "/v1/groups",
            Some(json!({"name": "n", "owner": "alice", "members": ["system"]})),
            "bad_request",
        ),
        (M::GET, "/v1/groups/a%20b", None, "invalid_id"),
        (
            M::PUT,
            "/v1/groups/g/members/bob/role",
            Some(json!({"role": "king"})),
            "bad_request",
        ),
        (M::GET, "/v1/history", None, "bad_request"),
        (M::GET, "/v1/history?room=r&limit=0", None, "bad_request"),
        (M::GET, "/v1/history?room=r&limit=abc", None, "bad_request"),
        (M::GET, "/v1/history?dm=alice", None, "bad_request"),
        (M::GET, "/v1/history?dm=alice,alice", None, "bad_request"),
        (M::GET, "/v1/history?dm=alice,b%2Ac", None, "invalid_id"),
        (M::GET, "/v1/users/x%2Ay/presence", None, "invalid_id"),
        (M::POST, "/v1/users/system/ban", None, "bad_request"),
    ];
    for (method, path, body, reason) in cases {
        let (status, v) = admin.call(method.clone(), path, body.clone()).await;
        assert!(
            (400..500).contains(&status),
            "{method} {path} {body:?}: {status} {v}"
        );
        assert_eq!(v["data"]["reason"], reason, "{method} {path} {body:?}: {v}");
    }
    // A body that is not JSON at all.
    let resp = admin
        .http
        .post(format!("{}/v1/messages", admin.base))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let (_, v) = admin.get("/v1/history?room=r").await;
    assert_eq!(
        v["data"]["messages"],
        json!([]),
        "nothing was stored in room r: {v}"
    );
}

// Proves that a ban through the API closes the user's sockets on two gateways with 4003 within
// 1 s and refuses their next handshake with 403, that others are untouched, and that an unban
// lets the same token in again.
#[tokio::test]
async fn ban_closes_sockets_on_two_gateways_and_unban_lets_them_back() {
    let s = Stack::start();
    let (g1, g2) = (s.gateway().await, s.gateway().await);
    let admin = Admin::start(&s, None).await;
    let token = s.token("alice");
    let mut a1 = WsClient::connect(g1.addr, &token).await.unwrap().0;
    let mut a2 = WsClient::connect(g2.addr, &token).await.unwrap().0;
    let mut bob = s.connect(&g2, "bob").await;
    let (_, v) = admin.get("/v1/users/alice/presence").await;
    assert_eq!(v["data"]["online"], true, "{v}");

    let at = tokio::time::Instant::now();
    let r = admin.post("/v1/users/alice/ban", json!({})).await;
    assert_eq!(r["banned"], true);
    for c in [&mut a1, &mut a2] {
        assert_eq!(
            c.closed(Duration::from_secs(1)).await.unwrap(),
            Ended::Closed(Some(4003))
        );
    }
    eprintln!("both sockets closed {:?} after the ban call", at.elapsed());
    for g in [&g1, &g2] {
        until_refused(g, &token, Some(403), Duration::from_secs(1)).await;
    }
    bob.send(json!({"type": "ping", "id": "p"})).await.unwrap();
    assert_eq!(bob.recv_type("pong").await.unwrap()["id"], "p");

    let r = admin.post("/v1/users/alice/unban", json!({})).await;
    assert_eq!(r["banned"], false);
    until_refused(&g1, &token, None, Duration::from_secs(2)).await;
}

// Proves that revoke kills the user's tokens at once: the open sockets close with 4001, the old
// access token is refused (401) on both gateways, the refresh token no longer rotates, and a
// token issued after the revoke works.
#[tokio::test]
async fn revoke_kills_access_and_refresh_tokens_at_once() {
    let s = Stack::start();
    let redis = testkit::RedisServer::start().expect("redis");
    let (g1, g2) = (s.gateway().await, s.gateway().await);
    let admin = Admin::start(&s, Some(&redis)).await;
    let store = auth::store::Store::new(&redis.url(), 3600, 3600).unwrap();
    let refresh = store.new_family("alice").await.unwrap();
    let token = s.token("alice");
    let mut a1 = WsClient::connect(g1.addr, &token).await.unwrap().0;
    // `not_before` counts in seconds: a token issued in the second of the revoke still passes.
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let r = admin.post("/v1/users/alice/revoke", json!({})).await;
    assert_eq!(r["revoked_families"], 1, "{r}");
    assert!(r["not_before"].as_u64().unwrap() > 0);
    assert_eq!(
        a1.closed(Duration::from_secs(2)).await.unwrap(),
        Ended::Closed(Some(4001))
    );
    for g in [&g1, &g2] {
        until_refused(g, &token, Some(401), Duration::from_secs(1)).await;
    }
    assert!(matches!(
        store.rotate(&refresh).await.unwrap(),
        auth::store::Rotation::Invalid
    ));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    until_refused(&g2, &s.token("alice"), None, Duration::from_secs(1)).await;
}
