//! `gateway` binary: tracing → config → bind → run.

use anyhow::Context;

/// jemalloc instead of glibc's malloc: a message's path allocates and frees many small buffers
/// (frames, header maps, futures), which took 13 % of the gateway's CPU in glibc, with fast-bin
/// consolidation on larger frees. jemalloc cut the gateway's CPU in pairs by 11 % at the same idle
/// memory per connection; mimalloc cut it as much but held 7 % more memory per idle connection
/// (docs/benchmarks.md, seventh round).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> anyhow::Result<()> {
    runtime()?.block_on(async {
        svc::init_tracing();
        if cfg!(tokio_unstable) {
            tracing::info!(lifo_slot = false, "runtime: tokio multi-thread scheduler");
        } else {
            // A RUSTFLAGS of the builder's own replaces `.cargo/config.toml`'s `--cfg tokio_unstable`.
            tracing::warn!(
                lifo_slot = true,
                "runtime: tokio multi-thread scheduler with its LIFO slot: this build lacks \
                 `--cfg tokio_unstable` (a RUSTFLAGS of its own?), so it costs more CPU per message"
            );
        }
        let config = gateway::Config::from_lookup(|k| std::env::var(k).ok())
            .context("reading configuration")?;
        let args: Vec<String> = std::env::args().skip(1).collect();
        match args
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice()
        {
            [] => {}
            ["stream", "apply"] => return gateway::stream_admin::apply(&config).await,
            ["stream", "check"] => return gateway::stream_admin::check(&config).await,
            _ => anyhow::bail!("usage: gateway [stream apply | stream check]"),
        }
        let listener = gateway::listener::bind(&config.listen, config.listen_backlog)
            .await
            .with_context(|| format!("binding GATEWAY_LISTEN={}", config.listen))?;
        let metrics = match &config.metrics_listen {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding GATEWAY_METRICS_LISTEN={addr}"))?,
            ),
            None => None,
        };
        let keys = token::KeySet::new(config.issuer.clone());
        gateway::run_with_metrics(listener, metrics, config, keys, svc::shutdown_signal()).await
    })
}

/// tokio's multi-thread runtime without its LIFO slot, where the build allows it (`--cfg
/// tokio_unstable`, set in `.cargo/config.toml`).
///
/// With the slot, a task woken by the running one runs next: the NATS client's task runs right after
/// each session that queued a publish, so every publish is its own socket write, and a sender's ack
/// is written before the topic task queues the sender's echo. Without it, woken tasks run in order,
/// publishes from many connections share a write, and the ack and the echo share one
/// (docs/benchmarks.md, fourth round).
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    #[cfg(tokio_unstable)]
    builder.disable_lifo_slot();
    builder.build()
}
