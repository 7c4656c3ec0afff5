//! The liaotian gateway: a stateless WebSocket edge over NATS JetStream.
//!
//! A gateway holds client connections and nothing else: no database, no state shared with other
//! gateways. It publishes each client message into stream `CHAT` and acks it once JetStream stored it;
//! it delivers to its sockets what JetStream republishes on `chat.out.>`, subscribing once per room and
//! per user that has local connections.
//!
//! Map: [`server`] (HTTP routes and the upgrade), [`session`] (one connection), [`hub`] (subscriptions and
//! fan-out), [`publish`] (JetStream publish and the stream definition), [`conn`] (the per-connection
//! queue), [`keys`] (token keys from the auth service), [`tls`] (rustls termination).

pub mod access;
pub mod backlog;
pub mod config;
pub mod conn;
pub mod content;
pub mod convs;
pub mod groups;
pub mod hub;
pub mod keys;
pub mod listener;
pub mod metrics;
pub mod mutes;
pub mod presence;
pub mod publish;
pub mod ratelimit;
pub mod retention;
pub mod sdk;
pub mod server;
pub mod session;
pub mod state;
pub mod stream_admin;
pub mod tls;
pub mod userlimit;
pub mod writer;

#[cfg(feature = "test-support")]
pub mod testing;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use token::KeySet;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::Config;

/// How long `run` waits for the auth service's keys at start.
const KEYS_WAIT: Duration = Duration::from_secs(30);
/// How long `run` keeps trying to reach NATS and stream CHAT at start before giving up.
const STARTUP_WAIT: Duration = Duration::from_secs(60);

const INDEX_HTML: &str = include_str!("../web/index.html");

/// Runs a gateway on `listener` until `shutdown` resolves, then closes every session with 1001 and
/// returns within `config.shutdown_grace`.
///
/// `keys` holds the accepted token keys; with [`config::KeySource::AuthUrl`] they are fetched and
/// refreshed from the auth service.
pub async fn run(
    listener: TcpListener,
    config: Config,
    keys: KeySet,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    run_with_metrics(listener, None, config, keys, shutdown).await
}

