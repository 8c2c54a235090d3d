//! The metadata state: everything the pool knows, changed only by `Op`s.
//!
//! Contract: `apply` is deterministic and infallible — the namespace layer validates an
//! operation before it is journaled, and replay applies exactly the same ops to exactly
//! the same state. Ordered maps everywhere, so encoding and iteration are deterministic.
//!
//! Invariants (checked by `check`): every directory entry names a live inode; an extent
//! record is referenced by exactly one (file, chunk) slot, as its extent or one of its
//! layers, and only a chunk holding an extent has layers; the fragments of one extent sit
//! on distinct disks; a live inode's link count matches the entries naming it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::base::clock::WallTime;
use crate::base::policy::Policy;
use crate::media::device::ExtentId;
use crate::meta::extent_index::ExtentIndex;
pub use crate::meta::extents::{ExtentCore, Extents, FreedExtent};
pub use crate::meta::ids::{ChunkSlot, DiskId, Ino};
use crate::meta::nested::Nested;
pub use crate::meta::record::{
    push_policy_change, ChangeCause, ExtentRecord, Fragments, PolicyChange, INLINE_BYTES_MAX, INLINE_KEPT_BYTES_MAX,
    POLICY_HISTORY_MAX,
};
use crate::meta::temperatures::Temperatures;
use crate::meta::tracked::Tracked;
use crate::temperature::access::AccessStats;
use crate::temperature::config::TieringConfig;
use crate::temperature::hmm::HISTORY_MAX;
use crate::temperature::tracker::{Temperature, Verdict};

/// Largest extent: files are cut into chunks of this size, one extent each.
pub const EXTENT_BYTES_MAX: u64 = 1 << 20;

/// Lifecycle of a disk in the pool: `Active` → `Draining` → `Removed`, or → `Failed`
/// (by `fail-disk`, or when it stayed offline past the grace period) → `Removed` once
/// nothing needs it. Reachability is apart from the lifecycle: an `Active` or `Draining`
/// disk that cannot be reached is *offline* (`MetaState::offline`) — read around, not
/// written, not rebuilt — until it returns or its grace period ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum DiskState {
    /// Takes new fragments and serves reads.
    Active,
    /// Serves reads; takes nothing new; its fragments are being moved elsewhere.
    Draining,
    /// Never read or written again; its fragments count as missing until rebuilt.
    Failed,
    /// Gone from the pool: no fragment lives there.
    Removed,
}

impl DiskState {
    /// Whether fragments on a disk in this state can still be read.
    pub fn readable(self) -> bool {
        matches!(self, DiskState::Active | DiskState::Draining)
    }
}

impl fmt::Display for DiskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DiskState::Active => "active",
            DiskState::Draining => "draining",
            DiskState::Failed => "failed",
            DiskState::Removed => "removed",
        })
    }
}

/// A disk as metadata knows it. Its path lives in the pool directory, not here: a disk
/// is recognised by the uuid in its label wherever it is mounted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskRecord {
    pub id: DiskId,
    pub uuid: Uuid,
    pub capacity_bytes: Option<u64>,
    pub state: DiskState,
    pub added_at: WallTime,
}

/// A disk that cannot be reached: since when, and what was seen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfflineRecord {
    pub since: WallTime,
    pub reason: String,
}

/// The pool's availability settings: how long an unreachable disk is waited for, and
/// how few fragments a new extent may be written with while disks are away.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Availability {
    /// Seconds a disk stays offline before it is marked failed and rebuilt elsewhere.
    pub grace_secs: u64,
    /// The fewest copies a `replicate:N` extent is written with (capped at N).
    pub replica_quorum: u8,
}

impl Default for Availability {
    fn default() -> Self {
        Availability { grace_secs: 600, replica_quorum: 2 }
    }
}

impl Availability {
    /// The fewest fragments a new extent under `policy` may be written with: K+1 for
    /// `erasure:K+M` (K when M is 0), min(N, `replica_quorum`) for `replicate:N`.
    pub fn write_quorum(&self, policy: Policy) -> usize {
        let quorum = match policy {
            Policy::Replicate { copies } => usize::from(copies).min(usize::from(self.replica_quorum.max(1))),
            Policy::Erasure { data, parity } => usize::from(data) + usize::from(parity.min(1)),
        };
        debug_assert!(quorum >= policy.needed() && quorum <= policy.width());
        quorum
    }
}

/// What a policy transition re-encodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PolicyScope {
    /// The pool default, and every extent of files that follow it.
    Default,
    /// A file, or a directory (with `recursive`, everything beneath it too).
    Path { ino: Ino, path: String, recursive: bool },
    /// One extent (by the id it had when the transition began).
    Extent(ExtentId),
}

/// Where a policy transition stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TransitionState {
    Pending,
    InProgress,
    Done,
    Failed,
}

impl fmt::Display for TransitionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TransitionState::Pending => "pending",
            TransitionState::InProgress => "in-progress",
            TransitionState::Done => "done",
            TransitionState::Failed => "failed",
        })
    }
}

/// A policy change of existing data, kept in metadata so it resumes after a crash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyTransition {
    pub id: u64,
    pub scope: PolicyScope,
    pub policy: Policy,
    pub state: TransitionState,
    pub started: WallTime,
    pub finished: Option<WallTime>,
    /// Extents re-encoded so far.
    pub extents_done: u64,
    /// Why it failed, when it did.
    pub error: Option<String>,
}

/// What an inode is. New kinds are only ever appended: the variant index is the
/// on-disk encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum InodeKind {
    File,
    Directory,
    Symlink,
    /// A named pipe (`mkfifo`); the kernel serves its data.
    Fifo,
    /// A Unix socket's name in the filesystem (`bind`); the kernel serves its traffic.
    Socket,
    /// A character device node; its number is `Inode::rdev`.
    CharDevice,
    /// A block device node; its number is `Inode::rdev`.
    BlockDevice,
}

impl InodeKind {
    /// Whether inodes of this kind hold file data in extents (only regular files do;
    /// special files are names and attributes only).
    pub fn holds_data(self) -> bool {
        self == InodeKind::File
    }

    /// The `S_IFMT` bits of this kind.
    pub fn file_type_bits(self) -> u32 {
        match self {
            InodeKind::File => libc::S_IFREG,
            InodeKind::Directory => libc::S_IFDIR,
            InodeKind::Symlink => libc::S_IFLNK,
            InodeKind::Fifo => libc::S_IFIFO,
            InodeKind::Socket => libc::S_IFSOCK,
            InodeKind::CharDevice => libc::S_IFCHR,
            InodeKind::BlockDevice => libc::S_IFBLK,
        }
    }

    /// The kind named by the `S_IFMT` bits of `mode` (no bits: a regular file, as
    /// `mknod(2)` reads it); `None` for a type no inode can have.
    pub fn from_mode(mode: u32) -> Option<InodeKind> {
        Some(match mode & libc::S_IFMT {
            0 | libc::S_IFREG => InodeKind::File,
            libc::S_IFDIR => InodeKind::Directory,
            libc::S_IFLNK => InodeKind::Symlink,
            libc::S_IFIFO => InodeKind::Fifo,
            libc::S_IFSOCK => InodeKind::Socket,
            libc::S_IFCHR => InodeKind::CharDevice,
            libc::S_IFBLK => InodeKind::BlockDevice,
            _ => return None,
        })
    }
}

