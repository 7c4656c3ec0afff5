//! `persister` binary: tracing → config → bind → run.

use anyhow::Context;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    svc::init_tracing();
    let config = persister::Config::from_lookup(|k| std::env::var(k).ok())
        .context("reading configuration")?;
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("binding PERSISTER_LISTEN={}", config.listen))?;
    persister::run(listener, config, svc::shutdown_signal())
        .await
        .context("persister failed")
}
