//! The `/v1` routes: what the app's backend may do, each as the system account.
//!
//! Every answer is the services' JSON envelope. Malformed input (a bad id, a body that is not the
//! schema) is a 400 `bad_request` or `invalid_id`; a group that does not exist is a 404; a missing
//! dependency is a 503 with `Retry-After`. No input gets a 500.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router, routing};
use gateway::groups::GroupError;
use gateway::presence::WatchKey;
use protocol::admin::{
    AccessView, CreateGroupRequest, GroupView, HistoryPage, HistoryParams, MemberView,
    MembersRequest, PublishReply, PublishRequest, RoleRequest,
};
use protocol::api::{Envelope, ErrorData, Reason};
use protocol::group::{Change, Record, RuleError};
use protocol::history::{ConvRef, DEFAULT_LIMIT, HistoryRequest, MAX_LIMIT};
use protocol::subject::Conversation;
use protocol::{GroupId, RoomId, StoredMessage, Target, UserId};
use svc::http::{ApiError, ok};

use crate::state::AppState;

type Body<T> = Result<Json<T>, JsonRejection>;

/// The `/v1` routes (the server key is checked in front of them by `lib`).
pub fn v1() -> Router<AppState> {
    Router::new()
        .route("/v1/messages", routing::post(publish))
        .route("/v1/groups", routing::post(create_group))
        .route("/v1/groups/{group}", routing::get(get_group))
        .route("/v1/groups/{group}/members", routing::post(add_members))
        .route(
            "/v1/groups/{group}/members/{user}",
            routing::delete(remove_member),
        )
        .route(
            "/v1/groups/{group}/members/{user}/role",
            routing::put(set_role),
        )
        .route("/v1/history", routing::get(history))
        .route("/v1/users/{user}/presence", routing::get(presence))
        .route("/v1/users/{user}/ban", routing::post(ban))
        .route("/v1/users/{user}/unban", routing::post(unban))
        .route("/v1/users/{user}/revoke", routing::post(revoke))
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, Reason::BadRequest, message)
}

fn body<T>(b: Body<T>) -> Result<T, ApiError> {
    b.map(|Json(t)| t).map_err(|e| bad_request(e.body_text()))
}

fn user_id(s: String) -> Result<UserId, ApiError> {
    let user = UserId::parse(s)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, Reason::InvalidId, e.to_string()))?;
    if user.is_system() {
        return Err(bad_request("`system` is the server's own account"));
    }
    Ok(user)
}

fn group_id(s: String) -> Result<GroupId, ApiError> {
    GroupId::parse(s)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, Reason::InvalidId, e.to_string()))
}

fn not_found(group: &GroupId) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        Reason::NotFound,
        format!("no group {group}"),
    )
}

/// A group change refused or failed: a rule is a 400 (a group that does not exist, 404), a
/// conflict a 409, a dependency a 503.
fn group_error(group: Option<&GroupId>, e: GroupError) -> ApiError {
    match e {
        GroupError::Rule(RuleError::NotMember) => match group {
            Some(g) => not_found(g),
            None => bad_request("not a member"),
        },
        GroupError::Rule(r) => bad_request(r.to_string()),
        GroupError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, Reason::Conflict, m),
        GroupError::Unavailable(m) => {
            tracing::warn!(error = %m, "admin API: groups unavailable");
            ApiError::unavailable(m)
        }
    }
}

fn answer<T: serde::Serialize>(r: Result<T, ApiError>) -> Response {
    match r {
        Ok(t) => ok(t),
        Err(e) => e.into_response(),
    }
}

fn view(group: GroupId, r: &Record) -> GroupView {
    GroupView {
        group,
        name: r.name.clone(),
        members: r
            .members
            .iter()
            .map(|m| MemberView {
                user: m.user.clone(),
                role: m.role,
            })
            .collect(),
        created_ms: r.created_ms,
    }
}

