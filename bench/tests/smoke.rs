//! Smoke runs of the load generator, kept in `cargo test` so the bench keeps working: a tiny fan-out
//! and a tiny pairs run, a tiny resume storm, a tiny presence churn and a tiny persister catch-up,
//! through a real nats-server and a gateway (and persister) started in-process.
//! They assert that nothing was lost or duplicated, and nothing about timing.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use bench::churn::ChurnPlan;
use bench::plan::{Mode, Shape};
use bench::{WorkerReport, WorkerSpec, merge};
use testkit::NatsServer;

const SEED: [u8; 32] = [9; 32];

async fn gateway(nats: &NatsServer) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    gateway_with(nats, gateway::Config::default()).await
}

async fn gateway_with(
    nats: &NatsServer,
    config: gateway::Config,
) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let signer = token::Signer::from_seed(&SEED, "liaotian");
    let keys = token::KeySet::new("liaotian");
    keys.insert(signer.kid().to_owned(), signer.public_key());
    let config = gateway::Config {
        nats_url: nats.url(),
        ..config
    };
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(gateway::run(listener, config, keys, async {
        let _ = rx.await;
    }));
    for _ in 0..400 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    (addr, tx)
}

fn spec(addr: std::net::SocketAddr, run: &str, shape: Shape) -> WorkerSpec {
    WorkerSpec {
        shape,
        shard: 0,
        shards: 1,
        gateways: vec![addr],
        seed: SEED,
        issuer: "liaotian".into(),
        run: run.into(),
        source_ips: true,
        ramp_per_sec: 500,
        max_connecting: 50,
        send_ms: 2_000,
        // An upper bound only: a run ends as soon as every end marker has arrived.
        drain_ms: 30_000,
        hold_ms: 0,
        text_bytes: 64,
        mode: Mode::Traffic,
    }
}

