//! The conversation service contract: each user's conversation list, read state and unread counts,
//! kept by the persisters beside history and asked by gateways over NATS (request/reply on
//! [`CONV_SUBJECT`], queue group [`CONV_QUEUE`], JSON). The gateway checks who may ask before it
//! asks; the service trusts it, like the history service.

use serde::{Deserialize, Serialize};

use crate::frame::Item;
use crate::history::ConvRef;
use crate::ids::{GroupId, UserId};

/// Subject of the conversation service.
pub const CONV_SUBJECT: &str = "chat.svc.conv";
/// Queue group shared by all persister instances.
pub const CONV_QUEUE: &str = "conv";
/// Largest conversation list page.
pub const MAX_LIST: u32 = 100;
/// Page size when none is given.
pub const DEFAULT_LIST: u32 = 50;
/// Groups up to this many members get live receipts, unless configured otherwise
/// (`GROUP_RECEIPT_LIMIT`). Above it a read would fan out to every member, and all members reading
/// makes that grow with the square of the group's size.
pub const DEFAULT_RECEIPT_LIMIT: usize = 100;
/// How long the service waits for its store to hold the sequence a `read` names (the store lags
/// the stream by the persister's backlog), before it answers from what it has.
pub const READ_CATCH_UP_MS: u64 = 2_000;

/// A request to the conversation service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConvRequest {
    /// A page of `user`'s conversations, newest activity first, with activity below `before`.
    List {
        user: UserId,
        limit: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        before: Option<u64>,
    },
    /// Moves `user`'s read position in `conv` up to `seq` (never back), clamped to the newest.
    Read {
        user: UserId,
        conv: ConvRef,
        seq: u64,
    },
    /// `user`'s read position and unread count in `conv`.
    State { user: UserId, conv: ConvRef },
    /// Takes `conv` out of `user`'s list until its next message.
    Hide { user: UserId, conv: ConvRef },
    /// The current members of `conv` who have read up to `seq` or further.
    Readers { conv: ConvRef, seq: u64 },
    /// Which of `among` share a direct thread or a group with `user` (for presence privacy).
    Contacts { user: UserId, among: Vec<UserId> },
    /// How many groups each of `users` is a current member of, in the order given.
    GroupCounts { users: Vec<UserId> },
}

/// A user's read position in one conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadState {
    pub read_seq: u64,
    /// Messages after `read_seq` that others sent (events do not count).
    pub unread: u64,
}

/// One item of a conversation list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvItem {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<GroupId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub with: Option<UserId>,
    /// A group's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The newest message or event (for a group the user left: the one that ended the membership).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<Item>,
    /// The list's order and cursor: the `seq` of `last`, stream-wide, so unique per conversation.
    pub activity: u64,
    pub read_seq: u64,
    pub unread: u64,
    /// A group's member count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<usize>,
    /// The reader muted it (`conversation_mute`): no offline notification for it. Filled in by
    /// the gateway from bucket `notify`, not by the store.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub muted: bool,
}

/// The answer to a [`ConvRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConvReply {
    List {
        items: Vec<ConvItem>,
        more: bool,
    },
    /// For `read` and `state`; `moved` says whether a `read` moved the position.
    State {
        state: ReadState,
        #[serde(default)]
        moved: bool,
    },
    Hidden,
    Readers {
        users: Vec<UserId>,
    },
    Contacts {
        users: Vec<UserId>,
    },
    GroupCounts {
        counts: Vec<u64>,
    },
    Error {
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_shape_is_readable() {
        let r = ConvRequest::Read {
            user: UserId::parse("bob").unwrap(),
            conv: ConvRef::Group(GroupId::parse("team").unwrap()),
            seq: 9,
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"read":{"user":"bob","conv":{"group":"team"},"seq":9}}"#
        );
        let back: ConvRequest = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }
}
