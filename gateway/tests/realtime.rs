//! End-to-end behaviour of protocol v1 through real gateways, a real nats-server and real WebSocket
//! clients.

use std::time::Duration;

use gateway::testing::{Stack, join, messages, send};
use serde_json::{Value, json};
use testkit::WsClient;
use testkit::ws::Ended;

#[tokio::test]
async fn two_gateways_deliver_one_room_in_one_order() {
    // Clients on different gateways see the same messages with the same seqs in the same order.
    let stack = Stack::start();
    let (g1, g2) = (stack.gateway().await, stack.gateway().await);
    let mut alice = stack.connect(&g1, "alice").await;
    let mut bob = stack.connect(&g2, "bob").await;
    assert_eq!(join(&mut alice, "lobby").await["last_seq"], 0);
    join(&mut bob, "lobby").await;
    for i in 0..10 {
        alice
            .send(send("lobby", &format!("a{i}"), &format!("a{i}")))
            .await
            .unwrap();
        bob.send(send("lobby", &format!("b{i}"), &format!("b{i}")))
            .await
            .unwrap();
    }
    let at_alice = messages(&mut alice, 20).await;
    let at_bob = messages(&mut bob, 20).await;
    let key = |v: &Vec<Value>| {
        v.iter()
            .map(|m| (m["seq"].as_u64().unwrap(), m["text"].to_string()))
            .collect::<Vec<_>>()
    };
    assert_eq!(key(&at_alice), key(&at_bob));
    let seqs: Vec<u64> = at_alice
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "seqs increase: {seqs:?}"
    );
    // Each message names the previous one of the room, so the chain has no hole.
    for w in at_alice.windows(2) {
        assert_eq!(w[1]["prev_seq"], w[0]["seq"]);
    }
    assert_eq!(at_alice[0]["prev_seq"], 0);
    let m = &at_bob[0];
    assert_eq!(m["room"], "lobby");
    assert!(m["from"] == "alice" || m["from"] == "bob");
    // A later joiner learns the newest seq.
    let mut carol = stack.connect(&g2, "carol").await;
    assert_eq!(
        join(&mut carol, "lobby").await["last_seq"],
        *seqs.last().unwrap()
    );
}

#[tokio::test]
async fn direct_message_reaches_recipient_and_senders_other_devices() {
    // A DM is stored once and delivered to the recipient on another gateway and to the sender's second connection.
    let stack = Stack::start();
    let (g1, g2) = (stack.gateway().await, stack.gateway().await);
    let mut alice_phone = stack.connect(&g1, "alice").await;
    let mut alice_pc = stack.connect(&g2, "alice").await;
    let mut bob = stack.connect(&g2, "bob").await;
    let mut carol = stack.connect(&g2, "carol").await;
    alice_phone
        .send(json!({"type":"send","to":"bob","text":"hi bob","client_msg_id":"dm1"}))
        .await
        .unwrap();
    // The sender's own copy may arrive before or after its ack.
    let (mut ack, mut own) = (None, None);
    while ack.is_none() || own.is_none() {
        let v = alice_phone.recv().await.unwrap();
        match v["type"].as_str() {
            Some("ack") => ack = Some(v),
            Some("message") => own = Some(v),
            _ => {}
        }
    }
    let (ack, own) = (ack.unwrap(), own.unwrap());
    assert_eq!(own["seq"], ack["seq"]);
    for c in [&mut bob, &mut alice_pc] {
        let m = c.recv_type("message").await.unwrap();
        assert_eq!(
            (m["from"].as_str(), m["to"].as_str(), m["text"].as_str()),
            (Some("alice"), Some("bob"), Some("hi bob"))
        );
        assert_eq!(m["seq"], ack["seq"]);
    }
    // The reply comes back the same way, on the other side of the sorted pair.
    bob.send(json!({"type":"send","to":"alice","text":"hi alice","client_msg_id":"dm2"}))
        .await
        .unwrap();
    for c in [&mut alice_pc, &mut alice_phone] {
        let m = c.recv_type("message").await.unwrap();
        assert_eq!(m["text"], "hi alice");
        assert_eq!(m["prev_seq"], ack["seq"]);
    }
    // Nobody else got it.
    carol.send(json!({"type":"ping","id":"p"})).await.unwrap();
    assert_eq!(carol.recv().await.unwrap()["type"], "pong");
}

