//! Counting a user's open connections across the cluster in one round trip: the live
//! `conn.<user>.*` keys of the presence bucket, read with one batched direct get
//! (`svc::kv::LiveKeys`). This is what the per-user connection limit reads at each handshake
//! (`userlimit.rs`).

use protocol::UserId;
use protocol::presence as keys;

/// Most messages one count reads: live keys and the markers of closed connections. A user with
/// more is counted as having at most this many.
pub const MAX_COUNTED: usize = 256;

/// The number of `user`'s live connection keys, at most [`MAX_COUNTED`].
pub async fn live_connections(live: &svc::kv::LiveKeys, user: &UserId) -> anyhow::Result<usize> {
    let keys = live
        .read(keys::BUCKET, &format!("conn.{user}.*"), MAX_COUNTED)
        .await?;
    Ok(keys.len())
}
