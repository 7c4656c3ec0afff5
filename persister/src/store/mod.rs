//! The history store: one trait, two backends (embedded SQLite, ScyllaDB).
//!
//! Backends implement two primitives, an idempotent [`Store::write_batch`] and a bounded range
//! [`Store::scan`]. Paging ([`Store::page`]) is written once, on top of `scan`, so both backends answer
//! the [`HistoryRequest`] contract identically: ascending `seq`, exact `more`, and an exact `prev_seq` for
//! every message, obtained by reading one row more than the page.

pub mod scylla;
pub mod sqlite;
mod sqlite_convs;

use futures_util::future::BoxFuture;
use protocol::conv::{ConvItem, ReadState};
use protocol::frame::Item;
use protocol::history::{HistoryRequest, MAX_LIMIT};
use protocol::subject::Conversation;
use protocol::{GroupId, RoomId, StoredMessage, UserId};

pub use self::scylla::ScyllaStore;
pub use self::sqlite::SqliteStore;

/// The future every store method returns (boxed, so `Store` can be used as `dyn Store`).
pub type StoreFuture<'a, T> = BoxFuture<'a, Result<T, StoreError>>;

/// One message of stream `CHAT`, ready to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub conv: Conversation,
    /// The stream sequence JetStream gave the message.
    pub seq: u64,
    pub msg: StoredMessage,
}

/// A stream message that could not be stored as a chat message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Stream sequence of the message; the key, so setting the same message aside twice keeps one copy.
    pub seq: u64,
    pub subject: String,
    pub payload: Vec<u8>,
    /// Why it was set aside.
    pub error: String,
}

/// A validated page request: a valid conversation and `1..=MAX_LIMIT` messages.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PageQuery {
    conv: Conversation,
    before: Option<u64>,
    after: Option<u64>,
    limit: u32,
}

/// Why a history request was refused (a client fault, answered with `HistoryReply::Error`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("limit must be between 1 and {MAX_LIMIT}, got {0}")]
    Limit(u32),
    #[error("a direct-message thread needs two distinct users")]
    Conversation,
}

impl PageQuery {
    pub fn new(
        conv: Conversation,
        before: Option<u64>,
        after: Option<u64>,
        limit: u32,
    ) -> Result<Self, QueryError> {
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(QueryError::Limit(limit));
        }
        Ok(Self {
            conv,
            before,
            after,
            limit,
        })
    }

    /// Validates a request received over NATS.
    pub fn from_request(req: &HistoryRequest) -> Result<Self, QueryError> {
        let conv = req.conv.conversation().ok_or(QueryError::Conversation)?;
        Self::new(conv, req.before, req.after, req.limit)
    }

    pub fn conv(&self) -> &Conversation {
        &self.conv
    }

    pub fn limit(&self) -> u32 {
        self.limit
    }
}

/// One page of history, in ascending `seq` order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub messages: Vec<Item>,
    /// Further messages exist beyond the page in the paging direction.
    pub more: bool,
}

/// The order of a [`Store::scan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Ascending,
    Descending,
}

