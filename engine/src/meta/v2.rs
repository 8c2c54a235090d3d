//! Metadata format 2, frozen: the state checkpoints held before format 3 added disk
//! reachability (offline disks, state change times, the write-intent map) and the
//! availability settings, and its conversion to the current state.
//!
//! Contract: decoding a format-2 checkpoint body with these types and converting it gives
//! exactly the state format 2 described, with every disk reachable and nothing owed;
//! nothing here is ever written. Format-2 journal records decode as the current ones:
//! format 3 only appended `Op` variants, so every format-2 op means the same.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::base::policy::Policy;
use crate::media::device::ExtentId;
use crate::meta::chain::Checkpoint;
use crate::meta::state::{
    Availability, ChunkSlot, DiskId, DiskRecord, ExtentRecord, Ino, Inode, MetaState, PolicyTransition,
};
use crate::temperature::config::TieringConfig;
use crate::temperature::tracker::Temperature;

/// The format this module reads.
pub const FORMAT: u8 = 2;

/// The format-2 state: no reachability, no write-intent map, no availability settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetaStateV2 {
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
}

impl From<MetaStateV2> for MetaState {
    fn from(old: MetaStateV2) -> MetaState {
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
            offline: BTreeMap::new(),
            disk_changed: BTreeMap::new(),
            owed: BTreeMap::new(),
            availability: Availability::default(),
            layers: Default::default(),
            dir_parents: BTreeMap::new(),
            second_names: Default::default(),
            extent_index: Default::default(),
            repeating_passes: 0,
        }
    }
}

/// A format-2 checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointV2 {
    pub seq: u64,
    pub tip_hash: [u8; 32],
    pub state: MetaStateV2,
}

impl From<CheckpointV2> for Checkpoint {
    fn from(old: CheckpointV2) -> Checkpoint {
        Checkpoint { seq: old.seq, tip_hash: old.tip_hash, state: old.state.into() }
    }
}
