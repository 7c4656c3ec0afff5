//! `gateway` binary: tracing → config → bind → run.

use anyhow::Context;

/// mimalloc instead of glibc's allocator: the send path allocates per frame, and glibc's `malloc`,
/// `free` and `malloc_consolidate` were about a tenth of the gateway's CPU under load
/// (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    svc::init_tracing();
    let config =
        gateway::Config::from_lookup(|k| std::env::var(k).ok()).context("reading configuration")?;
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("binding GATEWAY_LISTEN={}", config.listen))?;
    let keys = auth::KeySet::new(config.issuer.clone());
    gateway::run(listener, config, keys, svc::shutdown_signal()).await
}
