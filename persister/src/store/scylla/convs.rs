//! The conversation index in ScyllaDB: the same contract as `sqlite_convs`, in tables that CQL
//! can read by partition alone.
//!
//! CQL has no multi-row transactions and no joins, so the index is shaped by its reads:
//! - `convs`: one row per thread or group, its head (newest seq, message count, newest item, name,
//!   member count), written last for each message, so a crash before it replays the message's
//!   whole index update on redelivery;
//! - `conv_members` (user, conv): read position, hide mark and departure, the row the SQLite index
//!   keeps too;
//! - `conv_readers` (conv, user): the current members with their read position, for receipts and
//!   member counts;
//! - `user_activity` (user, activity DESC, conv): rows that have their own activity (threads, and
//!   groups the user left), in list order;
//! - `user_groups` (user, conv): the user's current groups. A group's activity is its head's, so a
//!   group message writes one row, not one per member; a list page reads the user's groups' heads
//!   (bounded by the gateway's `GROUP_MAX_PER_USER`) and merges them with `user_activity`.
//!
//! Hiding stores the conversation's message count at the hide (`hidden_count`): the conversation
//! is back once it has more, so a group message needs no per-member write to unhide it.
//!
//! Every update is an upsert or a delete computed from the head and the member rows as they were
//! before the message, so replaying a message whose head was not written yet repeats the same
//! writes. The index's writers in one process take one lock; the index assumes one persister writes
//! it at a time (docs/persister.md).

use futures_util::{StreamExt, TryStreamExt};
use protocol::conv::{ConvItem, ReadState};
use protocol::frame::Item;
use protocol::group::EventKind;
use protocol::subject::Conversation;
use protocol::{StoredMessage, UserId};
use scylla::statement::prepared::PreparedStatement;

use super::{Order, ScyllaStore, bucket_of, scylla_err};
use crate::store::{StoreError, conv_from_key, conv_key, seq_from_i64};

/// Reads one list page or contact check keeps in flight.
pub const READ_CONCURRENCY: usize = 32;
/// The most current groups of one user a list page reads (the gateway's per-user cap is lower).
pub const MAX_GROUPS_READ: i32 = 10_000;
/// Activity rows read per step of a list page (hidden and stale rows are skipped, so it may take
/// several).
pub const ACTIVITY_PAGE: i32 = 128;
/// Items scanned back from a read position for the nearest one with an ordinal.
const ORD_SCAN: usize = 16;

/// The index's tables, created after the message tables.
pub fn schema_cql(ks: &str) -> Vec<String> {
    vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.convs (conv text PRIMARY KEY, last_seq bigint, \
             msg_count bigint, last_item text, name text, members bigint)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.conv_members (user text, conv text, read_seq bigint, \
             read_ord bigint, hidden_count bigint, activity bigint, left_seq bigint, \
             left_item text, left_count bigint, PRIMARY KEY (user, conv))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.conv_readers (conv text, user text, read_seq bigint, \
             PRIMARY KEY (conv, user))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.user_activity (user text, activity bigint, conv text, \
             PRIMARY KEY (user, activity, conv)) WITH CLUSTERING ORDER BY (activity DESC, conv ASC)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.user_groups (user text, conv text, \
             PRIMARY KEY (user, conv))"
        ),
    ]
}

/// The text of every statement of the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvCql {
    pub head: String,
    pub put_head: String,
    pub set_ord: String,
    pub member: String,
    pub touch: String,
    pub set_read: String,
    pub join: String,
    pub leave: String,
    pub hide: String,
    pub readers: String,
    pub put_reader: String,
    pub add_reader: String,
    pub del_reader: String,
    pub count_readers: String,
    pub put_activity: String,
    pub del_activity: String,
    pub activity: String,
    pub put_group: String,
    pub del_group: String,
    pub groups: String,
    pub count_groups: String,
}

