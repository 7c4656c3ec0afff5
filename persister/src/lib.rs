//! The persister: copies stream `CHAT` into a durable history store and answers history queries.
//!
//! - [`consumer`]: a durable pull consumer that writes batches idempotently and acks after commit.
//! - [`store`]: the [`Store`](store::Store) trait and its SQLite and ScyllaDB backends.
//! - [`service`]: the NATS history service, with coalescing of identical concurrent requests.
//! - [`conv_service`]: the NATS conversation service (conversation lists, read state).
//! - [`http`] and [`metrics`]: `/healthz`, `/readyz`, `/metrics`.
//!
//! Only the persister knows the store: gateways ask it over NATS and stay database-free.

pub mod config;
pub mod consumer;
pub mod conv_service;
pub mod http;
pub mod metrics;
pub mod service;
pub mod store;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::{Config, ConfigError, StoreConfig};
pub use store::{Store, StoreError};

/// Time given to the consumer and service to finish their current work after shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Why the persister could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("opening the history store")]
    Store(#[from] StoreError),
    #[error("setting up the NATS connection")]
    Nats(#[from] svc::nats::ConnectError),
    #[error("subscribing to the history service subject")]
    Subscribe(#[from] svc::nats::SubscribeError),
    #[error("serving HTTP")]
    Http(#[from] std::io::Error),
}

/// Opens the store named by `config`.
pub async fn open_store(config: &Config) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match &config.store {
        StoreConfig::Sqlite { path } => Arc::new(store::SqliteStore::open(path).await?),
        StoreConfig::Scylla { hosts, keyspace } => Arc::new(
            store::ScyllaStore::connect(hosts, keyspace, &config.scylla_replication).await?,
        ),
    })
}

/// Runs the persister until `shutdown` completes: HTTP on `listener`, the consumer, and the history
/// service. Dropping (aborting) the returned future stops everything it started, as a crash would.
/// How often the persister reads stream `CHAT`'s size for its fullness gauges.
pub const STREAM_WATCH_EVERY: Duration = Duration::from_secs(15);

/// Sets the stream's size gauges every [`STREAM_WATCH_EVERY`] until `stop`; a failed read leaves
/// them as they were.
async fn watch_stream(
    js: async_nats::jetstream::Context,
    metrics: Arc<metrics::Metrics>,
    stop: CancellationToken,
) {
    loop {
        if let Ok(mut s) = js.get_stream(protocol::subject::STREAM).await
            && let Ok(info) = s.info().await
        {
            metrics
                .stream_bytes
                .set(i64::try_from(info.state.bytes).unwrap_or(i64::MAX));
            metrics.stream_max_bytes.set(info.config.max_bytes);
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(STREAM_WATCH_EVERY) => {}
        }
    }
}

pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let store = open_store(&config).await?;
    let nats = svc::nats::connect(&config.nats_url, "liaotian-persister")
        .await?
        .client;
    let js = async_nats::jetstream::new(nats.clone());
    let metrics = Arc::new(metrics::Metrics::new());
    let ready = Arc::new(AtomicBool::new(false));
    let stop = CancellationToken::new();

    let app = http::router(http::HttpState {
        metrics: metrics.clone(),
        ready: ready.clone(),
    });
    tracing::info!(addr = %listener.local_addr()?, "persister listening");
    let http = axum::serve(listener, app).with_graceful_shutdown(stop.clone().cancelled_owned());
    let watch = watch_stream(js.clone(), metrics.clone(), stop.clone());
    let consumer = consumer::run(
        js,
        store.clone(),
        metrics.clone(),
        consumer::ConsumerSettings {
            name: config.consumer.clone(),
            batch_max: config.batch_max,
            batch_wait: config.batch_wait,
            ack_wait: config.ack_wait,
        },
        ready,
        stop.clone(),
    );
    let service = async {
        tokio::try_join!(
            service::serve(nats.clone(), store.clone(), metrics, stop.clone()),
            conv_service::serve(nats.clone(), store, stop.clone()),
        )
        .map(|_| ())
    };

    // Everything runs inside this future (no detached tasks), so aborting `run` is a clean crash.
    // Whichever part ends first stops the others.
    let work = async {
        tokio::join!(
            async {
                let r = http.await;
                stop.cancel();
                r
            },
            async {
                consumer.await;
                stop.cancel();
            },
            async {
                let r = service.await;
                stop.cancel();
                r
            },
            watch,
        )
    };
    tokio::pin!(work);
    let (http, (), service, ()) = tokio::select! {
        out = &mut work => out,
        () = shutdown => {
            tracing::info!("shutting down");
            stop.cancel();
            match tokio::time::timeout(SHUTDOWN_GRACE, &mut work).await {
                Ok(out) => out,
                Err(_) => {
                    tracing::warn!("shutdown grace period over; stopping now");
                    (Ok(()), (), Ok(()), ())
                }
            }
        }
    };
    svc::final_flush(&nats).await;
    http?;
    service?;
    Ok(())
}
