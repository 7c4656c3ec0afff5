//! Private groups at the edge: their records in KV bucket `groups`, the changes members make, and
//! the local cache that `send` checks membership against.
//!
//! A change is written in three steps, so that the record and the group's event chain never
//! disagree for long and a gateway dying midway loses nothing:
//! 1. the new record is written with compare-and-set on the revision read, holding the change's
//!    event as `pending`; from here on every gateway enforces the new membership;
//! 2. the event is stored in stream `CHAT` on the group's subject, with `Nats-Msg-Id`
//!    `group:<group>:ev-<revision>`, so storing it twice stores it once;
//! 3. `pending` is cleared, again with compare-and-set.
//!
//! A change that finds a `pending` event older than [`group::PENDING_STALE_MS`] stores that event
//! first (step 2 and 3 for its dead gateway); a younger one means another change is in flight, and
//! it waits a moment and reads again.

pub mod cache;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use protocol::group::{self, Change, Pending, Record, RuleError};
use protocol::subject::Conversation;
use protocol::{ClientMsgId, ErrorCode, GroupId, RoomId, StoredMessage, UserId};

use crate::backlog::Backlog;
use crate::publish::{Publisher, now_ms};

pub use cache::Cache;

/// Compare-and-set attempts per change before it is answered `unavailable`.
const CAS_ATTEMPTS: u32 = 8;
/// First pause after a lost compare-and-set or a fresh pending event; grows by itself each time.
const CAS_PAUSE: Duration = Duration::from_millis(40);
/// Longest wait for one KV operation.
const KV_TIMEOUT: Duration = Duration::from_secs(3);
/// How often `ensure` tries to create the bucket (gateways starting together race to).
const ENSURE_ATTEMPTS: u32 = 5;

/// Why a group operation failed.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error("{0}")]
    Rule(#[from] RuleError),
    #[error("{0}")]
    Conflict(String),
    #[error("groups are unavailable: {0}")]
    Unavailable(String),
}

impl GroupError {
    /// The `error` frame that answers it.
    pub fn to_frame(&self, id: Option<protocol::FrameId>) -> protocol::ServerFrame {
        protocol::ServerFrame::Error {
            id,
            code: self.code(),
            message: self.to_string(),
            retry_after_ms: None,
        }
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            GroupError::Rule(r) => r.code(),
            GroupError::Conflict(_) => ErrorCode::Conflict,
            GroupError::Unavailable(_) => ErrorCode::Unavailable,
        }
    }
}

fn unavailable(e: impl std::fmt::Display) -> GroupError {
    GroupError::Unavailable(e.to_string())
}

/// Bounds one KV call by [`KV_TIMEOUT`].
async fn bounded<T, E: std::fmt::Display>(
    f: impl Future<Output = Result<T, E>>,
) -> Result<T, GroupError> {
    tokio::time::timeout(KV_TIMEOUT, f)
        .await
        .map_err(|_| GroupError::Unavailable(format!("no answer within {KV_TIMEOUT:?}")))?
        .map_err(unavailable)
}

/// The gateway's handle on groups. Cheap to clone.
#[derive(Clone)]
pub struct Groups {
    kv: kv::Store,
    publisher: Publisher,
    backlog: Backlog,
    cache: Cache,
    limits: Limits,
    /// For the per-user group count, which the conversation service knows.
    nats: async_nats::Client,
}

/// The sizes groups are held to.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `GROUP_MAX_MEMBERS`.
    pub members: usize,
    /// `GROUP_MAX_PER_USER`.
    pub per_user: usize,
}

impl Groups {
    /// Opens bucket `groups`, creating it when absent.
    pub async fn ensure(
        js: &jetstream::Context,
        replicas: usize,
        publisher: Publisher,
        backlog: Backlog,
        limits: Limits,
    ) -> anyhow::Result<Self> {
        // Gateways starting together race to create it: the loser reads the winner's.
        let kv = svc::kv::open_or_create(
            js,
            kv::Config {
                bucket: group::BUCKET.into(),
                description: "liaotian group records (protocol::group)".into(),
                history: 1,
                num_replicas: replicas,
                ..Default::default()
            },
            ENSURE_ATTEMPTS,
            CAS_PAUSE,
        )
        .await?;
        Ok(Self {
            kv,
            publisher,
            backlog,
            cache: Cache::default(),
            limits,
            nats: js.client(),
        })
    }

