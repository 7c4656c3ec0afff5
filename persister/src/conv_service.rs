//! The conversation service: answers [`ConvRequest`]s on `chat.svc.conv` in queue group `conv`,
//! from the store's conversation index (each user's list, read positions, unread counts).
//!
//! A `read` may name a message the stream has stored but this persister has not yet: the store lags
//! the stream by the consumer's backlog. The answer then waits, up to
//! [`READ_CATCH_UP_MS`](protocol::conv::READ_CATCH_UP_MS), for the index to reach that sequence, so
//! the position is not clamped below what the reader saw.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use protocol::conv::{
    CONV_QUEUE, CONV_SUBJECT, ConvReply, ConvRequest, MAX_LIST, READ_CATCH_UP_MS,
};
use protocol::history::ConvRef;
use protocol::subject::Conversation;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::consumer::ErrorChain;
use crate::store::{Store, StoreError};

/// Requests handled at once by one instance; further requests wait in the subscription.
pub const MAX_CONCURRENT_REQUESTS: usize = 256;
/// Pause between looks at the index while a `read` waits for it.
const CATCH_UP_POLL: Duration = Duration::from_millis(10);

fn conv_of(c: &ConvRef) -> Result<Conversation, ConvReply> {
    match c.conversation() {
        Some(Conversation::Room(_)) | None => Err(ConvReply::Error {
            message: "read state is kept for groups and direct threads only".into(),
        }),
        Some(conv) => Ok(conv),
    }
}

fn failed(e: &StoreError) -> ConvReply {
    tracing::error!(error = %ErrorChain(e), "conversation index failed");
    ConvReply::Error {
        message: format!("the conversation index is unavailable: {e}"),
    }
}

/// Answers one request body.
pub async fn answer(store: &dyn Store, body: &[u8]) -> ConvReply {
    let req: ConvRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            return ConvReply::Error {
                message: e.to_string(),
            };
        }
    };
    let result = match req {
        ConvRequest::List {
            user,
            limit,
            before,
        } => {
            if !(1..=MAX_LIST).contains(&limit) {
                return ConvReply::Error {
                    message: format!("limit must be 1..={MAX_LIST}"),
                };
            }
            store
                .conversations(&user, limit, before)
                .await
                .map(|(items, more)| ConvReply::List { items, more })
        }
        ConvRequest::Read { user, conv, seq } => {
            let conv = match conv_of(&conv) {
                Ok(c) => c,
                Err(reply) => return reply,
            };
            let deadline = tokio::time::Instant::now() + Duration::from_millis(READ_CATCH_UP_MS);
            loop {
                match store.newest(&conv).await {
                    Ok(newest) if newest < seq && tokio::time::Instant::now() < deadline => {
                        tokio::time::sleep(CATCH_UP_POLL).await;
                    }
                    Ok(_) => break,
                    Err(e) => return failed(&e),
                }
            }
            store
                .mark_read(&user, &conv, seq)
                .await
                .map(|(state, moved)| ConvReply::State { state, moved })
        }
        ConvRequest::State { user, conv } => {
            let conv = match conv_of(&conv) {
                Ok(c) => c,
                Err(reply) => return reply,
            };
            store
                .read_state(&user, &conv)
                .await
                .map(|state| ConvReply::State {
                    state,
                    moved: false,
                })
        }
        ConvRequest::Hide { user, conv } => {
            let conv = match conv_of(&conv) {
                Ok(c) => c,
                Err(reply) => return reply,
            };
            store.hide(&user, &conv).await.map(|()| ConvReply::Hidden)
        }
        ConvRequest::Contacts { user, among } => store
            .contacts(&user, &among)
            .await
            .map(|users| ConvReply::Contacts { users }),
        ConvRequest::GroupCounts { users } => store
            .group_counts(&users)
            .await
            .map(|counts| ConvReply::GroupCounts { counts }),
        ConvRequest::Readers { conv, seq } => {
            let conv = match conv_of(&conv) {
                Ok(c) => c,
                Err(reply) => return reply,
            };
            store
                .readers(&conv, seq)
                .await
                .map(|users| ConvReply::Readers { users })
        }
    };
    result.unwrap_or_else(|e| failed(&e))
}

/// Serves conversation requests until `stop` is cancelled.
pub async fn serve(
    nats: async_nats::Client,
    store: Arc<dyn Store>,
    stop: CancellationToken,
) -> Result<(), svc::nats::SubscribeError> {
    let mut sub = svc::nats::queue_subscribe(&nats, CONV_SUBJECT, CONV_QUEUE).await?;
    tracing::info!(
        subject = CONV_SUBJECT,
        queue = CONV_QUEUE,
        "conversation service ready"
    );
    let limit = Arc::new(Semaphore::new(MAX_CONCURRENT_REQUESTS));
    let mut tasks = JoinSet::new();
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            m = sub.next() => match m { Some(m) => m, None => break },
        };
        let Some(reply) = msg.reply.clone() else {
            continue;
        };
        let Ok(permit) = limit.clone().acquire_owned().await else {
            break;
        };
        let (nats, store) = (nats.clone(), store.clone());
        tasks.spawn(async move {
            let answer = answer(store.as_ref(), &msg.payload).await;
            let body = serde_json::to_vec(&answer).unwrap_or_default();
            if let Err(e) = nats.publish(reply, body.into()).await {
                tracing::debug!(error = %e, "conversation reply not sent");
            }
            drop(permit);
        });
    }
    let _ = sub.unsubscribe().await;
    while tasks.join_next().await.is_some() {}
    Ok(())
}
