//! The ScyllaDB backend, for deployments that outgrow one SQLite file.
//!
//! Messages are partitioned by (conversation, bucket) where `bucket = seq / BUCKET_SIZE`, clustered by
//! `seq` descending, so a busy room's partitions stay bounded. `seq` is the stream-global sequence, so a
//! quiet room's few messages land in many, mostly empty, buckets. To page without probing empty buckets,
//! every write also records its bucket in `conv_buckets` (one small partition per conversation, clustered
//! by bucket descending); a page reads that index first and then only buckets that hold messages.
//! The cost is one extra small write per (conversation, bucket) per batch, and one extra small read per page.
//! All writes are upserts, so they are idempotent and safe to retry.
//!
//! The conversation index (threads, groups, read state) lives in `convs`, updated after the
//! messages of each batch.

mod convs;

use std::collections::BTreeSet;

use protocol::UserId;
use protocol::conv::{ConvItem, ReadState};
use protocol::subject::Conversation;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::Consistency;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::MaybeUnset;

use super::{
    DeadLetter, MessageColumns, Order, Record, Store, StoreError, StoreFuture, conv_key,
    seq_from_i64, seq_to_i64,
};

/// Stream sequences per bucket. A room that gets every message of the stream fills one partition with
/// at most this many rows; a quiet room has one index row per bucket it wrote in.
pub const BUCKET_SIZE: u64 = 10_000;
/// Consistency of every statement unless configured otherwise.
pub const DEFAULT_CONSISTENCY: Consistency = Consistency::LocalQuorum;
/// Bucket index rows read per index query while paging.
pub const BUCKET_INDEX_PAGE: i32 = 64;
/// Concurrent statements one batch write keeps in flight.
pub const WRITE_CONCURRENCY: usize = 64;
/// Dead letters read at most by one listing.
pub const MAX_DEAD_LETTER_LISTING: usize = 10_000;

/// The bucket holding `seq`.
pub fn bucket_of(seq: u64) -> i64 {
    // u64::MAX / 10_000 fits an i64.
    i64::try_from(seq / BUCKET_SIZE).unwrap_or(i64::MAX)
}

/// The DDL run on start, in order; every statement is `IF NOT EXISTS`.
pub fn schema_cql(keyspace: &str, replication: &str) -> Vec<String> {
    let mut ddl = vec![
        format!("CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = {replication}"),
        format!(
            "CREATE TABLE IF NOT EXISTS {keyspace}.messages (conv text, bucket bigint, seq bigint, \
             sender text, room text, recipient text, grp text, event text, text text, \
             client_msg_id text, ts bigint, ord bigint, \
             PRIMARY KEY ((conv, bucket), seq)) WITH CLUSTERING ORDER BY (seq DESC)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {keyspace}.conv_buckets (conv text, bucket bigint, \
             PRIMARY KEY (conv, bucket)) WITH CLUSTERING ORDER BY (bucket DESC)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {keyspace}.dead_letters (seq bigint PRIMARY KEY, \
             subject text, payload blob, error text, at_ms bigint)"
        ),
    ];
    ddl.extend(convs::schema_cql(keyspace));
    ddl
}

/// Columns added to `messages` after its first release, with their types: added on start to a
/// table created without them.
pub const ADDED_MESSAGE_COLUMNS: &[(&str, &str)] =
    &[("grp", "text"), ("event", "text"), ("ord", "bigint")];

/// The text of every prepared statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementsCql {
    pub insert_message: String,
    pub insert_bucket: String,
    pub scan_desc: String,
    pub scan_asc: String,
    pub buckets_desc: String,
    pub buckets_asc: String,
    pub insert_dead_letter: String,
    pub list_dead_letters: String,
    pub count_bucket: String,
}

