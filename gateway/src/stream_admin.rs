//! `gateway stream apply` and `gateway stream check`: the one place where stream `CHAT`'s settings
//! (`CHAT_MAX_AGE_SECS`, `CHAT_MAX_BYTES`, `CHAT_DUPLICATE_WINDOW_SECS`, `CHAT_REPLICAS`) are
//! changed, as an operator's step. A gateway serving clients only creates the stream when there is
//! none, and refuses to start when the stream's settings are not its own (`run`), so one gateway
//! started with smaller settings cannot shrink the retention and delete messages not yet persisted.

// An operator's command: what it prints is its answer.
#![allow(clippy::print_stdout)]

use anyhow::Context;

use crate::Config;

/// Creates stream `CHAT` with `config`'s settings, or updates it to them, and prints what changed.
pub async fn apply(config: &Config) -> anyhow::Result<()> {
    let js = connect(config).await?;
    let before = match js.get_stream(config.stream.name()).await {
        Ok(mut s) => Some(
            s.info()
                .await
                .context("reading stream CHAT")?
                .config
                .clone(),
        ),
        Err(_) => None,
    };
    svc::nats::apply_chat_stream(&js, &config.stream).await?;
    match before {
        None => println!("stream CHAT created"),
        Some(before) => {
            let changes = svc::nats::settings_differences(&before, &config.stream);
            if changes.is_empty() {
                println!("stream CHAT already had these settings");
            }
            for c in changes {
                println!("changed {c}");
            }
        }
    }
    Ok(())
}

/// Says whether stream `CHAT` has `config`'s settings; fails when it does not.
pub async fn check(config: &Config) -> anyhow::Result<()> {
    let js = connect(config).await?;
    let mut stream = js
        .get_stream(config.stream.name())
        .await
        .context("stream CHAT does not exist")?;
    let have = stream
        .info()
        .await
        .context("reading stream CHAT")?
        .config
        .clone();
    let differences = svc::nats::settings_differences(&have, &config.stream);
    if differences.is_empty() {
        println!("stream CHAT has these settings");
        return Ok(());
    }
    anyhow::bail!("stream CHAT differs: {}", differences.join("; "))
}

async fn connect(config: &Config) -> anyhow::Result<async_nats::jetstream::Context> {
    let nats = svc::nats::connect(&config.nats_url, "liaotian-gateway-admin")
        .await
        .context("NATS_URL")?;
    Ok(async_nats::jetstream::new(nats.client))
}
