//! The presence frames: `watch`, `unwatch` and `presence_query`, and the refresh of this
//! connection's own presence keys as its frames arrive.

use std::collections::HashSet;

use protocol::frame::{MAX_WATCHED, PresenceTarget};
use protocol::{ErrorCode, FrameId, GroupId, RoomId, ServerFrame, UserId};
use tokio::time::Instant;
use tracing::Instrument;

use super::{Session, refresh_period};
use crate::presence::WatchKey;

impl Session {
    /// Refreshes this connection's presence keys, at most every third of their TTL, in the background.
    pub(super) fn refresh_presence(&mut self) {
        if Instant::now() < self.next_refresh
            || self.refreshing.as_ref().is_some_and(|r| !r.is_finished())
        {
            return;
        }
        let presence = self.state.presence.clone();
        self.next_refresh = Instant::now() + refresh_period(&presence);
        let (user, conn) = (
            self.outbox.shared.user.clone(),
            self.outbox.shared.conn.clone(),
        );
        let mut rooms: Vec<RoomId> = self.joined.iter().cloned().collect();
        // A group this user has left keeps no presence key, though the connection still lists it.
        let groups = &self.state.groups;
        rooms.extend(
            self.groups
                .iter()
                .filter(|g| {
                    groups
                        .cached_record(g)
                        .is_some_and(|r| r.is_some_and(|r| r.is_member(&user)))
                })
                .map(GroupId::as_room),
        );
        self.refreshing = Some(tokio::spawn(
            async move {
                presence.put_conn(&user, &conn).await;
                for room in rooms {
                    presence.put_room(&room, &user, &conn).await;
                }
            }
            .in_current_span(),
        ));
    }

    pub(super) async fn watch(&mut self, id: Option<FrameId>, users: Vec<UserId>) {
        let new: HashSet<UserId> = users
            .into_iter()
            .filter(|u| !self.watched.contains(u))
            .collect();
        if self.watched.len() + new.len() > MAX_WATCHED {
            return self.error(
                id,
                ErrorCode::BadRequest,
                format!("a connection may watch at most {MAX_WATCHED} users"),
            );
        }
        // The watches start together: each waits for its own snapshot (a consumer created at the
        // server), and one after another, 200 of them took seconds.
        let presence = self.state.presence.clone();
        let states = futures_util::future::join_all(
            new.iter()
                .map(|user| presence.watch(WatchKey::User(user.clone()), self.outbox.clone())),
        )
        .await;
        self.watched.extend(new);
        for p in states.into_iter().flatten() {
            self.reply(ServerFrame::Presence {
                room: None,
                group: None,
                user: p.user,
                online: p.online,
                last_seen: p.last_seen,
            });
        }
        let watching = self.watched.len();
        self.reply(ServerFrame::Watched { id, watching });
    }

    pub(super) fn unwatch(&mut self, id: Option<FrameId>, users: Vec<UserId>) {
        for user in users {
            if self.watched.remove(&user) {
                self.state
                    .presence
                    .unwatch(&WatchKey::User(user), self.outbox.conn());
            }
        }
        let watching = self.watched.len();
        self.reply(ServerFrame::Unwatched { id, watching });
    }

    pub(super) async fn presence_query(&mut self, id: Option<FrameId>, target: PresenceTarget) {
        let mut members = None;
        let (room, group, keys) = match target {
            PresenceTarget::Room(room) => (Some(room.clone()), None, vec![WatchKey::Room(room)]),
            PresenceTarget::Group(group) => {
                let me = &self.outbox.shared.user;
                match self.state.groups.member_record(&group, me).await {
                    Ok(record) => members = Some(record),
                    Err(e) => return self.error(id, e.code(), e.to_string()),
                }
                let key = WatchKey::Room(group.as_room());
                (None, Some(group), vec![key])
            }
            PresenceTarget::Users(users) => {
                (None, None, users.into_iter().map(WatchKey::User).collect())
            }
        };
        let mut users = Vec::new();
        for key in keys {
            match self.state.presence.query(key).await {
                Ok(state) => users.extend(state),
                Err(e) => {
                    tracing::warn!(error = %e, "presence query failed");
                    return self.error(
                        id,
                        ErrorCode::Unavailable,
                        "presence is unavailable; try again",
                    );
                }
            }
        }
        // A connection of a user who just left may not have deleted its key yet.
        if let Some(record) = members {
            users.retain(|p| record.is_member(&p.user));
        }
        self.reply(ServerFrame::PresenceState {
            id,
            room,
            group,
            users,
        });
    }
}
