//! What the pool holds of extent data in memory: decoded, verified extents (the cache)
//! and the extents being fetched outside the pool's lock (`crate::data::fetch` plans and books
//! them). Extents are immutable, so a cached extent is never stale.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Condvar};

use bytes::Bytes;

use crate::media::device::ExtentId;

/// Decoded, verified extents kept in memory, least recently used evicted first, up to
/// `PoolOptions::extent_cache_bytes`. Extents are immutable, so it is always coherent.
#[derive(Default)]
pub(crate) struct ExtentCache {
    entries: BTreeMap<ExtentId, (u64, Bytes)>,
    tick: u64,
    bytes: usize,
    capacity_bytes: usize,
}

impl ExtentCache {
    pub(crate) fn contains(&self, id: ExtentId) -> bool {
        self.entries.contains_key(&id)
    }

    pub(crate) fn get(&mut self, id: ExtentId) -> Option<Bytes> {
        self.tick += 1;
        let tick = self.tick;
        self.entries.get_mut(&id).map(|(used, data)| {
            *used = tick;
            data.clone()
        })
    }

    /// The bytes it holds at most.
    pub(crate) fn capacity_bytes(&self) -> usize {
        self.capacity_bytes
    }

    pub(crate) fn with_capacity(capacity_bytes: usize) -> Self {
        ExtentCache { capacity_bytes, ..ExtentCache::default() }
    }

    pub(crate) fn insert(&mut self, id: ExtentId, data: Bytes) {
        self.tick += 1;
        while self.bytes + data.len() > self.capacity_bytes && !self.entries.is_empty() {
            if let Some(oldest) = self.entries.iter().min_by_key(|(_, (used, _))| *used).map(|(id, _)| *id) {
                if let Some((_, gone)) = self.entries.remove(&oldest) {
                    self.bytes -= gone.len();
                }
            }
        }
        if data.len() <= self.capacity_bytes {
            self.bytes += data.len();
            if let Some((_, old)) = self.entries.insert(id, (self.tick, data)) {
                self.bytes -= old.len();
            }
        }
    }
}

/// Extents being fetched outside the lock, and the signal that one was booked.
#[derive(Default)]
pub(crate) struct InFlight {
    extents: BTreeSet<ExtentId>,
    booked: Arc<Condvar>,
}

impl InFlight {
    pub(crate) fn contains(&self, id: ExtentId) -> bool {
        self.extents.contains(&id)
    }

    /// Marks `id` as being fetched; it must not be already.
    pub(crate) fn start(&mut self, id: ExtentId) {
        let new = self.extents.insert(id);
        debug_assert!(new, "extent {id} fetched twice at once");
    }

    /// The fetches of `ids` are over (booked or given up): wakes the reads waiting for
    /// them.
    pub(crate) fn finish(&mut self, ids: impl IntoIterator<Item = ExtentId>) {
        for id in ids {
            let was_in_flight = self.extents.remove(&id);
            debug_assert!(was_in_flight, "extent {id} finished but never started");
        }
        self.booked.notify_all();
    }

    /// The signal `finish` gives, to wait on with the pool's lock.
    pub(crate) fn signal(&self) -> Arc<Condvar> {
        self.booked.clone()
    }
}
