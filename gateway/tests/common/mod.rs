//! Shared setup of the gateway integration tests: a real nats-server, gateways started through
//! `gateway::run` on 127.0.0.1:0, tokens signed by a real auth `Signer`.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use auth::{KeySet, Signer};
use protocol::UserId;
use testkit::{NatsServer, WsClient};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct Stack {
    pub nats: NatsServer,
    pub signer: Signer,
}

pub struct Gateway {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    pub task: JoinHandle<anyhow::Result<()>>,
}

impl Gateway {
    /// Triggers graceful shutdown and returns the task to await.
    pub fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

impl Stack {
    pub fn start() -> Stack {
        init_tracing();
        Stack {
            nats: NatsServer::start().expect("start nats-server"),
            signer: Signer::generate("liaotian"),
        }
    }

    pub fn config(&self) -> gateway::Config {
        gateway::Config {
            nats_url: self.nats.url(),
            ..gateway::Config::default()
        }
    }

    /// A config whose rate limit does not get in the way of tests that send many messages.
    pub fn config_unlimited(&self) -> gateway::Config {
        gateway::Config {
            rate_per_sec: 100_000.0,
            rate_burst: 100_000.0,
            ..self.config()
        }
    }

    pub async fn gateway(&self) -> Gateway {
        self.gateway_with(self.config()).await
    }

    pub async fn gateway_with(&self, config: gateway::Config) -> Gateway {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let keys = KeySet::new("liaotian");
        keys.insert(self.signer.kid().to_owned(), self.signer.public_key());
        let (tx, rx) = oneshot::channel();
        let tls = config.tls_cert.is_some();
        let task = tokio::spawn(gateway::run(listener, config, keys, async {
            let _ = rx.await;
        }));
        if tls {
            // `/healthz` is behind TLS there; the test's own wss client waits for the handshake.
            wait_listening(addr).await;
        } else {
            wait_ready(addr).await;
        }
        Gateway {
            addr,
            stop: Some(tx),
            task,
        }
    }

    /// A gateway whose NATS link goes through a proxy that the test can cut and restore (a crash
    /// or a partition, as the gateway sees it); `config` gets the proxy's URL.
    pub async fn gateway_behind_proxy(
        &self,
        config: gateway::Config,
    ) -> (testkit::TcpProxy, Gateway) {
        let proxy =
            testkit::TcpProxy::start(format!("127.0.0.1:{}", self.nats.port()).parse().unwrap())
                .await
                .unwrap();
        let gateway = self
            .gateway_with(gateway::Config {
                nats_url: format!("nats://{}", proxy.addr()),
                ..config
            })
            .await;
        (proxy, gateway)
    }

    pub fn token(&self, user: &str) -> String {
        self.signer
            .issue(&UserId::parse(user).unwrap(), auth::token::now_secs(), 3600)
    }

    pub async fn connect(&self, gw: &Gateway, user: &str) -> WsClient {
        WsClient::connect(gw.addr, &self.token(user))
            .await
            .expect("connect")
            .0
    }
}

/// Waits until the gateway answers /healthz.
async fn wait_listening(addr: SocketAddr) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("gateway at {addr} is not listening");
}

pub async fn wait_ready(addr: SocketAddr) {
    // A TCP connect is not enough: the listener is bound before `run` has set up NATS and serves.
    for _ in 0..400 {
        if let Ok((200, _)) = testkit::http_get(&format!("http://{addr}/healthz")).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("gateway at {addr} did not come up");
}

/// Joins a room and returns the `joined` frame.
pub async fn join(c: &mut WsClient, room: &str) -> serde_json::Value {
    c.send(serde_json::json!({"type": "join", "room": room, "id": format!("j-{room}")}))
        .await
        .unwrap();
    let v = c.recv_type("joined").await.unwrap();
    assert_eq!(v["room"], room);
    v
}

/// A persister started through `persister::run` with SQLite in a temp dir.
pub struct Persister {
    pub dir: testkit::TempDir,
    stop: Option<oneshot::Sender<()>>,
    pub task: JoinHandle<Result<(), persister::Error>>,
}

impl Stack {
    pub async fn persister(&self) -> Persister {
        let dir = testkit::TempDir::new("liaotian-history").unwrap();
        self.persister_in(dir).await
    }

    pub async fn persister_in(&self, dir: testkit::TempDir) -> Persister {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let config = persister::Config {
            nats_url: self.nats.url(),
            store: persister::config::StoreConfig::Sqlite {
                path: dir.path().join("history.db"),
            },
            batch_wait: Duration::from_millis(20),
            ..persister::Config::default()
        };
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(persister::run(listener, config, async {
            let _ = rx.await;
        }));
        Persister {
            dir,
            stop: Some(tx),
            task,
        }
    }
}

impl Drop for Persister {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A `send` frame to a room whose `id` is its `client_msg_id`.
pub fn send(room: &str, text: &str, cmid: &str) -> serde_json::Value {
    serde_json::json!({"type": "send", "room": room, "text": text, "client_msg_id": cmid, "id": cmid})
}

/// Collects `n` message frames, skipping other frames.
pub async fn messages(c: &mut WsClient, n: usize) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    while out.len() < n {
        let v = c.recv().await.unwrap();
        if v["type"] == "message" {
            out.push(v);
        }
    }
    out
}

/// A gateway metric without labels, read from its `/metrics` page; `None` if it is not there.
pub async fn metric(gw: &Gateway, name: &str) -> Option<f64> {
    let body = testkit::http_get(&format!("http://{}/metrics", gw.addr))
        .await
        .unwrap()
        .1;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}
