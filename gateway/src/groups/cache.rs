//! The gateway's copy of the groups its connections have joined, so that `send` checks membership
//! with no round trip.
//!
//! A group is cached while at least one local connection has it pinned (joined). One KV watch on
//! every group record keeps the copies current; a change made on any gateway reaches this one as
//! soon as the record is written, before its event is stored. Copies are merged by KV revision, so
//! a watch update and a read racing each other leave the newer one. A pin inserts its slot before it
//! reads the record, so an update that arrives during the read is not dropped. After a NATS
//! reconnect, or if the watch fails, every cached group is read again: updates missed while cut off
//! are not lost.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::kv;
use futures_util::StreamExt;
use protocol::GroupId;
use protocol::group::{self, Record};
use tokio::sync::watch;

/// Pause before re-creating a failed watch.
const WATCH_RETRY: Duration = Duration::from_millis(500);
/// Group reads in flight at once when every cached group is read again.
const REREAD_IN_FLIGHT: usize = 16;

/// A record and the KV revision it was read at. `None`: no such group.
pub type Versioned = (u64, Option<Arc<Record>>);

#[derive(Debug)]
struct Slot {
    /// Local connections that joined the group.
    pins: usize,
    rev: u64,
    record: Option<Arc<Record>>,
    /// Whether a read has completed since the slot was made (until then, `record` holds only what
    /// the watch delivered).
    loaded: bool,
}

impl Slot {
    fn merge(&mut self, rev: u64, record: Option<Arc<Record>>) {
        if rev >= self.rev {
            self.rev = rev;
            self.record = record;
        }
    }
}

/// Cheap to clone.
#[derive(Clone, Default)]
pub struct Cache {
    slots: Arc<Mutex<HashMap<GroupId, Slot>>>,
}

/// Decodes a KV entry into a record; a deleted, purged or unreadable entry is no group.
pub fn decode(entry: &kv::Entry) -> Versioned {
    let record = match entry.operation {
        kv::Operation::Put => serde_json::from_slice::<Record>(&entry.value)
            .map_err(|e| tracing::warn!(key = %entry.key, error = %e, "unreadable group record"))
            .ok()
            .map(Arc::new),
        kv::Operation::Delete | kv::Operation::Purge => None,
    };
    (entry.revision, record)
}

impl Cache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<GroupId, Slot>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached record, if the group is pinned and read.
    pub fn get(&self, group: &GroupId) -> Option<Option<Arc<Record>>> {
        let slots = self.lock();
        let slot = slots.get(group)?;
        slot.loaded.then(|| slot.record.clone())
    }

    /// Pins `group` and returns its record, reading it with `read` unless already cached.
    pub async fn pin<F, Fut, E>(&self, group: &GroupId, read: F) -> Result<Option<Arc<Record>>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Versioned, E>>,
    {
        {
            let mut slots = self.lock();
            let slot = slots.entry(group.clone()).or_insert(Slot {
                pins: 0,
                rev: 0,
                record: None,
                loaded: false,
            });
            slot.pins += 1;
            if slot.loaded {
                return Ok(slot.record.clone());
            }
        }
        match read().await {
            Ok((rev, record)) => {
                let mut slots = self.lock();
                let Some(slot) = slots.get_mut(group) else {
                    return Ok(record);
                };
                slot.merge(rev, record);
                slot.loaded = true;
                Ok(slot.record.clone())
            }
            Err(e) => {
                self.unpin(group);
                Err(e)
            }
        }
    }

    /// Drops one pin; the group leaves the cache with its last.
    pub fn unpin(&self, group: &GroupId) {
        let mut slots = self.lock();
        if let Some(slot) = slots.get_mut(group) {
            slot.pins = slot.pins.saturating_sub(1);
            if slot.pins == 0 {
                slots.remove(group);
            }
        }
    }

    /// Applies a newer version of a group this gateway caches; others are ignored.
    pub fn update(&self, group: &GroupId, version: Versioned) {
        if let Some(slot) = self.lock().get_mut(group) {
            slot.merge(version.0, version.1);
        }
    }

    /// Groups in the cache.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn groups(&self) -> Vec<GroupId> {
        self.lock().keys().cloned().collect()
    }

    /// Follows every group record until the task is aborted: the watch, re-created after a
    /// reconnect or a failure, with every cached group read again each time.
    pub async fn follow(self, store: kv::Store, mut reconnects: watch::Receiver<u64>) {
        reconnects.mark_unchanged();
        loop {
            let mut updates = match store.watch(group::RECORD_WILDCARD).await {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(error = %e, "group watch could not start; retrying");
                    tokio::time::sleep(WATCH_RETRY).await;
                    continue;
                }
            };
            // Whatever changed before the watch started is read now.
            self.reread(&store).await;
            loop {
                tokio::select! {
                    update = updates.next() => match update {
                        Some(Ok(entry)) => {
                            if let Some(g) = group::group_of_key(&entry.key) {
                                self.update(&g, decode(&entry));
                            }
                        }
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "group watch failed; re-creating it");
                            break;
                        }
                        None => {
                            tracing::warn!("group watch ended; re-creating it");
                            break;
                        }
                    },
                    changed = reconnects.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        break;
                    }
                }
            }
            tokio::time::sleep(WATCH_RETRY).await;
        }
    }

    /// Reads every cached group again.
    async fn reread(&self, store: &kv::Store) {
        let groups = self.groups();
        futures_util::stream::iter(groups)
            .for_each_concurrent(REREAD_IN_FLIGHT, |g| async move {
                match store.entry(group::record_key(&g)).await {
                    Ok(Some(entry)) => self.update(&g, decode(&entry)),
                    Ok(None) => {}
                    Err(e) => tracing::warn!(group = %g, error = %e, "group re-read failed"),
                }
            })
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str) -> Option<Arc<Record>> {
        Some(Arc::new(Record {
            name: name.into(),
            members: vec![],
            created_ms: 0,
            pending: None,
        }))
    }

    // Proves an update delivered while a pin reads is kept when the read returns an older version,
    // and that the group leaves the cache with its last pin.
    #[tokio::test]
    async fn a_racing_update_wins_over_an_older_read() {
        let cache = Cache::default();
        let g = GroupId::parse("g").unwrap();
        cache.update(&g, (9, record("ignored")));
        assert_eq!(cache.len(), 0, "groups that are not pinned are not cached");
        let c2 = cache.clone();
        let g2 = g.clone();
        let got = cache
            .pin(&g, || async move {
                c2.update(&g2, (5, record("new")));
                Ok::<_, ()>((4, record("old")))
            })
            .await
            .unwrap();
        assert_eq!(got.unwrap().name, "new");
        cache.update(&g, (3, record("stale")));
        assert_eq!(cache.get(&g).unwrap().unwrap().name, "new");
        let again = cache
            .pin(&g, || async { Err::<Versioned, _>("not read twice") })
            .await
            .unwrap();
        assert_eq!(again.unwrap().name, "new");
        cache.unpin(&g);
        assert_eq!(cache.len(), 1);
        cache.unpin(&g);
        assert!(cache.is_empty());
        // A failed read leaves nothing pinned.
        assert!(
            cache
                .pin(&g, || async { Err::<Versioned, _>(()) })
                .await
                .is_err()
        );
        assert!(cache.is_empty());
    }
}
