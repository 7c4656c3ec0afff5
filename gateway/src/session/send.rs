//! The frames that store and read messages: `send` (checked at the edge, then published while the
//! read loop goes on) and `history` (asked of the history service).

use protocol::control::ContentDecision;
use protocol::history::{ConvRef, HistoryRequest};
use protocol::subject::Conversation;
use protocol::{ErrorCode, FrameId, ServerFrame, Target};

use super::{Done, SendOutcome, Session};
use crate::backlog::BacklogError;
use crate::publish::{Stored, stored_message};

/// Most bytes a `send`'s future may hold in the tests' (debug, unoptimized) build, checked on every
/// send there. In a release build the same future is 648 bytes, within glibc's per-thread cache
/// (1 KiB), which a 3 KB future missed on every send (docs/benchmarks.md, fifth round); the debug
/// build lays it out larger (1,056 bytes), so the bound catches growth, not the release size.
const MAX_SEND_FUTURE: usize = 1152;
/// The same for the publish future inside it, whose retry and duplicate paths are boxed (408 bytes
/// in the debug build; about 400 in release, `publish.rs`).
const MAX_PUBLISH_FUTURE: usize = 512;

impl Session {
    pub(super) fn history(
        &mut self,
        id: Option<FrameId>,
        target: Target,
        before: Option<u64>,
        after: Option<u64>,
        limit: u32,
    ) {
        let me = self.outbox.shared.user.clone();
        // Rooms are public: anyone may read a room's history without joining it. A thread is named
        // by its other participant, so a user can only ever name a thread they are part of. A
        // group's history is for its members, checked below.
        let (conv, room, group, with) = match target {
            Target::Room(room) => (Conversation::Room(room.clone()), Some(room), None, None),
            Target::Group(group) => (Conversation::Group(group.clone()), None, Some(group), None),
            Target::User(other) => match Conversation::dm(me.clone(), other.clone()) {
                Some(conv) => (conv, None, None, Some(other)),
                None => {
                    return self.error(
                        id,
                        ErrorCode::BadRequest,
                        "there is no thread with yourself",
                    );
                }
            },
        };
        let req = HistoryRequest {
            conv: ConvRef::from(&conv),
            before,
            after,
            limit,
        };
        let backlog = self.state.backlog.clone();
        let groups = self.state.groups.clone();
        self.inflight.push(Box::pin(async move {
            if let Some(group) = &group
                && let Err(e) = groups.member_record(group, &me).await
            {
                return Done::Reply(e.to_frame(id));
            }
            let frame = match backlog.history(&req).await {
                Ok((messages, more)) => ServerFrame::History {
                    id,
                    room,
                    group,
                    with,
                    messages,
                    more,
                },
                Err(BacklogError::Refused(message)) => ServerFrame::Error {
                    id,
                    code: ErrorCode::BadRequest,
                    message,
                    retry_after_ms: None,
                },
                Err(e) => ServerFrame::Error {
                    id,
                    code: ErrorCode::Unavailable,
                    message: format!("history is unavailable: {e}"),
                    retry_after_ms: None,
                },
            };
            Done::Reply(frame)
        }));
    }

