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
    let before = svc::nats::chat_stream_differences(&js, &config.stream).await?;
    svc::nats::apply_chat_stream(&js, &config.stream).await?;
    match before {
        None => println!("stream CHAT created"),
        Some(changes) if changes.is_empty() => println!("stream CHAT already had these settings"),
        Some(changes) => {
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
    match svc::nats::chat_stream_differences(&js, &config.stream).await? {
        None => anyhow::bail!("stream CHAT does not exist"),
        Some(d) if d.is_empty() => {
            println!("stream CHAT has these settings");
            Ok(())
        }
        Some(d) => anyhow::bail!("stream CHAT differs: {}", d.join("; ")),
    }
}

async fn connect(config: &Config) -> anyhow::Result<async_nats::jetstream::Context> {
    let nats = svc::nats::connect(&config.nats_url, "liaotian-gateway-admin")
        .await
        .context("NATS_URL")?;
    Ok(async_nats::jetstream::new(nats.client))
}
