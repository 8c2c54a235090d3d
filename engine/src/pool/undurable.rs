//! What commits leave not yet durable: the ops, the extents and fragments they freed,
//! the disks that took fragments — everything the next barrier (`crate::data::durability`)
//! must make durable, in the order its crash contract needs.

use std::collections::BTreeSet;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::base::error::Result;
use crate::media::device::{BlockName, ExtentId};
use crate::meta::journal::{JournalTip, ReplicaFailure};
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
    /// beside its disk syncs: `crate::data::shared_barrier::sync_shared`): the `fsync` that
    /// freed them does not wait for their punches. An extent's id is never used again,
    /// so nothing can have rewritten them meanwhile. Each with its block's bytes, which
    /// `df` already counts as free.
    pub(crate) deferred_deletes: Vec<(DiskId, BlockName, u64)>,
    /// The thread deleting what earlier shared barriers freed, started as soon as the
    /// barrier that made their freeing durable returned
    /// (`crate::data::shared_barrier::sync_shared`); `Pool::sync` waits for it.
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
    /// (`crate::data::shared_barrier::sync_shared`): what they were given may be lost even if
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
    /// The record on its way to the journal with the pool's lock released, if any
    /// (`crate::data::shared_barrier`). At most one: the next record chains on it.
    pub(crate) flight: Option<Flight>,
    /// The thread that runs shared barriers when commits ask for one, if the pool has one
    /// (`crate::data::shared_barrier::BarrierThread`).
    pub(crate) signal: Option<Arc<BarrierSignal>>,
    /// A checkpoint came due while ops were waiting: the next barrier writes it.
    pub(crate) checkpoint_owed: bool,
}

/// How far past `PoolOptions::barrier_after_ops` the ops may pile up while the barrier
/// thread is busy before a commit runs a barrier itself: bounds the ops waiting in
/// memory and what a crash loses.
pub(crate) const BACKLOG_FACTOR: usize = 4;

/// What a barrier took from `Undurable` for a record written with the pool's lock
/// released: put back as it was (`Undurable::put_back`) if the record is never written.
pub(crate) struct Taken {
    /// The record's ops, in commit order.
    pub(crate) ops: Vec<Op>,
    pub(crate) extents: BTreeSet<ExtentId>,
    pub(crate) fragment_disks: BTreeSet<DiskId>,
    pub(crate) frees: Vec<FreedExtent>,
    pub(crate) fragment_frees: Vec<(DiskId, BlockName)>,
    pub(crate) record: RecordSent,
}

/// A journal record as it goes to the replicas: what publishing it needs once they answer.
pub(crate) struct RecordSent {
    /// The tip the record makes, once durable.
    pub(crate) tip: JournalTip,
    /// The record's encoded length.
    pub(crate) bytes: u64,
    /// The journal disks the chain was on when the record was encoded.
    pub(crate) journal_set: Vec<DiskId>,
    /// The disks the record goes to, in the order of the replica results.
    pub(crate) targets: Vec<DiskId>,
    /// Replicas that must hold the record before it is acknowledged.
    pub(crate) required: usize,
}

/// A record on its way: what it took, and the slot its I/O reports to. The thread doing
/// the I/O holds the slot's lock from before the flight is visible until it reports, so
/// whoever locks the slot waits for the I/O to end.
pub(crate) struct Flight {
    pub(crate) taken: Taken,
    pub(crate) slot: Arc<Mutex<FlightSlot>>,
}

/// Where a flight stands, as its slot holds it.
pub(crate) enum FlightSlot {
    /// The I/O runs (seen only by the thread doing it), or ended without reporting (a
    /// panic).
    Running,
    /// The I/O ended: publish it.
    Done(FlightIo),
    /// Published, with the result its owner returns.
    Published(Result<()>),
}

/// What a flight's I/O did.
pub(crate) struct FlightIo {
    /// Disks whose sync failed: the record was not written.
    pub(crate) sync_failed: Vec<(DiskId, String)>,
    /// The record's write, once every sync succeeded: which replicas hold it durably, and
    /// the failures.
    pub(crate) journal: Option<(Vec<bool>, Vec<ReplicaFailure>)>,
}

/// Locks a flight's slot; a panic in the I/O leaves `Running` behind, never a poison.
pub(crate) fn lock_slot(slot: &Mutex<FlightSlot>) -> MutexGuard<'_, FlightSlot> {
    slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// How commits ask the barrier thread for a barrier.
#[derive(Default)]
pub(crate) struct BarrierSignal {
    /// (a barrier is wanted, the thread has stopped)
    state: Mutex<(bool, bool)>,
    raised: Condvar,
}

impl BarrierSignal {
    fn state(&self) -> MutexGuard<'_, (bool, bool)> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Asks for a barrier; `false` when the thread has stopped and no one will run it.
    pub(crate) fn raise(&self) -> bool {
        let mut state = self.state();
        if state.1 {
            return false;
        }
        state.0 = true;
        self.raised.notify_one();
        true
    }

    /// Waits until a barrier is wanted (`true`, the request taken) or the thread is to
    /// stop (`false`).
    pub(crate) fn wait(&self) -> bool {
        let mut state = self.state();
        while !state.0 && !state.1 {
            state = self.raised.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        let wanted = !state.1;
        state.0 = false;
        wanted
    }

    /// Stops the thread; later requests are refused.
    pub(crate) fn stop(&self) {
        self.state().1 = true;
        self.raised.notify_all();
    }
}

impl Undurable {
    pub(crate) fn is_empty(&self) -> bool {
        self.ops.is_empty()
            && self.frees.is_empty()
            && self.fragment_frees.is_empty()
            && self.fragment_disks.is_empty()
            && self.sync_failed.is_empty()
    }

    /// Puts back what a flight took and never wrote, ahead of what commits added since:
    /// as if it had never been taken.
    pub(crate) fn put_back(&mut self, taken: Taken) {
        let mut ops = taken.ops;
        ops.append(&mut self.ops);
        self.ops = ops;
        let mut frees = taken.frees;
        frees.append(&mut self.frees);
        self.frees = frees;
        let mut moved = taken.fragment_frees;
        moved.append(&mut self.fragment_frees);
        self.fragment_frees = moved;
        self.extents.extend(taken.extents);
        self.fragment_disks.extend(taken.fragment_disks);
    }
}
