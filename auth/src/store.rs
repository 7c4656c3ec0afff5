//! Everything auth keeps in Redis: sessions, refresh tokens, rate-limit counters.
//!
//! | key | value | TTL |
//! |---|---|---|
//! | `auth:user:<user>` | hash `openid`, `unionid` | refresh TTL, renewed at login and refresh |
//! | `auth:sk:<user>` | the `session_key` | session-key TTL, overwritten at login |
//! | `auth:rt:<sha256(token)>` | `<family> <user>` | refresh TTL |
//! | `auth:rtu:<sha256(token)>` | `1` once the token was used | refresh TTL |
//! | `auth:rf:<family>` | the user; deleting it revokes the family | refresh TTL, renewed at each rotation |
//! | `auth:uf:<user>` | set of the user's families | refresh TTL |
//! | `auth:rl:ip:<ip>` | login attempts this minute | 60 s |
//! | `auth:rl:code:<sha256(code)>` | login attempts with this code | 300 s |
//! | `auth:grants:<user>` | hash template id → one-time subscription grants left ([`MAX_GRANTS`] at most) | none |
//! | `auth:notified:<user>:<conv>` | the user's `seen` time when they were last notified of the conversation | 30 days |
//!
//! Refresh tokens are stored only as hashes, so a copy of Redis holds no usable token.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use sha2::{Digest, Sha256};

use crate::wechat::Session;

/// Longest wait for one Redis operation before the request answers 503.
pub const REDIS_TIMEOUT: Duration = Duration::from_secs(2);
/// Window of the per-IP login limit.
pub const IP_WINDOW_SECS: u64 = 60;
/// Window of the per-code login limit: the life of a `wx.login` code.
pub const CODE_WINDOW_SECS: u64 = 300;

/// Most one-time grants kept per user and template: a user who taps "allow" a hundred times
/// has a hundred notifications' worth, which is plenty.
pub const MAX_GRANTS: u64 = 100;
/// How long a conversation's "notified" mark lives without the user coming back.
pub const NOTIFIED_TTL_SECS: u64 = 30 * 24 * 3600;

/// Takes one grant if there is one: 1 when taken, 0 when none was left.
const TAKE_GRANT: &str = "local n = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0') \
    if n > 0 then redis.call('HINCRBY', KEYS[1], ARGV[1], -1) return 1 else return 0 end";

/// Redis could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {REDIS_TIMEOUT:?}")]
    Timeout,
}

/// The result of presenting a refresh token.
#[derive(Debug, PartialEq, Eq)]
pub enum Rotation {
    /// First use of a live token: here is its successor.
    Rotated { user: String, token: String },
    /// The token had been used before: its whole family is now revoked.
    Reused { user: String },
    /// Unknown, expired, or its family was revoked.
    Invalid,
}

#[derive(Clone)]
pub struct Store {
    conn: ConnectionManager,
    refresh_ttl: u64,
    session_key_ttl: u64,
}

