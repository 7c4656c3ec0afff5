//! The tokens a [`KeySet`](crate::KeySet) verified lately, so that a client reconnecting with the
//! token it holds (a mini-program back from the background, a network blip, a gateway's clients
//! after a NATS hiccup) costs a hash instead of an Ed25519 verification, which was a quarter of a
//! gateway's CPU per connection (docs/benchmarks.md, eighth round).
//!
//! An entry is keyed by the SHA-256 of the whole token, so only the same bytes hit; it keeps the
//! checked claims and expires with the token. The cache is bounded ([`CAPACITY`], oldest first
//! out) and emptied whenever the key set changes, so a withdrawn key stops its tokens at once.

use std::collections::{HashMap, VecDeque};

use protocol::UserId;
use sha2::{Digest, Sha256};

/// Entries held at most: about 100 bytes each, so 6.5 MB when full.
pub const CAPACITY: usize = 65_536;

type Key = [u8; 32];

#[derive(Debug, Clone)]
struct Entry {
    user: UserId,
    exp: u64,
    iat: u64,
}

#[derive(Debug)]
pub(crate) struct Verified {
    capacity: usize,
    entries: HashMap<Key, Entry>,
    /// Insertion order, for eviction (an expired key may linger here until it reaches the front).
    order: VecDeque<Key>,
    /// Bumped by every [`clear`](Self::clear): a verify that began before a key change must not
    /// insert what the old keys accepted.
    generation: u64,
}

impl Default for Verified {
    fn default() -> Self {
        Self::with_capacity(CAPACITY)
    }
}

pub(crate) fn key(token: &str) -> Key {
    Sha256::digest(token.as_bytes()).into()
}

impl Verified {
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            entries: HashMap::new(),
            order: VecDeque::new(),
            generation: 0,
        }
    }

    /// The user, expiry and issue time of a token verified before, if it is held and
    /// `still_valid(exp)`.
    pub(crate) fn get(
        &mut self,
        key: &Key,
        still_valid: impl Fn(u64) -> bool,
    ) -> Option<(UserId, u64, u64)> {
        let e = self.entries.get(key)?;
        if still_valid(e.exp) {
            return Some((e.user.clone(), e.exp, e.iat));
        }
        // Expired: its slot in `order` goes when it reaches the front.
        self.entries.remove(key);
        None
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// Holds a verified token, unless the keys changed since `generation` was read.
    pub(crate) fn insert(&mut self, generation: u64, key: Key, user: UserId, exp: u64, iat: u64) {
        if generation != self.generation {
            return;
        }
        if self.entries.insert(key, Entry { user, exp, iat }).is_some() {
            return;
        }
        self.order.push_back(key);
        while self.entries.len() > self.capacity || self.order.len() > 2 * self.capacity {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            self.entries.remove(&old);
        }
    }

    pub(crate) fn clear(&mut self) {
        self.entries.clear();
        self.order.clear();
        self.generation += 1;
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}
