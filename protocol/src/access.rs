//! Who may hold a connection: the per-user record of KV bucket [`BUCKET`], written by auth (logout,
//! and later the admin API's revoke and ban) and read by every gateway, which keeps the whole
//! bucket in memory through one watch. So a handshake checks it with no round trip, and a change
//! reaches every gateway as soon as it is written.
//!
//! A token issued before the user's `not_before` is refused; so is every token of a banned user.
//! Records that only revoke carry a TTL as long as an access token lives (auth writes it with
//! `Nats-TTL`): once every token they could refuse has expired, they go by themselves, so the
//! bucket holds only recent revocations and standing bans.

use serde::{Deserialize, Serialize};

use crate::ids::UserId;

/// The KV bucket of access records.
pub const BUCKET: &str = "access";

/// A user's record: the value of its key (JSON).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Tokens issued (`iat`) before this time, in seconds since the Unix epoch, are refused.
    #[serde(default)]
    pub not_before: u64,
    /// Every token of the user is refused, and their sockets are closed with 4003.
    #[serde(default)]
    pub banned: bool,
}

impl Record {
    /// Whether a token of this user issued at `iat` is refused.
    pub fn refuses(&self, iat: u64) -> bool {
        self.banned || iat < self.not_before
    }
}

/// The key of `user`'s record.
pub fn key(user: &UserId) -> String {
    format!("u.{user}")
}

/// The user a key belongs to, if it is one of [`key`]'s.
pub fn user_of_key(key: &str) -> Option<UserId> {
    UserId::parse(key.strip_prefix("u.")?).ok()
}

/// The subject a record is published on, for writers that set a per-key TTL (`Nats-TTL`).
pub fn key_subject(user: &UserId) -> String {
    format!("$KV.{BUCKET}.{}", key(user))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_refusal_follows_the_record() {
        let alice = UserId::parse("alice").unwrap();
        assert_eq!(user_of_key(&key(&alice)), Some(alice.clone()));
        assert_eq!(user_of_key("x.alice"), None);
        assert_eq!(key_subject(&alice), "$KV.access.u.alice");
        let r = Record {
            not_before: 100,
            banned: false,
        };
        assert!(r.refuses(99));
        assert!(!r.refuses(100));
        assert!(Record { banned: true, ..r }.refuses(1000));
        assert_eq!(
            serde_json::from_str::<Record>("{}").unwrap(),
            Record::default()
        );
    }
}
