//! The frames about the user's conversations: `conversations` (the list), `read` (with the
//! `read_state` and `receipt` pushes it causes), `conversation_hide` and `group_receipts`. Each is
//! checked here, then asked of the conversation service beside the read loop.

use std::sync::Arc;

use protocol::conv::{ConvReply, ConvRequest, ReadState};
use protocol::frame::ConvTarget;
use protocol::group::Record;
use protocol::history::ConvRef;
use protocol::subject::Conversation;
use protocol::{ClientFrame, ErrorCode, FrameId, GroupId, ServerFrame, UserId};

use super::{Done, Session};
use crate::convs::{self, CONV_TIMEOUT, ConvError, STATE_TIMEOUT};
use crate::state::AppState;

fn error(id: Option<FrameId>, code: ErrorCode, message: impl Into<String>) -> ServerFrame {
    ServerFrame::Error {
        id,
        code,
        message: message.into(),
        retry_after_ms: None,
    }
}

fn conv_error(id: Option<FrameId>, e: &ConvError) -> ServerFrame {
    let code = match e {
        ConvError::Unavailable(_) => ErrorCode::Unavailable,
        ConvError::Refused(_) => ErrorCode::BadRequest,
    };
    error(id, code, e.to_string())
}

fn unexpected(id: Option<FrameId>) -> ServerFrame {
    error(
        id,
        ErrorCode::Unavailable,
        "unexpected answer from the conversation service",
    )
}

/// A conversation the user may name: a group they are a member of (with its record), or their
/// thread with another user.
struct Resolved {
    conv: Conversation,
    group: Option<GroupId>,
    with: Option<UserId>,
    record: Option<Arc<Record>>,
}

/// The conversation `target` names for `me`, or the `error` frame (with `id`) that refuses it.
async fn resolve(
    state: &AppState,
    id: &Option<FrameId>,
    me: &UserId,
    target: ConvTarget,
) -> Result<Resolved, ServerFrame> {
    match target {
        ConvTarget::Group(group) => match state.groups.member_record(&group, me).await {
            Ok(record) => Ok(Resolved {
                conv: Conversation::Group(group.clone()),
                group: Some(group),
                with: None,
                record: Some(record),
            }),
            Err(e) => Err(e.to_frame(id.clone())),
        },
        ConvTarget::With(other) => match Conversation::dm(me.clone(), other.clone()) {
            Some(conv) => Ok(Resolved {
                conv,
                group: None,
                with: Some(other),
                record: None,
            }),
            None => Err(error(
                id.clone(),
                ErrorCode::BadRequest,
                "there is no thread with yourself",
            )),
        },
    }
}

/// The user's read state in `conv` for `joined` and `resumed`; `None` if the service did not
/// answer in time.
pub(super) async fn read_state(
    state: &AppState,
    me: &UserId,
    conv: &Conversation,
) -> Option<ReadState> {
    let req = ConvRequest::State {
        user: me.clone(),
        conv: ConvRef::from(conv),
    };
    match convs::ask(&state.nats, &req, STATE_TIMEOUT).await {
        Ok(ConvReply::State { state, .. }) => Some(state),
        Ok(_) => None,
        Err(e) => {
            tracing::debug!(error = %e, "read state not available for a join");
            None
        }
    }
}