/// Why a store operation failed (a server fault: the consumer retries, the service answers an error).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite")]
    Sqlite(#[from] rusqlite::Error),
    #[error("scylla: {what}")]
    Scylla {
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("creating the data directory {0}")]
    DataDir(String, #[source] std::io::Error),
    #[error("sequence {0} does not fit the store's signed 64-bit column")]
    SeqRange(u64),
    #[error("stored row is not a valid message: {0}")]
    Corrupt(String),
    #[error("a store worker thread panicked")]
    Worker,
    #[error("this store does not support {0} yet")]
    Unsupported(&'static str),
}

/// A history store. Every write is idempotent, keyed by (conversation, seq) or, for dead letters, by seq.
pub trait Store: Send + Sync {
    /// Stores every record, atomically where the backend can; a record already stored is left as is.
    fn write_batch<'a>(&'a self, records: &'a [Record]) -> StoreFuture<'a, ()>;

    /// Up to `n` records of `conv` with `lo < seq < hi`, in `order` (ascending from `lo`, or descending from `hi`).
    fn scan<'a>(
        &'a self,
        conv: &'a Conversation,
        lo: u64,
        hi: u64,
        order: Order,
        n: usize,
    ) -> StoreFuture<'a, Vec<Record>>;

    /// Sets a message aside; idempotent by `seq`.
    fn dead_letter<'a>(&'a self, letter: &'a DeadLetter) -> StoreFuture<'a, ()>;

    /// Up to `n` dead letters, oldest first (for operators and tests).
    fn dead_letters(&self, n: usize) -> StoreFuture<'_, Vec<DeadLetter>>;

    /// Number of stored messages of `conv` (for operators and tests; may be slow).
    fn count<'a>(&'a self, conv: &'a Conversation) -> StoreFuture<'a, u64>;

    /// A page of `user`'s conversation list (threads and groups), newest activity first, with
    /// activity below `before`; and whether more follow.
    fn conversations<'a>(
        &'a self,
        user: &'a UserId,
        limit: u32,
        before: Option<u64>,
    ) -> StoreFuture<'a, (Vec<ConvItem>, bool)>;

    /// `user`'s read position and unread count in `conv`.
    fn read_state<'a>(
        &'a self,
        user: &'a UserId,
        conv: &'a Conversation,
    ) -> StoreFuture<'a, ReadState>;

    /// Moves `user`'s read position in `conv` up to `seq` (never back, clamped to the newest item);
    /// returns the state and whether it moved.
    fn mark_read<'a>(
        &'a self,
        user: &'a UserId,
        conv: &'a Conversation,
        seq: u64,
    ) -> StoreFuture<'a, (ReadState, bool)>;

    /// [`Store::mark_read`] for many reads at once, in one transaction where the backend can: the
    /// conversation service commits the reads that arrive together as one batch.
    fn mark_read_many<'a>(
        &'a self,
        marks: &'a [(UserId, Conversation, u64)],
    ) -> StoreFuture<'a, Vec<(ReadState, bool)>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(marks.len());
            for (user, conv, seq) in marks {
                out.push(self.mark_read(user, conv, *seq).await?);
            }
            Ok(out)
        })
    }

    /// The newest seq of `conv` that the conversation index holds (0 for none).
    fn newest<'a>(&'a self, conv: &'a Conversation) -> StoreFuture<'a, u64>;

    /// Takes `conv` out of `user`'s list until its next message.
    fn hide<'a>(&'a self, user: &'a UserId, conv: &'a Conversation) -> StoreFuture<'a, ()>;

    /// The current members of `conv` whose read position is at `seq` or beyond, sorted.
    fn readers<'a>(&'a self, conv: &'a Conversation, seq: u64) -> StoreFuture<'a, Vec<UserId>>;

    /// Those of `among` who share a direct thread (one with a message) or a group (both current
    /// members) with `user`, in the order given.
    fn contacts<'a>(
        &'a self,
        user: &'a UserId,
        among: &'a [UserId],
    ) -> StoreFuture<'a, Vec<UserId>>;

    /// How many groups each of `users` is a current member of, in the order given.
    fn group_counts<'a>(&'a self, users: &'a [UserId]) -> StoreFuture<'a, Vec<u64>>;

    /// One page with the semantics of [`HistoryRequest`].
    fn page<'a>(&'a self, q: &'a PageQuery) -> StoreFuture<'a, Page> {
        Box::pin(page_via_scan(self, q))
    }
}

/// The one implementation of the paging contract, over [`Store::scan`].
async fn page_via_scan<S: Store + ?Sized>(store: &S, q: &PageQuery) -> Result<Page, StoreError> {
    let limit = q.limit as usize;
    let hi = q.before.unwrap_or(u64::MAX);
    match q.after {
        // Newest first: the row after the page is the previous message of the page's oldest one.
        None => {
            let mut rows = store
                .scan(&q.conv, 0, hi, Order::Descending, limit + 1)
                .await?;
            let more = rows.len() > limit;
            let prevs: Vec<u64> = (0..rows.len().min(limit))
                .map(|i| rows.get(i + 1).map_or(0, |r| r.seq))
                .collect();
            rows.truncate(limit);
            let mut messages: Vec<Item> = rows
                .into_iter()
                .zip(prevs)
                .map(|(r, prev)| frame(r.msg, r.seq, prev))
                .collect();
            messages.reverse();
            Ok(Page { messages, more })
        }
        // Oldest first: one descending read at the page's start gives the first message's predecessor.
        Some(after) => {
            let mut rows = store
                .scan(&q.conv, after, hi, Order::Ascending, limit + 1)
                .await?;
            let more = rows.len() > limit;
            rows.truncate(limit);
            let mut prev = match rows.first() {
                Some(first) => store
                    .scan(&q.conv, 0, first.seq, Order::Descending, 1)
                    .await?
                    .first()
                    .map_or(0, |r| r.seq),
                None => 0,
            };
            let messages = rows
                .into_iter()
                .map(|r| {
                    let f = frame(r.msg, r.seq, prev);
                    prev = r.seq;
                    f
                })
                .collect();
            Ok(Page { messages, more })
        }
    }
}

fn frame(msg: StoredMessage, seq: u64, prev_seq: u64) -> Item {
    Item::from_stored(msg, seq, prev_seq)
}