/// Attributes of one inode. File contents live in the extent map, directory entries in
/// the directory map.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inode {
    pub ino: Ino,
    pub kind: InodeKind,
    /// Permission bits (`0o7777`), without the file type.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    /// File length in bytes (for symlinks: target length).
    pub size: u64,
    pub atime: WallTime,
    pub mtime: WallTime,
    pub ctime: WallTime,
    /// The policy set on this inode; `None` means "the pool default".
    pub policy: Option<Policy>,
    /// The target of a symlink; empty otherwise.
    pub symlink_target: Vec<u8>,
    /// The device number of a character or block device node; 0 otherwise.
    pub rdev: u64,
}

/// The whole metadata state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetaState {
    pub pool_id: Uuid,
    pub default_policy: Policy,
    pub disks: BTreeMap<DiskId, DiskRecord>,
    pub inodes: Tracked<Ino, Inode>,
    pub dirs: Nested<Ino, Vec<u8>, Ino>,
    /// For each file, chunk index → extent. A missing chunk is a hole.
    pub file_extents: Nested<Ino, u64, ExtentId>,
    /// Every extent's core, and the whole records changed since the store's root
    /// (`meta::extents`); the rest are read from the store.
    pub extents: Extents,
    pub next_ino: u64,
    pub next_extent: u64,
    pub next_disk: u32,
    /// Policy transitions, by id, newest last.
    pub transitions: BTreeMap<u64, PolicyTransition>,
    /// How temperature drives policies.
    pub tiering: TieringConfig,
    /// Temperature of every chunk that has one (only slots holding an extent): every
    /// chunk's class, and the whole temperatures changed since the store's root
    /// (`meta::temperatures`); the rest are read from the store.
    pub temperature: Temperatures,
    /// When the last classification passes ran (wall seconds), oldest first; at most
    /// `HISTORY_MAX`, so an extent's observations line up with the newest of them.
    pub passes: VecDeque<i64>,
    /// The background scrub: pass in progress, schedule, last full pass.
    pub scrub: crate::meta::scrub_state::ScrubState,
    /// When each extent was last verified by a scrub (wall seconds).
    pub scrubbed: Tracked<ExtentId, i64>,
    /// Extended attributes (POSIX ACLs among them, under their `system.` names), per
    /// inode, name → value. Kept apart from `Inode` so that changing a file's times
    /// never rewrites its attributes into the journal.
    pub xattrs: Nested<Ino, Vec<u8>, Vec<u8>>,
    /// Disks that cannot be reached now (format 3).
    pub offline: BTreeMap<DiskId, OfflineRecord>,
    /// When each disk's state or reachability last changed (format 3; older changes
    /// are not dated).
    pub disk_changed: BTreeMap<DiskId, WallTime>,
    /// The write-intent map (format 3): per disk, the extents whose fragment there may be
    /// missing because the extent was written, or made durable, while the disk was
    /// offline. Only these are repaired when it returns — never the whole disk.
    pub owed: BTreeMap<DiskId, BTreeSet<ExtentId>>,
    /// Grace period and write quorum (format 3).
    pub availability: Availability,
    /// Small overwrites laid over chunks' extents (format 4), per chunk, oldest first: a
    /// chunk reads as its extent with each layer's ranges copied over it in turn. Only a
    /// chunk that holds an extent has layers; a new extent in the slot (`SetExtent`)
    /// replaces them.
    pub layers: Tracked<ChunkSlot, Vec<Layer>>,
    /// Each directory's parent (the root has none): an index of `dirs`, kept by `apply`
    /// and rebuilt after decoding (`rebuild_indexes`), never stored. A listing's `..`
    /// and a rename's cycle check walk it instead of scanning every entry of the pool.
    /// (Between a transaction's `Link` and the `PutInode` of the inode it names, a new
    /// inode of any kind is in it; `PutInode` of anything but a directory takes it out.)
    #[serde(skip)]
    pub dir_parents: BTreeMap<Ino, Ino>,
    /// Directories named twice in their parent: only inside a transaction (a rename
    /// within a directory that links the new name before it unlinks the old, or an
    /// exchange), so empty between transactions. An unlink of a directory's name keeps
    /// its parent exactly when the directory is here, instead of looking through the
    /// parent's entries for another name.
    #[serde(skip)]
    pub second_names: BTreeSet<Ino>,
    /// The extents on each disk, those short of fragments, the chunks tiering wants
    /// moved, the extents the scrub pass owes a check, and the tallies per policy and
    /// class (`meta::extent_index`): kept by `apply` (`meta::upkeep`), rebuilt after
    /// decoding, never stored. Background work and metrics read it instead of visiting
    /// every record.
    #[serde(skip)]
    pub extent_index: ExtentIndex,
    /// How many classification passes repeated the chunks they did not list
    /// (`Op::ClassifyChanges`), ever (format 9). A stored temperature names the count it
    /// was written at and reads back with one repeat for each pass since (`meta::paged`),
    /// so the repeats are never marked: a pass that changes nothing writes nothing. Carried
    /// in the store's head, not encoded with the state.
    #[serde(skip)]
    pub repeating_passes: u64,
}

/// Where a disk stands for the fragments on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskFate {
    /// Active and online: its fragments are read there, rewritten there if damaged.
    Serving,
    /// Offline and still waited for: its fragments are neither read nor moved.
    Awaited,
    /// Failed, removed, unknown, or draining: its fragments go elsewhere.
    Leaving,
}

/// A small overwrite of one chunk, stored as an extent of its own (format 4): the
/// extent's bytes are the new contents of `ranges`, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layer {
    pub extent: ExtentId,
    /// `(offset in the chunk, length)`, sorted, disjoint, non-empty, within the chunk;
    /// the lengths add up to the extent's.
    pub ranges: Vec<(u32, u32)>,
}

impl Layer {
    /// Where the layer's last range ends in its chunk.
    pub fn end(&self) -> u64 {
        self.ranges.last().map_or(0, |(offset, len)| u64::from(*offset) + u64::from(*len))
    }

    /// Whether `ranges` each touch or overlap one of this layer's ranges, so that the
    /// union of both has no more ranges than this layer: an append at its end or a rewrite
    /// of what it holds, not a write elsewhere in the chunk.
    pub fn touched_by(&self, ranges: &[(u32, u32)]) -> bool {
        union(&self.ranges, ranges).len() <= self.ranges.len()
    }

    /// The ranges and bytes of one layer that reads as this one (`data`, its extent's
    /// contents) with `ranges` (`bytes`, in order) laid over it: the union of both
    /// layers' ranges, the newer bytes winning where they overlap.
    pub fn merged_with(&self, data: &[u8], ranges: &[(u32, u32)], bytes: &[u8]) -> (Vec<(u32, u32)>, Vec<u8>) {
        let merged = union(&self.ranges, ranges);
        let total: usize = merged.iter().map(|(_, len)| *len as usize).sum();
        let mut out = Vec::with_capacity(total);
        for &(start, len) in &merged {
            let at = out.len();
            out.resize(at + len as usize, 0);
            let piece = &mut out[at..];
            for (layer_ranges, layer_bytes) in [(self.ranges.as_slice(), data), (ranges, bytes)] {
                let mut cursor = 0usize;
                for &(offset, count) in layer_ranges {
                    let (low, high) = (offset.max(start), (offset + count).min(start + len));
                    if low < high {
                        let from = cursor + (low - offset) as usize;
                        piece[(low - start) as usize..(high - start) as usize]
                            .copy_from_slice(&layer_bytes[from..from + (high - low) as usize]);
                    }
                    cursor += count as usize;
                }
            }
        }
        debug_assert_eq!(out.len(), total);
        (merged, out)
    }

