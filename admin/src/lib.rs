//! The liaotian admin service: the server API the app's own backend calls.
//!
//! It publishes system messages, manages groups, reads history and presence, and bans, unbans and
//! revokes users, each as the reserved `system` account, behind a server key on its own listener
//! (`ADMIN_LISTEN`), apart from the public ports. It links the gateway library for groups,
//! publishing, presence and history, so a change made here follows the same steps as a member's,
//! and auth's for the access bucket and the refresh-token store. It is its own process so that the
//! gateway holds no secret and no database, and auth, which holds the WeChat secret, takes no
//! server key. With `WEBHOOK_URL` set it also runs the webhook relay ([`webhook`]), which sends
//! events out to the app backend. See `docs/operations.md`, "Admin API" and "Webhooks".
//!
//! Map: [`routes`] (the `/v1` handlers), [`key`] (the server key check), [`doc`] (the OpenAPI
//! document), [`webhook`] (events out), [`config`], [`state`], [`metrics`].

pub mod config;
pub mod doc;
pub mod key;
pub mod metrics;
pub mod routes;
pub mod state;
pub mod webhook;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus::{Encoder, TextEncoder};
use tokio::net::TcpListener;

pub use config::Config;
pub use state::AppState;

/// Connects to NATS and opens what the routes use. The buckets are created when absent, so the
/// admin service may start before any gateway.
pub async fn start(config: Config) -> anyhow::Result<AppState> {
    // The webhook relay's HTTPS client needs the process-wide crypto provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let gw = &config.gateway;
    let svc::nats::Connection {
        client: nats,
        connects,
    } = svc::nats::connect(&gw.nats_url, "liaotian-admin")
        .await
        .context("NATS_URL")?;
    let js = async_nats::jetstream::new(nats.clone());
    // The gateway library's parts keep their metrics in the gateway's registry; this service
    // serves only its own (`metrics`).
    let gw_metrics = Arc::new(gateway::metrics::Metrics::new());
    let guard = gateway::retention::Guard::default();
    tokio::spawn(gateway::retention::watch(
        js.clone(),
        gw.persister_consumers.clone(),
        gw.retention_check,
        guard.clone(),
        gw_metrics.clone(),
    ));
    let publisher =
        gateway::publish::Publisher::new(js.clone(), gw.publish_budget, gw_metrics.clone(), guard);
    let backlog = gateway::backlog::Backlog::new(nats.clone(), gw_metrics.clone());
    let replicas = gw.stream.replicas;
    let groups = gateway::groups::Groups::ensure(
        &js,
        replicas,
        publisher.clone(),
        backlog.clone(),
        gateway::groups::Limits {
            members: gw.group_max_members,
            per_user: gw.group_max_per_user,
        },
    )
    .await?;
    let presence = gateway::presence::Presence::ensure(
        js.clone(),
        gateway::presence::PresenceSettings {
            ttl: gw.presence_ttl,
            grace: gw.presence_grace,
            room_event_limit: gw.presence_room_event_limit,
            // It watches no room: per-room mode starts no shared feed.
            room_watch: gateway::presence::RoomPresenceWatch::PerRoom,
        },
        replicas,
        gw_metrics,
        connects,
    )
    .await?;
    gateway::access::ensure_bucket(&js, replicas).await?;
    let store = config
        .redis_url
        .as_ref()
        .map(|u| {
            auth::store::Store::new(
                &u.0,
                auth::config::DEFAULT_REFRESH_TTL_SECS,
                auth::config::DEFAULT_SESSION_KEY_TTL_SECS,
            )
        })
        .transpose()?;
    let metrics = Arc::new(metrics::Metrics::new());
    if let Some(settings) = config.webhook.clone() {
        let relay = webhook::relay::Relay::new(settings, nats.clone(), metrics.clone())?;
        tokio::spawn(async move {
            if let Err(e) = relay.run().await {
                tracing::error!(error = %format!("{e:#}"), "webhook relay stopped");
            }
        });
    }
    Ok(AppState::new(state::Inner {
        config,
        nats,
        groups,
        publisher,
        backlog,
        presence,
        store,
        metrics,
    }))
}

/// The router: `/v1` behind the server key; `/openapi.json`, `/healthz`, `/readyz` and
/// `/metrics` open (the listener is private).
pub fn app(state: AppState) -> Router {
    let keys = key::ServerKeys::new(state.config.keys.iter().map(|k| k.0.as_str()));
    let v1 = routes::v1().layer(middleware::from_fn_with_state(keys, key::require));
    Router::new()
        .merge(v1)
        .route("/openapi.json", get(|| async { Json(doc::json()) }))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(state.clone(), count))
        .with_state(state)
}

/// Counts each request by route template and status.
async fn count(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let resp = next.run(req).await;
    state
        .metrics
        .requests
        .with_label_values(&[route.as_str(), resp.status().as_str()])
        .inc();
    resp
}

async fn readyz(State(state): State<AppState>) -> Response {
    let nats = matches!(
        state.nats.connection_state(),
        async_nats::connection::State::Connected
    );
    let status = if nats {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(serde_json::json!({"nats": if nats { "ok" } else { "down" }})),
    )
        .into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    let mut buf = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&state.metrics.registry.gather(), &mut buf) {
        tracing::error!(error = %e, "encoding metrics");
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], buf).into_response()
}

/// Serves `state` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let nats = state.nats.clone();
    tracing::info!(addr = %listener.local_addr()?, "admin API listening");
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .await?;
    svc::final_flush(&nats).await;
    Ok(())
}
