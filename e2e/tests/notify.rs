//! Offline notifications end to end: auth with the notifier on a real nats-server and
//! redis-server, the fake WeChat API on 127.0.0.1:0 (its `subscribeMessage.send` and
//! `stable_token`), a real gateway and real WebSocket clients. Recipients log in with WeChat codes
//! (so their openids are known); senders may use dev login.

use std::time::Duration;

use auth::config::{NotifyKind, Secret, Template, WeChat, parse_fields};
use auth::fake_wechat::{FakeWeChat, HTTP_502};
use e2e::ask;
use serde_json::{Value, json};
use testkit::{NatsServer, RedisServer, WsClient};
use tokio::sync::oneshot;

const DM: &str = "tmpl-dm";
const AT: &str = "tmpl-at";
/// NOTIFY_OFFLINE_AFTER_SECS in these tests.
const OFFLINE_AFTER: Duration = Duration::from_secs(1);

struct Stack {
    nats: NatsServer,
    _redis: RedisServer,
    fake: FakeWeChat,
    auth: auth::http::AppState,
    auth_url: String,
    http: reqwest::Client,
    gw: std::net::SocketAddr,
    _gw_stop: oneshot::Sender<()>,
    _tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

fn notify_config() -> auth::config::Notify {
    auth::config::Notify {
        templates: vec![
            Template {
                kind: NotifyKind::Dm,
                id: DM.into(),
                fields: parse_fields("thing1=sender,thing2=text,time3=time").unwrap(),
            },
            Template {
                kind: NotifyKind::Mention,
                id: AT.into(),
                fields: parse_fields("thing1=conversation,thing2=text,thing3=sender").unwrap(),
            },
        ],
        offline_after: OFFLINE_AFTER,
        page: "pages/chat/chat".into(),
        miniprogram_state: "formal".into(),
    }
}

async fn stack() -> Stack {
    testkit::init_tracing();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let nats = NatsServer::start().expect("start nats-server");
    let redis = RedisServer::start().expect("start redis-server");
    let fake = FakeWeChat::start().await;
    // The gateway creates stream CHAT and the buckets the notifier reads; it needs auth's keys,
    // so auth's HTTP side starts first and its notifier waits for them.
    let config = auth::Config {
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
        dev_login: true,
        notify: Some(notify_config()),
        ..auth::Config::default()
    };
    let state = auth::start(config).await.expect("auth start");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let auth_url = format!("http://{}", listener.local_addr().unwrap());
    let auth_task = tokio::spawn(auth::serve(listener, state.clone(), std::future::pending()));
    let gw_config = gateway::Config {
        nats_url: nats.url(),
        keys: gateway::config::KeySource::AuthUrl(auth_url.clone()),
        ..gateway::Config::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel();
    let gw_task = tokio::spawn(gateway::run(
        listener,
        gw_config,
        token::KeySet::new("liaotian"),
        async {
            let _ = rx.await;
        },
    ));
    e2e::wait_ready(gw).await;
    wait_for_consumer(&nats).await;
    Stack {
        nats,
        _redis: redis,
        fake,
        auth: state,
        auth_url,
        http: reqwest::Client::new(),
        gw,
        _gw_stop: tx,
        _tasks: vec![auth_task, gw_task],
    }
}

/// Waits until the notifier's durable consumer exists: messages stored from then on are decided.
async fn wait_for_consumer(nats: &NatsServer) {
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(stream) = js.get_stream("CHAT").await
            && stream
                .consumer_info(auth::notify::worker::CONSUMER)
                .await
                .is_ok()
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no notifier consumer"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Stack {
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

    /// A WeChat login (`ok-<name>`, openid `o-<name>`): the user id and the access token.
    async fn wechat_user(&self, name: &str) -> (String, String) {
        let (status, body) = self
            .post("/api/login", json!({"code": format!("ok-{name}")}), None)
            .await;
        assert_eq!(status, 200, "{body}");
        (
            body["data"]["user"].as_str().unwrap().to_owned(),
            body["data"]["access_token"].as_str().unwrap().to_owned(),
        )
    }

    /// A dev login's access token.
    async fn dev_user(&self, name: &str) -> String {
        let (status, body) = self
            .post("/api/login", json!({"dev_user": name}), None)
            .await;
        assert_eq!(status, 200, "{body}");
        body["data"]["access_token"].as_str().unwrap().to_owned()
    }

    async fn grant(&self, token: &str, templates: &[&str], times: usize) {
        for _ in 0..times {
            let (status, body) = self
                .post(
                    "/api/notify/grants",
                    json!({"template_ids": templates}),
                    Some(token),
                )
                .await;
            assert_eq!(status, 200, "{body}");
        }
    }

    async fn connect(&self, token: &str) -> WsClient {
        WsClient::connect(self.gw, token).await.expect("connect").0
    }

    /// The subscribe messages sent to `openid`.
    fn sent_to(&self, openid: &str) -> Vec<Value> {
        self.fake
            .sent()
            .into_iter()
            .filter(|b| b["touser"] == openid)
            .collect()
    }

    /// Waits up to `t` for `n` messages sent to `openid`, then returns what was sent.
    async fn wait_sent(&self, openid: &str, n: usize, t: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + t;
        loop {
            let sent = self.sent_to(openid);
            if sent.len() >= n || tokio::time::Instant::now() > deadline {
                return sent;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn metric(&self, name: &str, label: &str) -> u64 {
        let m = &self.auth.metrics;
        match name {
            "sent" => m.notify_sent.get(),
            "skipped" => m.notify_skipped.with_label_values(&[label]).get(),
            "failed" => m.notify_failed.with_label_values(&[label]).get(),
            _ => unreachable!(),
        }
    }
}

async fn dm(c: &mut WsClient, to: &str, text: &str, cmid: &str) -> u64 {
    let ack = ask(
        c,
        json!({"type":"send","to":to,"text":text,"client_msg_id":cmid,"id":cmid}),
        "ack",
    )
    .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    ack["seq"].as_u64().unwrap()
}

// Proves the rules end to end: an offline user gets exactly one notification for three messages
// (coalescing), with the template's fields and the page of the thread; none while online; one
// again once they came back and left for NOTIFY_OFFLINE_AFTER_SECS (the decision waits for it);
// none for a muted thread; and a report of a template the server does not send is refused.
#[tokio::test]
async fn an_offline_user_gets_one_notification_for_three_messages_and_none_while_online_or_muted() {
    let s = stack().await;
    let (bob, bob_token) = s.wechat_user("bob").await;
    let alice_token = s.dev_user("alice").await;
    let (status, body) = s
        .post(
            "/api/notify/grants",
            json!({"template_ids": ["tmpl-other"]}),
            Some(&bob_token),
        )
        .await;
    assert_eq!(
        (status, body["data"]["reason"].as_str()),
        (400, Some("bad_request")),
        "{body}"
    );
    let (status, _) = s
        .post(
            "/api/notify/grants",
            json!({"template_ids": [DM]}),
            Some("not-a-token"),
        )
        .await;
    assert_eq!(status, 401);
    s.grant(&bob_token, &[DM], 5).await;

    let mut alice = s.connect(&alice_token).await;
    for i in 0..3 {
        dm(
            &mut alice,
            &bob,
            &format!("第{i}条消息，内容比二十个字符还要长得多得多得多"),
            &format!("m{i}"),
        )
        .await;
    }
    let sent = s.wait_sent("o-bob", 1, Duration::from_secs(5)).await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    let n = &sent[0];
    assert_eq!(n["template_id"], DM);
    assert_eq!(n["page"], "pages/chat/chat?with=alice");
    assert_eq!(n["data"]["thing1"]["value"], "alice");
    assert_eq!(
        n["data"]["thing2"]["value"]
            .as_str()
            .unwrap()
            .chars()
            .count(),
        20
    );
    // Decisions for one user are serialized, not ordered: any of the three may be the one told.
    assert!(
        n["data"]["thing2"]["value"]
            .as_str()
            .unwrap()
            .starts_with('第')
    );
    assert_eq!(n["miniprogram_state"], "formal");
    // The other two were coalesced, not lost to a race.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(s.sent_to("o-bob").len(), 1);
    assert_eq!(s.metric("skipped", "coalesced"), 2);

    // Online: nothing.
    let mut b = s.connect(&bob_token).await;
    dm(&mut alice, &bob, "你在吗", "m3").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(s.sent_to("o-bob").len(), 1);
    assert_eq!(s.metric("skipped", "online"), 1);

    // Back and gone again: the next message waits until bob has been away long enough.
    drop(b.inner().close(None).await);
    drop(b);
    tokio::time::sleep(Duration::from_millis(200)).await;
    dm(&mut alice, &bob, "回来了吗", "m4").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(s.sent_to("o-bob").len(), 1, "notified before OFFLINE_AFTER");
    let sent = s.wait_sent("o-bob", 2, Duration::from_secs(5)).await;
    assert_eq!(sent.len(), 2, "no notification once away long enough");
    assert!(s.metric("skipped", "recently_online") >= 1);

    // Muted: nothing, however long bob is away.
    let mut b = s.connect(&bob_token).await;
    let m = ask(
        &mut b,
        json!({"type":"conversation_mute","with":"alice","muted":true,"id":"mu"}),
        "conversation_muted",
    )
    .await;
    assert_eq!(m["muted"], true, "{m}");
    drop(b.inner().close(None).await);
    drop(b);
    tokio::time::sleep(OFFLINE_AFTER + Duration::from_millis(300)).await;
    dm(&mut alice, &bob, "静音了", "m5").await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(s.sent_to("o-bob").len(), 2);
    assert_eq!(s.metric("skipped", "muted"), 1);
    // Two grants spent of five.
    let store = s.auth.store.clone().unwrap();
    assert_eq!(store.grants(&bob, DM).await.unwrap(), 3);
}

// Proves a group message notifies the members it mentions (not the sender, not the others) with
// the mention template, the group's name and the group's page, and that a user with no grant for
// it is skipped.
#[tokio::test]
async fn a_mention_notifies_the_mentioned_members_with_the_group_page() {
    let s = stack().await;
    let _p = e2e::Persister::start_on_nats(&s.nats.url()).await;
    let (bob, bob_token) = s.wechat_user("bob").await;
    let (carol, carol_token) = s.wechat_user("carol").await;
    let (dave, _) = s.wechat_user("dave").await;
    s.grant(&bob_token, &[AT, DM], 1).await;
    s.grant(&carol_token, &[DM], 1).await;
    let alice_token = s.dev_user("alice").await;
    let mut alice = s.connect(&alice_token).await;
    let g = ask(
        &mut alice,
        json!({"type":"group_create","group":"proj","name":"项目组","members":[bob, carol, dave],"id":"c"}),
        "group",
    )
    .await;
    assert_eq!(g["type"], "group", "{g}");
    ask(
        &mut alice,
        json!({"type":"join","group":"proj","id":"j"}),
        "joined",
    )
    .await;
    let ack = ask(
        &mut alice,
        json!({"type":"send","group":"proj","text":"@bob @carol 看一下","client_msg_id":"g1","mentions":[bob, carol],"id":"g1"}),
        "ack",
    )
    .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let sent = s.wait_sent("o-bob", 1, Duration::from_secs(5)).await;
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["template_id"], AT);
    assert_eq!(sent[0]["page"], "pages/chat/chat?group=proj");
    assert_eq!(sent[0]["data"]["thing1"]["value"], "项目组");
    assert_eq!(sent[0]["data"]["thing3"]["value"], "alice");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        s.sent_to("o-carol").is_empty(),
        "carol holds no mention grant"
    );
    assert!(s.sent_to("o-dave").is_empty(), "dave was not mentioned");
    assert_eq!(s.metric("skipped", "no_grant"), 1);
}

// Proves WeChat's answers get theirs: 43101 drops the user's grants; 47003 is counted, not
// retried, and the grant given back; a stale access token is replaced through stable_token and
// the send retried once; 45009 is retried with backoff until it passes; a network failure is
// retried within its bound, then dropped, counted and the grant given back.
#[tokio::test]
async fn wechat_errors_get_their_answers() {
    let s = stack().await;
    let (bob, bob_token) = s.wechat_user("bob").await;
    s.grant(&bob_token, &[DM], 10).await;
    let store = s.auth.store.clone().unwrap();
    // Each case from its own sender, so coalescing keeps out of the way.
    let bob = &bob;
    let s = &s;
    let case = |name: &'static str| async move {
        let token = s.dev_user(name).await;
        let mut c = s.connect(&token).await;
        dm(&mut c, bob, name, name).await;
        c
    };
    let calls = || s.fake.send_calls();

    // 47003: once, not retried; the grant comes back.
    s.fake.script_send("o-bob", &[47003]);
    let before = calls();
    let _c = case("s47003").await;
    wait(|| s.metric("failed", "47003") == 1).await;
    assert_eq!(calls() - before, 1);
    assert_eq!(store.grants(bob, DM).await.unwrap(), 10);

    // A stale token: a new one from stable_token, the send retried once.
    assert_eq!(s.fake.token_calls(), 1, "the first send fetched one token");
    let first = "tok-1".to_owned();
    s.fake.revoke_token(&first);
    let _c = case("stale").await;
    let sent = s.wait_sent("o-bob", 1, Duration::from_secs(5)).await;
    assert_eq!(sent.len(), 1);
    assert_ne!(sent[0]["access_token"], first.as_str());
    assert_eq!(
        s.fake.token_calls(),
        2,
        "one fetch for the first token, one for its successor"
    );
    assert_eq!(store.grants(bob, DM).await.unwrap(), 9);

    // 45009 twice, then through.
    s.fake.script_send("o-bob", &[45009, 45009]);
    let before = calls();
    let _c = case("s45009").await;
    let sent = s.wait_sent("o-bob", 2, Duration::from_secs(5)).await;
    assert_eq!(sent.len(), 2);
    assert_eq!(calls() - before, 3);

    // The network fails four times: dropped after the bounded retries, the grant given back.
    s.fake.script_send("o-bob", &[HTTP_502; 4]);
    let before = calls();
    let _c = case("network").await;
    wait(|| s.metric("failed", "network") == 1).await;
    assert_eq!(calls() - before, 4);
    assert_eq!(store.grants(bob, DM).await.unwrap(), 8);

    // 43101: the user holds no subscription after all; the grants go.
    s.fake.script_send("o-bob", &[43101]);
    let _c = case("s43101").await;
    wait(|| s.metric("failed", "43101") == 1).await;
    assert_eq!(store.grants(bob, DM).await.unwrap(), 0);
    let _c = case("after").await;
    wait(|| s.metric("skipped", "no_grant") == 1).await;
    assert_eq!(s.sent_to("o-bob").len(), 2);
}

async fn wait(cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met in 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// Proves a notifier restart neither loses nor repeats: what was notified before the stop is not
// sent again, and what arrived while it was down is sent once after it starts again.
#[tokio::test]
async fn a_notifier_restart_neither_loses_nor_repeats() {
    let s = stack().await;
    let (bob, bob_token) = s.wechat_user("bob").await;
    let (carol, carol_token) = s.wechat_user("carol").await;
    s.grant(&bob_token, &[DM], 3).await;
    s.grant(&carol_token, &[DM], 3).await;
    let alice_token = s.dev_user("alice").await;
    let mut alice = s.connect(&alice_token).await;
    dm(&mut alice, &bob, "before", "b1").await;
    assert_eq!(
        s.wait_sent("o-bob", 1, Duration::from_secs(5)).await.len(),
        1
    );

    s.auth.notifier.as_ref().unwrap().abort();
    tokio::time::sleep(Duration::from_millis(200)).await;
    dm(&mut alice, &carol, "while down", "c1").await;
    dm(&mut alice, &bob, "while down too", "b2").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(s.sent_to("o-carol").is_empty(), "a stopped notifier sent");

    let state = &s.auth;
    let again = auth::notify::spawn(
        state.config.notify.clone().unwrap(),
        std::sync::Arc::new(auth::wechat::TokenHolder::new(
            state.wechat.clone().unwrap(),
        )),
        state.store.clone().unwrap(),
        state.metrics.clone(),
        state.nats.clone().unwrap(),
    );
    let sent = s.wait_sent("o-carol", 1, Duration::from_secs(10)).await;
    assert_eq!(sent.len(), 1);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(s.sent_to("o-carol").len(), 1, "repeated after the restart");
    // Bob was notified of this thread before and has not been back: coalesced, not repeated.
    assert_eq!(s.sent_to("o-bob").len(), 1);
    again.abort();
}
