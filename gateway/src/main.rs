//! `gateway` binary: tracing → config → bind → run.

use anyhow::Context;

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
