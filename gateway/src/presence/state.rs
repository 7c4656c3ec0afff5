//! What one presence watch knows, as a state machine without I/O: changes to the bucket's keys go
//! in ([`PresenceState::apply`]), the clock goes in ([`PresenceState::expire`]), and presence
//! events come out. No NATS and no timer: the caller passes `now`, so every edge case (the grace
//! period, several devices, a key written again, a removal missed while cut off, a snapshot) has an
//! exact unit test that runs in microseconds. The watch tasks around it (`super::watch`,
//! `super::feed`) turn KV messages into [`Change`]s and send the events.
//!
//! The rule: a user is online while any of their connection keys exists. When the last one goes,
//! a live removal starts the grace period and the offline event waits for it; a key coming back
//! within it cancels the pair (a mini-program's trip to the background is invisible). A removal
//! read from a snapshot takes the user offline at once and, like everything a snapshot holds,
//! sends no event.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use protocol::UserId;
use protocol::frame::PresenceEntry;
use tokio::time::Instant;

/// One change of a key the watch covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A connection key was written (or refreshed), with its stream sequence (0 if unknown).
    Put {
        user: UserId,
        conn: String,
        seq: u64,
    },
    /// A connection key was deleted, purged or expired.
    Remove { user: UserId, conn: String },
    /// `seen.<user>` was written: the user's latest activity, in ms since the epoch.
    Seen { user: UserId, ts: u64 },
}

/// What applying a change did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// The event to send, if the change is live and changed the user's presence.
    pub event: Option<PresenceEntry>,
    /// A key came back within the grace period: an offline/online pair was not sent.
    pub flap_suppressed: bool,
    /// The grace period of the user's last key started: [`PresenceState::next_due`] may be earlier.
    pub grace_started: bool,
}

#[derive(Debug, Default)]
struct Tracked {
    /// Live connection keys, with the stream sequence of each one's latest put (0 if unknown).
    conns: HashMap<String, u64>,
    online: bool,
    last_seen: Option<u64>,
    /// Set while the user has no key left: when the offline event is due, and when the keys went
    /// (ms since the epoch).
    gone: Option<(Instant, u64)>,
}

impl Tracked {
    fn view(&self, user: &UserId) -> PresenceEntry {
        PresenceEntry {
            user: user.clone(),
            online: self.online,
            last_seen: self.last_seen,
        }
    }
}

/// The users a watch follows and their live keys.
#[derive(Debug)]
pub struct PresenceState {
    users: HashMap<UserId, Tracked>,
    grace: Duration,
    /// Users online, kept as they change: a room's event limit is checked per event, and counting
    /// a room of n users each time made n joins cost n².
    online: usize,
    /// The earliest grace deadline (possibly one already cancelled by a return), so the watch need
    /// not scan the whole state to know when to call [`PresenceState::expire`].
    due: Option<Instant>,
}

impl PresenceState {
    pub fn new(grace: Duration) -> Self {
        Self {
            users: HashMap::new(),
            grace,
            online: 0,
            due: None,
        }
    }

    /// Applies one change at `now` (`now_ms` on the wall clock, for `last_seen`). `live` changes
    /// may produce events; a snapshot's never do.
    pub fn apply(&mut self, change: Change, live: bool, now: Instant, now_ms: u64) -> Applied {
        let mut applied = Applied::default();
        match change {
            Change::Seen { user, ts } => {
                let t = self.users.entry(user).or_default();
                t.last_seen = Some(t.last_seen.unwrap_or(0).max(ts));
            }
            Change::Put { user, conn, seq } => {
                let t = self.users.entry(user.clone()).or_default();
                t.conns.insert(conn, seq);
                if t.gone.take().is_some() {
                    // Back within the grace period: no offline/online pair.
                    applied.flap_suppressed = true;
                } else if !t.online {
                    t.online = true;
                    self.online += 1;
                    if live {
                        applied.event = Some(t.view(&user));
                    }
                }
            }
            Change::Remove { user, conn } => {
                applied.grace_started = self.remove(&user, &conn, live, now, now_ms);
            }
        }
        applied
    }

    /// Removes one of `user`'s connection keys. When it was the last, a live removal starts the
    /// grace period (and returns true); one from a snapshot takes the user offline at once.
    fn remove(&mut self, user: &UserId, conn: &str, live: bool, now: Instant, now_ms: u64) -> bool {
        let Some(t) = self.users.get_mut(user) else {
            return false;
        };
        t.conns.remove(conn);
        if !(t.conns.is_empty() && t.online && t.gone.is_none()) {
            return false;
        }
        if live {
            let due = now + self.grace;
            t.gone = Some((due, now_ms));
            self.due = Some(self.due.map_or(due, |d| d.min(due)));
            true
        } else {
            t.online = false;
            self.online -= 1;
            false
        }
    }

