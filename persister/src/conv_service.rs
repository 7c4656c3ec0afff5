//! The conversation service: answers [`ConvRequest`]s on `chat.svc.conv` in queue group `conv`,
//! from the store's conversation index (each user's list, read positions, unread counts).
//!
//! A `read` may name a message the stream has stored but this persister has not yet: the store lags
//! the stream by the consumer's backlog. The answer then waits, up to
//! [`READ_CATCH_UP_MS`](protocol::conv::READ_CATCH_UP_MS), for the index to reach that sequence, so
//! the position is not clamped below what the reader saw.

use std::sync::Arc;
use std::time::Duration;

use protocol::UserId;
use protocol::conv::ReadState;
use protocol::conv::{
    CONV_QUEUE, CONV_SUBJECT, ConvReply, ConvRequest, MAX_LIST, READ_CATCH_UP_MS,
};
use protocol::history::ConvRef;
use protocol::subject::Conversation;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::consumer::ErrorChain;
use crate::store::{Store, StoreError};

/// Requests handled at once by one instance; further requests wait in the subscription.
pub const MAX_CONCURRENT_REQUESTS: usize = 256;
/// Most reads committed in one transaction. Reads that arrive while one commits wait for the next,
/// so under load each commit (one fsync) carries many.
pub const READ_BATCH_MAX: usize = 256;

type ReadReply = oneshot::Sender<Result<(ReadState, bool), String>>;

/// The queue of reads waiting for the next commit.
#[derive(Clone)]
pub struct ReadQueue(mpsc::Sender<((UserId, Conversation, u64), ReadReply)>);

impl ReadQueue {
    /// Starts the task that commits queued reads in batches; it ends with the last queue handle.
    pub fn start(store: Arc<dyn Store>) -> Self {
        let (tx, mut rx) =
            mpsc::channel::<((UserId, Conversation, u64), ReadReply)>(MAX_CONCURRENT_REQUESTS);
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while batch.len() < READ_BATCH_MAX {
                    match rx.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                let (marks, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
                match store.mark_read_many(&marks).await {
                    Ok(states) => {
                        for (reply, state) in replies.into_iter().zip(states) {
                            let _ = reply.send(Ok(state));
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %ErrorChain(&e), "read batch failed");
                        for reply in replies {
                            let _ = reply.send(Err(e.to_string()));
                        }
                    }
                }
            }
        });
        Self(tx)
    }

    async fn mark(
        &self,
        user: UserId,
        conv: Conversation,
        seq: u64,
    ) -> Result<(ReadState, bool), String> {
        let (tx, rx) = oneshot::channel();
        self.0
            .send(((user, conv, seq), tx))
            .await
            .map_err(|_| "the read queue stopped".to_owned())?;
        rx.await.map_err(|_| "the read queue stopped".to_owned())?
    }
}
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
pub async fn answer(store: &dyn Store, reads: &ReadQueue, body: &[u8]) -> ConvReply {
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
            return match reads.mark(user, conv, seq).await {
                Ok((state, moved)) => ConvReply::State { state, moved },
                Err(message) => ConvReply::Error {
                    message: format!("the conversation index is unavailable: {message}"),
                },
            };
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
    let sub = svc::nats::queue_subscribe(&nats, CONV_SUBJECT, CONV_QUEUE).await?;
    tracing::info!(
        subject = CONV_SUBJECT,
        queue = CONV_QUEUE,
        "conversation service ready"
    );
    let reads = ReadQueue::start(store.clone());
    crate::service::answer_each(&nats, sub, stop, MAX_CONCURRENT_REQUESTS, move |payload| {
        let (store, reads) = (store.clone(), reads.clone());
        async move { serde_json::to_vec(&answer(store.as_ref(), &reads, &payload).await) }
    })
    .await;
    Ok(())
}
