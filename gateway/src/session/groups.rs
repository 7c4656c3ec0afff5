//! The frames that create and run groups: `group_create`, `group_add`, `group_remove`,
//! `group_quit`, `group_role`, `group_rename` and `group_info`. Each runs beside the read loop,
//! like a `send`, and is answered with the group as it is after the change. Users who became
//! members are told on every connection, since a group sends nothing to those who have not joined.

use protocol::frame::GroupFrame;
use protocol::group::{Change, Record};
use protocol::{ClientFrame, ConnId, FrameId, GroupId, ServerFrame, UserId};

use super::{Done, Session};
use crate::convs;
use crate::state::AppState;

/// The `group` frame of a record.
fn group_frame(id: Option<FrameId>, group: GroupId, record: &Record) -> ServerFrame {
    ServerFrame::Group(GroupFrame {
        id,
        group,
        name: record.name.clone(),
        owner: record.owner().cloned(),
        members: record.members.clone(),
        member_count: record.members.len(),
    })
}

/// Pushes the `group` frame, without an `id`, to every connection of each of `added` that is a
/// member after the change, on every gateway; the one connection that made the change has its answer.
async fn tell_added(
    state: &AppState,
    conn: &ConnId,
    me: &UserId,
    group: &GroupId,
    record: &Record,
    added: &[UserId],
) {
    let frame = group_frame(None, group.clone(), record);
    for m in record.members.iter().filter(|m| added.contains(&m.user)) {
        let except = (&m.user == me).then(|| conn.clone());
        convs::push(&state.nats, &m.user, &frame, except).await;
    }
}

impl Session {
    pub(super) fn group_frame(&mut self, id: Option<FrameId>, frame: ClientFrame) {
        let me = self.outbox.shared.user.clone();
        let conn = self.outbox.shared.conn.clone();
        let state = self.state.clone();
        let groups = self.state.groups.clone();
        let (group, change) = match frame {
            ClientFrame::GroupCreate {
                group,
                name,
                members,
            } => {
                self.inflight.push(Box::pin(async move {
                    Done::Reply(match groups.create(&me, group, name, members).await {
                        Ok((group, record)) => {
                            let all: Vec<UserId> =
                                record.members.iter().map(|m| m.user.clone()).collect();
                            tell_added(&state, &conn, &me, &group, &record, &all).await;
                            group_frame(id, group, &record)
                        }
                        Err(e) => e.to_frame(id),
                    })
                }));
                return;
            }
            ClientFrame::GroupInfo { group } => {
                self.inflight.push(Box::pin(async move {
                    Done::Reply(match groups.member_record(&group, &me).await {
                        Ok(record) => group_frame(id, group, &record),
                        Err(e) => e.to_frame(id),
                    })
                }));
                return;
            }
            ClientFrame::GroupAdd { group, users } => (group, Change::Add(users)),
            ClientFrame::GroupRemove { group, users } => (group, Change::Remove(users)),
            ClientFrame::GroupQuit { group } => (group, Change::Quit),
            ClientFrame::GroupRole { group, user, role } => (group, Change::Role { user, role }),
            ClientFrame::GroupRename { group, name } => (group, Change::Rename(name)),
            // `dispatch` hands only the group frames here.
            _ => return,
        };
        let added = match &change {
            Change::Add(users) => users.clone(),
            _ => Vec::new(),
        };
        self.inflight.push(Box::pin(async move {
            Done::Reply(match groups.change(&group, &me, change).await {
                Ok(record) => {
                    tell_added(&state, &conn, &me, &group, &record, &added).await;
                    group_frame(id, group, &record)
                }
                Err(e) => e.to_frame(id),
            })
        }));
    }
}
