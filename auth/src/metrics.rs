//! Prometheus metrics of the auth service. Labels are bounded: results and API names, never users.

use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry};

pub struct Metrics {
    pub registry: Registry,
    /// Login attempts by result.
    pub logins: IntCounterVec,
    /// Refresh attempts by result.
    pub refreshes: IntCounterVec,
    /// WeChat API calls by API and result (`ok`, a known errcode, `other`, `transport`).
    pub wechat_calls: IntCounterVec,
    /// Duration of WeChat API calls by API.
    pub wechat_seconds: HistogramVec,
    /// Content checks by reason (`pass`, `review`, `risky`, `api_error`, `unknown_user`) and decision.
    pub content_checks: IntCounterVec,
    /// Time the content-check service takes to answer, by decision: the latency it adds to a send.
    pub content_check_seconds: HistogramVec,
    /// Subscribe messages sent by the notifier.
    pub notify_sent: IntCounter,
    /// Notifications not sent, by reason (`online`, `recently_online`, `muted`, `coalesced`,
    /// `no_grant`, `no_openid`, `sender`, `no_template`).
    pub notify_skipped: IntCounterVec,
    /// Notifications WeChat did not send, by errcode (`43101`, `47003`, `45009`, `43108`,
    /// `token`, `network`, `other`).
    pub notify_failed: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)
                .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
            registry
                .register(Box::new(c.clone()))
                .unwrap_or_else(|e| unreachable!("{e}"));
            c
        };
        let logins = counter(
            "auth_logins_total",
            "Login attempts by result (ok, relogin, refused, rate_limited, unavailable, internal, bad_request).",
            &["result"],
        );
        let refreshes = counter(
            "auth_refreshes_total",
            "Refresh attempts by result (ok, invalid, reused, unavailable).",
            &["result"],
        );
        let wechat_calls = counter(
            "auth_wechat_calls_total",
            "WeChat API calls by API and result (ok, errcode, other, transport).",
            &["api", "result"],
        );
        let content_checks = counter(
            "auth_content_checks_total",
            "Content checks answered, by reason (pass, review, risky, api_error, unknown_user) and decision.",
            &["reason", "decision"],
        );
        let histogram = |name: &str, help: &str, label: &str| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ]),
                &[label],
            )
            .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
            registry
                .register(Box::new(h.clone()))
                .unwrap_or_else(|e| unreachable!("{e}"));
            h
        };
        let wechat_seconds = histogram(
            "auth_wechat_call_seconds",
            "Duration of WeChat API calls, by API.",
            "api",
        );
        let content_check_seconds = histogram(
            "auth_content_check_seconds",
            "Time from a content-check request to its answer, by decision: the latency the check adds to a send.",
            "decision",
        );
        // 1, labelled with the version: which versions run, for a rolling upgrade's dashboard.
        let build_info = prometheus::IntGaugeVec::new(
            Opts::new("auth_build_info", "1, labelled with the running version."),
            &["version"],
        )
        .unwrap_or_else(|e| unreachable!("{e}"));
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        registry
            .register(Box::new(build_info))
            .unwrap_or_else(|e| unreachable!("{e}"));
        let notify_skipped = counter(
            "auth_notify_skipped_total",
            "Offline notifications not sent, by reason (online, recently_online, muted, coalesced, no_grant, no_openid, sender, no_template).",
            &["reason"],
        );
        let notify_failed = counter(
            "auth_notify_failed_total",
            "Offline notifications WeChat did not send, by errcode (43101, 47003, 45009, 43108, token, network, other).",
            &["errcode"],
        );
        let notify_sent = IntCounter::new(
            "auth_notify_sent_total",
            "Subscribe messages the notifier sent.",
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
        registry
            .register(Box::new(notify_sent.clone()))
            .unwrap_or_else(|e| unreachable!("{e}"));
        Self {
            registry,
            notify_sent,
            notify_skipped,
            notify_failed,
            logins,
            refreshes,
            wechat_calls,
            wechat_seconds,
            content_checks,
            content_check_seconds,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
