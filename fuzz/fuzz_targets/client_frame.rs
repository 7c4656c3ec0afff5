//! Fuzzes the client frame parser, [`protocol::ClientFrame::parse`]: every WebSocket text frame a
//! client sends goes through it before anything else reads it.
//!
//! Bytes that are not UTF-8 are read lossily (a WebSocket text frame is always UTF-8, so the
//! gateway never sees them, but the lossy text still tries the parser on more shapes).
//!
//! The invariant: a frame the parser accepts re-encodes ([`protocol::ClientFrame::to_json`]) to a
//! frame that parses equal, with the same `id`; a refused frame gets an `error` frame that can be
//! written.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::ClientFrame;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match ClientFrame::parse(&text) {
        Ok((id, frame)) => {
            let again = frame.to_json(id.as_ref());
            assert_eq!(
                ClientFrame::parse(&again),
                Ok((id, frame)),
                "re-encoded as {again}"
            );
        }
        Err(e) => {
            // The refusal is answerable: its `error` frame writes, with an `id` within bounds.
            assert!(
                e.id.as_ref()
                    .is_none_or(|id| id.as_str().chars().count() <= 64)
            );
            assert!(!e.to_frame().to_json().is_empty());
        }
    }
});
