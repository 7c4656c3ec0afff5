//! `POST /api/notify/grants {template_ids}` with the user's access token: what a client reports
//! after `wx.requestSubscribeMessage` answered `accept` for these templates. Each accepted
//! one-time subscription is one notification the server may send; the counts live in Redis
//! (`store.rs`). A template the server is not configured for is a `bad_request`.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use protocol::api::Reason;
use serde::{Deserialize, Serialize};
use svc::http::{ApiError, ok};
use token::now_secs;

use crate::state::AppState;

/// Most templates one report names: `wx.requestSubscribeMessage` asks for at most 5.
pub const MAX_TEMPLATES: usize = 5;

#[derive(Deserialize)]
pub struct GrantsBody {
    template_ids: Vec<String>,
}

/// The grants the user holds after the report, per template.
#[derive(Serialize)]
pub struct GrantsReply {
    grants: std::collections::BTreeMap<String, u64>,
}

fn bad_request(m: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, Reason::BadRequest, m)
}

pub async fn report(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<GrantsBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let result = async {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    Reason::MissingToken,
                    "send the access token as `Authorization: Bearer`",
                )
            })?;
        let claims = state
            .keys
            .verifier()
            .verify(bearer.trim(), now_secs())
            .map_err(|e| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    Reason::InvalidToken,
                    e.to_string(),
                )
            })?;
        let Json(body) = body.map_err(|e| bad_request(e.body_text()))?;
        let (Some(notify), Some(store)) = (&state.config.notify, &state.store) else {
            return Err(bad_request(
                "offline notifications are not configured on this server",
            ));
        };
        let mut ids = body.template_ids;
        ids.sort();
        ids.dedup();
        if ids.is_empty() || ids.len() > MAX_TEMPLATES {
            return Err(bad_request(format!(
                "`template_ids` names 1 to {MAX_TEMPLATES} templates"
            )));
        }
        if let Some(unknown) = ids
            .iter()
            .find(|id| !notify.templates.iter().any(|t| t.id == **id))
        {
            return Err(bad_request(format!(
                "template {unknown} is not one this server sends"
            )));
        }
        let counts = store
            .add_grants(claims.user().as_str(), &ids)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "grants: redis unavailable");
                ApiError::unavailable("the grant store is unavailable; try again")
            })?;
        Ok(GrantsReply {
            grants: ids.into_iter().zip(counts).collect(),
        })
    }
    .await;
    match result {
        Ok(r) => ok(r),
        Err(e) => e.into_response(),
    }
}
