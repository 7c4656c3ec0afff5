//! The signature of a webhook request: `X-Liaotian-Signature: v1=<hex HMAC-SHA256>` over
//! `<timestamp>.<body>`, with the timestamp (Unix seconds) in `X-Liaotian-Timestamp`. A receiver
//! recomputes it with the shared secret, compares in constant time, and refuses a timestamp more
//! than a few minutes old, so a captured request cannot be replayed later.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header holding the timestamp.
pub const TIMESTAMP_HEADER: &str = "X-Liaotian-Timestamp";
/// The header holding the signature.
pub const SIGNATURE_HEADER: &str = "X-Liaotian-Signature";
/// The header holding the event's id, the same on every retry (for the receiver's deduplication).
pub const ID_HEADER: &str = "X-Liaotian-Event-Id";

/// `v1=<hex>` for `body` sent at `ts`.
pub fn signature(secret: &[u8], ts: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
    mac.update(ts.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("v1={hex}")
}

/// Whether `header` is the signature of `body` at `ts` (what a receiver checks).
pub fn verify(secret: &[u8], ts: u64, body: &[u8], header: &str) -> bool {
    let want = signature(secret, ts, body);
    want.len() == header.len()
        && want
            .bytes()
            .zip(header.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_timestamp_and_body() {
        let s = signature(b"secret", 1_700_000_000, br#"{"a":1}"#);
        assert!(s.starts_with("v1=") && s.len() == 3 + 64);
        assert!(verify(b"secret", 1_700_000_000, br#"{"a":1}"#, &s));
        assert!(!verify(b"secret", 1_700_000_001, br#"{"a":1}"#, &s));
        assert!(!verify(b"other", 1_700_000_000, br#"{"a":1}"#, &s));
        assert!(!verify(b"secret", 1_700_000_000, br#"{"a":2}"#, &s));
    }
}
