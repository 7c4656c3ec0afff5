//! Two persisters on one SQLite file, each with its own durable consumer (as `cargo xtask cluster`
//! runs them): one is killed mid-stream and started again, and still every acked message is in the
//! history store once and the unread counts are exact. Each persister reads the whole stream in
//! order, so what each has committed is a prefix of the stream, and the conversation index advances
//! in stream order whichever writes first. Real nats-server, a real gateway, real persisters.

use std::collections::HashSet;
use std::time::Duration;

use e2e::{Stack, ask};
use serde_json::json;
use testkit::WsClient;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A persister on `db` with durable consumer `consumer`; the task is aborted to kill it.
async fn persister(
    stack: &Stack,
    db: &std::path::Path,
    consumer: &str,
) -> (
    JoinHandle<Result<(), persister::Error>>,
    oneshot::Sender<()>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = persister::Config {
        nats_url: stack.nats.url(),
        store: persister::config::StoreConfig::Sqlite {
            path: db.to_path_buf(),
        },
        consumer: consumer.to_owned(),
        batch_wait: Duration::from_millis(20),
        ..persister::Config::default()
    };
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(persister::run(listener, config, async {
        let _ = rx.await;
    }));
    (task, tx)
}

/// Bob's unread count in his thread with alice, once the index has it at `want` (or the deadline).
async fn unread(c: &mut WsClient, want: u64) -> u64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let page = ask(c, json!({"type":"conversations","id":"l"}), "conversations").await;
        let n = page["items"]
            .as_array()
            .and_then(|items| items.iter().find(|i| i["with"] == "alice"))
            .and_then(|i| i["unread"].as_u64())
            .unwrap_or(0);
        if n == want || tokio::time::Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_two_persisters_killed_mid_stream_loses_nothing_and_counts_nothing_twice() {
    let stack = Stack::start();
    let g = stack.gateway_with(stack.config_unlimited()).await;
    let dir = testkit::temp_dir("liaotian-two-persisters").unwrap();
    let db = dir.path().join("history.db");
    let (p0, _stop0) = persister(&stack, &db, "persister-0").await;
    let (_p1, _stop1) = persister(&stack, &db, "persister-1").await;
    let mut alice = stack.connect(&g, "alice").await;
    let mut bob = stack.connect(&g, "bob").await;
    let mut acked = HashSet::new();
    for i in 0..300 {
        let cmid = format!("m{i}");
        let ack = ask(
            &mut alice,
            json!({"type":"send","to":"bob","text":cmid,"client_msg_id":cmid,"id":cmid}),
            "ack",
        )
        .await;
        assert_eq!(ack["type"], "ack", "{ack}");
        acked.insert(ack["seq"].as_u64().unwrap());
        if i == 150 {
            // persister-0 dies mid-stream, as kill -9 would: its batch in flight is never acked.
            p0.abort();
        }
    }
    assert_eq!(
        unread(&mut bob, 300).await,
        300,
        "bob's unread, with one persister left"
    );
    // persister-0 comes back on its consumer: it redelivers and rewrites what persister-1 stored.
    let (_p0, _stop0b) = persister(&stack, &db, "persister-0").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let seqs = e2e::thread_seqs(&mut bob, "alice").await;
    assert_eq!(seqs.len(), 300, "each message stored once");
    assert_eq!(seqs.iter().copied().collect::<HashSet<_>>(), acked);
    assert_eq!(
        unread(&mut bob, 300).await,
        300,
        "nothing counted twice after the restart"
    );
}
