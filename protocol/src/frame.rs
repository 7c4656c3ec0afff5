//! JSON frames of protocol v1 (`chat.v1`).
//!
//! A client frame is parsed in two steps: first its envelope (`type`, `id`), then the body for that type.
//! This gives every failure a precise code: invalid JSON is `bad_request`, an unknown `type` is
//! `unknown_type`, a missing field is `bad_request`, and a malformed room or user id is `invalid_id`, each
//! echoing the frame's `id` whenever it could be read.

use serde::{Deserialize, Serialize};

use crate::group::{GroupEvent, MAX_USERS_PER_FRAME, Role};
use crate::ids::{ClientMsgId, ConnId, FrameId, GroupId, IdError, RoomId, UserId};

mod encode;

/// The error codes of `error` frames. The set is closed; clients can switch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    UnknownType,
    NotJoined,
    InvalidId,
    TooLarge,
    RateLimited,
    Unavailable,
    Internal,
    Forbidden,
    ContentRejected,
    ContentHeld,
    /// The id is taken: `group_create` with the id of a group, or of an open room that has messages.
    Conflict,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 12] = [
        Self::BadRequest,
        Self::UnknownType,
        Self::NotJoined,
        Self::InvalidId,
        Self::TooLarge,
        Self::RateLimited,
        Self::Unavailable,
        Self::Internal,
        Self::Forbidden,
        Self::ContentRejected,
        Self::ContentHeld,
        Self::Conflict,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::UnknownType => "unknown_type",
            Self::NotJoined => "not_joined",
            Self::InvalidId => "invalid_id",
            Self::TooLarge => "too_large",
            Self::RateLimited => "rate_limited",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
            Self::Forbidden => "forbidden",
            Self::ContentRejected => "content_rejected",
            Self::ContentHeld => "content_held",
            Self::Conflict => "conflict",
        }
    }
}

/// Where a `send` goes (or what a `history` reads): a room, a group, or the thread with one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Room(RoomId),
    Group(GroupId),
    User(UserId),
}

/// What a connection joins: an open room, or a group it is a member of.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Channel {
    Room(RoomId),
    Group(GroupId),
}

/// A conversation with read state: a group, or the direct-message thread with one user.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ConvTarget {
    Group(GroupId),
    With(UserId),
}

impl std::fmt::Display for Channel {
    /// `room <id>` or `group <id>`, for error messages.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Channel::Room(r) => write!(f, "room {r}"),
            Channel::Group(g) => write!(f, "group {g}"),
        }
    }
}

/// A parsed, validated client frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    /// `since` asks to resume: every message of the room with `seq > since`, then live ones.
    Join {
        channel: Channel,
        since: Option<u64>,
    },
    /// Resume a direct-message thread with `with` after `since`.
    Resume {
        with: UserId,
        since: u64,
    },
    /// Subscribe to contacts' presence (at most 200 per connection).
    Watch {
        users: Vec<UserId>,
    },
    Unwatch {
        users: Vec<UserId>,
    },
    /// The current presence of a room's members or of some users.
    PresenceQuery {
        target: PresenceTarget,
    },
    /// A page of stored history.
    History {
        target: Target,
        before: Option<u64>,
        after: Option<u64>,
        limit: u32,
    },
    Leave {
        channel: Channel,
    },
    Send {
        target: Target,
        text: String,
        client_msg_id: ClientMsgId,
        /// Members a group message mentions (at most [`MAX_MENTIONS`]; checked against the
        /// members by the gateway): each may be notified while offline.
        mentions: Vec<UserId>,
    },
    Ping,
    /// A new group; the id is chosen by the server when absent.
    GroupCreate {
        group: Option<GroupId>,
        name: String,
        members: Vec<UserId>,
    },
    GroupAdd {
        group: GroupId,
        users: Vec<UserId>,
    },
    GroupRemove {
        group: GroupId,
        users: Vec<UserId>,
    },
    GroupQuit {
        group: GroupId,
    },
    GroupRole {
        group: GroupId,
        user: UserId,
        role: Role,
    },
    GroupRename {
        group: GroupId,
        name: String,
    },
    GroupInfo {
        group: GroupId,
    },
    /// A page of the user's conversation list.
    Conversations {
        limit: u32,
        before: Option<u64>,
    },
    /// Marks a conversation read up to `seq`.
    Read {
        target: ConvTarget,
        seq: u64,
    },
    ConversationHide {
        target: ConvTarget,
    },
    /// Mutes a conversation (no offline notification for it) or unmutes it.
    ConversationMute {
        target: ConvTarget,
        muted: bool,
    },
    GroupReceipts {
        group: GroupId,
        seq: u64,
    },
    /// The user is typing in a group or thread: told to the others, never stored.
    Typing {
        target: ConvTarget,
    },
}

