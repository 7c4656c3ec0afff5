//! Stream `CHAT`, as plain data: every process that creates, checks or tests the stream reads its
//! definition here, so the gateway (which creates it), the persister's tests and the benchmarks
//! cannot drift apart. `svc::nats::chat_stream_config` turns it into the NATS client's type.

use std::time::Duration;

use crate::subject;

/// Consumers allowed on stream `CHAT`: the persister's durable one, and the gateways' replays and
/// gap fills (ordered consumers, many at once in a resume storm). nats-server 2.15 otherwise caps a
/// stream at 1000.
pub const MAX_CONSUMERS: i32 = 100_000;

/// What the stream says about itself (`nats stream info CHAT`).
pub const DESCRIPTION: &str = "liaotian chat messages; republished to chat.out.> after storing";

/// The settings of stream `CHAT` an operator chooses; everything else about it is fixed:
/// - it stores [`subject::INGEST_WILDCARD`] in files, and discards the oldest messages first;
/// - it republishes each stored message from [`subject::INGEST_WILDCARD`] to
///   [`subject::DELIVER_WILDCARD`], headers and body;
/// - it allows direct gets, and [`MAX_CONSUMERS`] consumers.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamSettings {
    /// How long JetStream keeps a message (`CHAT_MAX_AGE_SECS`, default 3 days).
    pub max_age: Duration,
    /// Upper bound on stored bytes; oldest messages go first (`CHAT_MAX_BYTES`, default 1 GiB).
    pub max_bytes: i64,
    /// Window in which a resent `Nats-Msg-Id` is stored once (`CHAT_DUPLICATE_WINDOW_SECS`, default 10 min).
    pub duplicate_window: Duration,
    /// Replicas (`CHAT_REPLICAS`, default 1; use 3 on a 3-node cluster).
    pub replicas: usize,
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(3 * 24 * 3600),
            max_bytes: 1 << 30,
            duplicate_window: Duration::from_secs(600),
            replicas: 1,
        }
    }
}

impl StreamSettings {
    /// The stream's name.
    pub fn name(&self) -> &'static str {
        subject::STREAM
    }
}