impl ConvCql {
    pub fn new(ks: &str) -> Self {
        let m = "WHERE user = ? AND conv = ?";
        Self {
            head: format!(
                "SELECT last_seq, msg_count, last_item, name, members FROM {ks}.convs WHERE conv = ?"
            ),
            put_head: format!(
                "INSERT INTO {ks}.convs (conv, last_seq, msg_count, last_item, name, members) \
                 VALUES (?, ?, ?, ?, ?, ?)"
            ),
            set_ord: format!(
                "UPDATE {ks}.messages SET ord = ? WHERE conv = ? AND bucket = ? AND seq = ?"
            ),
            member: format!(
                "SELECT read_seq, read_ord, hidden_count, activity, left_seq, left_item, \
                 left_count FROM {ks}.conv_members {m}"
            ),
            touch: format!("UPDATE {ks}.conv_members SET activity = ? {m}"),
            set_read: format!("UPDATE {ks}.conv_members SET read_seq = ?, read_ord = ? {m}"),
            join: format!(
                "UPDATE {ks}.conv_members SET read_seq = ?, read_ord = ?, hidden_count = null, \
                 activity = null, left_seq = null, left_item = null, left_count = null {m}"
            ),
            leave: format!(
                "UPDATE {ks}.conv_members SET left_seq = ?, left_item = ?, left_count = ?, \
                 activity = ? {m}"
            ),
            hide: format!("UPDATE {ks}.conv_members SET hidden_count = ? {m}"),
            readers: format!("SELECT user, read_seq FROM {ks}.conv_readers WHERE conv = ?"),
            put_reader: format!(
                "UPDATE {ks}.conv_readers SET read_seq = ? WHERE conv = ? AND user = ?"
            ),
            add_reader: format!("INSERT INTO {ks}.conv_readers (conv, user) VALUES (?, ?)"),
            del_reader: format!("DELETE FROM {ks}.conv_readers WHERE conv = ? AND user = ?"),
            count_readers: format!("SELECT COUNT(*) FROM {ks}.conv_readers WHERE conv = ?"),
            put_activity: format!(
                "INSERT INTO {ks}.user_activity (user, activity, conv) VALUES (?, ?, ?)"
            ),
            del_activity: format!(
                "DELETE FROM {ks}.user_activity WHERE user = ? AND activity = ? AND conv = ?"
            ),
            activity: format!(
                "SELECT activity, conv FROM {ks}.user_activity WHERE user = ? AND activity < ? \
                 LIMIT ?"
            ),
            put_group: format!("INSERT INTO {ks}.user_groups (user, conv) VALUES (?, ?)"),
            del_group: format!("DELETE FROM {ks}.user_groups WHERE user = ? AND conv = ?"),
            groups: format!("SELECT conv FROM {ks}.user_groups WHERE user = ? LIMIT ?"),
            count_groups: format!("SELECT COUNT(*) FROM {ks}.user_groups WHERE user = ?"),
        }
    }

    /// Every statement's text, for preparing and for the schema test.
    pub fn all(&self) -> [&String; 21] {
        [
            &self.head,
            &self.put_head,
            &self.set_ord,
            &self.member,
            &self.touch,
            &self.set_read,
            &self.join,
            &self.leave,
            &self.hide,
            &self.readers,
            &self.put_reader,
            &self.add_reader,
            &self.del_reader,
            &self.count_readers,
            &self.put_activity,
            &self.del_activity,
            &self.activity,
            &self.put_group,
            &self.del_group,
            &self.groups,
            &self.count_groups,
        ]
    }
}

/// The prepared statements, in [`ConvCql::all`] order, and the writers' lock.
pub(super) struct ConvIndex {
    st: Vec<PreparedStatement>,
    /// Held by every writer of the index (a batch's index phase, reads, hides): each computes its
    /// writes from rows it has just read.
    lock: tokio::sync::Mutex<()>,
}