/// Most users one `send` may mention.
pub const MAX_MENTIONS: usize = 50;

/// Least time between two `typing` frames of one connection that are passed on; those between are
/// dropped without an answer.
pub const TYPING_INTERVAL_MS: u64 = 3000;

/// What a `presence_query` asks about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceTarget {
    Room(RoomId),
    Group(GroupId),
    Users(Vec<UserId>),
}

/// Most users one `watch`, `unwatch` or `presence_query` frame may name, and most users one
/// connection may watch.
pub const MAX_WATCHED: usize = 200;

/// A client frame that could not be accepted, with the reply it deserves.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct FrameError {
    pub id: Option<FrameId>,
    pub code: ErrorCode,
    pub message: String,
}

impl FrameError {
    pub fn new(id: Option<FrameId>, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            id,
            code,
            message: message.into(),
        }
    }

    /// The `error` frame that answers this failure.
    pub fn to_frame(&self) -> ServerFrame {
        ServerFrame::Error {
            id: self.id.clone(),
            code: self.code,
            message: self.message.clone(),
            retry_after_ms: None,
        }
    }
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    kind: Option<serde_json::Value>,
    id: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct ChannelBody {
    room: Option<String>,
    group: Option<String>,
    since: Option<u64>,
}

#[derive(Deserialize)]
struct ResumeBody {
    with: String,
    since: u64,
}

#[derive(Deserialize)]
struct UsersBody {
    users: Vec<String>,
}