/// Publish a message from the system account.
///
/// It is stored and sequenced in the conversation like a member's message, then delivered to
/// every connection there; the content check does not apply (the caller is trusted).
#[utoipa::path(post, path = "/v1/messages", request_body = PublishRequest, tag = "messages",
    responses(
        (status = 200, description = "stored", body = Envelope<PublishReply>),
        (status = 400, description = "malformed, or not exactly one target", body = Envelope<ErrorData>),
        (status = 401, description = "no server key", body = Envelope<ErrorData>),
        (status = 404, description = "no such group", body = Envelope<ErrorData>),
        (status = 503, description = "the stream is unavailable or full; repeat with the same idempotency_key", body = Envelope<ErrorData>),
    ))]
pub async fn publish(State(state): State<AppState>, b: Body<PublishRequest>) -> Response {
    answer(
        async {
            let req = body(b)?;
            let target = match (req.group, req.room, req.user) {
                (Some(g), None, None) => Target::Group(g),
                (None, Some(r), None) => Target::Room(r),
                (None, None, Some(u)) => Target::User(user_id(u.to_string())?),
                _ => {
                    return Err(bad_request(
                        "name exactly one of `group`, `room` and `user`",
                    ));
                }
            };
            let max = state.config.gateway.max_text_chars;
            if req.text.trim().is_empty() {
                return Err(bad_request("`text` must not be empty"));
            }
            if req.text.chars().count() > max {
                return Err(bad_request(format!(
                    "`text` is longer than {max} characters"
                )));
            }
            let conv = match &target {
                Target::Group(g) => {
                    if state
                        .groups
                        .record(g)
                        .await
                        .map_err(|e| group_error(Some(g), e))?
                        .is_none()
                    {
                        return Err(not_found(g));
                    }
                    Conversation::Group(g.clone())
                }
                Target::Room(r) => {
                    if state
                        .groups
                        .exists(r)
                        .await
                        .map_err(|e| group_error(None, e))?
                    {
                        return Err(bad_request(format!("{r} is a group; send with `group`")));
                    }
                    Conversation::Room(r.clone())
                }
                Target::User(u) => Conversation::dm(UserId::system(), u.clone())
                    .ok_or_else(|| bad_request("not a thread"))?,
            };
            let msg: StoredMessage = gateway::publish::stored_message(
                UserId::system(),
                &target,
                req.text,
                req.idempotency_key,
            );
            let stored = state.publisher.publish(&conv, &msg).await.map_err(|e| {
                tracing::warn!(error = %e, "admin API: publish failed");
                ApiError::unavailable(e.to_string())
            })?;
            state.metrics.published.inc();
            Ok(PublishReply {
                seq: stored.seq,
                ts: stored.ts,
            })
        }
        .await,
    )
}

/// Create a group, owned by a member the caller names.
#[utoipa::path(post, path = "/v1/groups", request_body = CreateGroupRequest, tag = "groups",
    responses(
        (status = 200, description = "created; its `created` event is stored from `system`", body = Envelope<GroupView>),
        (status = 400, description = "malformed, a bad name, too many members", body = Envelope<ErrorData>),
        (status = 401, description = "no server key", body = Envelope<ErrorData>),
        (status = 409, description = "the id is taken by a group or an open room", body = Envelope<ErrorData>),
        (status = 503, description = "unavailable", body = Envelope<ErrorData>),
    ))]
pub async fn create_group(State(state): State<AppState>, b: Body<CreateGroupRequest>) -> Response {
    answer(
        async {
            let req = body(b)?;
            let owner = user_id(req.owner.to_string())?;
            if req.members.iter().any(UserId::is_system) {
                return Err(bad_request("`system` cannot be a member"));
            }
            let (id, record) = state
                .groups
                .create_for(&UserId::system(), owner, req.id, req.name, req.members)
                .await
                .map_err(|e| group_error(None, e))?;
            Ok(view(id, &record))
        }
        .await,
    )
}

/// Read a group's members and roles.
#[utoipa::path(get, path = "/v1/groups/{group}", tag = "groups",
    params(("group" = String, Path, description = "the group id", pattern = "^[A-Za-z0-9_-]{1,64}$")),
    responses(
        (status = 200, description = "the group", body = Envelope<GroupView>),
        (status = 400, description = "a bad id", body = Envelope<ErrorData>),
        (status = 401, description = "no server key", body = Envelope<ErrorData>),
        (status = 404, description = "no such group", body = Envelope<ErrorData>),
        (status = 503, description = "unavailable", body = Envelope<ErrorData>),
    ))]
