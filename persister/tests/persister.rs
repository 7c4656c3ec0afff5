//! End-to-end tests: a real nats-server, stream CHAT, the persister through `run`, real SQLite files.

mod common;

use std::time::Duration;

use common::{Running, config, create_stream, publish_raw, publish_room, room_msg, wait_until};
use persister::Config;
use persister::store::{PageQuery, SqliteStore, Store};
use protocol::RoomId;
use protocol::history::{ConvRef, HistoryReply, HistoryRequest};
use protocol::subject::Conversation;

fn room(name: &str) -> Conversation {
    Conversation::Room(RoomId::parse(name).unwrap())
}

/// Every stored seq of `conv`, oldest first, read page by page.
async fn all_seqs(store: &dyn Store, conv: &Conversation) -> Vec<u64> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let q = PageQuery::new(conv.clone(), None, Some(after), 100).unwrap();
        let page = store.page(&q).await.unwrap();
        out.extend(page.messages.iter().map(|m| m.seq()));
        match page.messages.last() {
            Some(m) if page.more => after = m.seq(),
            _ => return out,
        }
    }
}

async fn history(nats: &async_nats::Client, req: &HistoryRequest) -> HistoryReply {
    let body = serde_json::to_vec(req).unwrap();
    let reply = nats
        .request(protocol::history::HISTORY_SUBJECT, body.into())
        .await
        .unwrap();
    serde_json::from_slice(&reply.payload).unwrap()
}

fn req(r: &str, before: Option<u64>, after: Option<u64>, limit: u32) -> HistoryRequest {
    HistoryRequest {
        conv: ConvRef::Room(RoomId::parse(r).unwrap()),
        before,
        after,
        limit,
    }
}

// Proves a persister killed in the middle of a stream of messages, then restarted on the same
// database, ends up with every message stored exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_mid_stream_then_restart_stores_each_message_once() {
    let nats = testkit::NatsServer::start().unwrap();
    let dir = testkit::temp_dir("persister-crash").unwrap();
    let db = dir.path().join("history.db");
    let reader = SqliteStore::open(&db).await.unwrap();
    crash_mid_stream(&nats, config(&nats.url(), &db), &reader).await;
}

// Proves the same with the ScyllaDB store, on the test run's Cassandra node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_mid_stream_then_restart_stores_each_message_once_on_scylla() {
    let nats = testkit::NatsServer::start().unwrap();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let (hosts, keyspace) = (
        vec![testkit::cassandra::shared().unwrap()],
        format!("crash_{nanos}"),
    );
    let replication = "{'class': 'SimpleStrategy', 'replication_factor': 1}";
    let reader = persister::store::ScyllaStore::connect(&hosts, &keyspace, replication)
        .await
        .unwrap();
    let config = Config {
        store: persister::StoreConfig::Scylla { hosts, keyspace },
        scylla_replication: replication.into(),
        ..config(&nats.url(), std::path::Path::new("unused"))
    };
    crash_mid_stream(&nats, config, &reader).await;
}

async fn crash_mid_stream(nats: &testkit::NatsServer, config: Config, reader: &dyn Store) {
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    create_stream(&js).await.unwrap();
    let conv = room("crash");

    let first = Running::start(config.clone()).await.unwrap();
    const TOTAL: usize = 1500;
    let publisher = {
        let js = js.clone();
        tokio::spawn(async move {
            let mut seqs = Vec::with_capacity(TOTAL);
            for i in 0..TOTAL {
                seqs.push(publish_room(&js, "crash", i).await.unwrap());
            }
            seqs
        })
    };
    // Kill it once some, but not all, messages are stored.
    wait_until(|| async { reader.count(&conv).await.unwrap() >= 200 })
        .await
        .unwrap();
    first.kill().await;
    let stored_at_kill = reader.count(&conv).await.unwrap();
    assert!(
        stored_at_kill < TOTAL as u64,
        "the kill came too late to test anything"
    );

    let published = publisher.await.unwrap();
    let second = Running::start(config).await.unwrap();
    wait_until(|| async { reader.count(&conv).await.unwrap() == TOTAL as u64 })
        .await
        .unwrap();
    assert_eq!(all_seqs(reader, &conv).await, published);
    // Nothing more arrives later (no duplicates can be hiding in flight).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(reader.count(&conv).await.unwrap(), TOTAL as u64);
    second.stop().await.unwrap();
}