#[derive(Deserialize)]
struct PresenceQueryBody {
    room: Option<String>,
    group: Option<String>,
    users: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct HistoryBody {
    room: Option<String>,
    group: Option<String>,
    with: Option<String>,
    before: Option<u64>,
    after: Option<u64>,
    limit: Option<u32>,
}

#[derive(Deserialize)]
struct SendBody {
    room: Option<String>,
    group: Option<String>,
    to: Option<String>,
    text: String,
    client_msg_id: String,
    #[serde(default)]
    mentions: Vec<String>,
}

#[derive(Deserialize)]
struct GroupCreateBody {
    group: Option<String>,
    name: String,
    #[serde(default)]
    members: Vec<String>,
}

#[derive(Deserialize)]
struct GroupUsersBody {
    group: String,
    users: Vec<String>,
}

#[derive(Deserialize)]
struct GroupBody {
    group: String,
}

#[derive(Deserialize)]
struct GroupRoleBody {
    group: String,
    user: String,
    role: Role,
}

#[derive(Deserialize)]
struct ConversationsBody {
    limit: Option<u32>,
    before: Option<u64>,
}

#[derive(Deserialize)]
struct ConvBody {
    group: Option<String>,
    with: Option<String>,
    seq: Option<u64>,
    muted: Option<bool>,
}

#[derive(Deserialize)]
struct GroupSeqBody {
    group: String,
    seq: u64,
}

#[derive(Deserialize)]
struct GroupRenameBody {
    group: String,
    name: String,
}

/// Validates a user list: at most [`MAX_WATCHED`] valid ids (a bad list is `bad_request`).
fn parse_users(users: Vec<String>) -> Result<Vec<UserId>, String> {
    parse_users_max(users, MAX_WATCHED)
}

/// Validates a user list of at most `max` valid ids.
fn parse_users_max(users: Vec<String>, max: usize) -> Result<Vec<UserId>, String> {
    if users.len() > max {
        return Err(format!("at most {max} users per frame"));
    }
    users
        .into_iter()
        .map(|u| UserId::parse(u.clone()).map_err(|e| format!("{u:?}: {e}")))
        .collect()
}

impl ClientFrame {
    /// Parses one text frame. Unknown fields are ignored, so clients may add their own.
    pub fn parse(text: &str) -> Result<(Option<FrameId>, ClientFrame), FrameError> {
        let env: Envelope = serde_json::from_str(text).map_err(|e| {
            FrameError::new(
                None,
                ErrorCode::BadRequest,
                format!("frame is not a JSON object: {e}"),
            )
        })?;
        let id = match env.id {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(
                FrameId::parse(s)
                    .map_err(|e| FrameError::new(None, ErrorCode::BadRequest, e.to_string()))?,
            ),
            Some(_) => {
                return Err(FrameError::new(
                    None,
                    ErrorCode::BadRequest,
                    "id must be a string",
                ));
            }
        };
        let bad = |code, msg: String| FrameError::new(id.clone(), code, msg);
        let kind = match env.kind {
            Some(serde_json::Value::String(s)) => s,
            Some(_) => return Err(bad(ErrorCode::BadRequest, "type must be a string".into())),
            None => return Err(bad(ErrorCode::BadRequest, "missing field `type`".into())),
        };
        let body =
            |e: serde_json::Error| bad(ErrorCode::BadRequest, format!("bad `{kind}` frame: {e}"));
        let invalid = |e: IdError| bad(ErrorCode::InvalidId, e.to_string());
        let one_of = |what: &str| {
            bad(
                ErrorCode::BadRequest,
                format!("{kind} needs exactly one of {what}"),
            )
        };
        let group = |g: String| GroupId::parse(g).map_err(invalid);
        let user = |u: String| UserId::parse(u).map_err(invalid);
        let channel = |room: Option<String>, group: Option<String>| match (room, group) {
            (Some(room), None) => Ok(Channel::Room(RoomId::parse(room).map_err(invalid)?)),
            (None, Some(g)) => Ok(Channel::Group(GroupId::parse(g).map_err(invalid)?)),
            _ => Err(one_of("`room` and `group`")),
        };
        let members = |users: Vec<String>| {
            parse_users_max(users, MAX_USERS_PER_FRAME).map_err(|m| bad(ErrorCode::BadRequest, m))
        };
        let frame = match kind.as_str() {
            "join" => {
                let b: ChannelBody = serde_json::from_str(text).map_err(body)?;
                ClientFrame::Join {
                    channel: channel(b.room, b.group)?,
                    since: b.since,
                }
            }
            "resume" => {
                let b: ResumeBody = serde_json::from_str(text).map_err(body)?;
                ClientFrame::Resume {
                    with: UserId::parse(b.with).map_err(invalid)?,
                    since: b.since,
                }
            }
            "watch" | "unwatch" => {
                let b: UsersBody = serde_json::from_str(text).map_err(body)?;
                let users = parse_users(b.users).map_err(|m| bad(ErrorCode::BadRequest, m))?;
                if kind == "watch" {
                    ClientFrame::Watch { users }
                } else {
                    ClientFrame::Unwatch { users }
                }
            }
            "presence_query" => {
                let b: PresenceQueryBody = serde_json::from_str(text).map_err(body)?;
                let target = match (b.room, b.group, b.users) {
                    (Some(room), None, None) => {
                        PresenceTarget::Room(RoomId::parse(room).map_err(invalid)?)
                    }
                    (None, Some(g), None) => PresenceTarget::Group(group(g)?),
                    (None, None, Some(users)) => PresenceTarget::Users(
                        parse_users(users).map_err(|m| bad(ErrorCode::BadRequest, m))?,
                    ),
                    _ => return Err(one_of("`room`, `group` and `users`")),
                };
                ClientFrame::PresenceQuery { target }
            }
            "history" => {
                let b: HistoryBody = serde_json::from_str(text).map_err(body)?;
                let target = match (b.room, b.group, b.with) {
                    (Some(room), None, None) => Target::Room(RoomId::parse(room).map_err(invalid)?),
                    (None, Some(g), None) => Target::Group(group(g)?),
                    (None, None, Some(with)) => Target::User(user(with)?),
                    _ => return Err(one_of("`room`, `group` and `with`")),
                };
                let limit = b.limit.unwrap_or(crate::history::DEFAULT_LIMIT);
                if !(1..=crate::history::MAX_LIMIT).contains(&limit) {
                    return Err(bad(
                        ErrorCode::BadRequest,
                        format!("limit must be 1..={}", crate::history::MAX_LIMIT),
                    ));
                }
                ClientFrame::History {
                    target,
                    before: b.before,
                    after: b.after,
                    limit,
                }
            }
            "leave" => {
                let b: ChannelBody = serde_json::from_str(text).map_err(body)?;
                ClientFrame::Leave {
                    channel: channel(b.room, b.group)?,
                }
            }
            "send" => {
                let b: SendBody = serde_json::from_str(text).map_err(body)?;
                let target = match (b.room, b.group, b.to) {
                    (Some(room), None, None) => Target::Room(RoomId::parse(room).map_err(invalid)?),
                    (None, Some(g), None) => Target::Group(group(g)?),
                    (None, None, Some(to)) => Target::User(user(to)?),
                    _ => return Err(one_of("`room`, `group` and `to`")),
                };
                let client_msg_id = ClientMsgId::parse(b.client_msg_id).map_err(invalid)?;
                if !b.mentions.is_empty() && !matches!(target, Target::Group(_)) {
                    return Err(bad(
                        ErrorCode::BadRequest,
                        "`mentions` is for group messages".into(),
                    ));
                }
                let mentions = parse_users_max(b.mentions, MAX_MENTIONS)
                    .map_err(|m| bad(ErrorCode::BadRequest, m))?;
                ClientFrame::Send {
                    target,
                    text: b.text,
                    client_msg_id,
                    mentions,
                }
            }
            "ping" => ClientFrame::Ping,
            "group_create" => {
                let b: GroupCreateBody = serde_json::from_str(text).map_err(body)?;
                ClientFrame::GroupCreate {
                    group: b.group.map(group).transpose()?,
                    name: b.name,
                    members: members(b.members)?,
                }
            }
            "group_add" | "group_remove" => {
                let b: GroupUsersBody = serde_json::from_str(text).map_err(body)?;
                let (group, users) = (group(b.group)?, members(b.users)?);
                if kind == "group_add" {
                    ClientFrame::GroupAdd { group, users }
                } else {
                    ClientFrame::GroupRemove { group, users }
                }
            }
            "group_quit" | "group_info" => {
                let b: GroupBody = serde_json::from_str(text).map_err(body)?;
                let group = group(b.group)?;
                if kind == "group_quit" {
                    ClientFrame::GroupQuit { group }
                } else {
                    ClientFrame::GroupInfo { group }
                }
            }
            "group_role" => {
                let b: GroupRoleBody = serde_json::from_str(text).map_err(body)?;
                ClientFrame::GroupRole {
                    group: group(b.group)?,
                    user: user(b.user)?,
                    role: b.role,
                }
            }
            "conversations" => {
                let b: ConversationsBody = serde_json::from_str(text).map_err(body)?;
                let limit = b.limit.unwrap_or(crate::conv::DEFAULT_LIST);
                if !(1..=crate::conv::MAX_LIST).contains(&limit) {
                    return Err(bad(
                        ErrorCode::BadRequest,
                        format!("limit must be 1..={}", crate::conv::MAX_LIST),
                    ));
                }
                ClientFrame::Conversations {
                    limit,
                    before: b.before,
                }
            }
            "typing" => {
                let b: ConvBody = serde_json::from_str(text).map_err(body)?;
                let target = match (b.group, b.with) {
                    (Some(g), None) => ConvTarget::Group(group(g)?),
                    (None, Some(w)) => ConvTarget::With(user(w)?),
                    _ => return Err(one_of("`group` and `with`")),
                };
                ClientFrame::Typing { target }
            }
            "conversation_mute" => {
                let b: ConvBody = serde_json::from_str(text).map_err(body)?;
                let target = match (b.group, b.with) {
                    (Some(g), None) => ConvTarget::Group(group(g)?),
                    (None, Some(w)) => ConvTarget::With(user(w)?),
                    _ => return Err(one_of("`group` and `with`")),
                };
                let Some(muted) = b.muted else {
                    return Err(bad(
                        ErrorCode::BadRequest,
                        "conversation_mute needs `muted`".into(),
                    ));
                };
                ClientFrame::ConversationMute { target, muted }
            }
            "read" | "conversation_hide" => {
                let b: ConvBody = serde_json::from_str(text).map_err(body)?;
                let target = match (b.group, b.with) {
                    (Some(g), None) => ConvTarget::Group(group(g)?),
                    (None, Some(w)) => ConvTarget::With(user(w)?),
                    _ => return Err(one_of("`group` and `with`")),
                };
                if kind == "read" {
                    let Some(seq) = b.seq else {
                        return Err(bad(ErrorCode::BadRequest, "read needs `seq`".into()));
                    };
                    ClientFrame::Read { target, seq }
                } else {
                    ClientFrame::ConversationHide { target }
                }
            }
            "group_receipts" => {
                let b: GroupSeqBody = serde_json::from_str(text).map_err(body)?;
                ClientFrame::GroupReceipts {
                    group: group(b.group)?,
                    seq: b.seq,
                }
            }
            "group_rename" => {
                let b: GroupRenameBody = serde_json::from_str(text).map_err(body)?;
                ClientFrame::GroupRename {
                    group: group(b.group)?,
                    name: b.name,
                }
            }
            _ => {
                return Err(bad(
                    ErrorCode::UnknownType,
                    format!("unknown frame type `{kind}`"),
                ));
            }
        };
        Ok((id, frame))
    }
}

/// Frames the server sends. Serialized as JSON objects tagged by `type`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    Welcome {
        user: UserId,
        conn: ConnId,
        heartbeat_ms: u64,
        server_time: u64,
        protocol: u32,
    },
    Joined {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<FrameId>,
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<RoomId>,
        #[serde(skip_serializing_if = "Option::is_none")]
        group: Option<GroupId>,
        /// The room's newest sequence when the join took effect (0 for an empty room).
        last_seq: u64,
        /// Only for a resume (`since` given): whether every message after `since` follows.
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
        /// Online members, at most 100, sorted by id.
        online: Vec<UserId>,
        /// How many members are online in all.
        online_count: usize,
        /// For a group: the user's read position and unread count (absent if the conversation
        /// service did not answer).
        #[serde(skip_serializing_if = "Option::is_none")]
        read_seq: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        unread: Option<u64>,
    },
    Resumed {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<FrameId>,
        with: UserId,
        last_seq: u64,
        recovered: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        read_seq: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        unread: Option<u64>,
    },
    /// A presence change (or, right after `watch`, the current state).
    Presence {
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<RoomId>,
        #[serde(skip_serializing_if = "Option::is_none")]
        group: Option<GroupId>,
        user: UserId,
        online: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        last_seen: Option<u64>,
    },
    Watched {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<FrameId>,
        /// Users this connection now watches in total.
        watching: usize,
    },
    Unwatched {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<FrameId>,
        watching: usize,
    },
    PresenceState {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<FrameId>,
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<RoomId>,
        #[serde(skip_serializing_if = "Option::is_none")]
        group: Option<GroupId>,
        users: Vec<PresenceEntry>,
    },
    History {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<FrameId>,
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<RoomId>,
        #[serde(skip_serializing_if = "Option::is_none")]
        group: Option<GroupId>,
        #[serde(skip_serializing_if = "Option::is_none")]
        with: Option<UserId>,
        /// Messages and, for a group, its events, in `seq` order.
        messages: Vec<Item>,
        more: bool,
    },
    Left {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<FrameId>,
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<RoomId>,
        #[serde(skip_serializing_if = "Option::is_none")]
        group: Option<GroupId>,
    },
    Ack {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<FrameId>,
        client_msg_id: ClientMsgId,
        seq: u64,
        ts: u64,
    },
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<FrameId>,
        server_time: u64,
    },
    Message(MessageFrame),
    /// A group's membership event, sequenced among its messages.
    Event(EventFrame),
    /// The answer to `group_create` and `group_info`, and to each change a member made.
    Group(GroupFrame),
    /// This connection was taken out of a group it had joined: its user was removed, or quit on
    /// another device.
    Removed {
        group: GroupId,
    },
    Conversations {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<FrameId>,
        items: Vec<crate::conv::ConvItem>,
        more: bool,
    },
    /// The answer to `read`.
    Read {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<FrameId>,
        #[serde(skip_serializing_if = "Option::is_none")]
        group: Option<GroupId>,
        #[serde(skip_serializing_if = "Option::is_none")]
        with: Option<UserId>,
        read_seq: u64,
        unread: u64,
    },
    /// The user read a conversation on another connection.
    ReadState {
        #[serde(skip_serializing_if = "Option::is_none")]
        group: Option<GroupId>,
        #[serde(skip_serializing_if = "Option::is_none")]
        with: Option<UserId>,
        read_seq: u64,
        unread: u64,
    },
    /// Someone else read a conversation: in a thread, `with` is the reader; in a group, `user` is.
    Receipt {
        #[serde(skip_serializing_if = "Option::is_none")]
        group: Option<GroupId>,
        #[serde(skip_serializing_if = "Option::is_none")]
        with: Option<UserId>,
        #[serde(skip_serializing_if = "Option::is_none")]
        user: Option<UserId>,
        read_seq: u64,
    },
    /// `user` is typing in the group, or in the thread with them (`with` is then `user`).
    Typing {
        #[serde(skip_serializing_if = "Option::is_none")]
        group: Option<GroupId>,
        #[serde(skip_serializing_if = "Option::is_none")]
        with: Option<UserId>,
        user: UserId,
    },
    ConversationHidden {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<FrameId>,
        #[serde(skip_serializing_if = "Option::is_none")]
        group: Option<GroupId>,
        #[serde(skip_serializing_if = "Option::is_none")]
        with: Option<UserId>,
    },
    /// The answer to `conversation_mute`.
    ConversationMuted {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<FrameId>,
        #[serde(skip_serializing_if = "Option::is_none")]
        group: Option<GroupId>,
        #[serde(skip_serializing_if = "Option::is_none")]
        with: Option<UserId>,
        muted: bool,
    },
    GroupReceipts {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<FrameId>,
        group: GroupId,
        seq: u64,
        /// The current members who have read up to `seq`, sorted.
        users: Vec<UserId>,
        count: usize,
    },
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<FrameId>,
        code: ErrorCode,
        message: String,
        /// With `rate_limited`: milliseconds until the connection's bucket holds a token again.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
}

