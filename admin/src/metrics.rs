//! Prometheus metrics of the admin service. Labels are bounded: route templates and status codes,
//! never ids.

use prometheus::{IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};

pub struct Metrics {
    pub registry: Registry,
    /// Requests by route template and HTTP status.
    pub requests: IntCounterVec,
    /// Messages the API stored (a repeated idempotency key included).
    pub published: IntCounter,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "admin_requests_total",
                "Admin API requests by route template and HTTP status.",
            ),
            &["route", "status"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
        let published = IntCounter::new(
            "admin_published_total",
            "Messages stored through the admin API.",
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
        let build = IntGaugeVec::new(
            Opts::new("admin_build_info", "1, labelled with the running version."),
            &["version"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        for m in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(published.clone()),
            Box::new(build),
        ] {
            registry.register(m).unwrap_or_else(|e| unreachable!("{e}"));
        }
        Self {
            registry,
            requests,
            published,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
