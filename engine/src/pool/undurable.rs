//! What commits leave not yet durable: the ops, the extents and fragments they freed,
//! the disks that took fragments — everything the next barrier (`crate::data::durability`)
//! must make durable, in the order its crash contract needs.

use std::collections::BTreeSet;

use crate::media::device::{BlockName, ExtentId};
use crate::meta::state::{DiskId, FreedExtent, Op};

/// Everything committed in memory that the next barrier must make durable.
#[derive(Default)]
pub(crate) struct Undurable {
    /// Ops of the commits since the last barrier, in commit order.
    pub(crate) ops: Vec<Op>,
    /// Extents freed (or written and never committed) whose fragments await deletion.
    pub(crate) frees: Vec<FreedExtent>,
    /// Fragments of freed extents whose freeing record is durable, left for a thread of
    /// their own to delete once the shared barrier that freed them returned (or, while
    /// one is still deleting, for the next shared barrier to delete outside the lock,
    /// beside its disk syncs: `crate::data::durability::sync_shared`): the `fsync` that
    /// freed them does not wait for their punches. An extent's id is never used again,
    /// so nothing can have rewritten them meanwhile. Each with its block's bytes, which
    /// `df` already counts as free.
    pub(crate) deferred_deletes: Vec<(DiskId, BlockName, u64)>,
    /// The thread deleting what earlier shared barriers freed, started as soon as the
    /// barrier that made their freeing durable returned
    /// (`crate::data::durability::sync_shared`); `Pool::sync` waits for it.
    pub(crate) deleting: Option<std::thread::JoinHandle<()>>,
    /// Bytes on each disk that the deleting thread has yet to start deleting: free as far
    /// as `df` goes, as those of `deferred_deletes` (a disk's count drops as its
    /// deletion starts, when the disk stops counting them used).
    pub(crate) deleting_bytes: std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<DiskId, u64>>>,
    /// Single fragments a repair or drain moved away from a disk that still works.
    pub(crate) fragment_frees: Vec<(DiskId, BlockName)>,
    /// Disks that took fragment writes since the last barrier.
    pub(crate) fragment_disks: BTreeSet<DiskId>,
    /// Disks whose sync failed outside the pool's lock since the last barrier
    /// (`crate::data::durability::sync_shared`): what they were given may be lost even if
    /// a later sync succeeds (a failed writeback is reported once), so the barrier treats
    /// them as failed.
    pub(crate) sync_failed: BTreeSet<(DiskId, String)>,
    /// Extents written since the last barrier.
    pub(crate) extents: BTreeSet<ExtentId>,
    /// The journal disks that hold the durable chain (empty before the first barrier).
    pub(crate) journal_set: Vec<DiskId>,
    /// Set while a barrier runs: a commit made meanwhile (a disk marked failed) waits
    /// for the next barrier instead of starting one inside this one.
    pub(crate) in_barrier: bool,
}

impl Undurable {
    pub(crate) fn is_empty(&self) -> bool {
        self.ops.is_empty()
            && self.frees.is_empty()
            && self.fragment_frees.is_empty()
            && self.fragment_disks.is_empty()
            && self.sync_failed.is_empty()
    }
}
