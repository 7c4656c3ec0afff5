//! HTTP routes of the gateway: the WebSocket endpoint, health, metrics, and the dev web page with the
//! SDK modules it imports.

use std::time::Duration;

use axum::Router;
use axum::extract::ws::{WebSocketUpgrade, rejection::WebSocketUpgradeRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use protocol::api::Reason;
use serde::Deserialize;
use svc::http::ApiError;
use token::now_secs;

use crate::state::AppState;

/// How much larger than our frame limit tungstenite's own limit is. Frames between the two are read
/// and answered with `too_large` and 1009; tungstenite's limit only guards memory beyond that.
const TUNGSTENITE_LIMIT_FACTOR: usize = 4;
/// tungstenite's read buffer per connection, allocated up front, and the most one socket read takes.
/// Client frames are small (a `send` of a short text is 100–200 bytes); a larger frame grows the
/// buffer for itself but takes one read per 256 bytes (a 4,000-character Chinese text, 12 KB: 48),
/// a cost only large messages pay. The default, 128 KiB, would cost that much per idle socket, and
/// 1 KiB was still a sixth of the idle budget (docs/benchmarks.md).
const READ_BUFFER: usize = 256;
/// Bytes tungstenite buffers before it writes to the socket.
const WRITE_BUFFER: usize = 8 * 1024;
/// Browsers run an ES module only when it is served as JavaScript.
const JAVASCRIPT: &str = "text/javascript; charset=utf-8";

/// The public routes; `/metrics` among them unless it has a listener of its own.
pub fn router(state: AppState, with_metrics: bool) -> Router {
    let r = Router::new()
        .route("/", get(index))
        .route("/sdk/{file}", get(sdk_module))
        .route("/ws", get(ws_handler))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz));
    let r = if with_metrics {
        r.route("/metrics", get(metrics))
    } else {
        r
    };
    r.with_state(state)
}

/// The routes of `GATEWAY_METRICS_LISTEN`: `/metrics`, and health for the scraper.
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

async fn ws_handler(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<TokenQuery>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    match accept(&state, &headers, query, upgrade).await {
        Ok(resp) => resp,
        Err((reason, e)) => {
            state
                .metrics
                .connections_refused
                .with_label_values(&[reason])
                .inc();
            e.into_response()
        }
    }
}

async fn accept(
    state: &AppState,
    headers: &HeaderMap,
    query: TokenQuery,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, (&'static str, ApiError)> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let token = bearer.or(query.token.as_deref()).ok_or((
        "unauthorized",
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            Reason::MissingToken,
            "send the token as `Authorization: Bearer` or `?token=`",
        ),
    ))?;
    let claims = state.keys.verify(token, now_secs()).map_err(|e| {
        (
            "unauthorized",
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                Reason::InvalidToken,
                e.to_string(),
            ),
        )
    })?;
    if claims.from_cache() {
        state.metrics.token_cache_hits.inc();
    }
    // The server's own account sends through the admin API only, even with a token someone signed.
    if claims.user().as_str() == protocol::ids::SYSTEM_USER {
        return Err((
            "unauthorized",
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                Reason::InvalidToken,
                "`system` is the server's own account and cannot connect",
            ),
        ));
    }
    match state.access.refusal(claims.user(), claims.iat()) {
        Some(crate::access::Refusal::Banned) => {
            return Err((
                "banned",
                ApiError::new(StatusCode::FORBIDDEN, Reason::Banned, "this user is banned"),
            ));
        }
        Some(crate::access::Refusal::Revoked) => {
            return Err((
                "unauthorized",
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    Reason::TokenRevoked,
                    "the token was revoked (logout): log in again",
                ),
            ));
        }
        None => {}
    }
    let upgrade = upgrade.map_err(|e| {
        (
            "bad_request",
            ApiError::new(e.status(), Reason::NotWebsocket, e.body_text()),
        )
    })?;
    if state.shutdown.is_cancelled() {
        return Err((
            "shutting_down",
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                Reason::ShuttingDown,
                "gateway is shutting down",
            ),
        ));
    }
    let permit = state.conn_limit.clone().try_acquire_owned().map_err(|_| {
        (
            "full",
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                Reason::TooManyConnections,
                "gateway is at its connection limit",
            ),
        )
    })?;
    let user = claims.user().clone();
    let counted = state.user_limits.check(&user).await.map_err(|t| {
        (
            "user_limit",
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                Reason::TooManyConnections,
                format!(
                    "this user has {} open connections, the most allowed; close one first",
                    t.open
                ),
            )
            .retry_after(5),
        )
    })?;
    let limit = state
        .config
        .max_frame_bytes
        .saturating_mul(TUNGSTENITE_LIMIT_FACTOR);
    let state = state.clone();
    Ok(upgrade
        .protocols([protocol::SUBPROTOCOL])
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| {
            let sessions = state.sessions.clone();
            sessions.track_future(async move {
                crate::session::run(socket, user, counted, state).await;
                drop(permit);
            })
        }))
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.nats.connection_state() != async_nats::connection::State::Connected {
        return (StatusCode::SERVICE_UNAVAILABLE, "nats disconnected").into_response();
    }
    let js = async_nats::jetstream::new(state.nats.clone());
    match tokio::time::timeout(
        Duration::from_secs(2),
        js.get_stream(protocol::subject::STREAM),
    )
    .await
    {
        Ok(Ok(_)) => (StatusCode::OK, "ready").into_response(),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "stream CHAT unreachable").into_response(),
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

async fn index(State(state): State<AppState>) -> Html<String> {
    Html(state.index_html.to_string())
}

/// One of the SDK's ES modules, for the dev page's `import`s (see [`crate::sdk`]).
async fn sdk_module(Path(file): Path<String>) -> Response {
    match crate::sdk::module(&file) {
        Some(src) => ([(header::CONTENT_TYPE, JAVASCRIPT)], src).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}
