//! Test support: real servers and real WebSocket clients.
//!
//! [`NatsServer`] starts the real `nats-server` binary with JetStream on an ephemeral port and a fresh
//! store directory, and kills it and removes the directory on drop. Each test gets its own server, so
//! tests run in parallel without sharing streams. [`WsClient`] is a thin tokio-tungstenite client that
//! speaks JSON frames.

pub mod nats;
pub mod proxy;
pub mod redis;
pub mod ws;

pub use nats::NatsServer;
pub use proxy::TcpProxy;
pub use redis::RedisServer;
pub use ws::WsClient;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

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

/// A fresh, empty directory under the system temp dir, removed by [`TempDir`]'s drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> anyhow::Result<Self> {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path =
            std::env::temp_dir().join(format!("{prefix}-{}-{n}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path)?;
        Ok(Self(path))
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A minimal HTTP/1.1 GET over a fresh TCP connection (`http://host:port/path`), returning the
/// status and the body. Enough for health and metrics endpoints in tests, without an HTTP client.
pub async fn http_get(url: &str) -> anyhow::Result<(u16, String)> {
    use anyhow::Context;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").context("only http:// URLs")?;
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(h, p)| (h, format!("/{p}")));
    let mut s = tokio::net::TcpStream::connect(host).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await?;
    let status = buf
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status")?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}
