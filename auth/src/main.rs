//! `auth` binary: tracing → config → bind → run.

use anyhow::Context;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
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
    auth::serve(listener, state, shutdown_signal()).await
}

fn init_tracing() {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if std::env::var("LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}
