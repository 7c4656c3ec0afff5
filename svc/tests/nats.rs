//! `svc::kv::LiveKeys` and `svc::bursts` against a real nats-server: what the notifier, the relay
//! and the gateway's counts rely on.

use std::time::Duration;

use async_nats::jetstream::AckKind;
use async_nats::jetstream::{self, consumer, kv, stream};
use svc::bursts::{Bursts, Reader};
use svc::kv::{LiveKeys, MAX_FILTERS};
use testkit::NatsServer;

#[tokio::test]
async fn read_many_returns_the_live_keys_of_every_filter_in_one_request() {
    let nats = NatsServer::start().unwrap();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client.clone());
    let bucket = js
        .create_key_value(kv::Config {
            bucket: "live".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    for key in [
        "conn.alice.c1",
        "conn.alice.c2",
        "conn.bob.c1",
        "conn.carol.c1",
    ] {
        bucket.put(key, "1".into()).await.unwrap();
    }
    bucket.delete("conn.bob.c1").await.unwrap();
    let live = LiveKeys::new(client).await.unwrap();

    let mut keys = live
        .read_many("live", &["conn.alice.*", "conn.bob.*", "conn.dave.*"], 64)
        .await
        .unwrap();
    keys.sort();
    assert_eq!(keys, ["conn.alice.c1", "conn.alice.c2"]);
    assert_eq!(
        live.read("live", "conn.carol.*", 16).await.unwrap(),
        ["conn.carol.c1"]
    );
    assert!(
        live.read("live", "conn.bob.*", 16)
            .await
            .unwrap()
            .is_empty()
    );

    // As many filters as a request may carry, most of them matching nothing.
    let mut filters: Vec<String> = (0..MAX_FILTERS - 1)
        .map(|i| format!("conn.u{i}.*"))
        .collect();
    filters.push("conn.carol.*".into());
    assert_eq!(
        live.read_many("live", &filters, 1024).await.unwrap(),
        ["conn.carol.c1"]
    );
    filters.push("conn.alice.*".into());
    assert!(live.read_many("live", &filters, 1024).await.is_err());

    // A truncated answer ends, with at most `max` keys.
    let some = tokio::time::timeout(
        Duration::from_secs(3),
        live.read_many("live", &["conn.alice.*", "conn.carol.*"], 1),
    )
    .await
    .expect("a truncated read ends")
    .unwrap();
    assert!(some.len() <= 1, "{some:?}");
}

async fn stream_of(js: &jetstream::Context, name: &str, n: usize) -> stream::Stream {
    let stream = js
        .create_stream(stream::Config {
            name: name.into(),
            subjects: vec![format!("{name}.>")],
            ..Default::default()
        })
        .await
        .unwrap();
    for i in 0..n {
        js.publish(format!("{name}.{i}"), "x".into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    stream
}

async fn reader_of(stream: &stream::Stream, max_ack_pending: i64) -> consumer::PullConsumer {
    stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("reader".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(30),
            max_ack_pending,
            ..Default::default()
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn bursts_come_full_at_once_then_wait_for_the_tick() {
    let nats = NatsServer::start().unwrap();
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let stream = stream_of(&js, "S", 10).await;
    let bursts = Bursts {
        every: Duration::from_millis(400),
        max: 4,
    };
    let mut reader = Reader::new(reader_of(&stream, 100).await, bursts, 100);
    let acks = reader.acks();
    let t = tokio::time::Instant::now();
    let mut sizes = Vec::new();
    for _ in 0..3 {
        let burst = reader.next().await.unwrap();
        sizes.push(burst.len());
        for m in burst {
            acks.send(m, AckKind::Ack).await;
        }
    }
    assert_eq!(sizes, [4, 4, 2]);
    // The first pull is at once and full bursts do not wait: all 10 well inside one tick.
    assert!(
        t.elapsed() < Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    // Caught up: the next pull waits for the tick, and finds what was stored meanwhile.
    js.publish("S.late", "y".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let burst = reader.next().await.unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(390),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(burst.len(), 1);
    assert_eq!(burst[0].payload.as_ref(), b"y");
    acks.send(burst.into_iter().next().unwrap(), AckKind::Ack)
        .await;
    assert!(reader.next().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_reader_never_asks_beyond_max_ack_pending_and_goes_on_once_acks_are_sent() {
    let nats = NatsServer::start().unwrap();
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let stream = stream_of(&js, "P", 12).await;
    let bursts = Bursts {
        every: Duration::from_millis(100),
        max: 100,
    };
    let mut reader = Reader::new(reader_of(&stream, 5).await, bursts, 5);
    let acks = reader.acks();
    let first = reader.next().await.unwrap();
    assert_eq!(first.len(), 5);
    // Full: the next pull is at once, and with no room it waits for acks, not for the server.
    let acked = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        for m in first {
            acks.send(m, AckKind::Ack).await;
        }
    });
    let t = tokio::time::Instant::now();
    let second = reader.next().await.unwrap();
    // It waited for the acks queued after 300 ms (with room for 5, a batch is one ack: a
    // quarter of the room, so the room is never all held by acks waiting to be sent).
    assert!(
        t.elapsed() >= Duration::from_millis(290),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(second.len(), 5);
    acked.await.unwrap();
    let mut consumer = reader_of(&stream, 5).await;
    let info = consumer.info().await.unwrap();
    assert_eq!(
        (info.num_ack_pending, info.ack_floor.stream_sequence),
        (5, 5)
    );
}

#[tokio::test]
async fn acks_go_out_together_a_window_after_the_first() {
    let nats = NatsServer::start().unwrap();
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let mut stream = stream_of(&js, "A", 6).await;
    let mut consumer = reader_of(&stream, 100).await;
    let bursts = Bursts {
        every: Duration::from_millis(600),
        max: 10,
    };
    let mut reader = Reader::new(consumer.clone(), bursts, 100);
    let acks = reader.acks();
    let mut burst = reader.next().await.unwrap().into_iter();
    assert_eq!(burst.len(), 6);
    acks.send(burst.next().unwrap(), AckKind::Ack).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    for m in burst {
        acks.send(m, AckKind::Ack).await;
    }
    // Inside the window nothing is acked yet, not even the first.
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(consumer.info().await.unwrap().num_ack_pending, 6);
    // After it, all six together.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let info = consumer.info().await.unwrap();
    assert_eq!(
        (info.num_ack_pending, info.ack_floor.stream_sequence),
        (0, 6)
    );
    assert_eq!(stream.info().await.unwrap().state.messages, 6);
}