pub async fn get_group(State(state): State<AppState>, Path(group): Path<String>) -> Response {
    answer(
        async {
            let g = group_id(group)?;
            match state
                .groups
                .record(&g)
                .await
                .map_err(|e| group_error(Some(&g), e))?
            {
                Some(r) => Ok(view(g, &r)),
                None => Err(not_found(&g)),
            }
        }
        .await,
    )
}

async fn change(state: &AppState, group: String, change: Change) -> Result<GroupView, ApiError> {
    let g = group_id(group)?;
    let record = state
        .groups
        .change(&g, &UserId::system(), change)
        .await
        .map_err(|e| group_error(Some(&g), e))?;
    Ok(view(g, &record))
}

/// Add members to a group.
#[utoipa::path(post, path = "/v1/groups/{group}/members", request_body = MembersRequest, tag = "groups",
    params(("group" = String, Path, description = "the group id", pattern = "^[A-Za-z0-9_-]{1,64}$")),
    responses(
        (status = 200, description = "added; an `added` event is stored", body = Envelope<GroupView>),
        (status = 400, description = "malformed, all already members, or too many", body = Envelope<ErrorData>),
        (status = 401, description = "no server key", body = Envelope<ErrorData>),
        (status = 404, description = "no such group", body = Envelope<ErrorData>),
        (status = 503, description = "unavailable", body = Envelope<ErrorData>),
    ))]
pub async fn add_members(
    State(state): State<AppState>,
    Path(group): Path<String>,
    b: Body<MembersRequest>,
) -> Response {
    answer(
        async {
            let req = body(b)?;
            if req.users.iter().any(UserId::is_system) {
                return Err(bad_request("`system` cannot be a member"));
            }
            if req.users.len() > protocol::group::MAX_USERS_PER_FRAME {
                return Err(bad_request("too many users in one call"));
            }
            change(&state, group, Change::Add(req.users)).await
        }
        .await,
    )
}

/// Remove a member (not the owner: pass ownership on first).
#[utoipa::path(delete, path = "/v1/groups/{group}/members/{user}", tag = "groups",
    params(("group" = String, Path, description = "the group id", pattern = "^[A-Za-z0-9_-]{1,64}$"), ("user" = String, Path, description = "the member", pattern = "^[A-Za-z0-9_-]{1,64}$")),
    responses(
        (status = 200, description = "removed; a `removed` event is stored", body = Envelope<GroupView>),
        (status = 400, description = "a bad id, not a member, or the owner", body = Envelope<ErrorData>),
        (status = 401, description = "no server key", body = Envelope<ErrorData>),
        (status = 404, description = "no such group", body = Envelope<ErrorData>),
        (status = 503, description = "unavailable", body = Envelope<ErrorData>),
    ))]
pub async fn remove_member(
    State(state): State<AppState>,
    Path((group, user)): Path<(String, String)>,
) -> Response {
    answer(
        async {
            let user = user_id(user)?;
            change(&state, group, Change::Remove(vec![user])).await
        }
        .await,
    )
}

/// Set a member's role; `owner` passes ownership on (the old owner becomes an admin).
#[utoipa::path(put, path = "/v1/groups/{group}/members/{user}/role", request_body = RoleRequest, tag = "groups",
    params(("group" = String, Path, description = "the group id", pattern = "^[A-Za-z0-9_-]{1,64}$"), ("user" = String, Path, description = "the member", pattern = "^[A-Za-z0-9_-]{1,64}$")),
    responses(
        (status = 200, description = "changed; a `role` event is stored", body = Envelope<GroupView>),
        (status = 400, description = "malformed, not a member, the role it has", body = Envelope<ErrorData>),
        (status = 401, description = "no server key", body = Envelope<ErrorData>),
        (status = 404, description = "no such group", body = Envelope<ErrorData>),
        (status = 503, description = "unavailable", body = Envelope<ErrorData>),
    ))]