    /// Starts the watch that keeps the cache current.
    pub fn start_watch(
        &self,
        reconnects: tokio::sync::watch::Receiver<u64>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.cache.clone().follow(self.kv.clone(), reconnects))
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Refuses `users` joining a group if one of them is in `GROUP_MAX_PER_USER` groups already.
    /// The counts come from the conversation index, which lags the stream by the persister's
    /// backlog: changes racing each other may pass the limit by a few.
    async fn check_per_user(&self, users: &[UserId]) -> Result<(), GroupError> {
        use protocol::conv::{ConvReply, ConvRequest};
        let req = ConvRequest::GroupCounts {
            users: users.to_vec(),
        };
        let counts = match crate::convs::ask(&self.nats, &req, crate::convs::CONV_TIMEOUT).await {
            Ok(ConvReply::GroupCounts { counts }) => counts,
            Ok(_) => {
                return Err(unavailable(
                    "unexpected answer from the conversation service",
                ));
            }
            Err(e) => return Err(unavailable(e)),
        };
        let max = self.limits.per_user;
        for (user, n) in users.iter().zip(counts) {
            if usize::try_from(n).unwrap_or(usize::MAX) >= max {
                return Err(RuleError::Invalid(format!(
                    "{user} is in {max} groups, the most a user may belong to"
                ))
                .into());
            }
        }
        Ok(())
    }

    /// Groups cached on this gateway.
    pub fn cached(&self) -> usize {
        self.cache.len()
    }

    /// The cached record of a pinned group, read with no round trip.
    pub fn cached_record(&self, group: &GroupId) -> Option<Option<Arc<Record>>> {
        self.cache.get(group)
    }

    /// Pins a group while a connection has it joined, and returns its record.
    pub async fn pin(&self, group: &GroupId) -> Result<Option<Arc<Record>>, GroupError> {
        self.cache.pin(group, || self.read(group)).await
    }

    pub fn unpin(&self, group: &GroupId) {
        self.cache.unpin(group);
    }

    /// The record, from the cache when pinned, otherwise read.
    pub async fn record(&self, group: &GroupId) -> Result<Option<Arc<Record>>, GroupError> {
        if let Some(cached) = self.cache.get(group) {
            return Ok(cached);
        }
        Ok(self.read(group).await?.1)
    }

    /// The record of a group `user` is a member of; anything else is `forbidden`, a group that
    /// does not exist included.
    pub async fn member_record(
        &self,
        group: &GroupId,
        user: &UserId,
    ) -> Result<Arc<Record>, GroupError> {
        match self.record(group).await? {
            Some(r) if r.is_member(user) => Ok(r),
            _ => Err(RuleError::NotMember.into()),
        }
    }

    /// Whether `id` names a group (for refusing it as an open room).
    pub async fn exists(&self, id: &RoomId) -> Result<bool, GroupError> {
        let g = GroupId::parse(id.as_str()).map_err(unavailable)?;
        Ok(self.record(&g).await?.is_some())
    }

    async fn read(&self, group: &GroupId) -> Result<cache::Versioned, GroupError> {
        Ok(
            match bounded(self.kv.entry(group::record_key(group))).await? {
                Some(entry) => cache::decode(&entry),
                None => (0, None),
            },
        )
    }

    /// Creates a group owned by `by`, stores its `created` event, and returns its id and record.
    pub async fn create(
        &self,
        by: &UserId,
        id: Option<GroupId>,
        name: String,
        members: Vec<UserId>,
    ) -> Result<(GroupId, Record), GroupError> {
        self.create_for(by, by.clone(), id, name, members).await
    }

