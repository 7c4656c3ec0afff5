//! The liaotian auth service.
//!
//! It logs WeChat mini-program users in (`code2Session`), issues access tokens (Ed25519 JWTs) and
//! refresh tokens (opaque, in Redis, rotated on every use), serves the public keys that gateways use to
//! check access tokens, and, when enabled, serves the content check to gateways over NATS.
//! The tokens themselves are the `token` crate's: gateways link that crate alone for
//! [`token::KeySet::verify`], and make no call to this service per connection.
//!
//! With a subscribe-message template configured it also runs the notifier, which tells offline
//! users of direct messages and mentions through WeChat ([`notify`]).
//!
//! The development login (`POST /api/login {"dev_user": …}`) is only there when the service is started
//! with the explicit dev flag. See `docs/wechat.md`.

pub mod access;
pub mod config;
pub mod content;
pub mod exchange;
pub mod http;
pub mod keyring;
pub mod login;
pub mod metrics;
pub mod notify;
pub mod state;
pub mod store;
pub mod wechat;

#[cfg(feature = "test-support")]
pub mod fake_wechat;

pub use config::Config;
pub use token::{self, KeySet, Signer, VerifiedClaims, VerifyError};

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

/// Builds the service state: keys, Redis, WeChat client, NATS and, when enabled, the content-check
/// service (spawned). Redis and NATS are connected lazily, so auth starts while they are down.
pub async fn start(config: Config) -> anyhow::Result<http::AppState> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut state = http::AppState::new(config)?;
    if let Some(url) = &state.config.nats_url {
        let nats = svc::nats::connect(url, "liaotian-auth")
            .await
            .context("AUTH_NATS_URL")?;
        state.nats = Some(nats.client);
    }
    // One access token holder for the process: the content check and the notifier share it.
    let tokens = state
        .wechat
        .clone()
        .map(|w| Arc::new(wechat::TokenHolder::new(w)));
    if let (Some(settings), Some(nats), Some(store), Some(tokens)) = (
        state.config.notify.clone(),
        state.nats.clone(),
        state.store.clone(),
        tokens.clone(),
    ) {
        let task = notify::spawn(settings, tokens, store, state.metrics.clone(), nats);
        state.notifier = Some(task.abort_handle());
    }
    if let (Some(settings), Some(nats), Some(store), Some(tokens)) = (
        state.config.content_check.clone(),
        state.nats.clone(),
        state.store.clone(),
        tokens,
    ) {
        let checker = content::Checker {
            settings,
            tokens,
            store,
            metrics: state.metrics.clone(),
        };
        let sub = content::subscribe(&nats)
            .await
            .context("subscribing the content check")?;
        tokio::spawn(async move {
            if let Err(e) = content::serve(nats, sub, checker).await {
                tracing::error!(error = %format!("{e:#}"), "content check stopped");
            }
        });
    }
    Ok(state)
}

/// Serves the auth HTTP API of `state` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    state: http::AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let nats = state.nats.clone();
    let app = http::app(state);
    tracing::info!(addr = %listener.local_addr()?, "auth listening");
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await?;
    if let Some(nats) = nats {
        svc::final_flush(&nats).await;
    }
    Ok(())
}

/// [`start`] then [`serve`].
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let state = start(config).await?;
    serve(listener, state, shutdown).await
}
