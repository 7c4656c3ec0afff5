//! NATS subject names and message headers.
//!
//! Subjects are built only here, from validated ids, so an operator reading `nats sub 'chat.>'` sees the
//! same names the code uses. The layout:
//!
//! | subject | what flows there |
//! |---|---|
//! | `chat.in.room.<room>` | a room message, as published by a gateway into stream `CHAT` |
//! | `chat.in.dm.<lo>.<hi>` | a direct message between users `lo` < `hi` |
//! | `chat.in.group.<group>` | a group's messages and membership events |
//! | `chat.out.room.<room>`, `chat.out.dm.<lo>.<hi>`, `chat.out.group.<group>` | the same messages, republished by JetStream after storing |
//! | `chat.ctl.user.<user>` | control commands for all sessions of one user (for example a forced logout) |

use crate::ids::{GroupId, RoomId, UserId};

/// The JetStream stream that stores every chat message.
pub const STREAM: &str = "CHAT";
/// Subjects captured by [`STREAM`].
pub const INGEST_WILDCARD: &str = "chat.in.>";
/// Where [`STREAM`] republishes what it stored.
pub const DELIVER_WILDCARD: &str = "chat.out.>";

/// Header naming the sender (readable in `nats sub`).
pub const HDR_FROM: &str = "Chat-From";
/// Header naming the room of a room message.
pub const HDR_ROOM: &str = "Chat-Room";
/// Header naming the group of a group message or event.
pub const HDR_GROUP: &str = "Chat-Group";
/// Header naming the recipient of a direct message.
pub const HDR_TO: &str = "Chat-To";
/// Content type of stored payloads.
pub const CONTENT_TYPE_MSGPACK: &str = "application/msgpack";

/// A conversation: the unit that has one order and one sequence chain.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Conversation {
    Room(RoomId),
    /// A private group: its messages and its membership events share one chain.
    Group(GroupId),
    /// A direct-message thread; `lo < hi` always holds.
    Dm {
        lo: UserId,
        hi: UserId,
    },
}

impl Conversation {
    /// The thread between two distinct users, whatever the order they are given in.
    /// Returns `None` when both are the same user: a thread with oneself has no subject.
    pub fn dm(a: UserId, b: UserId) -> Option<Self> {
        match a.cmp(&b) {
            std::cmp::Ordering::Less => Some(Self::Dm { lo: a, hi: b }),
            std::cmp::Ordering::Greater => Some(Self::Dm { lo: b, hi: a }),
            std::cmp::Ordering::Equal => None,
        }
    }

    /// `chat.in.room.<room>` or `chat.in.dm.<lo>.<hi>`.
    pub fn ingest_subject(&self) -> String {
        format!("chat.in.{}", self.tail())
    }

    /// `chat.out.room.<room>` or `chat.out.dm.<lo>.<hi>`.
    pub fn deliver_subject(&self) -> String {
        format!("chat.out.{}", self.tail())
    }

    /// Parses a `chat.in.…` or `chat.out.…` subject back into its conversation.
    pub fn from_subject(subject: &str) -> Option<Self> {
        let tail = subject
            .strip_prefix("chat.in.")
            .or_else(|| subject.strip_prefix("chat.out."))?;
        let mut parts = tail.split('.');
        let conv = match (parts.next()?, parts.next()?, parts.next()) {
            ("room", room, None) => Self::Room(RoomId::parse(room).ok()?),
            ("group", group, None) => Self::Group(GroupId::parse(group).ok()?),
            ("dm", lo, Some(hi)) => Self::dm(UserId::parse(lo).ok()?, UserId::parse(hi).ok()?)?,
            _ => return None,
        };
        parts.next().is_none().then_some(conv)
    }

    fn tail(&self) -> String {
        match self {
            Self::Room(room) => format!("room.{room}"),
            Self::Group(group) => format!("group.{group}"),
            Self::Dm { lo, hi } => format!("dm.{lo}.{hi}"),
        }
    }
}

/// The two subjects a gateway subscribes for one local user, so that it receives every direct message
/// the user sends or receives, whichever side of the sorted pair the user is on.
pub fn user_dm_subjects(user: &UserId) -> [String; 2] {
    [
        format!("chat.out.dm.{user}.*"),
        format!("chat.out.dm.*.{user}"),
    ]
}