    pub(super) fn send(
        &mut self,
        id: Option<FrameId>,
        target: Target,
        text: String,
        cmid: protocol::ClientMsgId,
        mentions: Vec<protocol::UserId>,
    ) {
        let cfg = &self.state.config;
        if text.is_empty() {
            return self.error(id, ErrorCode::BadRequest, "text must not be empty");
        }
        if text.chars().count() > cfg.max_text_chars {
            let max = cfg.max_text_chars;
            return self.error(
                id,
                ErrorCode::TooLarge,
                format!("text is longer than {max} characters"),
            );
        }
        let me = self.outbox.shared.user.clone();
        // The user's send rate, shared with their other connections here and on other gateways.
        if let Err(wait) = self
            .state
            .user_limits
            .try_send(&me, tokio::time::Instant::now())
        {
            self.state.metrics.error(ErrorCode::RateLimited);
            return self.reply(ServerFrame::Error {
                id,
                code: ErrorCode::RateLimited,
                message: "this user sends too fast across their connections; slow down".into(),
                retry_after_ms: Some(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1)),
            });
        }
        let conv = match &target {
            Target::Room(room) if !self.joined.contains(room) => {
                return self.error(
                    id,
                    ErrorCode::NotJoined,
                    format!("join room {room} before sending to it"),
                );
            }
            Target::Room(room) => Conversation::Room(room.clone()),
            // `not_joined` only for members: anyone else is `forbidden`, so ids cannot be probed.
            Target::Group(group) if !self.groups.contains(group) => {
                let (groups, group) = (self.state.groups.clone(), group.clone());
                self.inflight.push(Box::pin(async move {
                    let (code, message) = match groups.member_record(&group, &me).await {
                        Ok(_) => (
                            ErrorCode::NotJoined,
                            format!("join group {group} before sending to it"),
                        ),
                        Err(e) => (e.code(), e.to_string()),
                    };
                    Done::Reply(ServerFrame::Error {
                        id,
                        code,
                        message,
                        retry_after_ms: None,
                    })
                }));
                return;
            }
            // Membership is checked against the gateway's copy of the group: no round trip.
            Target::Group(group) => match self.state.groups.cached_record(group) {
                Some(Some(record)) if record.is_member(&me) => {
                    // Mentions name members: anyone else would be told of a group they are not in.
                    if let Some(stranger) = mentions.iter().find(|u| !record.is_member(u)) {
                        return self.error(
                            id,
                            ErrorCode::BadRequest,
                            format!(
                                "{stranger} is not a member of this group; mention members only"
                            ),
                        );
                    }
                    Conversation::Group(group.clone())
                }
                _ => {
                    return self.error(id, ErrorCode::Forbidden, "not a member of this group");
                }
            },
            Target::User(to) => match Conversation::dm(me.clone(), to.clone()) {
                Some(conv) => conv,
                None => {
                    return self.error(
                        id,
                        ErrorCode::BadRequest,
                        "cannot send a direct message to yourself",
                    );
                }
            },
        };
        let mut msg = stored_message(me, &target, text, cmid.clone());
        msg.mentions = mentions;
        // The future holds the shared state (one pointer), not clones of the publisher and the
        // checker (half a kilobyte), and boxes the content check and the publish's retry and
        // duplicate paths: at about 650 bytes it stays within glibc's per-thread cache (1 KiB); at
        // 3 KB each send took malloc's slow path.
        let state = self.state.clone();
        let send = async move {
            if let Some(checker) = &state.content {
                match Box::pin(checker.check(&msg.from, &msg.text)).await {
                    Ok(ContentDecision::Deliver) => {}
                    Ok(ContentDecision::Reject) => {
                        return Done::Send(id, cmid, SendOutcome::Rejected);
                    }
                    Ok(ContentDecision::Hold) => return Done::Send(id, cmid, SendOutcome::Held),
                    Err(e) => {
                        return Done::Send(id, cmid, SendOutcome::Unavailable(e.to_string()));
                    }
                }
            }
            let publish = state.publisher.publish(&conv, &msg);
            // Checked in every debug build, so each test that sends a message fails if it grows.
            debug_assert!(
                std::mem::size_of_val(&publish) <= MAX_PUBLISH_FUTURE,
                "the publish future grew to {} bytes",
                std::mem::size_of_val(&publish)
            );
            let outcome = match publish.await {
                Ok(stored) => SendOutcome::Stored(stored),
                Err(e) => SendOutcome::Unavailable(e.to_string()),
            };
            Done::Send(id, cmid, outcome)
        };
        debug_assert!(
            std::mem::size_of_val(&send) <= MAX_SEND_FUTURE,
            "the send future grew to {} bytes",
            std::mem::size_of_val(&send)
        );
        self.inflight.push(Box::pin(send));
    }

    pub(super) fn finish_send(
        &mut self,
        id: Option<FrameId>,
        client_msg_id: protocol::ClientMsgId,
        outcome: SendOutcome,
    ) {
        match outcome {
            SendOutcome::Stored(Stored { seq, ts }) => self.reply(ServerFrame::Ack {
                id,
                client_msg_id,
                seq,
                ts,
            }),
            SendOutcome::Unavailable(e) => self.error(
                id,
                ErrorCode::Unavailable,
                format!("message not stored: {e}; resend with the same client_msg_id"),
            ),
            SendOutcome::Rejected => self.error(
                id,
                ErrorCode::ContentRejected,
                "the message was rejected by the content check and not stored",
            ),
            SendOutcome::Held => self.error(
                id,
                ErrorCode::ContentHeld,
                "the message is held for review and was not delivered",
            ),
        }
    }
}
