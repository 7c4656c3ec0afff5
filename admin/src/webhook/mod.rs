//! Events out: the webhook relay that POSTs chosen events, signed, to the app backend's endpoint
//! (`WEBHOOK_URL`), at least once, with bounded retries and a dead-letter stream. See
//! `docs/operations.md`, "Webhooks", for the events, the signature and the `nats` recipes; for
//! many consumers inside the cluster, subscribing to NATS directly is the cheaper path.

pub mod events;
pub mod relay;
pub mod sign;

use std::collections::HashSet;
use std::time::Duration;

use events::Kind;
pub use relay::Settings;

/// Shortest webhook secret, in bytes.
pub const MIN_SECRET_LEN: usize = 32;
/// Defaults of the `WEBHOOK_*` variables.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_MAX_ATTEMPTS: u32 = 6;
pub const DEFAULT_CONCURRENCY: usize = 32;
/// Bounds, so one event's retries stay within a few minutes.
pub const MAX_TIMEOUT_MS: u64 = 30_000;
pub const MAX_ATTEMPTS: u64 = 10;
pub const MAX_CONCURRENCY: u64 = 256;

/// Reads the relay's variables; `None` without `WEBHOOK_URL`.
pub fn settings<F: Fn(&str) -> Option<String>>(env: &mut svc::env::Env<F>) -> Option<Settings> {
    let url = env.with("WEBHOOK_URL", |v| {
        if v.starts_with("https://") || v.starts_with("http://") {
            Ok(v.to_owned())
        } else {
            Err("expected an http:// or https:// URL".into())
        }
    });
    let secret = env.with("WEBHOOK_SECRET", |v| {
        (v.len() >= MIN_SECRET_LEN)
            .then(|| v.as_bytes().to_vec())
            .ok_or_else(|| format!("expected at least {MIN_SECRET_LEN} bytes"))
    });
    let kinds = env
        .with("WEBHOOK_EVENTS", |v| {
            v.split(',')
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(|k| {
                    Kind::parse(k).ok_or_else(|| {
                        format!("unknown event kind {k:?}: use message, membership, presence")
                    })
                })
                .collect::<Result<HashSet<_>, _>>()
        })
        .unwrap_or_else(|| [Kind::Message, Kind::Membership, Kind::Presence].into());
    let bounded = |n: Option<u64>, max: u64| n.map(|n| n.min(max));
    let timeout = bounded(env.positive("WEBHOOK_TIMEOUT_MS"), MAX_TIMEOUT_MS)
        .map_or(DEFAULT_TIMEOUT, Duration::from_millis);
    let max_attempts = bounded(env.positive("WEBHOOK_MAX_ATTEMPTS"), MAX_ATTEMPTS)
        .map_or(DEFAULT_MAX_ATTEMPTS, |n| u32::try_from(n).unwrap_or(1));
    let concurrency = bounded(env.positive("WEBHOOK_CONCURRENCY"), MAX_CONCURRENCY)
        .map_or(DEFAULT_CONCURRENCY, |n| usize::try_from(n).unwrap_or(1));
    let url = url?;
    let Some(secret) = secret else {
        env.invalid(
            "WEBHOOK_SECRET",
            format!("WEBHOOK_URL is set: requests are signed with this secret of {MIN_SECRET_LEN}+ bytes"),
        );
        return None;
    };
    Some(Settings {
        url,
        secret,
        kinds,
        timeout,
        max_attempts,
        concurrency,
        first_backoff: relay::FIRST_BACKOFF,
    })
}