    /// Copies the layer's bytes (`data`, its extent's contents) over `chunk`, growing it
    /// with zeros where a range ends past it.
    pub fn lay_over(&self, chunk: &mut Vec<u8>, data: &[u8]) {
        let end = self.end() as usize;
        if chunk.len() < end {
            chunk.resize(end, 0);
        }
        let mut at = 0usize;
        for (offset, len) in &self.ranges {
            let (offset, len) = (*offset as usize, *len as usize);
            chunk[offset..offset + len].copy_from_slice(&data[at..at + len]);
            at += len;
        }
        debug_assert_eq!(at, data.len());
    }

    /// Copies what the layer's bytes (`data`) hold of the chunk window starting at
    /// `window` over `target`, the window's bytes.
    pub fn copy_window(&self, target: &mut [u8], window: u64, data: &[u8]) {
        let window_end = window + target.len() as u64;
        let mut at = 0u64;
        for (offset, len) in &self.ranges {
            let (start, end) = (u64::from(*offset), u64::from(*offset) + u64::from(*len));
            let (low, high) = (start.max(window), end.min(window_end));
            if low < high {
                let source = (at + low - start) as usize..(at + high - start) as usize;
                target[(low - window) as usize..(high - window) as usize].copy_from_slice(&data[source]);
            }
            at += u64::from(*len);
        }
    }

    /// Whether the ranges are sorted, disjoint, non-empty, inside a chunk and add up to
    /// `len` bytes.
    pub fn well_formed(&self, len: u32) -> bool {
        let mut next = 0u64;
        let mut total = 0u64;
        for (offset, range_len) in &self.ranges {
            let (offset, range_len) = (u64::from(*offset), u64::from(*range_len));
            if range_len == 0 || offset < next || offset + range_len > EXTENT_BYTES_MAX {
                return false;
            }
            next = offset + range_len;
            total += range_len;
        }
        !self.ranges.is_empty() && total == u64::from(len)
    }
}

/// One atomic change to the state. A transaction is a list of these.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Op {
    AddDisk(DiskRecord),
    /// Creates or replaces an inode's attributes.
    PutInode(Inode),
    /// Removes an inode with its extents (freed) and its (empty) directory map.
    RemoveInode(Ino),
    /// Inserts or replaces a directory entry.
    Link {
        parent: Ino,
        name: Vec<u8>,
        ino: Ino,
    },
    /// Removes a directory entry.
    Unlink {
        parent: Ino,
        name: Vec<u8>,
    },
    /// Points chunk `index` of a file at a new extent (or a hole); the previous extent
    /// there is freed.
    SetExtent {
        ino: Ino,
        index: u64,
        extent: Option<ExtentRecord>,
    },
    SetDefaultPolicy(Policy),
    /// Replaces an existing extent's record under the same id: its fragments moved
    /// (rebuilt or drained onto other disks). Frees nothing; the caller deletes the old
    /// fragments after the barrier.
    PutExtent(ExtentRecord),
    SetDiskState {
        disk: DiskId,
        state: DiskState,
    },
    PutTransition(PolicyTransition),
    SetTiering(TieringConfig),
    /// Persists access statistics of chunks (slots without an extent are skipped).
    PutAccessStats(Vec<(ChunkSlot, AccessStats)>),
    /// A classification pass at `at_secs` and its verdicts.
    ClassifyPass {
        at_secs: i64,
        verdicts: Vec<(ChunkSlot, Verdict)>,
    },
    SetScrub(crate::meta::scrub_state::ScrubState),
    /// Extents a scrub verified at `at_secs` (ids no longer present are skipped).
    Scrubbed {
        at_secs: i64,
        extents: Vec<ExtentId>,
    },
    /// Sets (`Some`) or removes (`None`) one extended attribute of a live inode.
    SetXattr {
        ino: Ino,
        name: Vec<u8>,
        value: Option<Vec<u8>>,
    },
    /// Marks the point where a pool written in an older metadata format was opened and
    /// upgraded: the checkpoint that follows is the first in the current format.
    FormatUpgraded {
        from: u8,
        to: u8,
    },
    /// Sets a disk's lifecycle state, dated. (Format 3; `SetDiskState` is what formats 1
    /// and 2 wrote.) Failing or removing a disk forgets what it was owed.
    SetDiskStateAt {
        disk: DiskId,
        state: DiskState,
        at: WallTime,
    },
    /// A disk became unreachable. `suspect` are the extents whose fragments it took since
    /// the last barrier: it may have lost them, so they are owed to it as well.
    DiskOffline {
        disk: DiskId,
        at: WallTime,
        reason: String,
        suspect: Vec<ExtentId>,
    },
    /// An offline disk was reached again and verified by its label.
    DiskOnline {
        disk: DiskId,
        at: WallTime,
    },
    /// These extents' fragments on `disk` were verified or rewritten: no longer owed.
    Resynced {
        disk: DiskId,
        extents: Vec<ExtentId>,
    },
    SetAvailability(Availability),
    /// These extents' fragments named on `disk` are missing there: a failed disk that was
    /// offered back did not hold them. Repaired onto it like what an offline disk is owed.
    Owe {
        disk: DiskId,
        extents: Vec<ExtentId>,
    },
    /// A process claimed the pool (before deleting fragments its state does not
    /// reference): every other process that served the same disks is fenced by it.
    /// Records of format 10 on carry `OpenedBy` instead.
    Opened {
        at: WallTime,
    },
    /// Lays `extent` over chunk `slot` as its newest layer (format 4): the new contents
    /// of `ranges`. A slot that holds no extent takes no layer: the extent is freed.
    PutLayer {
        slot: ChunkSlot,
        extent: ExtentRecord,
        ranges: Vec<(u32, u32)>,
    },
    /// Removes these layers of chunk `slot` and frees their extents (format 6): newer
    /// layers cover every byte they hold (`MetaState::shadowed_layers`), so the chunk
    /// reads the same without them. A layer the slot no longer holds is passed over.
    DropLayers {
        slot: ChunkSlot,
        extents: Vec<ExtentId>,
    },
    /// A classification pass at `at_secs` that carries only the verdicts a chunk's
    /// temperature does not imply (format 7; `Temperature::implies`): every other chunk
    /// with a temperature observes again what it observed last, with no access, and
    /// keeps its class and confidence (`Temperature::repeat`). A pass over a pool whose
    /// extents nobody touched journals almost nothing.
    ClassifyChanges {
        at_secs: i64,
        changed: Vec<(ChunkSlot, Verdict)>,
    },
    /// More verdicts of the pass the last `ClassifyChanges` began (format 9): a pass
    /// journals its verdicts in records of at most `PASS_BATCH_VERDICTS`, so no record
    /// grows with the pool. Each listed chunk takes its verdict in place of the repeat
    /// that op implied for it. Records of one pass follow each other with nothing between;
    /// a crash between them leaves the chunks not yet listed repeated, as if unchanged.
    ClassifyMore {
        changed: Vec<(ChunkSlot, Verdict)>,
    },
    /// A process opened the pool and owns it from this record on (format 10): who it is
    /// (`host H pid P`, from the binary) and, on shared disks, the epoch of the owner's
    /// claim it made (`media::owner`). Written in place of `Opened`, which only records
    /// of older formats carry.
    OpenedBy {
        at: WallTime,
        by: String,
        epoch: Option<u64>,
    },
}

impl Op {
    /// The extent record this op stores, if any (always with its data, when inline).
    pub fn record(&self) -> Option<&ExtentRecord> {
        match self {
            Op::SetExtent { extent: Some(record), .. }
            | Op::PutExtent(record)
            | Op::PutLayer { extent: record, .. } => Some(record),
            _ => None,
        }
    }
}

/// The most verdicts one record of a classification pass carries (`Op::ClassifyMore`).
pub const PASS_BATCH_VERDICTS: usize = 16_384;

/// A list of ops applied atomically.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Transaction {
    pub ops: Vec<Op>,
}

