//! The state every handler and session shares, on its own so that the HTTP routes (`server`) and
//! the sessions they start (`session`) both depend on it and not on each other.

use std::sync::Arc;

use token::KeySet;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::publish::Publisher;

/// Everything a handler or session needs. Cheap to clone: one reference count, since every
/// connection holds one for its whole life.
#[derive(Clone)]
pub struct AppState(Arc<AppStateInner>);

impl AppState {
    pub fn new(inner: AppStateInner) -> Self {
        Self(Arc::new(inner))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppStateInner;

    fn deref(&self) -> &AppStateInner {
        &self.0
    }
}

pub struct AppStateInner {
    pub config: Arc<Config>,
    pub keys: KeySet,
    /// Revocations and bans (`access.rs`), checked at each handshake.
    pub access: crate::access::Access,
    pub hub: Hub,
    /// Connections and sends per user, across gateways (`userlimit.rs`).
    pub user_limits: crate::userlimit::UserLimits,
    pub publisher: Publisher,
    pub backlog: crate::backlog::Backlog,
    pub presence: crate::presence::Presence,
    pub groups: crate::groups::Groups,
    /// Muted conversations (`mutes.rs`).
    pub mutes: crate::mutes::Mutes,
    /// Set when `GATEWAY_CONTENT_CHECK` is on.
    pub content: Option<crate::content::ContentChecker>,
    pub metrics: Arc<Metrics>,
    pub nats: async_nats::Client,
    /// Cancelled on shutdown; sessions then close with 1001.
    pub shutdown: CancellationToken,
    /// One permit per open connection: the connection cap.
    pub conn_limit: Arc<Semaphore>,
    /// Tracks sessions so shutdown can wait for them.
    pub sessions: TaskTracker,
    pub index_html: Arc<str>,
}
