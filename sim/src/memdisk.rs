//! `MemDisk`: the simulator's in-memory `BlockDevice`, honouring the durability contract
//! exactly.
//!
//! It keeps the durable image apart from the operations pending since the last completed
//! `sync` (faults live apart again, in `FaultyDevice`). Reads see durable + pending. On a
//! crash the caller decides each pending operation's fate — dropped, landed, or landed
//! torn (a prefix kept, optionally followed by garbage) — in any combination, not only
//! prefixes; everything durable survives.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use dfs_engine::media::device::{BlockDevice, BlockKind, BlockName, Created, DeviceError};

/// One operation issued since the last completed sync.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pending {
    Write(BlockName, Arc<Vec<u8>>),
    Delete(BlockName),
}

/// What a crash does to one pending operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Never reached the media.
    Drop,
    /// Reached the media whole.
    Land,
    /// A write that reached the media partly: its first `keep` bytes, then `garbage`
    /// bytes of noise.
    Torn { keep: usize, garbage: usize },
}

#[derive(Clone, Default)]
struct MemState {
    durable: BTreeMap<BlockName, Arc<Vec<u8>>>,
    pending: Vec<Pending>,
    visible: BTreeMap<BlockName, Arc<Vec<u8>>>,
    used_bytes: u64,
    /// When each block was last written (the clock's wall seconds): its mtime.
    written_secs: BTreeMap<BlockName, i64>,
    /// A lagging listing (`MemDisk::lagging`): new names it does not show yet, and
    /// deleted names it still shows, each with the listings of its kind left until the
    /// listing catches up.
    unlisted: BTreeMap<BlockName, u32>,
    ghosts: BTreeMap<BlockName, u32>,
    /// Blocks held that some listing left out (until deleted): whoever collects what no
    /// one references from a listing may not have seen them.
    passed_over: std::collections::BTreeSet<BlockName>,
}

/// Where a disk reads the time for its blocks' mtimes.
pub type WallSecs = Arc<dyn Fn() -> i64 + Send + Sync>;

/// An in-memory disk.
pub struct MemDisk {
    name: String,
    capacity_bytes: u64,
    /// Models a disk on an object store that other processes write too (see
    /// `BlockDevice::shared`): `create` decides atomically, as a create-only PUT.
    shared: bool,
    /// Listings of a kind that pass before they show a name created, or stop showing
    /// a name deleted (0: a listing is exact). Reads are exact regardless.
    listing_lag: u32,
    state: Mutex<MemState>,
    wall_secs: Option<WallSecs>,
}

impl MemDisk {
    /// An empty disk of `capacity_bytes` that knows no time (mtimes unknown).
    pub fn new(name: impl Into<String>, capacity_bytes: u64) -> MemDisk {
        MemDisk {
            name: name.into(),
            capacity_bytes,
            shared: false,
            listing_lag: 0,
            state: Mutex::new(MemState::default()),
            wall_secs: None,
        }
    }

    /// An empty disk of `capacity_bytes` on an object store: other processes may write it
    /// at the same time (`BlockDevice::shared`; hand one `Arc` to several pools to model
    /// several machines), `create` is atomic, and a write or delete of a metadata block
    /// is whole and durable once it returns (a PUT). Fragments are gathered into packs
    /// (`dfs-objectdisk`): a fragment's write or delete is pending until a sync, and a
    /// crash drops it or lands it whole, never torn.
    pub fn shared(name: impl Into<String>, capacity_bytes: u64) -> MemDisk {
        MemDisk { shared: true, ..MemDisk::new(name, capacity_bytes) }
    }

    /// This disk with an eventually consistent listing, as some object stores have: a
    /// name created is left out of the next `lag` listings of its kind, and a name deleted
    /// stays in them, while reads see every write at once (read-after-write).
    pub fn lagging(self, lag: u32) -> MemDisk {
        MemDisk { listing_lag: lag, ..self }
    }

