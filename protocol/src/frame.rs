//! JSON frames of protocol v1 (`chat.v1`).
//!
//! A client frame is parsed in two steps: first its envelope (`type`, `id`), then the body for that type.
//! This gives every failure a precise code: invalid JSON is `bad_request`, an unknown `type` is
//! `unknown_type`, a missing field is `bad_request`, and a malformed room or user id is `invalid_id`, each
//! echoing the frame's `id` whenever it could be read.

use serde::{Deserialize, Serialize};

use crate::ids::{ClientMsgId, ConnId, FrameId, IdError, RoomId, UserId};

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
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 11] = [
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
        }
    }
}

/// Where a `send` goes: a room, or one user as a direct message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Room(RoomId),
    User(UserId),
}

/// A parsed, validated client frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    /// `since` asks to resume: every message of the room with `seq > since`, then live ones.
    Join {
        room: RoomId,
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
        room: RoomId,
    },
    Send {
        target: Target,
        text: String,
        client_msg_id: ClientMsgId,
    },
    Ping,
}

/// What a `presence_query` asks about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceTarget {
    Room(RoomId),
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
struct RoomBody {
    room: String,
}

#[derive(Deserialize)]
struct JoinBody {
    room: String,
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
    users: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct HistoryBody {
    room: Option<String>,
    with: Option<String>,
    before: Option<u64>,
    after: Option<u64>,
    limit: Option<u32>,
}

#[derive(Deserialize)]
struct SendBody {
    room: Option<String>,
    to: Option<String>,
    text: String,
    client_msg_id: String,
}

/// Validates a user list: at most [`MAX_WATCHED`] valid ids (a bad list is `bad_request`).
fn parse_users(users: Vec<String>) -> Result<Vec<UserId>, String> {
    if users.len() > MAX_WATCHED {
        return Err(format!("at most {MAX_WATCHED} users per frame"));
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
        let frame = match kind.as_str() {
            "join" => {
                let b: JoinBody = serde_json::from_str(text).map_err(body)?;
                ClientFrame::Join {
                    room: RoomId::parse(b.room).map_err(invalid)?,
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
                let target = match (b.room, b.users) {
                    (Some(room), None) => {
                        PresenceTarget::Room(RoomId::parse(room).map_err(invalid)?)
                    }
                    (None, Some(users)) => PresenceTarget::Users(
                        parse_users(users).map_err(|m| bad(ErrorCode::BadRequest, m))?,
                    ),
                    _ => {
                        return Err(bad(
                            ErrorCode::BadRequest,
                            "presence_query needs exactly one of `room` and `users`".into(),
                        ));
                    }
                };
                ClientFrame::PresenceQuery { target }
            }
            "history" => {
                let b: HistoryBody = serde_json::from_str(text).map_err(body)?;
                let target = match (b.room, b.with) {
                    (Some(room), None) => Target::Room(RoomId::parse(room).map_err(invalid)?),
                    (None, Some(with)) => Target::User(UserId::parse(with).map_err(invalid)?),
                    _ => {
                        return Err(bad(
                            ErrorCode::BadRequest,
                            "history needs exactly one of `room` and `with`".into(),
                        ));
                    }
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
                let b: RoomBody = serde_json::from_str(text).map_err(body)?;
                ClientFrame::Leave {
                    room: RoomId::parse(b.room).map_err(invalid)?,
                }
            }
            "send" => {
                let b: SendBody = serde_json::from_str(text).map_err(body)?;
                let target = match (b.room, b.to) {
                    (Some(room), None) => Target::Room(RoomId::parse(room).map_err(invalid)?),
                    (None, Some(to)) => Target::User(UserId::parse(to).map_err(invalid)?),
                    _ => {
                        return Err(bad(
                            ErrorCode::BadRequest,
                            "send needs exactly one of `room` and `to`".into(),
                        ));
                    }
                };
                let client_msg_id = ClientMsgId::parse(b.client_msg_id).map_err(invalid)?;
                ClientFrame::Send {
                    target,
                    text: b.text,
                    client_msg_id,
                }
            }
            "ping" => ClientFrame::Ping,
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
        room: RoomId,
        /// The room's newest sequence when the join took effect (0 for an empty room).
        last_seq: u64,
        /// Only for a resume (`since` given): whether every message after `since` follows.
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
        /// Online members, at most 100, sorted by id.
        online: Vec<UserId>,
        /// How many members are online in all.
        online_count: usize,
    },
    Resumed {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<FrameId>,
        with: UserId,
        last_seq: u64,
        recovered: bool,
    },
    /// A presence change (or, right after `watch`, the current state).
    Presence {
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<RoomId>,
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
        users: Vec<PresenceEntry>,
    },
    History {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<FrameId>,
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<RoomId>,
        #[serde(skip_serializing_if = "Option::is_none")]
        with: Option<UserId>,
        messages: Vec<MessageFrame>,
        more: bool,
    },
    Left {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<FrameId>,
        room: RoomId,
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
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<FrameId>,
        code: ErrorCode,
        message: String,
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

/// A delivered chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageFrame {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<RoomId>,
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
}

impl MessageFrame {
    pub fn from_stored(m: crate::StoredMessage, seq: u64, prev_seq: u64) -> Self {
        Self {
            room: m.room,
            to: m.to,
            from: m.from,
            text: m.text,
            seq,
            prev_seq,
            ts: m.ts,
            client_msg_id: m.client_msg_id,
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
            room: Some(RoomId::parse("general").unwrap()),
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
                room: RoomId::parse("general").unwrap(),
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
