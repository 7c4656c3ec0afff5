//! Prometheus metrics of one gateway. Labels are bounded: never a user or room id.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};
use protocol::ErrorCode;

pub struct Metrics {
    registry: Registry,
    pub connections: IntGauge,
    pub connections_accepted: IntCounter,
    pub connections_refused: IntCounterVec,
    pub closes: IntCounterVec,
    pub frames_in: IntCounter,
    pub frames_out: IntCounter,
    pub published: IntCounter,
    pub delivered: IntCounter,
    pub errors: IntCounterVec,
    pub publish_seconds: Histogram,
    pub subscriptions: IntGauge,
    pub undecodable: IntCounter,
    pub content_checks: IntCounterVec,
    pub gap_fills: IntCounter,
    pub typing_dropped: IntCounter,
    pub retention_guard: IntGauge,
    pub stream_info_reads: IntCounter,
    pub token_cache_hits: IntCounter,
    pub gap_filled_messages: IntCounter,
    pub resumes: IntCounterVec,
    pub replays_coalesced: IntCounter,
    pub presence_writes: IntCounter,
    pub presence_write_errors: IntCounter,
    pub presence_events: IntCounter,
    pub presence_flaps_suppressed: IntCounter,
    pub presence_events_suppressed: IntCounter,
    pub presence_watches: IntGauge,
    pub presence_snapshot_retries: IntCounter,
    pub presence_missed_removals: IntCounter,
    pub content_check_seconds: Histogram,
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
            IntCounter::new(name, help).unwrap_or_else(|e| unreachable!("{e}"))
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels)
                .unwrap_or_else(|e| unreachable!("{e}"))
        };
        let gauge = |name: &str, help: &str| {
            IntGauge::new(name, help).unwrap_or_else(|e| unreachable!("{e}"))
        };
        let m = Self {
            connections: reg(
                &r,
                gauge("gateway_connections", "Open WebSocket connections."),
            ),
            connections_accepted: reg(
                &r,
                counter(
                    "gateway_connections_accepted_total",
                    "WebSocket connections accepted.",
                ),
            ),
            connections_refused: reg(
                &r,
                counter_vec(
                    "gateway_connections_refused_total",
                    "Handshakes refused, by reason.",
                    &["reason"],
                ),
            ),
            closes: reg(
                &r,
                counter_vec(
                    "gateway_closes_total",
                    "Connections closed by the server, by close code.",
                    &["code"],
                ),
            ),
            frames_in: reg(
                &r,
                counter("gateway_frames_in_total", "Client frames received."),
            ),
            frames_out: reg(
                &r,
                counter("gateway_frames_out_total", "Frames written to clients."),
            ),
            published: reg(
                &r,
                counter(
                    "gateway_messages_published_total",
                    "Messages stored in JetStream and acked.",
                ),
            ),
            delivered: reg(
                &r,
                counter(
                    "gateway_messages_delivered_total",
                    "Messages queued to local sockets.",
                ),
            ),
            errors: reg(
                &r,
                counter_vec(
                    "gateway_errors_total",
                    "Error frames sent, by code.",
                    &["code"],
                ),
            ),
            publish_seconds: reg(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "gateway_publish_seconds",
                        "JetStream publish latency, send to ack.",
                    )
                    .buckets(vec![
                        0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                        5.0, 10.0,
                    ]),
                )
                .unwrap_or_else(|e| unreachable!("{e}")),
            ),
            subscriptions: reg(
                &r,
                gauge(
                    "gateway_topics",
                    "Rooms and users this gateway is subscribed to.",
                ),
            ),
            undecodable: reg(
                &r,
                counter(
                    "gateway_undecodable_total",
                    "Delivered NATS messages that could not be decoded.",
                ),
            ),
            content_checks: reg(
                &r,
                counter_vec(
                    "gateway_content_checks_total",
                    "Content checks by decision (deliver, reject, hold, unavailable).",
                    &["decision"],
                ),
            ),
            content_check_seconds: reg(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "gateway_content_check_seconds",
                        "Latency added by the content check.",
                    )
                    .buckets(vec![
                        0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    ]),
                )
                .unwrap_or_else(|e| unreachable!("{e}")),
            ),
            token_cache_hits: reg(
                &r,
                counter(
                    "gateway_token_cache_hits_total",
                    "Handshakes whose token was verified before, answered without checking its signature again.",
                ),
            ),
            stream_info_reads: reg(
                &r,
                counter(
                    "gateway_stream_info_reads_total",
                    "Reads of stream CHAT's info by joins into conversations the stream holds nothing for.",
                ),
            ),
            retention_guard: reg(
                &r,
                gauge(
                    "gateway_retention_guard",
                    "1 while sends are refused because stream CHAT is nearly full of messages no persister has stored.",
                ),
            ),
            typing_dropped: reg(
                &r,
                counter(
                    "gateway_typing_dropped_total",
                    "`typing` frames dropped for coming within 3 s of the connection's last one.",
                ),
            ),
            gap_fills: reg(
                &r,
                counter(
                    "gateway_gap_fills_total",
                    "Gaps in a conversation's sequence chain that this gateway filled from the stream.",
                ),
            ),
            gap_filled_messages: reg(
                &r,
                counter(
                    "gateway_gap_filled_messages_total",
                    "Messages delivered by gap fills.",
                ),
            ),
            resumes: reg(
                &r,
                counter_vec(
                    "gateway_resumes_total",
                    "Resumes (join with since, resume) by whether everything was recovered.",
                    &["recovered"],
                ),
            ),
            replays_coalesced: reg(
                &r,
                counter(
                    "gateway_replays_coalesced_total",
                    "Resume replays served by an identical replay already in progress.",
                ),
            ),
            presence_writes: reg(
                &r,
                counter(
                    "gateway_presence_writes_total",
                    "Presence KV writes and deletes.",
                ),
            ),
            presence_write_errors: reg(
                &r,
                counter(
                    "gateway_presence_write_errors_total",
                    "Presence KV writes that failed.",
                ),
            ),
            presence_events: reg(
                &r,
                counter(
                    "gateway_presence_events_total",
                    "Presence events emitted (encoded once, then fanned out).",
                ),
            ),
            presence_flaps_suppressed: reg(
                &r,
                counter(
                    "gateway_presence_flaps_suppressed_total",
                    "Offline/online pairs suppressed by the grace period.",
                ),
            ),
            presence_events_suppressed: reg(
                &r,
                counter(
                    "gateway_presence_room_events_suppressed_total",
                    "Room presence events not sent because the room had more online members than the event limit.",
                ),
            ),
            presence_watches: reg(
                &r,
                gauge(
                    "gateway_presence_watches",
                    "Presence watches (rooms and users) this gateway runs.",
                ),
            ),
            presence_snapshot_retries: reg(
                &r,
                counter(
                    "gateway_presence_snapshot_retries_total",
                    "Room snapshots read again because the shared room feed delivered more than the buffer holds meanwhile.",
                ),
            ),
            presence_missed_removals: reg(
                &r,
                counter(
                    "gateway_presence_missed_removals_total",
                    "Presence keys found gone when a watch re-read its keys after its consumer was re-created (their delete markers had expired meanwhile, as while the gateway was cut off from NATS).",
                ),
            ),
            registry: r,
        };
        for code in ErrorCode::ALL {
            m.errors.with_label_values(&[code.as_str()]);
        }
        // 1, labelled with the version: which versions run, for a rolling upgrade's dashboard.
        let build_info = prometheus::IntGaugeVec::new(
            prometheus::Opts::new(
                "gateway_build_info",
                "1, labelled with the running version.",
            ),
            &["version"],
        )
        .unwrap_or_else(|e| unreachable!("{e}"));
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let _ = m.registry.register(Box::new(build_info));
        m
    }

    pub fn error(&self, code: ErrorCode) {
        self.errors.with_label_values(&[code.as_str()]).inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "encoding metrics");
        }
        buf
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