    /// What a listing of `kind` shows now, without counting as one.
    pub fn listed(&self, kind: BlockKind) -> Vec<BlockName> {
        let state = self.lock();
        let mut names: Vec<BlockName> = state
            .visible
            .keys()
            .filter(|n| n.kind() == kind && !state.unlisted.contains_key(n))
            .chain(state.ghosts.keys().filter(|n| n.kind() == kind))
            .copied()
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Whether some listing left out `name`, held since it was written.
    pub fn passed_over(&self, name: BlockName) -> bool {
        self.lock().passed_over.contains(&name)
    }

    /// An empty disk whose blocks carry mtimes from `wall_secs`.
    pub fn with_clock(name: impl Into<String>, capacity_bytes: u64, wall_secs: WallSecs) -> MemDisk {
        MemDisk { wall_secs: Some(wall_secs), ..MemDisk::new(name, capacity_bytes) }
    }

    /// `with_clock`, on an object store (see `shared`).
    pub fn shared_with_clock(name: impl Into<String>, capacity_bytes: u64, wall_secs: WallSecs) -> MemDisk {
        MemDisk { shared: true, ..MemDisk::with_clock(name, capacity_bytes, wall_secs) }
    }

    fn lock(&self) -> MutexGuard<'_, MemState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A copy of this disk in its current state (durable and pending).
    pub fn snapshot(&self) -> MemDisk {
        MemDisk {
            name: self.name.clone(),
            capacity_bytes: self.capacity_bytes,
            shared: self.shared,
            listing_lag: self.listing_lag,
            state: Mutex::new(self.lock().clone()),
            wall_secs: self.wall_secs.clone(),
        }
    }

    /// Makes `data` the block `name`: visible at once, and pending until a sync — or, a
    /// metadata block on a shared disk (an object store's PUT), durable at once. The
    /// caller accounts room.
    fn put(&self, state: &mut MemState, name: BlockName, data: &[u8]) {
        let data = Arc::new(data.to_vec());
        if let Some(now) = &self.wall_secs {
            state.written_secs.insert(name, now());
        }
        let new = state.visible.insert(name, data.clone()).is_none();
        if new && self.listing_lag > 0 && state.ghosts.remove(&name).is_none() {
            state.unlisted.insert(name, self.listing_lag);
        }
        if self.put_at_once(name) {
            state.durable.insert(name, data);
        } else {
            state.pending.push(Pending::Write(name, data));
        }
    }

    /// Whether a write or delete of `name` is durable when it returns: a metadata block's
    /// on a shared disk (one PUT); a fragment there waits in a pack until a sync.
    fn put_at_once(&self, name: BlockName) -> bool {
        self.shared && name.kind() != BlockKind::Fragment
    }

    /// The operations a crash now would decide about.
    pub fn pending(&self) -> Vec<Pending> {
        self.lock().pending.clone()
    }

    /// Crashes the disk: applies `fates[i]` to pending operation `i` (missing fates drop),
    /// then forgets everything that did not land. Afterwards durable = visible.
    pub fn crash(&self, fates: &[Fate]) {
        let mut state = self.lock();
        let pending = std::mem::take(&mut state.pending);
        for (i, op) in pending.into_iter().enumerate() {
            match (op, fates.get(i).copied().unwrap_or(Fate::Drop)) {
                (_, Fate::Drop) => {}
                (Pending::Write(name, data), Fate::Land) => {
                    state.durable.insert(name, data);
                }
                // A pack lands whole or not at all.
                (Pending::Write(name, data), Fate::Torn { .. }) if self.shared => {
                    state.durable.insert(name, data);
                }
                (Pending::Write(name, data), Fate::Torn { keep, garbage }) => {
                    let mut torn = data[..keep.min(data.len())].to_vec();
                    torn.extend((0..garbage).map(|i| (i as u8).wrapping_mul(151).wrapping_add(17)));
                    state.durable.insert(name, Arc::new(torn));
                }
                (Pending::Delete(name), _) => {
                    state.durable.remove(&name);
                }
            }
        }
        state.visible = state.durable.clone();
        state.used_bytes = state.visible.values().map(|d| d.len() as u64).sum();
    }

    /// The clean contents of a block (no faults), if present.
    pub fn peek(&self, name: BlockName) -> Option<Arc<Vec<u8>>> {
        self.lock().visible.get(&name).cloned()
    }

    /// Every block name present, with its size.
    pub fn blocks(&self) -> Vec<(BlockName, u64)> {
        self.lock().visible.iter().map(|(n, d)| (*n, d.len() as u64)).collect()
    }
}

impl BlockDevice for MemDisk {
    fn modified_secs(&self, name: BlockName) -> Result<Option<i64>, DeviceError> {
        let state = self.lock();
        if !state.visible.contains_key(&name) {
            return Err(DeviceError::NotFound);
        }
        Ok(state.written_secs.get(&name).copied())
    }

