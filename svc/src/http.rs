//! HTTP answers in the services' JSON envelope ([`protocol::api::Envelope`]): [`ok`] for a
//! success and [`ApiError`] for an error a client can act on, as axum responses.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use protocol::api::{Envelope, ErrorData, Reason, error_code};
use serde::Serialize;

/// A successful response: `{"code": 0, "message": "ok", "data": data}`.
pub fn ok<T: Serialize>(data: T) -> Response {
    (StatusCode::OK, Json(Envelope::ok(data))).into_response()
}

/// An error a client can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    /// Stable machine-readable reason, in `data.reason`.
    pub reason: Reason,
    pub message: String,
    /// Seconds for a `Retry-After` header (429 and 503 answers).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, reason: Reason, message: impl Into<String>) -> Self {
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
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            Reason::Unavailable,
            message,
        )
        .retry_after(1)
    }

    /// 500 `internal`: a fault of ours; the details are in our log, not in the answer.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, Reason::Internal, message)
    }

    /// The envelope `code`: HTTP status × 100 (40300 for a 403), so it is never 0.
    pub fn code(&self) -> u32 {
        error_code(self.status.as_u16())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Envelope {
            code: self.code(),
            message: self.message,
            data: ErrorData {
                reason: self.reason,
            },
        };
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        resp
    }
}
