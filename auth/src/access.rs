//! Writing users' access records (KV bucket `access`, `protocol::access`): the revocation that
//! logout and the admin API's revoke make, and the admin API's ban and unban. Gateways follow the
//! bucket with one watch, so a write here takes effect on every gateway's next handshake, and a ban
//! closes the user's open sockets there with 4003.

use std::time::Duration;

use async_nats::jetstream;
use protocol::UserId;
use protocol::access::{BUCKET, Record, key, key_subject};
use protocol::control::UserControl;
use token::now_secs;

/// Longest wait for one read, write or publish.
const TIMEOUT: Duration = Duration::from_secs(2);

/// Why a write did not happen.
#[derive(Debug, thiserror::Error)]
#[error("access bucket: {0}")]
pub struct AccessError(String);

fn err(e: impl std::fmt::Display) -> AccessError {
    AccessError(e.to_string())
}

async fn bounded<T, E: std::fmt::Display>(
    f: impl Future<Output = Result<T, E>>,
) -> Result<T, AccessError> {
    tokio::time::timeout(TIMEOUT, f)
        .await
        .map_err(|_| AccessError(format!("no answer within {TIMEOUT:?}")))?
        .map_err(err)
}

/// `user`'s current record (the default when there is none).
pub async fn read(nats: &async_nats::Client, user: &UserId) -> Result<Record, AccessError> {
    let js = jetstream::new(nats.clone());
    let kv = bounded(js.get_key_value(BUCKET)).await?;
    Ok(match bounded(kv.get(key(user))).await? {
        Some(v) => serde_json::from_slice::<Record>(&v).unwrap_or_default(),
        None => Record::default(),
    })
}

/// Writes `record` for `user`. A record that bans is kept until unbanned; one that only revokes
/// lives as long as an access token (`access_ttl_secs`, plus the clock skew the verifier allows):
/// after that every token it refuses has expired anyway.
async fn write(
    nats: &async_nats::Client,
    user: &UserId,
    record: Record,
    access_ttl_secs: u64,
) -> Result<(), AccessError> {
    let js = jetstream::new(nats.clone());
    let mut headers = async_nats::HeaderMap::new();
    if !record.banned {
        headers.insert(
            "Nats-TTL",
            format!("{}s", access_ttl_secs + token::CLOCK_SKEW_SECS).as_str(),
        );
    }
    let body = serde_json::to_vec(&record).map_err(err)?;
    let ack = bounded(js.publish_with_headers(key_subject(user), headers, body.into())).await?;
    bounded(ack.into_future()).await?;
    Ok(())
}

/// Refuses every token of `user` issued before now, at every gateway's next handshake. A ban
/// stays.
pub async fn revoke(
    nats: &async_nats::Client,
    user: &UserId,
    access_ttl_secs: u64,
) -> Result<Record, AccessError> {
    let record = Record {
        not_before: now_secs(),
        banned: read(nats, user).await?.banned,
    };
    write(nats, user, record, access_ttl_secs).await?;
    Ok(record)
}

/// Bans or unbans `user`. A ban refuses every token at the handshake and makes every gateway close
/// the user's sockets with 4003; an unban keeps the record's `not_before`, so tokens revoked
/// before stay refused.
pub async fn set_banned(
    nats: &async_nats::Client,
    user: &UserId,
    banned: bool,
    access_ttl_secs: u64,
) -> Result<Record, AccessError> {
    let record = Record {
        banned,
        ..read(nats, user).await?
    };
    write(nats, user, record, access_ttl_secs).await?;
    Ok(record)
}

/// Closes `user`'s open sockets on every gateway with 4001 (`logout`): what follows a revocation,
/// whose record only refuses the next handshake.
pub async fn close_sockets(nats: &async_nats::Client, user: &UserId) -> Result<(), AccessError> {
    let subject = protocol::subject::user_control_subject(user);
    let body = serde_json::to_vec(&UserControl::Logout).map_err(err)?;
    bounded(nats.publish(subject, body.into())).await?;
    bounded(nats.flush()).await
}