    fn read(&self, name: BlockName) -> Result<Vec<u8>, DeviceError> {
        self.lock().visible.get(&name).map(|d| d.as_ref().clone()).ok_or(DeviceError::NotFound)
    }

    fn write(&self, name: BlockName, data: &[u8]) -> Result<(), DeviceError> {
        let mut state = self.lock();
        let old = state.visible.get(&name).map(|d| d.len() as u64).unwrap_or(0);
        let new_used = state.used_bytes - old + data.len() as u64;
        if new_used > self.capacity_bytes && data.len() as u64 > old {
            return Err(DeviceError::NoSpace);
        }
        self.put(&mut state, name, data);
        state.used_bytes = new_used;
        Ok(())
    }

    fn create(&self, name: BlockName, data: &[u8]) -> Result<Created, DeviceError> {
        // One lock for the look and the write: atomic, as a store's create-only PUT.
        let mut state = self.lock();
        match state.visible.get(&name) {
            Some(held) if held.as_slice() == data => Ok(Created::Written),
            Some(_) => Ok(Created::Taken),
            None => {
                if state.used_bytes + data.len() as u64 > self.capacity_bytes {
                    return Err(DeviceError::NoSpace);
                }
                state.used_bytes += data.len() as u64;
                self.put(&mut state, name, data);
                Ok(Created::Written)
            }
        }
    }

    fn shared(&self) -> bool {
        self.shared
    }

    fn delete(&self, name: BlockName) -> Result<(), DeviceError> {
        let mut state = self.lock();
        if let Some(old) = state.visible.remove(&name) {
            state.used_bytes -= old.len() as u64;
            state.passed_over.remove(&name);
            if self.listing_lag > 0 && state.unlisted.remove(&name).is_none() {
                state.ghosts.insert(name, self.listing_lag);
            }
            if self.put_at_once(name) {
                state.durable.remove(&name);
            } else {
                state.pending.push(Pending::Delete(name));
            }
        }
        Ok(())
    }

    fn list(&self, kind: BlockKind) -> Result<Vec<BlockName>, DeviceError> {
        let names = self.listed(kind);
        let mut guard = self.lock();
        let state = &mut *guard;
        let hidden: Vec<BlockName> = state.unlisted.keys().filter(|n| n.kind() == kind).copied().collect();
        state.passed_over.extend(hidden);
        for lagging in [&mut state.unlisted, &mut state.ghosts] {
            lagging.retain(|name, left| {
                if name.kind() == kind {
                    *left -= 1;
                }
                *left > 0
            });
        }
        Ok(names)
    }

    fn sync(&self) -> Result<(), DeviceError> {
        let mut state = self.lock();
        state.pending.clear();
        state.durable = state.visible.clone();
        Ok(())
    }

    fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }

    fn used_bytes(&self) -> u64 {
        self.lock().used_bytes
    }

