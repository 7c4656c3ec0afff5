//! The embedded SQLite backend: the default for development, tests and single-node deployments.
//!
//! SQLite allows one writer at a time, so there is exactly one writer connection, and a few reader
//! connections that WAL mode lets read while the writer commits. Every call runs on tokio's blocking
//! pool; a connection's `std::sync::Mutex` is only ever taken on a blocking thread, never across `.await`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::UserId;
use protocol::conv::{ConvItem, ReadState};
use protocol::subject::Conversation;
use rusqlite::{Connection, OptionalExtension, params};

use super::{
    DeadLetter, MessageColumns, Order, Record, Store, StoreError, StoreFuture, conv_key,
    seq_from_i64, seq_to_i64, sqlite_convs,
};

/// Reader connections; history reads run in parallel up to this many.
pub const READERS: usize = 4;
/// How long a connection waits for a lock held by another connection before failing.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The schema, created on open. `WITHOUT ROWID` clusters each conversation's messages by `seq`.
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS messages (
    conv          TEXT    NOT NULL,
    seq           INTEGER NOT NULL,
    sender        TEXT    NOT NULL,
    room          TEXT,
    recipient     TEXT,
    grp           TEXT,
    event         TEXT,
    ord           INTEGER,
    text          TEXT    NOT NULL,
    client_msg_id TEXT    NOT NULL,
    ts            INTEGER NOT NULL,
    PRIMARY KEY (conv, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dead_letters (
    seq     INTEGER PRIMARY KEY,
    subject TEXT    NOT NULL,
    payload BLOB    NOT NULL,
    error   TEXT    NOT NULL,
    at_ms   INTEGER NOT NULL
);
";

const INSERT_MESSAGE: &str = "INSERT OR IGNORE INTO messages
    (conv, seq, sender, room, recipient, grp, event, text, client_msg_id, ts, ord)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)";
/// Columns added since the first schema, each added on open to a database that lacks it. `ord` is
/// the conversation index's message count (`sqlite_convs`); rows from before it have none.
const ADDED_COLUMNS: [(&str, &str); 3] = [("grp", "TEXT"), ("event", "TEXT"), ("ord", "INTEGER")];
const SCAN_ASC: &str =
    "SELECT seq, sender, room, recipient, text, client_msg_id, ts, grp, event FROM messages
    WHERE conv = ?1 AND seq > ?2 AND seq < ?3 ORDER BY seq ASC LIMIT ?4";
const SCAN_DESC: &str =
    "SELECT seq, sender, room, recipient, text, client_msg_id, ts, grp, event FROM messages
    WHERE conv = ?1 AND seq > ?2 AND seq < ?3 ORDER BY seq DESC LIMIT ?4";

/// A history store in one SQLite file.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    /// The only connection that writes: SQLite serializes writers anyway, and one connection makes
    /// that explicit instead of turning it into `SQLITE_BUSY` retries.
    writer: Mutex<Connection>,
    /// Readers, picked round-robin.
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
}

impl SqliteStore {
    /// Opens (or creates) the database at `path`, creating its directory and the schema.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_owned();
        tokio::task::spawn_blocking(move || Self::open_blocking(path))
            .await
            .map_err(|_| StoreError::Worker)?
    }

    fn open_blocking(path: PathBuf) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::DataDir(dir.display().to_string(), e))?;
        }
        let writer = Connection::open(&path)?;
        writer.busy_timeout(BUSY_TIMEOUT)?;
        // WAL lets readers run while the writer commits. FULL syncs the WAL on every commit: a batch
        // is acked to JetStream right after its commit, so the commit must survive a power cut.
        writer.pragma_update(None, "journal_mode", "WAL")?;
        writer.pragma_update(None, "synchronous", "FULL")?;
        writer.execute_batch(SCHEMA)?;
        migrate(&writer)?;
        writer.execute_batch(sqlite_convs::SCHEMA)?;
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let r = Connection::open_with_flags(
                &path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                    | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            r.busy_timeout(BUSY_TIMEOUT)?;
            readers.push(Mutex::new(r));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                path,
                writer: Mutex::new(writer),
                readers,
                next_reader: AtomicUsize::new(0),
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = inner.writer.lock().map_err(|_| StoreError::Worker)?;
            f(&mut conn)
        })
        .await
        .map_err(|_| StoreError::Worker)?
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let i = inner.next_reader.fetch_add(1, Ordering::Relaxed) % inner.readers.len();
            let conn = inner.readers[i].lock().map_err(|_| StoreError::Worker)?;
            f(&conn)
        })
        .await
        .map_err(|_| StoreError::Worker)?
    }
}