impl Store {
    /// A store on `url`. Connects lazily, so auth starts while Redis is down, and reconnects by itself.
    pub fn new(url: &str, refresh_ttl: u64, session_key_ttl: u64) -> anyhow::Result<Self> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Self {
            conn,
            refresh_ttl,
            session_key_ttl,
        })
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        f: impl FnOnce(&mut redis::Pipeline),
    ) -> Result<T, StoreError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        f(&mut pipe);
        let mut conn = self.conn.clone();
        tokio::time::timeout(REDIS_TIMEOUT, pipe.query_async(&mut conn))
            .await
            .map_err(|_| StoreError::Timeout)?
            .map_err(StoreError::from)
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        let (_pong,): (String,) = self
            .run(|p| {
                p.cmd("PING");
            })
            .await?;
        Ok(())
    }

    /// Counts one attempt under `key` in a window of `window_secs`; `Err(retry_after)` once more than
    /// `limit` attempts were made in the window.
    pub async fn hit(
        &self,
        key: &str,
        limit: u64,
        window_secs: u64,
    ) -> Result<Result<(), u64>, StoreError> {
        let (n, _, ttl): (u64, i64, i64) = self
            .run(|p| {
                p.cmd("INCR").arg(key);
                p.cmd("EXPIRE").arg(key).arg(window_secs).arg("NX");
                p.cmd("TTL").arg(key);
            })
            .await?;
        if n > limit {
            Ok(Err(u64::try_from(ttl).unwrap_or(window_secs).max(1)))
        } else {
            Ok(Ok(()))
        }
    }

    /// Records a login: identity under the user id, and the fresh `session_key` with its own TTL.
    pub async fn save_login(&self, user: &str, session: &Session) -> Result<(), StoreError> {
        let ukey = format!("auth:user:{user}");
        let skkey = format!("auth:sk:{user}");
        let () = self
            .run(|p| {
                p.cmd("HSET")
                    .arg(&ukey)
                    .arg("openid")
                    .arg(&session.openid)
                    .ignore();
                match &session.unionid {
                    Some(u) => p.cmd("HSET").arg(&ukey).arg("unionid").arg(u).ignore(),
                    None => p.cmd("HDEL").arg(&ukey).arg("unionid").ignore(),
                };
                p.cmd("EXPIRE").arg(&ukey).arg(self.refresh_ttl).ignore();
                p.cmd("SET")
                    .arg(&skkey)
                    .arg(&session.session_key.0)
                    .arg("EX")
                    .arg(self.session_key_ttl)
                    .ignore();
            })
            .await?;
        Ok(())
    }

    /// The openid of a user id, if the user logged in within the refresh TTL.
    pub async fn openid_of(&self, user: &str) -> Result<Option<String>, StoreError> {
        let (openid,): (Option<String>,) = self
            .run(|p| {
                p.cmd("HGET").arg(format!("auth:user:{user}")).arg("openid");
            })
            .await?;
        Ok(openid)
    }

    /// Starts a new refresh token family for `user` and returns its first token.
    pub async fn new_family(&self, user: &str) -> Result<String, StoreError> {
        let family = random_id();
        let token = random_token();
        let ufkey = format!("auth:uf:{user}");
        let fkey = format!("auth:rf:{family}");
        let () = self
            .run(|p| {
                p.cmd("SET")
                    .arg(&fkey)
                    .arg(user)
                    .arg("EX")
                    .arg(self.refresh_ttl)
                    .ignore();
                p.cmd("SADD").arg(&ufkey).arg(&family).ignore();
                p.cmd("EXPIRE").arg(&ufkey).arg(self.refresh_ttl).ignore();
                self.add_token(p, &token, &family, user);
            })
            .await?;
        Ok(token)
    }

    fn add_token(&self, p: &mut redis::Pipeline, token: &str, family: &str, user: &str) {
        p.cmd("SET")
            .arg(format!("auth:rt:{}", hash(token)))
            .arg(format!("{family} {user}"))
            .arg("EX")
            .arg(self.refresh_ttl)
            .ignore();
    }

    /// Presents a refresh token: rotates it on first use, revokes its family on reuse.
    pub async fn rotate(&self, token: &str) -> Result<Rotation, StoreError> {
        let h = hash(token);
        let (entry, first_use): (Option<String>, Option<String>) = self
            .run(|p| {
                p.cmd("GET").arg(format!("auth:rt:{h}"));
                // SET NX decides atomically which presentation is the first one.
                p.cmd("SET")
                    .arg(format!("auth:rtu:{h}"))
                    .arg(1)
                    .arg("NX")
                    .arg("EX")
                    .arg(self.refresh_ttl);
            })
            .await?;
        let Some((family, user)) = entry.as_deref().and_then(|e| e.split_once(' ')) else {
            return Ok(Rotation::Invalid);
        };
        let fkey = format!("auth:rf:{family}");
        if first_use.is_none() {
            let () = self
                .run(|p| {
                    p.cmd("DEL").arg(&fkey).ignore();
                    p.cmd("SREM")
                        .arg(format!("auth:uf:{user}"))
                        .arg(family)
                        .ignore();
                })
                .await?;
            return Ok(Rotation::Reused {
                user: user.to_owned(),
            });
        }
        let next = random_token();
        let (renewed,): (i64,) = self
            .run(|p| {
                p.cmd("EXPIRE").arg(&fkey).arg(self.refresh_ttl);
                p.cmd("EXPIRE")
                    .arg(format!("auth:uf:{user}"))
                    .arg(self.refresh_ttl)
                    .ignore();
                p.cmd("EXPIRE")
                    .arg(format!("auth:user:{user}"))
                    .arg(self.refresh_ttl)
                    .ignore();
            })
            .await?;
        if renewed == 0 {
            // The family was revoked (logout or reuse) or expired.
            return Ok(Rotation::Invalid);
        }
        let () = self.run(|p| self.add_token(p, &next, family, user)).await?;
        Ok(Rotation::Rotated {
            user: user.to_owned(),
            token: next,
        })
    }

    /// The user a refresh token belongs to, used or not.
    pub async fn user_of_token(&self, token: &str) -> Result<Option<String>, StoreError> {
        let (entry,): (Option<String>,) = self
            .run(|p| {
                p.cmd("GET").arg(format!("auth:rt:{}", hash(token)));
            })
            .await?;
        Ok(entry.and_then(|e| e.split_once(' ').map(|(_, u)| u.to_owned())))
    }

    /// Revokes every refresh token family of `user`; returns how many there were.
    pub async fn revoke_user(&self, user: &str) -> Result<usize, StoreError> {
        let ufkey = format!("auth:uf:{user}");
        let (families,): (Vec<String>,) = self
            .run(|p| {
                p.cmd("SMEMBERS").arg(&ufkey);
            })
            .await?;
        let () = self
            .run(|p| {
                for f in &families {
                    p.cmd("DEL").arg(format!("auth:rf:{f}")).ignore();
                }
                p.cmd("DEL").arg(&ufkey).ignore();
            })
            .await?;
        Ok(families.len())
    }
}