/// Positions in [`ConvIndex::st`], matching [`ConvCql::all`].
#[derive(Clone, Copy)]
enum St {
    Head,
    PutHead,
    SetOrd,
    Member,
    Touch,
    SetRead,
    Join,
    Leave,
    Hide,
    Readers,
    PutReader,
    AddReader,
    DelReader,
    CountReaders,
    PutActivity,
    DelActivity,
    Activity,
    PutGroup,
    DelGroup,
    Groups,
    CountGroups,
}

impl ConvIndex {
    pub(super) fn new(st: Vec<PreparedStatement>) -> Self {
        Self {
            st,
            lock: tokio::sync::Mutex::new(()),
        }
    }
}

/// A conversation's head, as `convs` holds it (all zero for an unknown one).
#[derive(Debug, Clone, Default)]
struct Head {
    last_seq: i64,
    msg_count: i64,
    last_item: Option<String>,
    name: Option<String>,
    members: i64,
}

/// A `conv_members` row.
#[derive(Debug, Clone, Default)]
struct Member {
    read_seq: i64,
    read_ord: i64,
    hidden_count: Option<i64>,
    activity: Option<i64>,
    left_seq: Option<i64>,
    left_item: Option<String>,
    left_count: Option<i64>,
}

impl Member {
    /// The message count this member's unread and hide mark are measured against.
    fn count(&self, head: &Head) -> i64 {
        self.left_count.unwrap_or(head.msg_count)
    }

    fn state(&self, head: &Head) -> Result<ReadState, StoreError> {
        Ok(ReadState {
            read_seq: seq_from_i64(self.read_seq)?,
            unread: unread(self.count(head), self.read_ord),
        })
    }

    fn hidden(&self, head: &Head) -> bool {
        self.hidden_count.is_some_and(|h| self.count(head) <= h)
    }
}

fn unread(count: i64, read_ord: i64) -> u64 {
    u64::try_from(count.saturating_sub(read_ord)).unwrap_or(0)
}

type MemberCols = (
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<i64>,
);

/// One stored message to index, in stream order within its conversation.
pub(super) struct Indexed<'a> {
    pub conv: &'a Conversation,
    pub seq: i64,
    pub msg: &'a StoredMessage,
}

impl ScyllaStore {
    fn ps(&self, s: St) -> &PreparedStatement {
        &self.convs.st[s as usize]
    }

    /// Runs a statement that returns nothing.
    async fn exec(
        &self,
        s: St,
        values: impl scylla::serialize::row::SerializeRow,
    ) -> Result<(), StoreError> {
        self.session
            .execute_unpaged(self.ps(s), values)
            .await
            .map_err(scylla_err("writing the conversation index"))?;
        Ok(())
    }

    /// Runs a read and returns its rows.
    async fn rows<T>(
        &self,
        s: St,
        values: impl scylla::serialize::row::SerializeRow,
    ) -> Result<Vec<T>, StoreError>
    where
        T: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm>,
    {
        let res = self
            .session
            .execute_unpaged(self.ps(s), values)
            .await
            .map_err(scylla_err("reading the conversation index"))?
            .into_rows_result()
            .map_err(scylla_err("reading the conversation index"))?;
        res.rows::<T>()
            .map_err(scylla_err("reading the conversation index"))?
            .map(|r| r.map_err(scylla_err("reading a conversation index row")))
            .collect()
    }

    async fn count_of(&self, s: St, key: &str) -> Result<i64, StoreError> {
        let rows: Vec<(i64,)> = self.rows(s, (key,)).await?;
        Ok(rows.first().map_or(0, |r| r.0))
    }

