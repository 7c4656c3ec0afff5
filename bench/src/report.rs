//! Merging worker reports into one result per run, as a JSON line and a markdown row.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::hist::{Histogram, Summary};
use crate::plan::Shape;
use crate::worker::WorkerReport;

/// Totals over every worker of a run, with loss worked out per conversation and sender.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Totals {
    pub clients: u64,
    pub connected: u64,
    pub connect_failed: u64,
    pub connect_errors: BTreeMap<String, u64>,
    pub closed_early: BTreeMap<String, u64>,
    pub timed_out: u64,
    pub sent: u64,
    pub acked: u64,
    pub unacked: u64,
    pub skipped: u64,
    pub send_errors: BTreeMap<String, u64>,
    /// Server frames other than deliveries and replies, by type.
    pub other_frames: BTreeMap<String, u64>,
    /// Data messages received, each counted once.
    pub deliveries: u64,
    /// Σ over senders of acked messages × receivers of the conversation.
    pub expected: u64,
    /// Expected deliveries that no receiver got.
    pub lost: u64,
    /// Deliveries beyond the expected (messages stored but never acked to their sender).
    pub extra: u64,
    pub dup_seq: u64,
    pub dup_cmid: u64,
    /// Deliveries stored in another order than their sender sent them.
    pub reordered: u64,
    pub unexpected: u64,
    pub markers_expected: u64,
    pub markers_got: u64,
    /// Events seen more than once (presence-churn: a second event of the same kind in one cycle).
    pub dup_events: u64,
    /// Scenario counters, added up over workers (for example `online_lost`, `not_recovered`).
    pub counters: BTreeMap<String, u64>,
    pub latency_us: Summary,
    /// The seconds with deliveries slower than [`SLOW_US`], in order: (seconds from `go` (or the
    /// first send) to the second the messages were sent in, how many, the slowest in µs). Lines the tail up
    /// with what the servers did at the time.
    pub slow_seconds: Vec<(u64, u64, u64)>,
    pub ack_latency_us: Summary,
    /// Connect → handshake → welcome → joins, per client.
    #[serde(default)]
    pub connect_latency_us: Summary,
    /// presence-churn: close → offline event at a watcher, grace period included.
    pub offline_latency_us: Summary,
    /// Deliveries per second from `go` to the last delivery.
    pub deliveries_per_sec: f64,
    /// Sends per second from the first send to the last.
    pub sends_per_sec: f64,
}

/// A delivery slower than this (µs) is counted in [`Totals::slow_seconds`]: the pairs and
/// cross-gateway target's p99.
pub const SLOW_US: u64 = 10_000;

/// Adds up worker reports.
pub fn merge(reports: &[WorkerReport]) -> Totals {
    let mut t = Totals::default();
    let mut lat = Histogram::default();
    let mut ack = Histogram::default();
    let mut connect = Histogram::default();
    let mut offline = Histogram::default();
    let mut got: BTreeMap<&str, u64> = BTreeMap::new();
    let mut receivers: BTreeMap<&str, u64> = BTreeMap::new();
    let mut acked_by: BTreeMap<&str, u64> = BTreeMap::new();
    let mut slow: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    let add = |into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>| {
        for (k, v) in from {
            *into.entry(k.clone()).or_default() += v;
        }
    };
    let (mut go, mut first_send, mut last_send, mut last_delivery) = (u64::MAX, u64::MAX, 0, 0);
    for r in reports {
        t.clients += r.clients;
        t.connected += r.connected;
        t.connect_failed += r.connect_failed;
        add(&mut t.connect_errors, &r.connect_errors);
        add(&mut t.closed_early, &r.closed_early);
        t.timed_out += r.timed_out;
        t.sent += r.sent;
        t.acked += r.acked;
        t.unacked += r.unacked;
        t.skipped += r.skipped;
        add(&mut t.send_errors, &r.send_errors);
        add(&mut t.other_frames, &r.other_frames);
        t.deliveries += r.deliveries;
        t.dup_seq += r.dup_seq;
        t.dup_cmid += r.dup_cmid;
        t.reordered += r.reordered;
        t.unexpected += r.unexpected;
        t.markers_expected += r.markers_expected;
        t.markers_got += r.markers_got;
        t.dup_events += r.dup_events;
        t.expected += r.expected;
        t.lost += r.lost;
        add(&mut t.counters, &r.counters);
        lat.add_sparse(&r.latency);
        for (second, n, max) in &r.slow {
            let into = slow.entry(*second).or_default();
            into.0 += n;
            into.1 = into.1.max(*max);
        }
        ack.add_sparse(&r.ack_latency);
        connect.add_sparse(&r.connect_latency);
        offline.add_sparse(&r.offline_latency);
        for (k, v) in &r.got {
            *got.entry(k).or_default() += v;
        }
        for (k, v) in &r.receivers {
            *receivers.entry(k).or_default() += v;
        }
        for (k, v) in &r.acked_by {
            *acked_by.entry(k).or_default() += v;
        }
        if r.go_unix_ns > 0 {
            go = go.min(r.go_unix_ns);
        }
        if r.first_send_unix_ns > 0 {
            first_send = first_send.min(r.first_send_unix_ns);
        }
        last_send = last_send.max(r.last_send_unix_ns);
        last_delivery = last_delivery.max(r.last_delivery_unix_ns);
    }
    for (key, acked) in &acked_by {
        let conv = key.rsplit_once('|').map_or(*key, |(c, _)| c);
        let expected = acked * receivers.get(conv).copied().unwrap_or(0);
        let g = got.get(key).copied().unwrap_or(0);
        t.expected += expected;
        t.lost += expected.saturating_sub(g);
        t.extra += g.saturating_sub(expected);
    }
    // Deliveries from senders that never reported (they failed to connect) are extra too.
    for (key, g) in &got {
        if !acked_by.contains_key(key) {
            t.extra += g;
        }
    }
    t.latency_us = lat.summary();
    let start = (if go != u64::MAX { go } else { first_send }) / 1_000_000_000;
    t.slow_seconds = slow
        .into_iter()
        .map(|(second, (n, max))| (second.saturating_sub(start), n, max))
        .collect();
    t.ack_latency_us = ack.summary();
    t.connect_latency_us = connect.summary();
    t.offline_latency_us = offline.summary();
    if last_delivery > go && go != u64::MAX {
        t.deliveries_per_sec = t.deliveries as f64 / ((last_delivery - go) as f64 / 1e9);
    }
    if last_send > first_send && first_send != u64::MAX {
        t.sends_per_sec = t.sent as f64 / ((last_send - first_send) as f64 / 1e9);
    }
    t
}

