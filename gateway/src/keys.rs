//! Fetching the token verification keys from the auth service, at start and then periodically, so a
//! key rotation reaches every gateway without a restart.

use std::time::Duration;

use anyhow::Context;
use protocol::api::Envelope;
use token::{JwkSet, KeySet, VerifyingKey};
use tokio_util::sync::CancellationToken;

/// Fetches `<auth_url>/api/keys` and returns the usable keys.
pub async fn fetch(
    http: &reqwest::Client,
    auth_url: &str,
) -> anyhow::Result<Vec<(String, VerifyingKey)>> {
    let url = format!("{auth_url}/api/keys");
    let env: Envelope<Option<JwkSet>> = http
        .get(&url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .with_context(|| format!("GET {url}"))?
        .json()
        .await
        .with_context(|| format!("decoding {url}"))?;
    let ok = env.is_ok();
    let set = env
        .data
        .filter(|_| ok)
        .with_context(|| format!("{url} answered code {}", env.code))?;
    let keys: Vec<_> = set
        .keys
        .iter()
        .filter_map(|k| Some((k.kid.clone(), k.verifying_key()?)))
        .collect();
    anyhow::ensure!(!keys.is_empty(), "{url} served no usable Ed25519 key");
    Ok(keys)
}

/// Loads the keys once, retrying for up to `wait`, so a gateway started next to auth can come up.
pub async fn load(
    http: &reqwest::Client,
    auth_url: &str,
    keys: &KeySet,
    wait: Duration,
) -> anyhow::Result<()> {
    let k = svc::retry::until_deadline(
        "auth keys",
        wait,
        svc::retry::Backoff::constant(Duration::from_millis(500)),
        || fetch(http, auth_url),
    )
    .await?;
    keys.replace(k);
    tracing::info!(kids = ?keys.kids(), "token keys loaded");
    Ok(())
}

/// Refreshes the keys every `every` until `stop`. A failed fetch keeps the keys already held.
pub async fn refresh_loop(
    http: reqwest::Client,
    auth_url: String,
    keys: KeySet,
    every: Duration,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        match fetch(&http, &auth_url).await {
            Ok(k) => {
                let before = keys.kids();
                keys.replace(k);
                if keys.kids() != before {
                    tracing::info!(kids = ?keys.kids(), "token keys changed");
                }
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "refreshing token keys failed; keeping the current ones")
            }
        }
    }
}
