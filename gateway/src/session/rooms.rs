//! The frames that follow a conversation: `join` (with `since`, a room's resume), `leave`, and
//! `resume` (a direct-message thread's), and the replay that both resumes share.

use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use protocol::subject::Conversation;
use protocol::{ErrorCode, FrameId, RoomId, ServerFrame, UserId};

use super::Session;
use crate::backlog::{BacklogError, EncodedReplay, LastSeq, Older};
use crate::conn::{Outbound, close_code};
use crate::hub::{Gate, TopicKey};
use crate::presence::{ONLINE_LIST_CAP, WatchKey};

impl Session {
    pub(super) async fn join(&mut self, id: Option<FrameId>, room: RoomId, since: Option<u64>) {
        let fresh = !self.joined.contains(&room);
        if fresh && self.joined.len() >= self.state.config.max_rooms_per_conn {
            let max = self.state.config.max_rooms_per_conn;
            self.error(
                id,
                ErrorCode::BadRequest,
                format!("a connection may join at most {max} rooms"),
            );
            return;
        }
        let key = TopicKey::Room(room.clone());
        let conv = Conversation::Room(room.clone());
        // A resume holds the room's live frames back until the replay is queued.
        let gate = since.map(|_| Arc::new(Gate::new(conv.deliver_subject())));
        if fresh {
            // Subscribe before reading the last sequence, so nothing stored after it is missed.
            self.state
                .hub
                .join(key.clone(), self.outbox.clone(), gate.clone())
                .await;
            self.joined.insert(room.clone());
        } else if gate.is_some() {
            self.state.hub.set_gate(&key, &self.outbox, gate.clone());
        }
        let last = match self.state.backlog.last_seq(&conv).await {
            Ok(last) => last,
            Err(e) => {
                tracing::warn!(error = %e, %room, "join: stream unreachable");
                if fresh {
                    self.joined.remove(&room);
                    self.state.hub.leave(&key, self.outbox.conn());
                } else if gate.is_some() {
                    self.state.hub.set_gate(&key, &self.outbox, None);
                }
                self.error(
                    id,
                    ErrorCode::Unavailable,
                    "the message store is unreachable; try again",
                );
                return;
            }
        };
        let last_seq = last.seq;
        // Announce this connection in the room, then read who is online (including itself).
        let shared = self.outbox.shared.clone();
        let presence = self.state.presence.clone();
        presence.put_room(&room, &shared.user, &shared.conn).await;
        let (members, mut online_count) = presence
            .watch_capped(
                WatchKey::Room(room.clone()),
                self.outbox.clone(),
                ONLINE_LIST_CAP,
            )
            .await;
        let mut online: Vec<UserId> = members.into_iter().map(|p| p.user).collect();
        // A watch already running here may not have seen this connection's own key yet.
        if let Err(at) = online.binary_search(&shared.user) {
            // Online but not listed: either not seen yet, or listed past the cap.
            if at < ONLINE_LIST_CAP {
                online.insert(at, shared.user.clone());
                online.truncate(ONLINE_LIST_CAP);
            }
            if !presence.is_online_in(&room, &shared.user) {
                online_count += 1;
            }
        }
        match (since, gate) {
            (Some(since), Some(gate)) => {
                self.replay(&key, &conv, since, last, &gate, |recovered| {
                    ServerFrame::Joined {
                        id,
                        room,
                        last_seq,
                        recovered: Some(recovered),
                        online,
                        online_count,
                    }
                })
                .await;
            }
            _ => self.reply(ServerFrame::Joined {
                id,
                room,
                last_seq,
                recovered: None,
                online,
                online_count,
            }),
        }
    }

    /// `resume {with, since}`: the direct-message counterpart of `join {room, since}`.
    pub(super) async fn resume(&mut self, id: Option<FrameId>, with: UserId, since: u64) {
        let Some(conv) = Conversation::dm(self.outbox.shared.user.clone(), with.clone()) else {
            return self.error(
                id,
                ErrorCode::BadRequest,
                "there is no thread with yourself",
            );
        };
        let key = TopicKey::User(self.outbox.shared.user.clone());
        let gate = Arc::new(Gate::new(conv.deliver_subject()));
        self.state
            .hub
            .set_gate(&key, &self.outbox, Some(gate.clone()));
        let last = match self.state.backlog.last_seq(&conv).await {
            Ok(last) => last,
            Err(e) => {
                tracing::warn!(error = %e, "resume: stream unreachable");
                self.state.hub.set_gate(&key, &self.outbox, None);
                return self.error(
                    id,
                    ErrorCode::Unavailable,
                    "the message store is unreachable; try again",
                );
            }
        };
        let last_seq = last.seq;
        self.replay(&key, &conv, since, last, &gate, |recovered| {
            ServerFrame::Resumed {
                id,
                with,
                last_seq,
                recovered,
            }
        })
        .await;
    }

    /// Queues `head(recovered)`, then every message in `(since, last_seq]`, then the live frames the
    /// gate held back that are newer than `last_seq`, and removes the gate: no gap, no duplicate.
    pub(super) async fn replay(
        &mut self,
        key: &TopicKey,
        conv: &Conversation,
        since: u64,
        last: LastSeq,
        gate: &Arc<Gate>,
        head: impl FnOnce(bool) -> ServerFrame,
    ) {
        let max = self.state.config.max_resume;
        let last_seq = last.seq;
        let replayed = if last.exact {
            self.state
                .backlog
                .replay_shared(conv, since, last_seq, max, Older::FromHistory)
                .await
        } else {
            Err(Arc::new(BacklogError::History(
                "the newest sequence is unknown".into(),
            )))
        };
        let frames: Option<&[(u64, Utf8Bytes)]> = match replayed.as_deref() {
            Ok(EncodedReplay::Complete(frames)) => Some(frames),
            Ok(EncodedReplay::TooMany) => None,
            Err(e) => {
                tracing::warn!(error = %e, since, last_seq, "resume could not read the backlog");
                None
            }
        };
        let recovered = frames.is_some();
        self.state
            .metrics
            .resumes
            .with_label_values(&[if recovered { "true" } else { "false" }])
            .inc();
        self.reply(head(recovered));
        let patience = crate::hub::REPLAY_PATIENCE;
        let mut complete = true;
        for (_, json) in frames.unwrap_or_default() {
            if !self
                .outbox
                .send_wait(Outbound::Text(json.clone()), patience)
                .await
            {
                complete = false;
                break;
            }
        }
        complete = complete && gate.release(&self.outbox, last_seq).await;
        self.state.hub.set_gate(key, &self.outbox, None);
        if !complete {
            self.outbox
                .shared
                .close(close_code::SLOW_CONSUMER, "slow consumer");
        }
    }

    /// `leave {room}`: the room's subscription, watch and presence key go with this connection.
    pub(super) async fn leave(&mut self, id: Option<FrameId>, room: RoomId) {
        if !self.joined.remove(&room) {
            return self.error(id, ErrorCode::NotJoined, format!("not in room {room}"));
        }
        self.state
            .hub
            .leave(&TopicKey::Room(room.clone()), self.outbox.conn());
        let presence = &self.state.presence;
        presence.unwatch(&WatchKey::Room(room.clone()), self.outbox.conn());
        let shared = &self.outbox.shared;
        presence
            .delete_room(&room, &shared.user, &shared.conn)
            .await;
        self.reply(ServerFrame::Left { id, room });
    }
}
