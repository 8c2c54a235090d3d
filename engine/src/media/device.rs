//! The disk seam: `BlockDevice`, one disk as a flat namespace of named blocks.
//!
//! Both backends (`DirDisk` in production, `SimDisk` in the simulator) honour exactly this
//! contract, and the engine assumes nothing more of the media:
//! - a `write` or `delete` is visible to `read`/`list` at once, but durable only after a
//!   later `sync` returns `Ok`;
//! - a crash may drop any subset of the writes and deletes issued since the last completed
//!   `sync`, and may leave any of those writes torn (a prefix of it, possibly followed by
//!   garbage: `DirDisk`'s segments can tear several appends at once); everything synced
//!   survives;
//! - `read` may return corrupted bytes (bit rot, misdirected writes) or fail (latent error,
//!   dead disk): every block carries its own checksum and the engine verifies it on every read;
//! - capacity is finite: a write that does not fit fails with `DeviceError::NoSpace` and
//!   leaves no partial block behind.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::media::landing::Landing;
use crate::media::read_buffer::ReadBuffer;

/// Identifies an extent for its whole life; never reused for different data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ExtentId(pub u64);

/// How far apart the engine keeps the extent ids of two stores of several extents (a
/// file's flushes, a re-encode's batches): the ids of one store are consecutive, and the
/// next such store starts at least this far past them — so a device can tell two
/// flushes in flight apart by their ids alone and lay each one's blocks side by side
/// (`segments`' lanes). A store of one extent (a small file's close) takes the next id,
/// so ids stay dense where most stores are small.
pub const STREAM_ID_GAP: u64 = 16;

impl fmt::Display for ExtentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// The name of a block on one device. Typed, so no component can invent a name that
/// another component would misparse.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BlockName {
    /// The disk label: pool id, disk id, capacity.
    Label,
    /// One metadata journal record.
    Journal { seq: u64 },
    /// A full metadata checkpoint taken after record `seq`.
    Checkpoint { seq: u64 },
    /// Fragment `index` of an extent.
    Fragment { extent: ExtentId, index: u8 },
    /// A root of the paged metadata store, generation `gen` (`meta::store`).
    StoreRoot { gen: u64 },
    /// An immutable page of the paged metadata store; ids are never reused.
    StorePage { id: u64 },
    /// The claim of the process that opened the pool as its `epoch`-th owner, on a
    /// shared device (`media::owner`). Never replaced and never trimmed: a writer that
    /// finds the claim of a later epoch has been fenced.
    Owner { epoch: u64 },
    /// A copy of the pool's configuration (`pool.ron`'s contents), so the pool can be
    /// taken to a new machine from any one of its disks (`dfs import`).
    PoolConfig,
}

/// The families of blocks, for `BlockDevice::list`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BlockKind {
    Label,
    Journal,
    Checkpoint,
    Fragment,
    StoreRoot,
    StorePage,
    Owner,
    PoolConfig,
}

impl BlockKind {
    /// Every kind, in a fixed order.
    pub const ALL: [BlockKind; 8] = [
        BlockKind::Label,
        BlockKind::Journal,
        BlockKind::Checkpoint,
        BlockKind::Fragment,
        BlockKind::StoreRoot,
        BlockKind::StorePage,
        BlockKind::Owner,
        BlockKind::PoolConfig,
    ];

    /// The directory-like prefix of this kind's names.
    pub fn namespace(self) -> &'static str {
        match self {
            BlockKind::Label => "label",
            BlockKind::Journal => "journal",
            BlockKind::Checkpoint => "checkpoint",
            BlockKind::Fragment => "fragment",
            BlockKind::StoreRoot => "store-root",
            BlockKind::StorePage => "store-page",
            BlockKind::Owner => "owner",
            BlockKind::PoolConfig => "pool-config",
        }
    }
}

impl BlockName {
    /// The family this name belongs to.
    pub fn kind(&self) -> BlockKind {
        match self {
            BlockName::Label => BlockKind::Label,
            BlockName::Journal { .. } => BlockKind::Journal,
            BlockName::Checkpoint { .. } => BlockKind::Checkpoint,
            BlockName::Fragment { .. } => BlockKind::Fragment,
            BlockName::StoreRoot { .. } => BlockKind::StoreRoot,
            BlockName::StorePage { .. } => BlockKind::StorePage,
            BlockName::Owner { .. } => BlockKind::Owner,
            BlockName::PoolConfig => BlockKind::PoolConfig,
        }
    }

