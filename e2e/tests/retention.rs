//! Retention never deletes an unpersisted message silently: with no persister running, a stream
//! that fills up refuses sends (`unavailable`) before its `discard: old` pushes out a message
//! nobody stored; once a persister catches up, the refused send goes through on a resend with its
//! `client_msg_id`. Real nats-server, a real gateway, a real persister on SQLite.

use std::time::Duration;

use e2e::{Persister, Stack, ask, code};
use serde_json::json;

async fn first_seq(stack: &Stack) -> u64 {
    let js = async_nats::jetstream::new(async_nats::connect(stack.nats.url()).await.unwrap());
    let mut s = js.get_stream("CHAT").await.unwrap();
    s.info().await.unwrap().state.first_sequence
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_full_of_unpersisted_messages_refuses_sends_until_a_persister_catches_up() {
    let stack = Stack::start();
    let mut config = stack.config_unlimited();
    config.stream.max_bytes = 256 * 1024;
    config.retention_check = Duration::from_millis(100);
    let g = stack.gateway_with(config).await;
    let mut alice = stack.connect(&g, "alice").await;
    let text = "字".repeat(1000); // 3 KB of UTF-8.
    let mut acked = Vec::new();
    let mut refused = None;
    for i in 0..200 {
        let cmid = format!("m{i}");
        let r = ask(
            &mut alice,
            json!({"type":"send","to":"bob","text":text,"client_msg_id":cmid,"id":cmid}),
            "ack",
        )
        .await;
        if code(&r) == "unavailable" {
            refused = Some(cmid);
            break;
        }
        assert_eq!(r["type"], "ack", "{r}");
        acked.push(r["seq"].as_u64().unwrap());
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let refused = refused.expect("the stream filled up and no send was refused");
    assert!(acked.len() > 50, "refused only after {} sends", acked.len());
    assert_eq!(
        first_seq(&stack).await,
        1,
        "nothing unpersisted was discarded"
    );
    assert_eq!(e2e::metric(&g, "gateway_retention_guard").await, Some(1.0));

    // A persister catches up; the guard opens; the refused send goes through on a resend.
    let _persister = Persister::start(&stack).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let ack = loop {
        let r = ask(
            &mut alice,
            json!({"type":"send","to":"bob","text":text,"client_msg_id":refused,"id":refused}),
            "ack",
        )
        .await;
        if r["type"] == "ack" {
            break r;
        }
        assert_eq!(code(&r), "unavailable", "{r}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the guard never opened"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    acked.push(ack["seq"].as_u64().unwrap());
    assert_eq!(e2e::metric(&g, "gateway_retention_guard").await, Some(0.0));
    // Everything acked is in the store, the refused one included (the store trails the stream by
    // the persister's backlog: read until it has caught up, or the deadline).
    let mut bob = stack.connect(&g, "bob").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let stored = e2e::thread_seqs(&mut bob, "alice").await;
        if stored.len() >= acked.len() || tokio::time::Instant::now() > deadline {
            assert_eq!(stored, acked, "every acked message stored, once, in order");
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
