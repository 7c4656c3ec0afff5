//! The frames that follow a conversation: `join` (a room or a group, with `since` a resume), `leave`, and
//! `resume` (a direct-message thread's), and the replay that both resumes share.

use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use protocol::frame::Channel;
use protocol::group::RuleError;
use protocol::subject::Conversation;
use protocol::{ErrorCode, FrameId, RoomId, ServerFrame, UserId};

use super::Session;
use crate::backlog::{BacklogError, EncodedReplay, LastSeq, Older};
use crate::conn::{Outbound, close_code};
use crate::groups::GroupError;
use crate::hub::{Gate, TopicKey};
use crate::presence::{ONLINE_LIST_CAP, WatchKey};

/// What a joined channel is keyed by, in the hub, the stream and presence.
struct Keys {
    topic: TopicKey,
    conv: Conversation,
    /// The presence key space a group shares with rooms (their ids never collide).
    presence: RoomId,
}

fn keys(channel: &Channel) -> Keys {
    match channel {
        Channel::Room(room) => Keys {
            topic: TopicKey::Room(room.clone()),
            conv: Conversation::Room(room.clone()),
            presence: room.clone(),
        },
        Channel::Group(group) => Keys {
            topic: TopicKey::Group(group.clone()),
            conv: Conversation::Group(group.clone()),
            presence: group.as_room(),
        },
    }
}

impl Session {
    /// Whether this connection has joined `channel`.
    pub(super) fn has_joined(&self, channel: &Channel) -> bool {
        match channel {
            Channel::Room(room) => self.joined.contains(room),
            Channel::Group(group) => self.groups.contains(group),
        }
    }

    /// Checks that the user may join: an open room that is not a group's id, or a group the user
    /// is a member of. A group joined for the first time is pinned in the gateway's cache.
    async fn admit(&mut self, id: &Option<FrameId>, channel: &Channel, fresh: bool) -> bool {
        let me = self.outbox.shared.user.clone();
        let groups = self.state.groups.clone();
        let refused = match channel {
            Channel::Room(room) if fresh => match groups.exists(room).await {
                Ok(false) => None,
                Ok(true) => Some(GroupError::Rule(RuleError::NotMember)),
                Err(e) => Some(e),
            },
            Channel::Room(_) => None,
            Channel::Group(group) if fresh => match groups.pin(group).await {
                Ok(Some(r)) if r.is_member(&me) => None,
                Ok(_) => {
                    groups.unpin(group);
                    Some(GroupError::Rule(RuleError::NotMember))
                }
                Err(e) => Some(e),
            },
            Channel::Group(group) => match groups.cached_record(group) {
                Some(Some(r)) if r.is_member(&me) => None,
                _ => Some(GroupError::Rule(RuleError::NotMember)),
            },
        };
        match refused {
            None => true,
            Some(e) => {
                self.error(id.clone(), e.code(), e.to_string());
                false
            }
        }
    }

    pub(super) async fn join(&mut self, id: Option<FrameId>, channel: Channel, since: Option<u64>) {
        let fresh = !self.has_joined(&channel);
        if fresh && self.joined.len() + self.groups.len() >= self.state.config.max_rooms_per_conn {
            let max = self.state.config.max_rooms_per_conn;
            self.error(
                id,
                ErrorCode::BadRequest,
                format!("a connection may join at most {max} rooms and groups"),
            );
            return;
        }
        if !self.admit(&id, &channel, fresh).await {
            return;
        }
        let Keys {
            topic: key,
            conv,
            presence: room,
        } = keys(&channel);
        // A resume holds the channel's live frames back until the replay is queued.
        let gate = since.map(|_| Arc::new(Gate::new(conv.deliver_subject())));
        if fresh {
            // Subscribe before reading the last sequence, so nothing stored after it is missed.
            self.state
                .hub
                .join(key.clone(), self.outbox.clone(), gate.clone())
                .await;
            self.insert_joined(&channel);
        } else if gate.is_some() {
            self.state.hub.set_gate(&key, &self.outbox, gate.clone());
        }
        let last = match self.state.backlog.last_seq(&conv).await {
            Ok(last) => last,
            Err(e) => {
                tracing::warn!(error = %e, %channel, "join: stream unreachable");
                if fresh {
                    self.forget_joined(&channel);
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
        // Announce this connection in the channel, then read who is online (including itself).
        let shared = self.outbox.shared.clone();
        let presence = self.state.presence.clone();
        let is_group = matches!(channel, Channel::Group(_));
        presence.put_room(&room, &shared.user, &shared.conn).await;
        let (members, mut online_count) = presence
            .watch_capped(
                WatchKey::Room(room.clone()),
                self.outbox.clone(),
                ONLINE_LIST_CAP,
                is_group,
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
        // A group's read position, from the conversation service (open rooms have none).
        let read = match channel {
            Channel::Group(_) => super::convs::read_state(&self.state, &shared.user, &conv).await,
            Channel::Room(_) => None,
        };
        let (room, group) = match channel {
            Channel::Room(room) => (Some(room), None),
            Channel::Group(group) => (None, Some(group)),
        };
        let joined = move |recovered| ServerFrame::Joined {
            id,
            room,
            group,
            last_seq,
            recovered,
            online,
            online_count,
            read_seq: read.map(|r| r.read_seq),
            unread: read.map(|r| r.unread),
        };
        match (since, gate) {
            (Some(since), Some(gate)) => {
                self.replay(&key, &conv, since, last, &gate, |recovered| {
                    joined(Some(recovered))
                })
                .await;
            }
            _ => self.reply(joined(None)),
        }
    }

    fn insert_joined(&mut self, channel: &Channel) {
        match channel {
            Channel::Room(room) => {
                self.joined.insert(room.clone());
            }
            Channel::Group(group) => {
                self.groups.insert(group.clone());
            }
        }
    }

    /// Forgets a joined channel (a group's pin included); returns whether it was joined.
    fn forget_joined(&mut self, channel: &Channel) -> bool {
        match channel {
            Channel::Room(room) => self.joined.remove(room),
            Channel::Group(group) => {
                let was = self.groups.remove(group);
                if was {
                    self.state.groups.unpin(group);
                }
                was
            }
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
        let me = self.outbox.shared.user.clone();
        let read = super::convs::read_state(&self.state, &me, &conv).await;
        self.replay(&key, &conv, since, last, &gate, |recovered| {
            ServerFrame::Resumed {
                id,
                with,
                last_seq,
                recovered,
                read_seq: read.map(|r| r.read_seq),
                unread: read.map(|r| r.unread),
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

    /// `leave {room | group}`: the channel's subscription, watch and presence key go with this
    /// connection.
    pub(super) async fn leave(&mut self, id: Option<FrameId>, channel: Channel) {
        if !self.forget_joined(&channel) {
            return self.error(id, ErrorCode::NotJoined, format!("not in {channel}"));
        }
        let Keys {
            topic,
            presence: room,
            ..
        } = keys(&channel);
        self.state.hub.leave(&topic, self.outbox.conn());
        let presence = &self.state.presence;
        presence.unwatch(&WatchKey::Room(room.clone()), self.outbox.conn());
        let shared = &self.outbox.shared;
        presence
            .delete_room(&room, &shared.user, &shared.conn)
            .await;
        let (room, group) = match channel {
            Channel::Room(room) => (Some(room), None),
            Channel::Group(group) => (None, Some(group)),
        };
        self.reply(ServerFrame::Left { id, room, group });
    }
}
