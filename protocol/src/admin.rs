//! The server API's contract: the JSON bodies the app's own backend sends to the admin service and
//! gets back (inside the usual [`crate::api::Envelope`]). The routes are the admin crate's; their
//! OpenAPI document, served at `/openapi.json`, is generated from these types (feature `openapi`).
//!
//! Everything done through this API is done as [`crate::ids::SYSTEM_USER`]: a published message's
//! `from`, and the `from` of a group change it makes.

use serde::{Deserialize, Serialize};

use crate::group::Role;
use crate::ids::{ClientMsgId, GroupId, RoomId, UserId};

/// `POST /v1/messages`: a message from the system account to exactly one of a group, an open
/// room, or a user's direct thread with the system account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PublishRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, pattern = "^[A-Za-z0-9_-]{1,64}$", example = "order-1042"))]
    pub group: Option<GroupId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, pattern = "^[A-Za-z0-9_-]{1,64}$"))]
    pub room: Option<RoomId>,
    /// The user whose thread with `system` gets the message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, pattern = "^[A-Za-z0-9_-]{1,64}$"))]
    pub user: Option<UserId>,
    #[cfg_attr(feature = "openapi", schema(example = "your order shipped"))]
    pub text: String,
    /// Makes the call safe to repeat: the same key stores the message once and answers with its
    /// first `seq`, within the stream's duplicate window (`CHAT_DUPLICATE_WINDOW_SECS`).
    #[cfg_attr(feature = "openapi", schema(value_type = String, pattern = "^[A-Za-z0-9_-]{1,64}$", example = "ship-1042"))]
    pub idempotency_key: ClientMsgId,
}

/// Where a message was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PublishReply {
    /// Its stream sequence: its place in the conversation's order.
    pub seq: u64,
    /// Milliseconds since the Unix epoch (the first one for a repeated key).
    pub ts: u64,
}

/// `POST /v1/groups`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateGroupRequest {
    /// The group's id; a fresh one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, pattern = "^[A-Za-z0-9_-]{1,64}$"))]
    pub id: Option<GroupId>,
    pub name: String,
    /// The member who owns it.
    #[cfg_attr(feature = "openapi", schema(value_type = String, pattern = "^[A-Za-z0-9_-]{1,64}$"))]
    pub owner: UserId,
    /// Members besides the owner.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub members: Vec<UserId>,
}

/// `POST /v1/groups/{group}/members`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MembersRequest {
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub users: Vec<UserId>,
}

/// `PUT /v1/groups/{group}/members/{user}/role`. Giving `owner` passes ownership on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RoleRequest {
    #[cfg_attr(feature = "openapi", schema(example = "admin"))]
    pub role: Role,
}

/// One member of a group, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MemberView {
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub user: UserId,
    #[cfg_attr(feature = "openapi", schema(example = "member"))]
    pub role: Role,
}

/// A group after a change, or as read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GroupView {
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub group: GroupId,
    pub name: String,
    pub members: Vec<MemberView>,
    pub created_ms: u64,
}

/// `GET /v1/history`: exactly one of `room`, `group` and `dm` (two user ids, comma separated).
/// The paging rules are the history service's (`protocol::history::HistoryRequest`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
pub struct HistoryParams {
    pub room: Option<String>,
    pub group: Option<String>,
    /// `alice,bob`: the direct thread of two users.
    pub dm: Option<String>,
    /// Messages with `seq` below this (the newest of them).
    pub before: Option<u64>,
    /// Messages with `seq` above this (the oldest of them).
    pub after: Option<u64>,
    /// 1 to 100; 50 when absent.
    pub limit: Option<u32>,
}

/// A page of history: the items of the `history` frame (docs/protocol.md), in `seq` order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HistoryPage {
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<Object>))]
    pub messages: Vec<serde_json::Value>,
    /// Whether more lie beyond the page in its direction.
    pub more: bool,
}

/// `GET /v1/users/{user}/presence`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PresenceView {
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub user: UserId,
    /// Whether any connection of theirs is open on any gateway.
    pub online: bool,
    /// Milliseconds since the epoch of their latest activity, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<u64>,
}

/// What `ban`, `unban` and `revoke` answer: the user's access record after the call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AccessView {
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub user: UserId,
    pub banned: bool,
    /// Tokens issued before this time (seconds since the epoch) are refused.
    pub not_before: u64,
    /// Refresh token families revoked by this call (`revoke` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_families: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_request_reads_one_target_and_a_key() {
        let r: PublishRequest =
            serde_json::from_str(r#"{"group":"g1","text":"hi","idempotency_key":"k1"}"#).unwrap();
        assert_eq!(r.group, Some(GroupId::parse("g1").unwrap()));
        assert!(r.room.is_none() && r.user.is_none());
        // A key that is not an id is refused by the type.
        assert!(
            serde_json::from_str::<PublishRequest>(
                r#"{"room":"r","text":"x","idempotency_key":"a b"}"#
            )
            .is_err()
        );
    }
}
