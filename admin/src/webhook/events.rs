//! The events a webhook carries, built from what the relay reads, with no I/O.
//!
//! Every request body is one event: `{"id", "type", "ts", "data"}`.
//!
//! | `type` | from | `data` |
//! |---|---|---|
//! | `message.stored` | a message in stream `CHAT` | `seq`, `from`, one of `room` / `group` / `to`, `text`, `client_msg_id`, `ts`, `mentions`? |
//! | `group.membership` | a group event in stream `CHAT` | `seq`, `group`, `by`, `kind` (`created`, `added`, `removed`, `quit`, `role`, `renamed`), `users`, `role`?, `name`?, `owner`? |
//! | `user.online`, `user.offline` | the presence bucket's connection keys | `user` |
//!
//! `id` is the same for every delivery of one event (`chat-<seq>`, `presence-<seq>`), so a
//! receiver deduplicates by it: delivery is at least once.

use protocol::StoredMessage;
use serde::Serialize;
use serde_json::{Value, json};

/// The kinds of events, as `WEBHOOK_EVENTS` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `message`: `message.stored`.
    Message,
    /// `membership`: `group.membership`.
    Membership,
    /// `presence`: `user.online` and `user.offline`.
    Presence,
}

impl Kind {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "message" => Some(Kind::Message),
            "membership" => Some(Kind::Membership),
            "presence" => Some(Kind::Presence),
            _ => None,
        }
    }
}

/// One event, ready to sign and send.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Milliseconds since the Unix epoch: when the message was accepted, or the presence change
    /// was read.
    pub ts: u64,
    pub data: Value,
}

/// The event of a message or group event stored at `seq`, if `kinds` wants it.
pub fn from_stored(m: StoredMessage, seq: u64, message: bool, membership: bool) -> Option<Event> {
    let id = format!("chat-{seq}");
    match (&m.event, &m.group) {
        (Some(e), Some(group)) => membership.then(|| {
            let mut data = serde_json::to_value(e.as_ref()).unwrap_or_default();
            data["seq"] = json!(seq);
            data["group"] = json!(group);
            data["by"] = json!(m.from);
            Event {
                id,
                kind: "group.membership",
                ts: m.ts,
                data,
            }
        }),
        _ => message.then(|| {
            let mut data = json!({
                "seq": seq,
                "from": m.from,
                "text": m.text,
                "client_msg_id": m.client_msg_id,
                "ts": m.ts,
            });
            if let Some(r) = &m.room {
                data["room"] = json!(r);
            }
            if let Some(g) = &m.group {
                data["group"] = json!(g);
            }
            if let Some(t) = &m.to {
                data["to"] = json!(t);
            }
            if !m.mentions.is_empty() {
                data["mentions"] = json!(m.mentions);
            }
            Event {
                id,
                kind: "message.stored",
                ts: m.ts,
                data,
            }
        }),
    }
}

/// A user's online or offline event, read at presence stream sequence `seq`.
pub fn presence(user: &str, online: bool, seq: u64, ts: u64) -> Event {
    Event {
        id: format!("presence-{seq}"),
        kind: if online {
            "user.online"
        } else {
            "user.offline"
        },
        ts,
        data: json!({ "user": user }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::group::{EventKind, GroupEvent};
    use protocol::{ClientMsgId, GroupId, UserId};

    fn msg() -> StoredMessage {
        StoredMessage {
            from: UserId::parse("alice").unwrap(),
            room: None,
            to: None,
            group: Some(GroupId::parse("g").unwrap()),
            event: None,
            text: "hi".into(),
            client_msg_id: ClientMsgId::parse("c1").unwrap(),
            ts: 5,
            mentions: vec![UserId::parse("bob").unwrap()],
        }
    }

    #[test]
    fn messages_and_membership_events_follow_the_filter() {
        let e = from_stored(msg(), 7, true, false).unwrap();
        assert_eq!(e.kind, "message.stored");
        assert_eq!(e.id, "chat-7");
        assert_eq!(e.data["group"], "g");
        assert_eq!(e.data["mentions"], json!(["bob"]));
        assert!(from_stored(msg(), 7, false, true).is_none());
        let mut ev = msg();
        ev.event = Some(Box::new(GroupEvent {
            kind: EventKind::Added,
            users: vec![UserId::parse("carol").unwrap()],
            name: None,
            role: None,
            owner: None,
        }));
        let e = from_stored(ev.clone(), 8, false, true).unwrap();
        assert_eq!(e.kind, "group.membership");
        assert_eq!(e.data["kind"], "added");
        assert_eq!(e.data["users"], json!(["carol"]));
        assert_eq!(e.data["by"], "alice");
        assert!(from_stored(ev, 8, true, false).is_none());
        assert_eq!(presence("u", false, 3, 1).kind, "user.offline");
    }
}