/// CPU and memory of one server process over a run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ServerUsage {
    pub name: String,
    pub pid: u32,
    /// CPU seconds from `go` to the end of the run.
    pub cpu_s: f64,
    /// CPU seconds from before the first connect until `go`: the connects, joins and the settle
    /// pause (traffic scenarios; 0 elsewhere).
    #[serde(default)]
    pub connect_cpu_s: f64,
    pub rss_before_kib: u64,
    /// Resident set once every connection was up, before `go`.
    pub rss_ready_kib: u64,
    pub rss_end_kib: u64,
    /// Peak resident set over the process's life (`VmHWM`).
    pub hwm_kib: u64,
}

/// One JSON line of `bench/results/*.jsonl`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RunResult {
    pub scenario: String,
    pub label: String,
    pub run: String,
    pub unix_time: u64,
    /// 1/5/15-minute load averages before the run: other work on the machine.
    pub load_before: [f64; 3],
    pub nproc: usize,
    pub shape: Shape,
    pub gateways: usize,
    pub procs: usize,
    pub pinned: bool,
    pub send_s: f64,
    /// Messages per second the senders were asked to send, over all senders.
    pub offered_msgs_per_sec: f64,
    /// Deliveries per second that the offered rate implies (every member of a room receives).
    pub offered_deliveries_per_sec: f64,
    pub totals: Totals,
    pub servers: Vec<ServerUsage>,
    /// Gateway + nats-server CPU over the run divided by deliveries, µs.
    pub cpu_per_delivery_us: Option<f64>,
    /// (gateway RSS with every connection up − RSS before) ÷ connections, bytes.
    pub gateway_rss_per_conn_bytes: Option<f64>,
    /// Whether the run fell short of its offered load or lost anything.
    pub saturated: bool,
    /// Figures of the scenarios that are not traffic (resume-storm, presence-churn,
    /// persister-catchup), by name; `bench table` prints them in a second table.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub figures: BTreeMap<String, f64>,
}

impl RunResult {
    /// The row of the markdown table in docs/benchmarks.md.
    pub fn markdown_row(&self) -> String {
        let t = &self.totals;
        let gw_cpu: f64 = self
            .servers
            .iter()
            .filter(|s| s.name.starts_with("gateway"))
            .map(|s| s.cpu_s)
            .sum();
        let nats_cpu: f64 = self
            .servers
            .iter()
            // One node is `nats-server`, a cluster's are `nats-server-<i>`.
            .filter(|s| s.name.starts_with("nats-server"))
            .map(|s| s.cpu_s)
            .sum();
        let gw_hwm: u64 = self
            .servers
            .iter()
            .filter(|s| s.name.starts_with("gateway"))
            .map(|s| s.hwm_kib)
            .max()
            .unwrap_or(0);
        let per_conn = self
            .gateway_rss_per_conn_bytes
            .map_or("–".into(), |b| format!("{:.0} B", b));
        let cpu = self
            .cpu_per_delivery_us
            .map_or("–".into(), |u| format!("{u:.2} µs"));
        format!(
            "| {} | {} | {} | {}/{} | {:.0} | {:.0} | {:.0} | {} | {} / {} | {:.1} / {:.1} / {:.1} / {:.1} | {:.1} | {:.1} / {:.1} | {} | {} MiB | {} | {:.2} |",
            self.scenario,
            self.label,
            t.clients,
            t.connected,
            self.gateways,
            self.offered_msgs_per_sec,
            t.sends_per_sec,
            t.deliveries_per_sec,
            t.deliveries,
            t.lost,
            t.dup_seq + t.dup_cmid + t.dup_events,
            t.latency_us.p50 as f64 / 1000.0,
            t.latency_us.p90 as f64 / 1000.0,
            t.latency_us.p99 as f64 / 1000.0,
            t.latency_us.max as f64 / 1000.0,
            t.ack_latency_us.p99 as f64 / 1000.0,
            gw_cpu,
            nats_cpu,
            cpu,
            gw_hwm / 1024,
            per_conn,
            self.load_before[0],
        )
    }
}

