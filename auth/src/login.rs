//! WeChat login: the code exchange (merged per code by `exchange`), and the identity it yields.

use axum::http::StatusCode;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use protocol::api::{Reason, TokenReply};
use svc::http::ApiError;

use crate::exchange::Outcome;
use crate::state::AppState;
use crate::wechat::WxError;
use token::now_secs;

/// `Retry-After` sent with WeChat's minute quota (45011).
pub const QUOTA_RETRY_AFTER_SECS: u64 = 60;

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
    ApiError::internal("login is not available right now; try again later")
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
                Reason::Relogin,
                "the login code is invalid, expired or used; call wx.login again",
            ),
            40226 => ApiError::new(
                StatusCode::FORBIDDEN,
                Reason::LoginBlocked,
                "login refused by WeChat risk control",
            ),
            45011 => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                Reason::RateLimited,
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
}