// Proves poison messages (garbage payload, subject naming no conversation) do not block the stream:
// later messages are stored, and the poison is in dead_letters and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_set_aside_and_do_not_block() {
    let nats = testkit::NatsServer::start().unwrap();
    let dir = testkit::temp_dir("persister-poison").unwrap();
    let db = dir.path().join("history.db");
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    create_stream(&js).await.unwrap();
    let p = Running::start(config(&nats.url(), &db)).await.unwrap();

    publish_room(&js, "p", 0).await.unwrap();
    let garbage = publish_raw(&js, "chat.in.room.p", b"\xc1 not msgpack".to_vec(), "g1")
        .await
        .unwrap();
    let bad_subject = publish_raw(
        &js,
        "chat.in.room.a.b",
        room_msg("p", "alice", "x").encode(),
        "g2",
    )
    .await
    .unwrap();
    for i in 1..=20 {
        publish_room(&js, "p", i).await.unwrap();
    }

    let reader = SqliteStore::open(&db).await.unwrap();
    wait_until(|| async { reader.count(&room("p")).await.unwrap() == 21 })
        .await
        .unwrap();
    wait_until(|| async { reader.dead_letters(10).await.unwrap().len() == 2 })
        .await
        .unwrap();
    let dead = reader.dead_letters(10).await.unwrap();
    assert_eq!(dead[0].seq, garbage);
    assert_eq!(dead[0].subject, "chat.in.room.p");
    assert_eq!(dead[0].payload, b"\xc1 not msgpack");
    assert_eq!(dead[1].seq, bad_subject);
    assert_eq!(dead[1].subject, "chat.in.room.a.b");
    assert_eq!(
        p.metric("persister_poison_messages_total{reason=\"payload\"}")
            .await
            .unwrap(),
        1.0
    );
    assert_eq!(
        p.metric("persister_poison_messages_total{reason=\"subject\"}")
            .await
            .unwrap(),
        1.0
    );
    // Terminated, not redelivered: the consumer has nothing left pending.
    wait_until(|| async { p.metric("persister_lag_messages").await.unwrap() == 0.0 })
        .await
        .unwrap();
    p.stop().await.unwrap();
}

// Proves the SQLite history survives a restart of the whole stack (persister and nats-server), and
// is served again over NATS afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_history_survives_a_restart() {
    let mut nats = testkit::NatsServer::start().unwrap();
    let dir = testkit::temp_dir("persister-restart").unwrap();
    let db = dir.path().join("data").join("history.db");
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    create_stream(&js).await.unwrap();
    let p = Running::start(config(&nats.url(), &db)).await.unwrap();
    let mut published = Vec::new();
    for i in 0..50 {
        published.push(publish_room(&js, "keep", i).await.unwrap());
    }
    {
        let reader = SqliteStore::open(&db).await.unwrap();
        wait_until(|| async { reader.count(&room("keep")).await.unwrap() == 50 })
            .await
            .unwrap();
    }
    p.stop().await.unwrap();
    drop(js);
    nats.restart().unwrap();

    // The file alone holds the history.
    let reopened = SqliteStore::open(&db).await.unwrap();
    assert_eq!(all_seqs(&reopened, &room("keep")).await, published);

    // And a restarted persister serves it.
    let p = Running::start(config(&nats.url(), &db)).await.unwrap();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let HistoryReply::Page { messages, more } =
        history(&client, &req("keep", None, None, 100)).await
    else {
        panic!("expected a page");
    };
    assert_eq!(
        messages.iter().map(|m| m.seq()).collect::<Vec<_>>(),
        published
    );
    assert!(!more);
    p.stop().await.unwrap();
}

