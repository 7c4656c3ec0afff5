//! `admin` binary: tracing → config → bind → serve. `admin openapi` prints the OpenAPI document.

use anyhow::Context;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if std::env::args().nth(1).as_deref() == Some("openapi") {
        let doc = serde_json::to_string_pretty(&admin::doc::json())?;
        std::io::Write::write_all(&mut std::io::stdout(), doc.as_bytes())?;
        return Ok(());
    }
    svc::init_tracing();
    let config =
        admin::Config::from_lookup(|k| std::env::var(k).ok()).context("reading configuration")?;
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("binding ADMIN_LISTEN={}", config.listen))?;
    let state = admin::start(config).await?;
    admin::serve(listener, state, svc::shutdown_signal()).await
}
