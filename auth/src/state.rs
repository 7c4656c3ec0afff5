//! The state the auth handlers share, on its own so that the routes (`http`) and the login
//! exchange (`login`) both depend on it and not on each other.

use std::sync::Arc;

use crate::Config;
use crate::exchange::Exchanges;
use crate::keyring::KeyRing;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::wechat::WeChatClient;

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub keys: KeyRing,
    pub metrics: Arc<Metrics>,
    /// Redis, when `AUTH_REDIS_URL` is set.
    pub store: Option<Store>,
    /// The WeChat API, when credentials are set.
    pub wechat: Option<WeChatClient>,
    /// NATS, when `AUTH_NATS_URL` is set.
    pub nats: Option<async_nats::Client>,
    pub exchanges: Arc<Exchanges>,
    /// The notifier's task, when it runs (`notify`): tests stop it to restart it.
    pub notifier: Option<tokio::task::AbortHandle>,
}

impl AppState {
    /// State without NATS; [`crate::start`] adds it.
    pub fn new(config: Config) -> anyhow::Result<Self> {
        config.validate()?;
        let keys = KeyRing::load(&config)?;
        let metrics = Arc::new(Metrics::new());
        let store = config
            .redis_url
            .as_ref()
            .map(|u| Store::new(&u.0, config.refresh_ttl_secs, config.session_key_ttl_secs))
            .transpose()?;
        let wechat = config
            .wechat
            .clone()
            .map(|w| WeChatClient::new(w, metrics.clone()))
            .transpose()?;
        if config.wechat.is_some() && config.dev_login {
            tracing::warn!(
                "dev login is on next to WeChat login (AUTH_DEV_LOGIN): anyone can log in as anyone"
            );
        }
        tracing::info!(
            kid = keys.signer().kid(),
            served_keys = keys.public_keys().len(),
            dev_login = config.dev_login,
            wechat = config.wechat.is_some(),
            "signing key loaded"
        );
        Ok(Self {
            config: Arc::new(config),
            keys,
            metrics,
            store,
            wechat,
            nats: None,
            exchanges: Arc::default(),
            notifier: None,
        })
    }
}
