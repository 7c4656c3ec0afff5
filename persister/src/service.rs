//! The history service: answers [`HistoryRequest`]s on `chat.svc.history` in queue group `history`.
//!
//! Every persister instance joins the queue group, so each request is answered once and read capacity
//! grows with instances. When thousands of clients reconnect to one room at once they ask for the same
//! page; [`Coalescer`] turns those identical concurrent requests into one store read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use futures_util::future::{BoxFuture, FutureExt, Shared};
use protocol::history::{
    HISTORY_QUEUE, HISTORY_SUBJECT, HistoryErrorCode, HistoryReply, HistoryRequest,
};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::consumer::ErrorChain;
use crate::metrics::Metrics;
use crate::store::{Page, PageQuery, Store, StoreError};

/// Requests handled at once by one instance; further requests wait in the subscription.
pub const MAX_CONCURRENT_REQUESTS: usize = 256;
/// Distinct requests that can be in flight for coalescing; beyond this a request reads on its own.
pub const MAX_COALESCED_KEYS: usize = 1024;

type SharedRead = Shared<BoxFuture<'static, Result<Arc<Page>, Arc<StoreError>>>>;

/// Merges concurrent identical page reads into one.
pub struct Coalescer {
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    /// Reads in flight, by query. The lock is held only to look up or insert, never across `.await`;
    /// the entry is removed by the request that created it, when its read ends (or is dropped).
    inflight: Mutex<HashMap<PageQuery, SharedRead>>,
}

impl Coalescer {
    pub fn new(store: Arc<dyn Store>, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            store,
            metrics,
            inflight: Mutex::default(),
        })
    }

    /// The page for `q`, shared with any identical request already reading it.
    pub async fn page(self: &Arc<Self>, q: PageQuery) -> Result<Arc<Page>, Arc<StoreError>> {
        let (read, _leader) = {
            let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(read) = inflight.get(&q) {
                self.metrics.history_coalesced.inc();
                (read.clone(), None)
            } else {
                let store = self.store.clone();
                let metrics = self.metrics.clone();
                let key = q.clone();
                let read = async move {
                    metrics.store_reads.inc();
                    store.page(&key).await.map(Arc::new).map_err(Arc::new)
                }
                .boxed()
                .shared();
                if inflight.len() < MAX_COALESCED_KEYS {
                    inflight.insert(q.clone(), read.clone());
                    (read, Some(Leader { owner: self, q }))
                } else {
                    (read, None)
                }
            }
        };
        read.await
    }
}

/// Removes its in-flight entry when the leading request ends, however it ends.
struct Leader<'a> {
    owner: &'a Coalescer,
    q: PageQuery,
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        let mut inflight = self
            .owner
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        inflight.remove(&self.q);
    }
}

/// Answers one request body.
pub async fn answer(coalescer: &Arc<Coalescer>, metrics: &Metrics, body: &[u8]) -> HistoryReply {
    metrics.history_requests.inc();
    let req: HistoryRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            metrics.history_bad_requests.inc();
            return HistoryReply::Error {
                code: HistoryErrorCode::BadRequest,
                message: e.to_string(),
            };
        }
    };
    let q = match PageQuery::from_request(&req) {
        Ok(q) => q,
        Err(e) => {
            metrics.history_bad_requests.inc();
            return HistoryReply::Error {
                code: HistoryErrorCode::BadRequest,
                message: e.to_string(),
            };
        }
    };
    match coalescer.page(q).await {
        Ok(page) => HistoryReply::Page {
            messages: page.messages.clone(),
            more: page.more,
        },
        Err(e) => {
            metrics.store_read_errors.inc();
            tracing::error!(error = %ErrorChain(e.as_ref()), "history read failed");
            HistoryReply::Error {
                code: HistoryErrorCode::Unavailable,
                message: "history store read failed".into(),
            }
        }
    }
}

/// Serves history requests until `stop` is cancelled. Dropping this future drops every request task.
pub async fn serve(
    nats: async_nats::Client,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> Result<(), svc::nats::SubscribeError> {
    // Registered at the server before "ready" is logged, so a request sent after it is answered.
    let sub = svc::nats::queue_subscribe(&nats, HISTORY_SUBJECT, HISTORY_QUEUE).await?;
    tracing::info!(
        subject = HISTORY_SUBJECT,
        queue = HISTORY_QUEUE,
        "history service ready"
    );
    let coalescer = Coalescer::new(store, metrics.clone());
    answer_each(&nats, sub, stop, MAX_CONCURRENT_REQUESTS, move |payload| {
        let (coalescer, metrics) = (coalescer.clone(), metrics.clone());
        async move { serde_json::to_vec(&answer(&coalescer, &metrics, &payload).await) }
    })
    .await;
    Ok(())
}

/// Answers every request on `sub` with what `answer` makes of its payload, at most `max` at once,
/// until `stop` is cancelled or the subscription ends; then unsubscribes and waits for the requests
/// in flight. Shared by the persister's services.
pub(crate) async fn answer_each<F, Fut>(
    nats: &async_nats::Client,
    mut sub: async_nats::Subscriber,
    stop: CancellationToken,
    max: usize,
    answer: F,
) where
    F: Fn(bytes::Bytes) -> Fut,
    Fut: Future<Output = serde_json::Result<Vec<u8>>> + Send + 'static,
{
    let limit = Arc::new(Semaphore::new(max));
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
        let (nats, work) = (nats.clone(), answer(msg.payload));
        tasks.spawn(async move {
            let body = work.await.unwrap_or_default();
            if let Err(e) = nats.publish(reply, body.into()).await {
                tracing::debug!(error = %e, "reply not sent");
            }
            drop(permit);
        });
    }
    let _ = sub.unsubscribe().await;
    while tasks.join_next().await.is_some() {}
}