impl StatementsCql {
    pub fn new(ks: &str) -> Self {
        let cols = "seq, sender, room, recipient, text, client_msg_id, ts, grp, event, ord";
        let range = "WHERE conv = ? AND bucket = ? AND seq > ? AND seq < ?";
        let brange = "WHERE conv = ? AND bucket >= ? AND bucket <= ?";
        Self {
            insert_message: format!(
                "INSERT INTO {ks}.messages (conv, bucket, seq, sender, room, recipient, grp, \
                 event, text, client_msg_id, ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            ),
            insert_bucket: format!("INSERT INTO {ks}.conv_buckets (conv, bucket) VALUES (?, ?)"),
            scan_desc: format!(
                "SELECT {cols} FROM {ks}.messages {range} ORDER BY seq DESC LIMIT ?"
            ),
            scan_asc: format!("SELECT {cols} FROM {ks}.messages {range} ORDER BY seq ASC LIMIT ?"),
            buckets_desc: format!(
                "SELECT bucket FROM {ks}.conv_buckets {brange} ORDER BY bucket DESC LIMIT ?"
            ),
            buckets_asc: format!(
                "SELECT bucket FROM {ks}.conv_buckets {brange} ORDER BY bucket ASC LIMIT ?"
            ),
            insert_dead_letter: format!(
                "INSERT INTO {ks}.dead_letters (seq, subject, payload, error, at_ms) \
                 VALUES (?, ?, ?, ?, ?)"
            ),
            list_dead_letters: format!(
                "SELECT seq, subject, payload, error FROM {ks}.dead_letters LIMIT ?"
            ),
            count_bucket: format!(
                "SELECT COUNT(*) FROM {ks}.messages WHERE conv = ? AND bucket = ?"
            ),
        }
    }
}

/// The values of one `insert_message`, in statement order.
/// Absent optional columns are unset rather than null, so no tombstone is written.
#[derive(Debug, Clone, scylla::SerializeRow)]
pub struct MessageRow {
    pub conv: String,
    pub bucket: i64,
    pub seq: i64,
    pub sender: String,
    pub room: MaybeUnset<String>,
    pub recipient: MaybeUnset<String>,
    pub grp: MaybeUnset<String>,
    pub event: MaybeUnset<String>,
    pub text: String,
    pub client_msg_id: String,
    pub ts: i64,
}

/// One row read by `scan_desc`/`scan_asc`.
#[derive(Debug, Clone, PartialEq, Eq, scylla::DeserializeRow)]
pub struct ReadRow {
    pub seq: i64,
    pub sender: String,
    pub room: Option<String>,
    pub recipient: Option<String>,
    pub text: String,
    pub client_msg_id: String,
    pub ts: i64,
    pub grp: Option<String>,
    pub event: Option<String>,
    /// The message's ordinal in its thread or group (the conversation index's unread counting).
    pub ord: Option<i64>,
}

impl MessageRow {
    pub fn from_record(r: &Record) -> Result<Self, StoreError> {
        let c = MessageColumns::from_msg(&r.msg);
        let unset = |v: Option<String>| v.map_or(MaybeUnset::Unset, MaybeUnset::Set);
        Ok(Self {
            conv: conv_key(&r.conv),
            bucket: bucket_of(r.seq),
            seq: seq_to_i64(r.seq)?,
            sender: c.sender,
            room: unset(c.room),
            recipient: unset(c.recipient),
            grp: unset(c.group),
            event: unset(c.event),
            text: c.text,
            client_msg_id: c.client_msg_id,
            ts: c.ts,
        })
    }
}

impl ReadRow {
    pub fn into_record(self, conv: &Conversation) -> Result<Record, StoreError> {
        Ok(Record {
            conv: conv.clone(),
            seq: seq_from_i64(self.seq)?,
            msg: MessageColumns {
                sender: self.sender,
                room: self.room,
                recipient: self.recipient,
                group: self.grp,
                event: self.event,
                text: self.text,
                client_msg_id: self.client_msg_id,
                ts: self.ts,
            }
            .into_msg()?,
        })
    }
}

/// A history store in a ScyllaDB keyspace.
pub struct ScyllaStore {
    session: Session,
    st: Prepared,
    convs: convs::ConvIndex,
}

struct Prepared {
    insert_message: PreparedStatement,
    insert_bucket: PreparedStatement,
    scan_desc: PreparedStatement,
    scan_asc: PreparedStatement,
    buckets_desc: PreparedStatement,
    buckets_asc: PreparedStatement,
    insert_dead_letter: PreparedStatement,
    list_dead_letters: PreparedStatement,
    count_bucket: PreparedStatement,
}

fn scylla_err<E: std::error::Error + Send + Sync + 'static>(
    what: &'static str,
) -> impl FnOnce(E) -> StoreError {
    move |e| StoreError::Scylla {
        what,
        source: Box::new(e),
    }
}