// Proves the history service returns exact pages and `more`, refuses limits 0 and 101, and merges
// concurrent identical requests into fewer store reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_service_pages_validates_and_coalesces() {
    let nats = testkit::NatsServer::start().unwrap();
    let dir = testkit::temp_dir("persister-history").unwrap();
    let db = dir.path().join("history.db");
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    create_stream(&js).await.unwrap();
    let p = Running::start(config(&nats.url(), &db)).await.unwrap();
    let mut seqs = Vec::new();
    for i in 0..250 {
        seqs.push(publish_room(&js, "h", i).await.unwrap());
    }
    let reader = SqliteStore::open(&db).await.unwrap();
    wait_until(|| async { reader.count(&room("h")).await.unwrap() == 250 })
        .await
        .unwrap();

    let page = |r: HistoryReply| match r {
        HistoryReply::Page { messages, more } => {
            (messages.iter().map(|m| m.seq()).collect::<Vec<_>>(), more)
        }
        HistoryReply::Error { message, .. } => panic!("error reply: {message}"),
    };
    assert_eq!(
        page(history(&client, &req("h", None, None, 100)).await),
        (seqs[150..].to_vec(), true)
    );
    assert_eq!(
        page(history(&client, &req("h", Some(seqs[50]), None, 100)).await),
        (seqs[..50].to_vec(), false)
    );
    assert_eq!(
        page(history(&client, &req("h", None, Some(seqs[199]), 50)).await),
        (seqs[200..].to_vec(), false)
    );
    assert_eq!(
        page(history(&client, &req("h", None, Some(0), 100)).await),
        (seqs[..100].to_vec(), true)
    );
    for limit in [0, 101] {
        let HistoryReply::Error { code, message } =
            history(&client, &req("h", None, None, limit)).await
        else {
            panic!("limit {limit} must be refused");
        };
        assert_eq!(
            code,
            protocol::history::HistoryErrorCode::BadRequest,
            "{message}"
        );
    }
    let bad = client
        .request(protocol::history::HISTORY_SUBJECT, "{not json".into())
        .await
        .unwrap();
    assert!(matches!(
        serde_json::from_slice::<HistoryReply>(&bad.payload).unwrap(),
        HistoryReply::Error { .. }
    ));

    // 200 identical requests at once.
    const CONCURRENT: usize = 200;
    let reads_before = p.metric("persister_store_reads_total").await.unwrap();
    let same = req("h", None, None, 100);
    let replies =
        futures_util::future::join_all((0..CONCURRENT).map(|_| history(&client, &same))).await;
    for r in replies {
        assert_eq!(page(r), (seqs[150..].to_vec(), true));
    }
    let reads = p.metric("persister_store_reads_total").await.unwrap() - reads_before;
    let coalesced = p.metric("persister_history_coalesced_total").await.unwrap();
    assert!(
        reads < CONCURRENT as f64,
        "{reads} store reads for {CONCURRENT} requests"
    );
    assert!(coalesced > 0.0);
    p.stop().await.unwrap();
}

// Proves a history request the store cannot serve gets `unavailable` (not `bad_request`, and not
// a hang), and the service answers again once the store is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_cannot_read_answers_unavailable() {
    let nats = testkit::NatsServer::start().unwrap();
    let dir = testkit::temp_dir("persister-broken").unwrap();
    let db = dir.path().join("history.db");
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    create_stream(&js).await.unwrap();
    let p = Running::start(config(&nats.url(), &db)).await.unwrap();
    let seq = publish_room(&js, "b", 0).await.unwrap();
    let reader = SqliteStore::open(&db).await.unwrap();
    wait_until(|| async { reader.count(&room("b")).await.unwrap() == 1 })
        .await
        .unwrap();
    // The table goes away under the running service (as a broken or replaced file would).
    let admin = rusqlite::Connection::open(&db).unwrap();
    admin
        .execute_batch("ALTER TABLE messages RENAME TO messages_away")
        .unwrap();
    match history(&client, &req("b", None, None, 10)).await {
        HistoryReply::Error { code, .. } => {
            assert_eq!(code, protocol::history::HistoryErrorCode::Unavailable);
        }
        HistoryReply::Page { .. } => panic!("a page from a store without its table"),
    }
    assert!(p.metric("persister_store_read_errors_total").await.unwrap() >= 1.0);
    admin
        .execute_batch("ALTER TABLE messages_away RENAME TO messages")
        .unwrap();
    match history(&client, &req("b", None, None, 10)).await {
        HistoryReply::Page { messages, .. } => {
            assert_eq!(messages.iter().map(|m| m.seq()).collect::<Vec<_>>(), [seq]);
        }
        HistoryReply::Error { message, .. } => panic!("still failing: {message}"),
    }
    p.stop().await.unwrap();
}

