//! The state the admin handlers share, on its own so the routes and the service start both
//! depend on it and not on each other.

use std::sync::Arc;

use crate::config::Config;
use crate::metrics::Metrics;

/// Everything a handler needs. Cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub config: Config,
    pub nats: async_nats::Client,
    pub groups: gateway::groups::Groups,
    pub publisher: gateway::publish::Publisher,
    pub backlog: gateway::backlog::Backlog,
    pub presence: gateway::presence::Presence,
    /// Auth's refresh-token store, when `AUTH_REDIS_URL` is set.
    pub store: Option<auth::store::Store>,
    pub metrics: Arc<Metrics>,
}

impl AppState {
    pub fn new(inner: Inner) -> Self {
        Self(Arc::new(inner))
    }
}

impl std::ops::Deref for AppState {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}
