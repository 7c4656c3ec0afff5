//! `typing {group | with}`: tells the other members of a group, or the other user of a thread, on
//! every gateway, that this user is typing. It is a signal, not a message: it goes through the users'
//! control subjects on core NATS, is never stored, is passed on at most once per
//! [`TYPING_INTERVAL_MS`] per connection (those between are dropped without an answer), and is not
//! sent in groups larger than `GROUP_RECEIPT_LIMIT`, where it would reach everyone at every keystroke.

use std::time::Duration;

use protocol::frame::{ConvTarget, TYPING_INTERVAL_MS};
use protocol::{ErrorCode, FrameId, ServerFrame};
use tokio::time::Instant;

use super::{Done, Session};
use crate::convs;

impl Session {
    pub(super) fn typing(&mut self, id: Option<FrameId>, target: ConvTarget) {
        let me = self.outbox.shared.user.clone();
        let now = Instant::now();
        if self.typing_at.is_some_and(|t| {
            now.saturating_duration_since(t) < Duration::from_millis(TYPING_INTERVAL_MS)
        }) {
            self.state.metrics.typing_dropped.inc();
            return;
        }
        match target {
            ConvTarget::With(other) => {
                if other == me {
                    return self.error(id, ErrorCode::BadRequest, "typing to yourself");
                }
                self.typing_at = Some(now);
                let state = self.state.clone();
                let frame = ServerFrame::Typing {
                    group: None,
                    with: Some(me.clone()),
                    user: me,
                };
                self.inflight.push(Box::pin(async move {
                    convs::push(&state.nats, &other, &frame, None).await;
                    Done::Quiet
                }));
            }
            ConvTarget::Group(group) => {
                self.typing_at = Some(now);
                let state = self.state.clone();
                self.inflight.push(Box::pin(async move {
                    let record = match state.groups.member_record(&group, &me).await {
                        Ok(record) => record,
                        Err(e) => return Done::Reply(e.to_frame(id)),
                    };
                    if record.members.len() > state.config.group_receipt_limit {
                        return Done::Quiet;
                    }
                    let frame = ServerFrame::Typing {
                        group: Some(group),
                        with: None,
                        user: me.clone(),
                    };
                    for m in record.members.iter().filter(|m| m.user != me) {
                        convs::push(&state.nats, &m.user, &frame, None).await;
                    }
                    Done::Quiet
                }));
            }
        }
    }
}