// Proves the persister exports stream CHAT's size against its max_bytes (the "stream nearly full"
// alert of deploy/prometheus/rules.yml) and its version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_fullness_and_build_info_are_exported() {
    let nats = testkit::NatsServer::start().unwrap();
    let dir = testkit::temp_dir("persister-fullness").unwrap();
    let db = dir.path().join("history.db");
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    create_stream(&js).await.unwrap();
    for n in 0..10 {
        publish_room(&js, "r", n).await.unwrap();
    }
    let p = Running::start(config(&nats.url(), &db)).await.unwrap();
    wait_until(|| async { p.metric("persister_stream_bytes").await.unwrap_or(0.0) > 100.0 })
        .await
        .unwrap();
    let max = protocol::stream::StreamSettings::default().max_bytes;
    assert_eq!(
        p.metric("persister_stream_max_bytes").await.unwrap(),
        max as f64
    );
    let version = format!(
        "persister_build_info{{version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(p.metric(&version).await.unwrap(), 1.0);
    p.stop().await.unwrap();
}

// Proves that a delivery lost in transit (fetched, never acked, so redelivered only after
// ack_wait) does not leave the store out of stream order: the next batch, which skips it, reads it
// from the stream and stores it first, long before its redelivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_lost_in_transit_is_stored_in_order_before_its_redelivery() {
    use async_nats::jetstream::consumer;
    use futures_util::StreamExt;
    let nats = testkit::NatsServer::start().unwrap();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    create_stream(&js).await.unwrap();
    let mut seqs = Vec::new();
    for i in 0..5 {
        seqs.push(publish_room(&js, "gap", i).await.unwrap());
    }
    // The persister's durable consumer, with a redelivery far beyond this test's patience: its
    // first delivery is taken and dropped, as a dying NATS node drops one.
    let ack_wait = Duration::from_secs(120);
    let stream = js.get_stream(protocol::subject::STREAM).await.unwrap();
    let durable: consumer::PullConsumer = stream
        .get_or_create_consumer(
            persister::config::DEFAULT_CONSUMER,
            consumer::pull::Config {
                durable_name: Some(persister::config::DEFAULT_CONSUMER.into()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait,
                filter_subject: protocol::subject::INGEST_WILDCARD.into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut lost = durable.fetch().max_messages(1).messages().await.unwrap();
    let dropped = lost.next().await.unwrap().unwrap();
    assert_eq!(dropped.info().unwrap().stream_sequence, seqs[0]);
    drop(lost);

    let dir = testkit::temp_dir("persister-gap").unwrap();
    let db = dir.path().join("history.db");
    let persister = Running::start(Config {
        ack_wait,
        ..config(&nats.url(), &db)
    })
    .await
    .unwrap();
    let reader = SqliteStore::open(&db).await.unwrap();
    let conv = room("gap");
    tokio::time::timeout(
        Duration::from_secs(10),
        wait_until(|| async { reader.count(&conv).await.unwrap() >= 5 }),
    )
    .await
    .expect("the dropped delivery was stored before its redelivery")
    .unwrap();
    assert_eq!(all_seqs(&reader, &conv).await, seqs);
    assert_eq!(
        persister
            .metric("persister_gap_filled_total")
            .await
            .unwrap(),
        1.0
    );
    persister.stop().await.unwrap();
}
