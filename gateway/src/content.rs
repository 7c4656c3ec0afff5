//! The optional content check before publishing.
//!
//! The gateway never holds WeChat credentials: it asks the content-check service (served by auth over
//! NATS) and follows its decision. Only when that service does not answer does the gateway apply its
//! own policy: fail closed (`unavailable`, the default) or fail open (publish).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use protocol::UserId;
use protocol::control::{
    CONTENT_CHECK_SUBJECT, ContentCheckReply, ContentCheckRequest, ContentDecision,
};

use crate::metrics::Metrics;

/// The gateway's side of the content check.
#[derive(Clone)]
pub struct ContentChecker {
    nats: async_nats::Client,
    timeout: Duration,
    fail_open: bool,
    metrics: Arc<Metrics>,
}

/// The check could not be made and the policy is to fail closed.
#[derive(Debug, thiserror::Error)]
#[error("content check unavailable: {0}")]
pub struct CheckUnavailable(String);

impl ContentChecker {
    pub fn new(
        nats: async_nats::Client,
        timeout: Duration,
        fail_open: bool,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            nats,
            timeout,
            fail_open,
            metrics,
        }
    }

    /// What to do with `text` from `user`.
    pub async fn check(
        &self,
        user: &UserId,
        text: &str,
    ) -> Result<ContentDecision, CheckUnavailable> {
        let started = Instant::now();
        let req = ContentCheckRequest {
            user: user.clone(),
            text: text.to_owned(),
        };
        let body = serde_json::to_vec(&req).unwrap_or_default();
        let answer = tokio::time::timeout(
            self.timeout,
            self.nats.request(CONTENT_CHECK_SUBJECT, body.into()),
        )
        .await;
        self.metrics
            .content_check_seconds
            .observe(started.elapsed().as_secs_f64());
        let failure = match answer {
            Ok(Ok(msg)) => match serde_json::from_slice::<ContentCheckReply>(&msg.payload) {
                Ok(reply) => {
                    self.metrics
                        .content_checks
                        .with_label_values(&[decision_label(reply.decision)])
                        .inc();
                    return Ok(reply.decision);
                }
                Err(e) => format!("bad reply: {e}"),
            },
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {:?}", self.timeout),
        };
        self.metrics
            .content_checks
            .with_label_values(&["unavailable"])
            .inc();
        tracing::warn!(error = %failure, fail_open = self.fail_open, "content check failed");
        if self.fail_open {
            Ok(ContentDecision::Deliver)
        } else {
            Err(CheckUnavailable(failure))
        }
    }
}

fn decision_label(d: ContentDecision) -> &'static str {
    match d {
        ContentDecision::Deliver => "deliver",
        ContentDecision::Reject => "reject",
        ContentDecision::Hold => "hold",
    }
}
