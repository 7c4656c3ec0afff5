//! Plumbing shared by the services (`auth`, `gateway`, `persister`, `admin`), written once so that
//! each behaves the same: tracing, the shutdown signal, the NATS connection ([`nats`]) and its final
//! flush, live KV keys in one round trip ([`kv`]), consumers pulled in bursts ([`bursts`]), the
//! environment ([`env`]), retries with jittered backoff ([`retry`]), and HTTP answers in the
//! envelope ([`http`]). Each `main.rs` stays the same four steps: tracing → config → bind →
//! run.

pub mod bursts;
pub mod env;
pub mod http;
pub mod kv;
pub mod nats;
pub mod retry;

/// Installs the global `tracing` subscriber: the filter from `RUST_LOG` (default `info`), and JSON
/// lines when `LOG_FORMAT=json`, plain text otherwise.
pub fn init_tracing() {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if std::env::var("LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Resolves on SIGINT or SIGTERM: the shutdown future production passes to `run`.
pub async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops this process");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutdown signal received");
}

/// How long a service waits at exit to flush what it buffered for NATS.
pub const FINAL_FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Flushes what is buffered for NATS before a service exits, for at most [`FINAL_FLUSH_TIMEOUT`]:
/// with NATS gone, a flush would wait for a reconnect that may never come.
pub async fn final_flush(nats: &async_nats::Client) {
    let _ = tokio::time::timeout(FINAL_FLUSH_TIMEOUT, nats.flush()).await;
}
