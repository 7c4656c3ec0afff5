//! The presence key schema: the keys of KV bucket `presence` that every gateway writes and reads,
//! and the `seen.<user>` value. A gateway's own presence code turns these into events; the schema
//! is here because every gateway of a cluster (and an operator's `nats kv` commands) must agree on
//! it.
//!
//! - `conn.<user>.<conn>`: one per open connection; the user is online while any exists.
//! - `room.<room>.<user>.<conn>`: one per connection in a room.
//! - `seen.<user>`: [`Seen`], the time of the user's latest activity, for `last_seen`.
//!
//! Ids are `[A-Za-z0-9_-]`, so no key part contains a `.`.

use serde::{Deserialize, Serialize};

use crate::{ConnId, RoomId, UserId};

/// The KV bucket.
pub const BUCKET: &str = "presence";
/// The stream behind the bucket.
pub const STREAM: &str = "KV_presence";
/// The subject prefix of the bucket's keys (`$KV.<BUCKET>.`).
pub const KEY_PREFIX: &str = "$KV.presence.";

/// The value of `seen.<user>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    /// Milliseconds since the Unix epoch.
    pub ts: u64,
}

/// `conn.<user>.<conn>`.
pub fn conn_key(user: &UserId, conn: &ConnId) -> String {
    format!("conn.{user}.{conn}")
}

/// `room.<room>.<user>.<conn>`.
pub fn room_key(room: &RoomId, user: &UserId, conn: &ConnId) -> String {
    format!("room.{room}.{user}.{conn}")
}

/// `seen.<user>`.
pub fn seen_key(user: &UserId) -> String {
    format!("seen.{user}")
}

/// The subject of `key` in the bucket's stream.
pub fn key_subject(key: &str) -> String {
    format!("{KEY_PREFIX}{key}")
}

/// The subjects of one user's keys: their connections and their `seen` time.
pub fn user_filters(user: &UserId) -> Vec<String> {
    vec![
        format!("{KEY_PREFIX}conn.{user}.*"),
        format!("{KEY_PREFIX}seen.{user}"),
    ]
}

/// The subjects of one room's keys.
pub fn room_filter(room: &RoomId) -> String {
    format!("{KEY_PREFIX}room.{room}.*.*")
}

/// The subjects of every room's keys.
pub const ALL_ROOMS_FILTER: &str = "$KV.presence.room.>";

/// A key of the bucket, read from its subject, borrowing from it. Ids are checked, so a key written
/// by something else than a gateway is not taken for one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key<'a> {
    Conn {
        user: &'a str,
        conn: &'a str,
    },
    Room {
        room: &'a str,
        user: &'a str,
        conn: &'a str,
    },
    Seen {
        user: &'a str,
    },
}

impl<'a> Key<'a> {
    /// Parses `$KV.presence.<key>`; `None` for anything else.
    pub fn parse_subject(subject: &'a str) -> Option<Self> {
        let key = subject.strip_prefix(KEY_PREFIX)?;
        let mut parts = key.split('.');
        let kind = parts.next()?;
        let (a, b, c, rest) = (parts.next(), parts.next(), parts.next(), parts.next());
        let key = match (kind, a, b, c, rest) {
            ("conn", Some(user), Some(conn), None, None) => Key::Conn { user, conn },
            ("room", Some(room), Some(user), Some(conn), None) => Key::Room { room, user, conn },
            ("seen", Some(user), None, None, None) => Key::Seen { user },
            _ => return None,
        };
        key.ids_valid().then_some(key)
    }

    /// The room of a room key.
    pub fn room(&self) -> Option<&'a str> {
        match self {
            Key::Room { room, .. } => Some(room),
            _ => None,
        }
    }

    /// The user the key is about.
    pub fn user(&self) -> &'a str {
        match self {
            Key::Conn { user, .. } | Key::Room { user, .. } | Key::Seen { user } => user,
        }
    }

    fn ids_valid(&self) -> bool {
        let ok = crate::ids::is_valid_id;
        match self {
            Key::Conn { user, conn } => ok(user) && ok(conn),
            Key::Room { room, user, conn } => ok(room) && ok(user) && ok(conn),
            Key::Seen { user } => ok(user),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves keys written by the helpers parse back to what they name, and nothing else parses.
    #[test]
    fn keys_round_trip_and_others_are_refused() {
        let (u, c, r) = (
            UserId::parse("alice").unwrap(),
            ConnId::parse("c1").unwrap(),
            RoomId::parse("lobby").unwrap(),
        );
        assert_eq!(KEY_PREFIX, format!("$KV.{BUCKET}."));
        assert_eq!(STREAM, format!("KV_{BUCKET}"));
        assert_eq!(
            Key::parse_subject(&key_subject(&conn_key(&u, &c))),
            Some(Key::Conn {
                user: "alice",
                conn: "c1"
            })
        );
        let room = key_subject(&room_key(&r, &u, &c));
        assert_eq!(
            Key::parse_subject(&room),
            Some(Key::Room {
                room: "lobby",
                user: "alice",
                conn: "c1"
            })
        );
        assert_eq!(
            Key::parse_subject(&room).and_then(|k| k.room()),
            Some("lobby")
        );
        assert!(room.starts_with(ALL_ROOMS_FILTER.trim_end_matches('>')));
        assert_eq!(
            Key::parse_subject(&key_subject(&seen_key(&u))),
            Some(Key::Seen { user: "alice" })
        );
        for bad in [
            "$KV.presence.conn.alice",
            "$KV.presence.conn.alice.c1.x",
            "$KV.presence.room.lobby.alice",
            "$KV.presence.other.alice",
            "$KV.presence.seen.al ice",
            "$KV.other.conn.alice.c1",
            "conn.alice.c1",
        ] {
            assert_eq!(Key::parse_subject(bad), None, "{bad}");
        }
        let seen: Seen = serde_json::from_str(r#"{"ts":1764169500000}"#).unwrap();
        assert_eq!(seen.ts, 1_764_169_500_000);
    }
}