impl MetaState {
    /// An empty pool: just the root directory.
    pub fn new(pool_id: Uuid, default_policy: Policy, now: WallTime) -> MetaState {
        let mut state = MetaState {
            pool_id,
            default_policy,
            disks: BTreeMap::new(),
            inodes: Tracked::default(),
            dirs: Nested::default(),
            file_extents: Nested::default(),
            extents: Extents::default(),
            next_ino: Ino::ROOT.0 + 1,
            next_extent: 1,
            next_disk: 1,
            transitions: BTreeMap::new(),
            tiering: TieringConfig { enabled: false, ..TieringConfig::default() },
            temperature: Temperatures::default(),
            passes: VecDeque::new(),
            scrub: crate::meta::scrub_state::ScrubState::default(),
            scrubbed: Tracked::default(),
            xattrs: Nested::default(),
            offline: BTreeMap::new(),
            disk_changed: BTreeMap::new(),
            owed: BTreeMap::new(),
            availability: Availability::default(),
            layers: Tracked::default(),
            dir_parents: BTreeMap::new(),
            second_names: BTreeSet::new(),
            extent_index: ExtentIndex::default(),
            repeating_passes: 0,
        };
        state.apply(&Op::PutInode(Inode {
            ino: Ino::ROOT,
            kind: InodeKind::Directory,
            mode: 0o755,
            uid: 0,
            gid: 0,
            nlink: 2,
            size: 0,
            atime: now,
            mtime: now,
            ctime: now,
            policy: None,
            symlink_target: Vec::new(),
            rdev: 0,
        }));
        state
    }

    /// Applies one op, returning the extents it freed (their fragments may be deleted
    /// once the op is durable).
    pub fn apply(&mut self, op: &Op) -> Vec<FreedExtent> {
        let tiering_before = self.tiering_inputs();
        let scrub_before = self.scrub_pass_key();
        let replaced_policy = match op {
            Op::PutExtent(record) => self.extents.get(&record.id).is_some_and(|old| old.policy != record.policy),
            _ => false,
        };
        let class_slots = self.class_slots(op);
        self.tally_classes(&class_slots, false);
        let freed = self.apply_op(op);
        self.tally_classes(&class_slots, true);
        self.reassess_after(op, &freed);
        if replaced_policy || self.tiering_inputs() != tiering_before {
            self.extent_index.set_migrations(self.scanned_migrations());
        } else {
            self.retarget_after(op);
        }
        if self.scrub_pass_key() != scrub_before {
            self.refile_unscrubbed();
        } else if self.scrub.pass.is_some() {
            self.rescrub_after(op, &freed);
        }
        freed
    }

    /// `apply`, before the extents whose risk the op may change are reassessed.
    fn apply_op(&mut self, op: &Op) -> Vec<FreedExtent> {
        let mut freed = Vec::new();
        match op {
            Op::AddDisk(disk) => {
                self.next_disk = self.next_disk.max(disk.id.0 + 1);
                self.disks.insert(disk.id, disk.clone());
            }
            Op::PutInode(inode) => {
                self.next_ino = self.next_ino.max(inode.ino.0 + 1);
                if inode.kind == InodeKind::Directory {
                    self.dirs.ensure(inode.ino);
                } else {
                    self.dir_parents.remove(&inode.ino);
                }
                self.inodes.insert(inode.ino, inode.clone());
            }
            Op::RemoveInode(ino) => {
                self.inodes.remove(ino);
                self.dir_parents.remove(ino);
                self.second_names.remove(ino);
                self.dirs.remove(ino);
                self.xattrs.remove(ino);
                // A temperature is only kept for a chunk holding an extent (`check`).
                let chunks: Vec<ChunkSlot> = self.chunk_slots(*ino).collect();
                for slot in chunks {
                    self.temperature.remove(slot);
                }
                if let Some(map) = self.file_extents.remove(ino) {
                    freed.extend(map.values().filter_map(|id| self.remove_extent(*id)));
                }
                let layered: Vec<ChunkSlot> = self
                    .layers
                    .range(ChunkSlot { ino: *ino, index: 0 }..=ChunkSlot { ino: *ino, index: u64::MAX })
                    .map(|(slot, _)| *slot)
                    .collect();
                for slot in layered {
                    freed.extend(self.remove_layers(slot));
                }
            }
            Op::Link { parent, name, ino } => {
                let replaced = self.dirs.insert(*parent, name.clone(), *ino);
                let new_name = replaced != Some(*ino);
                if let Some(old) = replaced.filter(|_| new_name) {
                    self.lose_name(old, *parent);
                }
                if self.inodes.get(ino).is_none_or(|inode| inode.kind == InodeKind::Directory) {
                    if new_name && self.dir_parents.get(ino) == Some(parent) {
                        self.second_names.insert(*ino);
                    }
                    self.dir_parents.insert(*ino, *parent);
                }
            }
            Op::Unlink { parent, name } => {
                if let Some(child) = self.dirs.remove_inner(parent, name) {
                    self.lose_name(child, *parent);
                }
            }
            Op::SetExtent { ino, index, extent } => {
                freed.extend(self.remove_layers(ChunkSlot { ino: *ino, index: *index }));
                if let Some(record) = extent {
                    self.insert_extent(record.clone());
                }
                let old = match extent {
                    Some(record) => {
                        self.next_extent = self.next_extent.max(record.id.0 + 1);
                        self.file_extents.insert(*ino, *index, record.id)
                    }
                    None => {
                        self.temperature.remove(ChunkSlot { ino: *ino, index: *index });
                        self.file_extents.remove_inner(ino, index)
                    }
                };
                if self.file_extents.get(ino).is_some_and(BTreeMap::is_empty) {
                    self.file_extents.remove(ino);
                }
                if let Some(old) = old {
                    if extent.as_ref().map(|e| e.id) != Some(old) {
                        freed.extend(self.remove_extent(old));
                    }
                }
                if let Some(record) = extent {
                    self.owe_to_offline(record);
                }
            }
            Op::SetDefaultPolicy(policy) => self.default_policy = *policy,
            Op::PutExtent(record) => {
                if self.extents.contains_key(&record.id) {
                    self.insert_extent(record.clone());
                    self.forget_owed(record.id, &record.fragments);
                    self.owe_to_offline(record);
                }
            }
            Op::SetDiskState { disk, state } => {
                if let Some(record) = self.disks.get_mut(disk) {
                    record.state = *state;
                }
            }
            Op::SetDiskStateAt { disk, state, at } => {
                if let Some(record) = self.disks.get_mut(disk) {
                    record.state = *state;
                    self.disk_changed.insert(*disk, *at);
                    if matches!(state, DiskState::Failed | DiskState::Removed) {
                        // A failed disk's fragments are all missing; a removed one holds none.
                        self.owed.remove(disk);
                        self.offline.remove(disk);
                    }
                }
            }
            Op::DiskOffline { disk, at, reason, suspect } => {
                if self.disks.get(disk).is_some_and(|d| d.state.readable()) {
                    self.offline.insert(*disk, OfflineRecord { since: *at, reason: reason.clone() });
                    self.disk_changed.insert(*disk, *at);
                    self.owe(*disk, suspect);
                }
            }
            Op::DiskOnline { disk, at } => {
                if self.offline.remove(disk).is_some() {
                    self.disk_changed.insert(*disk, *at);
                }
            }
            Op::Resynced { disk, extents } => {
                if let Some(owed) = self.owed.get_mut(disk) {
                    for id in extents {
                        owed.remove(id);
                    }
                    if owed.is_empty() {
                        self.owed.remove(disk);
                    }
                }
            }
            Op::SetAvailability(availability) => self.availability = *availability,
            Op::Owe { disk, extents } => {
                if self.disks.get(disk).is_some_and(|d| d.state.readable()) {
                    self.owe(*disk, extents);
                }
            }
            Op::PutTransition(transition) => {
                self.transitions.insert(transition.id, transition.clone());
            }
            Op::SetTiering(config) => self.tiering = *config,
            Op::PutAccessStats(entries) => {
                for (slot, stats) in entries {
                    if self.slot_extent(*slot).is_some() {
                        self.temperature.update(*slot, |t| t.stats = *stats);
                    }
                }
            }
            Op::SetScrub(scrub) => self.scrub = *scrub,
            Op::Scrubbed { at_secs, extents } => {
                for id in extents {
                    if self.extents.contains_key(id) {
                        self.scrubbed.insert(*id, *at_secs);
                    }
                }
            }
            Op::SetXattr { ino, name, value } => match value {
                Some(value) if self.inodes.contains_key(ino) => {
                    self.xattrs.insert(*ino, name.clone(), value.clone());
                }
                Some(_) => {}
                None => {
                    self.xattrs.remove_inner(ino, name);
                    if self.xattrs.get(ino).is_some_and(BTreeMap::is_empty) {
                        self.xattrs.remove(ino);
                    }
                }
            },
            Op::FormatUpgraded { .. } | Op::Opened { .. } | Op::OpenedBy { .. } => {}
            Op::PutLayer { slot, extent, ranges } => {
                self.next_extent = self.next_extent.max(extent.id.0 + 1);
                if self.slot_extent(*slot).is_some() {
                    self.insert_extent(extent.clone());
                    self.layers.entry(*slot).or_default().push(Layer { extent: extent.id, ranges: ranges.clone() });
                    self.owe_to_offline(extent);
                } else {
                    freed.push(FreedExtent { id: extent.id, core: extent.core() });
                }
            }
            Op::DropLayers { slot, extents } => {
                if let Some(layers) = self.layers.get_mut(slot) {
                    let before = layers.len();
                    layers.retain(|layer| !extents.contains(&layer.extent));
                    let dropped = before - layers.len();
                    if layers.is_empty() {
                        self.layers.remove(slot);
                    }
                    let records: Vec<FreedExtent> = extents.iter().filter_map(|id| self.remove_extent(*id)).collect();
                    debug_assert_eq!(records.len(), dropped, "a dropped layer's extent outside its slot");
                    freed.extend(records);
                }
            }
            Op::ClassifyPass { at_secs, verdicts } => {
                self.note_pass(*at_secs);
                self.apply_verdicts(verdicts, Temperature::apply);
            }
            Op::ClassifyChanges { at_secs, changed } => {
                self.note_pass(*at_secs);
                self.repeating_passes += 1;
                let listed: BTreeSet<ChunkSlot> = changed.iter().map(|(slot, _)| *slot).collect();
                // Unmarked: the store implies these from `repeating_passes`.
                for (_, temperature) in self.temperature.held_mut_implied().filter(|(slot, _)| !listed.contains(slot)) {
                    temperature.repeat();
                }
                self.apply_verdicts(changed, Temperature::apply);
            }
            Op::ClassifyMore { changed } => self.apply_verdicts(changed, Temperature::replace_repeat),
        }
        for record in &freed {
            self.scrubbed.remove(&record.id);
            self.forget_owed(record.id, &[]);
        }
        freed
    }

