//! Smoke run of the load generator, kept in `cargo test` so the bench keeps working: a tiny fan-out and
//! a tiny pairs run, through a real nats-server and a gateway started in-process.
//! It asserts that nothing was lost or duplicated, and nothing about timing.

use std::time::Duration;

use bench::plan::Shape;
use bench::{WorkerReport, WorkerSpec, merge};
use testkit::NatsServer;

const SEED: [u8; 32] = [9; 32];

async fn gateway(nats: &NatsServer) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let signer = auth::Signer::from_seed(&SEED, "liaotian");
    let keys = auth::KeySet::new("liaotian");
    keys.insert(signer.kid().to_owned(), signer.public_key());
    let config = gateway::Config {
        nats_url: nats.url(),
        ..gateway::Config::default()
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
    };
    let pairs = Shape {
        rooms: 5,
        members: 2,
        senders: 2,
        rate_per_sender: 5.0,
        dm: true,
        join: false,
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