async fn run(spec: WorkerSpec) -> WorkerReport {
    bench::run_worker(spec, |_| {}, async {}).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_and_pairs_lose_and_duplicate_nothing() {
    let nats = NatsServer::start().expect("start nats-server");
    let (addr, _stop) = gateway(&nats).await;

    let fanout = Shape {
        rooms: 1,
        members: 22,
        senders: 2,
        rate_per_sender: 10.0,
        dm: false,
        join: true,
        group: false,
    };
    let pairs = Shape {
        rooms: 5,
        members: 2,
        senders: 2,
        rate_per_sender: 5.0,
        dm: true,
        join: false,
        group: false,
    };
    for (name, shape) in [("fanout", fanout), ("pairs", pairs)] {
        let report = run(spec(addr, name, shape.clone())).await;
        let t = merge(&[report]);
        assert_eq!(t.connected, shape.clients() as u64, "{name}: {t:?}");
        assert!(t.acked > 0, "{name}: nothing was acked: {t:?}");
        assert_eq!(t.expected, t.deliveries, "{name}: {t:?}");
        assert_eq!(t.lost, 0, "{name}: {t:?}");
        assert_eq!(t.dup_seq + t.dup_cmid, 0, "{name}: {t:?}");
        assert_eq!(t.markers_got, t.markers_expected, "{name}: {t:?}");
        assert!(t.closed_early.is_empty(), "{name}: {t:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_storm_catches_every_client_up_exactly_once() {
    // Proves that 12 clients in 3 rooms, resuming at once after a burst of 30 messages per room,
    // each end with every message after their `since`, once and in order.
    let nats = NatsServer::start().expect("start nats-server");
    let (addr, _stop) = gateway(&nats).await;
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let shape = Shape {
        rooms: 3,
        members: 4,
        senders: 0,
        rate_per_sender: 0.0,
        dm: false,
        join: true,
        group: false,
    };
    let mut s = spec(addr, "storm", shape.clone());
    s.mode = Mode::ResumeStorm { missed: 30 };
    s.send_ms = 0;
    s.hold_ms = 200;
    let run = s.run.clone();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let parent = Rc::new(Cell::new(None));
    let burst = {
        let parent = parent.clone();
        async move {
            ready_rx.await.unwrap();
            let batch = bench::inject::Batch {
                rooms: (0..3).map(|r| bench::plan::room_name(r, &run)).collect(),
                per_room: 30,
                from: format!("burst-{run}"),
                text_bytes: 64,
                marker: true,
            };
            let published = bench::inject::publish(&js, &batch).await.unwrap();
            let mut report = WorkerReport::default();
            for (room, seqs) in batch.rooms.iter().zip(&published.seqs) {
                report
                    .acked_by
                    .insert(format!("{room}|{}", bench::storm::BURST), seqs.len() as u64);
            }
            parent.set(Some(report));
        }
    };
    let report = bench::run_worker(
        s,
        |_| {
            let _ = ready_tx.send(());
        },
        burst,
    )
    .await
    .unwrap();
    let t = merge(&[report, parent.take().expect("burst published")]);
    assert_eq!(t.connected, 12, "{t:?}");
    assert_eq!(t.expected, 12 * 30, "{t:?}");
    assert_eq!(t.deliveries, t.expected, "{t:?}");
    assert_eq!(t.lost, 0, "{t:?}");
    assert_eq!(t.extra, 0, "{t:?}");
    assert_eq!(t.dup_seq + t.dup_cmid, 0, "{t:?}");
    assert_eq!(t.unexpected, 0, "{t:?}");
    assert_eq!(t.markers_got, 12, "{t:?}");
    assert_eq!(t.counters.get("caught_up"), Some(&12), "{t:?}");
    assert!(t.closed_early.is_empty() && t.timed_out == 0, "{t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_churn_watchers_see_every_transition_once() {
    // Proves that two watchers see one online and one offline event per open/close cycle of 20
    // churning users (40 cycles), with a 300 ms grace period. The churners close without sending
    // anything first, which once let a presence refresh started by the Close frame land after the
    // close's delete (the user then stayed online until the TTL).
    let nats = NatsServer::start().expect("start nats-server");
    let config = gateway::Config {
        presence_grace: Duration::from_millis(300),
        // The watchers watch users who never wrote to them.
        presence_privacy: gateway::config::PresencePrivacy::Open,
        ..gateway::Config::default()
    };
    let (addr, _stop) = gateway_with(&nats, config).await;
    let plan = ChurnPlan {
        rate: 20.0,
        users: 20,
        watchers: 2,
        up_ms: 200,
        grace_ms: 300,
        ping_on_open: false,
    };
    let mut s = spec(
        addr,
        "churn",
        Shape {
            rooms: 2,
            members: 1,
            ..Shape::default()
        },
    );
    s.mode = Mode::PresenceChurn(plan);
    s.send_ms = 2_000;
    s.drain_ms = 200 + 300 + 1_500;
    let t = merge(&[run(s).await]);
    let opens = t.counters.get("opens").copied().unwrap_or(0);
    assert_eq!(t.connected, 2, "{t:?}");
    assert_eq!(opens, 40, "{t:?}");
    assert_eq!(t.expected, 2 * 2 * opens, "{t:?}");
    assert_eq!(t.lost, 0, "{t:?}");
    assert_eq!(t.dup_events, 0, "{t:?}");
    assert_eq!(t.unexpected, 0, "{t:?}");
    assert_eq!(t.latency_us.count, 2 * opens, "{t:?}");
    assert_eq!(t.offline_latency_us.count, 2 * opens, "{t:?}");
    assert!(t.closed_early.is_empty(), "{t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persister_catches_up_a_backlog_exactly_once() {
    // Proves that a persister started after a 2,000-message backlog stores every message once, at
    // the sequence JetStream acked.
    let nats = NatsServer::start().expect("start nats-server");
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    svc::nats::apply_chat_stream(&js, &gateway::config::StreamSettings::default())
        .await
        .unwrap();
    let rooms: Vec<String> = (0..4).map(|r| bench::plan::room_name(r, "cu")).collect();
    let batch = bench::inject::Batch {
        rooms: rooms.clone(),
        per_room: 500,
        from: "backlog-cu".into(),
        text_bytes: 64,
        marker: false,
    };
    let published = bench::inject::publish(&js, &batch).await.unwrap();
    assert_eq!(published.total(), 2_000);

    let dir = testkit::temp_dir("bench-smoke-catchup").unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = listener.local_addr().unwrap();
    let config = persister::Config {
        nats_url: nats.url(),
        store: persister::StoreConfig::Sqlite {
            path: dir.path().join("history.db"),
        },
        ..persister::Config::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let started = tokio::time::Instant::now();
    let task = tokio::spawn(persister::run(listener, config, async {
        let _ = stopped.await;
    }));
    let progress = bench::catchup::wait_caught_up(
        &js,
        http,
        persister::config::DEFAULT_CONSUMER,
        2_000,
        started,
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    assert_eq!(progress.stored.count(), 2_000);
    let verified = bench::catchup::verify(&client, &rooms, &published)
        .await
        .unwrap();
    assert!(
        verified.pages.count() >= rooms.len() as u64,
        "every room was paged"
    );
    assert_eq!(
        verified.check,
        bench::catchup::Check {
            expected: 2_000,
            found: 2_000,
            ..Default::default()
        }
    );
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
}