/// The key a conversation is stored under: `room.<room>`, `group.<group>` or `dm.<lo>.<hi>` (ids
/// never contain a dot).
pub fn conv_key(conv: &Conversation) -> String {
    match conv {
        Conversation::Room(r) => format!("room.{r}"),
        Conversation::Group(g) => format!("group.{g}"),
        Conversation::Dm { lo, hi } => format!("dm.{lo}.{hi}"),
    }
}

/// The inverse of [`conv_key`].
pub fn conv_from_key(key: &str) -> Option<Conversation> {
    let mut parts = key.split('.');
    let conv = match (parts.next()?, parts.next()?, parts.next()) {
        ("room", r, None) => Conversation::Room(RoomId::parse(r).ok()?),
        ("group", g, None) => Conversation::Group(GroupId::parse(g).ok()?),
        ("dm", lo, Some(hi)) => Conversation::dm(UserId::parse(lo).ok()?, UserId::parse(hi).ok()?)?,
        _ => return None,
    };
    parts.next().is_none().then_some(conv)
}

/// The columns of a stored message, shared by both backends' row mappings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageColumns {
    pub sender: String,
    pub room: Option<String>,
    pub recipient: Option<String>,
    /// Column `grp`: the group of a group's message or event.
    pub group: Option<String>,
    /// A group event as JSON (`protocol::group::GroupEvent`).
    pub event: Option<String>,
    pub text: String,
    pub client_msg_id: String,
    pub ts: i64,
}

impl MessageColumns {
    pub fn from_msg(m: &StoredMessage) -> Self {
        Self {
            sender: m.from.to_string(),
            room: m.room.as_ref().map(ToString::to_string),
            recipient: m.to.as_ref().map(ToString::to_string),
            group: m.group.as_ref().map(ToString::to_string),
            event: m
                .event
                .as_ref()
                .map(|e| serde_json::to_string(e).unwrap_or_default()),
            text: m.text.clone(),
            client_msg_id: m.client_msg_id.to_string(),
            ts: i64::try_from(m.ts).unwrap_or(i64::MAX),
        }
    }

    /// Rebuilds the message, validating every id again (the store is outside our type system).
    pub fn into_msg(self) -> Result<StoredMessage, StoreError> {
        let bad = |e: protocol::IdError| StoreError::Corrupt(e.to_string());
        Ok(StoredMessage {
            mentions: Vec::new(),
            from: UserId::parse(self.sender).map_err(bad)?,
            room: self.room.map(RoomId::parse).transpose().map_err(bad)?,
            to: self.recipient.map(UserId::parse).transpose().map_err(bad)?,
            group: self.group.map(GroupId::parse).transpose().map_err(bad)?,
            event: self
                .event
                .map(|e| serde_json::from_str(&e))
                .transpose()
                .map_err(|e| StoreError::Corrupt(format!("event: {e}")))?,
            text: self.text,
            client_msg_id: protocol::ClientMsgId::parse(self.client_msg_id).map_err(bad)?,
            ts: u64::try_from(self.ts)
                .map_err(|_| StoreError::Corrupt(format!("ts {}", self.ts)))?,
        })
    }
}

/// A stream sequence as a signed 64-bit column value.
pub fn seq_to_i64(seq: u64) -> Result<i64, StoreError> {
    i64::try_from(seq).map_err(|_| StoreError::SeqRange(seq))
}

/// A signed 64-bit column value as a stream sequence.
pub fn seq_from_i64(v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("negative seq {v}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves conversation keys round-trip and cannot be confused between rooms and DMs.
    #[test]
    fn conv_keys_round_trip() {
        let room = Conversation::Room(RoomId::parse("general").unwrap());
        let dm = Conversation::dm(
            UserId::parse("bob").unwrap(),
            UserId::parse("alice").unwrap(),
        )
        .unwrap();
        assert_eq!(conv_key(&room), "room.general");
        assert_eq!(conv_key(&dm), "dm.alice.bob");
        assert_eq!(conv_from_key("room.general"), Some(room));
        assert_eq!(conv_from_key("dm.alice.bob"), Some(dm));
        assert_eq!(conv_from_key("room.a.b"), None);
        let group = Conversation::Group(GroupId::parse("team").unwrap());
        assert_eq!(conv_key(&group), "group.team");
        assert_eq!(conv_from_key("group.team"), Some(group));
        assert_eq!(conv_from_key("dm.a.a"), None);
    }

    // Proves limits outside 1..=100 are refused before any store read.
    #[test]
    fn page_query_checks_the_limit() {
        let room = Conversation::Room(RoomId::parse("r").unwrap());
        assert_eq!(
            PageQuery::new(room.clone(), None, None, 0),
            Err(QueryError::Limit(0))
        );
        assert_eq!(
            PageQuery::new(room.clone(), None, None, 101),
            Err(QueryError::Limit(101))
        );
        assert!(PageQuery::new(room, None, None, 100).is_ok());
    }
}