    /// `child` lost a name in `parent`: a directory keeps `parent` if it is still named
    /// there (`second_names`), and has no parent otherwise.
    fn lose_name(&mut self, child: Ino, parent: Ino) {
        if self.dir_parents.get(&child) == Some(&parent) && !self.second_names.remove(&child) {
            self.dir_parents.remove(&child);
        }
    }

    /// Records a classification pass at `at_secs`; the newest `HISTORY_MAX` are kept.
    fn note_pass(&mut self, at_secs: i64) {
        self.passes.push_back(at_secs);
        while self.passes.len() > HISTORY_MAX {
            self.passes.pop_front();
        }
    }

    /// Stores a pass's verdicts on the chunks that still hold an extent, each with `store`
    /// (`Temperature::apply`, or `replace_repeat` for a pass's later records).
    fn apply_verdicts(&mut self, verdicts: &[(ChunkSlot, Verdict)], store: fn(&mut Temperature, &Verdict)) {
        for (slot, verdict) in verdicts {
            if self.slot_extent(*slot).is_some() {
                self.temperature.update(*slot, |t| store(t, verdict));
            }
        }
    }

    /// Removes the layers of `slot`, returning their extents' records.
    fn remove_layers(&mut self, slot: ChunkSlot) -> Vec<FreedExtent> {
        let layers = self.layers.remove(&slot).unwrap_or_default();
        layers.iter().filter_map(|layer| self.remove_extent(layer.extent)).collect()
    }

    /// The layers of chunk `slot` that a new layer over `ranges` would leave unread: each
    /// whose every byte the new layer or a layer newer than it covers. Dropping them
    /// (`Op::DropLayers`) changes nothing a read of the chunk returns, and keeps a chunk
    /// that is rewritten in the same places (a database's pages) from piling up layers
    /// until its next fold.
    pub fn shadowed_layers(&self, slot: ChunkSlot, ranges: &[(u32, u32)]) -> Vec<ExtentId> {
        let layers = self.layers.get(&slot).map(Vec::as_slice).unwrap_or_default();
        let mut cover = union(ranges, &[]);
        let mut shadowed = Vec::new();
        for layer in layers.iter().rev() {
            if layer.ranges.iter().all(|range| covers(&cover, *range)) {
                shadowed.push(layer.extent);
            } else {
                cover = union(&cover, &layer.ranges);
            }
        }
        shadowed.reverse();
        shadowed
    }

    /// The layers of chunk `slot`, oldest first, with their extents' records.
    pub fn slot_layers(&self, slot: ChunkSlot) -> Vec<(&Layer, &ExtentCore)> {
        let layers = self.layers.get(&slot).map(Vec::as_slice).unwrap_or_default();
        layers.iter().filter_map(|layer| Some((layer, self.extents.get(&layer.extent)?))).collect()
    }

    /// How many bytes chunk `slot` holds from its start: its extent's, or further where
    /// a layer reaches past it; `None` for a hole.
    pub fn slot_len(&self, slot: ChunkSlot) -> Option<u64> {
        let base = u64::from(self.slot_extent(slot)?.len);
        let layers = self.layers.get(&slot).map(Vec::as_slice).unwrap_or_default();
        Some(layers.iter().map(Layer::end).fold(base, u64::max))
    }

    /// Bytes of data file `ino` has stored: its chunks' extents and their layers.
    pub fn allocated_bytes(&self, ino: Ino) -> u64 {
        let len = |id: &ExtentId| self.extents.get(id).map_or(0, |r| u64::from(r.len));
        let chunks: u64 = self.file_extents.get(&ino).map_or(0, |m| m.values().map(len).sum());
        let slots = ChunkSlot { ino, index: 0 }..=ChunkSlot { ino, index: u64::MAX };
        let layers: u64 = self.layers.range(slots).flat_map(|(_, l)| l.iter().map(|l| len(&l.extent))).sum();
        chunks + layers
    }

    /// Every extent of file `ino` — each chunk's, and its layers' — with its chunk index.
    pub fn file_extent_ids(&self, ino: Ino) -> Vec<(u64, ExtentId)> {
        let mut ids: Vec<(u64, ExtentId)> =
            self.file_extents.get(&ino).into_iter().flat_map(|m| m.iter().map(|(i, id)| (*i, *id))).collect();
        let slots = ChunkSlot { ino, index: 0 }..=ChunkSlot { ino, index: u64::MAX };
        for (slot, layers) in self.layers.range(slots) {
            ids.extend(layers.iter().map(|layer| (slot.index, layer.extent)));
        }
        ids
    }

