//! The content-check service: answers gateways on `chat.svc.content_check` (queue group
//! `content_check`) with a decision from WeChat's `msgSecCheck` v2 and the configured policies.
//!
//! It runs here because the WeChat credentials are here; gateways never hold them.

use std::sync::Arc;
use tokio::time::Instant;

use futures_util::StreamExt;
use protocol::control::{
    CONTENT_CHECK_QUEUE, CONTENT_CHECK_SUBJECT, ContentCheckReply, ContentCheckRequest,
    ContentDecision,
};
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::config::{ContentCheck, FailPolicy, ReviewPolicy};
use crate::metrics::Metrics;
use crate::store::Store;
use crate::wechat::{TokenHolder, WxError};

/// Checks answered at once; further requests wait in the subscription.
pub const MAX_CONCURRENT_CHECKS: usize = 256;

/// Errcodes meaning the access token is stale: refresh it once and retry.
const STALE_TOKEN: [i64; 3] = [40001, 40014, 42001];

#[derive(Clone)]
pub struct Checker {
    pub settings: ContentCheck,
    pub tokens: Arc<TokenHolder>,
    pub store: Store,
    pub metrics: Arc<Metrics>,
}

impl Checker {
    /// The decision for one request, with its reason.
    pub async fn check(&self, req: &ContentCheckRequest) -> ContentCheckReply {
        let failed = |reason: &str| ContentCheckReply {
            decision: match self.settings.fail {
                FailPolicy::Open => ContentDecision::Deliver,
                FailPolicy::Closed => ContentDecision::Hold,
            },
            reason: reason.to_owned(),
        };
        let openid = match self.store.openid_of(req.user.as_str()).await {
            Ok(Some(o)) => o,
            Ok(None) => {
                tracing::warn!(user = %req.user, "content check for a user without a WeChat login");
                return failed("unknown_user");
            }
            Err(e) => {
                tracing::warn!(error = %e, "content check: redis unavailable");
                return failed("api_error");
            }
        };
        match self.ask(&openid, &req.text).await {
            Ok((suggest, trace_id)) => match suggest.as_str() {
                "pass" => reply(ContentDecision::Deliver, "pass"),
                "risky" => {
                    tracing::info!(user = %req.user, %trace_id, "content check: risky, rejected");
                    reply(ContentDecision::Reject, "risky")
                }
                "review" => {
                    tracing::info!(user = %req.user, %trace_id, "content check: review");
                    match self.settings.review {
                        ReviewPolicy::Deliver => reply(ContentDecision::Deliver, "review"),
                        ReviewPolicy::Hold => reply(ContentDecision::Hold, "review"),
                    }
                }
                other => {
                    tracing::warn!(suggest = other, "content check: unknown suggest");
                    failed("api_error")
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, fail_policy = ?self.settings.fail, "content check: WeChat failed; applying the fail policy");
                failed("api_error")
            }
        }
    }

    /// Calls `msgSecCheck`, refreshing the access token once if WeChat calls it stale.
    async fn ask(&self, openid: &str, text: &str) -> Result<(String, String), WxError> {
        let scene = self.settings.scene;
        let token = self.tokens.get().await?;
        match self
            .tokens
            .client()
            .msg_sec_check(&token.0, openid, scene, text)
            .await
        {
            Err(WxError::Api { errcode, .. }) if STALE_TOKEN.contains(&errcode) => {
                tracing::info!(errcode, "access token refused; refreshing it once");
                self.tokens.invalidate(&token.0).await;
                let token = self.tokens.get().await?;
                self.tokens
                    .client()
                    .msg_sec_check(&token.0, openid, scene, text)
                    .await
            }
            other => other,
        }
    }
}

fn reply(decision: ContentDecision, reason: &str) -> ContentCheckReply {
    ContentCheckReply {
        decision,
        reason: reason.to_owned(),
    }
}

fn decision_label(d: ContentDecision) -> &'static str {
    match d {
        ContentDecision::Deliver => "deliver",
        ContentDecision::Reject => "reject",
        ContentDecision::Hold => "hold",
    }
}

/// Subscribes the content check's subject and waits until the server has registered it, so a
/// gateway asking right after auth started finds a responder.
pub async fn subscribe(nats: &async_nats::Client) -> anyhow::Result<async_nats::Subscriber> {
    Ok(svc::nats::queue_subscribe(nats, CONTENT_CHECK_SUBJECT, CONTENT_CHECK_QUEUE).await?)
}

/// Serves the content check on `sub` (from [`subscribe`]) until the subscription ends.
pub async fn serve(
    nats: async_nats::Client,
    mut sub: async_nats::Subscriber,
    checker: Checker,
) -> anyhow::Result<()> {
    tracing::info!(
        subject = CONTENT_CHECK_SUBJECT,
        queue = CONTENT_CHECK_QUEUE,
        "content check serving"
    );
    let limit = Arc::new(Semaphore::new(MAX_CONCURRENT_CHECKS));
    while let Some(msg) = sub.next().await {
        let Some(reply_to) = msg.reply.clone() else {
            continue;
        };
        let Ok(permit) = limit.clone().acquire_owned().await else {
            break;
        };
        let (nats, checker) = (nats.clone(), checker.clone());
        let span = tracing::info_span!("content_check");
        tokio::spawn(
            async move {
                let started = Instant::now();
                let answer = match serde_json::from_slice::<ContentCheckRequest>(&msg.payload) {
                    Ok(req) => checker.check(&req).await,
                    Err(e) => {
                        tracing::warn!(error = %e, "malformed content-check request");
                        reply(ContentDecision::Reject, "bad_request")
                    }
                };
                let label = decision_label(answer.decision);
                checker
                    .metrics
                    .content_check_seconds
                    .with_label_values(&[label])
                    .observe(started.elapsed().as_secs_f64());
                checker
                    .metrics
                    .content_checks
                    .with_label_values(&[answer.reason.as_str(), label])
                    .inc();
                let body = serde_json::to_vec(&answer).unwrap_or_default();
                if let Err(e) = nats.publish(reply_to, body.into()).await {
                    tracing::warn!(error = %e, "content-check reply not sent");
                }
                drop(permit);
            }
            .instrument(span),
        );
    }
    Ok(())
}
