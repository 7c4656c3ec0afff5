//! The payload stored in JetStream for each chat message (MessagePack with field names).
//!
//! The stream sequence is not part of the payload: JetStream assigns it, and it reaches readers through
//! the `Nats-Sequence` header (republish) or the message metadata (consumers).

use serde::{Deserialize, Serialize};

use crate::group::GroupEvent;
use crate::ids::{ClientMsgId, GroupId, RoomId, UserId};

/// One chat message as stored in stream `CHAT`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    pub from: UserId,
    /// Set for room messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<RoomId>,
    /// Set for direct messages: the recipient.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<UserId>,
    /// Set for a group's messages and events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<GroupId>,
    /// Set for a group's membership event, whose `text` is empty and whose `from` made the change.
    /// Boxed: every `send` holds a message in its future, whose size is bounded (gateway `send.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<Box<GroupEvent>>,
    #[serde(default)]
    pub text: String,
    pub client_msg_id: ClientMsgId,
    /// Milliseconds since the Unix epoch, taken by the gateway that accepted the message.
    pub ts: u64,
    /// The members a group message mentions, checked by the gateway: the notifier tells them
    /// while they are offline.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mentions: Vec<UserId>,
}

/// Why a stored payload could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("payload is not a stored message: {0}")]
    MsgPack(#[from] rmp_serde::decode::Error),
}

impl StoredMessage {
    /// MessagePack with field names, so `nats` tooling and other languages can read it.
    pub fn encode(&self) -> Vec<u8> {
        // Field names, ids and the timestamp fit in 128 bytes: sized once, the buffer does not
        // grow (and reallocate) field by field.
        let mut out = Vec::with_capacity(128 + self.text.len());
        // Serializing plain strings and integers into a Vec cannot fail.
        match rmp_serde::encode::write_named(&mut out, self) {
            Ok(()) => out,
            Err(_) => Vec::new(),
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        Ok(rmp_serde::from_slice(bytes)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let m = StoredMessage {
            mentions: Vec::new(),
            from: UserId::parse("alice").unwrap(),
            room: Some(RoomId::parse("general").unwrap()),
            to: None,
            group: None,
            event: None,
            text: "你好".into(),
            client_msg_id: ClientMsgId::parse("c1").unwrap(),
            ts: 1_700_000_000_000,
        };
        assert_eq!(StoredMessage::decode(&m.encode()).unwrap(), m);
        // The pre-sized buffer changes nothing on the wire.
        assert_eq!(m.encode(), rmp_serde::to_vec_named(&m).unwrap());
        assert!(StoredMessage::decode(b"not msgpack").is_err());
    }

    // Proves a group event round-trips, and a payload written before groups existed still reads.
    #[test]
    fn events_round_trip_and_old_payloads_read() {
        let m = StoredMessage {
            mentions: Vec::new(),
            from: UserId::parse("alice").unwrap(),
            room: None,
            to: None,
            group: Some(GroupId::parse("team").unwrap()),
            event: Some(Box::new(GroupEvent {
                kind: crate::group::EventKind::Added,
                users: vec![UserId::parse("bob").unwrap()],
                name: None,
                role: None,
                owner: None,
            })),
            text: String::new(),
            client_msg_id: ClientMsgId::parse("ev-3").unwrap(),
            ts: 1,
        };
        assert_eq!(StoredMessage::decode(&m.encode()).unwrap(), m);
        let old = rmp_serde::to_vec_named(&serde_json::json!({
            "from": "a", "room": "r", "text": "x", "client_msg_id": "c", "ts": 1
        }))
        .unwrap();
        let old = StoredMessage::decode(&old).unwrap();
        assert_eq!((old.group, old.event), (None, None));
    }

    #[test]
    fn decode_validates_ids() {
        let bad = rmp_serde::to_vec_named(&serde_json::json!({
            "from": "a.b", "text": "x", "client_msg_id": "c", "ts": 1
        }))
        .unwrap();
        assert!(StoredMessage::decode(&bad).is_err());
    }
}