impl Store for SqliteStore {
    fn write_batch<'a>(&'a self, records: &'a [Record]) -> StoreFuture<'a, ()> {
        // Convert on the async side so the blocking closure owns plain data.
        let rows: Result<Vec<_>, StoreError> = records
            .iter()
            .map(|r| {
                Ok((
                    conv_key(&r.conv),
                    seq_to_i64(r.seq)?,
                    MessageColumns::from_msg(&r.msg),
                    sqlite_convs::indexed(&r.conv).then(|| (r.conv.clone(), r.msg.clone())),
                ))
            })
            .collect();
        Box::pin(async move {
            let rows = rows?;
            if rows.is_empty() {
                return Ok(());
            }
            self.write(move |conn| {
                let tx = conn.transaction()?;
                {
                    let mut stmt = tx.prepare_cached(INSERT_MESSAGE)?;
                    for (conv, seq, c, index) in &rows {
                        // A thread's or group's message is indexed once: a redelivered one is at
                        // or below the conversation's newest and changes nothing.
                        let mut ord = None;
                        let mut prev = 0;
                        if index.is_some() {
                            let (last, count) = sqlite_convs::head(&tx, conv)?;
                            if *seq > last {
                                let is_message =
                                    index.as_ref().is_some_and(|(_, m)| m.event.is_none());
                                ord = Some(count + i64::from(is_message));
                                prev = last;
                            }
                        }
                        stmt.execute(params![
                            conv,
                            seq,
                            c.sender,
                            c.room,
                            c.recipient,
                            c.group,
                            c.event,
                            c.text,
                            c.client_msg_id,
                            c.ts,
                            ord
                        ])?;
                        if let (Some(ord), Some((conv, msg))) = (ord, index) {
                            sqlite_convs::apply(&tx, conv, *seq, ord, prev, msg)?;
                        }
                    }
                }
                tx.commit()?;
                Ok(())
            })
            .await
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
        let conv = conv.clone();
        Box::pin(async move {
            // Sequences above i64::MAX cannot be stored, so clamping the bounds loses nothing.
            let lo = i64::try_from(lo).unwrap_or(i64::MAX);
            let hi = i64::try_from(hi).unwrap_or(i64::MAX);
            let n = i64::try_from(n).unwrap_or(i64::MAX);
            self.read(move |db| {
                let sql = match order {
                    Order::Ascending => SCAN_ASC,
                    Order::Descending => SCAN_DESC,
                };
                let mut stmt = db.prepare_cached(sql)?;
                let rows = stmt.query_map(params![conv_key(&conv), lo, hi, n], |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        MessageColumns {
                            sender: row.get(1)?,
                            room: row.get(2)?,
                            recipient: row.get(3)?,
                            text: row.get(4)?,
                            client_msg_id: row.get(5)?,
                            ts: row.get(6)?,
                            group: row.get(7)?,
                            event: row.get(8)?,
                        },
                    ))
                })?;
                let mut out = Vec::new();
                for row in rows {
                    let (seq, cols) = row?;
                    out.push(Record {
                        conv: conv.clone(),
                        seq: seq_from_i64(seq)?,
                        msg: cols.into_msg()?,
                    });
                }
                Ok(out)
            })
            .await
        })
    }

    fn dead_letter<'a>(&'a self, letter: &'a DeadLetter) -> StoreFuture<'a, ()> {
        let letter = letter.clone();
        Box::pin(async move {
            let seq = seq_to_i64(letter.seq)?;
            let now = now_ms();
            self.write(move |conn| {
                conn.execute(
                    "INSERT OR IGNORE INTO dead_letters (seq, subject, payload, error, at_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![seq, letter.subject, letter.payload, letter.error, now],
                )?;
                Ok(())
            })
            .await
        })
    }

    fn dead_letters(&self, n: usize) -> StoreFuture<'_, Vec<DeadLetter>> {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        Box::pin(self.read(move |db| {
            let mut stmt = db.prepare_cached(
                "SELECT seq, subject, payload, error FROM dead_letters ORDER BY seq LIMIT ?1",
            )?;
            let rows = stmt.query_map(params![n], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, Vec<u8>>(2)?,
                    row.get::<_, String>(3)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (seq, subject, payload, error) = row?;
                out.push(DeadLetter {
                    seq: seq_from_i64(seq)?,
                    subject,
                    payload,
                    error,
                });
            }
            Ok(out)
        }))
    }

    fn count<'a>(&'a self, conv: &'a Conversation) -> StoreFuture<'a, u64> {
        let key = conv_key(conv);
        Box::pin(self.read(move |db| {
            let n: Option<i64> = db
                .query_row(
                    "SELECT COUNT(*) FROM messages WHERE conv = ?1",
                    params![key],
                    |r| r.get(0),
                )
                .optional()?;
            Ok(n.and_then(|n| u64::try_from(n).ok()).unwrap_or(0))
        }))
    }

    fn conversations<'a>(
        &'a self,
        user: &'a UserId,
        limit: u32,
        before: Option<u64>,
    ) -> StoreFuture<'a, (Vec<ConvItem>, bool)> {
        let user = user.clone();
        Box::pin(self.read(move |db| sqlite_convs::list(db, &user, limit, before)))
    }

    fn read_state<'a>(
        &'a self,
        user: &'a UserId,
        conv: &'a Conversation,
    ) -> StoreFuture<'a, ReadState> {
        let (user, conv) = (user.clone(), conv.clone());
        Box::pin(self.read(move |db| sqlite_convs::state(db, &user, &conv)))
    }

    fn mark_read<'a>(
        &'a self,
        user: &'a UserId,
        conv: &'a Conversation,
        seq: u64,
    ) -> StoreFuture<'a, (ReadState, bool)> {
        let (user, conv) = (user.clone(), conv.clone());
        Box::pin(self.write(move |db| sqlite_convs::mark_read(db, &user, &conv, seq)))
    }

    fn mark_read_many<'a>(
        &'a self,
        marks: &'a [(UserId, Conversation, u64)],
    ) -> StoreFuture<'a, Vec<(ReadState, bool)>> {
        let marks = marks.to_vec();
        Box::pin(self.write(move |db| {
            let tx = db.transaction()?;
            let mut out = Vec::with_capacity(marks.len());
            for (user, conv, seq) in &marks {
                out.push(sqlite_convs::mark_read(&tx, user, conv, *seq)?);
            }
            tx.commit()?;
            Ok(out)
        }))
    }

    fn newest<'a>(&'a self, conv: &'a Conversation) -> StoreFuture<'a, u64> {
        let conv = conv.clone();
        Box::pin(self.read(move |db| sqlite_convs::newest(db, &conv)))
    }

    fn hide<'a>(&'a self, user: &'a UserId, conv: &'a Conversation) -> StoreFuture<'a, ()> {
        let (user, conv) = (user.clone(), conv.clone());
        Box::pin(self.write(move |db| sqlite_convs::hide(db, &user, &conv)))
    }

    fn contacts<'a>(
        &'a self,
        user: &'a UserId,
        among: &'a [UserId],
    ) -> StoreFuture<'a, Vec<UserId>> {
        let (user, among) = (user.clone(), among.to_vec());
        Box::pin(self.read(move |db| sqlite_convs::contacts(db, &user, &among)))
    }

    fn group_counts<'a>(&'a self, users: &'a [UserId]) -> StoreFuture<'a, Vec<u64>> {
        let users = users.to_vec();
        Box::pin(self.read(move |db| sqlite_convs::group_counts(db, &users)))
    }

    fn readers<'a>(&'a self, conv: &'a Conversation, seq: u64) -> StoreFuture<'a, Vec<UserId>> {
        let conv = conv.clone();
        Box::pin(self.read(move |db| sqlite_convs::readers(db, &conv, seq)))
    }
}

