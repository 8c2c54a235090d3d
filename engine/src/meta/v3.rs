//! Metadata format 3, frozen: the state checkpoints held before format 4 added layers
//! (small overwrites laid over a chunk's extent), and its conversion to the current state.
//!
//! Contract: decoding a format-3 checkpoint body with these types and converting it gives
//! exactly the state format 3 described, with no chunk layered; nothing here is ever
//! written. Format-3 journal records decode as the current ones: format 4 only appended
//! an `Op` variant, so every format-3 op means the same.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::base::clock::WallTime;
use crate::base::policy::Policy;
use crate::media::device::ExtentId;
use crate::meta::chain::Checkpoint;
use crate::meta::state::{
    Availability, ChunkSlot, DiskId, DiskRecord, ExtentRecord, Ino, Inode, MetaState, OfflineRecord, PolicyTransition,
};
use crate::temperature::config::TieringConfig;
use crate::temperature::tracker::Temperature;

/// The format this module reads.
pub const FORMAT: u8 = 3;

/// The format-3 state: no layers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetaStateV3 {
    pub pool_id: Uuid,
    pub default_policy: Policy,
    pub disks: BTreeMap<DiskId, DiskRecord>,
    pub inodes: BTreeMap<Ino, Inode>,
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
    pub xattrs: BTreeMap<Ino, BTreeMap<Vec<u8>, Vec<u8>>>,
    pub offline: BTreeMap<DiskId, OfflineRecord>,
    pub disk_changed: BTreeMap<DiskId, WallTime>,
    pub owed: BTreeMap<DiskId, BTreeSet<ExtentId>>,
    pub availability: Availability,
}

impl From<MetaStateV3> for MetaState {
    fn from(old: MetaStateV3) -> MetaState {
        MetaState {
            pool_id: old.pool_id,
            default_policy: old.default_policy,
            disks: old.disks,
            inodes: old.inodes.into(),
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
            xattrs: old.xattrs.into(),
            offline: old.offline,
            disk_changed: old.disk_changed,
            owed: old.owed,
            availability: old.availability,
            layers: Default::default(),
            dir_parents: BTreeMap::new(),
            second_names: Default::default(),
            extent_index: Default::default(),
            repeating_passes: 0,
        }
    }
}

/// A format-3 checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointV3 {
    pub seq: u64,
    pub tip_hash: [u8; 32],
    pub state: MetaStateV3,
}

impl From<CheckpointV3> for Checkpoint {
    fn from(old: CheckpointV3) -> Checkpoint {
        Checkpoint { seq: old.seq, tip_hash: old.tip_hash, state: old.state.into() }
    }
}
