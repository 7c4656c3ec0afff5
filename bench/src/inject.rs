//! Messages published straight into stream `CHAT`, exactly as a gateway stores a `send`: the same
//! subject (`chat.in.room.<room>`), `Nats-Msg-Id` (`<sender>:<client_msg_id>`), headers and MessagePack
//! payload (`gateway/src/publish.rs`).
//!
//! The resume storm uses it for the burst its clients miss while disconnected, and the persister
//! catch-up for its backlog: both need many messages stored fast, with their sequences known, and
//! neither is about the gateway's send path.

use std::collections::VecDeque;
use std::time::Duration;
use tokio::time::Instant;

use anyhow::Context;
use async_nats::jetstream::{self, context::PublishAckFuture};
use bytes::Bytes;
use gateway::publish::{publish_message, stored_message};
use protocol::subject::Conversation;
use protocol::{ClientMsgId, RoomId, Target, UserId};

/// Publishes waiting for their JetStream ack at once.
pub const PUBLISH_WINDOW: usize = 1024;
/// Longest wait for one publish ack.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// What to publish: `per_room` messages into each room, interleaved across rooms.
#[derive(Debug, Clone)]
pub struct Batch {
    pub rooms: Vec<String>,
    pub per_room: u64,
    /// The sender of every message.
    pub from: String,
    /// Length of each text in bytes (`b|<index>|<unix ns>|` and padding).
    pub text_bytes: usize,
    /// Follow each room's messages with an end marker (`e|<per_room>`).
    pub marker: bool,
}

/// What was stored: the sequence of every message, per room, in publish order.
#[derive(Debug, Clone, Default)]
pub struct Published {
    /// `seqs[room][i]` is the sequence of message `i` of that room; the marker, if any, is not in it.
    pub seqs: Vec<Vec<u64>>,
    /// The marker's sequence, per room.
    pub markers: Vec<u64>,
    pub took: Duration,
}

impl Published {
    pub fn total(&self) -> u64 {
        self.seqs.iter().map(|s| s.len() as u64).sum()
    }
}

/// The text of message `i`: its index and the publish time, so a receiver can check each index once.
pub fn text(i: u64, text_bytes: usize) -> String {
    let mut t = format!("b|{i}|{}|", crate::client::unix_ns());
    while t.len() < text_bytes {
        t.push('x');
    }
    t
}

/// The index of a burst text, if it is one.
pub fn index_of(text: &str) -> Option<u64> {
    text.strip_prefix("b|")?.split('|').next()?.parse().ok()
}

/// Publishes `b` with at most [`PUBLISH_WINDOW`] acks outstanding; any failed publish fails the whole
/// batch, so the sequences returned are exactly what the stream holds.
pub async fn publish(js: &jetstream::Context, b: &Batch) -> anyhow::Result<Published> {
    let started = Instant::now();
    let from = UserId::parse(&b.from).context("sender id")?;
    let rooms: Vec<RoomId> = b
        .rooms
        .iter()
        .map(|r| RoomId::parse(r).context("room id"))
        .collect::<anyhow::Result<_>>()?;
    let mut out = Published {
        seqs: vec![Vec::with_capacity(b.per_room as usize); rooms.len()],
        markers: vec![0; rooms.len()],
        took: Duration::ZERO,
    };
    // (room, message index or None for the marker, ack)
    let mut acks: VecDeque<(usize, Option<u64>, PublishAckFuture)> = VecDeque::new();
    let rounds = b.per_room + u64::from(b.marker);
    for i in 0..rounds {
        for (r, room) in rooms.iter().enumerate() {
            let is_marker = i == b.per_room;
            let (text, cmid) = if is_marker {
                (format!("e|{}", b.per_room), format!("r{r}-end"))
            } else {
                (text(i, b.text_bytes), format!("r{r}-{i}"))
            };
            let target = Target::Room(room.clone());
            let msg = stored_message(from.clone(), &target, text, ClientMsgId::parse(cmid)?);
            let conv = Conversation::Room(room.clone());
            let pm = publish_message(&conv, &msg, Bytes::from(msg.encode()));
            let ack = js
                .send_publish(conv.ingest_subject(), pm)
                .await
                .context("publishing")?;
            acks.push_back((r, (!is_marker).then_some(i), ack));
            if acks.len() >= PUBLISH_WINDOW {
                settle(acks.pop_front(), &mut out).await?;
            }
        }
    }
    while let Some(a) = acks.pop_front() {
        settle(Some(a), &mut out).await?;
    }
    out.took = started.elapsed();
    Ok(out)
}

async fn settle(
    a: Option<(usize, Option<u64>, PublishAckFuture)>,
    out: &mut Published,
) -> anyhow::Result<()> {
    let Some((r, i, ack)) = a else { return Ok(()) };
    let ack = tokio::time::timeout(ACK_TIMEOUT, ack)
        .await
        .context("publish ack timed out")?
        .context("publish ack")?;
    anyhow::ensure!(!ack.duplicate, "seq {} stored twice", ack.sequence);
    match i {
        Some(_) => out.seqs[r].push(ack.sequence),
        None => out.markers[r] = ack.sequence,
    }
    Ok(())
}
