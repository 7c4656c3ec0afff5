//! What a run does: the shape of the traffic, and which clients each worker process plays.
//!
//! Every scenario is one [`Shape`]: `rooms` conversations of `members` connections each, of which the
//! first `senders` send at `rate_per_sender`. Fan-out is one big room, pairs are many rooms of two,
//! cross-gateway is rooms of two with the two members on different gateways, and idle is rooms of
//! one that are never joined. Client `idx` is member `idx % members` of room `idx / members`, it
//! connects to gateway `idx % gateways`, and worker `idx % shards` plays it, so any worker can derive
//! its own clients from the spec alone.

use std::net::{Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};

/// Connections that share one source address (127.0.0.2 and up), well under the 28k ephemeral ports.
pub const CONNS_PER_SOURCE_IP: usize = 10_000;

/// The traffic of a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Shape {
    /// Number of conversations.
    pub rooms: usize,
    /// Connections per conversation.
    pub members: usize,
    /// The first `senders` members of each conversation send.
    pub senders: usize,
    /// Messages per second of each sender.
    pub rate_per_sender: f64,
    /// Direct messages between the two members instead of a room (needs `members == 2`).
    pub dm: bool,
    /// Whether members join their room (idle connections may stay outside any room).
    pub join: bool,
    /// The rooms are private groups (created by the parent before the clients join).
    #[serde(default)]
    pub group: bool,
}

impl Shape {
    pub fn clients(&self) -> usize {
        self.rooms * self.members
    }
}

/// Everything a worker needs; the parent sends it as one JSON line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerSpec {
    pub shape: Shape,
    /// This worker's index, and the number of workers.
    pub shard: usize,
    pub shards: usize,
    /// Gateway WebSocket addresses.
    pub gateways: Vec<SocketAddr>,
    /// Ed25519 seed of the token signer the gateways trust.
    pub seed: [u8; 32],
    pub issuer: String,
    /// Unique per run, so room ids, users and client_msg_ids never collide with an earlier run
    /// inside the duplicate window.
    pub run: String,
    /// Bind each client socket to 127.0.0.2 and up before connecting.
    pub source_ips: bool,
    /// Connections per second, over all workers.
    pub ramp_per_sec: u32,
    /// Handshakes in flight at once, per worker.
    pub max_connecting: usize,
    /// How long senders send after `go`.
    pub send_ms: u64,
    /// Longest wait after sending for acks and deliveries.
    pub drain_ms: u64,
    /// How long connections stay open after `go` even with nothing to do (idle runs).
    pub hold_ms: u64,
    /// Length of each message text in bytes (a timestamp and padding).
    pub text_bytes: usize,
    /// What the clients do: traffic by default, or one of the scenarios with their own client.
    #[serde(default)]
    pub mode: Mode,
}

/// What the clients of a run do.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Mode {
    /// The [`Shape`]'s senders send and its members receive ([`crate::client`]).
    #[default]
    Traffic,
    /// Every client joins its room, records `last_seq` and disconnects; the parent publishes a burst
    /// of `missed` messages and an end marker into every room; on `go` every client reconnects at
    /// once and resumes with `since` ([`crate::storm`]).
    ResumeStorm { missed: u64 },
    /// Users open and close connections on a fixed schedule while watchers count their presence
    /// events ([`crate::churn`]).
    PresenceChurn(crate::churn::ChurnPlan),
}

/// One client connection.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientSpec {
    pub idx: usize,
    pub user: String,
    pub gateway: usize,
    /// The room to join, if any.
    pub join: Option<String>,
    /// `join` names a group, not an open room.
    pub group: bool,
    /// Where this client sends, if it is a sender.
    pub send: Option<Target>,
    /// The conversation it receives, and the users whose end markers it waits for.
    pub conv: Option<String>,
    pub expect_from: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    Room(String),
    Group(String),
    User(String),
}

impl WorkerSpec {
    /// The clients this worker plays.
    pub fn my_clients(&self) -> Vec<ClientSpec> {
        (self.shard..self.shape.clients())
            .step_by(self.shards.max(1))
            .map(|idx| self.client(idx))
            .collect()
    }