    async fn head(&self, key: &str) -> Result<Head, StoreError> {
        type Cols = (
            Option<i64>,
            Option<i64>,
            Option<String>,
            Option<String>,
            Option<i64>,
        );
        let rows: Vec<Cols> = self.rows(St::Head, (key,)).await?;
        Ok(rows
            .into_iter()
            .next()
            .map(|(last_seq, msg_count, last_item, name, members)| Head {
                last_seq: last_seq.unwrap_or(0),
                msg_count: msg_count.unwrap_or(0),
                last_item,
                name,
                members: members.unwrap_or(0),
            })
            .unwrap_or_default())
    }

    async fn member(&self, user: &str, key: &str) -> Result<Option<Member>, StoreError> {
        let rows: Vec<MemberCols> = self.rows(St::Member, (user, key)).await?;
        Ok(rows.into_iter().next().map(
            |(read_seq, read_ord, hidden_count, activity, left_seq, left_item, left_count)| {
                Member {
                    read_seq: read_seq.unwrap_or(0),
                    read_ord: read_ord.unwrap_or(0),
                    hidden_count,
                    activity,
                    left_seq,
                    left_item,
                    left_count,
                }
            },
        ))
    }

    /// The ordinal of the newest item of `conv` at or below `seq` (0 for none).
    async fn ord_at(&self, conv: &Conversation, seq: i64) -> Result<i64, StoreError> {
        let hi = u64::try_from(seq).unwrap_or(0).saturating_add(1);
        let rows = self
            .scan_rows(conv, 0, hi, Order::Descending, ORD_SCAN)
            .await?;
        Ok(rows.iter().find_map(|r| r.ord).unwrap_or(0))
    }

    /// Indexes the records of one conversation, in order, skipping those already indexed.
    pub(super) async fn index_chain(&self, chain: Vec<Indexed<'_>>) -> Result<(), StoreError> {
        let Some(first) = chain.first() else {
            return Ok(());
        };
        let key = conv_key(first.conv);
        let mut head = self.head(&key).await?;
        for rec in chain {
            if rec.seq <= head.last_seq {
                continue;
            }
            head = self.index_one(&key, &head, &rec).await?;
            self.exec(
                St::PutHead,
                (
                    &key,
                    head.last_seq,
                    head.msg_count,
                    &head.last_item,
                    &head.name,
                    head.members,
                ),
            )
            .await?;
        }
        Ok(())
    }

