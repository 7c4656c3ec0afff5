//! The round-trip property of client frames: every frame [`ClientFrame::parse`] accepts
//! re-encodes ([`ClientFrame::to_json`]) to a frame that parses equal, with the same `id`.
//!
//! Two generators feed it. One builds frames of every type from the types themselves, with edge
//! cases where the protocol has bounds: ids of 1 and 64 characters, frame ids of 64 multi-byte
//! characters, texts with quotes, backslashes, control characters and non-BMP characters, user
//! lists at their limits, `u64::MAX` sequences. The other writes JSON objects out of the wire field
//! names and values of every JSON kind, so the parser also meets frames no encoder would write
//! (nulls, extra fields, wrong kinds) and the property holds for whichever it accepts.

use proptest::collection::vec;
use proptest::prelude::*;
use protocol::frame::{Channel, ConvTarget, PresenceTarget};
use protocol::group::{MAX_USERS_PER_FRAME, Role};
use protocol::ids::MAX_ID_LEN;
use protocol::{ClientFrame, ClientMsgId, FrameId, GroupId, RoomId, Target, UserId};
use serde_json::{Map, Value, json};

// Proves a frame built from the types survives the trip through its JSON text unchanged.
proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]
    #[test]
    fn every_frame_re_encodes_to_itself(id in frame_id(), frame in client_frame()) {
        let text = frame.to_json(id.as_ref());
        prop_assert_eq!(ClientFrame::parse(&text), Ok((id, frame)), "text: {}", text);
    }
}

// Proves whatever JSON object the parser accepts re-encodes to a frame that parses equal.
proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]
    #[test]
    fn every_accepted_object_re_encodes_to_an_equal_frame(text in json_frame()) {
        if let Ok((id, frame)) = ClientFrame::parse(&text) {
            let again = frame.to_json(id.as_ref());
            let parsed = ClientFrame::parse(&again);
            prop_assert_eq!(parsed, Ok((id, frame)), "{} became {}", text, again);
        }
    }
}

// Proves the client frames shown in docs/protocol.md parse and survive the trip.
#[test]
fn the_documented_client_frames_round_trip() {
    let doc = include_str!("../../docs/protocol.md");
    let mut kinds = std::collections::BTreeSet::new();
    for block in doc.split("```json\n").skip(1) {
        let text = block.split("\n```").next().unwrap_or_default();
        let Ok(Value::Object(object)) = serde_json::from_str::<Value>(text) else {
            continue;
        };
        let Some(kind) = object.get("type").and_then(Value::as_str) else {
            continue;
        };
        // `read`, `history`, `conversations`, `group_receipts` and `typing` name a server frame
        // too, the answer shown after the request: told apart by the fields only answers have.
        let answer = ["read_seq", "unread", "messages", "items", "more", "count"]
            .iter()
            .any(|f| object.contains_key(*f));
        if !CLIENT_TYPES.contains(&kind) || answer {
            continue;
        }
        let (id, frame) = ClientFrame::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        let frame_kind = frame.kind();
        assert_eq!(frame_kind, kind);
        assert_eq!(
            ClientFrame::parse(&frame.to_json(id.as_ref())),
            Ok((id, frame))
        );
        kinds.insert(frame_kind);
    }
    // The doc shows 14 of the 21 types as JSON; the group frames are described in a table.
    assert!(
        kinds.len() >= 14,
        "client frames found in docs/protocol.md: {kinds:?}"
    );
}

/// Every client frame type of docs/protocol.md.
const CLIENT_TYPES: [&str; 22] = [
    "join",
    "resume",
    "leave",
    "send",
    "history",
    "watch",
    "unwatch",
    "presence_query",
    "ping",
    "group_create",
    "group_add",
    "group_remove",
    "group_quit",
    "group_role",
    "group_rename",
    "group_info",
    "conversations",
    "read",
    "conversation_hide",
    "conversation_mute",
    "group_receipts",
    "typing",
];

/// The text of a valid id, `[A-Za-z0-9_-]{1,64}`, often at the bounds.
fn id_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9_-]{1,8}",
        proptest::string::string_regex(&format!("[A-Za-z0-9_-]{{{MAX_ID_LEN}}}"))
            .expect("a valid regex"),
        Just("-".to_owned()),
        Just("_".to_owned()),
        Just("0".to_owned()),
    ]
}

fn room() -> impl Strategy<Value = RoomId> {
    id_text().prop_map(|s| RoomId::parse(s).expect("valid room id"))
}

fn group() -> impl Strategy<Value = GroupId> {
    id_text().prop_map(|s| GroupId::parse(s).expect("valid group id"))
}

fn user() -> impl Strategy<Value = UserId> {
    id_text().prop_map(|s| UserId::parse(s).expect("valid user id"))
}

fn client_msg_id() -> impl Strategy<Value = ClientMsgId> {
    id_text().prop_map(|s| ClientMsgId::parse(s).expect("valid client_msg_id"))
}

