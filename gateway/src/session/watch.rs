//! The presence frames: `watch`, `unwatch` and `presence_query`, and the refresh of this
//! connection's own presence keys as its frames arrive.

use std::collections::HashSet;

use protocol::frame::{MAX_WATCHED, PresenceTarget};
use protocol::{ErrorCode, FrameId, GroupId, RoomId, ServerFrame, UserId};
use tokio::time::Instant;
use tracing::Instrument;

use protocol::conv::{ConvReply, ConvRequest};
use protocol::frame::PresenceEntry;

use super::{Session, refresh_period};
use crate::config::PresencePrivacy;
use crate::convs::{self, CONV_TIMEOUT};
use crate::presence::WatchKey;
use crate::state::AppState;

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
        // Strangers count as watched, show as offline once, and are never followed.
        let list: Vec<UserId> = new.iter().cloned().collect();
        let (state, me) = (self.state.clone(), self.outbox.shared.user.clone());
        let contacts = contacts(&state, &me, &list).await;
        let strangers: Vec<UserId> = list
            .iter()
            .filter(|u| !contacts.contains(u))
            .cloned()
            .collect();
        // The watches start together: each waits for its own snapshot (a consumer created at the
        // server), and one after another, 200 of them took seconds.
        let presence = self.state.presence.clone();
        let states = futures_util::future::join_all(
            contacts
                .iter()
                .map(|user| presence.watch(WatchKey::User(user.clone()), self.outbox.clone())),
        )
        .await;
        self.watched.extend(new);
        let offline = strangers.into_iter().map(|user| PresenceEntry {
            user,
            online: false,
            last_seen: None,
        });
        for p in states.into_iter().flatten().chain(offline) {
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
        let mut hidden: HashSet<UserId> = HashSet::new();
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
                let (state, me) = (self.state.clone(), self.outbox.shared.user.clone());
                let contacts = contacts(&state, &me, &users).await;
                for stranger in users.iter().filter(|u| !contacts.contains(u)) {
                    hidden.insert(stranger.clone());
                }
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
        for p in users.iter_mut().filter(|p| hidden.contains(&p.user)) {
            p.online = false;
            p.last_seen = None;
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

/// Those of `users` whose presence this user may see: with `GATEWAY_PRESENCE_PRIVACY=contacts`,
/// those who share a thread or a group with them (asked of the conversation service, and
/// nobody else if it does not answer: privacy fails closed).
async fn contacts(state: &AppState, me: &UserId, users: &[UserId]) -> HashSet<UserId> {
    if state.config.presence_privacy == PresencePrivacy::Open || users.is_empty() {
        return users.iter().cloned().collect();
    }
    let req = ConvRequest::Contacts {
        user: me.clone(),
        among: users.to_vec(),
    };
    let mut out: HashSet<UserId> = match convs::ask(&state.nats, &req, CONV_TIMEOUT).await {
        Ok(ConvReply::Contacts { users }) => users.into_iter().collect(),
        Ok(_) => HashSet::new(),
        Err(e) => {
            tracing::warn!(error = %e, "contacts unknown; presence shows them offline");
            HashSet::new()
        }
    };
    if users.contains(me) {
        out.insert(me.clone());
    }
    out
}