#[tokio::test]
async fn resent_client_msg_id_is_stored_and_delivered_once() {
    // A resend after a lost ack gets the same ack, and receivers see the message once.
    let stack = Stack::start();
    let g = stack.gateway().await;
    let mut alice = stack.connect(&g, "alice").await;
    let mut bob = stack.connect(&g, "bob").await;
    join(&mut alice, "r").await;
    join(&mut bob, "r").await;
    alice.send(send("r", "once", "same-id")).await.unwrap();
    let first = alice.recv_type("ack").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    alice.send(send("r", "once", "same-id")).await.unwrap();
    let second = alice.recv_type("ack").await.unwrap();
    assert_eq!(first["seq"], second["seq"]);
    assert_eq!(first["ts"], second["ts"]);
    alice.send(send("r", "after", "other-id")).await.unwrap();
    let got = messages(&mut bob, 2).await;
    assert_eq!(got[0]["text"], "once");
    assert_eq!(
        got[1]["text"], "after",
        "the duplicate must not be delivered"
    );
}

#[tokio::test]
async fn a_reconnect_with_the_same_token_skips_its_signature_check() {
    // A client that comes back with the token it holds is answered from the gateway's cache of
    // verified tokens; the same user with a new token is checked in full.
    let stack = Stack::start();
    let g = stack.gateway().await;
    let hits = || async {
        gateway::testing::metric(&g, "gateway_token_cache_hits_total")
            .await
            .expect("the metric is exported")
    };
    let held = stack.token("alice");
    let (first, _) = WsClient::connect(g.addr, &held).await.unwrap();
    drop(first);
    assert_eq!(hits().await, 0.0);
    let (mut again, _) = WsClient::connect(g.addr, &held).await.unwrap();
    assert_eq!(hits().await, 1.0);
    // The cached answer names the same user.
    join(&mut again, "r").await;
    again.send(send("r", "hi", "c1")).await.unwrap();
    let m = again.recv_type("message").await.unwrap();
    assert_eq!(m["from"], "alice");
    let other = stack.signer.issue(
        &protocol::UserId::parse("alice").unwrap(),
        token::now_secs() - 5,
        3600,
    );
    let _c = WsClient::connect(g.addr, &other).await.unwrap();
    assert_eq!(hits().await, 1.0);
}

