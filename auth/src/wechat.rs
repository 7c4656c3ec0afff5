//! The WeChat server API: `code2Session`, `stable_token` and `msgSecCheck` v2.
//!
//! WeChat answers HTTP 200 on errors, sometimes with `Content-Type: text/plain`, and `errcode` may be
//! missing (meaning 0), a number or a string. So every body is read as bytes and parsed as JSON whatever
//! the status and the content type, and [`errcode_of`] reads the code leniently.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use serde_json::{Value, json};

use crate::config::{Secret, WeChat};
use crate::metrics::Metrics;

/// A token is refreshed this long before WeChat says it expires.
pub const TOKEN_REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);
/// Longest text sent to `msgSecCheck` (its documented limit, in chars).
pub const MAX_CHECK_CHARS: usize = 2500;

/// The outcome of a failed WeChat call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WxError {
    /// WeChat answered with a non-zero `errcode`.
    #[error("WeChat errcode {errcode}: {errmsg}")]
    Api { errcode: i64, errmsg: String },
    /// No usable answer: timeout, connection failure, or a body that is not JSON.
    #[error("WeChat unreachable: {0}")]
    Transport(String),
}

impl WxError {
    pub fn errcode(&self) -> Option<i64> {
        match self {
            Self::Api { errcode, .. } => Some(*errcode),
            Self::Transport(_) => None,
        }
    }
}

/// What `code2Session` tells about a user. `session_key` never leaves the server.
#[derive(Clone)]
pub struct Session {
    pub openid: String,
    pub unionid: Option<String>,
    pub session_key: Secret<String>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("openid", &"<hidden>")
            .field("unionid", &self.unionid.as_ref().map(|_| "<hidden>"))
            .field("session_key", &self.session_key)
            .finish()
    }
}

/// Reads `errcode`: missing or null is 0; a number or a numeric string is that number; anything else is
/// treated as a failure of unknown kind (`-2`).
pub fn errcode_of(v: &Value) -> i64 {
    match v.get("errcode") {
        None | Some(Value::Null) => 0,
        Some(Value::Number(n)) => n.as_i64().unwrap_or(-2),
        Some(Value::String(s)) => s.trim().parse().unwrap_or(-2),
        Some(_) => -2,
    }
}

fn errmsg_of(v: &Value) -> String {
    v.get("errmsg")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .chars()
        .take(200)
        .collect()
}

/// A client of the WeChat server API for one mini-program.
#[derive(Clone)]
pub struct WeChatClient {
    http: reqwest::Client,
    config: WeChat,
    metrics: Arc<Metrics>,
}

impl WeChatClient {
    pub fn new(config: WeChat, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .build()?;
        Ok(Self {
            http,
            config,
            metrics,
        })
    }

    pub fn config(&self) -> &WeChat {
        &self.config
    }

    /// Sends a request and parses the body as JSON whatever the status and content type; then checks
    /// `errcode`. Counts the call by API and result.
    async fn call(
        &self,
        api: &'static str,
        req: reqwest::RequestBuilder,
    ) -> Result<Value, WxError> {
        let started = Instant::now();
        let result = async {
            let resp = req
                .send()
                .await
                .map_err(|e| WxError::Transport(without_url(e)))?;
            let status = resp.status();
            let bytes = resp
                .bytes()
                .await
                .map_err(|e| WxError::Transport(without_url(e)))?;
            let v: Value = serde_json::from_slice(&bytes).map_err(|_| {
                WxError::Transport(format!("HTTP {status} with a body that is not JSON"))
            })?;
            match errcode_of(&v) {
                0 => Ok(v),
                errcode => Err(WxError::Api {
                    errcode,
                    errmsg: errmsg_of(&v),
                }),
            }
        }
        .await;
        self.metrics
            .wechat_seconds
            .with_label_values(&[api])
            .observe(started.elapsed().as_secs_f64());
        let label = match &result {
            Ok(_) => "ok".to_owned(),
            Err(WxError::Api { errcode, .. }) => bounded_errcode(*errcode),
            Err(WxError::Transport(_)) => "transport".to_owned(),
        };
        self.metrics
            .wechat_calls
            .with_label_values(&[api, &label])
            .inc();
        result
    }

    /// `GET /sns/jscode2session`: exchanges a `wx.login` code.
    pub async fn code2session(&self, code: &str) -> Result<Session, WxError> {
        let url = format!("{}/sns/jscode2session", self.config.api_base);
        let req = self.http.get(url).query(&[
            ("appid", self.config.appid.as_str()),
            ("secret", self.config.secret.0.as_str()),
            ("js_code", code),
            ("grant_type", "authorization_code"),
        ]);
        let v = self.call("code2session", req).await?;
        let text = |k: &str| {
            v.get(k)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        let (Some(openid), Some(session_key)) = (text("openid"), text("session_key")) else {
            return Err(WxError::Transport(
                "code2Session answered without openid or session_key".into(),
            ));
        };
        Ok(Session {
            openid,
            unionid: text("unionid"),
            session_key: Secret(session_key),
        })
    }

    /// `POST /cgi-bin/stable_token` in normal mode: the token and its remaining life.
    pub async fn stable_token(&self) -> Result<(Secret<String>, Duration), WxError> {
        let url = format!("{}/cgi-bin/stable_token", self.config.api_base);
        let body = json!({
            "grant_type": "client_credential",
            "appid": self.config.appid,
            "secret": self.config.secret.0,
            "force_refresh": false,
        });
        let v = self
            .call("stable_token", self.http.post(url).json(&body))
            .await?;
        let token = v
            .get("access_token")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| WxError::Transport("stable_token answered without a token".into()))?;
        let expires_in = v.get("expires_in").and_then(Value::as_u64).unwrap_or(7200);
        Ok((Secret(token.to_owned()), Duration::from_secs(expires_in)))
    }

