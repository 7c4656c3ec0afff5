//! Test support (feature `test-support`): a real nats-server, gateways started through
//! [`crate::run`] on 127.0.0.1:0, and tokens signed by a real [`token::Signer`]. The gateway's own
//! integration tests and the cross-service tests in `e2e/` start gateways through it.

use std::net::SocketAddr;
use std::time::Duration;

use protocol::UserId;
use serde_json::json;
use testkit::{NatsServer, WsClient};
use token::{KeySet, Signer};
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

pub use testkit::init_tracing;

impl Stack {
    pub fn start() -> Stack {
        init_tracing();
        Stack {
            nats: NatsServer::start().expect("start nats-server"),
            signer: Signer::generate("liaotian"),
        }
    }

    pub fn config(&self) -> crate::Config {
        crate::Config {
            nats_url: self.nats.url(),
            ..crate::Config::default()
        }
    }

    /// A config whose rate limit does not get in the way of tests that send many messages.
    pub fn config_unlimited(&self) -> crate::Config {
        crate::Config {
            rate_per_sec: 100_000.0,
            rate_burst: 100_000.0,
            user_sends_per_sec: 100_000.0,
            user_send_burst: 100_000.0,
            ..self.config()
        }
    }

    pub async fn gateway(&self) -> Gateway {
        self.gateway_with(self.config()).await
    }

    pub async fn gateway_with(&self, config: crate::Config) -> Gateway {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let keys = KeySet::new("liaotian");
        keys.insert(self.signer.kid().to_owned(), self.signer.public_key());
        let (tx, rx) = oneshot::channel();
        let tls = config.tls_cert.is_some();
        let task = tokio::spawn(crate::run(listener, config, keys, async {
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
        config: crate::Config,
    ) -> (testkit::TcpProxy, Gateway) {
        let proxy =
            testkit::TcpProxy::start(format!("127.0.0.1:{}", self.nats.port()).parse().unwrap())
                .await
                .unwrap();
        let gateway = self
            .gateway_with(crate::Config {
                nats_url: format!("nats://{}", proxy.addr()),
                ..config
            })
            .await;
        (proxy, gateway)
    }

    pub fn token(&self, user: &str) -> String {
        self.signer
            .issue(&UserId::parse(user).unwrap(), token::now_secs(), 3600)
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
    testkit::metric(gw.addr, name).await.unwrap()
}

/// Sends `n` room messages from `c`, waiting for each ack; returns their seqs.
pub async fn send_many(c: &mut WsClient, room: &str, prefix: &str, n: usize) -> Vec<u64> {
    let mut seqs = Vec::new();
    for i in 0..n {
        c.send(send(room, &format!("{prefix}{i}"), &format!("{prefix}{i}")))
            .await
            .unwrap();
        seqs.push(c.recv_type("ack").await.unwrap()["seq"].as_u64().unwrap());
    }
    seqs
}

/// Resumes `room` after `since` and checks the replay: every missed seq once, in order, then `live`.
/// `chain_intact` is false when the stream dropped the room's messages: the next live message's
/// `prev_seq` then restarts at 0, which a client must not take for a gap.
pub async fn resume_and_check(
    stack: &Stack,
    gw: &Gateway,
    room: &str,
    since: u64,
    missed: &[u64],
    chain_intact: bool,
) {
    let mut c = stack.connect(gw, "late").await;
    c.send(json!({"type": "join", "room": room, "since": since, "id": "r"}))
        .await
        .unwrap();
    let joined = c.recv_type("joined").await.unwrap();
    assert_eq!(joined["recovered"], true, "{joined}");
    assert_eq!(joined["last_seq"], *missed.last().unwrap());
    let got = messages(&mut c, missed.len()).await;
    let seqs: Vec<u64> = got.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, missed, "every missed message once, in order");
    // Live messages follow the replay without a seam.
    let mut other = stack.connect(gw, "other").await;
    join(&mut other, room).await;
    other.send(send(room, "live", "live-1")).await.unwrap();
    let live = c.recv_type("message").await.unwrap();
    assert_eq!(live["client_msg_id"], "live-1");
    let expected_prev = if chain_intact {
        *missed.last().unwrap()
    } else {
        0
    };
    assert_eq!(live["prev_seq"], expected_prev);
}
