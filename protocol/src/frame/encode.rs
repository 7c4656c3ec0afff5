//! The JSON text of a client frame: the inverse of [`ClientFrame::parse`].
//!
//! The gateway only parses client frames, but Rust code that plays a client (tests, the fuzz
//! targets in `fuzz/`) needs to write them, and the round-trip property
//! (`protocol/tests/roundtrip.rs`) pins writer and parser together: whatever `parse` accepts,
//! `to_json` writes back to a frame that parses equal. The field names are the wire names of
//! docs/protocol.md.

use serde_json::{Map, Value, json};

use super::{Channel, ClientFrame, ConvTarget, PresenceTarget, Target};
use crate::ids::{FrameId, UserId};

impl ClientFrame {
    /// The frame's `type`, as docs/protocol.md names it.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientFrame::Join { .. } => "join",
            ClientFrame::Resume { .. } => "resume",
            ClientFrame::Watch { .. } => "watch",
            ClientFrame::Unwatch { .. } => "unwatch",
            ClientFrame::PresenceQuery { .. } => "presence_query",
            ClientFrame::History { .. } => "history",
            ClientFrame::Leave { .. } => "leave",
            ClientFrame::Send { .. } => "send",
            ClientFrame::Ping => "ping",
            ClientFrame::GroupCreate { .. } => "group_create",
            ClientFrame::GroupAdd { .. } => "group_add",
            ClientFrame::GroupRemove { .. } => "group_remove",
            ClientFrame::GroupQuit { .. } => "group_quit",
            ClientFrame::GroupRole { .. } => "group_role",
            ClientFrame::GroupRename { .. } => "group_rename",
            ClientFrame::GroupInfo { .. } => "group_info",
            ClientFrame::Conversations { .. } => "conversations",
            ClientFrame::Read { .. } => "read",
            ClientFrame::ConversationHide { .. } => "conversation_hide",
            ClientFrame::ConversationMute { .. } => "conversation_mute",
            ClientFrame::GroupReceipts { .. } => "group_receipts",
            ClientFrame::Typing { .. } => "typing",
        }
    }

    /// The JSON text of this frame with request id `id`: [`ClientFrame::parse`] reads it back as
    /// `(id, self)`. Optional fields that are `None` are left out.
    pub fn to_json(&self, id: Option<&FrameId>) -> String {
        let mut out = Map::new();
        out.insert("type".into(), self.kind().into());
        if let Some(id) = id {
            out.insert("id".into(), id.as_str().into());
        }
        let mut put = |key: &str, value: Value| {
            out.insert(key.into(), value);
        };
        match self {
            ClientFrame::Join { channel, since } => {
                put_channel(&mut put, channel);
                if let Some(since) = since {
                    put("since", json!(since));
                }
            }
            ClientFrame::Resume { with, since } => {
                put("with", json!(with));
                put("since", json!(since));
            }
            ClientFrame::Watch { users } | ClientFrame::Unwatch { users } => {
                put("users", users_json(users));
            }
            ClientFrame::PresenceQuery { target } => match target {
                PresenceTarget::Room(r) => put("room", json!(r)),
                PresenceTarget::Group(g) => put("group", json!(g)),
                PresenceTarget::Users(users) => put("users", users_json(users)),
            },
            ClientFrame::History {
                target,
                before,
                after,
                limit,
            } => {
                // A thread is `with` here, as in `resume`; `send` names its recipient `to`.
                match target {
                    Target::Room(r) => put("room", json!(r)),
                    Target::Group(g) => put("group", json!(g)),
                    Target::User(u) => put("with", json!(u)),
                }
                if let Some(before) = before {
                    put("before", json!(before));
                }
                if let Some(after) = after {
                    put("after", json!(after));
                }
                put("limit", json!(limit));
            }
            ClientFrame::Leave { channel } => put_channel(&mut put, channel),
            ClientFrame::Send {
                target,
                text,
                client_msg_id,
                mentions,
            } => {
                match target {
                    Target::Room(r) => put("room", json!(r)),
                    Target::Group(g) => put("group", json!(g)),
                    Target::User(u) => put("to", json!(u)),
                }
                put("text", json!(text));
                put("client_msg_id", json!(client_msg_id));
                if !mentions.is_empty() {
                    put("mentions", users_json(mentions));
                }
            }
            ClientFrame::Ping => {}
            ClientFrame::GroupCreate {
                group,
                name,
                members,
            } => {
                if let Some(group) = group {
                    put("group", json!(group));
                }
                put("name", json!(name));
                put("members", users_json(members));
            }
            ClientFrame::GroupAdd { group, users } | ClientFrame::GroupRemove { group, users } => {
                put("group", json!(group));
                put("users", users_json(users));
            }
            ClientFrame::GroupQuit { group } | ClientFrame::GroupInfo { group } => {
                put("group", json!(group));
            }
            ClientFrame::GroupRole { group, user, role } => {
                put("group", json!(group));
                put("user", json!(user));
                put("role", json!(role));
            }
            ClientFrame::GroupRename { group, name } => {
                put("group", json!(group));
                put("name", json!(name));
            }
            ClientFrame::Conversations { limit, before } => {
                put("limit", json!(limit));
                if let Some(before) = before {
                    put("before", json!(before));
                }
            }
            ClientFrame::Read { target, seq } => {
                put_conv(&mut put, target);
                put("seq", json!(seq));
            }
            ClientFrame::ConversationHide { target } | ClientFrame::Typing { target } => {
                put_conv(&mut put, target);
            }
            ClientFrame::ConversationMute { target, muted } => {
                put_conv(&mut put, target);
                put("muted", json!(muted));
            }
            ClientFrame::GroupReceipts { group, seq } => {
                put("group", json!(group));
                put("seq", json!(seq));
            }
        }
        Value::Object(out).to_string()
    }
}

fn put_channel(put: &mut impl FnMut(&str, Value), channel: &Channel) {
    match channel {
        Channel::Room(r) => put("room", json!(r)),
        Channel::Group(g) => put("group", json!(g)),
    }
}

fn put_conv(put: &mut impl FnMut(&str, Value), target: &ConvTarget) {
    match target {
        ConvTarget::Group(g) => put("group", json!(g)),
        ConvTarget::With(u) => put("with", json!(u)),
    }
}

fn users_json(users: &[UserId]) -> Value {
    users.iter().map(|u| Value::from(u.as_str())).collect()
}