    /// The name within its namespace (a file name for `DirDisk`).
    pub fn leaf(&self) -> String {
        match self {
            BlockName::Label => "label".to_string(),
            BlockName::Journal { seq } | BlockName::Checkpoint { seq } => format!("{seq:020}"),
            BlockName::StoreRoot { gen: n } | BlockName::StorePage { id: n } | BlockName::Owner { epoch: n } => {
                format!("{n:020}")
            }
            BlockName::PoolConfig => "pool.ron".to_string(),
            BlockName::Fragment { extent, index } => format!("{extent}.{index:02}"),
        }
    }

    /// Parses a leaf produced by `leaf()` for the given kind; `None` for anything else.
    pub fn parse(kind: BlockKind, leaf: &str) -> Option<BlockName> {
        match kind {
            BlockKind::Label => (leaf == "label").then_some(BlockName::Label),
            BlockKind::Journal => parse_seq(leaf).map(|seq| BlockName::Journal { seq }),
            BlockKind::Checkpoint => parse_seq(leaf).map(|seq| BlockName::Checkpoint { seq }),
            BlockKind::StoreRoot => parse_seq(leaf).map(|gen| BlockName::StoreRoot { gen }),
            BlockKind::StorePage => parse_seq(leaf).map(|id| BlockName::StorePage { id }),
            BlockKind::Owner => parse_seq(leaf).map(|epoch| BlockName::Owner { epoch }),
            BlockKind::PoolConfig => (leaf == "pool.ron").then_some(BlockName::PoolConfig),
            BlockKind::Fragment => {
                let (extent, index) = leaf.split_once('.')?;
                if extent.len() != 16 || index.len() != 2 {
                    return None;
                }
                let extent = u64::from_str_radix(extent, 16).ok()?;
                let index = index.parse::<u8>().ok()?;
                Some(BlockName::Fragment { extent: ExtentId(extent), index })
            }
        }
    }
}

fn parse_seq(leaf: &str) -> Option<u64> {
    if leaf.len() != 20 || !leaf.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    leaf.parse().ok()
}

impl fmt::Display for BlockName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind().namespace(), self.leaf())
    }
}

/// What a device operation can fail with. Each variant is a distinct condition the engine
/// reacts to differently.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// The block does not exist.
    #[error("block not found")]
    NotFound,
    /// The write does not fit in the remaining capacity; nothing was written.
    #[error("disk is full")]
    NoSpace,
    /// The disk cannot be used at all (dead, vanished, never opened).
    #[error("disk unavailable: {0}")]
    Unavailable(String),
    /// An I/O error on this operation only (latent sector error, EIO).
    #[error("I/O error: {0}")]
    Io(String),
    /// Another process opened the pool after this one (a later owner's claim is on a
    /// shared device, `media::owner`): this process must stop writing. Nothing was written.
    #[error("fenced: {0}")]
    Fenced(String),
}

/// The names past `last` — `name(last + 1)`, `name(last + 2)`, … — that `device` holds,
/// up to the first it does not. A shared device is an object store, whose listing may lag
/// its writes (some stores list eventually) while a request for one name is answered
/// exactly: what a listing found is extended by asking for each next name. A device that
/// is not shared lists exactly, and is not asked.
pub fn held_past(device: &dyn BlockDevice, last: u64, name: impl Fn(u64) -> BlockName) -> Vec<BlockName> {
    let mut held = Vec::new();
    if !device.shared() {
        return held;
    }
    let mut next = last;
    while let Some(n) = next.checked_add(1) {
        match device.modified_secs(name(n)) {
            Ok(_) => held.push(name(n)),
            Err(_) => break,
        }
        next = n;
    }
    held
}

/// What a create-only write (`BlockDevice::create`) did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Created {
    /// The block now holds the data given.
    Written,
    /// A block of that name already existed (holding other bytes) and was left as it was.
    Taken,
}

impl DeviceError {
    /// What a failed file operation on `path` means for a disk kept in files: no room,
    /// no such block, a directory this user may not use (unreachable until put right,
    /// not a failing sector), or an I/O error naming the path.
    pub fn from_io(path: &std::path::Path, e: std::io::Error) -> DeviceError {
        if e.raw_os_error() == Some(libc::ENOSPC) {
            return DeviceError::NoSpace;
        }
        if e.kind() == std::io::ErrorKind::NotFound {
            return DeviceError::NotFound;
        }
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            return DeviceError::Unavailable(format!(
                "{}: permission denied (EACCES): this user may not use it; check its owner and mode",
                path.display()
            ));
        }
        DeviceError::Io(format!("{}: {e}", path.display()))
    }
}

/// Free space that several devices may draw on (`BlockDevice::shared_free`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedFree {
    /// Which free space: equal for every device drawing on the same (a filesystem's
    /// device number).
    pub source: u64,
    /// Bytes free there now, as this device last measured them.
    pub free: u64,
}

