//! Metadata format 1, frozen: the structures journal records and checkpoints had before
//! format 2 added special files, extended attributes and ACLs, and their conversion to
//! the current ones.
//!
//! Contract: decoding a format-1 body with these types and converting it gives exactly
//! the state and ops format 1 described; nothing here is ever written. Types that did not
//! change between the formats (`ExtentRecord`, `DiskRecord`, the tiering and scrub state,
//! …) are shared with `state`: changing one of them is a new format, with its own frozen
//! copy here.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::base::clock::WallTime;
use crate::base::policy::Policy;
use crate::media::device::ExtentId;
use crate::meta::chain::{Checkpoint, JournalRecord};
use crate::meta::state::{
    ChunkSlot, DiskId, DiskRecord, DiskState, ExtentRecord, Ino, Inode, InodeKind, MetaState, Op, PolicyTransition,
    Transaction,
};
use crate::temperature::access::AccessStats;
use crate::temperature::config::TieringConfig;
use crate::temperature::tracker::{Temperature, Verdict};

/// The format this module reads.
pub const FORMAT: u8 = 1;

/// A format-1 inode: no device number. (Its `InodeKind` is the current enum: format 2
/// only appended variants, so every format-1 index means the same kind.)
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InodeV1 {
    pub ino: Ino,
    pub kind: InodeKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub size: u64,
    pub atime: WallTime,
    pub mtime: WallTime,
    pub ctime: WallTime,
    pub policy: Option<Policy>,
    pub symlink_target: Vec<u8>,
}

impl From<InodeV1> for Inode {
    fn from(old: InodeV1) -> Inode {
        Inode {
            ino: old.ino,
            kind: old.kind,
            mode: old.mode,
            uid: old.uid,
            gid: old.gid,
            nlink: old.nlink,
            size: old.size,
            atime: old.atime,
            mtime: old.mtime,
            ctime: old.ctime,
            policy: old.policy,
            symlink_target: old.symlink_target,
            rdev: 0,
        }
    }
}

/// The format-1 state: no extended attributes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetaStateV1 {
    pub pool_id: Uuid,
    pub default_policy: Policy,
    pub disks: BTreeMap<DiskId, DiskRecord>,
    pub inodes: BTreeMap<Ino, InodeV1>,
    pub dirs: BTreeMap<Ino, BTreeMap<Vec<u8>, Ino>>,
    pub file_extents: BTreeMap<Ino, BTreeMap<u64, ExtentId>>,
    pub extents: BTreeMap<ExtentId, ExtentRecord>,
    pub next_ino: u64,
    pub next_extent: u64,
    pub next_disk: u32,
    pub transitions: BTreeMap<u64, PolicyTransition>,
    pub tiering: TieringConfig,
    pub temperature: BTreeMap<ChunkSlot, Temperature>,
    pub passes: VecDeque<i64>,
    pub scrub: crate::meta::scrub_state::ScrubState,
    pub scrubbed: BTreeMap<ExtentId, i64>,
}

impl From<MetaStateV1> for MetaState {
    fn from(old: MetaStateV1) -> MetaState {
        MetaState {
            pool_id: old.pool_id,
            default_policy: old.default_policy,
            disks: old.disks,
            inodes: old.inodes.into_iter().map(|(ino, inode)| (ino, inode.into())).collect(),
            dirs: old.dirs.into(),
            file_extents: old.file_extents.into(),
            extents: old.extents.into(),
            next_ino: old.next_ino,
            next_extent: old.next_extent,
            next_disk: old.next_disk,
            transitions: old.transitions,
            tiering: old.tiering,
            temperature: old.temperature.into(),
            passes: old.passes,
            scrub: old.scrub,
            scrubbed: old.scrubbed.into(),
            xattrs: Default::default(),
            offline: BTreeMap::new(),
            disk_changed: BTreeMap::new(),
            owed: BTreeMap::new(),
            availability: crate::meta::state::Availability::default(),
            layers: Default::default(),
            dir_parents: BTreeMap::new(),
            second_names: Default::default(),
            extent_index: Default::default(),
            repeating_passes: 0,
        }
    }
}

/// The format-1 ops, in their format-1 order (the variant index is the encoding).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum OpV1 {
    AddDisk(DiskRecord),
    PutInode(InodeV1),
    RemoveInode(Ino),
    Link { parent: Ino, name: Vec<u8>, ino: Ino },
    Unlink { parent: Ino, name: Vec<u8> },
    SetExtent { ino: Ino, index: u64, extent: Option<ExtentRecord> },
    SetDefaultPolicy(Policy),
    PutExtent(ExtentRecord),
    SetDiskState { disk: DiskId, state: DiskState },
    PutTransition(PolicyTransition),
    SetTiering(TieringConfig),
    PutAccessStats(Vec<(ChunkSlot, AccessStats)>),
    ClassifyPass { at_secs: i64, verdicts: Vec<(ChunkSlot, Verdict)> },
    SetScrub(crate::meta::scrub_state::ScrubState),
    Scrubbed { at_secs: i64, extents: Vec<ExtentId> },
}

impl From<OpV1> for Op {
    fn from(old: OpV1) -> Op {
        match old {
            OpV1::AddDisk(disk) => Op::AddDisk(disk),
            OpV1::PutInode(inode) => Op::PutInode(inode.into()),
            OpV1::RemoveInode(ino) => Op::RemoveInode(ino),
            OpV1::Link { parent, name, ino } => Op::Link { parent, name, ino },
            OpV1::Unlink { parent, name } => Op::Unlink { parent, name },
            OpV1::SetExtent { ino, index, extent } => Op::SetExtent { ino, index, extent },
            OpV1::SetDefaultPolicy(policy) => Op::SetDefaultPolicy(policy),
            OpV1::PutExtent(record) => Op::PutExtent(record),
            OpV1::SetDiskState { disk, state } => Op::SetDiskState { disk, state },
            OpV1::PutTransition(transition) => Op::PutTransition(transition),
            OpV1::SetTiering(config) => Op::SetTiering(config),
            OpV1::PutAccessStats(stats) => Op::PutAccessStats(stats),
            OpV1::ClassifyPass { at_secs, verdicts } => Op::ClassifyPass { at_secs, verdicts },
            OpV1::SetScrub(scrub) => Op::SetScrub(scrub),
            OpV1::Scrubbed { at_secs, extents } => Op::Scrubbed { at_secs, extents },
        }
    }
}

/// A format-1 journal record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JournalRecordV1 {
    pub seq: u64,
    pub prev_hash: [u8; 32],
    pub ops: Vec<OpV1>,
}

impl From<JournalRecordV1> for JournalRecord {
    fn from(old: JournalRecordV1) -> JournalRecord {
        JournalRecord {
            seq: old.seq,
            prev_hash: old.prev_hash,
            txn: Transaction { ops: old.ops.into_iter().map(Op::from).collect() },
        }
    }
}

/// A format-1 checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointV1 {
    pub seq: u64,
    pub tip_hash: [u8; 32],
    pub state: MetaStateV1,
}

impl From<CheckpointV1> for Checkpoint {
    fn from(old: CheckpointV1) -> Checkpoint {
        Checkpoint { seq: old.seq, tip_hash: old.tip_hash, state: old.state.into() }
    }
}