/// One user's presence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceEntry {
    pub user: UserId,
    pub online: bool,
    /// Milliseconds since the epoch of the user's latest known activity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<u64>,
}

/// A group as members see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupFrame {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<FrameId>,
    pub group: GroupId,
    pub name: String,
    /// Absent only for a group whose last member quit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<UserId>,
    /// In the order they joined.
    pub members: Vec<crate::group::Member>,
    pub member_count: usize,
}

/// A delivered membership event of a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventFrame {
    pub group: GroupId,
    #[serde(flatten)]
    pub event: GroupEvent,
    /// Who made the change.
    pub by: UserId,
    pub seq: u64,
    pub prev_seq: u64,
    pub ts: u64,
}

/// One item of a conversation's sequence: a message, or (in a group) a membership event. Serialized
/// with its `type`, as the live frame is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Item {
    Message(MessageFrame),
    Event(EventFrame),
}

impl Item {
    /// The frame of a stored message or event.
    pub fn from_stored(m: crate::StoredMessage, seq: u64, prev_seq: u64) -> Self {
        match (m.event, &m.group) {
            (Some(event), Some(group)) => Item::Event(EventFrame {
                group: group.clone(),
                event: *event,
                by: m.from,
                seq,
                prev_seq,
                ts: m.ts,
            }),
            (event, _) => Item::Message(MessageFrame::from_stored(
                crate::StoredMessage { event, ..m },
                seq,
                prev_seq,
            )),
        }
    }