/// One-time subscription grants (`notify`).
impl Store {
    /// Records one accepted grant of each of `templates` for `user`; returns the counts after.
    pub async fn add_grants(
        &self,
        user: &str,
        templates: &[String],
    ) -> Result<Vec<u64>, StoreError> {
        let key = format!("auth:grants:{user}");
        let counts: Vec<u64> = self
            .run(|p| {
                for t in templates {
                    p.cmd("HINCRBY").arg(&key).arg(t).arg(1);
                }
            })
            .await?;
        let over: Vec<&String> = templates
            .iter()
            .zip(&counts)
            .filter(|(_, n)| **n > MAX_GRANTS)
            .map(|(t, _)| t)
            .collect();
        if !over.is_empty() {
            let () = self
                .run(|p| {
                    for t in &over {
                        p.cmd("HSET").arg(&key).arg(*t).arg(MAX_GRANTS).ignore();
                    }
                })
                .await?;
        }
        Ok(counts.into_iter().map(|n| n.min(MAX_GRANTS)).collect())
    }

    /// The grants `user` has left for `template`.
    pub async fn grants(&self, user: &str, template: &str) -> Result<u64, StoreError> {
        let (n,): (Option<u64>,) = self
            .run(|p| {
                p.cmd("HGET")
                    .arg(format!("auth:grants:{user}"))
                    .arg(template);
            })
            .await?;
        Ok(n.unwrap_or(0))
    }

    /// Takes one grant of `template` from `user`, if any is left.
    pub async fn take_grant(&self, user: &str, template: &str) -> Result<bool, StoreError> {
        let (taken,): (i64,) = self
            .run(|p| {
                p.cmd("EVAL")
                    .arg(TAKE_GRANT)
                    .arg(1)
                    .arg(format!("auth:grants:{user}"))
                    .arg(template);
            })
            .await?;
        Ok(taken == 1)
    }

    /// Gives back a grant taken for a send that WeChat did not make.
    pub async fn return_grant(&self, user: &str, template: &str) -> Result<(), StoreError> {
        let (_,): (i64,) = self
            .run(|p| {
                p.cmd("HINCRBY")
                    .arg(format!("auth:grants:{user}"))
                    .arg(template)
                    .arg(1);
            })
            .await?;
        Ok(())
    }

    /// Forgets every grant of `template`: WeChat says the user holds none (43101).
    pub async fn drop_grants(&self, user: &str, template: &str) -> Result<(), StoreError> {
        let (_,): (i64,) = self
            .run(|p| {
                p.cmd("HDEL")
                    .arg(format!("auth:grants:{user}"))
                    .arg(template);
            })
            .await?;
        Ok(())
    }

    /// The `seen` time recorded when `user` was last notified of `conv`.
    pub async fn notified(&self, user: &str, conv: &str) -> Result<Option<u64>, StoreError> {
        let (v,): (Option<u64>,) = self
            .run(|p| {
                p.cmd("GET").arg(format!("auth:notified:{user}:{conv}"));
            })
            .await?;
        Ok(v)
    }

    /// Records that `user`, last seen at `seen`, was notified of `conv`.
    pub async fn set_notified(&self, user: &str, conv: &str, seen: u64) -> Result<(), StoreError> {
        let () = self
            .run(|p| {
                p.cmd("SET")
                    .arg(format!("auth:notified:{user}:{conv}"))
                    .arg(seen)
                    .arg("EX")
                    .arg(NOTIFIED_TTL_SECS)
                    .ignore();
            })
            .await?;
        Ok(())
    }
}

/// SHA-256 of a secret, hex, for key names.
pub fn hash(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn random_token() -> String {
    format!("rt_{}", B64.encode(rand::random::<[u8; 32]>()))
}

fn random_id() -> String {
    B64.encode(rand::random::<[u8; 16]>())
}