pub async fn set_role(
    State(state): State<AppState>,
    Path((group, user)): Path<(String, String)>,
    b: Body<RoleRequest>,
) -> Response {
    answer(
        async {
            let req = body(b)?;
            let user = user_id(user)?;
            change(
                &state,
                group,
                Change::Role {
                    user,
                    role: req.role,
                },
            )
            .await
        }
        .await,
    )
}

/// Read a page of a conversation's history: a room, a group or a direct thread.
#[utoipa::path(get, path = "/v1/history", params(HistoryParams), tag = "history",
    responses(
        (status = 200, description = "a page, in seq order", body = Envelope<HistoryPage>),
        (status = 400, description = "not exactly one conversation, a bad id, a bad limit", body = Envelope<ErrorData>),
        (status = 401, description = "no server key", body = Envelope<ErrorData>),
        (status = 503, description = "the history service is unavailable", body = Envelope<ErrorData>),
    ))]
pub async fn history(
    State(state): State<AppState>,
    q: Result<Query<HistoryParams>, QueryRejection>,
) -> Response {
    answer(
        async {
            let Query(q) = q.map_err(|e| bad_request(e.body_text()))?;
            let invalid = |e: protocol::IdError| {
                ApiError::new(StatusCode::BAD_REQUEST, Reason::InvalidId, e.to_string())
            };
            let conv = match (q.room, q.group, q.dm) {
                (Some(r), None, None) => ConvRef::Room(RoomId::parse(r).map_err(invalid)?),
                (None, Some(g), None) => ConvRef::Group(GroupId::parse(g).map_err(invalid)?),
                (None, None, Some(pair)) => {
                    let (a, b) = pair
                        .split_once(',')
                        .ok_or_else(|| bad_request("`dm` is two user ids: alice,bob"))?;
                    let a = UserId::parse(a.trim()).map_err(invalid)?;
                    let b = UserId::parse(b.trim()).map_err(invalid)?;
                    if a == b {
                        return Err(bad_request("a thread is between two users"));
                    }
                    if a < b {
                        ConvRef::Dm(a, b)
                    } else {
                        ConvRef::Dm(b, a)
                    }
                }
                _ => return Err(bad_request("name exactly one of `room`, `group` and `dm`")),
            };
            let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
            if !(1..=MAX_LIMIT).contains(&limit) {
                return Err(bad_request(format!("`limit` must be 1 to {MAX_LIMIT}")));
            }
            let req = HistoryRequest {
                conv,
                before: q.before,
                after: q.after,
                limit,
            };
            match state.backlog.history(&req).await {
                Ok((items, more)) => Ok(HistoryPage {
                    messages: items
                        .iter()
                        .filter_map(|i| serde_json::to_value(i).ok())
                        .collect(),
                    more,
                }),
                Err(gateway::backlog::BacklogError::Refused(m)) => Err(bad_request(m)),
                Err(e) => {
                    tracing::warn!(error = %e, "admin API: history unavailable");
                    Err(ApiError::unavailable(e.to_string()))
                }
            }
        }
        .await,
    )
}

/// Read a user's presence across every gateway.
#[utoipa::path(get, path = "/v1/users/{user}/presence", tag = "users",
    params(("user" = String, Path, description = "the user", pattern = "^[A-Za-z0-9_-]{1,64}$")),
    responses(
        (status = 200, description = "online or not, and when last seen", body = Envelope<protocol::admin::PresenceView>),
        (status = 400, description = "a bad id", body = Envelope<ErrorData>),
        (status = 401, description = "no server key", body = Envelope<ErrorData>),
        (status = 503, description = "the presence bucket is unavailable", body = Envelope<ErrorData>),
    ))]
pub async fn presence(State(state): State<AppState>, Path(user): Path<String>) -> Response {
    answer(
        async {
            let user = user_id(user)?;
            let entries = state
                .presence
                .query(WatchKey::User(user.clone()))
                .await
                .map_err(|e| {
                    tracing::warn!(error = %e, "admin API: presence unavailable");
                    ApiError::unavailable(e.to_string())
                })?;
            let entry = entries.into_iter().find(|e| e.user == user);
            Ok(protocol::admin::PresenceView {
                user,
                online: entry.as_ref().is_some_and(|e| e.online),
                last_seen: entry.and_then(|e| e.last_seen),
            })
        }
        .await,
    )
}

