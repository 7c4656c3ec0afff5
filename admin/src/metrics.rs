//! Prometheus metrics of the admin service. Labels are bounded: route templates and status codes,
//! never ids.

use prometheus::{IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};

pub struct Metrics {
    pub registry: Registry,
    /// Requests by route template and HTTP status.
    pub requests: IntCounterVec,
    /// Messages the API stored (a repeated idempotency key included).
    pub published: IntCounter,
    /// Webhook events the endpoint took (2xx), by type.
    pub webhook_delivered: IntCounterVec,
    /// Webhook requests made again after a failure.
    pub webhook_retries: IntCounter,
    /// Webhook events given up on after every attempt and stored in `WEBHOOK_DEAD`, by type.
    pub webhook_dead_letters: IntCounterVec,
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
        let vec = |name: &str, help: &str| {
            IntCounterVec::new(Opts::new(name, help), &["type"])
                .unwrap_or_else(|e| unreachable!("static metric definition: {e}"))
        };
        let webhook_delivered = vec(
            "admin_webhook_delivered_total",
            "Webhook events the endpoint took (2xx), by type.",
        );
        let webhook_dead_letters = vec(
            "admin_webhook_dead_letters_total",
            "Webhook events given up on after every attempt and kept in stream WEBHOOK_DEAD, by type.",
        );
        let webhook_retries = IntCounter::new(
            "admin_webhook_retries_total",
            "Webhook requests made again after a failure.",
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
        for m in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(published.clone()),
            Box::new(build),
            Box::new(webhook_delivered.clone()),
            Box::new(webhook_dead_letters.clone()),
            Box::new(webhook_retries.clone()),
        ] {
            registry.register(m).unwrap_or_else(|e| unreachable!("{e}"));
        }
        Self {
            registry,
            requests,
            published,
            webhook_delivered,
            webhook_retries,
            webhook_dead_letters,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
