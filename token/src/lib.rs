//! liaotian's access tokens, on their own so that every service that checks one links only this.
//!
//! The auth service signs with [`Signer`]; gateways check with [`KeySet::verify`], which needs only
//! public keys and makes no call per connection; [`Jwk`]/[`JwkSet`] carry the public keys between
//! them (`GET /api/keys`). A gateway depends on this crate, not on the auth service, so it compiles
//! none of auth's Redis, WeChat or HTTP code, and "only auth talks to WeChat" holds by the build.
//!
//! The JWT is written by hand rather than with `jsonwebtoken`: it is one algorithm (EdDSA over
//! Ed25519, RFC 8037), and `jsonwebtoken` would pull in RSA and more for none of our use.

mod cache;
pub mod jwk;
pub mod jwt;

pub use ed25519_dalek::VerifyingKey;
pub use jwk::{Jwk, JwkSet};
pub use jwt::{
    CLOCK_SKEW_SECS, Claims, KeySet, Signer, VerifiedClaims, VerifyError, kid_of, now_secs,
};
