//! The server key check in front of every `/v1` route: `Authorization: Bearer <key>` with one of
//! `ADMIN_KEYS`. A client's access token is never a server key, so it is refused like any wrong
//! key. Keys are compared as SHA-256 digests with a comparison that does not stop at the first
//! difference, so the time an answer takes says nothing about how much of a key was right.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use protocol::api::Reason;
use sha2::{Digest, Sha256};
use svc::http::ApiError;

/// The digests of the accepted keys.
#[derive(Clone)]
pub struct ServerKeys(Arc<Vec<[u8; 32]>>);

impl ServerKeys {
    pub fn new<'a>(keys: impl IntoIterator<Item = &'a str>) -> Self {
        Self(Arc::new(keys.into_iter().map(digest).collect()))
    }

    /// Whether `candidate` is one of the keys. Every key is compared in full.
    pub fn accepts(&self, candidate: &str) -> bool {
        let d = digest(candidate);
        self.0.iter().fold(false, |found, k| found | same(k, &d))
    }
}

fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The middleware: refuses a request without an accepted key with 401.
pub async fn require(State(keys): State<ServerKeys>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    match presented {
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            Reason::MissingToken,
            "send a server key as `Authorization: Bearer <key>`",
        )
        .into_response(),
        Some(k) if keys.accepts(k) => next.run(req).await,
        Some(_) => {
            tracing::warn!("admin API: a request with a wrong server key was refused");
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                Reason::InvalidKey,
                "that is not a server key of this deployment",
            )
            .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_a_configured_key() {
        let keys = ServerKeys::new(["a".repeat(32).as_str(), "b".repeat(32).as_str()]);
        assert!(keys.accepts(&"a".repeat(32)));
        assert!(keys.accepts(&"b".repeat(32)));
        assert!(!keys.accepts(&"a".repeat(31)));
        assert!(!keys.accepts(""));
    }
}