impl ScyllaStore {
    /// Connects, creates the keyspace and tables if missing, and prepares every statement.
    pub async fn connect(
        hosts: &[String],
        keyspace: &str,
        replication: &str,
    ) -> Result<Self, StoreError> {
        let session = SessionBuilder::new()
            .known_nodes(hosts)
            .build()
            .await
            .map_err(scylla_err("connecting"))?;
        for ddl in schema_cql(keyspace, replication) {
            session
                .query_unpaged(ddl, ())
                .await
                .map_err(scylla_err("creating the schema"))?;
        }
        add_missing_columns(&session, keyspace).await?;
        session
            .await_schema_agreement()
            .await
            .map_err(scylla_err("waiting for schema agreement"))?;
        let cql = StatementsCql::new(keyspace);
        let prep = |text: String| {
            let session = &session;
            async move {
                let mut ps = session
                    .prepare(text)
                    .await
                    .map_err(scylla_err("preparing a statement"))?;
                ps.set_consistency(DEFAULT_CONSISTENCY);
                // Every statement is an upsert or a read, so the driver may retry or speculate.
                ps.set_is_idempotent(true);
                Ok::<_, StoreError>(ps)
            }
        };
        let st = Prepared {
            insert_message: prep(cql.insert_message).await?,
            insert_bucket: prep(cql.insert_bucket).await?,
            scan_desc: prep(cql.scan_desc).await?,
            scan_asc: prep(cql.scan_asc).await?,
            buckets_desc: prep(cql.buckets_desc).await?,
            buckets_asc: prep(cql.buckets_asc).await?,
            insert_dead_letter: prep(cql.insert_dead_letter).await?,
            list_dead_letters: prep(cql.list_dead_letters).await?,
            count_bucket: prep(cql.count_bucket).await?,
        };
        let mut index = Vec::new();
        for text in convs::ConvCql::new(keyspace).all() {
            index.push(prep(text.clone()).await?);
        }
        Ok(Self {
            session,
            st,
            convs: convs::ConvIndex::new(index),
        })
    }

    /// Buckets of `conv` between `bottom` and `top` (inclusive) holding messages, up to one index page.
    async fn buckets(
        &self,
        conv: &str,
        bottom: i64,
        top: i64,
        order: Order,
    ) -> Result<Vec<i64>, StoreError> {
        let ps = match order {
            Order::Ascending => &self.st.buckets_asc,
            Order::Descending => &self.st.buckets_desc,
        };
        let res = self
            .session
            .execute_unpaged(ps, (conv, bottom, top, BUCKET_INDEX_PAGE))
            .await
            .map_err(scylla_err("reading the bucket index"))?
            .into_rows_result()
            .map_err(scylla_err("reading the bucket index"))?;
        res.rows::<(i64,)>()
            .map_err(scylla_err("reading the bucket index"))?
            .map(|r| r.map(|(b,)| b).map_err(scylla_err("reading a bucket row")))
            .collect()
    }

    /// Up to `n` rows of `conv` with `lo < seq < hi`, in `order`: [`Store::scan`]'s rows, with the
    /// columns only the store reads.
    async fn scan_rows(
        &self,
        conv: &Conversation,
        lo: u64,
        hi: u64,
        order: Order,
        n: usize,
    ) -> Result<Vec<ReadRow>, StoreError> {
        let mut out = Vec::new();
        if n == 0 || hi <= lo.saturating_add(1) {
            return Ok(out);
        }
        let key = conv_key(conv);
        let (bottom, top) = (bucket_of(lo + 1), bucket_of(hi - 1));
        let (lo_i, hi_i) = (
            i64::try_from(lo).unwrap_or(i64::MAX),
            i64::try_from(hi).unwrap_or(i64::MAX),
        );
        let ps = match order {
            Order::Ascending => &self.st.scan_asc,
            Order::Descending => &self.st.scan_desc,
        };
        let (mut from, mut to) = (bottom, top);
        while from <= to {
            let buckets = self.buckets(&key, from, to, order).await?;
            let full_page = buckets.len() >= BUCKET_INDEX_PAGE as usize;
            for &b in &buckets {
                let want = i32::try_from(n - out.len()).unwrap_or(i32::MAX);
                let res = self
                    .session
                    .execute_unpaged(ps, (&key, b, lo_i, hi_i, want))
                    .await
                    .map_err(scylla_err("reading messages"))?
                    .into_rows_result()
                    .map_err(scylla_err("reading messages"))?;
                for row in res
                    .rows::<ReadRow>()
                    .map_err(scylla_err("reading messages"))?
                {
                    out.push(row.map_err(scylla_err("reading a message row"))?);
                }
                if out.len() >= n {
                    out.truncate(n);
                    return Ok(out);
                }
            }
            match (full_page, buckets.last(), order) {
                (true, Some(&last), Order::Descending) => to = last - 1,
                (true, Some(&last), Order::Ascending) => from = last + 1,
                _ => break,
            }
        }
        Ok(out)
    }
}

