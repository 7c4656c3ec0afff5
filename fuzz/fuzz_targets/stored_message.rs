//! Fuzzes the stored-message decoder, [`protocol::StoredMessage::decode`]: the persister and every
//! gateway decode each MessagePack payload of stream `CHAT` with it, and anyone who may publish on
//! `chat.in.>` chooses those bytes.
//!
//! The invariants: a decoded message encodes to bytes that decode equal, and its history item
//! ([`protocol::frame::Item`], what history pages and live frames carry) reads back from its JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::StoredMessage;
use protocol::frame::Item;

fuzz_target!(|data: &[u8]| {
    let Ok(message) = StoredMessage::decode(data) else {
        return;
    };
    let bytes = message.encode();
    assert_eq!(StoredMessage::decode(&bytes).ok().as_ref(), Some(&message));
    let item = Item::from_stored(message, 2, 1);
    let json = item.to_json();
    assert_eq!(
        serde_json::from_str::<Item>(&json).ok().as_ref(),
        Some(&item),
        "item JSON {json}"
    );
});
