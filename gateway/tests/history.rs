//! Resume after `since`, gap fill after a lost NATS connection, and history without a history
//! service, through real gateways and a real nats-server. Tests that need a persister are in
//! `e2e/tests/history.rs`.

use std::time::Duration;

use gateway::testing::{Stack, join, messages, resume_and_check, send, send_many};
use serde_json::json;
use testkit::WsClient;

#[tokio::test]
async fn resume_replays_500_missed_messages_without_the_persister() {
    // With no persister running, a resume reads the missed range from the stream itself, even when
    // the replay is far longer than the connection's outbound queue.
    let stack = Stack::start();
    let g = stack
        .gateway_with(gateway::Config {
            outbound_queue: 32,
            ..stack.config_unlimited()
        })
        .await;
    let mut reader = stack.connect(&g, "late").await;
    let since = join(&mut reader, "busy").await["last_seq"]
        .as_u64()
        .unwrap();
    drop(reader);
    let mut sender = stack.connect(&g, "sender").await;
    join(&mut sender, "busy").await;
    let missed = send_many(&mut sender, "busy", "m", 500).await;
    resume_and_check(&stack, &g, "busy", since, &missed, true).await;
}

#[tokio::test]
async fn resume_beyond_the_limit_is_not_recovered() {
    // More missed messages than the resume limit: joined says recovered false and live messages still flow.
    let stack = Stack::start();
    let g = stack
        .gateway_with(gateway::Config {
            max_resume: 20,
            ..stack.config_unlimited()
        })
        .await;
    let mut sender = stack.connect(&g, "sender").await;
    join(&mut sender, "r").await;
    let seqs = send_many(&mut sender, "r", "x", 30).await;
    let mut c = stack.connect(&g, "late").await;
    c.send(json!({"type": "join", "room": "r", "since": 0}))
        .await
        .unwrap();
    let joined = c.recv_type("joined").await.unwrap();
    assert_eq!(joined["recovered"], false);
    assert_eq!(joined["last_seq"], *seqs.last().unwrap());
    sender.send(send("r", "new", "new")).await.unwrap();
    let m = c.recv().await.unwrap();
    assert_eq!(
        (m["type"].as_str(), m["client_msg_id"].as_str()),
        (Some("message"), Some("new"))
    );
}

#[tokio::test]
async fn direct_message_thread_resumes_after_since() {
    // resume {with, since} replays a DM thread after since, then live DMs.
    let stack = Stack::start();
    let g = stack.gateway().await;
    let mut bob = stack.connect(&g, "bob").await;
    let mut first = None;
    for i in 0..5 {
        bob.send(json!({"type":"send","to":"alice","text":format!("d{i}"),"client_msg_id":format!("d{i}")})).await.unwrap();
        let seq = bob.recv_type("ack").await.unwrap()["seq"].as_u64().unwrap();
        first.get_or_insert(seq);
    }
    let mut alice = stack.connect(&g, "alice").await;
    alice
        .send(json!({"type":"resume","with":"bob","since": first.unwrap()}))
        .await
        .unwrap();
    let resumed = alice.recv_type("resumed").await.unwrap();
    assert_eq!(resumed["recovered"], true);
    let got = messages(&mut alice, 4).await;
    let texts: Vec<_> = got
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(texts, ["d1", "d2", "d3", "d4"]);
    alice
        .send(json!({"type":"resume","with":"alice","since":0}))
        .await
        .unwrap();
    assert_eq!(
        alice.recv_type("error").await.unwrap()["code"],
        "bad_request"
    );
}

#[tokio::test]
async fn gateway_cut_off_from_nats_fills_the_gap_after_reconnecting() {
    // Messages stored while one gateway's NATS link was cut reach its clients after reconnect, in order.
    let stack = Stack::start();
    let (proxy, cut_off) = stack.gateway_behind_proxy(stack.config()).await;
    let g2 = stack.gateway_with(stack.config_unlimited()).await;
    let mut reader = stack.connect(&cut_off, "reader").await;
    join(&mut reader, "r").await;
    let mut sender = stack.connect(&g2, "sender").await;
    join(&mut sender, "r").await;
    let mut seqs = send_many(&mut sender, "r", "a", 10).await;
    proxy.cut();
    seqs.extend(send_many(&mut sender, "r", "b", 40).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.restore();
    // No further message is needed: the reconnect itself triggers the check. One more follows anyway.
    let got = messages(&mut reader, 50).await;
    let got_seqs: Vec<u64> = got.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(got_seqs, seqs, "all 50, in order, once");
    seqs.extend(send_many(&mut sender, "r", "c", 1).await);
    let next = reader.recv_type("message").await.unwrap();
    assert_eq!(next["seq"], *seqs.last().unwrap());
    let fills = gateway::testing::metric(&cut_off, "gateway_gap_fills_total").await;
    assert!(
        fills.is_some_and(|n| n >= 1.0),
        "a gap fill was counted: {fills:?}"
    );
}

#[tokio::test]
async fn history_without_a_persister_is_unavailable() {
    // With no persister answering, history is `unavailable`, not a hang.
    let stack = Stack::start();
    let g = stack.gateway().await;
    let mut c = stack.connect(&g, "alice").await;
    c.send(json!({"type":"history","with":"bob","id":"h"}))
        .await
        .unwrap();
    let e = c.recv_type("error").await.unwrap();
    assert_eq!(
        (e["code"].as_str(), e["id"].as_str()),
        (Some("unavailable"), Some("h"))
    );
}

#[tokio::test]
async fn concurrent_identical_resumes_all_get_every_message() {
    // Many clients resuming the same room from the same seq at once (they share one replay) each get
    // every missed message once, in order, then live ones.
    let stack = Stack::start();
    let g = stack.gateway_with(stack.config_unlimited()).await;
    let mut sender = stack.connect(&g, "sender").await;
    let since = join(&mut sender, "storm").await["last_seq"]
        .as_u64()
        .unwrap();
    let missed = send_many(&mut sender, "storm", "s", 50).await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let token = stack.token(&format!("r{i}"));
        let addr = g.addr;
        let missed = missed.clone();
        tasks.push(tokio::spawn(async move {
            let (mut c, _) = WsClient::connect(addr, &token).await.unwrap();
            c.send(json!({"type": "join", "room": "storm", "since": since}))
                .await
                .unwrap();
            let joined = c.recv_type("joined").await.unwrap();
            assert_eq!(joined["recovered"], true);
            let got = messages(&mut c, missed.len()).await;
            let seqs: Vec<u64> = got.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
            assert_eq!(seqs, missed);
            c
        }));
    }
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.unwrap());
    }
    sender.send(send("storm", "after", "after")).await.unwrap();
    for c in &mut clients {
        assert_eq!(
            c.recv_type("message").await.unwrap()["client_msg_id"],
            "after"
        );
    }
}