    /// `POST /wxa/msg_sec_check` v2: the `result.suggest` (`pass`, `review` or `risky`) and the
    /// `trace_id`.
    pub async fn msg_sec_check(
        &self,
        access_token: &str,
        openid: &str,
        scene: u8,
        content: &str,
    ) -> Result<(String, String), WxError> {
        let url = format!("{}/wxa/msg_sec_check", self.config.api_base);
        let content: String = content.chars().take(MAX_CHECK_CHARS).collect();
        let body = json!({"content": content, "version": 2, "scene": scene, "openid": openid});
        let req = self
            .http
            .post(url)
            .query(&[("access_token", access_token)])
            .json(&body);
        let v = self.call("msg_sec_check", req).await?;
        let suggest = v
            .pointer("/result/suggest")
            .and_then(Value::as_str)
            .ok_or_else(|| WxError::Transport("msg_sec_check answered without a suggest".into()))?;
        let trace = v
            .get("trace_id")
            .and_then(Value::as_str)
            .unwrap_or_default();
        Ok((suggest.to_owned(), trace.to_owned()))
    }
}

impl WeChatClient {
    /// `POST /cgi-bin/message/subscribe/send`: one subscribe message (`body` is its JSON:
    /// `touser`, `template_id`, `page`, `data`, `miniprogram_state`).
    pub async fn subscribe_send(&self, access_token: &str, body: &Value) -> Result<(), WxError> {
        let url = format!("{}/cgi-bin/message/subscribe/send", self.config.api_base);
        let req = self
            .http
            .post(url)
            .query(&[("access_token", access_token)])
            .json(body);
        self.call("subscribe_send", req).await.map(|_| ())
    }
}

/// The errcodes this service knows get their own label; others share one, so the metric stays bounded.
fn bounded_errcode(errcode: i64) -> String {
    const KNOWN: [i64; 20] = [
        -1, 40001, 40013, 40014, 40029, 40125, 40163, 40164, 40226, 41002, 41004, 42001, 43101,
        43108, 44991, 45009, 45011, 47003, 61010, 40037,
    ];
    if KNOWN.contains(&errcode) {
        errcode.to_string()
    } else {
        "other".into()
    }
}

/// A reqwest error without its URL, which carries the AppSecret and the code in its query.
fn without_url(e: reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else {
        "request"
    };
    format!("{kind}: {}", e.without_url())
}

/// The one holder of the `stable_token` access token in this process: every caller shares one token,
/// refreshed [`TOKEN_REFRESH_MARGIN`] before it expires, or at once when WeChat calls it invalid.
pub struct TokenHolder {
    client: WeChatClient,
    current: tokio::sync::Mutex<Option<(Secret<String>, Instant)>>,
}

impl TokenHolder {
    pub fn new(client: WeChatClient) -> Self {
        Self {
            client,
            current: tokio::sync::Mutex::new(None),
        }
    }

    /// A token valid for at least the margin. Concurrent callers wait for one fetch.
    pub async fn get(&self) -> Result<Secret<String>, WxError> {
        let mut slot = self.current.lock().await;
        if let Some((token, refresh_at)) = slot.as_ref()
            && Instant::now() < *refresh_at
        {
            return Ok(token.clone());
        }
        let (token, life) = self.client.stable_token().await?;
        let refresh_at = Instant::now() + life.saturating_sub(TOKEN_REFRESH_MARGIN);
        tracing::info!(
            expires_in_secs = life.as_secs(),
            "WeChat access token fetched"
        );
        *slot = Some((token.clone(), refresh_at));
        Ok(token)
    }

    /// Forgets `token` after WeChat refused it, unless another caller already replaced it.
    pub async fn invalidate(&self, token: &str) {
        let mut slot = self.current.lock().await;
        if slot.as_ref().is_some_and(|(t, _)| t.0 == token) {
            *slot = None;
        }
    }

    pub fn client(&self) -> &WeChatClient {
        &self.client
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errcode_is_read_leniently() {
        assert_eq!(errcode_of(&json!({"openid": "o"})), 0);
        assert_eq!(errcode_of(&json!({"errcode": null})), 0);
        assert_eq!(errcode_of(&json!({"errcode": 40029})), 40029);
        assert_eq!(errcode_of(&json!({"errcode": "40163"})), 40163);
        assert_eq!(errcode_of(&json!({"errcode": -1})), -1);
        assert_eq!(errcode_of(&json!({"errcode": "x"})), -2);
    }

    #[test]
    fn session_debug_hides_everything_personal() {
        let s = Session {
            openid: "oOPENID".into(),
            unionid: Some("oUNION".into()),
            session_key: Secret("SESSIONKEY".into()),
        };
        let d = format!("{s:?}");
        assert!(!d.contains("OPENID") && !d.contains("UNION") && !d.contains("SESSIONKEY"));
    }
}
