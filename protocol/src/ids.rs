//! Validated identifiers.
//!
//! Room ids, user ids and client message ids become part of NATS subjects and `Nats-Msg-Id` headers, so a
//! stray `.`, `*`, `>` or space would change which subscribers see a message. They are checked once, when
//! parsed at the edge, and code past the edge takes the newtype and never re-checks a `String`.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// Longest id, in bytes (ids are ASCII, so also in chars).
pub const MAX_ID_LEN: usize = 64;

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{kind} must not be empty")]
    Empty { kind: &'static str },
    #[error("{kind} is longer than {MAX_ID_LEN} characters")]
    TooLong { kind: &'static str },
    #[error("{kind} may contain only A-Z, a-z, 0-9, '_' and '-'")]
    BadChar { kind: &'static str },
}

fn check(kind: &'static str, s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if s.len() > MAX_ID_LEN {
        return Err(IdError::TooLong { kind });
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(IdError::BadChar { kind });
    }
    Ok(())
}

/// Whether `s` is a valid id of any kind (`[A-Za-z0-9_-]{1,64}`), for parsers that only borrow.
pub(crate) fn is_valid_id(s: &str) -> bool {
    check("id", s).is_ok()
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Validates `s` against `[A-Za-z0-9_-]{1,64}`.
            pub fn parse(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                check($kind, &s)?;
                Ok(Self(s))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// A chat room, `[A-Za-z0-9_-]{1,64}`.
    RoomId,
    "room id"
);
id_type!(
    /// A private group, `[A-Za-z0-9_-]{1,64}`: the same rules as a room's, and never the id of an open
    /// room that has messages.
    GroupId,
    "group id"
);
id_type!(
    /// A user, `[A-Za-z0-9_-]{1,64}`: the `sub` of a verified token.
    UserId,
    "user id"
);
id_type!(
    /// The sender's idempotency key for one message, `[A-Za-z0-9_-]{1,64}`.
    ClientMsgId,
    "client_msg_id"
);
id_type!(
    /// One WebSocket connection, unique across the cluster (a NUID).
    ConnId,
    "conn id"
);

/// The reserved user id of the server itself: the sender of messages and group changes made through
/// the admin API. No token is issued for it, and no gateway accepts one (`docs/protocol.md`).
pub const SYSTEM_USER: &str = "system";

impl UserId {
    /// The server's own account, [`SYSTEM_USER`].
    pub fn system() -> Self {
        Self(SYSTEM_USER.to_owned())
    }

    /// Whether this is [`SYSTEM_USER`], which no client may log in as.
    pub fn is_system(&self) -> bool {
        self.0 == SYSTEM_USER
    }
}

impl GroupId {
    /// The same id as a [`RoomId`], for the presence keys a group shares with rooms (`room.<id>.…`):
    /// a group and an open room never share an id, so their keys never mix.
    pub fn as_room(&self) -> RoomId {
        RoomId(self.0.clone())
    }
}

/// The optional request id of a client frame, echoed in the reply. Any string of up to 64 chars.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Debug)]
#[serde(transparent)]
pub struct FrameId(String);

impl FrameId {
    pub fn parse(s: impl Into<String>) -> Result<Self, IdError> {
        let s = s.into();
        if s.chars().count() > MAX_ID_LEN {
            return Err(IdError::TooLong { kind: "id" });
        }
        Ok(Self(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_alphabet() {
        assert!(RoomId::parse("general").is_ok());
        assert!(RoomId::parse("A-z_09").is_ok());
        assert!(RoomId::parse("x".repeat(64)).is_ok());
    }

    #[test]
    fn rejects_subject_metacharacters_and_bounds() {
        for bad in ["", "a.b", "a*", ">", "a b", "é", "a\n"] {
            assert!(RoomId::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        assert_eq!(
            RoomId::parse("x".repeat(65)),
            Err(IdError::TooLong { kind: "room id" })
        );
    }

    #[test]
    fn deserialization_validates() {
        let r: Result<UserId, _> = serde_json::from_str("\"a.b\"");
        assert!(r.is_err());
        let u: UserId = serde_json::from_str("\"alice\"").unwrap();
        assert_eq!(u.as_str(), "alice");
    }

    #[test]
    fn frame_id_counts_chars_not_bytes() {
        assert!(FrameId::parse("聊".repeat(64)).is_ok());
        assert!(FrameId::parse("x".repeat(65)).is_err());
    }
}
