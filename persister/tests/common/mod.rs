//! Shared test support: stream CHAT, message fixtures, a persister started through `run`, polling.

#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage};
use persister::Config;
use protocol::{ClientMsgId, RoomId, StoredMessage, UserId};

/// Longest wait for a condition in a test.
pub const WAIT: Duration = Duration::from_secs(30);

/// Creates stream CHAT from its one definition (`protocol::stream`), as a gateway does.
pub async fn create_stream(js: &jetstream::Context) -> anyhow::Result<()> {
    svc::nats::apply_chat_stream(js, &protocol::stream::StreamSettings::default()).await?;
    Ok(())
}

/// A room message from `from` with client id `cmid`.
pub fn room_msg(room: &str, from: &str, cmid: &str) -> StoredMessage {
    StoredMessage {
        mentions: Vec::new(),
        from: UserId::parse(from).unwrap(),
        room: Some(RoomId::parse(room).unwrap()),
        to: None,
        group: None,
        event: None,
        text: format!("text of {cmid}"),
        client_msg_id: ClientMsgId::parse(cmid).unwrap(),
        ts: 1_700_000_000_000,
    }
}

/// Publishes raw bytes on `subject` with a `Nats-Msg-Id`, returning the stream sequence.
pub async fn publish_raw(
    js: &jetstream::Context,
    subject: &str,
    payload: Vec<u8>,
    msg_id: &str,
) -> anyhow::Result<u64> {
    let ack = js
        .send_publish(
            subject.to_owned(),
            PublishMessage::build()
                .payload(payload.into())
                .message_id(msg_id),
        )
        .await?
        .await?;
    Ok(ack.sequence)
}

/// Publishes a room message as a gateway would.
pub async fn publish_room(js: &jetstream::Context, room: &str, n: usize) -> anyhow::Result<u64> {
    let m = room_msg(room, "alice", &format!("m{n}"));
    publish_raw(
        js,
        &format!("chat.in.room.{room}"),
        m.encode(),
        &format!("alice:m{n}-{room}"),
    )
    .await
}

/// A persister running through `persister::run` in a task of this test.
pub struct Running {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<Result<(), persister::Error>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

/// A config for tests: SQLite at `db`, short ack wait so a killed instance's messages come back fast.
pub fn config(nats_url: &str, db: &Path) -> Config {
    Config {
        nats_url: nats_url.to_owned(),
        store: persister::StoreConfig::Sqlite {
            path: db.to_owned(),
        },
        batch_max: 50,
        ack_wait: Duration::from_secs(1),
        ..Config::default()
    }
}

impl Running {
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(persister::run(listener, config, async {
            let _ = rx.await;
        }));
        let me = Self {
            addr,
            task,
            shutdown: Some(tx),
        };
        wait_until(|| async { http_get(addr, "/readyz").await.is_ok_and(|b| b == "ready") })
            .await?;
        Ok(me)
    }

    /// Aborts the persister mid-flight, as a crash would.
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }

    /// Asks the persister to shut down and waits for it.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.await??;
        Ok(())
    }

    /// The value of metric `name` (without labels); an error if the persister does not export it.
    pub async fn metric(&self, name: &str) -> anyhow::Result<f64> {
        testkit::metric(self.addr, name)
            .await?
            .ok_or_else(|| anyhow::anyhow!("no metric {name}"))
    }
}

/// The body of `GET path`.
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    Ok(testkit::http_get(&format!("http://{addr}{path}")).await?.1)
}

/// Polls `cond` until it holds, failing after [`WAIT`].
pub async fn wait_until<F, Fut>(mut cond: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond().await {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