    pub fn user(&self, idx: usize) -> String {
        format!("u{idx}-{}", self.run)
    }

    fn client(&self, idx: usize) -> ClientSpec {
        let s = &self.shape;
        let room_no = idx / s.members;
        let j = idx % s.members;
        let user = self.user(idx);
        let room = room_name(room_no, &self.run);
        let first = room_no * s.members;
        let expect_from: Vec<String> = (0..s.senders.min(s.members))
            .map(|k| self.user(first + k))
            .collect();
        let (join, send, conv) = if s.dm {
            let partner = self.user(first + (1 - j.min(1)));
            let conv = dm_key(&user, &partner);
            (
                None,
                (j < s.senders).then_some(Target::User(partner)),
                Some(conv),
            )
        } else if s.join {
            let send = (j < s.senders).then(|| {
                if s.group {
                    Target::Group(room.clone())
                } else {
                    Target::Room(room.clone())
                }
            });
            (Some(room.clone()), send, Some(room))
        } else {
            (None, None, None)
        };
        ClientSpec {
            idx,
            gateway: idx % self.gateways.len().max(1),
            expect_from: if conv.is_some() {
                expect_from
            } else {
                Vec::new()
            },
            user,
            join,
            group: s.group,
            send,
            conv,
        }
    }
}

/// The id of room `no` of run `run`.
pub fn room_name(no: usize, run: &str) -> String {
    format!("r{no}-{run}")
}

/// The key of a DM thread, the same from both ends.
pub fn dm_key(a: &str, b: &str) -> String {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    format!("dm:{lo}:{hi}")
}

/// The source address of client `idx`: 127.0.0.2 and up.
pub fn source_ip(idx: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 2 + ((idx / CONNS_PER_SOURCE_IP) % 250) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(shape: Shape, shards: usize) -> WorkerSpec {
        WorkerSpec {
            shape,
            shard: 0,
            shards,
            gateways: vec![
                "127.0.0.1:1".parse().unwrap(),
                "127.0.0.1:2".parse().unwrap(),
            ],
            seed: [7; 32],
            issuer: "liaotian".into(),
            run: "t".into(),
            source_ips: true,
            ramp_per_sec: 1000,
            max_connecting: 10,
            send_ms: 1,
            drain_ms: 1,
            hold_ms: 0,
            text_bytes: 64,
            mode: Mode::Traffic,
        }
    }

    #[test]
    fn shards_partition_the_clients() {
        let shape = Shape {
            rooms: 3,
            members: 4,
            senders: 1,
            rate_per_sender: 1.0,
            dm: false,
            join: true,
            group: false,
        };
        let mut all: Vec<usize> = (0..3)
            .flat_map(|k| {
                let mut s = spec(shape.clone(), 3);
                s.shard = k;
                s.my_clients().into_iter().map(|c| c.idx)
            })
            .collect();
        all.sort();
        assert_eq!(all, (0..12).collect::<Vec<_>>());
    }

    #[test]
    fn cross_gateway_pairs_put_sender_and_receiver_apart() {
        let shape = Shape {
            rooms: 2,
            members: 2,
            senders: 1,
            rate_per_sender: 1.0,
            dm: false,
            join: true,
            group: false,
        };
        let c = spec(shape, 1).my_clients();
        assert_eq!(c[0].gateway, 0);
        assert!(c[0].send.is_some());
        assert_eq!(c[1].gateway, 1);
        assert!(c[1].send.is_none());
        assert_eq!(c[1].expect_from, vec!["u0-t".to_string()]);
    }

    #[test]
    fn dm_pairs_send_to_each_other() {
        let shape = Shape {
            rooms: 1,
            members: 2,
            senders: 2,
            rate_per_sender: 1.0,
            dm: true,
            join: false,
            group: false,
        };
        let c = spec(shape, 1).my_clients();
        assert_eq!(c[0].send, Some(Target::User("u1-t".into())));
        assert_eq!(c[1].send, Some(Target::User("u0-t".into())));
        assert_eq!(c[0].conv, c[1].conv);
    }
}
