//! The conversation index in SQLite: who is in which direct thread and group, each member's read
//! position, and each conversation's newest item and message count, kept in the same transaction
//! as the messages that change them.
//!
//! Unread counts are exact at any size and cost nothing to read: every stored message of a thread
//! or group carries `ord`, the number of messages of its conversation up to and including it (an
//! event carries the count at its place, and adds nothing), and a member's row keeps `read_ord`,
//! the `ord` at their read position. Unread is the conversation's count minus `read_ord`. A member's
//! own messages never count: sending marks the conversation read up to the message sent.
//!
//! A list page reads two index ranges and merges them: rows with their own `activity` (threads,
//! updated with each message, and groups the user left, frozen at the leaving), and the user's
//! current groups, whose activity is their conversation's (a group message updates one row, not one
//! per member).

use protocol::conv::{ConvItem, ReadState};
use protocol::frame::Item;
use protocol::group::EventKind;
use protocol::subject::Conversation;
use protocol::{StoredMessage, UserId};
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::{StoreError, conv_from_key, conv_key, seq_from_i64, seq_to_i64};

/// The tables of the index, created on open.
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS convs (
    conv      TEXT    PRIMARY KEY,
    last_seq  INTEGER NOT NULL,
    msg_count INTEGER NOT NULL,
    last_item TEXT    NOT NULL,
    name      TEXT,
    members   INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS conv_members (
    user       TEXT    NOT NULL,
    conv       TEXT    NOT NULL,
        read_seq   INTEGER NOT NULL DEFAULT 0,
    read_ord   INTEGER NOT NULL DEFAULT 0,
    hidden     INTEGER NOT NULL DEFAULT 0,
    activity   INTEGER,
    left_seq   INTEGER,
    left_item  TEXT,
    left_count INTEGER,
    PRIMARY KEY (user, conv)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS conv_members_by_activity ON conv_members (user, activity)
    WHERE activity IS NOT NULL;
CREATE INDEX IF NOT EXISTS conv_members_groups ON conv_members (user) WHERE activity IS NULL;
CREATE INDEX IF NOT EXISTS conv_members_hidden ON conv_members (conv) WHERE hidden = 1;
CREATE INDEX IF NOT EXISTS conv_members_by_conv ON conv_members (conv, user);
";

const ORD_AT: &str = "SELECT ord FROM messages WHERE conv = ?1 AND seq <= ?2 AND ord IS NOT NULL
    ORDER BY seq DESC LIMIT 1";

/// Whether a conversation is indexed: threads and groups are; open rooms have no members.
pub fn indexed(conv: &Conversation) -> bool {
    !matches!(conv, Conversation::Room(_))
}

/// The index's view of a conversation: its newest seq and message count, (0, 0) when unknown.
pub fn head(tx: &Connection, key: &str) -> rusqlite::Result<(i64, i64)> {
    Ok(tx
        .prepare_cached("SELECT last_seq, msg_count FROM convs WHERE conv = ?1")?
        .query_row(params![key], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?
        .unwrap_or((0, 0)))
}

/// Indexes one message just stored at `seq` with `ord`; `prev` is the conversation's previous
/// newest seq.
pub fn apply(
    tx: &Transaction<'_>,
    conv: &Conversation,
    seq: i64,
    ord: i64,
    prev: i64,
    msg: &StoredMessage,
) -> Result<(), StoreError> {
    let key = conv_key(conv);
    let item = Item::from_stored(msg.clone(), seq_from_i64(seq)?, seq_from_i64(prev)?).to_json();
    tx.prepare_cached(
        "INSERT INTO convs (conv, last_seq, msg_count, last_item) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (conv) DO UPDATE SET last_seq = ?2, msg_count = ?3, last_item = ?4",
    )?
    .execute(params![key, seq, ord, item])?;
    match (conv, &msg.event) {
        (Conversation::Dm { lo, hi }, _) => {
            let mut up = tx.prepare_cached(
                "INSERT INTO conv_members (user, conv, activity) VALUES (?1, ?2, ?3)
                 ON CONFLICT (user, conv) DO UPDATE SET hidden = 0, activity = ?3",
            )?;
            up.execute(params![lo.as_str(), key, seq])?;
            up.execute(params![hi.as_str(), key, seq])?;
        }
        (Conversation::Group(_), None) => {
            tx.prepare_cached(
                "UPDATE conv_members SET hidden = 0
                 WHERE conv = ?1 AND hidden = 1 AND left_seq IS NULL",
            )?
            .execute(params![key])?;
        }
        (Conversation::Group(_), Some(event)) => {
            let users = &event.users;
            match event.kind {
                EventKind::Created | EventKind::Added => {
                    // A member's unread count starts at their joining.
                    let mut join = tx.prepare_cached(
                        "INSERT INTO conv_members (user, conv, read_seq, read_ord)
                         VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT (user, conv) DO UPDATE SET read_seq = ?3, read_ord = ?4,
                         hidden = 0, activity = NULL, left_seq = NULL, left_item = NULL,
                         left_count = NULL",
                    )?;
                    for u in users {
                        join.execute(params![u.as_str(), key, seq, ord])?;
                    }
                    let n = i64::try_from(users.len()).unwrap_or(i64::MAX);
                    tx.prepare_cached("UPDATE convs SET members = members + ?2 WHERE conv = ?1")?
                        .execute(params![key, n])?;
                }
                EventKind::Removed | EventKind::Quit => {
                    let mut leave = tx.prepare_cached(
                        "UPDATE conv_members SET left_seq = ?3, left_item = ?4, left_count = ?5,
                         activity = ?3
                         WHERE user = ?1 AND conv = ?2 AND left_seq IS NULL",
                    )?;
                    let mut gone = 0i64;
                    for u in users {
                        gone += i64::try_from(leave.execute(params![
                            u.as_str(),
                            key,
                            seq,
                            item,
                            ord
                        ])?)
                        .unwrap_or(0);
                    }
                    tx.prepare_cached(
                        "UPDATE convs SET members = MAX(0, members - ?2) WHERE conv = ?1",
                    )?
                    .execute(params![key, gone])?;
                }
                EventKind::Role | EventKind::Renamed => {}
            }
            if let Some(name) = &event.name {
                tx.prepare_cached("UPDATE convs SET name = ?2 WHERE conv = ?1")?
                    .execute(params![key, name])?;
            }
        }
        (Conversation::Room(_), _) => {}
    }
    if msg.event.is_none() {
        // Sending marks the conversation read up to the message sent.
        tx.prepare_cached(
            "UPDATE conv_members SET read_seq = ?3, read_ord = ?4
             WHERE user = ?1 AND conv = ?2 AND read_seq < ?3",
        )?
        .execute(params![msg.from.as_str(), key, seq, ord])?;
    }
    Ok(())
}

fn ord_at(db: &Connection, key: &str, read_seq: i64) -> rusqlite::Result<i64> {
    Ok(db
        .prepare_cached(ORD_AT)?
        .query_row(params![key, read_seq], |r| r.get(0))
        .optional()?
        .unwrap_or(0))
}

/// A member row with what its unread count needs.
struct MemberRow {
    read_seq: i64,
    read_ord: i64,
    left_count: Option<i64>,
}

fn member(db: &Connection, user: &UserId, key: &str) -> rusqlite::Result<Option<MemberRow>> {
    db.prepare_cached(
        "SELECT read_seq, read_ord, left_count FROM conv_members WHERE user = ?1 AND conv = ?2",
    )?
    .query_row(params![user.as_str(), key], |r| {
        Ok(MemberRow {
            read_seq: r.get(0)?,
            read_ord: r.get(1)?,
            left_count: r.get(2)?,
        })
    })
    .optional()
}

fn unread(count: i64, read_ord: i64) -> u64 {
    u64::try_from(count.saturating_sub(read_ord)).unwrap_or(0)
}

/// `user`'s read position and unread count in `conv`.
pub fn state(db: &Connection, user: &UserId, conv: &Conversation) -> Result<ReadState, StoreError> {
    let key = conv_key(conv);
    let Some(m) = member(db, user, &key)? else {
        return Ok(ReadState {
            read_seq: 0,
            unread: 0,
        });
    };
    let count = match m.left_count {
        Some(c) => c,
        None => head(db, &key)?.1,
    };
    Ok(ReadState {
        read_seq: seq_from_i64(m.read_seq)?,
        unread: unread(count, m.read_ord),
    })
}

/// Moves `user`'s read position in `conv` up to `seq`, clamped to the newest item (or to the
/// user's departure); returns the state and whether it moved.
pub fn mark_read(
    db: &Connection,
    user: &UserId,
    conv: &Conversation,
    seq: u64,
) -> Result<(ReadState, bool), StoreError> {
    let key = conv_key(conv);
    let (newest, _) = head(db, &key)?;
    let left: Option<i64> = db
        .prepare_cached("SELECT left_seq FROM conv_members WHERE user = ?1 AND conv = ?2")?
        .query_row(params![user.as_str(), key], |r| r.get(0))
        .optional()?
        .flatten();
    let ceiling = left.unwrap_or(newest);
    let seq = i64::try_from(seq).unwrap_or(i64::MAX).min(ceiling);
    let ord = ord_at(db, &key, seq)?;
    let moved = db
        .prepare_cached(
            "UPDATE conv_members SET read_seq = ?3, read_ord = ?4
             WHERE user = ?1 AND conv = ?2 AND read_seq < ?3",
        )?
        .execute(params![user.as_str(), key, seq, ord])?
        > 0;
    Ok((state(db, user, conv)?, moved))
}

/// The newest seq the index holds for `conv` (0 for none).
pub fn newest(db: &Connection, conv: &Conversation) -> Result<u64, StoreError> {
    seq_from_i64(head(db, &conv_key(conv))?.0)
}

pub fn hide(db: &Connection, user: &UserId, conv: &Conversation) -> Result<(), StoreError> {
    db.prepare_cached("UPDATE conv_members SET hidden = 1 WHERE user = ?1 AND conv = ?2")?
        .execute(params![user.as_str(), conv_key(conv)])?;
    Ok(())
}

/// The current members of `conv` whose read position is at `seq` or beyond, sorted.
pub fn readers(db: &Connection, conv: &Conversation, seq: u64) -> Result<Vec<UserId>, StoreError> {
    let seq = seq_to_i64(seq)?;
    let mut stmt = db.prepare_cached(
        "SELECT user FROM conv_members WHERE conv = ?1 AND left_seq IS NULL AND read_seq >= ?2
         ORDER BY user",
    )?;
    let rows = stmt.query_map(params![conv_key(conv), seq], |r| r.get::<_, String>(0))?;
    let mut out = Vec::new();
    for row in rows {
        out.push(UserId::parse(row?).map_err(|e| StoreError::Corrupt(e.to_string()))?);
    }
    Ok(out)
}

/// Those of `among` who share a thread or a group with `user`, in the order given.
pub fn contacts(
    db: &Connection,
    user: &UserId,
    among: &[UserId],
) -> Result<Vec<UserId>, StoreError> {
    let mut stmt = db.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM conv_members WHERE user = ?1 AND conv = ?3)
             OR EXISTS (SELECT 1 FROM conv_members a
                        JOIN conv_members b ON b.user = ?2 AND b.conv = a.conv
                        WHERE a.user = ?1 AND a.conv LIKE 'group.%'
                          AND a.left_seq IS NULL AND b.left_seq IS NULL)",
    )?;
    let mut out = Vec::new();
    for other in among {
        let shared = match Conversation::dm(user.clone(), other.clone()) {
            Some(dm) => stmt
                .query_row(params![user.as_str(), other.as_str(), conv_key(&dm)], |r| {
                    r.get::<_, bool>(0)
                })?,
            // Oneself.
            None => true,
        };
        if shared {
            out.push(other.clone());
        }
    }
    Ok(out)
}

/// How many groups each of `users` is a current member of.
pub fn group_counts(db: &Connection, users: &[UserId]) -> Result<Vec<u64>, StoreError> {
    let mut stmt = db.prepare_cached(
        "SELECT COUNT(*) FROM conv_members
         WHERE user = ?1 AND conv LIKE 'group.%' AND left_seq IS NULL",
    )?;
    let mut out = Vec::with_capacity(users.len());
    for u in users {
        let n: i64 = stmt.query_row(params![u.as_str()], |r| r.get(0))?;
        out.push(u64::try_from(n).unwrap_or(0));
    }
    Ok(out)
}

/// One row of a list page, before it becomes a [`ConvItem`].
struct ListRow {
    key: String,
    read_seq: i64,
    read_ord: i64,
    count: i64,
    last: String,
    name: Option<String>,
    members: i64,
    activity: i64,
}

/// Rows with their own activity: threads, and groups the user left.
const LIST_OWN: &str = "SELECT m.conv, m.read_seq, m.read_ord, COALESCE(m.left_count, c.msg_count),
        COALESCE(m.left_item, c.last_item), c.name, c.members, m.activity
    FROM conv_members m JOIN convs c ON c.conv = m.conv
    WHERE m.user = ?1 AND m.activity IS NOT NULL AND m.activity < ?2 AND m.hidden = 0
    ORDER BY m.activity DESC LIMIT ?3";
/// The user's current groups, by their conversation's activity.
const LIST_GROUPS: &str = "SELECT m.conv, m.read_seq, m.read_ord, c.msg_count, c.last_item, c.name,
        c.members, c.last_seq
    FROM conv_members m JOIN convs c ON c.conv = m.conv
    WHERE m.user = ?1 AND m.activity IS NULL AND m.hidden = 0 AND c.last_seq < ?2
    ORDER BY c.last_seq DESC LIMIT ?3";

fn list_rows(
    db: &Connection,
    sql: &str,
    user: &UserId,
    before: i64,
    n: i64,
) -> rusqlite::Result<Vec<ListRow>> {
    let mut stmt = db.prepare_cached(sql)?;
    let rows = stmt.query_map(params![user.as_str(), before, n], |r| {
        Ok(ListRow {
            key: r.get(0)?,
            read_seq: r.get(1)?,
            read_ord: r.get(2)?,
            count: r.get(3)?,
            last: r.get(4)?,
            name: r.get(5)?,
            members: r.get(6)?,
            activity: r.get(7)?,
        })
    })?;
    rows.collect()
}

/// A page of `user`'s list: conversations with activity below `before`, newest first; and whether
/// more follow.
pub fn list(
    db: &Connection,
    user: &UserId,
    limit: u32,
    before: Option<u64>,
) -> Result<(Vec<ConvItem>, bool), StoreError> {
    let before = before.map_or(i64::MAX, |b| i64::try_from(b).unwrap_or(i64::MAX));
    let n = i64::from(limit) + 1;
    let mut rows = list_rows(db, LIST_OWN, user, before, n)?;
    rows.extend(list_rows(db, LIST_GROUPS, user, before, n)?);
    rows.sort_by_key(|r| std::cmp::Reverse(r.activity));
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let mut items = Vec::with_capacity(rows.len());
    for row in rows {
        let conv = conv_from_key(&row.key).ok_or_else(|| StoreError::Corrupt(row.key.clone()))?;
        let last: Item =
            serde_json::from_str(&row.last).map_err(|e| StoreError::Corrupt(e.to_string()))?;
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
            name: if is_group { row.name } else { None },
            last: Some(last),
            activity: seq_from_i64(row.activity)?,
            read_seq: seq_from_i64(row.read_seq)?,
            unread: unread(row.count, row.read_ord),
            members: is_group.then(|| usize::try_from(row.members).unwrap_or(0)),
        });
    }
    Ok((items, more))
}
