//! Fuzzes the history request decoder: the persister reads each request body on
//! `chat.svc.history` with `serde_json::from_slice::<HistoryRequest>` and then asks
//! [`protocol::history::ConvRef::conversation`] for the conversation (persister/src/service.rs and
//! `PageQuery::from_request`); this target takes the same two steps.
//!
//! The invariants: a decoded request re-encodes to one that decodes equal; a conversation it names
//! maps back to the same reference, and its subjects parse back to it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::history::{ConvRef, HistoryRequest};
use protocol::subject::Conversation;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = serde_json::from_slice::<HistoryRequest>(data) else {
        return;
    };
    let again = serde_json::to_vec(&request).unwrap_or_default();
    assert_eq!(
        serde_json::from_slice::<HistoryRequest>(&again)
            .ok()
            .as_ref(),
        Some(&request)
    );
    let Some(conv) = request.conv.conversation() else {
        // Only a thread with oneself names no conversation.
        assert!(matches!(&request.conv, ConvRef::Dm(a, b) if a == b));
        return;
    };
    assert_eq!(ConvRef::from(&conv).conversation().as_ref(), Some(&conv));
    assert_eq!(
        Conversation::from_subject(&conv.ingest_subject()).as_ref(),
        Some(&conv)
    );
    assert_eq!(
        Conversation::from_subject(&conv.deliver_subject()).as_ref(),
        Some(&conv)
    );
});
