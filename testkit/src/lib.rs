//! Test support: real servers and real WebSocket clients.
//!
//! [`NatsServer`] starts the real `nats-server` binary with JetStream on an ephemeral port and a fresh
//! store directory, and kills it and removes the directory on drop. Each test gets its own server, so
//! tests run in parallel without sharing streams. [`WsClient`] is a thin tokio-tungstenite client that
//! speaks JSON frames. The small helpers every test tree needs (a temp dir, test logs, an HTTP GET
//! and a metric read) are here once. [`CassandraServer`] is the CQL server of the ScyllaDB store's
//! tests, one per test run.

pub mod cassandra;
pub mod cluster;
pub mod nats;
pub mod proxy;
pub mod redis;
pub mod ws;

pub use cassandra::CassandraServer;
pub use cluster::NatsCluster;
pub use nats::NatsServer;
pub use proxy::TcpProxy;
pub use redis::RedisServer;
pub use ws::WsClient;

/// Calls `start` up to `attempts` times, `pause` apart, returning the first success or the last
/// error: for servers whose port may still be held by the kernel, or taken by another test.
pub(crate) fn retry<T>(
    attempts: usize,
    pause: std::time::Duration,
    mut start: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let mut last = None;
    for _ in 0..attempts {
        match start() {
            Ok(v) => return Ok(v),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(pause);
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt made")))
}

pub use tempfile::TempDir;

/// A fresh, empty directory under the system temp dir whose name starts with `prefix`, removed
/// when the [`TempDir`] is dropped.
pub fn temp_dir(prefix: &str) -> anyhow::Result<TempDir> {
    Ok(tempfile::Builder::new()
        .prefix(&format!("{prefix}-"))
        .tempdir()?)
}

/// Test logs at `warn` (or `RUST_LOG`), captured per test by the test harness.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// `GET url`: the status and the body. For health and metrics endpoints.
pub async fn http_get(url: &str) -> anyhow::Result<(u16, String)> {
    // reqwest is built without a default TLS provider; tests speak plain HTTP, but the client
    // still needs one installed. A client per call: each test has its own runtime, and pooled
    // connections would belong to the first.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    let resp = client
        .get(url)
        .timeout(std::time::Duration::from_secs(10))
        .send()
        .await?;
    let status = resp.status().as_u16();
    Ok((status, resp.text().await?))
}

/// The value of metric `name` (without labels) in Prometheus text, if it is there.
pub fn metric_in(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The value of metric `name` on the `/metrics` page of the server at `addr`, if it is there.
pub async fn metric(addr: std::net::SocketAddr, name: &str) -> anyhow::Result<Option<f64>> {
    let (_, body) = http_get(&format!("http://{addr}/metrics")).await?;
    Ok(metric_in(&body, name))
}
