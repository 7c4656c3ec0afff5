//! Muted conversations: KV bucket [`BUCKET`], one key per user and muted conversation, written by
//! the gateway on `conversation_mute` and read by the gateway (for the `muted` flag of the
//! conversation list) and by the notifier (which never notifies of a muted conversation).
//!
//! - `<user>.g.<group>`: the user muted a group;
//! - `<user>.u.<other>`: the user muted their thread with `other`.
//!
//! Ids are `[A-Za-z0-9_-]`, so no key part contains a `.`. The value is `1`; unmuting deletes it.

use crate::frame::ConvTarget;
use crate::ids::{GroupId, UserId};

/// The KV bucket.
pub const BUCKET: &str = "mutes";
/// Most mutes one user's list reads.
pub const MAX_PER_USER: usize = 1000;

/// The key of `user`'s mute of `target`.
pub fn key(user: &UserId, target: &ConvTarget) -> String {
    match target {
        ConvTarget::Group(g) => format!("{user}.g.{g}"),
        ConvTarget::With(w) => format!("{user}.u.{w}"),
    }
}

/// The key pattern of every mute of `user`.
pub fn user_filter(user: &UserId) -> String {
    format!("{user}.>")
}

/// The conversation a key of `user` names.
pub fn target_of_key(user: &UserId, key: &str) -> Option<ConvTarget> {
    let rest = key.strip_prefix(user.as_str())?.strip_prefix('.')?;
    match rest.split_once('.')? {
        ("g", g) => GroupId::parse(g).ok().map(ConvTarget::Group),
        ("u", w) => UserId::parse(w).ok().map(ConvTarget::With),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let a = UserId::parse("alice").unwrap();
        for t in [
            ConvTarget::Group(GroupId::parse("g1").unwrap()),
            ConvTarget::With(UserId::parse("bob").unwrap()),
        ] {
            assert_eq!(target_of_key(&a, &key(&a, &t)), Some(t));
        }
        assert_eq!(target_of_key(&a, "alicex.g.g1"), None);
        assert_eq!(target_of_key(&a, "alice.x.g1"), None);
    }
}