#[tokio::test]
async fn handshakes_without_a_valid_token_get_401() {
    // Missing, malformed, foreign and expired tokens are refused before the upgrade with a JSON 401.
    use tokio_tungstenite::tungstenite::{Error, client::IntoClientRequest};
    let stack = Stack::start();
    let g = stack.gateway().await;
    let expired = stack.signer.sign(&token::Claims {
        sub: "alice".into(),
        iat: 1,
        exp: 2,
        iss: "liaotian".into(),
        kid: stack.signer.kid().into(),
    });
    let foreign = token::Signer::generate("liaotian").issue(
        &protocol::UserId::parse("alice").unwrap(),
        token::now_secs(),
        60,
    );
    for query in [
        String::new(),
        "?token=garbage".into(),
        format!("?token={expired}"),
        format!("?token={foreign}"),
    ] {
        let req = format!("ws://{}/ws{query}", g.addr)
            .into_client_request()
            .unwrap();
        match tokio_tungstenite::connect_async(req).await {
            Err(Error::Http(resp)) => {
                assert_eq!(resp.status(), 401, "{query}");
                let body: Value =
                    serde_json::from_slice(resp.body().as_deref().unwrap_or_default()).unwrap();
                assert_eq!(body["code"], 40100);
                assert!(body["data"]["reason"].is_string());
            }
            other => panic!("expected 401 for {query:?}, got {:?}", other.map(|_| ())),
        }
    }
    // The token in the query string works too.
    let req = format!("ws://{}/ws?token={}", g.addr, stack.token("alice"))
        .into_client_request()
        .unwrap();
    let (_ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(resp.status(), 101);
    assert!(
        resp.headers().get("sec-websocket-protocol").is_none(),
        "no subprotocol offered, none echoed"
    );
}

#[tokio::test]
async fn malformed_and_unknown_frames_get_errors_and_the_connection_stays() {
    // Each bad frame gets its documented error code, echoing the id when it could be read.
    let stack = Stack::start();
    let g = stack.gateway().await;
    let mut c = stack.connect(&g, "alice").await;
    let cases: Vec<(String, &str, Value)> = vec![
        ("{not json".into(), "bad_request", Value::Null),
        ("[]".into(), "bad_request", Value::Null),
        (
            r#"{"type":"teleport","id":"t1"}"#.into(),
            "unknown_type",
            json!("t1"),
        ),
        (
            r#"{"type":"join","id":"t2"}"#.into(),
            "bad_request",
            json!("t2"),
        ),
        (
            r#"{"type":"join","id":"t3","room":"no spaces"}"#.into(),
            "invalid_id",
            json!("t3"),
        ),
        (
            r#"{"type":"send","id":"t4","to":"a.b","text":"x","client_msg_id":"c"}"#.into(),
            "invalid_id",
            json!("t4"),
        ),
        (
            r#"{"type":"send","id":"t5","room":"r","text":"x","client_msg_id":"c"}"#.into(),
            "not_joined",
            json!("t5"),
        ),
        (
            r#"{"type":"leave","id":"t6","room":"r"}"#.into(),
            "not_joined",
            json!("t6"),
        ),
        (
            r#"{"type":"send","id":"t7","to":"alice","text":"x","client_msg_id":"c"}"#.into(),
            "bad_request",
            json!("t7"),
        ),
        (
            format!(
                r#"{{"type":"send","id":"t8","to":"bob","text":"{}","client_msg_id":"c"}}"#,
                "x".repeat(4001)
            ),
            "too_large",
            json!("t8"),
        ),
        (
            r#"{"type":"send","id":"t9","to":"bob","text":"","client_msg_id":"c"}"#.into(),
            "bad_request",
            json!("t9"),
        ),
    ];
    for (frame, code, id) in cases {
        c.send_text(frame.clone()).await.unwrap();
        let e = c.recv().await.unwrap();
        assert_eq!(e["type"], "error", "{frame}");
        assert_eq!(e["code"], code, "{frame}");
        assert_eq!(e["id"], id, "{frame}");
    }
    c.inner()
        .send(tokio_tungstenite::tungstenite::Message::binary(vec![
            1, 2, 3,
        ]))
        .await
        .unwrap();
    assert_eq!(c.recv().await.unwrap()["code"], "bad_request");
    c.send(json!({"type":"ping","id":"still-here"}))
        .await
        .unwrap();
    let pong = c.recv().await.unwrap();
    assert_eq!(
        (pong["type"].as_str(), pong["id"].as_str()),
        (Some("pong"), Some("still-here"))
    );
}

use futures_util::SinkExt;

#[tokio::test]
async fn oversize_frame_gets_too_large_then_1009() {
    // A frame over 64 KiB is answered with an error frame and a clean close 1009, never a silent drop.
    let stack = Stack::start();
    let g = stack.gateway().await;
    for size in [64 * 1024 + 1, 1024 * 1024] {
        let mut c = stack.connect(&g, "alice").await;
        c.send_text(format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(size)))
            .await
            .unwrap();
        let e = c.recv().await.unwrap();
        assert_eq!(e["code"], "too_large", "size {size}");
        assert_eq!(
            c.closed(Duration::from_secs(5)).await.unwrap(),
            Ended::Closed(Some(1009)),
            "size {size}"
        );
    }
}

