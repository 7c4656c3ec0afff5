//! Service-to-service contracts over NATS besides history: user control commands and the content
//! check. JSON, so operators can read and send them with the `nats` CLI.

use serde::{Deserialize, Serialize};

use crate::ids::UserId;

/// A command for every session of one user, published on `chat.ctl.user.<user>`
/// ([`crate::subject::user_control_subject`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum UserControl {
    /// The user logged out or was revoked: every gateway closes the user's sockets with 4001.
    Logout,
    /// The user's connections changed on some gateway while they span several: each gateway with
    /// a connection of theirs counts them again, for its share of the user's send rate.
    Recount,
    /// Pushes `frame`, a server frame's JSON (`read_state`, `receipt`), to every connection of the
    /// user but `except`, the one that caused it.
    Deliver {
        frame: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        except: Option<crate::ids::ConnId>,
    },
}

/// Subject of the content-check service, served by auth (where the WeChat credentials are).
pub const CONTENT_CHECK_SUBJECT: &str = "chat.svc.content_check";
/// Queue group of the content-check service.
pub const CONTENT_CHECK_QUEUE: &str = "content_check";

/// Asks whether `text` by `user` may be published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentCheckRequest {
    pub user: UserId,
    pub text: String,
}

/// What the gateway must do with the message. The checking service applies its policies (review →
/// deliver or hold, API failure → fail open or closed), so gateways only follow the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContentDecision {
    /// Publish it.
    Deliver,
    /// Refuse it: the sender gets `error {code: "content_rejected"}`; nothing is stored.
    Reject,
    /// Keep it from others pending review: the sender gets `error {code: "content_held"}`; nothing is
    /// stored in the chat stream.
    Hold,
}

/// The answer to a [`ContentCheckRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentCheckReply {
    pub decision: ContentDecision,
    /// Why: `pass`, `risky`, `review`, `api_error` or `unknown_user`; for logs and metrics.
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_shapes() {
        assert_eq!(
            serde_json::to_string(&UserControl::Logout).unwrap(),
            r#"{"op":"logout"}"#
        );
        let r = ContentCheckReply {
            decision: ContentDecision::Hold,
            reason: "review".into(),
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"decision":"hold","reason":"review"}"#
        );
    }
}
