//! The history service contract: requests a gateway sends to the persisters over NATS
//! (request/reply on [`HISTORY_SUBJECT`], queue group [`HISTORY_QUEUE`]), JSON-encoded so an operator
//! can ask by hand with `nats req chat.svc.history '{"conv":{"room":"general"},"limit":5}'`.

use serde::{Deserialize, Serialize};

use crate::frame::Item;
use crate::ids::{GroupId, RoomId, UserId};
use crate::subject::Conversation;

/// Subject of the history service.
pub const HISTORY_SUBJECT: &str = "chat.svc.history";
/// Queue group shared by all persister instances, so each request is answered once.
pub const HISTORY_QUEUE: &str = "history";
/// Largest page.
pub const MAX_LIMIT: u32 = 100;
/// Page size when none is given.
pub const DEFAULT_LIMIT: u32 = 50;

/// A conversation as it appears in history requests: `{"room": "general"}`, `{"group": "team"}` or
/// `{"dm": ["alice", "bob"]}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConvRef {
    Room(RoomId),
    /// A private group. Only gateways may ask the history service (NATS permissions, see
    /// ARCHITECTURE.md), and they ask only after checking membership.
    Group(GroupId),
    /// The sorted pair (`lo`, `hi`).
    Dm(UserId, UserId),
}

impl From<&Conversation> for ConvRef {
    fn from(c: &Conversation) -> Self {
        match c {
            Conversation::Room(r) => ConvRef::Room(r.clone()),
            Conversation::Group(g) => ConvRef::Group(g.clone()),
            Conversation::Dm { lo, hi } => ConvRef::Dm(lo.clone(), hi.clone()),
        }
    }
}

impl ConvRef {
    /// The conversation, if this names a valid one (a DM pair must be two distinct users).
    pub fn conversation(&self) -> Option<Conversation> {
        match self {
            ConvRef::Room(r) => Some(Conversation::Room(r.clone())),
            ConvRef::Group(g) => Some(Conversation::Group(g.clone())),
            ConvRef::Dm(a, b) => Conversation::dm(a.clone(), b.clone()),
        }
    }
}

/// One page request.
///
/// - Only `before`: the newest `limit` messages with `seq < before`.
/// - Only `after`: the oldest `limit` messages with `seq > after`.
/// - Both: the oldest `limit` messages with `after < seq < before`.
/// - Neither: the newest `limit` messages.
///
/// Messages always come back in ascending `seq` order.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HistoryRequest {
    pub conv: ConvRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<u64>,
    pub limit: u32,
}

/// The answer to a [`HistoryRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HistoryReply {
    /// `more` is true when further messages exist beyond the page in the paging direction
    /// (older ones for `before`/neither, newer ones for `after`).
    Page {
        /// Messages and a group's events, in `seq` order.
        messages: Vec<Item>,
        more: bool,
    },
    Error {
        code: HistoryErrorCode,
        message: String,
    },
}

/// Why a history request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HistoryErrorCode {
    /// The request itself is wrong (limit out of range, a DM with oneself); do not retry it.
    BadRequest,
    /// The store could not be read; retry later.
    Unavailable,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_shape_is_readable() {
        let r = HistoryRequest {
            conv: ConvRef::Room(RoomId::parse("general").unwrap()),
            before: Some(10),
            after: None,
            limit: 5,
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"conv":{"room":"general"},"before":10,"limit":5}"#
        );
        let dm: ConvRef = serde_json::from_str(r#"{"dm":["bob","alice"]}"#).unwrap();
        assert_eq!(
            dm.conversation(),
            Conversation::dm(
                UserId::parse("alice").unwrap(),
                UserId::parse("bob").unwrap()
            )
        );
        let page = HistoryReply::Page {
            messages: vec![],
            more: false,
        };
        assert_eq!(
            serde_json::to_string(&page).unwrap(),
            r#"{"page":{"messages":[],"more":false}}"#
        );
    }
}
