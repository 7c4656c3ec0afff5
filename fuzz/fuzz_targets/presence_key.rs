//! Fuzzes the presence key parser, [`protocol::presence::Key::parse_subject`]: every gateway reads
//! each update of KV bucket `presence` through it, and the subjects come from whatever wrote the
//! bucket.
//!
//! The invariant: a subject that parses is exactly the subject the key helpers write for the ids it
//! names, so no other string is taken for a key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::presence::{Key, conn_key, key_subject, room_key, seen_key};
use protocol::{ConnId, RoomId, UserId};

fuzz_target!(|data: &[u8]| {
    let subject = String::from_utf8_lossy(data);
    let Some(key) = Key::parse_subject(&subject) else {
        return;
    };
    let user = UserId::parse(key.user()).expect("a parsed key's user is valid");
    let rebuilt = match key {
        Key::Conn { conn, .. } => conn_key(&user, &ConnId::parse(conn).expect("valid conn")),
        Key::Room { room, conn, .. } => room_key(
            &RoomId::parse(room).expect("valid room"),
            &user,
            &ConnId::parse(conn).expect("valid conn"),
        ),
        Key::Seen { .. } => seen_key(&user),
    };
    assert_eq!(key_subject(&rebuilt), subject);
    assert_eq!(key.room().is_some(), matches!(key, Key::Room { .. }));
});
