//! The durability barrier of a pool that request threads share (`Mutex<Pool>`): its
//! record is written with the pool's lock released, and a thread of its own
//! (`BarrierThread`) runs one whenever commits ask, so no request waits for a journal
//! `fsync` it did not ask for.
//!
//! `sync_shared` runs in three steps:
//! 1. under the lock, `Pool::take_flight` takes what is undurable — the queued ops,
//!    encoded as the record that chains on the tip, the new extents, the disks that took
//!    their fragments, what the ops freed — and leaves a `Flight` in the pool: the one
//!    record on its way. Commits go on meanwhile; their ops wait for the next record.
//! 2. with the lock released, it syncs those disks and, only once every sync succeeded,
//!    writes the record on every journal replica and syncs it: no durable record names a
//!    fragment a crash could still drop (`Pool::sync`'s contract). It deletes beside the
//!    syncs what earlier shared barriers freed, if their thread is still at it.
//! 3. under the lock again, `Pool::land_flight` publishes what the I/O did: the tip
//!    advances, the frees go to the deleting thread (`dfs-free`), a checkpoint is written
//!    when due (first writing, under the lock, the ops that arrived meanwhile: a
//!    checkpoint holds the state at the tip).
//!
//! Whoever takes the lock first after the I/O publishes it: a barrier under the lock
//! (`Pool::sync`) that finds a flight waits for its I/O and publishes it before writing
//! its own record, so records reach the journal one at a time, in chain order, and a
//! flight's failure fails the next barrier too. Anything out of the ordinary — a sync
//! that failed, an extent on a disk that is no longer readable, a replica that refused
//! the record, inline data short of replicas — is left to the barrier under the lock,
//! which relocates, takes disks offline and retries: a flight that wrote nothing is put
//! back as if never taken (`Undurable::put_back`).
//!
//! Only pools whose I/O runs on threads (`PoolOptions::parallel_io`) fly; the simulator
//! runs every barrier under the lock, in turn.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, Weak};

use crate::base::error::Result;
use crate::data::durability::delete_all;
use crate::media::device::{BlockDevice, BlockName};
use crate::media::group_sync::{self, Then};
use crate::meta::journal;
use crate::meta::state::DiskId;
use crate::pool::lock;
use crate::pool::undurable::{lock_slot, BarrierSignal, Flight, FlightIo, FlightSlot, Taken};
use crate::pool::Pool;

/// The durability barrier for a pool several request threads share: on `Ok`, every
/// commit made before the call is durable. The record is written with the lock released
/// (see the module header); a pool or a moment that cannot fly runs the barrier under
/// the lock, its disk syncs done first outside it.
pub fn sync_shared(pool: &Mutex<Pool>) -> Result<()> {
    let mut guard = lock(pool);
    // Another caller's record on its way: its I/O is waited for without the lock, and
    // whoever locks the pool first publishes it.
    while let Some(slot) = guard.undurable.flight.as_ref().map(|flight| Arc::clone(&flight.slot)) {
        drop(guard);
        drop(lock_slot(&slot));
        guard = lock(pool);
        // Its result is its owner's; a failure that stops this barrier too (read-only)
        // stops it below.
        let _ = guard.land_flight();
    }
    let Some(plan) = guard.take_flight()? else {
        return sync_unflown(pool, guard);
    };
    let slot = Arc::clone(&plan.slot);
    let mut report = lock_slot(&slot);
    guard.undurable.flight = Some(Flight { taken: plan.taken, slot: Arc::clone(&slot) });
    drop(guard);

    let sync_failed = sync_disks(true, plan.jobs);
    let journal = sync_failed.is_empty().then(|| {
        let devices: Vec<&dyn BlockDevice> = plan.replicas.iter().map(|d| d.as_ref()).collect();
        journal::write_replicas(&devices, plan.name, &plan.block, true, || {})
    });
    *report = FlightSlot::Done(FlightIo { sync_failed, journal });
    drop(report);

    let mut guard = lock(pool);
    let ours = guard.undurable.flight.as_ref().is_some_and(|flight| Arc::ptr_eq(&flight.slot, &slot));
    let result = if ours {
        guard.land_flight()
    } else {
        match &*lock_slot(&slot) {
            FlightSlot::Published(result) => result.clone(),
            _ => unreachable!("a flight leaves the pool only as it is published"),
        }
    };
    guard.delete_in_background();
    result
}