/// A character that JSON escaping or UTF-8 handling could get wrong, or any other.
fn edge_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => any::<char>(),
        1 => prop::sample::select(vec![
            '"', '\\', '/', '\0', '\n', '\r', '\t', '\u{8}', '\u{c}', '\u{1f}', '\u{7f}', '\u{80}',
            '\u{2028}', '\u{2029}', '\u{feff}', '\u{fffd}', '聊', 'é', '😀', '\u{10ffff}',
        ]),
    ]
}

/// A text of up to `max` characters, made of [`edge_char`]s.
fn edge_text(max: usize) -> impl Strategy<Value = String> {
    vec(edge_char(), 0..=max).prop_map(|chars| chars.into_iter().collect())
}

/// No id, or any text of at most 64 characters (counted as characters, not bytes).
fn frame_id() -> impl Strategy<Value = Option<FrameId>> {
    let text = prop_oneof![
        edge_text(MAX_ID_LEN),
        Just("聊".repeat(MAX_ID_LEN)),
        Just("😀".repeat(MAX_ID_LEN)),
    ];
    prop::option::of(text.prop_map(|s| FrameId::parse(s).expect("at most 64 characters")))
}

/// A message text: short and odd, or long.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => edge_text(40),
        1 => (1usize..20_000).prop_map(|n| "聊\"\\\n".repeat(n / 4 + 1)),
    ]
}

/// Sequence numbers, with the values a float or signed reading would get wrong.
fn seq() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => any::<u64>(),
        1 => prop::sample::select(vec![0, 1, (1 << 53) + 1, i64::MAX as u64 + 1, u64::MAX]),
    ]
}

/// A user list of up to `max` users: short, or exactly at the limit.
fn users(max: usize) -> impl Strategy<Value = Vec<UserId>> {
    prop_oneof![4 => vec(user(), 0..4), 1 => vec(user(), max..=max)]
}

fn limit(max: u32) -> impl Strategy<Value = u32> {
    prop_oneof![1..=max, Just(1), Just(max)]
}

fn channel() -> impl Strategy<Value = Channel> {
    prop_oneof![
        room().prop_map(Channel::Room),
        group().prop_map(Channel::Group)
    ]
}

fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        room().prop_map(Target::Room),
        group().prop_map(Target::Group),
        user().prop_map(Target::User),
    ]
}

fn conv_target() -> impl Strategy<Value = ConvTarget> {
    prop_oneof![
        group().prop_map(ConvTarget::Group),
        user().prop_map(ConvTarget::With),
    ]
}

fn role() -> impl Strategy<Value = Role> {
    prop::sample::select(vec![Role::Owner, Role::Admin, Role::Member])
}

/// A frame of any of the 22 types.
fn client_frame() -> impl Strategy<Value = ClientFrame> {
    let watched = protocol::frame::MAX_WATCHED;
    let members = MAX_USERS_PER_FRAME;
    prop_oneof![
        (channel(), prop::option::of(seq()))
            .prop_map(|(channel, since)| ClientFrame::Join { channel, since }),
        (user(), seq()).prop_map(|(with, since)| ClientFrame::Resume { with, since }),
        users(watched).prop_map(|users| ClientFrame::Watch { users }),
        users(watched).prop_map(|users| ClientFrame::Unwatch { users }),
        prop_oneof![
            room().prop_map(PresenceTarget::Room),
            group().prop_map(PresenceTarget::Group),
            users(watched).prop_map(PresenceTarget::Users),
        ]
        .prop_map(|target| ClientFrame::PresenceQuery { target }),
        (
            target(),
            prop::option::of(seq()),
            prop::option::of(seq()),
            limit(protocol::history::MAX_LIMIT)
        )
            .prop_map(|(target, before, after, limit)| ClientFrame::History {
                target,
                before,
                after,
                limit
            }),
        channel().prop_map(|channel| ClientFrame::Leave { channel }),
        (
            target(),
            text(),
            client_msg_id(),
            users(protocol::frame::MAX_MENTIONS)
        )
            .prop_map(|(target, text, client_msg_id, mentions)| {
                // Only a group message may mention.
                let mentions = match target {
                    protocol::Target::Group(_) => mentions,
                    _ => Vec::new(),
                };
                ClientFrame::Send {
                    target,
                    text,
                    client_msg_id,
                    mentions,
                }
            }),
        Just(ClientFrame::Ping),
        (prop::option::of(group()), text(), users(members)).prop_map(|(group, name, members)| {
            ClientFrame::GroupCreate {
                group,
                name,
                members,
            }
        }),
        (group(), users(members)).prop_map(|(group, users)| ClientFrame::GroupAdd { group, users }),
        (group(), users(members))
            .prop_map(|(group, users)| ClientFrame::GroupRemove { group, users }),
        group().prop_map(|group| ClientFrame::GroupQuit { group }),
        (group(), user(), role()).prop_map(|(group, user, role)| ClientFrame::GroupRole {
            group,
            user,
            role
        }),
        (group(), text()).prop_map(|(group, name)| ClientFrame::GroupRename { group, name }),
        group().prop_map(|group| ClientFrame::GroupInfo { group }),
        (limit(protocol::conv::MAX_LIST), prop::option::of(seq()))
            .prop_map(|(limit, before)| ClientFrame::Conversations { limit, before }),
        (conv_target(), seq()).prop_map(|(target, seq)| ClientFrame::Read { target, seq }),
        conv_target().prop_map(|target| ClientFrame::ConversationHide { target }),
        (conv_target(), any::<bool>())
            .prop_map(|(target, muted)| ClientFrame::ConversationMute { target, muted }),
        (group(), seq()).prop_map(|(group, seq)| ClientFrame::GroupReceipts { group, seq }),
        conv_target().prop_map(|target| ClientFrame::Typing { target }),
    ]
}

