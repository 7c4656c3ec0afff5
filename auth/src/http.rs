//! The HTTP API: routes and handlers.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use prometheus::{Encoder, TextEncoder};
use protocol::UserId;
use serde::Deserialize;
use serde_json::json;
use tower_http::cors::CorsLayer;

pub use crate::state::AppState;
use crate::store::{CODE_WINDOW_SECS, IP_WINDOW_SECS, Rotation, StoreError};
use protocol::api::{LogoutReply, Reason, TokenReply};
use svc::http::{ApiError, ok};
use token::now_secs;

/// Longest accepted `wx.login` code.
pub const MAX_CODE_LEN: usize = 128;

/// The router. Kept apart from `run` so tests can drive it directly.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/api/login", post(login))
        .route("/api/refresh", post(refresh))
        .route("/api/logout", post(logout))
        .route("/api/keys", get(keys))
        .route("/api/notify/grants", post(crate::notify::grants::report))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        // Tokens travel in bodies and headers, never cookies, so any origin may call the API: this lets
        // the gateway's dev page (another port) log in.
        .layer(CorsLayer::permissive())
        .with_state(state)
}

/// The client's IP: the peer address, or the first `X-Forwarded-For` entry when trusted.
pub struct ClientIp(pub Option<IpAddr>);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        if state.config.trust_forwarded_for
            && let Some(ip) = parts
                .headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(',').next())
                .and_then(|v| v.trim().parse().ok())
        {
            return Ok(Self(Some(ip)));
        }
        Ok(Self(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip()),
        ))
    }
}

#[derive(Deserialize)]
struct LoginBody {
    dev_user: Option<String>,
    code: Option<String>,
}

type JsonBody<T> = Result<Json<T>, axum::extract::rejection::JsonRejection>;

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, Reason::BadRequest, message)
}

fn store_down(e: StoreError) -> ApiError {
    tracing::warn!(error = %e, "redis unavailable");
    ApiError::unavailable("the session store is unavailable; try again")
}

async fn login(State(state): State<AppState>, ip: ClientIp, body: JsonBody<LoginBody>) -> Response {
    let result = async {
        let Json(body) = body.map_err(|e| bad_request(e.body_text()))?;
        match (body.code, body.dev_user) {
            (Some(code), _) => wechat_login(&state, ip.0, code).await,
            (None, Some(name)) => dev_login(&state, name),
            (None, None) => Err(bad_request("expected {\"code\": \"<wx.login code>\"}")),
        }
    }
    .await;
    let label = match &result {
        Ok(_) => "ok",
        Err(e) => match (e.status, e.reason) {
            (_, Reason::Relogin) => "relogin",
            (StatusCode::FORBIDDEN, _) => "refused",
            (StatusCode::TOO_MANY_REQUESTS, _) => "rate_limited",
            (StatusCode::SERVICE_UNAVAILABLE, _) => "unavailable",
            (StatusCode::INTERNAL_SERVER_ERROR, _) => "internal",
            _ => "bad_request",
        },
    };
    state.metrics.logins.with_label_values(&[label]).inc();
    match result {
        Ok(data) => ok(data),
        Err(e) => e.into_response(),
    }
}

async fn wechat_login(
    state: &AppState,
    ip: Option<IpAddr>,
    code: String,
) -> Result<TokenReply, ApiError> {
    let Some(store) = state.store.as_ref().filter(|_| state.wechat.is_some()) else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            Reason::WechatLoginDisabled,
            "WeChat login is not configured on this server",
        ));
    };
    if code.is_empty() || code.len() > MAX_CODE_LEN || !code.chars().all(|c| c.is_ascii_graphic()) {
        return Err(bad_request("`code` must be the code of wx.login"));
    }
    let limited = |secs| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            Reason::RateLimited,
            "too many login attempts; try again later",
        )
        .retry_after(secs)
    };
    if let Some(ip) = ip {
        let key = format!("auth:rl:ip:{ip}");
        store
            .hit(&key, state.config.login_per_ip_per_min, IP_WINDOW_SECS)
            .await
            .map_err(store_down)?
            .map_err(limited)?;
    }
    let key = format!("auth:rl:code:{}", crate::store::hash(&code));
    store
        .hit(&key, state.config.login_per_code, CODE_WINDOW_SECS)
        .await
        .map_err(store_down)?
        .map_err(limited)?;
    let work = crate::login::exchange(state.clone(), code.clone());
    state.exchanges.run(&code, work).await
}

fn dev_login(state: &AppState, name: String) -> Result<TokenReply, ApiError> {
    if !state.config.dev_login {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            Reason::DevLoginDisabled,
            "dev login is disabled on this server",
        ));
    }
    let user = UserId::parse(name)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, Reason::InvalidId, e.to_string()))?;
    if user.is_system() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            Reason::InvalidId,
            "`system` is the server's own account; no one logs in as it",
        ));
    }
    let now = now_secs();
    let token = state
        .keys
        .signer()
        .issue(&user, now, state.config.access_ttl_secs);
    Ok(TokenReply::bearer(
        user.to_string(),
        token,
        state.config.access_ttl_secs,
    ))
}

#[derive(Deserialize)]
struct RefreshBody {
    refresh_token: Option<String>,
}

fn no_refresh() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        Reason::RefreshDisabled,
        "refresh tokens need the session store (AUTH_REDIS_URL)",
    )
}

