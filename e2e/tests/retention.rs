//! Retention never deletes an unpersisted message silently: with no persister running, a stream
//! that fills up refuses sends (`unavailable`) before its `discard: old` pushes out a message
//! nobody stored; once a persister catches up, the refused send goes through on a resend with its
//! `client_msg_id`. The second test is issue 18's fault under load: the persister stopped while a
//! steady load across two gateways drives the stream to its `max_bytes`. Real nats-server, real
//! gateways, a real persister on SQLite.

use std::time::Duration;

use e2e::{Persister, Stack, ask, code};
use serde_json::{Value, json};
use tokio::time::Instant;

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

/// Sends `frame` (whose `id` is its `client_msg_id`) until it is acked, resending after each
/// `unavailable` every 100 ms. Returns the ack's seq, and how long the send was refused.
async fn send_until_acked(c: &mut testkit::WsClient, frame: Value) -> (u64, Duration) {
    let t0 = Instant::now();
    let mut refused = Duration::ZERO;
    loop {
        let r = ask(c, frame.clone(), "ack").await;
        if r["type"] == "ack" {
            return (r["seq"].as_u64().unwrap(), refused);
        }
        assert_eq!(code(&r), "unavailable", "{r}");
        refused = t0.elapsed();
        assert!(refused < Duration::from_secs(60), "never acked: {frame}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends of the first phase: enough for the 1 MiB stream to wrap while the persister keeps up.
const WRAP: usize = 420;

// Proves that stopping the persister under a steady load across two gateways, while the stream is
// at its max_bytes, refuses sends instead of discarding unpersisted messages, and that every acked
// message is then delivered once and stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persister_stopped_under_load_near_max_bytes_loses_no_acked_message() {
    let stack = Stack::start();
    let mut config = stack.config_unlimited();
    // 1 MiB: when the guard closes, the 10 % still persisted is about 34 messages (0.7 s of this
    // load), well above the guard's 100 ms check.
    config.stream.max_bytes = 1024 * 1024;
    config.retention_check = Duration::from_millis(100);
    let g1 = stack.gateway_with(config.clone()).await;
    let g2 = stack.gateway_with(config).await;
    let persister = Persister::start(&stack).await;
    let mut alice = stack.connect(&g1, "alice").await;
    let mut bob = stack.connect(&g2, "bob").await;
    // Bob, on the other gateway, reads his live messages until he has as many as he is told to
    // expect, or 20 s after being told.
    let (expect, mut expected) = tokio::sync::oneshot::channel::<usize>();
    let reader = tokio::spawn(async move {
        let mut got: Vec<(Value, Instant)> = Vec::new();
        let mut until: Option<(usize, Instant)> = None;
        loop {
            if until.is_some_and(|(n, at)| got.len() >= n || Instant::now() > at) {
                return (bob, got);
            }
            tokio::select! {
                n = &mut expected, if until.is_none() => {
                    until = Some((n.unwrap(), Instant::now() + Duration::from_secs(20)));
                }
                v = bob.recv_timeout(Duration::from_millis(500)) => {
                    if let Ok(v) = v && v["type"] == "message" {
                        got.push((v, Instant::now()));
                    }
                }
            }
        }
    });
    let text = "字".repeat(1000); // 3 KB of UTF-8: the stream holds about 340 of them.
    let frame = |i: usize| {
        let cmid = format!("m{i}");
        json!({"type":"send","to":"bob","text":text,"client_msg_id":cmid,"id":cmid})
    };

    // 1. Steady sends, every 20 ms, with the persister keeping up: the stream wraps (its oldest,
    //    persisted messages go) and no send is refused.
    let mut acked = Vec::new();
    let mut i = 0;
    while i < WRAP {
        let (seq, refused) = send_until_acked(&mut alice, frame(i)).await;
        assert_eq!(
            refused,
            Duration::ZERO,
            "m{i} refused with the persister running"
        );
        acked.push(seq);
        i += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let js = async_nats::jetstream::new(async_nats::connect(stack.nats.url()).await.unwrap());
    let mut chat = js.get_stream("CHAT").await.unwrap();
    assert!(
        chat.info().await.unwrap().state.first_sequence > 1,
        "the stream wrapped while the persister kept up"
    );

    // 2. The persister stops. The same load runs into the guard before the stream wraps past the
    //    last persisted message.
    let dir = {
        let mut p = persister;
        let dir = std::mem::replace(&mut p.dir, testkit::temp_dir("liaotian-gone").unwrap());
        p.task.abort();
        let _ = (&mut p.task).await;
        dir
    };
    let stopped_at = Instant::now();
    let first_refused = loop {
        let r = ask(&mut alice, frame(i), "ack").await;
        if r["type"] == "ack" {
            acked.push(r["seq"].as_u64().unwrap());
            i += 1;
            assert!(
                stopped_at.elapsed() < Duration::from_secs(30),
                "never refused"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        assert_eq!(code(&r), "unavailable", "{r}");
        break stopped_at.elapsed();
    };
    let accepted_while_stopped = acked.len() - WRAP;
    // The refusal holds while no persister runs.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let r = ask(&mut alice, frame(i), "ack").await;
    assert_eq!(code(&r), "unavailable", "{r}");

    // 3. The persister comes back on the same store: the refused send goes through on a resend,
    //    and the load goes on.
    let restarted_at = Instant::now();
    let _persister = Persister::start_in(&stack, dir).await;
    let (seq, _) = send_until_acked(&mut alice, frame(i)).await;
    let reopened = restarted_at.elapsed();
    acked.push(seq);
    i += 1;
    let unavailable_for = stopped_at.elapsed() - first_refused;
    for _ in 0..30 {
        let (seq, _) = send_until_acked(&mut alice, frame(i)).await;
        acked.push(seq);
        i += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "persister stopped: {accepted_while_stopped} sends acked, first refusal {first_refused:?} \
         after the stop; refused for {unavailable_for:?}, {reopened:?} of it after the restart"
    );

    // Every acked message reached Bob once, in order, with an unbroken prev_seq chain.
    expect.send(acked.len()).unwrap();
    let (mut bob, got) = reader.await.unwrap();
    let seqs: Vec<u64> = got
        .iter()
        .map(|(m, _)| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, acked, "every acked message delivered once, in order");
    for w in got.windows(2) {
        assert_eq!(
            w[1].0["prev_seq"], w[0].0["seq"],
            "gap: {} then {}",
            w[0].0, w[1].0
        );
    }
    let pause = got
        .windows(2)
        .map(|w| w[1].1 - w[0].1)
        .max()
        .unwrap_or_default();
    eprintln!("longest pause between deliveries: {pause:?}");
    // Every acked message is in the store once, in order, the refused one included.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let stored = e2e::thread_seqs(&mut bob, "alice").await;
        if stored.len() >= acked.len() || Instant::now() > deadline {
            assert_eq!(stored, acked, "every acked message stored, once, in order");
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
