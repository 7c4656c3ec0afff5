//! WeChat login: the code exchange, merged per code, and the identity it yields.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use axum::http::StatusCode;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::OnceCell;
use tracing::Instrument;

use protocol::api::TokenReply;
use svc::http::ApiError;

use crate::http::AppState;
use crate::store::hash;
use crate::wechat::WxError;
use token::now_secs;

/// How long a successful exchange is remembered: the life of a `wx.login` code.
pub const CODE_CACHE: Duration = Duration::from_secs(300);
/// Most codes remembered at once; beyond it the oldest entries go first.
pub const MAX_CACHED_CODES: usize = 10_000;
/// `Retry-After` sent with WeChat's minute quota (45011).
pub const QUOTA_RETRY_AFTER_SECS: u64 = 60;

type Outcome = Result<TokenReply, ApiError>;

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
                        Err(internal())
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

/// The user id of an openid: `u_` and the first 16 bytes of HMAC-SHA256(secret, openid), base64url.
/// Stable per user, unlinkable to the openid without the secret, and within `[A-Za-z0-9_-]{1,64}`.
pub fn user_id(secret: &[u8], openid: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret)
        .unwrap_or_else(|e| unreachable!("HMAC takes keys of any length: {e}"));
    mac.update(openid.as_bytes());
    let digest = mac.finalize().into_bytes();
    format!("u_{}", B64.encode(&digest[..16]))
}

fn internal() -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "login is not available right now; try again later",
    )
}

/// Maps a failed `code2Session` to our answer, logging what an operator must see.
pub fn map_wx_error(e: &WxError) -> ApiError {
    match e {
        WxError::Api { errcode, errmsg } => match errcode {
            -1 => {
                tracing::warn!(errcode, errmsg = %errmsg, "code2Session busy after a retry");
                ApiError::unavailable("WeChat is busy; try again")
            }
            40029 | 40163 => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "relogin",
                "the login code is invalid, expired or used; call wx.login again",
            ),
            40226 => ApiError::new(
                StatusCode::FORBIDDEN,
                "login_blocked",
                "login refused by WeChat risk control",
            ),
            45011 => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many logins; try again in a minute",
            )
            .retry_after(QUOTA_RETRY_AFTER_SECS),
            40013 | 41002 => {
                tracing::error!(errcode, errmsg = %errmsg, setting = "AUTH_WECHAT_APPID", "WeChat refused the appid: check AUTH_WECHAT_APPID");
                internal()
            }
            40125 | 41004 => {
                tracing::error!(errcode, errmsg = %errmsg, setting = "AUTH_WECHAT_SECRET", "WeChat refused the AppSecret: check AUTH_WECHAT_SECRET");
                internal()
            }
            _ => {
                tracing::error!(errcode, errmsg = %errmsg, "code2Session failed unexpectedly");
                internal()
            }
        },
        WxError::Transport(why) => {
            tracing::warn!(error = %why, "code2Session unreachable");
            ApiError::unavailable("WeChat cannot be reached; try again")
        }
    }
}

/// The whole exchange: `code2Session` (one quick retry on `-1`), identity, session storage, tokens.
pub async fn exchange(state: AppState, code: String) -> Outcome {
    let (Some(wechat), Some(store), Some(secret)) = (
        state.wechat.as_ref(),
        state.store.as_ref(),
        state.config.user_id_secret.as_ref(),
    ) else {
        return Err(internal());
    };
    let session = match wechat.code2session(&code).await {
        Err(WxError::Api { errcode: -1, .. }) => {
            tokio::time::sleep(wechat.config().retry_delay).await;
            wechat.code2session(&code).await
        }
        other => other,
    }
    .map_err(|e| map_wx_error(&e))?;
    let user = user_id(&secret.0, &session.openid);
    let store_err = |e: crate::store::StoreError| {
        tracing::warn!(error = %e, "redis unavailable during login");
        ApiError::unavailable("login is unavailable; try again")
    };
    store.save_login(&user, &session).await.map_err(store_err)?;
    let refresh = store.new_family(&user).await.map_err(store_err)?;
    let uid = protocol::UserId::parse(user.clone()).map_err(|_| internal())?;
    let ttl = state.config.access_ttl_secs;
    let access = state.keys.signer().issue(&uid, now_secs(), ttl);
    tracing::info!(%user, unionid = session.unionid.is_some(), "wechat login");
    Ok(TokenReply::bearer(user, access, ttl).with_refresh(refresh, state.config.refresh_ttl_secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_are_stable_valid_and_keyed() {
        let a = user_id(b"0123456789abcdef", "oABC");
        assert_eq!(a, user_id(b"0123456789abcdef", "oABC"));
        assert_ne!(a, user_id(b"0123456789abcdeX", "oABC"));
        assert_ne!(a, user_id(b"0123456789abcdef", "oABD"));
        assert!(protocol::UserId::parse(a.clone()).is_ok(), "{a}");
        assert_eq!(a.len(), 24);
    }

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