    /// The writes of one message that follows `head`; returns the new head (not yet written).
    async fn index_one(
        &self,
        key: &str,
        head: &Head,
        rec: &Indexed<'_>,
    ) -> Result<Head, StoreError> {
        let (seq, msg) = (rec.seq, rec.msg);
        let ord = head.msg_count + i64::from(msg.event.is_none());
        self.exec(St::SetOrd, (ord, key, bucket_of(seq as u64), seq))
            .await?;
        let item = Item::from_stored(
            msg.clone(),
            seq_from_i64(seq)?,
            seq_from_i64(head.last_seq)?,
        )
        .to_json();
        let mut next = Head {
            last_seq: seq,
            msg_count: ord,
            last_item: Some(item.clone()),
            name: head.name.clone(),
            members: head.members,
        };
        match (rec.conv, &msg.event) {
            (Conversation::Dm { lo, hi }, _) => {
                for u in [lo.as_str(), hi.as_str()] {
                    // A thread's activity is its newest message, for both of its users.
                    if head.last_seq > 0 {
                        self.exec(St::DelActivity, (u, head.last_seq, key)).await?;
                    }
                    self.exec(St::PutActivity, (u, seq, key)).await?;
                    self.exec(St::Touch, (seq, u, key)).await?;
                    self.exec(St::AddReader, (key, u)).await?;
                }
            }
            (Conversation::Group(_), Some(event)) => {
                match event.kind {
                    EventKind::Created | EventKind::Added => {
                        for u in &event.users {
                            let u = u.as_str();
                            // A member's unread count starts at their joining; a row kept from an
                            // earlier membership leaves the activity order.
                            if let Some(a) = self.member(u, key).await?.and_then(|m| m.activity) {
                                self.exec(St::DelActivity, (u, a, key)).await?;
                            }
                            self.exec(St::Join, (seq, ord, u, key)).await?;
                            self.exec(St::PutGroup, (u, key)).await?;
                            self.exec(St::PutReader, (seq, key, u)).await?;
                        }
                    }
                    EventKind::Removed | EventKind::Quit => {
                        for u in &event.users {
                            let u = u.as_str();
                            let Some(m) = self.member(u, key).await? else {
                                continue;
                            };
                            // Current before this event (or left by it, on a replay).
                            if m.left_seq.is_some_and(|l| l != seq) {
                                continue;
                            }
                            self.exec(St::Leave, (seq, &item, ord, seq, u, key)).await?;
                            self.exec(St::PutActivity, (u, seq, key)).await?;
                            self.exec(St::DelGroup, (u, key)).await?;
                            self.exec(St::DelReader, (key, u)).await?;
                        }
                    }
                    EventKind::Role | EventKind::Renamed => {}
                }
                if matches!(
                    event.kind,
                    EventKind::Created | EventKind::Added | EventKind::Removed | EventKind::Quit
                ) {
                    next.members = self.count_of(St::CountReaders, key).await?;
                }
                if let Some(name) = &event.name {
                    next.name = Some(name.clone());
                }
            }
            (Conversation::Group(_), None) | (Conversation::Room(_), _) => {}
        }
        if msg.event.is_none() {
            // Sending marks the conversation read up to the message sent.
            let from = msg.from.as_str();
            if let Some(m) = self.member(from, key).await?
                && m.read_seq < seq
            {
                self.exec(St::SetRead, (seq, ord, from, key)).await?;
                if m.left_seq.is_none() {
                    self.exec(St::PutReader, (seq, key, from)).await?;
                }
            }
        }
        Ok(next)
    }