fn access_down(e: auth::access::AccessError) -> ApiError {
    tracing::warn!(error = %e, "admin API: the access bucket is unavailable");
    ApiError::unavailable(e.to_string())
}

/// Ban a user: every gateway closes their sockets with 4003 within a second, and refuses their
/// handshakes until unbanned.
#[utoipa::path(post, path = "/v1/users/{user}/ban", tag = "users",
    params(("user" = String, Path, description = "the user", pattern = "^[A-Za-z0-9_-]{1,64}$")),
    responses(
        (status = 200, description = "banned", body = Envelope<AccessView>),
        (status = 400, description = "a bad id", body = Envelope<ErrorData>),
        (status = 401, description = "no server key", body = Envelope<ErrorData>),
        (status = 503, description = "the access bucket is unavailable; repeat", body = Envelope<ErrorData>),
    ))]
pub async fn ban(State(state): State<AppState>, Path(user): Path<String>) -> Response {
    answer(set_banned(&state, user, true).await)
}

/// Unban a user. Tokens revoked before stay refused.
#[utoipa::path(post, path = "/v1/users/{user}/unban", tag = "users",
    params(("user" = String, Path, description = "the user", pattern = "^[A-Za-z0-9_-]{1,64}$")),
    responses(
        (status = 200, description = "unbanned", body = Envelope<AccessView>),
        (status = 400, description = "a bad id", body = Envelope<ErrorData>),
        (status = 401, description = "no server key", body = Envelope<ErrorData>),
        (status = 503, description = "the access bucket is unavailable; repeat", body = Envelope<ErrorData>),
    ))]
pub async fn unban(State(state): State<AppState>, Path(user): Path<String>) -> Response {
    answer(set_banned(&state, user, false).await)
}

async fn set_banned(state: &AppState, user: String, banned: bool) -> Result<AccessView, ApiError> {
    let user = user_id(user)?;
    let r = auth::access::set_banned(&state.nats, &user, banned, state.config.access_ttl_secs)
        .await
        .map_err(access_down)?;
    tracing::info!(%user, banned, "admin API: access changed");
    Ok(AccessView {
        user,
        banned: r.banned,
        not_before: r.not_before,
        revoked_families: None,
    })
}

/// Revoke a user's tokens: access tokens issued before now are refused at every gateway's next
/// handshake, refresh tokens are revoked, and open sockets are closed with 4001 (`logout`).
#[utoipa::path(post, path = "/v1/users/{user}/revoke", tag = "users",
    params(("user" = String, Path, description = "the user", pattern = "^[A-Za-z0-9_-]{1,64}$")),
    responses(
        (status = 200, description = "revoked", body = Envelope<AccessView>),
        (status = 400, description = "a bad id", body = Envelope<ErrorData>),
        (status = 401, description = "no server key", body = Envelope<ErrorData>),
        (status = 503, description = "Redis or the access bucket is unavailable; repeat", body = Envelope<ErrorData>),
    ))]
pub async fn revoke(State(state): State<AppState>, Path(user): Path<String>) -> Response {
    answer(
        async {
            let user = user_id(user)?;
            let families = match &state.store {
                Some(store) => Some(store.revoke_user(user.as_str()).await.map_err(|e| {
                    tracing::warn!(error = %e, "admin API: redis unavailable");
                    ApiError::unavailable("the session store is unavailable; repeat")
                })?),
                None => None,
            };
            let r = auth::access::revoke(&state.nats, &user, state.config.access_ttl_secs)
                .await
                .map_err(access_down)?;
            auth::access::close_sockets(&state.nats, &user)
                .await
                .map_err(access_down)?;
            tracing::info!(%user, ?families, "admin API: tokens revoked");
            Ok(AccessView {
                user,
                banned: r.banned,
                not_before: r.not_before,
                revoked_families: families.map(|n| u64::try_from(n).unwrap_or(u64::MAX)),
            })
        }
        .await,
    )
}