#[tokio::test]
async fn a_close_asked_for_during_a_replay_cuts_it_short() {
    // A replay waiting for room in a connection's queue stops as soon as the connection must close
    // (here a logout): it is not kept going, frame by frame, for a socket that is going away.
    let stack = Stack::start();
    let g = stack
        .gateway_with(gateway::Config {
            outbound_queue: 16,
            max_resume: 2000,
            ..stack.config_unlimited()
        })
        .await;
    // More than the kernel's largest socket send buffer (4 MiB) must wait behind the replay.
    let n = 1500;
    let text = "z".repeat(3900);
    let mut sender = stack.connect(&g, "sender").await;
    join(&mut sender, "big").await;
    let mut first = None;
    for i in 0..n {
        sender
            .send(send("big", &text, &format!("b{i}")))
            .await
            .unwrap();
        let seq = sender.recv_type("ack").await.unwrap()["seq"]
            .as_u64()
            .unwrap();
        first.get_or_insert(seq);
    }
    let mut reader = WsClient::connect_small_buffer(g.addr, &stack.token("reader"))
        .await
        .unwrap();
    reader
        .send(json!({"type":"join","room":"big","since": first.unwrap() - 1}))
        .await
        .unwrap();
    // The reader does not read: the replay fills the socket and waits for room in the queue.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let nats = async_nats::connect(stack.nats.url()).await.unwrap();
    nats.publish(
        protocol::subject::user_control_subject(&protocol::UserId::parse("reader").unwrap()),
        r#"{"op":"logout"}"#.into(),
    )
    .await
    .unwrap();
    nats.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut replayed = 0;
    let ended = loop {
        match reader.recv_timeout(Duration::from_secs(5)).await {
            Ok(v) if v["type"] == "message" => replayed += 1,
            Ok(_) => {}
            Err(e) => break e.to_string(),
        }
    };
    assert!(
        !ended.contains("timed out"),
        "the connection ended: {ended}"
    );
    // What was already in the socket buffers (at most 4 MiB, about 1,050 frames) still arrives; the
    // rest of the replay does not (without the stop, 1,499 of 1,500 arrived).
    assert!(
        replayed <= n * 4 / 5,
        "the replay stopped at the logout: {replayed} of {n} replayed"
    );
    assert!(ended.contains("4001") || ended.contains("ended"), "{ended}");
}

#[tokio::test]
async fn joins_into_empty_rooms_share_one_read_of_the_stream_info() {
    // Each join into a conversation the stream holds nothing for must learn whether the stream has
    // dropped messages; a burst of such joins (a connect storm into new rooms) asks nats-server
    // once per `NOTHING_DROPPED_TTL`, not once per join.
    let stack = Stack::start();
    let g = stack.gateway_with(stack.config_unlimited()).await;
    let mut c = stack.connect(&g, "newcomer").await;
    let started = tokio::time::Instant::now();
    for i in 0..40 {
        let joined = join(&mut c, &format!("empty{i}")).await;
        assert_eq!(joined["last_seq"], 0, "{joined}");
    }
    let ttls =
        started.elapsed().as_secs_f64() / gateway::backlog::NOTHING_DROPPED_TTL.as_secs_f64();
    let reads = gateway::testing::metric(&g, "gateway_stream_info_reads_total")
        .await
        .expect("the metric is exported");
    assert!(reads >= 1.0, "the first join reads the stream info");
    assert!(
        reads <= ttls.ceil() + 1.0,
        "{reads} reads of the stream info for 40 joins in {ttls:.1} TTLs"
    );
}
