//! The webhook relay end to end: the admin service with `WEBHOOK_URL` pointing at a local HTTP
//! endpoint on 127.0.0.1:0 that the test scripts (answer 2xx, fail, or hang), over a real
//! nats-server with a real gateway, persister and WebSocket clients.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use admin::webhook::events::Kind;
use admin::webhook::sign;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use e2e::{Persister, Stack, ask};
use serde_json::{Value, json};

const SECRET: &[u8] = b"webhook-test-secret-0123456789abcdef";

/// What the endpoint does with the next request.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Answer {
    Ok,
    Fail,
    Hang,
}

#[derive(Default)]
struct Sink {
    /// Answers for the next requests; `Ok` when empty (or `default` when set).
    script: Mutex<VecDeque<Answer>>,
    default: Mutex<Option<Answer>>,
    /// Every request: (headers, body), in arrival order.
    got: Mutex<Vec<(HeaderMap, Value)>>,
}

async fn endpoint(State(sink): State<Arc<Sink>>, headers: HeaderMap, body: String) -> StatusCode {
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    // The signature covers the raw body: check it here, as a receiver would.
    let ts: u64 = headers[sign::TIMESTAMP_HEADER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let sig = headers[sign::SIGNATURE_HEADER].to_str().unwrap();
    assert!(
        sign::verify(SECRET, ts, body.as_bytes(), sig),
        "bad signature on {body}"
    );
    sink.got.lock().unwrap().push((headers, v));
    let answer = sink
        .script
        .lock()
        .unwrap()
        .pop_front()
        .or(*sink.default.lock().unwrap())
        .unwrap_or(Answer::Ok);
    match answer {
        Answer::Ok => StatusCode::NO_CONTENT,
        Answer::Fail => StatusCode::INTERNAL_SERVER_ERROR,
        Answer::Hang => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            StatusCode::OK
        }
    }
}

async fn sink() -> (Arc<Sink>, SocketAddr) {
    let sink = Arc::new(Sink::default());
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(endpoint))
        .with_state(sink.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (sink, addr)
}