    /// Creates a group owned by `owner` on behalf of `by` (the admin API's system account), whose
    /// `created` event is then `from` `by`.
    pub async fn create_for(
        &self,
        by: &UserId,
        owner: UserId,
        id: Option<GroupId>,
        name: String,
        members: Vec<UserId>,
    ) -> Result<(GroupId, Record), GroupError> {
        let now = now_ms();
        let (mut record, event) = Record::create(name, owner, members, self.limits.members, now)?;
        self.check_per_user(&event.users).await?;
        let id = match id {
            Some(id) => id,
            None => GroupId::parse(format!("g{}", nuid::next()))
                .unwrap_or_else(|_| unreachable!("a NUID is alphanumeric")),
        };
        // An open room with messages keeps its id: a group and a room never share one.
        let room = Conversation::Room(id.as_room());
        let last = self.backlog.last_seq(&room).await.map_err(unavailable)?;
        if last.seq > 0 {
            return Err(GroupError::Conflict(format!(
                "{id} is an open room with messages"
            )));
        }
        record.pending = Some(Pending {
            by: by.clone(),
            ts: now,
            event,
        });
        let key = group::record_key(&id);
        let rev =
            match tokio::time::timeout(KV_TIMEOUT, self.kv.create(&key, encode(&record))).await {
                Err(_) => return Err(GroupError::Unavailable("bucket groups timed out".into())),
                Ok(Err(e)) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                    return Err(GroupError::Conflict(format!("{id} is taken by a group")));
                }
                Ok(Err(e)) => return Err(unavailable(e)),
                Ok(Ok(rev)) => rev,
            };
        let record = self.complete(&id, rev, record).await?;
        Ok((id, record))
    }

    /// Makes `change` by `by`, stores its event, and returns the record after it.
    pub async fn change(
        &self,
        group: &GroupId,
        by: &UserId,
        change: Change,
    ) -> Result<Record, GroupError> {
        let key = group::record_key(group);
        let mut pause = CAS_PAUSE;
        for _ in 0..CAS_ATTEMPTS {
            let (rev, record) = self.read(group).await?;
            let Some(record) = record else {
                return Err(RuleError::NotMember.into());
            };
            let record = Arc::unwrap_or_clone(record);
            if let Some(p) = &record.pending {
                if now_ms().saturating_sub(p.ts) >= group::PENDING_STALE_MS {
                    tracing::info!(%group, rev, "completing an abandoned group change");
                    self.complete(group, rev, record).await?;
                } else {
                    tokio::time::sleep(pause).await;
                    pause += CAS_PAUSE;
                }
                continue;
            }
            let (mut next, event) = record.decide(by, change.clone(), self.limits.members)?;
            if event.kind == group::EventKind::Added {
                self.check_per_user(&event.users).await?;
            }
            next.pending = Some(Pending {
                by: by.clone(),
                ts: now_ms(),
                event,
            });
            match tokio::time::timeout(KV_TIMEOUT, self.kv.update(&key, encode(&next), rev)).await {
                Ok(Ok(new_rev)) => return self.complete(group, new_rev, next).await,
                // Another change was written since the read: read again.
                Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    tokio::time::sleep(pause).await;
                    pause += CAS_PAUSE;
                }
                Ok(Err(e)) => return Err(unavailable(e)),
                Err(_) => return Err(GroupError::Unavailable("bucket groups timed out".into())),
            }
        }
        Err(GroupError::Unavailable(
            "the group is busy with other changes; try again".into(),
        ))
    }

    /// Stores the pending event of `record` (written at `rev`) and clears it. A lost race to clear
    /// it means another gateway completed the same event, which the stream stored once.
    async fn complete(
        &self,
        group: &GroupId,
        rev: u64,
        mut record: Record,
    ) -> Result<Record, GroupError> {
        let Some(p) = record.pending.take() else {
            return Ok(record);
        };
        let msg = StoredMessage {
            mentions: Vec::new(),
            from: p.by,
            room: None,
            to: None,
            group: Some(group.clone()),
            event: Some(Box::new(p.event)),
            text: String::new(),
            client_msg_id: ClientMsgId::parse(format!("ev-{rev}"))
                .unwrap_or_else(|_| unreachable!("digits are a valid id")),
            ts: p.ts,
        };
        self.publisher
            .publish(&Conversation::Group(group.clone()), &msg)
            .await
            .map_err(unavailable)?;
        let key = group::record_key(group);
        if let Err(e) = bounded(self.kv.update(&key, encode(&record), rev)).await {
            tracing::debug!(%group, error = %e, "pending event cleared elsewhere");
        }
        Ok(record)
    }
}

fn encode(record: &Record) -> Bytes {
    Bytes::from(serde_json::to_vec(record).unwrap_or_default())
}
