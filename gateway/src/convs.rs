//! The gateway's client of the conversation service (`chat.svc.conv`, served by the persisters):
//! conversation lists and read state, asked after the session checked who may ask, and the
//! `read_state` and `receipt` pushes that follow a read, sent through the users' control subjects
//! so that they reach every gateway.

use std::time::Duration;

use protocol::control::UserControl;
use protocol::conv::{CONV_SUBJECT, ConvReply, ConvRequest};
use protocol::{ConnId, ServerFrame, UserId};

/// Longest wait for an answer; a `read` may wait up to `READ_CATCH_UP_MS` (2 s) for the store.
pub const CONV_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for the read state shown in `joined` and `resumed`, which go without it past this.
pub const STATE_TIMEOUT: Duration = Duration::from_secs(1);

/// Why the conversation service gave no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum ConvError {
    #[error("the conversation service did not answer: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Refused(String),
}

/// Asks the conversation service, waiting at most `timeout`.
pub async fn ask(
    nats: &async_nats::Client,
    req: &ConvRequest,
    timeout: Duration,
) -> Result<ConvReply, ConvError> {
    let body = serde_json::to_vec(req).unwrap_or_default();
    let answer = tokio::time::timeout(timeout, nats.request(CONV_SUBJECT, body.into()))
        .await
        .map_err(|_| ConvError::Unavailable(format!("no answer within {timeout:?}")))?
        .map_err(|e| ConvError::Unavailable(e.to_string()))?;
    match serde_json::from_slice::<ConvReply>(&answer.payload) {
        Ok(ConvReply::Error { message }) => Err(ConvError::Refused(message)),
        Ok(reply) => Ok(reply),
        Err(e) => Err(ConvError::Unavailable(format!("bad reply: {e}"))),
    }
}

/// Pushes `frame` to every connection of `user` on every gateway, but `except`.
pub async fn push(
    nats: &async_nats::Client,
    user: &UserId,
    frame: &ServerFrame,
    except: Option<ConnId>,
) {
    let cmd = UserControl::Deliver {
        frame: frame.to_json(),
        except,
    };
    let body = serde_json::to_vec(&cmd).unwrap_or_default();
    let subject = protocol::subject::user_control_subject(user);
    if let Err(e) = nats.publish(subject, body.into()).await {
        tracing::debug!(%user, error = %e, "read push not sent");
    }
}
