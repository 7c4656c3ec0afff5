//! `auth` binary: tracing → config → bind → run.

use anyhow::Context;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    svc::init_tracing();
    let mut config =
        auth::Config::from_lookup(|k| std::env::var(k).ok()).context("reading configuration")?;
    if std::env::args().any(|a| a == "--dev") {
        config.dev_login = true;
    }
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("binding AUTH_LISTEN={}", config.listen))?;
    let state = auth::start(config.clone()).await?;
    // SIGHUP reads the key files again: that is how keys rotate without a restart (docs/wechat.md).
    let keys = state.keys.clone();
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("listening for SIGHUP")?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match keys.reload(&config) {
                Ok(()) => tracing::info!("keys reloaded"),
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "reloading keys failed; keeping the current ones")
                }
            }
        }
    });
    auth::serve(listener, state, svc::shutdown_signal()).await
}