impl Store for ScyllaStore {
    fn write_batch<'a>(&'a self, records: &'a [Record]) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let rows: Vec<MessageRow> = records
                .iter()
                .map(MessageRow::from_record)
                .collect::<Result<_, _>>()?;
            // Messages first, then the index: a page never finds an index entry without its messages
            // once the batch is acked, and a crash in between is repaired by redelivery.
            for chunk in rows.chunks(WRITE_CONCURRENCY) {
                let writes: Vec<_> = chunk
                    .iter()
                    .map(|row| self.session.execute_unpaged(&self.st.insert_message, row))
                    .collect();
                futures_util::future::try_join_all(writes)
                    .await
                    .map_err(scylla_err("writing a message"))?;
            }
            let buckets: Vec<(&str, i64)> = rows
                .iter()
                .map(|r| (r.conv.as_str(), r.bucket))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            for chunk in buckets.chunks(WRITE_CONCURRENCY) {
                let writes: Vec<_> = chunk
                    .iter()
                    .map(|key| self.session.execute_unpaged(&self.st.insert_bucket, key))
                    .collect();
                futures_util::future::try_join_all(writes)
                    .await
                    .map_err(scylla_err("writing the bucket index"))?;
            }
            // Then the conversation index: each thread's or group's records in stream order,
            // different conversations side by side (they share no index rows).
            let mut chains: Vec<Vec<convs::Indexed<'_>>> = Vec::new();
            let mut at: std::collections::HashMap<&Conversation, usize> =
                std::collections::HashMap::new();
            for (r, row) in records.iter().zip(&rows) {
                if matches!(r.conv, Conversation::Room(_)) {
                    continue;
                }
                let i = *at.entry(&r.conv).or_insert_with(|| {
                    chains.push(Vec::new());
                    chains.len() - 1
                });
                chains[i].push(convs::Indexed {
                    conv: &r.conv,
                    seq: row.seq,
                    msg: &r.msg,
                });
            }
            self.index_batch(chains).await
        })
    }

    fn scan<'a>(
        &'a self,
        conv: &'a Conversation,
        lo: u64,
        hi: u64,
        order: Order,
        n: usize,
    ) -> StoreFuture<'a, Vec<Record>> {
        Box::pin(async move {
            self.scan_rows(conv, lo, hi, order, n)
                .await?
                .into_iter()
                .map(|r| r.into_record(conv))
                .collect()
        })
    }

    fn dead_letter<'a>(&'a self, letter: &'a DeadLetter) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                .unwrap_or(0);
            self.session
                .execute_unpaged(
                    &self.st.insert_dead_letter,
                    (
                        seq_to_i64(letter.seq)?,
                        &letter.subject,
                        &letter.payload,
                        &letter.error,
                        now,
                    ),
                )
                .await
                .map_err(scylla_err("writing a dead letter"))?;
            Ok(())
        })
    }

    fn dead_letters(&self, n: usize) -> StoreFuture<'_, Vec<DeadLetter>> {
        Box::pin(async move {
            // dead_letters is partitioned by seq, so this is a full scan: bounded, and sorted here.
            let limit = i32::try_from(n.min(MAX_DEAD_LETTER_LISTING)).unwrap_or(i32::MAX);
            let res = self
                .session
                .execute_unpaged(&self.st.list_dead_letters, (limit,))
                .await
                .map_err(scylla_err("reading dead letters"))?
                .into_rows_result()
                .map_err(scylla_err("reading dead letters"))?;
            let mut out = Vec::new();
            for row in res
                .rows::<(i64, String, Vec<u8>, String)>()
                .map_err(scylla_err("reading dead letters"))?
            {
                let (seq, subject, payload, error) =
                    row.map_err(scylla_err("reading a dead letter row"))?;
                out.push(DeadLetter {
                    seq: seq_from_i64(seq)?,
                    subject,
                    payload,
                    error,
                });
            }
            out.sort_by_key(|d| d.seq);
            Ok(out)
        })
    }

    fn count<'a>(&'a self, conv: &'a Conversation) -> StoreFuture<'a, u64> {
        Box::pin(async move {
            let key = conv_key(conv);
            let mut total = 0u64;
            let mut to = i64::MAX;
            loop {
                let buckets = self.buckets(&key, 0, to, Order::Descending).await?;
                for &b in &buckets {
                    let res = self
                        .session
                        .execute_unpaged(&self.st.count_bucket, (&key, b))
                        .await
                        .map_err(scylla_err("counting messages"))?
                        .into_rows_result()
                        .map_err(scylla_err("counting messages"))?;
                    let (n,): (i64,) = res.first_row().map_err(scylla_err("counting messages"))?;
                    total += u64::try_from(n).unwrap_or(0);
                }
                match buckets.last() {
                    Some(&last) if buckets.len() >= BUCKET_INDEX_PAGE as usize => to = last - 1,
                    _ => return Ok(total),
                }
            }
        })
    }

    fn conversations<'a>(
        &'a self,
        user: &'a UserId,
        limit: u32,
        before: Option<u64>,
    ) -> StoreFuture<'a, (Vec<ConvItem>, bool)> {
        Box::pin(self.conv_list(user, limit, before))
    }

    fn read_state<'a>(
        &'a self,
        user: &'a UserId,
        conv: &'a Conversation,
    ) -> StoreFuture<'a, ReadState> {
        Box::pin(self.conv_state(user, conv))
    }

    fn mark_read<'a>(
        &'a self,
        user: &'a UserId,
        conv: &'a Conversation,
        seq: u64,
    ) -> StoreFuture<'a, (ReadState, bool)> {
        Box::pin(async move {
            let marks = [(user.clone(), conv.clone(), seq)];
            let mut out = self.conv_mark_read(&marks).await?;
            out.pop().ok_or(StoreError::Worker)
        })
    }

    fn mark_read_many<'a>(
        &'a self,
        marks: &'a [(UserId, Conversation, u64)],
    ) -> StoreFuture<'a, Vec<(ReadState, bool)>> {
        Box::pin(self.conv_mark_read(marks))
    }

    fn newest<'a>(&'a self, conv: &'a Conversation) -> StoreFuture<'a, u64> {
        Box::pin(self.conv_newest(conv))
    }

    fn hide<'a>(&'a self, user: &'a UserId, conv: &'a Conversation) -> StoreFuture<'a, ()> {
        Box::pin(self.conv_hide(user, conv))
    }

    fn contacts<'a>(
        &'a self,
        user: &'a UserId,
        among: &'a [UserId],
    ) -> StoreFuture<'a, Vec<UserId>> {
        Box::pin(self.conv_contacts(user, among))
    }

    fn group_counts<'a>(&'a self, users: &'a [UserId]) -> StoreFuture<'a, Vec<u64>> {
        Box::pin(self.conv_group_counts(users))
    }

    fn readers<'a>(&'a self, conv: &'a Conversation, seq: u64) -> StoreFuture<'a, Vec<UserId>> {
        Box::pin(self.conv_readers(conv, seq))
    }
}