/// [`run`], with `/metrics` on `metrics` instead of on the public `listener` when it is given
/// (`GATEWAY_METRICS_LISTEN`, bound by `main`).
pub async fn run_with_metrics(
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    config: Config,
    keys: KeySet,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // rustls needs a process-wide crypto provider for both TLS termination and HTTPS key fetches.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = Arc::new(config);
    let stop = CancellationToken::new();

    if let config::KeySource::AuthUrl(url) = &config.keys {
        let http = reqwest::Client::new();
        keys::load(&http, url, &keys, KEYS_WAIT)
            .await
            .context("loading token keys from the auth service")?;
        tokio::spawn(keys::refresh_loop(
            http,
            url.clone(),
            keys.clone(),
            config.keys_refresh,
            stop.clone(),
        ));
    }
    anyhow::ensure!(!keys.is_empty(), "no token keys: set GATEWAY_AUTH_URL");

    let svc::nats::Connection {
        client: nats,
        connects: reconnects,
    } = svc::nats::connect(&config.nats_url, "liaotian-gateway")
        .await
        .context("NATS_URL")?;
    let js = async_nats::jetstream::new(nats.clone());
    // A gateway may start before NATS or JetStream is ready (a fresh cluster, a rolling restart):
    // keep trying for a bounded time, then fail so the supervisor sees it.
    let (_, differences) = svc::retry::until_deadline(
        "stream CHAT",
        STARTUP_WAIT,
        svc::retry::Backoff::constant(Duration::from_secs(1)),
        || svc::nats::open_chat_stream(&js, &config.stream),
    )
    .await
    .with_context(|| format!("stream CHAT not ready within {STARTUP_WAIT:?}"))?;
    // The stream's settings have one owner, the operator's `gateway stream apply`: a gateway whose
    // own differ refuses to start rather than serve under settings it does not have.
    if !differences.is_empty() {
        anyhow::bail!(
            "stream CHAT does not have this gateway's settings ({}); start it with the stream's \
             settings, or change the stream first with `gateway stream apply` (docs/operations.md)",
            differences.join("; ")
        );
    }

    let metrics = Arc::new(metrics::Metrics::new());
    let backlog = backlog::Backlog::new(nats.clone(), metrics.clone());
    let presence = presence::Presence::ensure(
        js.clone(),
        presence::PresenceSettings {
            ttl: config.presence_ttl,
            grace: config.presence_grace,
            room_event_limit: config.presence_room_event_limit,
            room_watch: config.room_presence,
        },
        config.stream.replicas,
        metrics.clone(),
        reconnects.clone(),
    )
    .await?;
    let guard = retention::Guard::default();
    let retention_watch = tokio::spawn(retention::watch(
        js.clone(),
        config.persister_consumers.clone(),
        config.retention_check,
        guard.clone(),
        metrics.clone(),
    ));
    let publisher =
        publish::Publisher::new(js.clone(), config.publish_budget, metrics.clone(), guard);
    let groups = groups::Groups::ensure(
        &js,
        config.stream.replicas,
        publisher.clone(),
        backlog.clone(),
        groups::Limits {
            members: config.group_max_members,
            per_user: config.group_max_per_user,
        },
    )
    .await?;
    let groups_watch = groups.start_watch(reconnects.clone());
    // One reply subscription for every batched KV read of this gateway (`svc::kv`).
    let live_keys = svc::kv::LiveKeys::new(nats.clone())
        .await
        .context("subscribing the KV read replies")?;
    let mutes = mutes::Mutes::ensure(&js, config.stream.replicas, live_keys.clone()).await?;
    let mut hub = hub::Hub::new(nats.clone(), backlog.clone(), reconnects, metrics.clone());
    hub.set_departure_hook(presence.departure_hook());
    let shared_dm = hub.start_dm(config.dm_subscription);
    let user_limits = userlimit::UserLimits::new(
        nats.clone(),
        live_keys,
        userlimit::Settings {
            max_connections: config.max_conns_per_user,
            sends_per_sec: config.user_sends_per_sec,
            send_burst: config.user_send_burst,
        },
    );
    // Logout and other per-user commands: one subscription for the whole gateway, routed locally.
    let control = {
        let limits = user_limits.clone();
        hub.start_control(move |user| limits.on_recount(user))
            .await?
    };
    // Revocations and bans: read once before serving, then followed.
    let (access, access_watch) =
        access::Access::start(&js, config.stream.replicas, hub.clone()).await?;
    let state = state::AppState::new(state::AppStateInner {
        access,
        hub,
        user_limits,
        backlog,
        presence,
        groups,
        mutes,
        publisher,
        content: config.content_check.then(|| {
            content::ContentChecker::new(
                nats.clone(),
                config.content_check_timeout,
                config.content_check_fail_open,
                metrics.clone(),
            )
        }),
        keys,
        metrics,
        nats: nats.clone(),
        shutdown: stop.clone(),
        conn_limit: Arc::new(Semaphore::new(config.max_connections)),
        sessions: TaskTracker::new(),
        index_html: INDEX_HTML
            .replace("__AUTH_URL__", &config.public_auth_url)
            .into(),
        config: config.clone(),
    });
    let sessions = state.sessions.clone();
    let app = server::router(state.clone(), metrics_listener.is_none());
    let local = listener.local_addr()?;
    let serving = stop.clone().cancelled_owned();
    if let Some(m) = metrics_listener {
        tracing::info!(addr = %m.local_addr()?, "metrics listening");
        let routes = server::metrics_router(state);
        let done = stop.clone().cancelled_owned();
        tokio::spawn(async move { axum::serve(m, routes).with_graceful_shutdown(done).await });
    }
    let server = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => {
            let tls = tls::TlsListener::new(listener, tls::server_config(cert, key)?)?;
            tracing::info!(addr = %local, "gateway listening (wss)");
            tokio::spawn(async move { axum::serve(tls, app).with_graceful_shutdown(serving).await })
        }
        _ => {
            tracing::info!(addr = %local, "gateway listening (ws)");
            // Frames are small and latency matters: no Nagle delay on client sockets.
            let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                let _ = tcp.set_nodelay(true);
            });
            tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(serving)
                    .await
            })
        }
    };

    shutdown.await;
    tracing::info!(
        sessions = sessions.len(),
        "shutting down: closing sessions with 1001"
    );
    stop.cancel();
    sessions.close();
    if tokio::time::timeout(config.shutdown_grace, sessions.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            left = sessions.len(),
            "sessions still open after the grace period"
        );
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), server).await;
    control.abort();
    access_watch.abort();
    groups_watch.abort();
    retention_watch.abort();
    if let Some(shared_dm) = shared_dm {
        shared_dm.abort();
    }
    svc::final_flush(&nats).await;
    Ok(())
}