/// The barrier under the lock, the disks that took fragments synced first with the lock
/// released (the bulk of a barrier's time when much was written): a sync that fails
/// outside the lock counts as failed in the barrier (see `Undurable::sync_failed`).
fn sync_unflown(pool: &Mutex<Pool>, mut guard: std::sync::MutexGuard<'_, Pool>) -> Result<()> {
    let (sync, parallel) = (guard.syncs_fragments(), guard.options.parallel_io);
    let jobs = guard.disk_jobs(sync);
    drop(guard);
    let failed = sync_disks(parallel, jobs);
    let mut guard = lock(pool);
    guard.undurable.sync_failed.extend(failed);
    guard.sync_in_passing()
}

/// Runs each disk's share of a shared barrier, every disk at once when `parallel` (else
/// in turn, as a pool whose I/O runs in order needs); the disks whose sync failed, with
/// the error.
fn sync_disks(parallel: bool, jobs: Vec<DiskJob>) -> Vec<(DiskId, String)> {
    group_sync::sync_grouped(
        parallel,
        jobs,
        |job| job.device.as_ref(),
        |job| {
            delete_all(job.device.as_ref(), &job.deletes);
            Ok(if job.sync { Then::Sync } else { Then::Done })
        },
        |job, error| (job.disk, error.to_string()),
    )
    .into_iter()
    .filter_map(Result::err)
    .collect()
}

/// One disk's share of a shared barrier's work outside the lock.
struct DiskJob {
    disk: DiskId,
    device: Arc<dyn BlockDevice>,
    /// Fragments the previous shared barrier freed.
    deletes: Vec<BlockName>,
    /// Whether the disk took fragments since the last barrier.
    sync: bool,
}

/// A flight's I/O, as `Pool::take_flight` plans it.
struct FlightPlan {
    taken: Taken,
    slot: Arc<Mutex<FlightSlot>>,
    jobs: Vec<DiskJob>,
    /// The journal replicas, in the order of `RecordSent::targets`.
    replicas: Vec<Arc<dyn BlockDevice>>,
    name: BlockName,
    block: Vec<u8>,
}

impl Pool {
    /// Step 1: takes what is undurable as a record to write with the lock released, or
    /// `None` where the barrier must run under the lock: I/O in turn (the simulator), a
    /// read-only pool, nothing queued, a sync that failed outside the lock, an extent
    /// with a fragment on a disk no longer readable (it must move first), no journal
    /// disk to take the record. `Err` when the journal fence finds another owner.
    fn take_flight(&mut self) -> Result<Option<FlightPlan>> {
        assert!(self.undurable.flight.is_none(), "one record in flight at a time");
        if !self.options.parallel_io
            || self.read_only.is_some()
            || self.undurable.ops.is_empty()
            || !self.undurable.sync_failed.is_empty()
        {
            return Ok(None);
        }
        let stranded = self.undurable.extents.iter().any(|id| {
            self.state.extents.get(id).is_some_and(|r| r.fragments.iter().any(|d| !self.state.disk_readable(*d)))
        });
        let (journal_set, targets) = self.record_targets();
        if stranded || targets.is_empty() {
            return Ok(None);
        }
        let record = self.prepare_record(journal_set, targets)?;
        let jobs = self.disk_jobs(self.syncs_fragments());
        let name = BlockName::Journal { seq: record.sent.tip.seq };
        let taken = Taken {
            ops: record.ops,
            extents: std::mem::take(&mut self.undurable.extents),
            fragment_disks: std::mem::take(&mut self.undurable.fragment_disks),
            frees: std::mem::take(&mut self.undurable.frees),
            fragment_frees: std::mem::take(&mut self.undurable.fragment_frees),
            record: record.sent,
        };
        let slot = Arc::new(Mutex::new(FlightSlot::Running));
        Ok(Some(FlightPlan { taken, slot, jobs, replicas: record.replicas, name, block: record.block }))
    }

    /// Each disk's share of a shared barrier outside the lock: a sync of every disk that
    /// took fragments (when `sync`), and the deletion of what the last shared barrier
    /// freed, if the deleting thread did not take it.
    fn disk_jobs(&mut self, sync: bool) -> Vec<DiskJob> {
        let mut deletes = self.take_deferred_deletes();
        let syncing: BTreeSet<DiskId> = if sync { self.undurable.fragment_disks.clone() } else { BTreeSet::new() };
        let disks: BTreeSet<DiskId> = syncing.iter().chain(deletes.keys()).copied().collect();
        disks
            .into_iter()
            .filter_map(|disk| {
                let device = self.devices.get(&disk)?.clone();
                Some(DiskJob {
                    disk,
                    device,
                    deletes: deletes.remove(&disk).unwrap_or_default(),
                    sync: syncing.contains(&disk),
                })
            })
            .collect()
    }

