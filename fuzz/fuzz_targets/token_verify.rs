//! Fuzzes the token verifier, [`token::KeySet::verify`]: every WebSocket handshake hands it the
//! client's bearer token before anything else is done for the connection.
//!
//! An input whose first byte is even is a token as a client may send it: the rest, as text. A
//! random string almost never gets past the signature, so an odd first byte makes the rest a
//! [`Signed`] input, whose contents are signed with the key the set accepts: raw header and body
//! bytes (reaching the base64 and JSON decoding behind a good signature), or claims with any field
//! values (reaching the issuer, expiry, issued-at and subject checks).
//!
//! The invariants: an accepted token is accepted again, from the cache; signed claims are accepted
//! exactly when their issuer, times and subject are good, with the error the first bad one
//! deserves.
#![no_main]

use std::sync::LazyLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ed25519_dalek::{Signer as _, SigningKey};
use libfuzzer_sys::arbitrary::{self, Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use protocol::UserId;
use token::{CLOCK_SKEW_SECS, Claims, KeySet, Signer, VerifyError};

/// The accepted key's seed: fixed, so a crash reproduces.
const SEED: [u8; 32] = [7; 32];
const ISSUER: &str = "liaotian";
/// 2025-11-26 15:00 UTC, the clock of docs/protocol.md's examples.
const NOW: u64 = 1_764_169_200;

static SIGNER: LazyLock<Signer> = LazyLock::new(|| Signer::from_seed(&SEED, ISSUER));
static SIGNING_KEY: LazyLock<SigningKey> = LazyLock::new(|| SigningKey::from_bytes(&SEED));
/// A second accepted key, so the set is not a single entry.
static OTHER: LazyLock<Signer> = LazyLock::new(|| Signer::from_seed(&[8; 32], ISSUER));

/// What is signed with the accepted key.
#[derive(Debug, Arbitrary)]
enum Signed {
    /// Header and body bytes, base64url-encoded and signed with the accepted key.
    Parts { header: Header, body: Vec<u8> },
    /// Claims with any values, signed with the accepted key.
    Claims {
        sub: String,
        iat: u64,
        exp: u64,
        /// `None` is the accepted issuer.
        issuer: Option<String>,
        clock: Clock,
    },
}

#[derive(Debug, Arbitrary)]
enum Header {
    /// The header the auth service writes.
    Ours,
    /// A JSON header with any `alg` and `kid`.
    Json { alg: String, kid: Option<String> },
    /// Any bytes.
    Raw(Vec<u8>),
}

#[derive(Debug, Arbitrary)]
enum Clock {
    Fixed,
    /// Any time up to about the year 36,800: the clock is the system's, never the client's.
    At(u64),
}

fuzz_target!(|data: &[u8]| {
    let keys = KeySet::with_cache_capacity(ISSUER, 4);
    keys.insert(SIGNER.kid().to_owned(), SIGNER.public_key());
    keys.insert(OTHER.kid().to_owned(), OTHER.public_key());
    let Some((&mode, rest)) = data.split_first() else {
        return verify_twice(&keys, "", NOW);
    };
    if mode % 2 == 0 {
        return verify_twice(&keys, &String::from_utf8_lossy(rest), NOW);
    }
    let Ok(signed) = Signed::arbitrary_take_rest(Unstructured::new(rest)) else {
        return;
    };
    match signed {
        Signed::Parts { header, body } => {
            let header = match header {
                Header::Ours => {
                    format!(r#"{{"alg":"EdDSA","typ":"JWT","kid":"{}"}}"#, SIGNER.kid())
                        .into_bytes()
                }
                Header::Json { alg, kid } => {
                    let kid = kid.unwrap_or_else(|| SIGNER.kid().to_owned());
                    serde_json::to_vec(&serde_json::json!({"alg": alg, "kid": kid}))
                        .unwrap_or_default()
                }
                Header::Raw(bytes) => bytes,
            };
            let input = format!("{}.{}", B64.encode(header), B64.encode(body));
            let sig = SIGNING_KEY.sign(input.as_bytes());
            let token = format!("{input}.{}", B64.encode(sig.to_bytes()));
            verify_twice(&keys, &token, NOW);
        }
        Signed::Claims {
            sub,
            iat,
            exp,
            issuer,
            clock,
        } => {
            let now = match clock {
                Clock::Fixed => NOW,
                Clock::At(t) => t >> 24,
            };
            let iss = issuer.unwrap_or_else(|| ISSUER.to_owned());
            // Checked in the verifier's order, in wide integers so the oracle cannot overflow.
            let skew = u128::from(CLOCK_SKEW_SECS);
            let expected = if iss != ISSUER {
                Err(VerifyError::Issuer)
            } else if u128::from(exp) + skew <= u128::from(now) {
                Err(VerifyError::Expired)
            } else if u128::from(iat) > u128::from(now) + skew {
                Err(VerifyError::IssuedInFuture)
            } else {
                UserId::parse(sub.as_str()).map_err(|_| VerifyError::Subject)
            };
            let claims = Claims {
                sub,
                iat,
                exp,
                iss,
                kid: SIGNER.kid().to_owned(),
            };
            let token = SIGNER.sign(&claims);
            let got = keys.verify(&token, now);
            match (&got, &expected) {
                (Ok(c), Ok(user)) => assert_eq!((c.user(), c.exp()), (user, exp)),
                (Err(e), Err(want)) => assert_eq!(e, want),
                _ => {
                    panic!("verify answered {got:?}, expected {expected:?} for {claims:?} at {now}")
                }
            }
            verify_twice(&keys, &token, now);
        }
    }
});

/// Verifies `token` at `now`, and once more if it was accepted: the second answer must come from
/// the cache and say the same. (A refused token is not cached, so a second try would only check
/// its signature again: the target's costliest step.)
fn verify_twice(keys: &KeySet, token: &str, now: u64) {
    let Ok(first) = keys.verify(token, now) else {
        return;
    };
    let second = keys
        .verify(token, now)
        .expect("a token accepted once is accepted again");
    assert_eq!((first.user(), first.exp()), (second.user(), second.exp()));
    assert!(
        second.from_cache(),
        "a token verified twice is answered from the cache"
    );
}
