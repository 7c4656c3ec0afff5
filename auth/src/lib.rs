//! The liaotian auth service.
//!
//! It issues access tokens (Ed25519 JWTs) and serves the public keys that gateways use to check them.
//! [`token`] holds both halves: gateways link this crate for [`token::KeySet::verify`] alone, and make no
//! call to this service per connection.
//!
//! This version offers the development login only (`POST /api/login {"dev_user": …}`), and only when the
//! service is started with the explicit dev flag.

pub mod config;
pub mod envelope;
pub mod http;
pub mod jwks;
pub mod token;

pub use config::Config;
pub use token::{KeySet, Signer, VerifiedClaims, VerifyError};

use std::future::Future;

use tokio::net::TcpListener;

/// Serves the auth HTTP API on `listener` until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let state = http::AppState::new(config)?;
    let app = http::app(state);
    tracing::info!(addr = %listener.local_addr()?, "auth listening");
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await?;
    Ok(())
}
