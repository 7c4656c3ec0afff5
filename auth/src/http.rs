//! The HTTP API: routes, state and handlers.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use prometheus::{Encoder, IntCounterVec, Opts, Registry, TextEncoder};
use protocol::UserId;
use serde::Deserialize;
use serde_json::json;
use tower_http::cors::CorsLayer;

use crate::envelope::{ApiError, ok};
use crate::jwks::{Jwk, JwkSet};
use crate::token::now_secs;
use crate::{Config, Signer};

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub signer: Signer,
    pub metrics: Arc<Metrics>,
}

/// Prometheus metrics of the auth service.
pub struct Metrics {
    pub registry: Registry,
    /// Login attempts by bounded `result` label.
    pub logins: IntCounterVec,
}

impl Metrics {
    fn new() -> Self {
        let registry = Registry::new();
        let logins = IntCounterVec::new(
            Opts::new(
                "auth_logins_total",
                "Login attempts by result (ok, refused, bad_request).",
            ),
            &["result"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
        registry
            .register(Box::new(logins.clone()))
            .unwrap_or_else(|e| unreachable!("{e}"));
        Self { registry, logins }
    }
}

impl AppState {
    pub fn new(config: Config) -> anyhow::Result<Self> {
        let signer = config.signer()?;
        tracing::info!(
            kid = signer.kid(),
            dev_login = config.dev_login,
            "signing key loaded"
        );
        Ok(Self {
            config: Arc::new(config),
            signer,
            metrics: Arc::new(Metrics::new()),
        })
    }
}

/// The router. Kept apart from `run` so tests can drive it directly.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/api/login", post(login))
        .route("/api/keys", get(keys))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        // Tokens travel in bodies and headers, never cookies, so any origin may call the API: this lets
        // the gateway's dev page (another port) log in.
        .layer(CorsLayer::permissive())
        .with_state(state)
}

#[derive(Deserialize)]
struct LoginBody {
    dev_user: Option<String>,
}

async fn login(
    State(state): State<AppState>,
    body: Result<Json<LoginBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    match dev_login(&state, body) {
        Ok(data) => {
            state.metrics.logins.with_label_values(&["ok"]).inc();
            ok(data)
        }
        Err(e) => {
            let label = if e.status == StatusCode::FORBIDDEN {
                "refused"
            } else {
                "bad_request"
            };
            state.metrics.logins.with_label_values(&[label]).inc();
            e.into_response()
        }
    }
}

fn dev_login(
    state: &AppState,
    body: Result<Json<LoginBody>, axum::extract::rejection::JsonRejection>,
) -> Result<serde_json::Value, ApiError> {
    let Json(body) =
        body.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text()))?;
    let name = body.dev_user.ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "expected {\"dev_user\": \"name\"}",
        )
    })?;
    if !state.config.dev_login {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "dev_login_disabled",
            "dev login is disabled on this server",
        ));
    }
    let user = UserId::parse(name)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_id", e.to_string()))?;
    let now = now_secs();
    let token = state.signer.issue(&user, now, state.config.access_ttl_secs);
    Ok(json!({
        "user": user,
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": state.config.access_ttl_secs,
    }))
}

async fn keys(State(state): State<AppState>) -> Response {
    ok(JwkSet {
        keys: vec![Jwk::ed25519(state.signer.kid(), &state.signer.public_key())],
    })
}

async fn metrics(State(state): State<AppState>) -> Response {
    let mut buf = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&state.metrics.registry.gather(), &mut buf) {
        tracing::error!(error = %e, "encoding metrics");
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], buf).into_response()
}
