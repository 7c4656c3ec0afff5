//! The frames that create and run groups: `group_create`, `group_add`, `group_remove`,
//! `group_quit`, `group_role`, `group_rename` and `group_info`. Each runs beside the read loop,
//! like a `send`, and is answered with the group as it is after the change.

use protocol::frame::GroupFrame;
use protocol::group::{Change, Record};
use protocol::{ClientFrame, FrameId, GroupId, ServerFrame};

use super::{Done, Session};

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

impl Session {
    pub(super) fn group_frame(&mut self, id: Option<FrameId>, frame: ClientFrame) {
        let me = self.outbox.shared.user.clone();
        let groups = self.state.groups.clone();
        let (group, change) = match frame {
            ClientFrame::GroupCreate {
                group,
                name,
                members,
            } => {
                self.inflight.push(Box::pin(async move {
                    Done::Reply(match groups.create(&me, group, name, members).await {
                        Ok((group, record)) => group_frame(id, group, &record),
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
        self.inflight.push(Box::pin(async move {
            Done::Reply(match groups.change(&group, &me, change).await {
                Ok(record) => group_frame(id, group, &record),
                Err(e) => e.to_frame(id),
            })
        }));
    }
}
