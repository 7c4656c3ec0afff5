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