impl Session {
    pub(super) fn conv_frame(&mut self, id: Option<FrameId>, frame: ClientFrame) {
        let me = self.outbox.shared.user.clone();
        let conn = self.outbox.shared.conn.clone();
        let state = self.state.clone();
        self.inflight.push(Box::pin(async move {
            let frame = match frame {
                ClientFrame::Conversations { limit, before } => {
                    let req = ConvRequest::List {
                        user: me.clone(),
                        limit,
                        before,
                    };
                    match convs::ask(&state.nats, &req, CONV_TIMEOUT).await {
                        Ok(ConvReply::List { mut items, more }) => {
                            state.mutes.mark(&me, &mut items).await;
                            ServerFrame::Conversations { id, items, more }
                        }
                        Ok(_) => unexpected(id),
                        Err(e) => conv_error(id, &e),
                    }
                }
                ClientFrame::Read { target, seq } => {
                    match resolve(&state, &id, &me, target).await {
                        Ok(r) => read(&state, id, me, conn, r, seq).await,
                        Err(e) => e,
                    }
                }
                // Hiding touches only the user's own list, so a group they left may be hidden too.
                ClientFrame::ConversationHide { target } => {
                    let resolved = match target {
                        ConvTarget::Group(group) => Ok(Resolved {
                            conv: Conversation::Group(group.clone()),
                            group: Some(group),
                            with: None,
                            record: None,
                        }),
                        with => resolve(&state, &id, &me, with).await,
                    };
                    match resolved {
                        Ok(r) => {
                            let req = ConvRequest::Hide {
                                user: me,
                                conv: ConvRef::from(&r.conv),
                            };
                            match convs::ask(&state.nats, &req, CONV_TIMEOUT).await {
                                Ok(_) => ServerFrame::ConversationHidden {
                                    id,
                                    group: r.group,
                                    with: r.with,
                                },
                                Err(e) => conv_error(id, &e),
                            }
                        }
                        Err(e) => e,
                    }
                }
                // A user mutes only their own conversations: a group they are in, any thread.
                ClientFrame::ConversationMute { target, muted } => {
                    match resolve(&state, &id, &me, target.clone()).await {
                        Ok(r) => match state.mutes.set(&me, &target, muted).await {
                            Ok(()) => ServerFrame::ConversationMuted {
                                id,
                                group: r.group,
                                with: r.with,
                                muted,
                            },
                            Err(e) => ServerFrame::Error {
                                id,
                                code: ErrorCode::Unavailable,
                                message: format!("the mute was not stored: {e}; try again"),
                                retry_after_ms: None,
                            },
                        },
                        Err(e) => e,
                    }
                }
                ClientFrame::GroupReceipts { group, seq } => {
                    match resolve(&state, &id, &me, ConvTarget::Group(group.clone())).await {
                        Ok(r) => {
                            let req = ConvRequest::Readers {
                                conv: ConvRef::from(&r.conv),
                                seq,
                            };
                            match convs::ask(&state.nats, &req, CONV_TIMEOUT).await {
                                Ok(ConvReply::Readers { users }) => ServerFrame::GroupReceipts {
                                    id,
                                    group,
                                    seq,
                                    count: users.len(),
                                    users,
                                },
                                Ok(_) => unexpected(id),
                                Err(e) => conv_error(id, &e),
                            }
                        }
                        Err(e) => e,
                    }
                }
                // `dispatch` hands only these frames here.
                _ => return Done::Reply(unexpected(id)),
            };
            Done::Reply(frame)
        }));
    }
}

/// `read`: moves the position, answers, and when it moved tells the user's other connections and
/// the other participants.
async fn read(
    state: &AppState,
    id: Option<FrameId>,
    me: UserId,
    conn: protocol::ConnId,
    r: Resolved,
    seq: u64,
) -> ServerFrame {
    // A seq past the conversation's newest is clamped here, so the service does not wait for it.
    let seq = match state.backlog.last_seq(&r.conv).await {
        Ok(last) if last.exact => seq.min(last.seq),
        _ => seq,
    };
    let req = ConvRequest::Read {
        user: me.clone(),
        conv: ConvRef::from(&r.conv),
        seq,
    };
    let (rs, moved) = match convs::ask(&state.nats, &req, CONV_TIMEOUT).await {
        Ok(ConvReply::State { state, moved }) => (state, moved),
        Ok(_) => return unexpected(id),
        Err(e) => return conv_error(id, &e),
    };
    if moved {
        let synced = ServerFrame::ReadState {
            group: r.group.clone(),
            with: r.with.clone(),
            read_seq: rs.read_seq,
            unread: rs.unread,
        };
        convs::push(&state.nats, &me, &synced, Some(conn)).await;
        match (&r.with, &r.group, &r.record) {
            (Some(other), _, _) => {
                let receipt = ServerFrame::Receipt {
                    group: None,
                    with: Some(me.clone()),
                    user: None,
                    read_seq: rs.read_seq,
                };
                convs::push(&state.nats, other, &receipt, None).await;
            }
            (None, Some(group), Some(record))
                if record.members.len() <= state.config.group_receipt_limit =>
            {
                let receipt = ServerFrame::Receipt {
                    group: Some(group.clone()),
                    with: None,
                    user: Some(me.clone()),
                    read_seq: rs.read_seq,
                };
                for m in record.members.iter().filter(|m| m.user != me) {
                    convs::push(&state.nats, &m.user, &receipt, None).await;
                }
            }
            // Above the limit, no receipts: each read would fan out to every member.
            _ => {}
        }
    }
    ServerFrame::Read {
        id,
        group: r.group,
        with: r.with,
        read_seq: rs.read_seq,
        unread: rs.unread,
    }
}