    fn describe(&self) -> String {
        self.name.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(seq: u64) -> BlockName {
        BlockName::Journal { seq }
    }

    #[test]
    fn a_shared_disk_keeps_every_returned_write_and_creates_each_name_once() {
        let disk = MemDisk::shared("s3://bucket/d", 1 << 20);
        disk.write(name(1), b"one").unwrap();
        assert_eq!(disk.create(name(2), b"two").unwrap(), Created::Written);
        assert_eq!(disk.create(name(2), b"other").unwrap(), Created::Taken);
        assert_eq!(disk.create(name(2), b"two").unwrap(), Created::Written, "a retry of the same bytes");
        disk.delete(name(1)).unwrap();
        assert!(disk.pending().is_empty(), "a store's writes are durable once they return");
        disk.crash(&[]);
        assert_eq!(disk.read(name(1)), Err(DeviceError::NotFound));
        assert_eq!(disk.read(name(2)).unwrap(), b"two");
        assert_eq!(disk.used_bytes(), 3);
    }

    #[test]
    fn a_lagging_listing_shows_a_new_name_late_and_a_deleted_one_still_while_reads_are_exact() {
        let disk = MemDisk::shared("s3://bucket/d", 1 << 20).lagging(2);
        disk.write(name(1), b"one").unwrap();
        disk.write(name(2), b"two").unwrap();
        assert_eq!(disk.list(BlockKind::Journal).unwrap(), Vec::<BlockName>::new());
        assert_eq!(disk.list(BlockKind::Label).unwrap(), vec![], "a listing of another kind counts for its own");
        assert_eq!(disk.read(name(2)).unwrap(), b"two", "reads see every write at once");
        assert_eq!(disk.list(BlockKind::Journal).unwrap(), Vec::<BlockName>::new());
        assert_eq!(disk.list(BlockKind::Journal).unwrap(), vec![name(1), name(2)]);
        disk.delete(name(1)).unwrap();
        assert_eq!(disk.read(name(1)), Err(DeviceError::NotFound));
        assert_eq!(disk.listed(BlockKind::Journal), vec![name(1), name(2)], "`listed` does not count");
        assert_eq!(disk.list(BlockKind::Journal).unwrap(), vec![name(1), name(2)]);
        assert_eq!(disk.list(BlockKind::Journal).unwrap(), vec![name(1), name(2)]);
        assert_eq!(disk.list(BlockKind::Journal).unwrap(), vec![name(2)]);
        // Created and deleted before any listing showed it: never listed.
        disk.write(name(3), b"three").unwrap();
        disk.delete(name(3)).unwrap();
        assert_eq!(disk.list(BlockKind::Journal).unwrap(), vec![name(2)]);
    }

    #[test]
    fn synced_data_survives_and_any_subset_of_pending_lands() {
        let disk = MemDisk::new("m", 1 << 20);
        disk.write(name(1), b"durable").unwrap();
        disk.sync().unwrap();
        disk.write(name(2), b"two").unwrap();
        disk.write(name(3), b"three").unwrap();
        disk.delete(name(1)).unwrap();
        disk.crash(&[Fate::Drop, Fate::Land, Fate::Drop]);
        assert_eq!(disk.read(name(1)).unwrap(), b"durable");
        assert_eq!(disk.read(name(2)), Err(DeviceError::NotFound));
        assert_eq!(disk.read(name(3)).unwrap(), b"three");
        assert!(disk.pending().is_empty());
    }

    #[test]
    fn a_torn_write_keeps_a_prefix_and_garbage() {
        let disk = MemDisk::new("m", 1 << 20);
        disk.write(name(1), b"abcdefgh").unwrap();
        disk.crash(&[Fate::Torn { keep: 3, garbage: 2 }]);
        let torn = disk.read(name(1)).unwrap();
        assert_eq!(&torn[..3], b"abc");
        assert_eq!(torn.len(), 5);
    }

    #[test]
    fn capacity_is_enforced_without_partial_blocks() {
        let disk = MemDisk::new("m", 10);
        disk.write(name(1), b"12345678").unwrap();
        assert_eq!(disk.write(name(2), b"123"), Err(DeviceError::NoSpace));
        assert_eq!(disk.used_bytes(), 8);
        assert_eq!(disk.list(BlockKind::Journal).unwrap(), vec![name(1)]);
    }
}