/// Adds [`ADDED_MESSAGE_COLUMNS`] that `messages` lacks (a keyspace created by an older release).
async fn add_missing_columns(session: &Session, keyspace: &str) -> Result<(), StoreError> {
    let res = session
        .query_unpaged(
            "SELECT column_name FROM system_schema.columns \
             WHERE keyspace_name = ? AND table_name = 'messages'",
            (keyspace,),
        )
        .await
        .map_err(scylla_err("reading the schema"))?
        .into_rows_result()
        .map_err(scylla_err("reading the schema"))?;
    let have: Vec<String> = res
        .rows::<(String,)>()
        .map_err(scylla_err("reading the schema"))?
        .map(|r| r.map(|(c,)| c))
        .collect::<Result<_, _>>()
        .map_err(scylla_err("reading the schema"))?;
    for (col, ty) in ADDED_MESSAGE_COLUMNS {
        if !have.iter().any(|c| c == col) {
            session
                .query_unpaged(
                    format!("ALTER TABLE {keyspace}.messages ADD {col} {ty}"),
                    (),
                )
                .await
                .map_err(scylla_err("adding a column"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{ClientMsgId, RoomId, StoredMessage, UserId};
    use std::collections::HashMap;

    fn record(conv: Conversation, seq: u64, room: Option<&str>, to: Option<&str>) -> Record {
        Record {
            conv,
            seq,
            msg: StoredMessage {
                mentions: Vec::new(),
                from: UserId::parse("alice").unwrap(),
                room: room.map(|r| RoomId::parse(r).unwrap()),
                to: to.map(|t| UserId::parse(t).unwrap()),
                group: None,
                event: None,
                text: "hi".into(),
                client_msg_id: ClientMsgId::parse("c1").unwrap(),
                ts: 42,
            },
        }
    }

    fn set(v: &MaybeUnset<String>) -> Option<&str> {
        match v {
            MaybeUnset::Set(s) => Some(s),
            MaybeUnset::Unset => None,
        }
    }

    // Proves sequences map to fixed-size buckets at the documented boundaries.
    #[test]
    fn buckets_are_sequence_ranges() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(9_999), 0);
        assert_eq!(bucket_of(10_000), 1);
        assert_eq!(bucket_of(123_456_789), 12_345);
        assert_eq!(bucket_of(u64::MAX), (u64::MAX / BUCKET_SIZE) as i64);
    }

    /// A table as the DDL declares it.
    struct Table {
        columns: Vec<String>,
        partition: Vec<String>,
        clustering: Vec<String>,
    }

    /// The tables of `schema_cql`, by name, read from the DDL text itself.
    fn tables(ddl: &[String]) -> HashMap<String, Table> {
        let mut out = HashMap::new();
        for stmt in ddl
            .iter()
            .filter(|s| s.starts_with("CREATE TABLE IF NOT EXISTS "))
        {
            let rest = &stmt["CREATE TABLE IF NOT EXISTS ".len()..];
            let rest = rest.split(" WITH ").next().unwrap();
            let (name, body) = rest.split_once(" (").unwrap();
            let body = body.rsplit_once(')').unwrap().0;
            let mut columns = Vec::new();
            let (mut partition, mut clustering) = (Vec::new(), Vec::new());
            if let Some((cols, key)) = body.split_once(", PRIMARY KEY (") {
                columns.extend(
                    cols.split(", ")
                        .map(|c| c.split(' ').next().unwrap().to_owned()),
                );
                let key = key.trim_end_matches(')');
                let (p, c) = match key.strip_prefix('(') {
                    Some(k) => {
                        let (p, c) = k.split_once(')').unwrap();
                        (p.to_owned(), c.trim_start_matches(", ").to_owned())
                    }
                    None => match key.split_once(", ") {
                        Some((p, c)) => (p.to_owned(), c.to_owned()),
                        None => (key.to_owned(), String::new()),
                    },
                };
                partition.extend(p.split(", ").map(str::to_owned));
                clustering.extend(c.split(", ").filter(|c| !c.is_empty()).map(str::to_owned));
            } else {
                for col in body.split(", ") {
                    let name = col.split(' ').next().unwrap().to_owned();
                    if col.ends_with(" PRIMARY KEY") {
                        partition.push(name.clone());
                    }
                    columns.push(name);
                }
            }
            out.insert(
                name.to_owned(),
                Table {
                    columns,
                    partition,
                    clustering,
                },
            );
        }
        out
    }

    // Proves the schema is idempotent DDL: every statement creates only if absent, in the keyspace
    // given, with the replication given, and every table has a primary key.
    #[test]
    fn schema_is_idempotent_and_keyed() {
        let replication = "{'class': 'NetworkTopologyStrategy', 'dc1': 3}";
        let ddl = schema_cql("ks1", replication);
        assert!(ddl[0].starts_with("CREATE KEYSPACE IF NOT EXISTS ks1 "));
        assert!(ddl[0].ends_with(replication), "{}", ddl[0]);
        for stmt in &ddl[1..] {
            assert!(
                stmt.starts_with("CREATE TABLE IF NOT EXISTS ks1."),
                "{stmt}"
            );
        }
        let tables = tables(&ddl);
        assert_eq!(tables.len(), ddl.len() - 1, "every table parsed");
        for (name, t) in &tables {
            assert!(!t.partition.is_empty(), "{name} has a partition key");
            for k in t.partition.iter().chain(&t.clustering) {
                assert!(t.columns.contains(k), "{name}: key column {k} is declared");
            }
        }
        // Messages are bucketed: a partition is one conversation's bucket, newest first.
        let m = &tables["ks1.messages"];
        assert_eq!(
            (m.partition.as_slice(), m.clustering.as_slice()),
            (
                &["conv".to_owned(), "bucket".to_owned()][..],
                &["seq".to_owned()][..]
            )
        );
        assert!(
            ddl[1].ends_with("WITH CLUSTERING ORDER BY (seq DESC)"),
            "{}",
            ddl[1]
        );
    }

    // Proves every statement fits the schema: it names the keyspace, uses only columns its table
    // declares, binds one value per marker, and every read restricts a whole partition key (no
    // ALLOW FILTERING) and orders only by a clustering column. Read from the DDL, not copied.
    #[test]
    fn statements_fit_the_schema() {
        let tables = tables(&schema_cql("ks1", "{}"));
        let s = StatementsCql::new("ks1");
        let all = [
            &s.insert_message,
            &s.insert_bucket,
            &s.scan_desc,
            &s.scan_asc,
            &s.buckets_desc,
            &s.buckets_asc,
            &s.insert_dead_letter,
            &s.list_dead_letters,
            &s.count_bucket,
        ];
        let index = convs::ConvCql::new("ks1");
        let list = |l: &str| -> Vec<String> { l.split(", ").map(str::to_owned).collect() };
        for text in all.into_iter().chain(index.all()) {
            assert!(!text.contains("ALLOW FILTERING"), "{text}");
            let update = text.strip_prefix("UPDATE ");
            if let Some(rest) = update.or_else(|| text.strip_prefix("DELETE FROM ")) {
                // A single-row write: every key column restricted by equality, only others set.
                let (table, rest) = rest.split_once(' ').unwrap();
                let t = tables
                    .get(table)
                    .unwrap_or_else(|| panic!("{text}: no table {table}"));
                let keys: Vec<&String> = t.partition.iter().chain(&t.clustering).collect();
                let (set, filter) = match rest.strip_prefix("SET ") {
                    Some(r) => r.split_once(" WHERE ").unwrap(),
                    None => ("", rest.strip_prefix("WHERE ").unwrap()),
                };
                for assign in set.split(", ").filter(|a| !a.is_empty()) {
                    let col = assign.split(" = ").next().unwrap();
                    assert!(
                        t.columns.iter().any(|c| c == col),
                        "{text}: no column {col}"
                    );
                    assert!(!keys.iter().any(|k| *k == col), "{text}: sets key {col}");
                }
                let restricted: Vec<&str> = filter
                    .split(" AND ")
                    .map(|c| {
                        c.strip_suffix(" = ?")
                            .unwrap_or_else(|| panic!("{text}: {c} is not an equality"))
                    })
                    .collect();
                assert_eq!(restricted.len(), keys.len(), "{text}");
                for k in &keys {
                    assert!(
                        restricted.contains(&k.as_str()),
                        "{text}: key {k} not restricted"
                    );
                }
                continue;
            }
            if let Some(rest) = text.strip_prefix("INSERT INTO ") {
                let (table, rest) = rest.split_once(" (").unwrap();
                let t = tables
                    .get(table)
                    .unwrap_or_else(|| panic!("{text}: no table {table}"));
                let (cols, values) = rest.split_once(") VALUES (").unwrap();
                let cols = list(cols);
                for c in &cols {
                    assert!(t.columns.contains(c), "{text}: no column {c}");
                }
                for k in t.partition.iter().chain(&t.clustering) {
                    assert!(cols.contains(k), "{text}: key column {k} not written");
                }
                assert_eq!(values.matches('?').count(), cols.len(), "{text}");
                continue;
            }
            let rest = text
                .strip_prefix("SELECT ")
                .unwrap_or_else(|| panic!("{text}"));
            let (cols, rest) = rest.split_once(" FROM ").unwrap();
            let (table, rest) = rest.split_once(' ').unwrap();
            let t = tables
                .get(table)
                .unwrap_or_else(|| panic!("{text}: no table {table}"));
            if cols != "COUNT(*)" {
                for c in list(cols) {
                    assert!(t.columns.contains(&c), "{text}: no column {c}");
                }
            }
            let Some(filter) = rest.strip_prefix("WHERE ") else {
                // Only the dead-letter list reads a whole (small, operator-facing) table.
                assert_eq!(text, &s.list_dead_letters);
                continue;
            };
            let filter = filter.split(" ORDER BY ").next().unwrap();
            let filter = filter.split(" LIMIT ").next().unwrap();
            let restricted: Vec<&str> = filter
                .split(" AND ")
                .map(|c| c.split(' ').next().unwrap())
                .collect();
            for c in &restricted {
                assert!(t.columns.iter().any(|k| k == c), "{text}: no column {c}");
            }
            for k in &t.partition {
                assert!(
                    filter.contains(&format!("{k} = ?")),
                    "{text}: partition key {k} not restricted"
                );
            }
            if let Some(order) = rest.split(" ORDER BY ").nth(1) {
                let col = order.split(' ').next().unwrap();
                assert_eq!(Some(&col.to_owned()), t.clustering.first(), "{text}");
            }
        }
    }

    // Proves a keyspace made before groups and the conversation index gains their columns on
    // start, and then stores and pages a group's items, against the test run's Cassandra node.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_old_keyspace_gains_the_new_columns() {
        let host = testkit::cassandra::shared().unwrap();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let ks = format!("old_{nanos}");
        let replication = "{'class': 'SimpleStrategy', 'replication_factor': 1}";
        let session = SessionBuilder::new()
            .known_node(&host)
            .build()
            .await
            .unwrap();
        for ddl in [
            format!("CREATE KEYSPACE {ks} WITH replication = {replication}"),
            format!(
                "CREATE TABLE {ks}.messages (conv text, bucket bigint, seq bigint, sender text, \
                 room text, recipient text, text text, client_msg_id text, ts bigint, \
                 PRIMARY KEY ((conv, bucket), seq)) WITH CLUSTERING ORDER BY (seq DESC)"
            ),
        ] {
            session.query_unpaged(ddl, ()).await.unwrap();
        }
        let store = ScyllaStore::connect(&[host], &ks, replication)
            .await
            .unwrap();
        let team = Conversation::Group(protocol::GroupId::parse("team").unwrap());
        let mut r = record(team.clone(), 5, None, None);
        r.msg.group = Some(protocol::GroupId::parse("team").unwrap());
        store.write_batch(std::slice::from_ref(&r)).await.unwrap();
        let rows = store
            .scan_rows(&team, 0, u64::MAX, Order::Descending, 10)
            .await
            .unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (rows[0].grp.as_deref(), rows[0].ord),
            (Some("team"), Some(1))
        );
        assert_eq!(store.newest(&team).await.unwrap(), 5);
    }

    // Proves a record maps to a row (bucketed, absent fields unset) and back without loss.
    #[test]
    fn rows_round_trip() {
        let room = Conversation::Room(RoomId::parse("general").unwrap());
        let r = record(room.clone(), 20_001, Some("general"), None);
        let row = MessageRow::from_record(&r).unwrap();
        assert_eq!(row.conv, "room.general");
        assert_eq!(row.bucket, 2);
        assert_eq!(row.seq, 20_001);
        assert_eq!(set(&row.room), Some("general"));
        assert_eq!(set(&row.recipient), None);
        let read = ReadRow {
            seq: row.seq,
            sender: row.sender.clone(),
            room: Some("general".into()),
            recipient: None,
            grp: None,
            event: None,
            ord: None,
            text: row.text.clone(),
            client_msg_id: row.client_msg_id.clone(),
            ts: row.ts,
        };
        assert_eq!(read.into_record(&room).unwrap(), r);

        let dm = Conversation::dm(
            UserId::parse("alice").unwrap(),
            UserId::parse("bob").unwrap(),
        )
        .unwrap();
        let r = record(dm.clone(), 7, None, Some("bob"));
        let row = MessageRow::from_record(&r).unwrap();
        assert_eq!((row.conv.as_str(), row.bucket), ("dm.alice.bob", 0));
        assert_eq!(set(&row.recipient), Some("bob"));
    }

    // Proves a row with an invalid id or a negative seq is reported as corrupt, not turned into a message.
    #[test]
    fn corrupt_rows_are_errors() {
        let room = Conversation::Room(RoomId::parse("general").unwrap());
        let bad = ReadRow {
            seq: 1,
            sender: "not valid".into(),
            room: None,
            recipient: None,
            grp: None,
            event: None,
            ord: None,
            text: String::new(),
            client_msg_id: "c".into(),
            ts: 0,
        };
        assert!(matches!(
            bad.into_record(&room),
            Err(StoreError::Corrupt(_))
        ));
        let neg = ReadRow {
            seq: -1,
            sender: "a".into(),
            room: None,
            recipient: None,
            grp: None,
            event: None,
            ord: None,
            text: String::new(),
            client_msg_id: "c".into(),
            ts: 0,
        };
        assert!(matches!(
            neg.into_record(&room),
            Err(StoreError::Corrupt(_))
        ));
    }
}
