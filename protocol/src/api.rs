//! The HTTP API contracts of the services: the JSON envelope every response uses, and the typed
//! replies of auth's login routes, which mini-programs, the SDK and the gateway read.
//!
//! Mini-program code checks `code === 0` before it reads `data`. Errors keep the envelope, with a
//! non-zero `code` (the HTTP status × 100) and a stable machine-readable `data.reason`. Turning an
//! envelope into an HTTP response is `svc::http`'s; this module only says what the JSON is.

use serde::{Deserialize, Serialize};

/// `{"code": 0, "message": "ok", "data": …}`, or an error's `{"code": 40100, "message": …,
/// "data": {"reason": …}}`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope<T> {
    /// 0 for success, else the HTTP status × 100.
    pub code: u32,
    pub message: String,
    pub data: T,
}

impl<T> Envelope<T> {
    /// A successful envelope around `data`.
    pub fn ok(data: T) -> Self {
        Self {
            code: 0,
            message: "ok".to_owned(),
            data,
        }
    }

    pub fn is_ok(&self) -> bool {
        self.code == 0
    }
}

/// The `data` of an error envelope.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorData {
    pub reason: Reason,
}

/// The `data.reason` of an error envelope: stable and machine-readable, for clients to act on.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The request is malformed.
    BadRequest,
    /// Dev login is off on this server.
    DevLoginDisabled,
    /// A user id is not `[A-Za-z0-9_-]{1,64}`.
    InvalidId,
    /// The refresh token is unknown, expired or revoked: log in again.
    InvalidRefreshToken,
    /// The access token is malformed, expired, or signed by a key not served.
    InvalidToken,
    /// The access token was issued before the user logged out or was revoked: log in again.
    TokenRevoked,
    /// The user is banned (`protocol::access`).
    Banned,
    /// WeChat's risk control refused the login (40226).
    LoginBlocked,
    /// No access token was sent.
    MissingToken,
    /// `/ws` was requested without a WebSocket upgrade.
    NotWebsocket,
    /// Too many attempts: wait for `Retry-After`.
    RateLimited,
    /// Refresh tokens need the session store, which is not configured.
    RefreshDisabled,
    /// A rotated refresh token was presented again: its family is revoked.
    RefreshReused,
    /// The `wx.login` code is invalid, expired or used: call `wx.login` again.
    Relogin,
    /// The gateway is shutting down: connect to another.
    ShuttingDown,
    /// The gateway is at its connection limit.
    TooManyConnections,
    /// WeChat login is not configured on this server.
    WechatLoginDisabled,
    /// The admin API's server key is missing or wrong (a client's token never works there).
    InvalidKey,
    /// The group (admin API) does not exist.
    NotFound,
    /// The change conflicts with what exists (an id already taken).
    Conflict,
    /// A fault of the server; its log has the details.
    Internal,
    /// A dependency (Redis, WeChat, NATS) cannot be reached: try again.
    Unavailable,
}

impl Reason {
    /// The reason as it is on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::BadRequest => "bad_request",
            Reason::DevLoginDisabled => "dev_login_disabled",
            Reason::InvalidId => "invalid_id",
            Reason::InvalidRefreshToken => "invalid_refresh_token",
            Reason::InvalidToken => "invalid_token",
            Reason::TokenRevoked => "token_revoked",
            Reason::Banned => "banned",
            Reason::LoginBlocked => "login_blocked",
            Reason::MissingToken => "missing_token",
            Reason::NotWebsocket => "not_websocket",
            Reason::RateLimited => "rate_limited",
            Reason::RefreshDisabled => "refresh_disabled",
            Reason::RefreshReused => "refresh_reused",
            Reason::Relogin => "relogin",
            Reason::ShuttingDown => "shutting_down",
            Reason::TooManyConnections => "too_many_connections",
            Reason::WechatLoginDisabled => "wechat_login_disabled",
            Reason::InvalidKey => "invalid_key",
            Reason::NotFound => "not_found",
            Reason::Conflict => "conflict",
            Reason::Internal => "internal",
            Reason::Unavailable => "unavailable",
        }
    }
}

/// The envelope `code` of an error with HTTP status `status`: status × 100, so never 0.
pub fn error_code(status: u16) -> u32 {
    u32::from(status) * 100
}

/// What `POST /api/login` and `POST /api/refresh` answer: an access token, and for a WeChat login or
/// a refresh, the next refresh token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenReply {
    pub user: String,
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds the access token is valid for.
    pub expires_in: u64,
    /// Absent for a dev login, which has no session to refresh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_expires_in: Option<u64>,
}

impl TokenReply {
    /// A bearer token for `user`, valid for `expires_in` seconds, without a refresh token.
    pub fn bearer(user: impl Into<String>, access_token: String, expires_in: u64) -> Self {
        Self {
            user: user.into(),
            access_token,
            token_type: "Bearer".to_owned(),
            expires_in,
            refresh_token: None,
            refresh_expires_in: None,
        }
    }

    /// The same reply with a refresh token valid for `expires_in` seconds.
    pub fn with_refresh(mut self, token: String, expires_in: u64) -> Self {
        self.refresh_token = Some(token);
        self.refresh_expires_in = Some(expires_in);
        self
    }
}

/// What `POST /api/logout` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogoutReply {
    pub user: String,
    /// Refresh-token families revoked.
    pub revoked_families: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    // Proves every reason's wire name is its serde name.
    #[test]
    fn reasons_are_named_as_on_the_wire() {
        for r in [
            Reason::BadRequest,
            Reason::DevLoginDisabled,
            Reason::InvalidId,
            Reason::InvalidRefreshToken,
            Reason::InvalidToken,
            Reason::LoginBlocked,
            Reason::MissingToken,
            Reason::NotWebsocket,
            Reason::RateLimited,
            Reason::RefreshDisabled,
            Reason::RefreshReused,
            Reason::Relogin,
            Reason::ShuttingDown,
            Reason::TooManyConnections,
            Reason::WechatLoginDisabled,
            Reason::Internal,
            Reason::Unavailable,
        ] {
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
    }

    // Proves the envelope and the replies have the field names clients read.
    #[test]
    fn wire_shapes_are_the_documented_ones() {
        let dev = TokenReply::bearer("alice", "t".into(), 900);
        assert_eq!(
            serde_json::to_value(Envelope::ok(&dev)).unwrap(),
            json!({"code": 0, "message": "ok", "data": {
                "user": "alice", "access_token": "t", "token_type": "Bearer", "expires_in": 900}})
        );
        let wx = dev.with_refresh("r".into(), 86_400);
        assert_eq!(
            serde_json::to_value(&wx).unwrap()["refresh_expires_in"],
            86_400
        );
        let err = Envelope {
            code: error_code(401),
            message: "log in again".into(),
            data: ErrorData {
                reason: Reason::Relogin,
            },
        };
        assert_eq!(
            serde_json::to_value(&err).unwrap(),
            json!({"code": 40100, "message": "log in again", "data": {"reason": "relogin"}})
        );
        let back: Envelope<ErrorData> =
            serde_json::from_value(serde_json::to_value(&err).unwrap()).unwrap();
        assert!(!back.is_ok());
        assert_eq!(back, err);
    }
}