#[tokio::test]
async fn flood_beyond_the_token_bucket_is_rate_limited() {
    // Frames beyond the bucket get rate_limited; the connection survives and recovers.
    let stack = Stack::start();
    let g = stack
        .gateway_with(gateway::Config {
            rate_per_sec: 5.0,
            rate_burst: 5.0,
            ..stack.config()
        })
        .await;
    let mut c = stack.connect(&g, "alice").await;
    for i in 0..20 {
        c.send(json!({"type":"ping","id":i.to_string()}))
            .await
            .unwrap();
    }
    let mut codes = Vec::new();
    for _ in 0..20 {
        let v = c.recv().await.unwrap();
        codes.push(if v["type"] == "pong" {
            "pong".to_owned()
        } else {
            // At 5 tokens a second, the next token is at most 200 ms away, and the hint says when.
            if v["code"] == "rate_limited" {
                let wait = v["retry_after_ms"]
                    .as_u64()
                    .expect("rate_limited names retry_after_ms");
                assert!((1..=200).contains(&wait), "{v}");
            }
            v["code"].as_str().unwrap().to_owned()
        });
    }
    let limited = codes.iter().filter(|c| *c == "rate_limited").count();
    assert!((13..=15).contains(&limited), "{codes:?}");
    tokio::time::sleep(Duration::from_millis(600)).await;
    c.send(json!({"type":"ping"})).await.unwrap();
    assert_eq!(c.recv().await.unwrap()["type"], "pong");
}

#[tokio::test]
async fn read_frames_are_rate_limited_like_any_frame() {
    // `read` takes from the same bucket: past the burst, reads get rate_limited before anything is
    // asked of the conversation service.
    let stack = Stack::start();
    let g = stack
        .gateway_with(gateway::Config {
            rate_per_sec: 5.0,
            rate_burst: 5.0,
            ..stack.config()
        })
        .await;
    let mut c = stack.connect(&g, "alice").await;
    for i in 0..20 {
        c.send(json!({"type":"read","with":"bob","seq":i,"id":i.to_string()}))
            .await
            .unwrap();
    }
    let mut limited = 0;
    for _ in 0..20 {
        let v = c.recv().await.unwrap();
        if v["code"] == "rate_limited" {
            limited += 1;
        }
    }
    assert!((13..=15).contains(&limited), "{limited} of 20 limited");
}

#[tokio::test]
async fn a_client_that_only_answers_pings_stays_open() {
    // The gateway pings every heartbeat, and the client's pongs (tungstenite answers while
    // reading) count as activity: one timer serves both, so both must keep working.
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let stack = Stack::start();
    let g = stack
        .gateway_with(gateway::Config {
            idle_timeout: Duration::from_millis(800),
            heartbeat: Duration::from_millis(200),
            ..stack.config()
        })
        .await;
    let mut c = stack.connect(&g, "alice").await;
    let until = tokio::time::Instant::now() + Duration::from_millis(2_600);
    let mut pings = 0;
    while let Ok(frame) = tokio::time::timeout_at(until, c.inner().next()).await {
        match frame {
            Some(Ok(Message::Ping(_))) => pings += 1,
            Some(Ok(Message::Text(_))) => {}
            other => panic!("connection ended after {pings} pings: {other:?}"),
        }
    }
    // About 13 in 2.6 s; more than 3 idle timeouts passed without a frame from the client.
    assert!((8..=16).contains(&pings), "{pings} pings");
    c.send(json!({"type":"ping"})).await.unwrap();
    assert_eq!(c.recv_type("pong").await.unwrap()["type"], "pong");
}

