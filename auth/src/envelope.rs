//! The JSON envelope of every HTTP response: `{"code": 0, "message": "ok", "data": {...}}`.
//!
//! Mini-program code checks `code === 0` before it reads `data`. Errors keep the envelope, with a
//! non-zero `code` (the HTTP status × 100 plus a detail) and a stable machine-readable `data.reason`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};

/// A successful response.
pub fn ok<T: Serialize>(data: T) -> Response {
    let data = serde_json::to_value(data).unwrap_or(Value::Null);
    (
        StatusCode::OK,
        Json(json!({"code": 0, "message": "ok", "data": data})),
    )
        .into_response()
}

/// An error a client can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    /// Stable machine-readable reason, also in `data.reason`.
    pub reason: &'static str,
    pub message: String,
    /// Seconds for a `Retry-After` header (429 and 503 answers).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            reason,
            message: message.into(),
            retry_after: None,
        }
    }

    /// Adds a `Retry-After` header.
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// 503 `unavailable`: a dependency (Redis, WeChat, NATS) cannot be reached; try again.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message).retry_after(1)
    }

    /// The envelope `code`: HTTP status × 100 (40300 for a 403), so it is never 0.
    pub fn code(&self) -> u32 {
        u32::from(self.status.as_u16()) * 100
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body =
            json!({"code": self.code(), "message": self.message, "data": {"reason": self.reason}});
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        resp
    }
}