    /// Records `extents` as owed to `disk` — those that name a fragment there.
    fn owe(&mut self, disk: DiskId, extents: &[ExtentId]) {
        let named: Vec<ExtentId> = extents
            .iter()
            .filter(|id| self.extents.get(id).is_some_and(|r| r.fragments.contains(&disk)))
            .copied()
            .collect();
        if !named.is_empty() {
            self.owed.entry(disk).or_default().extend(named);
        }
    }

    /// Records `record`'s fragments named on offline disks as owed to them.
    fn owe_to_offline(&mut self, record: &ExtentRecord) {
        for disk in &record.fragments {
            if self.offline.contains_key(disk) {
                self.owed.entry(*disk).or_default().insert(record.id);
            }
        }
    }

    /// Drops what extent `id` is owed by every disk not in `kept`.
    fn forget_owed(&mut self, id: ExtentId, kept: &[DiskId]) {
        self.owed.retain(|disk, owed| {
            if !kept.contains(disk) {
                owed.remove(&id);
            }
            !owed.is_empty()
        });
    }

    /// Whether the state places block `name` (a fragment) on `disk`: anything else there
    /// is unreferenced.
    pub fn places(&self, disk: DiskId, name: crate::media::device::BlockName) -> bool {
        match name {
            crate::media::device::BlockName::Fragment { extent, index } => {
                self.extents.get(&extent).and_then(|r| r.fragments.get(usize::from(index))) == Some(&disk)
            }
            _ => false,
        }
    }

    /// Whether `disk` is in the pool and reachable (not offline).
    pub fn disk_online(&self, disk: DiskId) -> bool {
        self.disks.contains_key(&disk) && !self.offline.contains_key(&disk)
    }

    /// Whether fragments on `disk` can be read now: active or draining, and online.
    pub fn disk_readable(&self, disk: DiskId) -> bool {
        self.disks.get(&disk).is_some_and(|d| d.state.readable()) && !self.offline.contains_key(&disk)
    }

    /// Whether `disk` takes new fragments now: active and online.
    pub fn disk_writable(&self, disk: DiskId) -> bool {
        self.disks.get(&disk).is_some_and(|d| d.state == DiskState::Active) && !self.offline.contains_key(&disk)
    }

    /// Whether `disk` is offline and still waited for: its fragments are neither read
    /// nor rebuilt elsewhere until it returns or its grace period ends.
    pub fn disk_awaited(&self, disk: DiskId) -> bool {
        self.offline.contains_key(&disk) && self.disks.get(&disk).is_some_and(|d| d.state.readable())
    }

    /// The chunks whose whole temperature `txn` changes and memory does not hold: what
    /// must be read from the store before it is applied (`meta::paged::prefetch`).
    pub fn temperatures_wanted(&self, txn: &Transaction) -> Vec<ChunkSlot> {
        let slots = txn.ops.iter().flat_map(|op| -> Vec<ChunkSlot> {
            match op {
                Op::PutAccessStats(entries) => entries.iter().map(|(slot, _)| *slot).collect(),
                Op::ClassifyPass { verdicts: slots, .. }
                | Op::ClassifyChanges { changed: slots, .. }
                | Op::ClassifyMore { changed: slots } => slots.iter().map(|(slot, _)| *slot).collect(),
                _ => Vec::new(),
            }
        });
        let wanted: BTreeSet<ChunkSlot> = self.temperature.wanted(slots).collect();
        wanted.into_iter().collect()
    }

    /// Applies every op of `txn`, returning all freed extents. The temperatures it
    /// changes are held (`temperatures_wanted` is empty).
    pub fn apply_transaction(&mut self, txn: &Transaction) -> Vec<FreedExtent> {
        debug_assert!(self.temperatures_wanted(txn).is_empty(), "temperatures not read in before {txn:?}");
        txn.ops.iter().flat_map(|op| self.apply(op)).collect()
    }

    /// The disks that hold metadata journal replicas: the first three active, online disks
    /// by id (all of them when fewer).
    pub fn journal_disks(&self) -> Vec<DiskId> {
        self.disks.values().filter(|d| self.disk_writable(d.id)).map(|d| d.id).take(JOURNAL_REPLICAS).collect()
    }

    /// The extent in a chunk slot, if any.
    /// Every extent's chunk (its name for people; see `ChunkSlot`'s `Display`).
    pub fn extent_slots(&self) -> BTreeMap<ExtentId, ChunkSlot> {
        self.slots().collect()
    }