    pub fn seq(&self) -> u64 {
        match self {
            Item::Message(m) => m.seq,
            Item::Event(e) => e.seq,
        }
    }

    pub fn prev_seq(&self) -> u64 {
        match self {
            Item::Message(m) => m.prev_seq,
            Item::Event(e) => e.prev_seq,
        }
    }

    /// The JSON text of this item: the same as its live `message` or `event` frame.
    pub fn to_json(&self) -> String {
        // Strings, integers and enums only: serialization into a String cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The message, unless this is an event.
    pub fn message(&self) -> Option<&MessageFrame> {
        match self {
            Item::Message(m) => Some(m),
            Item::Event(_) => None,
        }
    }
}

impl<'de> Deserialize<'de> for Item {
    /// By `type`; an item without one is a message, as history pages were before groups.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        let event = value.get("type").and_then(|t| t.as_str()) == Some("event");
        if event {
            EventFrame::deserialize(value)
                .map(Item::Event)
                .map_err(serde::de::Error::custom)
        } else {
            MessageFrame::deserialize(value)
                .map(Item::Message)
                .map_err(serde::de::Error::custom)
        }
    }
}

/// A delivered chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageFrame {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<RoomId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<GroupId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<UserId>,
    pub from: UserId,
    pub text: String,
    /// Stream sequence of this message: one order per room, shared by every receiver.
    pub seq: u64,
    /// Sequence of the previous stored message of the same conversation (0 for the first).
    pub prev_seq: u64,
    pub ts: u64,
    pub client_msg_id: ClientMsgId,
    /// The members a group message mentions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mentions: Vec<UserId>,
}