/// The JSON text of an object the parser may or may not accept: a valid frame with a few fields
/// removed, added, nulled or replaced, or an object of wire fields with values of any kind.
fn json_frame() -> impl Strategy<Value = String> {
    let mutated = (frame_id(), client_frame(), vec(edit(), 0..3)).prop_map(|(id, frame, edits)| {
        let mut object = match serde_json::from_str(&frame.to_json(id.as_ref())) {
            Ok(Value::Object(object)) => object,
            _ => Map::new(),
        };
        for edit in edits {
            edit.apply(&mut object);
        }
        object
    });
    let kind = prop_oneof![
        8 => prop::sample::select(CLIENT_TYPES.to_vec()).prop_map(Value::from),
        1 => json_value(),
    ];
    let id = prop_oneof![
        2 => Just(None),
        2 => frame_id().prop_map(|id| id.map(|id| Value::from(id.as_str()))),
        1 => json_value().prop_map(Some),
    ];
    let field = (
        prop::sample::select(FIELDS.to_vec()),
        prop_oneof![3 => valid_value(), 1 => json_value()],
    );
    let assembled = (kind, id, vec(field, 0..6)).prop_map(|(kind, id, fields)| {
        let mut object = Map::new();
        object.insert("type".into(), kind);
        if let Some(id) = id {
            object.insert("id".into(), id);
        }
        for (name, value) in fields {
            object.insert(name.into(), value);
        }
        object
    });
    (prop_oneof![mutated, assembled], any::<bool>()).prop_map(|(object, pretty)| {
        let object = Value::Object(object);
        if pretty {
            serde_json::to_string_pretty(&object).unwrap_or_default()
        } else {
            object.to_string()
        }
    })
}

/// One change to a frame's JSON object.
#[derive(Debug, Clone)]
enum Edit {
    /// Takes out the field at this position (modulo the field count).
    Remove(usize),
    /// Sets the field at this position to `null`.
    Null(usize),
    /// Sets a field to a value, adding it if absent.
    Set(&'static str, Value),
}

impl Edit {
    fn apply(self, object: &mut Map<String, Value>) {
        let nth = |object: &Map<String, Value>, i: usize| {
            let len = object.len().max(1);
            object.keys().nth(i % len).cloned()
        };
        match self {
            Edit::Remove(i) => {
                if let Some(key) = nth(object, i) {
                    object.remove(&key);
                }
            }
            Edit::Null(i) => {
                if let Some(key) = nth(object, i) {
                    object.insert(key, Value::Null);
                }
            }
            Edit::Set(key, value) => {
                object.insert(key.into(), value);
            }
        }
    }
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        any::<usize>().prop_map(Edit::Remove),
        any::<usize>().prop_map(Edit::Null),
        (
            prop::sample::select(FIELDS.to_vec()),
            prop_oneof![valid_value(), json_value()]
        )
            .prop_map(|(key, value)| Edit::Set(key, value)),
    ]
}

/// The body field names of the client frames, `type` and `id`, and two that no frame has.
const FIELDS: [&str; 22] = [
    "type",
    "id",
    "room",
    "group",
    "to",
    "with",
    "user",
    "users",
    "members",
    "since",
    "before",
    "after",
    "limit",
    "seq",
    "text",
    "name",
    "client_msg_id",
    "role",
    "target",
    "mentions",
    "muted",
    "extra",
];

/// A value some field of some frame accepts.
fn valid_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        id_text().prop_map(Value::from),
        seq().prop_map(Value::from),
        (1u32..=100).prop_map(Value::from),
        vec(id_text(), 0..4).prop_map(|users| json!(users)),
        role().prop_map(|role| json!(role)),
        edge_text(20).prop_map(Value::from),
    ]
}

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        seq().prop_map(Value::from),
        edge_text(10).prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            vec(("[a-z]{1,5}", inner), 0..4)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
        ]
    })
}