/// Every direct message of every thread: a gateway with `GATEWAY_DM_SUBSCRIPTION=shared` subscribes
/// it once and routes each message to the local connections of its two users.
pub const DM_DELIVER_WILDCARD: &str = "chat.out.dm.>";

/// Control subject for all sessions of one user.
pub fn user_control_subject(user: &UserId) -> String {
    format!("chat.ctl.user.{user}")
}

/// Every user's control subject: a gateway subscribes it once and routes commands to local users.
pub const USER_CONTROL_WILDCARD: &str = "chat.ctl.user.*";

/// The user a control subject addresses, if it is one.
pub fn user_of_control_subject(subject: &str) -> Option<UserId> {
    UserId::parse(subject.strip_prefix("chat.ctl.user.")?).ok()
}

/// The `Nats-Msg-Id` of a client message: `<sender>:<client_msg_id>`, so a resend is stored once.
pub fn msg_id(from: &UserId, client_msg_id: &crate::ClientMsgId) -> String {
    format!("{from}:{client_msg_id}")
}

/// The `Nats-Msg-Id` of a group's membership event: `group:<group>:<client_msg_id>`, where the
/// event's `client_msg_id` is `ev-<revision>`, the revision of the group record (bucket `groups`) its
/// change wrote. A change completed twice (its gateway died between the record and the event) is
/// then stored once. It cannot collide with [`msg_id`], which has one `:`, not two.
pub fn event_msg_id(group: &GroupId, client_msg_id: &crate::ClientMsgId) -> String {
    format!("group:{group}:{client_msg_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_subject_round_trips() {
        let user = u("alice");
        assert_eq!(
            user_of_control_subject(&user_control_subject(&user)),
            Some(user)
        );
        assert_eq!(user_of_control_subject("chat.ctl.room.alice"), None);
        assert_eq!(user_of_control_subject("chat.ctl.user.a.b"), None);
    }

    fn u(s: &str) -> UserId {
        UserId::parse(s).unwrap()
    }

    #[test]
    fn dm_subjects_sort_the_pair() {
        let c = Conversation::dm(u("zoe"), u("adam")).unwrap();
        assert_eq!(c.ingest_subject(), "chat.in.dm.adam.zoe");
        assert_eq!(c.deliver_subject(), "chat.out.dm.adam.zoe");
        assert_eq!(Conversation::dm(u("a"), u("a")), None);
        let prefix = DM_DELIVER_WILDCARD.trim_end_matches('>');
        assert!(c.deliver_subject().starts_with(prefix));
        let room = Conversation::Room(RoomId::parse("dm").unwrap());
        assert!(!room.deliver_subject().starts_with(prefix));
    }

    #[test]
    fn subjects_round_trip() {
        let group = Conversation::Group(GroupId::parse("team").unwrap());
        assert_eq!(group.ingest_subject(), "chat.in.group.team");
        assert_eq!(
            Conversation::from_subject("chat.out.group.team"),
            Some(group)
        );
        assert_eq!(Conversation::from_subject("chat.out.group.a.b"), None);
        let room = Conversation::Room(RoomId::parse("general").unwrap());
        assert_eq!(
            Conversation::from_subject("chat.out.room.general"),
            Some(room.clone())
        );
        assert_eq!(
            Conversation::from_subject(&room.ingest_subject()),
            Some(room)
        );
        assert_eq!(
            Conversation::from_subject("chat.out.dm.b.a"),
            Conversation::dm(u("a"), u("b"))
        );
        for bad in [
            "chat.out.room",
            "chat.out.room.a.b",
            "chat.x.room.a",
            "chat.out.dm.a",
            "chat.out.dm.a.a",
        ] {
            assert_eq!(Conversation::from_subject(bad), None, "{bad}");
        }
    }

    #[test]
    fn user_subjects_cover_both_sides() {
        assert_eq!(
            user_dm_subjects(&u("bob")),
            ["chat.out.dm.bob.*", "chat.out.dm.*.bob"]
        );
    }
}