impl MessageFrame {
    pub fn from_stored(m: crate::StoredMessage, seq: u64, prev_seq: u64) -> Self {
        Self {
            room: m.room,
            group: m.group,
            to: m.to,
            from: m.from,
            text: m.text,
            seq,
            prev_seq,
            ts: m.ts,
            client_msg_id: m.client_msg_id,
            mentions: m.mentions,
        }
    }
}

impl ServerFrame {
    /// The JSON text of this frame.
    pub fn to_json(&self) -> String {
        // Every field is a string, integer or enum; serialization into a String cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// [`ServerFrame::to_json`] into a buffer of `capacity` bytes, for a frame whose size is roughly
    /// known (a message: its text and about 200 bytes more), so the buffer is not regrown.
    pub fn to_json_with_capacity(&self, capacity: usize) -> String {
        let mut out = Vec::with_capacity(capacity);
        match serde_json::to_writer(&mut out, self) {
            Ok(()) => String::from_utf8(out).unwrap_or_default(),
            Err(_) => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code_of(text: &str) -> (Option<String>, ErrorCode) {
        let e = ClientFrame::parse(text).unwrap_err();
        (e.id.map(|i| i.as_str().to_owned()), e.code)
    }

    #[test]
    fn json_with_capacity_is_the_same_text() {
        let frame = ServerFrame::Message(MessageFrame {
            mentions: Vec::new(),
            room: Some(RoomId::parse("general").unwrap()),
            group: None,
            to: None,
            from: UserId::parse("alice").unwrap(),
            text: "你好, \"world\"".repeat(40),
            seq: 42,
            prev_seq: 40,
            ts: 1_764_169_201_234,
            client_msg_id: ClientMsgId::parse("m-7f3a").unwrap(),
        });
        for capacity in [0, 16, 256, 4096] {
            assert_eq!(frame.to_json_with_capacity(capacity), frame.to_json());
        }
    }

    #[test]
    fn parses_every_client_frame() {
        let (id, f) = ClientFrame::parse(r#"{"type":"join","id":"1","room":"general"}"#).unwrap();
        assert_eq!(id.unwrap().as_str(), "1");
        assert_eq!(
            f,
            ClientFrame::Join {
                channel: Channel::Room(RoomId::parse("general").unwrap()),
                since: None,
            }
        );
        let (_, f) = ClientFrame::parse(r#"{"type":"join","room":"r","since":41}"#).unwrap();
        assert!(matches!(
            f,
            ClientFrame::Join {
                since: Some(41),
                ..
            }
        ));
        let (_, f) = ClientFrame::parse(r#"{"type":"resume","with":"bob","since":7}"#).unwrap();
        assert!(matches!(f, ClientFrame::Resume { since: 7, .. }));
        let (_, f) = ClientFrame::parse(r#"{"type":"history","room":"r","before":9}"#).unwrap();
        assert_eq!(
            f,
            ClientFrame::History {
                target: Target::Room(RoomId::parse("r").unwrap()),
                before: Some(9),
                after: None,
                limit: 50,
            }
        );
        let (_, f) =
            ClientFrame::parse(r#"{"type":"send","to":"bob","text":"hi","client_msg_id":"m1"}"#)
                .unwrap();
        assert!(matches!(
            f,
            ClientFrame::Send {
                target: Target::User(_),
                ..
            }
        ));
        assert_eq!(
            ClientFrame::parse(r#"{"type":"ping"}"#).unwrap(),
            (None, ClientFrame::Ping)
        );
        let (_, f) = ClientFrame::parse(r#"{"type":"leave","room":"r","extra":[1]}"#).unwrap();
        assert!(matches!(f, ClientFrame::Leave { .. }));
    }

    #[test]
    fn typing_names_a_group_or_a_thread_and_is_told_with_its_user() {
        let (_, f) = ClientFrame::parse(r#"{"type":"typing","with":"bob"}"#).unwrap();
        assert!(
            matches!(f, ClientFrame::Typing { target: ConvTarget::With(u) } if u.as_str() == "bob")
        );
        let (_, f) = ClientFrame::parse(r#"{"type":"typing","group":"g"}"#).unwrap();
        assert!(
            matches!(f, ClientFrame::Typing { target: ConvTarget::Group(g) } if g.as_str() == "g")
        );
        assert_eq!(
            code_of(r#"{"type":"typing","group":"g","with":"bob"}"#),
            (None, ErrorCode::BadRequest)
        );
        assert_eq!(
            code_of(r#"{"type":"typing"}"#),
            (None, ErrorCode::BadRequest)
        );
        let t = ServerFrame::Typing {
            group: None,
            with: Some(UserId::parse("alice").unwrap()),
            user: UserId::parse("alice").unwrap(),
        };
        assert_eq!(
            t.to_json(),
            r#"{"type":"typing","with":"alice","user":"alice"}"#
        );
    }

    #[test]
    fn classifies_bad_frames() {
        assert_eq!(code_of("{nope"), (None, ErrorCode::BadRequest));
        assert_eq!(code_of("[1,2]"), (None, ErrorCode::BadRequest));
        assert_eq!(
            code_of(r#"{"id":"7"}"#),
            (Some("7".into()), ErrorCode::BadRequest)
        );
        assert_eq!(
            code_of(r#"{"type":"dance","id":"7"}"#),
            (Some("7".into()), ErrorCode::UnknownType)
        );
        assert_eq!(
            code_of(r#"{"type":"join","id":"7"}"#),
            (Some("7".into()), ErrorCode::BadRequest)
        );
        assert_eq!(
            code_of(r#"{"type":"join","id":"7","room":"a.b"}"#),
            (Some("7".into()), ErrorCode::InvalidId)
        );
        assert_eq!(
            code_of(r#"{"type":"send","room":"a","to":"b","text":"x","client_msg_id":"c"}"#),
            (None, ErrorCode::BadRequest)
        );
        assert_eq!(
            code_of(r#"{"type":"send","room":"a","text":"x","client_msg_id":"c c"}"#),
            (None, ErrorCode::InvalidId)
        );
        assert_eq!(code_of(r#"{"type":1}"#), (None, ErrorCode::BadRequest));
        assert_eq!(
            code_of(r#"{"type":"watch","users":["ok","not ok"]}"#),
            (None, ErrorCode::BadRequest)
        );
        let many: Vec<String> = (0..201).map(|i| format!("u{i}")).collect();
        let f = serde_json::json!({"type":"watch","users":many}).to_string();
        assert_eq!(code_of(&f), (None, ErrorCode::BadRequest));
        assert_eq!(
            code_of(r#"{"type":"presence_query"}"#),
            (None, ErrorCode::BadRequest)
        );
        for limit in [0, 101] {
            let f = format!(r#"{{"type":"history","room":"r","limit":{limit}}}"#);
            assert_eq!(code_of(&f), (None, ErrorCode::BadRequest), "{f}");
        }
        assert_eq!(
            code_of(r#"{"type":"history","room":"r","with":"b"}"#),
            (None, ErrorCode::BadRequest)
        );
        assert_eq!(
            code_of(&format!(r#"{{"type":"ping","id":"{}"}}"#, "x".repeat(65))),
            (None, ErrorCode::BadRequest)
        );
    }

    // Proves the group frames parse, `group` goes wherever `room` does, and bad ones are classified.
    #[test]
    fn parses_group_frames() {
        let g = || GroupId::parse("team").unwrap();
        let (_, f) = ClientFrame::parse(
            r#"{"type":"group_create","name":"Team","members":["bob","carol"]}"#,
        )
        .unwrap();
        assert!(
            matches!(f, ClientFrame::GroupCreate { group: None, ref members, .. } if members.len() == 2)
        );
        let (_, f) = ClientFrame::parse(
            r#"{"type":"group_role","group":"team","user":"bob","role":"admin"}"#,
        )
        .unwrap();
        assert_eq!(
            f,
            ClientFrame::GroupRole {
                group: g(),
                user: UserId::parse("bob").unwrap(),
                role: Role::Admin
            }
        );
        let (_, f) = ClientFrame::parse(r#"{"type":"join","group":"team","since":3}"#).unwrap();
        assert_eq!(
            f,
            ClientFrame::Join {
                channel: Channel::Group(g()),
                since: Some(3)
            }
        );
        let (_, f) = ClientFrame::parse(
            r#"{"type":"send","group":"team","text":"hi","client_msg_id":"m1"}"#,
        )
        .unwrap();
        assert!(matches!(
            f,
            ClientFrame::Send {
                target: Target::Group(_),
                ..
            }
        ));
        let (_, f) = ClientFrame::parse(r#"{"type":"presence_query","group":"team"}"#).unwrap();
        assert_eq!(
            f,
            ClientFrame::PresenceQuery {
                target: PresenceTarget::Group(g())
            }
        );
        for (frame, code) in [
            (
                r#"{"type":"join","room":"a","group":"b"}"#,
                ErrorCode::BadRequest,
            ),
            (
                r#"{"type":"group_info","group":"a.b"}"#,
                ErrorCode::InvalidId,
            ),
            (
                r#"{"type":"group_role","group":"a","user":"b","role":"king"}"#,
                ErrorCode::BadRequest,
            ),
            (
                r#"{"type":"group_add","group":"a","users":["x y"]}"#,
                ErrorCode::BadRequest,
            ),
            (
                r#"{"type":"history","group":"a","with":"b"}"#,
                ErrorCode::BadRequest,
            ),
        ] {
            assert_eq!(code_of(frame).1, code, "{frame}");
        }
        let many: Vec<String> = (0..=MAX_USERS_PER_FRAME).map(|i| format!("u{i}")).collect();
        let f = serde_json::json!({"type":"group_add","group":"a","users":many}).to_string();
        assert_eq!(code_of(&f).1, ErrorCode::BadRequest);
    }

    // Proves an event item has the documented shape and that history items read back by `type`,
    // with untyped items read as messages.
    #[test]
    fn items_round_trip() {
        let stored = crate::StoredMessage {
            mentions: Vec::new(),
            from: UserId::parse("alice").unwrap(),
            room: None,
            to: None,
            group: Some(GroupId::parse("team").unwrap()),
            event: Some(Box::new(GroupEvent {
                kind: crate::group::EventKind::Removed,
                users: vec![UserId::parse("bob").unwrap()],
                name: None,
                role: None,
                owner: None,
            })),
            text: String::new(),
            client_msg_id: ClientMsgId::parse("ev-2").unwrap(),
            ts: 5,
        };
        let item = Item::from_stored(stored, 9, 7);
        let json = serde_json::to_string(&item).unwrap();
        assert_eq!(
            json,
            r#"{"type":"event","group":"team","kind":"removed","users":["bob"],"by":"alice","seq":9,"prev_seq":7,"ts":5}"#
        );
        assert_eq!(serde_json::from_str::<Item>(&json).unwrap(), item);
        let old =
            r#"{"room":"r","from":"a","text":"x","seq":1,"prev_seq":0,"ts":1,"client_msg_id":"c"}"#;
        assert!(matches!(
            serde_json::from_str::<Item>(old).unwrap(),
            Item::Message(_)
        ));
    }

    #[test]
    fn server_frames_have_the_documented_shape() {
        let f = ServerFrame::Ack {
            id: Some(FrameId::parse("9").unwrap()),
            client_msg_id: ClientMsgId::parse("m1").unwrap(),
            seq: 3,
            ts: 4,
        };
        assert_eq!(
            f.to_json(),
            r#"{"type":"ack","id":"9","client_msg_id":"m1","seq":3,"ts":4}"#
        );
        let e = ServerFrame::Error {
            id: None,
            code: ErrorCode::NotJoined,
            message: "m".into(),
            retry_after_ms: None,
        };
        assert_eq!(
            e.to_json(),
            r#"{"type":"error","code":"not_joined","message":"m"}"#
        );
        for code in ErrorCode::ALL {
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
        }
    }
}