    /// Step 3: publishes the record in flight, if any, once its I/O has ended (waiting
    /// for it, lock held: the I/O takes no lock of the pool's). Its result is the
    /// flight's owner's, left in its slot too.
    pub(crate) fn land_flight(&mut self) -> Result<()> {
        let Some(flight) = self.undurable.flight.take() else { return Ok(()) };
        let mut slot = lock_slot(&flight.slot);
        let io = match std::mem::replace(&mut *slot, FlightSlot::Running) {
            FlightSlot::Done(io) => Some(io),
            FlightSlot::Running => None,
            FlightSlot::Published(_) => unreachable!("a published flight has left the pool"),
        };
        let result = self.publish(flight.taken, io);
        *slot = FlightSlot::Published(result.clone());
        result
    }

    /// Publishes what a flight's I/O did (see `land_flight`); `io` is `None` when it
    /// ended without reporting.
    fn publish(&mut self, taken: Taken, io: Option<FlightIo>) -> Result<()> {
        let (durable, failures) = match io {
            Some(FlightIo { sync_failed, journal: Some(written) }) if sync_failed.is_empty() => written,
            other => {
                // Nothing written: the barrier under the lock sorts the failed disks out.
                let failed = other.map(|io| io.sync_failed).unwrap_or_default();
                if failed.is_empty() {
                    tracing::error!("a barrier's I/O ended without a word; writing its record under the lock");
                }
                self.undurable.put_back(taken);
                self.undurable.sync_failed.extend(failed);
                return self.barrier(true);
            }
        };
        let written = self.record_answered(&taken.record, &durable, failures)?;
        self.defer_deletion(&taken.frees);
        // Moved fragments are deleted now, as `delete_freed` does; what commits freed
        // since waits for its own record.
        let later_frees = std::mem::take(&mut self.undurable.frees);
        let later_moved = std::mem::replace(&mut self.undurable.fragment_frees, taken.fragment_frees);
        self.delete_freed();
        self.undurable.frees = later_frees;
        self.undurable.fragment_frees.extend(later_moved);
        self.counters.barriers += 1;

        self.undurable.in_barrier = true;
        self.journal_replicas_failed(&written.failed);
        self.undurable.in_barrier = false;
        let short = written.held < written.required;
        let due = written.journal_set_changed || self.checkpoint_due(false);
        if !written.failed.is_empty() || ((short || due) && !self.undurable.ops.is_empty()) {
            // The record saying a replica is offline follows at once, as under the lock;
            // a checkpoint holds the state at the tip, so what commits queued meanwhile
            // is written first.
            self.undurable.checkpoint_owed |= due;
            self.barrier(true)?;
        } else if due {
            self.undurable.checkpoint_owed = false;
            if let Err(e) = self.write_checkpoint() {
                tracing::warn!(error = %e, "checkpoint failed; the journal keeps every record until the next one");
            }
        }
        if short {
            self.checkpoint_for_inline(written.required)?;
        }
        Ok(())
    }
}

/// The thread that runs shared barriers when commits ask for one (once
/// `PoolOptions::barrier_after_ops` ops wait), so the commit that crossed the line goes
/// on instead of writing the record under the lock. Dropping it stops the thread; commits
/// then run their barriers themselves again.
pub struct BarrierThread {
    signal: Arc<BarrierSignal>,
    pool: Weak<Mutex<Pool>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BarrierThread {
    /// Starts the thread for `pool` (it holds the pool weakly: it ends with it).
    pub fn start(pool: &Arc<Mutex<Pool>>) -> std::io::Result<BarrierThread> {
        let signal = Arc::new(BarrierSignal::default());
        let (theirs, weak) = (Arc::clone(&signal), Arc::downgrade(pool));
        let thread = std::thread::Builder::new().name("dfs-barrier".into()).spawn(move || {
            while theirs.wait() {
                let Some(pool) = weak.upgrade() else { break };
                if let Err(error) = sync_shared(&pool) {
                    tracing::warn!(%error, "durability barrier failed");
                }
            }
        })?;
        lock(pool).undurable.signal = Some(Arc::clone(&signal));
        Ok(BarrierThread { signal, pool: Arc::downgrade(pool), thread: Some(thread) })
    }
}

impl Drop for BarrierThread {
    fn drop(&mut self) {
        self.signal.stop();
        if let Some(pool) = self.pool.upgrade() {
            let mut pool = lock(&pool);
            if pool.undurable.signal.as_ref().is_some_and(|signal| Arc::ptr_eq(signal, &self.signal)) {
                pool.undurable.signal = None;
            }
        }
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the barrier thread panicked; commits run their barriers themselves");
            }
        }
    }
}