    pub(super) async fn index_batch(
        &self,
        chains: Vec<Vec<Indexed<'_>>>,
    ) -> Result<(), StoreError> {
        let _writer = self.convs.lock.lock().await;
        // Futures built in a loop, not by a closure: a closure over borrowed records is not
        // general enough for the boxed `Send` future the trait returns.
        let mut work = Vec::with_capacity(chains.len());
        for chain in chains {
            work.push(self.index_chain(chain));
        }
        futures_util::stream::iter(work)
            .buffer_unordered(super::WRITE_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    pub(super) async fn conv_state(
        &self,
        user: &UserId,
        conv: &Conversation,
    ) -> Result<ReadState, StoreError> {
        let key = conv_key(conv);
        match self.member(user.as_str(), &key).await? {
            Some(m) => m.state(&self.head(&key).await?),
            None => Ok(ReadState {
                read_seq: 0,
                unread: 0,
            }),
        }
    }

    pub(super) async fn conv_mark_read(
        &self,
        marks: &[(UserId, Conversation, u64)],
    ) -> Result<Vec<(ReadState, bool)>, StoreError> {
        let _writer = self.convs.lock.lock().await;
        let mut out = Vec::with_capacity(marks.len());
        for (user, conv, seq) in marks {
            out.push(self.mark_one(user, conv, *seq).await?);
        }
        Ok(out)
    }

    async fn mark_one(
        &self,
        user: &UserId,
        conv: &Conversation,
        seq: u64,
    ) -> Result<(ReadState, bool), StoreError> {
        let key = conv_key(conv);
        let u = user.as_str();
        let Some(mut m) = self.member(u, &key).await? else {
            return Ok((
                ReadState {
                    read_seq: 0,
                    unread: 0,
                },
                false,
            ));
        };
        let head = self.head(&key).await?;
        // Clamped to the newest item, or to the member's departure.
        let ceiling = m.left_seq.unwrap_or(head.last_seq);
        let seq = i64::try_from(seq).unwrap_or(i64::MAX).min(ceiling);
        let moved = seq > m.read_seq;
        if moved {
            let ord = self.ord_at(conv, seq).await?;
            self.exec(St::SetRead, (seq, ord, u, &key)).await?;
            if m.left_seq.is_none() {
                self.exec(St::PutReader, (seq, &key, u)).await?;
            }
            (m.read_seq, m.read_ord) = (seq, ord);
        }
        Ok((m.state(&head)?, moved))
    }

    pub(super) async fn conv_newest(&self, conv: &Conversation) -> Result<u64, StoreError> {
        seq_from_i64(self.head(&conv_key(conv)).await?.last_seq)
    }

    pub(super) async fn conv_hide(
        &self,
        user: &UserId,
        conv: &Conversation,
    ) -> Result<(), StoreError> {
        let _writer = self.convs.lock.lock().await;
        let key = conv_key(conv);
        if let Some(m) = self.member(user.as_str(), &key).await? {
            let count = m.count(&self.head(&key).await?);
            self.exec(St::Hide, (count, user.as_str(), &key)).await?;
        }
        Ok(())
    }

    pub(super) async fn conv_readers(
        &self,
        conv: &Conversation,
        seq: u64,
    ) -> Result<Vec<UserId>, StoreError> {
        let seq = i64::try_from(seq).unwrap_or(i64::MAX);
        let rows: Vec<(String, Option<i64>)> = self.rows(St::Readers, (conv_key(conv),)).await?;
        // Clustered by user, so already sorted.
        rows.into_iter()
            .filter(|(_, r)| r.unwrap_or(0) >= seq)
            .map(|(u, _)| UserId::parse(u).map_err(|e| StoreError::Corrupt(e.to_string())))
            .collect()
    }

    async fn groups_of(&self, user: &str) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(String,)> = self.rows(St::Groups, (user, MAX_GROUPS_READ)).await?;
        Ok(rows.into_iter().map(|(c,)| c).collect())
    }

    pub(super) async fn conv_contacts(
        &self,
        user: &UserId,
        among: &[UserId],
    ) -> Result<Vec<UserId>, StoreError> {
        let mine: std::collections::HashSet<String> =
            self.groups_of(user.as_str()).await?.into_iter().collect();
        let mut checks = Vec::with_capacity(among.len());
        for other in among {
            checks.push(self.shares(user, other, &mine));
        }
        let shared: Vec<bool> = futures_util::stream::iter(checks)
            .buffered(READ_CONCURRENCY)
            .try_collect()
            .await?;
        Ok(among
            .iter()
            .zip(shared)
            .filter(|(_, s)| *s)
            .map(|(u, _)| u.clone())
            .collect())
    }

    /// Whether `user` and `other` share a thread with a message, or a current group (`mine`).
    async fn shares(
        &self,
        user: &UserId,
        other: &UserId,
        mine: &std::collections::HashSet<String>,
    ) -> Result<bool, StoreError> {
        let Some(dm) = Conversation::dm(user.clone(), other.clone()) else {
            // Oneself.
            return Ok(true);
        };
        let thread = self.member(user.as_str(), &conv_key(&dm)).await?;
        if thread.is_some_and(|m| m.activity.is_some()) {
            return Ok(true);
        }
        if mine.is_empty() {
            return Ok(false);
        }
        Ok(self
            .groups_of(other.as_str())
            .await?
            .iter()
            .any(|g| mine.contains(g)))
    }

    async fn group_count(&self, user: &UserId) -> Result<u64, StoreError> {
        let n = self.count_of(St::CountGroups, user.as_str()).await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    pub(super) async fn conv_group_counts(&self, users: &[UserId]) -> Result<Vec<u64>, StoreError> {
        let mut counts = Vec::with_capacity(users.len());
        for u in users {
            counts.push(self.group_count(u));
        }
        futures_util::stream::iter(counts)
            .buffered(READ_CONCURRENCY)
            .try_collect()
            .await
    }

    /// A list row: its conversation key, the member row and the head, if both exist.
    async fn list_row(
        &self,
        user: &str,
        key: String,
    ) -> Result<Option<(String, Member, Head)>, StoreError> {
        let (m, head) = futures_util::try_join!(self.member(user, &key), self.head(&key))?;
        Ok(m.map(|m| (key, m, head)))
    }

    pub(super) async fn conv_list(
        &self,
        user: &UserId,
        limit: u32,
        before: Option<u64>,
    ) -> Result<(Vec<ConvItem>, bool), StoreError> {
        let u = user.as_str();
        let before = before.map_or(i64::MAX, |b| i64::try_from(b).unwrap_or(i64::MAX));
        let want = limit as usize + 1;
        // (activity, key, member, head), newest first once sorted.
        let mut rows: Vec<(i64, String, Member, Head)> = Vec::new();

        // Rows with their own activity, skipping hidden ones and any the index has moved on from.
        let mut cursor = before;
        loop {
            let page: Vec<(i64, String)> =
                self.rows(St::Activity, (u, cursor, ACTIVITY_PAGE)).await?;
            let full = page.len() >= ACTIVITY_PAGE as usize;
            cursor = page.last().map_or(cursor, |r| r.0);
            let found: Vec<_> = futures_util::stream::iter(page)
                .map(|(a, key)| async move {
                    Ok::<_, StoreError>(self.list_row(u, key).await?.map(|r| (a, r)))
                })
                .buffered(READ_CONCURRENCY)
                .try_collect()
                .await?;
            let mine = rows.len();
            for (a, (key, m, head)) in found.into_iter().flatten() {
                if m.activity == Some(a) && !m.hidden(&head) && rows.len() - mine < want {
                    rows.push((a, key, m, head));
                }
            }
            if !full || rows.len() >= want {
                break;
            }
        }

        // Current groups, by their conversation's activity.
        let groups = self.groups_of(u).await?;
        let found: Vec<_> = futures_util::stream::iter(groups)
            .map(|key| self.list_row(u, key))
            .buffered(READ_CONCURRENCY)
            .try_collect()
            .await?;
        for (key, m, head) in found.into_iter().flatten() {
            if head.last_seq < before && m.left_seq.is_none() && !m.hidden(&head) {
                rows.push((head.last_seq, key, m, head));
            }
        }

        rows.sort_by_key(|r| std::cmp::Reverse(r.0));
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let mut items = Vec::with_capacity(rows.len());
        for (activity, key, m, head) in rows {
            let conv = conv_from_key(&key).ok_or_else(|| StoreError::Corrupt(key.clone()))?;
            let last = m.left_item.as_ref().or(head.last_item.as_ref());
            let last: Option<Item> = last
                .map(|l| serde_json::from_str(l))
                .transpose()
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let (group, with) = match conv {
                Conversation::Group(g) => (Some(g), None),
                Conversation::Dm { lo, hi } => (None, Some(if lo == *user { hi } else { lo })),
                Conversation::Room(_) => continue,
            };
            let is_group = group.is_some();
            items.push(ConvItem {
                group,
                muted: false,
                with,
                name: if is_group { head.name.clone() } else { None },
                last,
                activity: seq_from_i64(activity)?,
                read_seq: seq_from_i64(m.read_seq)?,
                unread: unread(m.count(&head), m.read_ord),
                members: is_group.then(|| usize::try_from(head.members).unwrap_or(0)),
            });
        }
        Ok((items, more))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Record, Store};
    use protocol::group::GroupEvent;
    use protocol::{ClientMsgId, GroupId};

    fn u(s: &str) -> UserId {
        UserId::parse(s).unwrap()
    }

    fn rec(
        conv: &Conversation,
        seq: u64,
        from: &str,
        event: Option<(EventKind, &[&str])>,
    ) -> Record {
        let (to, group) = match conv {
            Conversation::Dm { lo, hi } => (
                Some(if lo.as_str() == from { hi } else { lo }.clone()),
                None,
            ),
            Conversation::Group(g) => (None, Some(g.clone())),
            Conversation::Room(_) => (None, None),
        };
        Record {
            conv: conv.clone(),
            seq,
            msg: StoredMessage {
                mentions: Vec::new(),
                from: u(from),
                room: None,
                to,
                group,
                text: format!("m{seq}"),
                event: event.map(|(kind, users)| {
                    Box::new(GroupEvent {
                        kind,
                        users: users.iter().map(|s| u(s)).collect(),
                        name: (kind == EventKind::Created).then(|| "T".to_owned()),
                        role: None,
                        owner: None,
                    })
                }),
                client_msg_id: ClientMsgId::parse(format!("c{seq}")).unwrap(),
                ts: seq,
            },
        }
    }

    async fn store(tag: &str) -> ScyllaStore {
        let host = testkit::cassandra::shared().unwrap();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        ScyllaStore::connect(
            &[host],
            &format!("replay_{tag}_{nanos}"),
            "{'class': 'SimpleStrategy', 'replication_factor': 1}",
        )
        .await
        .unwrap()
    }

    /// Everything the index answers for `users` in `convs`.
    async fn view(s: &ScyllaStore, users: &[UserId], convs: &[Conversation]) -> String {
        let mut out = String::new();
        for user in users {
            let (items, more) = s.conversations(user, 50, None).await.unwrap();
            out += &format!(
                "{user}: {} more={more}\n",
                serde_json::to_string(&items).unwrap()
            );
            for c in convs {
                let st = s.read_state(user, c).await.unwrap();
                out += &format!("  {c:?}: {st:?}\n");
            }
        }
        for c in convs {
            out += &format!("{c:?} readers {:?}\n", s.readers(c, 0).await.unwrap());
        }
        out += &format!("groups {:?}\n", s.group_counts(users).await.unwrap());
        out
    }

    // Proves a message whose index writes were made but whose head was not (a crash between
    // them) is indexed exactly once when it is redelivered: the index ends as if no crash happened.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_replay_after_a_crash_before_the_head_indexes_once() {
        let team = Conversation::Group(GroupId::parse("team").unwrap());
        let dm = Conversation::dm(u("ann"), u("ben")).unwrap();
        let log = vec![
            rec(
                &team,
                10,
                "ann",
                Some((EventKind::Created, &["ann", "ben", "cat"])),
            ),
            rec(&dm, 11, "ann", None),
            rec(&team, 12, "ben", None),
            rec(&team, 13, "ann", Some((EventKind::Removed, &["cat"]))),
            rec(&dm, 14, "ben", None),
            rec(&team, 15, "cat", Some((EventKind::Added, &["cat", "dan"]))),
            rec(&team, 16, "dan", None),
        ];
        let users = [u("ann"), u("ben"), u("cat"), u("dan")];
        let convs = [team.clone(), dm.clone()];

        let clean = store("clean").await;
        clean.write_batch(&log).await.unwrap();
        let want = view(&clean, &users, &convs).await;

        // Each item in turn "crashes": its index writes are made, its head is not.
        for cut in 0..log.len() {
            let crashed = store(&format!("cut{cut}")).await;
            crashed.write_batch(&log[..cut]).await.unwrap();
            let r = &log[cut];
            let key = conv_key(&r.conv);
            let head = crashed.head(&key).await.unwrap();
            let at = Indexed {
                conv: &r.conv,
                seq: r.seq as i64,
                msg: &r.msg,
            };
            crashed.index_one(&key, &head, &at).await.unwrap();
            crashed.write_batch(&log).await.unwrap();
            assert_eq!(
                view(&crashed, &users, &convs).await,
                want,
                "crash at item {cut}"
            );
        }
    }
}
