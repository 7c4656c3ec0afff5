//! Tests that span services: history through the gateway from a real persister, WeChat login
//! through auth to a socket on a gateway. Each service's own tests need only what it talks to; the
//! tests here start several services through their `run` on 127.0.0.1:0, over one real nats-server
//! (and a real redis-server and SQLite file where they need them).
//!
//! This library is the setup those tests share; the tests are in `tests/`.

use std::time::Duration;

pub use gateway::testing::*;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Sends `frame` and returns the first reply of type `ty` or `error`, skipping other frames. When
/// `frame` has an `id`, the reply must carry it: frames of the same type pushed meanwhile (a `group`
/// frame without `id` telling of a group the user was put in) are skipped too.
pub async fn ask(
    c: &mut testkit::WsClient,
    frame: serde_json::Value,
    ty: &str,
) -> serde_json::Value {
    let id = frame.get("id").cloned();
    c.send(frame).await.unwrap();
    loop {
        let v = c.recv().await.unwrap();
        if id.as_ref().is_some_and(|id| v.get("id") != Some(id)) {
            continue;
        }
        if v["type"] == ty || v["type"] == "error" {
            return v;
        }
    }
}

/// The next frame other than `pong` within `t`, if any: for checks that nothing arrives.
pub async fn next_within(c: &mut testkit::WsClient, t: Duration) -> Option<serde_json::Value> {
    let until = tokio::time::Instant::now() + t;
    loop {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return None;
        }
        match c.recv_timeout(left).await {
            Ok(v) if v["type"] == "pong" => {}
            Ok(v) => return Some(v),
            Err(_) => return None,
        }
    }
}

/// The `seq` of every stored message of the thread with `with`, paged forward from the start.
pub async fn thread_seqs(c: &mut testkit::WsClient, with: &str) -> Vec<u64> {
    history_seqs(c, "with", with).await
}

/// The `seq` of every stored message of the conversation `field: name` (`with`, `room` or
/// `group`), paged forward from the start through the gateway's `history`.
pub async fn history_seqs(c: &mut testkit::WsClient, field: &str, name: &str) -> Vec<u64> {
    let mut seqs = Vec::new();
    let mut after = 0u64;
    loop {
        let mut frame = serde_json::json!({"type":"history","after":after,"limit":100,"id":"h"});
        frame[field] = name.into();
        let h = ask(c, frame, "history").await;
        assert_eq!(h["type"], "history", "{h}");
        let page: Vec<u64> = h["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["seq"].as_u64().unwrap())
            .collect();
        after = page.last().copied().unwrap_or(after);
        seqs.extend(page);
        if h["more"] != true {
            return seqs;
        }
    }
}

/// The error code of a reply, or `"none"` when it is not an `error`.
pub fn code(v: &serde_json::Value) -> &str {
    if v["type"] == "error" {
        v["code"].as_str().unwrap_or("?")
    } else {
        "none"
    }
}

/// The history store a test's persister writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A fresh SQLite file in a temp dir.
    Sqlite,
    /// A fresh keyspace on the test run's Cassandra node (`testkit::cassandra`), through the
    /// ScyllaDB store.
    Scylla,
}

/// A persister started through `persister::run`.
pub struct Persister {
    pub dir: testkit::TempDir,
    store: persister::config::StoreConfig,
    _stop: oneshot::Sender<()>,
    pub task: JoinHandle<Result<(), persister::Error>>,
}

impl Persister {
    /// A persister on a fresh SQLite file, consuming the stream of `stack`'s nats-server.
    pub async fn start(stack: &Stack) -> Persister {
        Self::start_on(stack, Backend::Sqlite).await
    }

    /// A persister on a fresh store of `backend`.
    pub async fn start_on(stack: &Stack, backend: Backend) -> Persister {
        let dir = testkit::temp_dir("liaotian-history").unwrap();
        let store = match backend {
            Backend::Sqlite => persister::config::StoreConfig::Sqlite {
                path: dir.path().join("history.db"),
            },
            Backend::Scylla => {
                static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos();
                let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                persister::config::StoreConfig::Scylla {
                    hosts: vec![testkit::cassandra::shared().unwrap()],
                    keyspace: format!("e2e_{}_{n}", nanos % 1_000_000_000_000),
                }
            }
        };
        Self::launch(stack, dir, store).await
    }

    /// A persister on a fresh SQLite file, consuming through the NATS servers in `nats_url`
    /// (comma-separated) instead of a stack's own nats-server: a cluster's.
    pub async fn start_on_nats(nats_url: &str) -> Persister {
        let dir = testkit::temp_dir("liaotian-history").unwrap();
        let store = persister::config::StoreConfig::Sqlite {
            path: dir.path().join("history.db"),
        };
        Self::launch_on(nats_url, dir, store).await
    }

    /// Stops this persister and starts another on the same store, as a restart would.
    pub async fn restart(mut self, stack: &Stack) -> Persister {
        let dir = std::mem::replace(&mut self.dir, testkit::temp_dir("liaotian-gone").unwrap());
        let store = self.store.clone();
        self.task.abort();
        let _ = (&mut self.task).await;
        drop(self);
        Self::launch(stack, dir, store).await
    }

    /// A persister on the SQLite file `history.db` in `dir`.
    pub async fn start_in(stack: &Stack, dir: testkit::TempDir) -> Persister {
        let store = persister::config::StoreConfig::Sqlite {
            path: dir.path().join("history.db"),
        };
        Self::launch(stack, dir, store).await
    }

    async fn launch(
        stack: &Stack,
        dir: testkit::TempDir,
        store: persister::config::StoreConfig,
    ) -> Persister {
        Self::launch_on(&stack.nats.url(), dir, store).await
    }

    async fn launch_on(
        nats_url: &str,
        dir: testkit::TempDir,
        store: persister::config::StoreConfig,
    ) -> Persister {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let config = persister::Config {
            nats_url: nats_url.to_owned(),
            store: store.clone(),
            scylla_replication: "{'class': 'SimpleStrategy', 'replication_factor': 1}".into(),
            batch_wait: Duration::from_millis(20),
            ..persister::Config::default()
        };
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(persister::run(listener, config, async {
            let _ = rx.await;
        }));
        wait_for_services(nats_url).await;
        Persister {
            dir,
            store,
            _stop: tx,
            task,
        }
    }
}

/// Waits until a persister answers the history and conversation services, so a test's first
/// request does not meet "no responders".
async fn wait_for_services(nats_url: &str) {
    let first = nats_url.split(',').next().unwrap_or(nats_url);
    let nats = async_nats::connect(first).await.unwrap();
    let probes = [
        (
            protocol::history::HISTORY_SUBJECT,
            r#"{"conv":{"room":"probe"},"limit":1}"#,
        ),
        (
            protocol::conv::CONV_SUBJECT,
            r#"{"group_counts":{"users":[]}}"#,
        ),
    ];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for (subject, body) in probes {
        while nats.request(subject, body.into()).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the persister's {subject} service did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Persister {
    fn drop(&mut self) {
        self.task.abort();
    }
}
