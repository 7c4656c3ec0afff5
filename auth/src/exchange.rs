//! Exchanges of one `wx.login` code are merged: WeChat accepts a code once (a second call gets
//! 40163), and a double tap or two pages logging in at once would otherwise spend it twice.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use svc::http::ApiError;
use tokio::sync::OnceCell;
use tokio::time::Instant;
use tracing::Instrument;

use protocol::api::TokenReply;

use crate::store::hash;

/// What one code exchange ends in.
pub type Outcome = Result<TokenReply, ApiError>;

/// How long a successful exchange is remembered: the life of a `wx.login` code.
pub const CODE_CACHE: Duration = Duration::from_secs(300);
/// Most codes remembered at once; beyond it the oldest entries go first.
pub const MAX_CACHED_CODES: usize = 10_000;

struct Slot {
    created: Instant,
    cell: Arc<OnceCell<Outcome>>,
}

/// Exchanges of one code are merged: the first caller runs the exchange, concurrent callers wait for its
/// result, and a success is kept for [`CODE_CACHE`] so a double tap gets the same answer. A failure is
/// forgotten once everyone waiting got it.
#[derive(Default)]
pub struct Exchanges {
    slots: Mutex<HashMap<String, Slot>>,
}

impl Exchanges {
    /// Runs `work` for `code` unless an exchange of it is running or succeeded recently.
    pub async fn run<F>(&self, code: &str, work: F) -> Outcome
    where
        F: Future<Output = Outcome> + Send + 'static,
    {
        let key = hash(code);
        let cell = {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            if slots.len() >= MAX_CACHED_CODES {
                slots.retain(|_, s| now.duration_since(s.created) < CODE_CACHE);
            }
            if slots.len() >= MAX_CACHED_CODES
                && let Some(oldest) = slots
                    .iter()
                    .min_by_key(|(_, s)| s.created)
                    .map(|(k, _)| k.clone())
            {
                slots.remove(&oldest);
            }
            let fresh = slots
                .get(&key)
                .is_some_and(|s| now.duration_since(s.created) < CODE_CACHE);
            if !fresh {
                slots.insert(
                    key.clone(),
                    Slot {
                        created: now,
                        cell: Arc::new(OnceCell::new()),
                    },
                );
            }
            slots.get(&key).map(|s| s.cell.clone()).unwrap_or_default()
        };
        let outcome = cell
            .get_or_init(|| async {
                // A task of its own, so the exchange finishes even if the first caller goes away.
                tokio::spawn(work.in_current_span())
                    .await
                    .unwrap_or_else(|e| {
                        tracing::error!(error = %e, "login exchange task failed");
                        Err(ApiError::internal(
                            "login is not available right now; try again later",
                        ))
                    })
            })
            .await
            .clone();
        if outcome.is_err() {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            if slots.get(&key).is_some_and(|s| Arc::ptr_eq(&s.cell, &cell)) {
                slots.remove(&key);
            }
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn concurrent_exchanges_of_one_code_run_once() {
        let ex = Arc::new(Exchanges::default());
        let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let go = |ex: Arc<Exchanges>, runs: Arc<std::sync::atomic::AtomicUsize>| async move {
            ex.run("c1", async move {
                runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok(TokenReply::bearer("n", "t".into(), 1))
            })
            .await
        };
        let (a, b) = tokio::join!(go(ex.clone(), runs.clone()), go(ex.clone(), runs.clone()));
        assert_eq!(a.unwrap(), b.unwrap());
        let c = go(ex.clone(), runs.clone()).await.unwrap();
        assert_eq!(c, TokenReply::bearer("n", "t".into(), 1));
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