/// One block of `BlockDevice::write_parts_batch`: its name, head and body.
pub type PartsBlock<'a> = (BlockName, &'a [u8], &'a [u8]);

/// What `BlockDevice::read_appending` asks of a block before it keeps it: given the whole
/// block, whether it is the one wanted.
pub type BlockCheck<'a> = &'a mut dyn FnMut(&[u8]) -> bool;

/// `write_parts` of each of `blocks` in turn, stopping at the first failure: what
/// `BlockDevice::write_parts_batch` does for a backend with no better way.
pub fn write_each<D: BlockDevice + ?Sized>(device: &D, blocks: &[PartsBlock<'_>]) -> (usize, Result<(), DeviceError>) {
    for (written, (name, head, body)) in blocks.iter().enumerate() {
        if let Err(error) = device.write_parts(*name, head, body) {
            return (written, Err(error));
        }
    }
    (blocks.len(), Ok(()))
}

/// One disk. See the module header for the durability contract every method obeys.
pub trait BlockDevice: Send + Sync {
    /// Returns the full contents of the block as last written (subject to corruption).
    fn read(&self, name: BlockName) -> Result<Vec<u8>, DeviceError>;

    /// `read`, handing the block to `visit` instead of returning it: the engine's read
    /// path, which caches what it decodes and reads ahead itself, so a backend may read
    /// into a buffer of its own past the OS cache (`DirDisk`'s direct segment reads) and
    /// spare a copy. `visit` runs at most once, and only on `Ok`.
    fn read_with(&self, name: BlockName, visit: &mut dyn FnMut(&[u8])) -> Result<(), DeviceError> {
        visit(&self.read(name)?);
        Ok(())
    }

    /// Appends the block's bytes past its first `skip` to `out` when `check`, given the
    /// whole block, accepts it: `Ok(true)`; `Ok(false)` and `out` unchanged when it does
    /// not. The engine's read of an extent's data shards one after another: a backend that
    /// reads past the OS cache lands each block in place (`DirDisk`'s direct segment
    /// reads: see `media::landing`), sparing the copy out of a buffer of its own that this
    /// default, `read_with`, makes.
    fn read_appending(
        &self,
        name: BlockName,
        skip: usize,
        out: &mut Landing,
        check: BlockCheck<'_>,
    ) -> Result<bool, DeviceError> {
        let mut kept = false;
        self.read_with(name, &mut |block| kept = out.append_checked(block, skip, check))?;
        Ok(kept)
    }

    /// Reads the blocks `names` into `out`, one after another: for each name the range
    /// its block takes in `out.as_slice()`, or `None` when it could not be read (the
    /// error is not kept: a caller that wants it reads that block again with `read`).
    /// The engine's read-ahead of a run of extents, one call per disk: a backend whose
    /// blocks lie side by side reads each run of them as one request (`DirDisk`'s
    /// segments), where this default reads them in turn through `read_with`.
    fn read_into(&self, names: &[BlockName], out: &mut ReadBuffer) -> Vec<Option<std::ops::Range<usize>>> {
        names
            .iter()
            .map(|name| {
                let mut range = None;
                let _ = self.read_with(*name, &mut |block| range = Some(out.push(block)));
                range
            })
            .collect()
    }

    /// Creates or replaces the block. Visible at once; durable after the next `sync`.
    /// Fails with `NoSpace`, writing nothing, when the block does not fit.
    fn write(&self, name: BlockName, data: &[u8]) -> Result<(), DeviceError>;

    /// `write` of the block `head` followed by `body`, for a caller that holds the two
    /// apart (a fragment's header and its payload, which may be a stretch of the extent
    /// itself): a backend that copies blocks into a buffer of its own anyway
    /// (`DirDisk`'s direct segment appends) joins them there and spares a copy. Same
    /// contract as `write` of the joined bytes.
    fn write_parts(&self, name: BlockName, head: &[u8], body: &[u8]) -> Result<(), DeviceError> {
        let mut block = Vec::with_capacity(head.len() + body.len());
        block.extend_from_slice(head);
        block.extend_from_slice(body);
        self.write(name, &block)
    }

    /// `write_parts` of each of `blocks` (name, head, body) in turn, for a caller with
    /// several blocks for this device at once (one flush's fragments for one disk): a
    /// backend that can lay them side by side (`DirDisk`'s segment appends) writes them
    /// with one I/O. Returns how many were written — always a prefix of `blocks` — and
    /// the failure that stopped the rest. Same contract as `write_parts` of each.
    fn write_parts_batch(&self, blocks: &[PartsBlock<'_>]) -> (usize, Result<(), DeviceError>) {
        write_each(self, blocks)
    }

    /// Writes the block only if no block of that name exists, else leaves it and answers
    /// `Taken`. On a `shared` device the store decides atomically, whoever else writes
    /// it: of two writers creating one name with different bytes, exactly one gets
    /// `Written`. A device that is never shared (its owner holds a lock on it) checks,
    /// then writes. `Written` also when the block already holds exactly `data` (a retried
    /// create whose first answer was lost). Durability as for `write`.
    fn create(&self, name: BlockName, data: &[u8]) -> Result<Created, DeviceError> {
        match self.read(name) {
            Ok(held) if held == data => Ok(Created::Written),
            Ok(_) => Ok(Created::Taken),
            Err(DeviceError::NotFound) => self.write(name, data).map(|()| Created::Written),
            Err(e) => Err(e),
        }
    }

    /// Whether processes on other machines may write this device while this one does (an
    /// object store): no lock keeps them apart, so the pool writes it create-only and
    /// under an owner's claim (`media::owner`). `false` for a local directory, which the
    /// pool's owner locks.
    fn shared(&self) -> bool {
        false
    }

    /// Removes the block. Deleting a missing block is `Ok` (deletes are idempotent).
    /// Durable after the next `sync`.
    fn delete(&self, name: BlockName) -> Result<(), DeviceError>;

    /// Removes every block of `names`, as `delete` one by one would (a device that can
    /// give space back in fewer calls does); returns the names whose delete failed with
    /// why. Durable after the next `sync`.
    fn delete_many(&self, names: &[BlockName]) -> Vec<(BlockName, DeviceError)> {
        names.iter().filter_map(|name| self.delete(*name).err().map(|e| (*name, e))).collect()
    }

    /// Names of every block of one kind, in ascending order.
    fn list(&self, kind: BlockKind) -> Result<Vec<BlockName>, DeviceError>;

    /// Makes every earlier write and delete durable. After `Ok`, none of them can be lost.
    fn sync(&self) -> Result<(), DeviceError>;

    /// The filesystem this device keeps its blocks in, when other devices may keep theirs
    /// in the same one (`DirDisk`: its directory's, by device number): devices that answer
    /// alike are synced together with one flush of it (`media::group_sync`). `None` (the
    /// default): the device syncs alone.
    fn filesystem(&self) -> Option<u64> {
        None
    }

    /// `sync`, its flush done by `flush`, which makes durable every write made to this
    /// device's `filesystem` before it is called: writes what a sync writes before its
    /// flush, takes what is unsynced, calls `flush` at most once and settles on its
    /// outcome. On `Err` — from `flush`, or from before it, when `flush` is not called —
    /// what was unsynced stays so, for the next sync. Asked only of a device with a
    /// `filesystem`; the default flushes, then syncs.
    fn sync_through(&self, flush: &mut dyn FnMut() -> Result<(), DeviceError>) -> Result<(), DeviceError> {
        flush()?;
        self.sync()
    }

    /// Makes durable every earlier write to this device's `filesystem`, other devices'
    /// included (`syncfs`). Asked only of a device with a `filesystem`; the default syncs
    /// this device.
    fn flush_filesystem(&self) -> Result<(), DeviceError> {
        self.sync()
    }

    /// Total bytes this device may hold.
    fn capacity_bytes(&self) -> u64;

    /// Bytes currently held by blocks.
    fn used_bytes(&self) -> u64;

    /// The free space this device's room comes out of, when other devices may draw on
    /// the same (`DirDisk`: the filesystem its directory is on): what one of them writes,
    /// the others no longer have, so the pool counts that free space once, not once per
    /// device (`Pool::disk_capacities`). `None` (the default): the room is this
    /// device's own.
    fn shared_free(&self) -> Option<SharedFree> {
        None
    }

    /// A human-readable location (a path for `DirDisk`), for messages.
    fn describe(&self) -> String;

    /// When the block was last written, in wall-clock seconds since the epoch, if the
    /// device knows (`DirDisk`: the file's mtime; the simulator's disk: its clock).
    /// `NotFound` when there is no such block. Only an age guard uses it (orphan GC):
    /// never a correctness decision.
    fn modified_secs(&self, name: BlockName) -> Result<Option<i64>, DeviceError>;

    /// Blocks this device still keeps in an older layout of its own (`DirDisk`: fragments
    /// in files of their own, from before segments). They read, list and delete like any
    /// other; `upgrade_layout` moves them.
    fn legacy_blocks(&self) -> u64 {
        0
    }

    /// Moves every block kept in an older layout into the current one, crash-safe and
    /// resumable (a block is never gone from one layout before it is durable in the other),
    /// calling `progress(done, total)` as it goes. Returns how many moved.
    fn upgrade_layout(&self, progress: &mut dyn FnMut(u64, u64)) -> Result<u64, DeviceError> {
        let _ = progress;
        Ok(0)
    }

    /// Whether the device keeps space of deleted blocks that `compact` would return
    /// (`DirDisk` on a filesystem that cannot punch holes).
    fn wants_compaction(&self) -> bool {
        false
    }

    /// Moves up to `budget_bytes` of live blocks so that dead space can be returned,
    /// crash-safe, and makes the moves durable; returns the bytes moved (0: nothing to
    /// do). Blocks keep their names and contents: the engine sees no change.
    fn compact(&self, budget_bytes: u64) -> Result<u64, DeviceError> {
        let _ = budget_bytes;
        Ok(0)
    }
}

/// How `ObjectStores::open` is asked to open a disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectDiskOpen {
    /// A disk of a pool: its capacity is what its label says.
    Existing,
    /// A disk being added with this capacity: the store is first checked to honour
    /// create-only writes (`BlockDevice::create`), without which owners cannot be fenced.
    New { capacity_bytes: u64 },
}

/// Opens disks on object stores (`s3://bucket/prefix`). The engine speaks no object
/// store protocol itself: the binary hands an implementation in (`PoolOptions`), which
/// takes endpoint and credentials from its environment.
pub trait ObjectStores: Send + Sync + fmt::Debug {
    /// `location` in its one canonical spelling (`s3://bucket/prefix`), or why it is not
    /// a location, asking nothing of any store.
    fn canonical(&self, location: &str) -> Result<String, String>;

    /// Opens the disk at `location`. Fails, changing nothing, when the location does not
    /// parse, the store cannot be reached, rejects the credentials, lacks the bucket, or
    /// (`New`) does not honour create-only writes — each named in the error.
    fn open(&self, location: &str, how: ObjectDiskOpen) -> Result<std::sync::Arc<dyn BlockDevice>, DeviceError>;
}

/// A device that fails every call: stands in for a disk that could not be opened, so
/// the pool still opens and serves what the other disks hold.
pub struct UnavailableDevice {
    location: String,
    reason: String,
}

impl UnavailableDevice {
    /// A placeholder for the disk at `location`, failing with `reason`.
    pub fn new(location: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { location: location.into(), reason: reason.into() }
    }
}

impl BlockDevice for UnavailableDevice {
    fn read(&self, _: BlockName) -> Result<Vec<u8>, DeviceError> {
        Err(DeviceError::Unavailable(self.reason.clone()))
    }
    fn write(&self, _: BlockName, _: &[u8]) -> Result<(), DeviceError> {
        Err(DeviceError::Unavailable(self.reason.clone()))
    }
    fn delete(&self, _: BlockName) -> Result<(), DeviceError> {
        Err(DeviceError::Unavailable(self.reason.clone()))
    }
    fn list(&self, _: BlockKind) -> Result<Vec<BlockName>, DeviceError> {
        Err(DeviceError::Unavailable(self.reason.clone()))
    }
    fn sync(&self) -> Result<(), DeviceError> {
        Err(DeviceError::Unavailable(self.reason.clone()))
    }
    fn capacity_bytes(&self) -> u64 {
        0
    }
    fn used_bytes(&self) -> u64 {
        0
    }
    fn modified_secs(&self, _: BlockName) -> Result<Option<i64>, DeviceError> {
        Err(DeviceError::Unavailable(format!("{}: {}", self.location, self.reason)))
    }

    fn describe(&self) -> String {
        self.location.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_their_leaf() {
        let names = [
            BlockName::Label,
            BlockName::Journal { seq: 0 },
            BlockName::Journal { seq: u64::MAX },
            BlockName::Checkpoint { seq: 42 },
            BlockName::Fragment { extent: ExtentId(0xdead_beef), index: 23 },
        ];
        for name in names {
            assert_eq!(BlockName::parse(name.kind(), &name.leaf()), Some(name));
        }
    }

    #[test]
    fn foreign_leaves_are_not_names() {
        assert_eq!(BlockName::parse(BlockKind::Journal, ".tmp-0001"), None);
        assert_eq!(BlockName::parse(BlockKind::Journal, "12"), None);
        assert_eq!(BlockName::parse(BlockKind::Fragment, "xyz.01"), None);
        assert_eq!(BlockName::parse(BlockKind::Fragment, "00000000000000ff.1"), None);
    }
}