    /// Ends every grace period due by `now`: those users go offline, with `last_seen` at least the
    /// moment their keys went. Returns their events.
    pub fn expire(&mut self, now: Instant) -> Vec<PresenceEntry> {
        let mut events = Vec::new();
        for (user, t) in &mut self.users {
            if let Some((due, gone_ms)) = t.gone
                && due <= now
            {
                t.gone = None;
                t.online = false;
                self.online -= 1;
                t.last_seen = Some(t.last_seen.unwrap_or(0).max(gone_ms));
                events.push(t.view(user));
            }
        }
        self.due = self
            .users
            .values()
            .filter_map(|t| t.gone.map(|(d, _)| d))
            .min();
        events
    }

    /// After the watch was cut off from NATS: removes, as live removals, the keys it holds from a
    /// put no later than `before` (the stream's last sequence before `present` was read) that
    /// `present` (the bucket's keys now, by user) lacks. A key that expired while the watch was cut
    /// off may have left no trace; one put after `before` may be newer than `present` and is kept.
    /// Returns how many keys were removed; each last key starts the grace period.
    pub fn remove_missing(
        &mut self,
        present: &HashMap<UserId, HashSet<String>>,
        before: u64,
        now: Instant,
        now_ms: u64,
    ) -> usize {
        let mut gone = Vec::new();
        for (user, t) in &self.users {
            let kept = present.get(user);
            for (conn, &seq) in &t.conns {
                if seq <= before && !kept.is_some_and(|k| k.contains(conn)) {
                    gone.push((user.clone(), conn.clone()));
                }
            }
        }
        for (user, conn) in &gone {
            self.remove(user, conn, true, now, now_ms);
        }
        gone.len()
    }

    /// When [`PresenceState::expire`] has work next (it may find a cancelled deadline).
    pub fn next_due(&self) -> Option<Instant> {
        self.due
    }

    /// How many users are online.
    pub fn online(&self) -> usize {
        self.online
    }

    pub fn is_online(&self, user: &UserId) -> bool {
        self.users.get(user).is_some_and(|t| t.online)
    }

    /// Forgets everything, as before a first snapshot.
    pub fn clear(&mut self) {
        self.users.clear();
        self.online = 0;
        self.due = None;
    }

    /// One user's presence (offline and without `last_seen` if never seen).
    pub fn user(&self, user: &UserId) -> PresenceEntry {
        self.users
            .get(user)
            .map_or_else(|| Tracked::default().view(user), |t| t.view(user))
    }