    /// Every extent held by a file, with the chunk holding it.
    fn slots(&self) -> impl Iterator<Item = (ExtentId, ChunkSlot)> + '_ {
        let layered =
            self.layers.iter().flat_map(|(slot, layers)| layers.iter().map(move |layer| (layer.extent, *slot)));
        self.file_extents
            .iter()
            .flat_map(|(ino, map)| map.iter().map(|(index, id)| (*id, ChunkSlot { ino: *ino, index: *index })))
            .chain(layered)
    }

    /// An extent's name for people (its chunk; see `ChunkSlot`'s `Display`), or its
    /// internal id while no file holds it. A scan: for error paths and reports of one.
    pub fn extent_name(&self, id: ExtentId) -> String {
        let slot = self.slots().find(|(extent, _)| *extent == id).map(|(_, slot)| slot);
        slot.map_or_else(|| format!("(unreferenced) {id}"), |slot| slot.to_string())
    }

    /// Whether `slot` holds a young inline extent (`ExtentRecord::is_young_inline`).
    pub fn is_young_inline(&self, slot: ChunkSlot) -> bool {
        self.slot_extent(slot).is_some_and(ExtentCore::is_young_inline)
    }

    /// Every chunk holding a young inline extent: the records are visited in order, and
    /// the chunks walked only when some are young (rarely: after a crash).
    pub fn young_inline_slots(&self) -> BTreeSet<ChunkSlot> {
        let young: BTreeSet<ExtentId> =
            self.extents.iter().filter(|(_, r)| r.is_young_inline()).map(|(id, _)| id).collect();
        if young.is_empty() {
            return BTreeSet::new();
        }
        self.slots()
            .filter(|(id, slot)| young.contains(id) && self.is_young_inline(*slot))
            .map(|(_, slot)| slot)
            .collect()
    }

    /// The extent chunk `slot` holds.
    pub fn slot_extent_id(&self, slot: ChunkSlot) -> Option<ExtentId> {
        self.file_extents.get(&slot.ino).and_then(|m| m.get(&slot.index)).copied()
    }

    /// The core of the extent chunk `slot` holds (its whole record: `Pool::slot_record`).
    pub fn slot_extent(&self, slot: ChunkSlot) -> Option<&ExtentCore> {
        self.file_extents.get(&slot.ino).and_then(|m| m.get(&slot.index)).and_then(|id| self.extents.get(id))
    }

    /// The policy that governs new data of `ino`: its own, else the pool default.
    pub fn effective_policy(&self, ino: Ino) -> Policy {
        self.inodes.get(&ino).and_then(|i| i.policy).unwrap_or(self.default_policy)
    }

    /// Checks the structural invariants, returning the first violation found.
    pub fn check(&self) -> Result<(), String> {
        if self.dir_parents != self.scanned_dir_parents() {
            return Err("the directory parent index differs from a scan of the entries".into());
        }
        if let Some(dir) = self.second_names.first() {
            return Err(format!("directory {dir:?} is named twice in its parent between transactions"));
        }
        if self.extent_index != self.scanned_extent_index() {
            return Err("the extent index differs from a scan of the extent records".into());
        }
        let mut links: BTreeMap<Ino, u32> = BTreeMap::new();
        for (parent, entries) in &self.dirs {
            if self.inodes.get(parent).map(|i| i.kind) != Some(InodeKind::Directory) {
                return Err(format!("directory map for {parent:?}, which is not a live directory"));
            }
            for (name, ino) in entries {
                let Some(child) = self.inodes.get(ino) else {
                    return Err(format!(
                        "entry {:?} in {parent:?} names missing {ino:?}",
                        String::from_utf8_lossy(name)
                    ));
                };
                *links.entry(*ino).or_default() += 1;
                if child.kind == InodeKind::Directory {
                    *links.entry(*parent).or_default() += 1;
                }
            }
        }
        for inode in self.inodes.values() {
            let entries = links.get(&inode.ino).copied().unwrap_or(0);
            let expected = match inode.kind {
                InodeKind::Directory => entries + 1 + u32::from(inode.ino == Ino::ROOT),
                _ => entries,
            };
            if inode.nlink != expected {
                return Err(format!("{:?} has nlink {} but {} links", inode.ino, inode.nlink, expected));
            }
        }
        let mut referenced = BTreeSet::new();
        for (ino, map) in &self.file_extents {
            if self.inodes.get(ino).map(|i| i.kind) != Some(InodeKind::File) {
                return Err(format!("extent map for {ino:?}, which is not a live file"));
            }
            for id in map.values() {
                if !referenced.insert(*id) {
                    return Err(format!("extent {id} referenced twice"));
                }
                if !self.extents.contains_key(id) {
                    return Err(format!("extent {id} referenced but has no record"));
                }
            }
        }
        for (slot, layers) in &self.layers {
            if self.slot_extent(*slot).is_none() {
                return Err(format!("layers kept for chunk {slot}, which holds no extent"));
            }
            if layers.is_empty() {
                return Err(format!("an empty layer list kept for chunk {slot}"));
            }
            for layer in layers {
                if !referenced.insert(layer.extent) {
                    return Err(format!("extent {} referenced twice", layer.extent));
                }
                let Some(record) = self.extents.get(&layer.extent) else {
                    return Err(format!("layer extent {} of chunk {slot} has no record", layer.extent));
                };
                if !layer.well_formed(record.len) {
                    return Err(format!(
                        "layer extent {} of chunk {slot} has ranges {:?} that do not fit its {} bytes",
                        layer.extent, layer.ranges, record.len
                    ));
                }
            }
        }
        for (ino, attributes) in &self.xattrs {
            if !self.inodes.contains_key(ino) {
                return Err(format!("extended attributes kept for {ino:?}, which does not exist"));
            }
            if attributes.is_empty() {
                return Err(format!("an empty attribute map kept for {ino:?}"));
            }
        }
        for inode in self.inodes.values() {
            let is_device = matches!(inode.kind, InodeKind::CharDevice | InodeKind::BlockDevice);
            if inode.rdev != 0 && !is_device {
                return Err(format!("{:?} is a {:?} but has a device number", inode.ino, inode.kind));
            }
            if !inode.kind.holds_data() && inode.kind != InodeKind::Symlink && inode.size != 0 {
                return Err(format!("{:?} is a {:?} but has size {}", inode.ino, inode.kind, inode.size));
            }
        }
        if let Some(id) = self.scrubbed.keys().find(|id| !self.extents.contains_key(id)) {
            return Err(format!("scrub time kept for extent {id}, which does not exist"));
        }
        let held = self.temperature.held_all().filter(|(_, t)| t.is_some()).map(|(slot, _)| *slot);
        if let Some(slot) =
            self.temperature.classes().map(|(slot, _)| slot).chain(held).find(|slot| self.slot_extent(*slot).is_none())
        {
            return Err(format!("temperature kept for {slot:?}, which holds no extent"));
        }
        if let Some(disk) = self.offline.keys().find(|d| !self.disks.get(d).is_some_and(|d| d.state.readable())) {
            return Err(format!("disk {disk} is offline but not active or draining"));
        }
        for (disk, extents) in &self.owed {
            if extents.is_empty() {
                return Err(format!("an empty owed set kept for disk {disk}"));
            }
            if !self.disks.get(disk).is_some_and(|d| d.state.readable()) {
                return Err(format!("extents owed to disk {disk}, which is neither active nor draining"));
            }
            if let Some(id) =
                extents.iter().find(|id| !self.extents.get(id).is_some_and(|r| r.fragments.contains(disk)))
            {
                return Err(format!("extent {id} owed to disk {disk}, which holds none of its fragments"));
            }
        }
        for (id, record) in self.extents.held_all() {
            if self.extents.get(id) != Some(&record.core()) || record.id != *id {
                return Err(format!("extent {id}'s record held whole is not the one its core stands for"));
            }
            let folded_late = record.history.iter().skip(1).any(|c| matches!(c.cause, ChangeCause::Earlier(_)));
            if record.history.len() > POLICY_HISTORY_MAX || folded_late {
                return Err(format!(
                    "extent {}'s policy history is {} long, or folded past its first entry",
                    record.id,
                    record.history.len()
                ));
            }
            if record.is_inline() != record.inline.is_some() {
                return Err(format!(
                    "extent {} of codec {:?} held with data {}",
                    id,
                    record.codec,
                    record.inline.is_some()
                ));
            }
        }
        for (id, record) in self.extents.iter() {
            if !referenced.contains(&id) {
                return Err(format!("extent {id} has a record but no reference"));
            }
            if record.is_inline() {
                if !record.fragments.is_empty() {
                    return Err(format!("inline extent {id} also names fragments"));
                }
                continue;
            }
            let distinct: BTreeSet<_> = record.fragments.iter().collect();
            if distinct.len() != record.fragments.len() || record.fragments.len() != record.policy.width() {
                return Err(format!("extent {id} fragments {:?} break its policy {}", record.fragments, record.policy));
            }
        }
        Ok(())
    }
}

/// Whether `range` (`(offset, len)`) lies wholly inside the union of `cover` (sorted,
/// disjoint, touching ranges merged, as `union` returns).
fn covers(cover: &[(u32, u32)], (offset, len): (u32, u32)) -> bool {
    let end = u64::from(offset) + u64::from(len);
    let at = cover.partition_point(|(start, _)| *start <= offset);
    at > 0 && {
        let (start, covered) = cover[at - 1];
        u64::from(start) + u64::from(covered) >= end
    }
}

/// The union of two sets of `(offset, len)` ranges, sorted, with touching or overlapping
/// ranges merged into one.
fn union(a: &[(u32, u32)], b: &[(u32, u32)]) -> Vec<(u32, u32)> {
    let mut all: Vec<(u64, u64)> =
        a.iter().chain(b).map(|(offset, len)| (u64::from(*offset), u64::from(*offset) + u64::from(*len))).collect();
    all.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(all.len());
    for (low, high) in all {
        match merged.last_mut() {
            Some(last) if low <= last.1 => last.1 = last.1.max(high),
            _ => merged.push((low, high)),
        }
    }
    // Ranges lie within a chunk (at most 1 MiB), so each end fits a u32.
    merged.into_iter().map(|(low, high)| (low as u32, (high - low) as u32)).collect()
}