#[tokio::test]
async fn silent_client_is_closed_with_4000() {
    // A client that sends nothing (not even pongs) for the idle timeout is closed with 4000.
    let stack = Stack::start();
    let g = stack
        .gateway_with(gateway::Config {
            idle_timeout: Duration::from_millis(800),
            heartbeat: Duration::from_millis(300),
            ..stack.config()
        })
        .await;
    let mut c = stack.connect(&g, "alice").await;
    // Not reading means tungstenite does not answer the server's pings either.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        c.closed(Duration::from_secs(5)).await.unwrap(),
        Ended::Closed(Some(4000))
    );
    // An active client outlives the timeout.
    let mut active = stack.connect(&g, "bob").await;
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        active.send(json!({"type":"ping"})).await.unwrap();
        assert_eq!(active.recv_type("pong").await.unwrap()["type"], "pong");
    }
}

#[tokio::test]
async fn slow_consumer_is_closed_with_4008_while_others_keep_receiving() {
    // A client that stops reading overflows its bounded queue and is closed; the room goes on.
    let stack = Stack::start();
    let g = stack
        .gateway_with(gateway::Config {
            outbound_queue: 16,
            rate_per_sec: 10_000.0,
            rate_burst: 10_000.0,
            user_sends_per_sec: 10_000.0,
            user_send_burst: 10_000.0,
            ..stack.config()
        })
        .await;
    let token = stack.token("slow");
    let mut slow = testkit::WsClient::connect_small_buffer(g.addr, &token)
        .await
        .unwrap();
    join(&mut slow, "busy").await;
    let mut reader = stack.connect(&g, "reader").await;
    join(&mut reader, "busy").await;
    let mut sender = stack.connect(&g, "sender").await;
    join(&mut sender, "busy").await;
    // More than the kernel's largest socket send buffer (4 MiB) plus the queue must be in flight.
    let n = 1500;
    let text = "y".repeat(3900);
    let sending = tokio::spawn(async move {
        for i in 0..n {
            sender
                .send(send("busy", &text, &format!("m{i}")))
                .await
                .unwrap();
            // Reading up to each ack keeps the sender's own queue short.
            sender.recv_type("ack").await.unwrap();
        }
        sender
    });
    let got = messages(&mut reader, n).await;
    let texts: Vec<_> = got
        .iter()
        .map(|m| m["client_msg_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(texts, (0..n).map(|i| format!("m{i}")).collect::<Vec<_>>());
    let _sender = sending.await.unwrap();
    assert_eq!(
        slow.closed(Duration::from_secs(10)).await.unwrap(),
        Ended::Closed(Some(4008))
    );
}

#[tokio::test]
async fn send_is_unavailable_while_nats_is_down_and_recovers() {
    // With NATS stopped nothing is acked; after a restart the same client_msg_id is stored once and delivery resumes.
    let mut stack = Stack::start();
    let g = stack
        .gateway_with(gateway::Config {
            publish_budget: Duration::from_millis(500),
            ..stack.config()
        })
        .await;
    let mut alice = stack.connect(&g, "alice").await;
    let mut bob = stack.connect(&g, "bob").await;
    join(&mut alice, "r").await;
    join(&mut bob, "r").await;
    stack.nats.stop();
    alice.send(send("r", "during outage", "m1")).await.unwrap();
    let e = alice.recv_type("error").await.unwrap();
    assert_eq!(
        (e["code"].as_str(), e["id"].as_str()),
        (Some("unavailable"), Some("m1"))
    );
    stack.nats.restart().unwrap();
    // The client resends with the same id until it gets an ack, as a real client does.
    let ack = loop {
        alice.send(send("r", "during outage", "m1")).await.unwrap();
        let v = alice.recv().await.unwrap();
        if v["type"] == "ack" {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    alice.send(send("r", "after", "m2")).await.unwrap();
    // Resends of m1 still in flight may be answered first: each with m1's one sequence.
    let ack2 = loop {
        let a = alice.recv_type("ack").await.unwrap();
        if a["client_msg_id"] == "m2" {
            break a;
        }
        assert_eq!(
            (&a["client_msg_id"], &a["seq"]),
            (&ack["client_msg_id"], &ack["seq"])
        );
    };
    assert!(ack2["seq"].as_u64() > ack["seq"].as_u64());
    // Bob's subscription came back by itself; the resent message is stored once.
    let mut seen = Vec::new();
    loop {
        let m = bob.recv_type("message").await.unwrap();
        seen.push(m["client_msg_id"].as_str().unwrap().to_owned());
        if m["client_msg_id"] == "m2" {
            break;
        }
    }
    assert_eq!(seen.iter().filter(|s| *s == "m1").count(), seen.len() - 1);
    assert!(seen.len() <= 2, "m1 at most once: {seen:?}");
}

#[tokio::test]
async fn shutdown_returns_even_when_nats_is_gone() {
    // A gateway whose NATS server died still stops on SIGTERM: nothing in shutdown waits for NATS.
    let mut stack = Stack::start();
    let mut g = stack
        .gateway_with(gateway::Config {
            shutdown_grace: Duration::from_secs(2),
            ..stack.config()
        })
        .await;
    let mut a = stack.connect(&g, "alice").await;
    join(&mut a, "r").await;
    stack.nats.stop();
    g.shutdown();
    let done = tokio::time::timeout(Duration::from_secs(10), &mut g.task)
        .await
        .expect("run returns although NATS is gone");
    done.unwrap().unwrap();
}

#[tokio::test]
async fn graceful_shutdown_closes_sockets_with_1001() {
    // On shutdown every socket gets close 1001 and run() returns within the grace period.
    let stack = Stack::start();
    let mut g = stack
        .gateway_with(gateway::Config {
            shutdown_grace: Duration::from_secs(2),
            ..stack.config()
        })
        .await;
    let mut a = stack.connect(&g, "alice").await;
    let mut b = stack.connect(&g, "bob").await;
    join(&mut a, "r").await;
    g.shutdown();
    assert_eq!(
        a.closed(Duration::from_secs(5)).await.unwrap(),
        Ended::Closed(Some(1001))
    );
    assert_eq!(
        b.closed(Duration::from_secs(5)).await.unwrap(),
        Ended::Closed(Some(1001))
    );
    let done = tokio::time::timeout(Duration::from_secs(5), &mut g.task)
        .await
        .expect("run returns in time");
    done.unwrap().unwrap();
    assert!(
        tokio::net::TcpStream::connect(g.addr).await.is_err(),
        "listener is closed"
    );
}

#[tokio::test]
async fn connection_cap_refuses_with_503() {
    // Beyond the per-gateway connection cap the handshake gets 503; a freed slot is reusable.
    use tokio_tungstenite::tungstenite::{Error, client::IntoClientRequest};
    let stack = Stack::start();
    let g = stack
        .gateway_with(gateway::Config {
            max_connections: 1,
            ..stack.config()
        })
        .await;
    let first = stack.connect(&g, "alice").await;
    let req = format!("ws://{}/ws?token={}", g.addr, stack.token("bob"))
        .into_client_request()
        .unwrap();
    match tokio_tungstenite::connect_async(req).await {
        Err(Error::Http(resp)) => assert_eq!(resp.status(), 503),
        other => panic!("expected 503, got {:?}", other.map(|_| ())),
    }
    drop(first);
    let mut ok = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Ok((c, _)) = testkit::WsClient::connect(g.addr, &stack.token("bob")).await {
            ok = Some(c);
            break;
        }
    }
    assert!(ok.is_some(), "slot freed after the first connection closed");
}

#[tokio::test]
async fn health_ready_and_metrics_endpoints() {
    // /healthz, /readyz and /metrics answer, and metrics count what happened.
    let mut stack = Stack::start();
    let g = stack.gateway().await;
    let mut a = stack.connect(&g, "alice").await;
    join(&mut a, "r").await;
    a.send(send("r", "hello", "m1")).await.unwrap();
    a.recv_type("ack").await.unwrap();
    let get = |path: &str| {
        let url = format!("http://{}{path}", g.addr);
        async move {
            let resp = testkit::http_get(&url).await.unwrap();
            (resp.0, resp.1)
        }
    };
    assert_eq!(get("/healthz").await.0, 200);
    assert_eq!(get("/readyz").await.0, 200);
    let (status, body) = get("/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("gateway_connections 1"), "{body}");
    assert!(
        body.contains("gateway_messages_published_total 1"),
        "{body}"
    );
    assert!(body.contains("# HELP gateway_publish_seconds"), "{body}");
    stack.nats.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get("/readyz").await.0, 503);
    assert_eq!(get("/healthz").await.0, 200);
}

#[tokio::test]
async fn the_dev_page_and_the_sdk_modules_it_imports_are_served() {
    // `/` is the dev page, which imports `/sdk/index.js`; SDK modules are served as JavaScript
    // (browsers refuse a module of another type) and an unknown name is 404.
    let stack = Stack::start();
    let g = stack.gateway().await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::new();
    let get = |path: &str| client.get(format!("http://{}{path}", g.addr)).send();
    let page = get("/").await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("/sdk/index.js"));
    let module = get("/sdk/index.js").await.unwrap();
    assert_eq!(module.status(), 200);
    assert_eq!(
        module.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    assert!(module.text().await.unwrap().contains("export { Client"));
    assert_eq!(get("/sdk/client.js").await.unwrap().status(), 200);
    assert_eq!(get("/sdk/nope.js").await.unwrap().status(), 404);
    assert_eq!(get("/sdk/").await.unwrap().status(), 404);
}

#[tokio::test]
async fn gateway_started_before_nats_waits_for_it() {
    // A gateway started while NATS is down keeps trying and serves once NATS is up.
    let stack = Stack::start();
    let config = stack.config();
    let gateway::testing::Stack { mut nats, signer } = stack;
    nats.stop();
    let restarter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(1));
        nats.restart().unwrap();
        nats
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let keys = token::KeySet::new("liaotian");
    keys.insert(signer.kid().to_owned(), signer.public_key());
    let task = tokio::spawn(gateway::run(listener, config, keys, std::future::pending()));
    let _nats = restarter.join().unwrap();
    let token = signer.issue(
        &protocol::UserId::parse("alice").unwrap(),
        token::now_secs(),
        60,
    );
    let mut client = None;
    for _ in 0..100 {
        if let Ok((c, _)) = testkit::WsClient::connect(addr, &token).await {
            client = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut c = client.expect("gateway came up after NATS did");
    join(&mut c, "r").await;
    c.send(send("r", "hello", "m1")).await.unwrap();
    assert_eq!(c.recv_type("ack").await.unwrap()["type"], "ack");
    task.abort();
}

#[tokio::test]
async fn joining_more_rooms_than_the_limit_is_refused() {
    // A connection may be in at most max_rooms_per_conn rooms; one more is bad_request and nothing breaks.
    let stack = Stack::start();
    let g = stack
        .gateway_with(gateway::Config {
            max_rooms_per_conn: 2,
            ..stack.config()
        })
        .await;
    let mut c = stack.connect(&g, "alice").await;
    join(&mut c, "a").await;
    join(&mut c, "b").await;
    c.send(json!({"type":"join","room":"c","id":"x"}))
        .await
        .unwrap();
    let e = c.recv_type("error").await.unwrap();
    assert_eq!(
        (e["code"].as_str(), e["id"].as_str()),
        (Some("bad_request"), Some("x"))
    );
    // Rejoining a room it is already in is not a new room.
    join(&mut c, "a").await;
    c.send(json!({"type":"leave","room":"b"})).await.unwrap();
    c.recv_type("left").await.unwrap();
    join(&mut c, "c").await;
}

#[tokio::test]
async fn unanswered_content_check_follows_the_gateway_policy() {
    // With no content-check service answering, fail-closed answers unavailable (nothing stored) and
    // fail-open publishes.
    let stack = Stack::start();
    for (fail_open, expected) in [(false, "error"), (true, "ack")] {
        let g = stack
            .gateway_with(gateway::Config {
                content_check: true,
                content_check_timeout: Duration::from_millis(300),
                content_check_fail_open: fail_open,
                ..stack.config()
            })
            .await;
        let mut c = stack.connect(&g, "alice").await;
        join(&mut c, "r").await;
        c.send(send("r", "hello", &format!("m{fail_open}")))
            .await
            .unwrap();
        let v = loop {
            let v = c.recv().await.unwrap();
            if v["type"] == "ack" || v["type"] == "error" {
                break v;
            }
        };
        assert_eq!(v["type"], expected, "fail_open={fail_open}: {v}");
        if expected == "error" {
            assert_eq!(v["code"], "unavailable");
        }
    }
}

#[tokio::test]
async fn a_client_that_keeps_sending_still_gets_its_replies() {
    // Reading a client's frames must not starve the writing of its replies: 3,000 pipelined pings,
    // read concurrently, all get their pong and the connection stays open (a starved writer lets
    // the pongs overflow the 1,024-frame queue, and the client is closed with 4008).
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};
    let stack = Stack::start();
    let g = stack.gateway_with(stack.config_unlimited()).await;
    let mut req = format!("ws://{}/ws", g.addr).into_client_request().unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", stack.token("chatty")).parse().unwrap(),
    );
    let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let (mut tx, mut rx) = ws.split();
    let n = 3000;
    let sending = tokio::spawn(async move {
        for i in 0..n {
            let ping = json!({"type":"ping","id":format!("p{i}")}).to_string();
            tx.feed(Message::text(ping)).await.unwrap();
        }
        tx.flush().await.unwrap();
        tx
    });
    let mut pongs = 0;
    while pongs < n {
        let msg = tokio::time::timeout(Duration::from_secs(10), rx.next())
            .await
            .expect("a frame within 10 s")
            .expect("the connection stays open")
            .unwrap();
        match msg {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "pong" {
                    assert_eq!(v["id"], format!("p{pongs}"), "pongs in order");
                    pongs += 1;
                }
            }
            Message::Close(c) => panic!("closed after {pongs} pongs: {c:?}"),
            _ => {}
        }
    }
    let _tx = sending.await.unwrap();
}

#[tokio::test]
async fn build_info_names_the_version() {
    let stack = Stack::start();
    let g = stack.gateway().await;
    let name = format!(
        "gateway_build_info{{version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(testkit::metric(g.addr, &name).await.unwrap(), Some(1.0));
}

#[tokio::test]
async fn metrics_can_have_a_listener_of_their_own() {
    // GATEWAY_METRICS_LISTEN: /metrics leaves the public listener, which need not expose it.
    let stack = Stack::start();
    let public = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let private = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (public_addr, private_addr) = (public.local_addr().unwrap(), private.local_addr().unwrap());
    let keys = token::KeySet::new("liaotian");
    let signer = token::Signer::generate("liaotian");
    keys.insert(signer.kid().to_owned(), signer.public_key());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(gateway::run_with_metrics(
        public,
        Some(private),
        stack.config(),
        keys,
        async {
            let _ = stopped.await;
        },
    ));
    gateway::testing::wait_ready(public_addr).await;
    let (status, _) = testkit::http_get(&format!("http://{public_addr}/metrics"))
        .await
        .unwrap();
    assert_eq!(status, 404, "not on the public listener");
    let (status, body) = testkit::http_get(&format!("http://{private_addr}/metrics"))
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(
        testkit::metric_in(&body, "gateway_connections").is_some(),
        "{body}"
    );
    let _ = stop.send(());
    let _ = task.await;
}