    /// At most `cap` online users, the first by id, and how many are online.
    /// Keeps only `cap` candidates while it scans, so a join into a room of n costs O(n).
    pub fn online_capped(&self, cap: usize) -> (Vec<PresenceEntry>, usize) {
        let mut first: std::collections::BinaryHeap<&UserId> = std::collections::BinaryHeap::new();
        for (user, _) in self.users.iter().filter(|(_, t)| t.online) {
            if first.len() < cap {
                first.push(user);
            } else if first.peek().is_some_and(|largest| user < *largest) {
                first.pop();
                first.push(user);
            }
        }
        let out = first
            .into_sorted_vec()
            .into_iter()
            .map(|u| self.users[u].view(u))
            .collect();
        (out, self.online)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(10);

    fn user(u: &str) -> UserId {
        UserId::parse(u).unwrap()
    }
    fn put(u: &str, conn: &str, seq: u64) -> Change {
        Change::Put {
            user: user(u),
            conn: conn.into(),
            seq,
        }
    }
    fn remove(u: &str, conn: &str) -> Change {
        Change::Remove {
            user: user(u),
            conn: conn.into(),
        }
    }
    fn entry(u: &str, online: bool, last_seen: Option<u64>) -> PresenceEntry {
        PresenceEntry {
            user: user(u),
            online,
            last_seen,
        }
    }
    fn online_users(s: &PresenceState) -> Vec<String> {
        s.online_capped(usize::MAX)
            .0
            .into_iter()
            .map(|p| p.user.to_string())
            .collect()
    }

    // Proves a user's last key going starts the grace period: no event until it ends, then one
    // offline event whose last_seen is when the key went.
    #[test]
    fn offline_waits_for_the_grace_period() {
        let t0 = Instant::now();
        let mut s = PresenceState::new(GRACE);
        let on = s.apply(put("a", "c1", 1), true, t0, 1_000);
        assert_eq!(on.event, Some(entry("a", true, None)));
        let off = s.apply(remove("a", "c1"), true, t0, 2_000);
        assert_eq!(off.event, None, "no event while the grace period runs");
        assert!(off.grace_started);
        assert_eq!(s.next_due(), Some(t0 + GRACE));
        assert!(s.expire(t0 + GRACE - Duration::from_millis(1)).is_empty());
        assert!(
            s.is_online(&user("a")),
            "online until the grace period ends"
        );
        assert_eq!(s.expire(t0 + GRACE), [entry("a", false, Some(2_000))]);
        assert_eq!((s.online(), s.next_due()), (0, None));
        assert!(
            s.expire(t0 + GRACE * 2).is_empty(),
            "one offline event only"
        );
    }

    // Proves a key coming back within the grace period cancels the pair: no event at all.
    #[test]
    fn a_return_within_the_grace_period_is_invisible() {
        let t0 = Instant::now();
        let mut s = PresenceState::new(GRACE);
        s.apply(put("a", "c1", 1), true, t0, 0);
        s.apply(remove("a", "c1"), true, t0, 0);
        let back = s.apply(put("a", "c2", 3), true, t0 + GRACE / 2, 0);
        assert_eq!(back.event, None);
        assert!(back.flap_suppressed);
        assert!(
            s.expire(t0 + GRACE * 2).is_empty(),
            "the offline event was cancelled"
        );
        assert_eq!(online_users(&s), ["a"]);
    }

    // Proves a user with two devices stays online while either is connected, with no events for
    // the first one's coming and going.
    #[test]
    fn several_devices_are_one_user() {
        let t0 = Instant::now();
        let mut s = PresenceState::new(GRACE);
        assert!(s.apply(put("a", "phone", 1), true, t0, 0).event.is_some());
        assert_eq!(s.apply(put("a", "pc", 2), true, t0, 0), Applied::default());
        let first = s.apply(remove("a", "phone"), true, t0, 0);
        assert_eq!(first, Applied::default(), "the pc is still there");
        assert!(s.expire(t0 + GRACE * 2).is_empty());
        assert!(
            s.apply(remove("a", "pc"), true, t0 + GRACE * 2, 5)
                .grace_started
        );
        assert_eq!(s.expire(t0 + GRACE * 3), [entry("a", false, Some(5))]);
        assert_eq!(s.online(), 0);
    }

    // Proves a key written again after its user went offline (a refresh of an expired key, a
    // reconnect after the grace period) brings the user online with a new event.
    #[test]
    fn a_key_written_again_after_going_offline_comes_back_online() {
        let t0 = Instant::now();
        let mut s = PresenceState::new(GRACE);
        s.apply(put("a", "c1", 1), true, t0, 0);
        s.apply(remove("a", "c1"), true, t0, 0);
        assert_eq!(s.expire(t0 + GRACE).len(), 1);
        let again = s.apply(put("a", "c1", 9), true, t0 + GRACE * 2, 0);
        assert_eq!(again.event, Some(entry("a", true, Some(0))));
        // A refresh of a key already held changes nothing.
        assert_eq!(s.apply(put("a", "c1", 10), true, t0, 0), Applied::default());
    }

    // Proves a snapshot sends no events, and a removal in it takes the user offline at once.
    #[test]
    fn a_snapshot_sends_nothing_and_removes_at_once() {
        let t0 = Instant::now();
        let mut s = PresenceState::new(GRACE);
        assert_eq!(s.apply(put("a", "c1", 1), false, t0, 0), Applied::default());
        assert_eq!(s.apply(put("b", "c2", 2), false, t0, 0), Applied::default());
        assert_eq!(s.apply(remove("b", "c2"), false, t0, 0), Applied::default());
        assert_eq!(online_users(&s), ["a"]);
        assert_eq!((s.online(), s.next_due()), (1, None));
        // A removal of a key never seen changes nothing.
        assert_eq!(s.apply(remove("z", "c9"), true, t0, 0), Applied::default());
        assert_eq!(s.online(), 1);
    }

    // Proves last_seen is the latest of the recorded activity and the moment the keys went.
    #[test]
    fn last_seen_is_the_latest_activity_or_departure() {
        let t0 = Instant::now();
        let mut s = PresenceState::new(GRACE);
        s.apply(
            Change::Seen {
                user: user("a"),
                ts: 500,
            },
            true,
            t0,
            0,
        );
        assert_eq!(s.user(&user("a")), entry("a", false, Some(500)));
        s.apply(
            Change::Seen {
                user: user("a"),
                ts: 400,
            },
            true,
            t0,
            0,
        );
        assert_eq!(s.user(&user("a")).last_seen, Some(500), "never moves back");
        s.apply(put("a", "c1", 1), true, t0, 0);
        s.apply(remove("a", "c1"), true, t0, 900);
        assert_eq!(s.expire(t0 + GRACE), [entry("a", false, Some(900))]);
        s.apply(
            Change::Seen {
                user: user("b"),
                ts: 2_000,
            },
            true,
            t0,
            0,
        );
        s.apply(put("b", "c2", 2), true, t0, 0);
        s.apply(remove("b", "c2"), true, t0, 1_500);
        assert_eq!(s.expire(t0 + GRACE), [entry("b", false, Some(2_000))]);
        assert_eq!(s.user(&user("nobody")), entry("nobody", false, None));
    }

    // Proves that after a cut-off, keys held from puts up to `before` and absent from the bucket
    // are removed (with the grace period), and keys put later, or still present, are kept.
    #[test]
    fn removals_missed_while_cut_off_are_found() {
        let t0 = Instant::now();
        let mut s = PresenceState::new(GRACE);
        s.apply(put("a", "ca", 5), true, t0, 0);
        s.apply(put("b", "cb", 6), true, t0, 0);
        s.apply(put("e", "ce", 20), true, t0, 0);
        s.apply(put("f", "cf1", 7), true, t0, 0);
        s.apply(put("f", "cf2", 8), true, t0, 0);
        let present: HashMap<UserId, HashSet<String>> =
            [(user("b"), HashSet::from(["cb".to_owned()]))].into();
        // a is gone; e's put is newer than the read; f lost both devices.
        assert_eq!(s.remove_missing(&present, 10, t0, 42), 3);
        assert_eq!(
            online_users(&s),
            ["a", "b", "e", "f"],
            "the grace period first"
        );
        let mut off: Vec<_> = s
            .expire(t0 + GRACE)
            .into_iter()
            .map(|p| p.user.to_string())
            .collect();
        off.sort();
        assert_eq!(off, ["a", "f"]);
        assert_eq!(online_users(&s), ["b", "e"]);
        assert_eq!(s.remove_missing(&present, 10, t0, 42), 0, "nothing more");
    }

    // Proves the earliest deadline is kept across users, and each user's event comes at its own.
    #[test]
    fn each_grace_period_ends_on_its_own() {
        let t0 = Instant::now();
        let mut s = PresenceState::new(GRACE);
        s.apply(put("a", "c1", 1), true, t0, 0);
        s.apply(put("b", "c2", 2), true, t0, 0);
        s.apply(remove("b", "c2"), true, t0 + Duration::from_secs(3), 0);
        s.apply(remove("a", "c1"), true, t0 + Duration::from_secs(5), 0);
        assert_eq!(s.next_due(), Some(t0 + Duration::from_secs(13)));
        let first = s.expire(t0 + Duration::from_secs(13));
        assert_eq!(first, [entry("b", false, Some(0))]);
        assert_eq!(s.next_due(), Some(t0 + Duration::from_secs(15)));
        assert_eq!(s.expire(t0 + Duration::from_secs(15)).len(), 1);
        assert_eq!(s.next_due(), None);
    }

    // Proves the capped view lists the first online users by id and counts all of them.
    #[test]
    fn capped_view_lists_the_first_online_users_and_counts_all() {
        let t0 = Instant::now();
        let mut s = PresenceState::new(GRACE);
        for i in 0..250 {
            s.apply(put(&format!("u{i:03}"), "c", i), false, t0, 0);
            if i % 5 == 0 {
                s.apply(remove(&format!("u{i:03}"), "c"), false, t0, 0);
            }
        }
        let (listed, online) = s.online_capped(100);
        assert_eq!(online, 200);
        let (all, _) = s.online_capped(usize::MAX);
        assert_eq!(all.len(), 200);
        assert_eq!(listed, all[..100].to_vec());
        assert!(
            all.windows(2).all(|w| w[0].user < w[1].user),
            "sorted by id"
        );
        assert!(listed.iter().all(|p| p.online));
    }
}