/// The admin service with the relay on `addr`'s `/hook`, retrying after `first_backoff`.
async fn relay(stack: &Stack, addr: SocketAddr, kinds: &[Kind], attempts: u32) {
    let config = admin::Config {
        listen: "127.0.0.1:0".into(),
        keys: vec![auth::config::Secret("k".repeat(32))],
        redis_url: None,
        access_ttl_secs: 3600,
        gateway: stack.config(),
        webhook: Some(admin::webhook::Settings {
            url: format!("http://{addr}/hook"),
            secret: SECRET.to_vec(),
            kinds: kinds.iter().copied().collect(),
            timeout: Duration::from_millis(500),
            max_attempts: attempts,
            concurrency: 8,
            first_backoff: Duration::from_millis(50),
        }),
    };
    admin::start(config).await.expect("admin start");
    // The relay's consumers exist once it has read the streams.
    let js = async_nats::jetstream::new(async_nats::connect(stack.nats.url()).await.unwrap());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let chat = match js.get_stream("CHAT").await {
            Ok(s) => s
                .consumer_info(admin::webhook::relay::CHAT_CONSUMER)
                .await
                .is_ok(),
            Err(_) => false,
        };
        let presence = !kinds.contains(&Kind::Presence)
            || match js.get_stream(protocol::presence::STREAM).await {
                Ok(s) => s
                    .consumer_info(admin::webhook::relay::PRESENCE_CONSUMER)
                    .await
                    .is_ok(),
                Err(_) => false,
            };
        if chat && presence {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relay did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn bodies(sink: &Sink) -> Vec<Value> {
    sink.got
        .lock()
        .unwrap()
        .iter()
        .map(|(_, v)| v.clone())
        .collect()
}

async fn until(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// Proves every request is signed (the endpoint checks HMAC-SHA256 over timestamp and body) and
// carries a stable event id; that a stored message, a group change and a user going online and
// offline each become their event; and that an event the endpoint fails is retried, with the same
// id, until it is taken.
#[tokio::test]
async fn events_are_signed_and_retried_until_taken() {
    let s = Stack::start();
    let _p = Persister::start(&s).await;
    let g = s.gateway().await;
    let (sink, addr) = sink().await;
    relay(
        &s,
        addr,
        &[Kind::Message, Kind::Membership, Kind::Presence],
        6,
    )
    .await;
    let mut alice = s.connect(&g, "alice").await;
    until("alice online", || {
        bodies(&sink).iter().any(|b| b["type"] == "user.online")
    })
    .await;
    // The first message fails twice, then is taken.
    sink.script
        .lock()
        .unwrap()
        .extend([Answer::Fail, Answer::Fail]);
    let ack = ask(
        &mut alice,
        json!({"type":"send","to":"bob","text":"hi","client_msg_id":"m1","id":"m1"}),
        "ack",
    )
    .await;
    let seq = ack["seq"].as_u64().unwrap();
    until("the message delivered", || {
        bodies(&sink)
            .iter()
            .filter(|b| b["type"] == "message.stored")
            .count()
            == 3
    })
    .await;
    let got = sink.got.lock().unwrap().clone();
    let tries: Vec<&(HeaderMap, Value)> = got
        .iter()
        .filter(|(_, b)| b["type"] == "message.stored")
        .collect();
    for (h, b) in &tries {
        assert_eq!(h[sign::ID_HEADER], format!("chat-{seq}"));
        assert_eq!(b["id"], format!("chat-{seq}"));
        assert_eq!(b["data"]["from"], "alice");
        assert_eq!(b["data"]["to"], "bob");
        assert_eq!(b["data"]["text"], "hi");
    }
    let g1 = ask(
        &mut alice,
        json!({"type":"group_create","group":"team","name":"Team","members":["bob"],"id":"c"}),
        "group",
    )
    .await;
    assert_eq!(g1["type"], "group", "{g1}");
    until("the membership event", || {
        bodies(&sink)
            .iter()
            .any(|b| b["type"] == "group.membership" && b["data"]["kind"] == "created")
    })
    .await;
    let created = bodies(&sink)
        .into_iter()
        .find(|b| b["type"] == "group.membership")
        .unwrap();
    assert_eq!(created["data"]["group"], "team");
    assert_eq!(created["data"]["users"], json!(["alice", "bob"]));
    drop(alice);
    until("alice offline", || {
        bodies(&sink)
            .iter()
            .any(|b| b["type"] == "user.offline" && b["data"]["user"] == "alice")
    })
    .await;
}

// Proves an event the endpoint keeps failing is given up after WEBHOOK_MAX_ATTEMPTS requests and
// kept in stream WEBHOOK_DEAD with its last error, and that the next event goes through.
#[tokio::test]
async fn an_event_failing_every_attempt_is_dead_lettered() {
    let s = Stack::start();
    let g = s.gateway().await;
    let (sink, addr) = sink().await;
    relay(&s, addr, &[Kind::Message], 3).await;
    *sink.default.lock().unwrap() = Some(Answer::Fail);
    let mut alice = s.connect(&g, "alice").await;
    ask(
        &mut alice,
        json!({"type":"send","to":"bob","text":"doomed","client_msg_id":"d1","id":"d1"}),
        "ack",
    )
    .await;
    let js = async_nats::jetstream::new(async_nats::connect(s.nats.url()).await.unwrap());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let dead = loop {
        if let Ok(mut st) = js.get_stream(admin::webhook::relay::DEAD_STREAM).await
            && st.info().await.unwrap().state.messages == 1
        {
            break st.get_raw_message(1).await.unwrap();
        }
        assert!(tokio::time::Instant::now() < deadline, "no dead letter");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(bodies(&sink).len(), 3, "three attempts, then given up");
    assert_eq!(dead.subject.as_str(), "webhook.dead.message_stored");
    let body: Value = serde_json::from_slice(&dead.payload).unwrap();
    assert_eq!(body["data"]["text"], "doomed");
    let headers = dead.headers;
    assert_eq!(
        headers.get("Liaotian-Error").unwrap().as_str(),
        "HTTP 500 Internal Server Error"
    );
    assert_eq!(headers.get("Liaotian-Attempts").unwrap().as_str(), "3");
    *sink.default.lock().unwrap() = None;
    ask(
        &mut alice,
        json!({"type":"send","to":"bob","text":"fine","client_msg_id":"d2","id":"d2"}),
        "ack",
    )
    .await;
    until("the next event", || {
        bodies(&sink).iter().any(|b| b["data"]["text"] == "fine")
    })
    .await;
}

// Proves a hanging endpoint does not slow chat: once the relay is stuck on an endpoint where every
// request hangs, 200 messages are acked and delivered as before.
#[tokio::test]
async fn a_hanging_endpoint_never_blocks_chat() {
    let s = Stack::start();
    let g = s.gateway_with(s.config_unlimited()).await;
    let (sink, addr) = sink().await;
    relay(&s, addr, &[Kind::Message, Kind::Membership], 6).await;
    *sink.default.lock().unwrap() = Some(Answer::Hang);
    let mut alice = s.connect(&g, "alice").await;
    let mut bob = s.connect(&g, "bob").await;
    // First the relay reaches the endpoint and is stuck on it, as intended.
    ask(
        &mut alice,
        json!({"type":"send","to":"bob","text":"first","client_msg_id":"h-first","id":"h-first"}),
        "ack",
    )
    .await;
    until("the relay reaches the endpoint", || {
        !bodies(&sink).is_empty()
    })
    .await;
    let mut delivered = 0;
    while delivered < 1 {
        if bob.recv().await.unwrap()["type"] == "message" {
            delivered += 1;
        }
    }
    let started = tokio::time::Instant::now();
    for i in 0..200 {
        let cmid = format!("h{i}");
        let ack = ask(
            &mut alice,
            json!({"type":"send","to":"bob","text":cmid,"client_msg_id":cmid,"id":cmid}),
            "ack",
        )
        .await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    let mut delivered = 0;
    while delivered < 200 {
        let v = bob.recv().await.unwrap();
        if v["type"] == "message" {
            delivered += 1;
        }
    }
    eprintln!(
        "200 sends acked and delivered in {:?} while the endpoint hangs",
        started.elapsed()
    );
}
