//! Prometheus metrics of one persister. Labels are bounded: never a user or room id.

use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

pub struct Metrics {
    registry: Registry,
    /// Messages written to the store (counted once per successful batch write, so redeliveries count again).
    pub persisted: IntCounter,
    /// Batches written.
    pub batches: IntCounter,
    /// Messages a batch skipped, read from the stream and written with it in order.
    pub gap_filled: IntCounter,
    /// Failed batch writes (each is retried).
    pub write_errors: IntCounter,
    /// Messages set aside as dead letters, by reason (`payload` or `subject`).
    pub poison: IntCounterVec,
    /// Messages of the consumer not yet delivered to this persister (JetStream `num_pending`).
    pub lag_messages: IntGauge,
    /// Age of the oldest message fetched but not yet persisted, in seconds (0 when caught up).
    pub oldest_unpersisted_age_seconds: IntGauge,
    /// History requests received.
    pub history_requests: IntCounter,
    /// History requests answered by joining an identical request's read.
    pub history_coalesced: IntCounter,
    /// History requests refused as invalid.
    pub history_bad_requests: IntCounter,
    /// Page reads issued to the store.
    pub store_reads: IntCounter,
    /// Page reads that failed.
    pub store_read_errors: IntCounter,
    /// Stream `CHAT`'s stored bytes and its `max_bytes`, read every [`crate::STREAM_WATCH_EVERY`]:
    /// at `max_bytes` the oldest messages go, persisted or not.
    pub stream_bytes: IntGauge,
    pub stream_max_bytes: IntGauge,
    /// 1, labelled with the version: which versions run.
    pub build_info: prometheus::IntGaugeVec,
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: T) -> T {
    // Names are static and unique; registration cannot fail.
    let _ = r.register(Box::new(m.clone()));
    m
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let counter = |name: &str, help: &str| {
            reg(
                &r,
                IntCounter::new(name, help).unwrap_or_else(|e| unreachable!("{e}")),
            )
        };
        let gauge = |name: &str, help: &str| {
            reg(
                &r,
                IntGauge::new(name, help).unwrap_or_else(|e| unreachable!("{e}")),
            )
        };
        let poison = reg(
            &r,
            IntCounterVec::new(
                Opts::new(
                    "persister_poison_messages_total",
                    "Stream messages set aside as dead letters and terminated, by reason.",
                ),
                &["reason"],
            )
            .unwrap_or_else(|e| unreachable!("{e}")),
        );
        for reason in ["payload", "subject"] {
            poison.with_label_values(&[reason]);
        }
        let build_info = reg(
            &r,
            prometheus::IntGaugeVec::new(
                Opts::new(
                    "persister_build_info",
                    "1, labelled with the running version.",
                ),
                &["version"],
            )
            .unwrap_or_else(|e| unreachable!("{e}")),
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        Self {
            persisted: counter(
                "persister_messages_persisted_total",
                "Messages written to the history store (redeliveries count again).",
            ),
            batches: counter(
                "persister_batches_total",
                "Batches written to the history store.",
            ),
            gap_filled: counter(
                "persister_gap_filled_total",
                "Messages a batch skipped (a delivery lost in transit), read from the stream and written in order.",
            ),
            write_errors: counter(
                "persister_write_errors_total",
                "Batch writes that failed and were retried.",
            ),
            poison,
            lag_messages: gauge(
                "persister_lag_messages",
                "Messages in stream CHAT not yet delivered to the persister consumer.",
            ),
            oldest_unpersisted_age_seconds: gauge(
                "persister_oldest_unpersisted_age_seconds",
                "Age of the oldest fetched message not yet persisted; compare with the stream's max_age.",
            ),
            history_requests: counter(
                "persister_history_requests_total",
                "History requests received.",
            ),
            history_coalesced: counter(
                "persister_history_coalesced_total",
                "History requests answered by an identical request's store read.",
            ),
            history_bad_requests: counter(
                "persister_history_bad_requests_total",
                "History requests refused as invalid.",
            ),
            store_reads: counter(
                "persister_store_reads_total",
                "History page reads issued to the store.",
            ),
            store_read_errors: counter(
                "persister_store_read_errors_total",
                "History page reads that failed.",
            ),
            stream_bytes: gauge(
                "persister_stream_bytes",
                "Bytes stream CHAT holds (read every 15 s).",
            ),
            stream_max_bytes: gauge(
                "persister_stream_max_bytes",
                "Stream CHAT's max_bytes: at it, the oldest messages go, persisted or not.",
            ),
            build_info,
            registry: r,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metrics.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