/// How many disks carry the metadata journal.
pub const JOURNAL_REPLICAS: usize = 3;

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::media::codec::CodecId;
    use thin_vec::ThinVec;

    const SLOT: ChunkSlot = ChunkSlot { ino: Ino(2), index: 0 };

    fn inline(id: u64, data: Vec<u8>) -> ExtentRecord {
        ExtentRecord {
            id: ExtentId(id),
            len: data.len() as u32,
            hash: *blake3::hash(&data).as_bytes(),
            policy: Policy::Replicate { copies: 1 },
            codec: CodecId::Inline,
            fragments: Fragments::new(),
            inline: Some(data.into()),
            history: ThinVec::new(),
        }
    }

    /// A state whose chunk `SLOT` holds `base` inline.
    fn state_with(base: &[u8]) -> MetaState {
        let mut state = MetaState::new(Uuid::nil(), Policy::Replicate { copies: 1 }, WallTime::default());
        state.apply(&Op::SetExtent { ino: SLOT.ino, index: SLOT.index, extent: Some(inline(1, base.to_vec())) });
        state
    }

    /// What the chunk reads as: its extent with each layer laid over it in turn.
    fn contents(state: &MetaState) -> Vec<u8> {
        let data = |id: ExtentId| state.extents.held(&id).flatten().and_then(|r| r.inline.clone()).unwrap_or_default();
        let mut chunk = state.slot_extent_id(SLOT).map(data).unwrap_or_default().to_vec();
        for (layer, _) in state.slot_layers(SLOT) {
            layer.lay_over(&mut chunk, &data(layer.extent));
        }
        chunk
    }

    /// Lays `(ranges, fill)` over `SLOT` as extent `id`, dropping what it shadows when
    /// `drop` is set; returns the records the transaction freed.
    fn lay(state: &mut MetaState, id: u64, ranges: &[(u32, u32)], fill: u8, drop: bool) -> Vec<FreedExtent> {
        let len: u32 = ranges.iter().map(|(_, len)| len).sum();
        let shadowed = state.shadowed_layers(SLOT, ranges);
        let mut ops =
            vec![Op::PutLayer { slot: SLOT, extent: inline(id, vec![fill; len as usize]), ranges: ranges.to_vec() }];
        if drop && !shadowed.is_empty() {
            ops.push(Op::DropLayers { slot: SLOT, extents: shadowed });
        }
        state.apply_transaction(&Transaction { ops })
    }

    #[test]
    fn a_layer_rewriting_the_same_pages_drops_the_one_before_and_frees_it() {
        let mut state = state_with(&[0u8; 16384]);
        lay(&mut state, 2, &[(0, 4096), (8192, 4096)], 1, true);
        assert!(lay(&mut state, 3, &[(0, 4096)], 2, true).is_empty(), "half of layer 2 is still read");
        let freed = lay(&mut state, 4, &[(8192, 4096)], 3, true);
        assert_eq!(freed.iter().map(|r| r.id).collect::<Vec<_>>(), vec![ExtentId(2)], "3 and 4 cover all of 2");
        assert_eq!(state.layers[&SLOT].iter().map(|l| l.extent).collect::<Vec<_>>(), vec![ExtentId(3), ExtentId(4)]);
        assert!(!state.extents.contains_key(&ExtentId(2)));
        let freed = lay(&mut state, 5, &[(0, 16384)], 4, true);
        assert_eq!(freed.len(), 2);
        assert_eq!(state.layers[&SLOT].len(), 1);
        assert_eq!(contents(&state), vec![4u8; 16384]);
    }

    #[test]
    fn a_layer_touching_but_not_covering_shadows_nothing() {
        let mut state = state_with(&[0u8; 8192]);
        lay(&mut state, 2, &[(100, 200)], 1, true);
        assert!(state.shadowed_layers(SLOT, &[(0, 100), (300, 50)]).is_empty());
        assert!(state.shadowed_layers(SLOT, &[(101, 300)]).is_empty());
        assert_eq!(state.shadowed_layers(SLOT, &[(0, 200), (200, 100)]), vec![ExtentId(2)], "touching ranges join");
    }

    #[test]
    fn a_layer_is_touched_by_appends_and_rewrites_not_by_writes_elsewhere() {
        let layer = Layer { extent: ExtentId(2), ranges: vec![(4096, 4096), (16384, 100)] };
        assert!(layer.touched_by(&[(8192, 4096)]), "an append at a range's end");
        assert!(layer.touched_by(&[(0, 4096)]), "a write ending where a range starts");
        assert!(layer.touched_by(&[(5000, 10)]), "a rewrite inside a range");
        assert!(layer.touched_by(&[(8192, 8192)]), "a write bridging two ranges");
        assert!(!layer.touched_by(&[(12288, 10)]), "a write between the ranges");
        assert!(!layer.touched_by(&[(8192, 10), (40000, 10)]), "one range touching, one not");
    }

    #[test]
    fn dropping_a_layer_the_slot_no_longer_holds_changes_nothing() {
        let mut state = state_with(&[0u8; 4096]);
        lay(&mut state, 2, &[(0, 10)], 1, true);
        let before = state.clone();
        assert!(state.apply(&Op::DropLayers { slot: SLOT, extents: vec![ExtentId(9)] }).is_empty());
        assert_eq!(state, before);
    }

    proptest! {
        /// A layer merged with a newer one reads as the two laid over the chunk in turn.
        #[test]
        fn a_merged_layer_reads_as_the_two_it_replaces(
            chunk_len in 0usize..3000,
            older in proptest::collection::vec((0u32..4000, 1u32..600), 1..4),
            newer in proptest::collection::vec((0u32..4000, 1u32..600), 1..4),
        ) {
            let older = Layer { extent: ExtentId(1), ranges: union(&older, &[]) };
            let newer = union(&newer, &[]);
            let old_bytes: Vec<u8> = (0..older.ranges.iter().map(|r| r.1 as usize).sum::<usize>()).map(|i| (i % 97) as u8 + 1).collect();
            let new_bytes: Vec<u8> = (0..newer.iter().map(|r| r.1 as usize).sum::<usize>()).map(|i| (i % 89) as u8 + 100).collect();
            let base: Vec<u8> = (0..chunk_len).map(|i| (i % 7) as u8).collect();
            let mut both = base.clone();
            older.lay_over(&mut both, &old_bytes);
            Layer { extent: ExtentId(2), ranges: newer.clone() }.lay_over(&mut both, &new_bytes);
            let (ranges, bytes) = older.merged_with(&old_bytes, &newer, &new_bytes);
            let merged = Layer { extent: ExtentId(3), ranges };
            prop_assert!(merged.well_formed(bytes.len() as u32));
            let mut once = base;
            merged.lay_over(&mut once, &bytes);
            prop_assert_eq!(once, both);
        }

        /// Whatever the layers, dropping the shadowed ones never changes what the chunk
        /// reads as, and never keeps more layers than not dropping them.
        #[test]
        fn dropping_shadowed_layers_never_changes_the_chunk(
            base_len in 1usize..3000,
            layers in proptest::collection::vec(
                proptest::collection::vec((0u32..4000, 1u32..600), 1..4), 1..12),
        ) {
            let base: Vec<u8> = (0..base_len).map(|i| (i % 251) as u8).collect();
            let (mut dropping, mut keeping) = (state_with(&base), state_with(&base));
            for (n, wanted) in layers.iter().enumerate() {
                let mut ranges = union(wanted, &[]);
                ranges.retain(|(_, len)| *len > 0);
                let id = n as u64 + 2;
                let fill = n as u8 + 1;
                let freed = lay(&mut dropping, id, &ranges, fill, true);
                lay(&mut keeping, id, &ranges, fill, false);
                prop_assert_eq!(contents(&dropping), contents(&keeping));
                prop_assert!(dropping.slot_layers(SLOT).len() <= keeping.slot_layers(SLOT).len());
                for record in freed {
                    prop_assert!(!dropping.extents.contains_key(&record.id));
                    prop_assert!(dropping.layers[&SLOT].iter().all(|l| l.extent != record.id));
                }
            }
        }
    }
}