impl RunResult {
    /// Whether the row belongs in the second table: a scenario with its own figures, or a run with a
    /// persister.
    pub fn has_figures(&self) -> bool {
        !self.figures.is_empty() || self.servers.iter().any(|s| s.name == "persister")
    }

    /// The row of the second table: every server's CPU and peak RSS, and the scenario's figures.
    pub fn figures_row(&self) -> String {
        let of = |name: &str, f: fn(&ServerUsage) -> String| {
            let v: Vec<String> = self
                .servers
                .iter()
                .filter(|s| s.name.starts_with(name))
                .map(f)
                .collect();
            if v.is_empty() {
                "–".to_owned()
            } else {
                v.join(" + ")
            }
        };
        let cpu = |s: &ServerUsage| format!("{:.1}", s.cpu_s);
        let hwm = |s: &ServerUsage| format!("{}", s.hwm_kib / 1024);
        let t = &self.totals;
        let mut figures: Vec<String> = self
            .figures
            .iter()
            .map(|(k, v)| {
                if v.fract() == 0.0 && v.abs() < 1e15 {
                    format!("{k} {v:.0}")
                } else {
                    format!("{k} {v:.2}")
                }
            })
            .collect();
        figures.extend(
            t.counters
                .iter()
                .filter(|(_, v)| **v > 0)
                .map(|(k, v)| format!("{k} {v}")),
        );
        let offline = if t.offline_latency_us.count > 0 {
            let o = &t.offline_latency_us;
            format!(
                "{:.0} / {:.0} / {:.0} / {:.0}",
                o.p50 as f64 / 1000.0,
                o.p90 as f64 / 1000.0,
                o.p99 as f64 / 1000.0,
                o.max as f64 / 1000.0
            )
        } else {
            "–".to_owned()
        };
        format!(
            "| {} | {} | {} | {} / {} | {:.1} / {:.1} / {:.1} / {:.1} | {} | {} / {} / {} | {} / {} / {} | {} | {:.2} |",
            self.scenario,
            self.label,
            t.clients,
            t.lost,
            t.dup_seq + t.dup_cmid + t.dup_events,
            t.latency_us.p50 as f64 / 1000.0,
            t.latency_us.p90 as f64 / 1000.0,
            t.latency_us.p99 as f64 / 1000.0,
            t.latency_us.max as f64 / 1000.0,
            offline,
            of("gateway", cpu),
            of("nats-server", cpu),
            of("persister", cpu),
            of("gateway", hwm),
            of("nats-server", hwm),
            of("persister", hwm),
            figures.join(", "),
            self.load_before[0],
        )
    }
}

/// Header of the second table (scenarios with their own figures; see `docs/benchmarks.md`).
pub const FIGURES_HEADER: &str = "| scenario | label | clients | lost / dup | latency p50 / p90 / p99 / max ms | offline-event latency p50 / p90 / p99 / max ms | CPU s gw / nats / persister | peak RSS MiB gw / nats / persister | figures | load 1m |\n|---|---|---|---|---|---|---|---|---|---|";

/// Header of the markdown table.
pub const MARKDOWN_HEADER: &str = "| scenario | label | clients | connected/gateways | offered msg/s | sent msg/s | deliveries/s | deliveries | lost / dup | latency p50 / p90 / p99 / max ms | ack p99 ms | CPU s gw / nats | CPU per delivery | gw peak RSS | gw RSS/conn | load 1m |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_is_acked_times_receivers_minus_got() {
        let mut a = WorkerReport::default();
        a.acked_by.insert("r|u0".into(), 10);
        a.receivers.insert("r".into(), 2);
        a.got.insert("r|u0".into(), 15);
        let mut b = WorkerReport::default();
        b.receivers.insert("r".into(), 1);
        b.got.insert("r|u0".into(), 10);
        let t = merge(&[a, b]);
        assert_eq!(t.expected, 30);
        assert_eq!(t.lost, 5);
        assert_eq!(t.extra, 0);
    }

    #[test]
    fn slow_seconds_add_up_across_workers_from_the_first_send() {
        let mut a = WorkerReport {
            first_send_unix_ns: 100_500_000_000,
            ..Default::default()
        };
        a.slow = vec![(101, 2, 15_000), (104, 1, 11_000)];
        let mut b = WorkerReport {
            first_send_unix_ns: 100_200_000_000,
            ..Default::default()
        };
        b.slow = vec![(101, 3, 40_000)];
        let t = merge(&[a, b]);
        assert_eq!(t.slow_seconds, vec![(1, 5, 40_000), (4, 1, 11_000)]);
    }
}