async fn refresh(State(state): State<AppState>, body: JsonBody<RefreshBody>) -> Response {
    let result = async {
        let Json(body) = body.map_err(|e| bad_request(e.body_text()))?;
        let token = body
            .refresh_token
            .filter(|t| !t.is_empty() && t.len() <= 256)
            .ok_or_else(|| bad_request("expected {\"refresh_token\": \"...\"}"))?;
        let store = state.store.as_ref().ok_or_else(no_refresh)?;
        match store.rotate(&token).await.map_err(store_down)? {
            Rotation::Rotated { user, token } => {
                let uid = UserId::parse(user.clone()).map_err(|_| {
                    ApiError::new(StatusCode::UNAUTHORIZED, Reason::InvalidRefreshToken, "unknown user")
                })?;
                let ttl = state.config.access_ttl_secs;
                let access = state.keys.signer().issue(&uid, now_secs(), ttl);
                Ok(TokenReply::bearer(user, access, ttl)
                    .with_refresh(token, state.config.refresh_ttl_secs))
            }
            Rotation::Reused { user } => {
                tracing::warn!(%user, "a rotated refresh token was presented again: its family is revoked");
                Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    Reason::RefreshReused,
                    "this refresh token was already used; log in again",
                ))
            }
            Rotation::Invalid => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                Reason::InvalidRefreshToken,
                "the refresh token is unknown, expired or revoked; log in again",
            )),
        }
    }
    .await;
    let label = match &result {
        Ok(_) => "ok",
        Err(e) if e.reason == Reason::RefreshReused => "reused",
        Err(e) if e.status == StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        Err(_) => "invalid",
    };
    state.metrics.refreshes.with_label_values(&[label]).inc();
    match result {
        Ok(data) => ok(data),
        Err(e) => e.into_response(),
    }
}

/// `POST /api/logout` with `Authorization: Bearer <access token>` or `{"refresh_token"}`: revokes every
/// refresh token family of the user and closes the user's sockets on every gateway.
async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Option<Json<RefreshBody>>,
) -> Response {
    let result = async {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            });
        let user = match (bearer, body.and_then(|Json(b)| b.refresh_token)) {
            (Some(token), _) => state
                .keys
                .verifier()
                .verify(token.trim(), now_secs())
                .map_err(|e| {
                    ApiError::new(
                        StatusCode::UNAUTHORIZED,
                        Reason::InvalidToken,
                        e.to_string(),
                    )
                })?
                .user()
                .to_string(),
            (None, Some(rt)) => {
                let store = state.store.as_ref().ok_or_else(no_refresh)?;
                store
                    .user_of_token(&rt)
                    .await
                    .map_err(store_down)?
                    .ok_or_else(|| {
                        ApiError::new(
                            StatusCode::UNAUTHORIZED,
                            Reason::InvalidRefreshToken,
                            "unknown refresh token",
                        )
                    })?
            }
            (None, None) => {
                return Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    Reason::MissingToken,
                    "send the access token as `Authorization: Bearer` or {\"refresh_token\"}",
                ));
            }
        };
        let revoked = match &state.store {
            Some(store) => store.revoke_user(&user).await.map_err(store_down)?,
            None => 0,
        };
        let uid = UserId::parse(user.clone()).map_err(|_| {
            ApiError::new(StatusCode::UNAUTHORIZED, Reason::InvalidToken, "bad user")
        })?;
        match &state.nats {
            Some(nats) => {
                // First the revocation, so the access token stops working at the next handshake on
                // every gateway; then the command that closes the sockets open now.
                crate::access::revoke(nats, &uid, state.config.access_ttl_secs)
                    .await
                    .map_err(|e| {
                        tracing::warn!(error = %e, "logout: writing the revocation failed");
                        ApiError::unavailable("the token could not be revoked; try again")
                    })?;
                crate::access::close_sockets(nats, &uid)
                    .await
                    .map_err(|e| {
                        tracing::warn!(error = %e, "logout: closing the sockets failed");
                        ApiError::unavailable("sockets could not be closed; try again")
                    })?;
            }
            None => tracing::warn!("logout without AUTH_NATS_URL: open sockets stay open"),
        }
        tracing::info!(%user, revoked, "logout");
        Ok(LogoutReply {
            user: user.to_string(),
            revoked_families: u64::try_from(revoked).unwrap_or(u64::MAX),
        })
    }
    .await;
    match result {
        Ok(data) => ok(data),
        Err(e) => e.into_response(),
    }
}

async fn keys(State(state): State<AppState>) -> Response {
    ok(state.keys.jwks())
}

/// Ready when Redis answers `PING` and NATS is connected (each only when configured).
async fn readyz(State(state): State<AppState>) -> Response {
    let redis = match &state.store {
        None => "off",
        Some(s) => match s.ping().await {
            Ok(()) => "ok",
            Err(_) => "down",
        },
    };
    let nats = match &state.nats {
        None => "off",
        Some(n) => match n.connection_state() {
            async_nats::connection::State::Connected => "ok",
            _ => "down",
        },
    };
    let status = if redis == "down" || nats == "down" {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (status, Json(json!({"redis": redis, "nats": nats}))).into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    let mut buf = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&state.metrics.registry.gather(), &mut buf) {
        tracing::error!(error = %e, "encoding metrics");
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], buf).into_response()
}