/// Adds the columns of [`ADDED_COLUMNS`] that a database made by an older version lacks.
fn migrate(db: &Connection) -> rusqlite::Result<()> {
    let mut stmt = db.prepare("SELECT name FROM pragma_table_info('messages')")?;
    let have: Vec<String> = stmt
        .query_map([], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    for (name, kind) in ADDED_COLUMNS {
        if !have.iter().any(|h| h == name) {
            db.execute_batch(&format!("ALTER TABLE messages ADD COLUMN {name} {kind}"))?;
        }
    }
    Ok(())
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{GroupId, RoomId, UserId};

    // Proves a database made before groups existed gains their columns on open, keeps its rows, and
    // then stores a group's events.
    #[tokio::test]
    async fn an_old_database_is_migrated() {
        let dir = testkit::temp_dir("sqlite-migrate").unwrap();
        let path = dir.path().join("old.db");
        {
            let db = Connection::open(&path).unwrap();
            db.execute_batch(
                "CREATE TABLE messages (conv TEXT NOT NULL, seq INTEGER NOT NULL, sender TEXT NOT NULL,
                 room TEXT, recipient TEXT, text TEXT NOT NULL, client_msg_id TEXT NOT NULL,
                 ts INTEGER NOT NULL, PRIMARY KEY (conv, seq)) WITHOUT ROWID;
                 INSERT INTO messages VALUES ('room.r', 1, 'alice', 'r', NULL, 'old', 'c1', 5);",
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path).await.unwrap();
        let room = Conversation::Room(RoomId::parse("r").unwrap());
        let old = store
            .scan(&room, 0, u64::MAX, Order::Ascending, 10)
            .await
            .unwrap();
        assert_eq!(old.len(), 1);
        assert_eq!(old[0].msg.text, "old");
        let group = Conversation::Group(GroupId::parse("g").unwrap());
        let event = protocol::group::GroupEvent {
            kind: protocol::group::EventKind::Renamed,
            users: vec![],
            name: Some("新".into()),
            role: None,
            owner: None,
        };
        let msg = protocol::StoredMessage {
            mentions: Vec::new(),
            from: UserId::parse("alice").unwrap(),
            room: None,
            to: None,
            group: Some(GroupId::parse("g").unwrap()),
            event: Some(Box::new(event)),
            text: String::new(),
            client_msg_id: protocol::ClientMsgId::parse("ev-1").unwrap(),
            ts: 6,
        };
        let record = Record {
            conv: group.clone(),
            seq: 2,
            msg,
        };
        store
            .write_batch(std::slice::from_ref(&record))
            .await
            .unwrap();
        drop(store);
        // Opening again finds the columns there and adds nothing.
        let store = SqliteStore::open(&path).await.unwrap();
        let got = store
            .scan(&group, 0, u64::MAX, Order::Ascending, 10)
            .await
            .unwrap();
        assert_eq!(got, [record]);
    }
}
