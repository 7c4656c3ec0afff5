//! The conversation index in SQLite: who is in which direct thread and group, each member's read
//! position, and each conversation's newest item and message count, kept in the same transaction
//! as the messages that change them.
//!
//! Unread counts are exact at any size and cost one index probe: every stored message of a thread
//! or group carries `ord`, the number of messages of its conversation up to and including it (an
//! event carries the count at its place, and adds nothing). A member's unread count is the
//! conversation's count minus the `ord` at their read position. A member's own messages never count:
//! sending marks the conversation read up to the message sent.

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
    hidden     INTEGER NOT NULL DEFAULT 0,
    left_seq   INTEGER,
    left_item  TEXT,
    left_count INTEGER,
    PRIMARY KEY (user, conv)
) WITHOUT ROWID;
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
                "INSERT INTO conv_members (user, conv) VALUES (?1, ?2)
                 ON CONFLICT (user, conv) DO UPDATE SET hidden = 0",
            )?;
            up.execute(params![lo.as_str(), key])?;
            up.execute(params![hi.as_str(), key])?;
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
                        "INSERT INTO conv_members (user, conv, read_seq) VALUES (?1, ?2, ?3)
                         ON CONFLICT (user, conv) DO UPDATE SET read_seq = ?3, hidden = 0,
                         left_seq = NULL, left_item = NULL, left_count = NULL",
                    )?;
                    for u in users {
                        join.execute(params![u.as_str(), key, seq])?;
                    }
                    let n = i64::try_from(users.len()).unwrap_or(i64::MAX);
                    tx.prepare_cached("UPDATE convs SET members = members + ?2 WHERE conv = ?1")?
                        .execute(params![key, n])?;
                }
                EventKind::Removed | EventKind::Quit => {
                    let mut leave = tx.prepare_cached(
                        "UPDATE conv_members SET left_seq = ?3, left_item = ?4, left_count = ?5
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
            "UPDATE conv_members SET read_seq = MAX(read_seq, ?3) WHERE user = ?1 AND conv = ?2",
        )?
        .execute(params![msg.from.as_str(), key, seq])?;
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
    left_count: Option<i64>,
}

fn member(db: &Connection, user: &UserId, key: &str) -> rusqlite::Result<Option<MemberRow>> {
    db.prepare_cached(
        "SELECT read_seq, left_count FROM conv_members WHERE user = ?1 AND conv = ?2",
    )?
    .query_row(params![user.as_str(), key], |r| {
        Ok(MemberRow {
            read_seq: r.get(0)?,
            left_count: r.get(1)?,
        })
    })
    .optional()
}

fn unread(db: &Connection, key: &str, count: i64, read_seq: i64) -> Result<u64, StoreError> {
    let read = ord_at(db, key, read_seq)?;
    Ok(u64::try_from(count.saturating_sub(read)).unwrap_or(0))
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
        unread: unread(db, &key, count, m.read_seq)?,
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
    let moved = db
        .prepare_cached(
            "UPDATE conv_members SET read_seq = ?3 WHERE user = ?1 AND conv = ?2 AND read_seq < ?3",
        )?
        .execute(params![user.as_str(), key, seq])?
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

/// A page of `user`'s list: conversations with activity below `before`, newest first; and whether
/// more follow.
pub fn list(
    db: &Connection,
    user: &UserId,
    limit: u32,
    before: Option<u64>,
) -> Result<(Vec<ConvItem>, bool), StoreError> {
    let before = before.map_or(i64::MAX, |b| i64::try_from(b).unwrap_or(i64::MAX));
    let mut stmt = db.prepare_cached(
        "SELECT m.conv, m.read_seq, m.left_count, COALESCE(m.left_item, c.last_item), c.msg_count,
                c.name, c.members, COALESCE(m.left_seq, c.last_seq) AS activity
         FROM conv_members m JOIN convs c ON c.conv = m.conv
         WHERE m.user = ?1 AND m.hidden = 0 AND COALESCE(m.left_seq, c.last_seq) < ?2
         ORDER BY activity DESC LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![user.as_str(), before, i64::from(limit) + 1], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, Option<i64>>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, i64>(4)?,
            r.get::<_, Option<String>>(5)?,
            r.get::<_, i64>(6)?,
            r.get::<_, i64>(7)?,
        ))
    })?;
    let mut items = Vec::new();
    for row in rows {
        let (key, read_seq, left_count, last, count, name, members, activity) = row?;
        let conv = conv_from_key(&key).ok_or_else(|| StoreError::Corrupt(key.clone()))?;
        let last: Item =
            serde_json::from_str(&last).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let (group, with) = match conv {
            Conversation::Group(g) => (Some(g), None),
            Conversation::Dm { lo, hi } => (None, Some(if lo == *user { hi } else { lo })),
            Conversation::Room(_) => continue,
        };
        let is_group = group.is_some();
        items.push(ConvItem {
            group,
            with,
            name: if is_group { name } else { None },
            last: Some(last),
            activity: seq_from_i64(activity)?,
            read_seq: seq_from_i64(read_seq)?,
            unread: unread(db, &key, left_count.unwrap_or(count), read_seq)?,
            members: is_group.then(|| usize::try_from(members).unwrap_or(0)),
        });
    }
    let more = items.len() > limit as usize;
    items.truncate(limit as usize);
    Ok((items, more))
}
