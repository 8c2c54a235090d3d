//! The durability barrier: `Pool::sync`, which makes what commits left undurable
//! (`crate::pool::undurable`) durable in the order the crash contract needs.
//!
//! A commit applies to memory at once; it is durable only after the next barrier, which,
//! in order:
//! 1. syncs every disk that took new fragments since the last barrier (disks on one
//!    filesystem with one flush of it, `crate::media::group_sync`), so no durable record
//!    can name a fragment a crash could still drop (a disk whose sync fails leaves
//!    its extents degraded, or fails the barrier if any extent would keep fewer than the
//!    fragments it needs);
//! 2. writes every queued op as one journal record on each journal replica and syncs it
//!    (grouped the same way): the commit point — a crash leaves all the queued ops or none;
//! 3. deletes the fragments of freed extents — only now does no durable record need them
//!    (a shared barrier leaves them to a thread of its own, started as it returns: see
//!    `crate::data::shared_barrier`);
//! 4. checkpoints when due: every `PoolOptions::checkpoint_every_records` records or
//!    `checkpoint_every_bytes` of them, whichever comes first.
//!
//! `fsync`, unmount, every CLI command and the daemon's timer end in a barrier. Once
//! `PoolOptions::barrier_after_ops` ops are waiting, a commit asks the pool's barrier
//! thread for one (`crate::data::shared_barrier::BarrierThread`, which writes the record
//! with the lock released) or, where there is none or it lags four times that far behind,
//! runs one itself (`sync_in_passing`, which deletes what it frees as a shared barrier
//! does).
//!
//! A barrier under the lock that finds a record on its way with the lock released
//! (`Undurable::flight`) waits for its I/O and publishes it first (`Pool::land_flight`):
//! records reach the journal one at a time, in chain order.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use crate::base::error::{Error, Result};
use crate::base::hooks::CommitPhase;
use crate::base::io::run_all;
use crate::media::device::{BlockDevice, BlockName, ExtentId};
use crate::media::group_sync::{self, Then};
use crate::media::{codec, fragment};
use crate::meta::journal::{self, ReplicaFailure};
use crate::meta::state::{Availability, DiskId, FreedExtent, Op, Transaction};
use crate::pool::undurable::RecordSent;
use crate::pool::Pool;

/// Rounds of "relocate, then sync" a barrier tries before giving up on a fragment.
const SYNC_ATTEMPTS: usize = 3;

/// One disk's share of what the deleting thread deletes.
struct DeleteJob {
    disk: DiskId,
    device: Arc<dyn BlockDevice>,
    names: Vec<BlockName>,
    /// What the names take on the disk (see `Pool::deferred_bytes`).
    bytes: u64,
}

/// Locks the deleting thread's byte counts; a panic elsewhere must not lose them.
fn lock_bytes(bytes: &Mutex<BTreeMap<DiskId, u64>>) -> std::sync::MutexGuard<'_, BTreeMap<DiskId, u64>> {
    bytes.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Deletes `names` from `device`. Failures leave orphans, which the next open removes.
pub(crate) fn delete_all(device: &dyn BlockDevice, names: &[BlockName]) {
    for (name, error) in device.delete_many(names) {
        tracing::debug!(%error, %name, "deleting a freed fragment failed; left as an orphan");
    }
}

impl Pool {
    /// The durability barrier: on `Ok`, every commit so far is durable and survives a
    /// crash. Cheap when nothing is waiting.
    pub fn sync(&mut self) -> Result<()> {
        self.barrier(false)
    }

    /// The barrier of a shared barrier's last step under the lock, and the one a commit
    /// runs itself once `PoolOptions::barrier_after_ops` ops wait: `sync`, but what it
    /// frees is deleted by a thread of its own (`delete_in_background`) — the request whose commit crossed the line does
    /// not wait for the deletion of what other requests freed (a deleted file's fragments
    /// stalled a stream of small files' creates here). Where I/O runs in turn (the
    /// simulator) the frees wait for the next `sync`.
    pub(crate) fn sync_in_passing(&mut self) -> Result<()> {
        let result = self.barrier(true);
        self.delete_in_background();
        result
    }

    /// The barrier; with `defer_frees` the fragments it frees are left for the caller to
    /// hand to the deleting thread (`delete_in_background`), else it waits for that
    /// thread and deletes them now with any left over from earlier shared barriers. A
    /// record on its way with the lock released (`crate::data::shared_barrier`) is waited
    /// for and published first: this barrier's record chains on it, and its failure is
    /// this barrier's.
    pub(crate) fn barrier(&mut self, defer_frees: bool) -> Result<()> {
        let landed = self.land_flight();
        let result = self.barrier_locked(defer_frees);
        landed.and(result)
    }

    /// The barrier with no record on its way (see `barrier`).
    fn barrier_locked(&mut self, defer_frees: bool) -> Result<()> {
        assert!(self.undurable.flight.is_none(), "a barrier under the lock chains on no record in flight");
        if !defer_frees {
            self.join_deletion();
        }
        if !defer_frees && !self.undurable.deferred_deletes.is_empty() && self.read_only.is_none() {
            let deferred = self.take_deferred_deletes();
            self.delete_per_disk(deferred);
        }
        if self.undurable.is_empty() {
            return Ok(());
        }
        if let Some(reason) = &self.read_only {
            return Err(Error::ReadOnly(reason.clone()));
        }
        self.undurable.in_barrier = true;
        let result = self.sync_fragments().and_then(|()| self.write_records());
        self.undurable.in_barrier = false;
        let (journal_set_changed, shortfall) = result?;
        if defer_frees {
            let frees = std::mem::take(&mut self.undurable.frees);
            self.defer_deletion(&frees);
        }
        self.delete_freed();
        self.counters.barriers += 1;
        let owed = std::mem::take(&mut self.undurable.checkpoint_owed);
        if let Some(required) = shortfall {
            self.checkpoint_for_inline(required)?;
        } else if self.checkpoint_due(journal_set_changed || owed) {
            if let Err(e) = self.write_checkpoint() {
                tracing::warn!(error = %e, "checkpoint failed; the journal keeps every record until the next one");
            }
        }
        Ok(())
    }

    /// Leaves the fragments of `frees`, whose freeing record is durable, to the deleting
    /// thread (`delete_in_background`); a read-only pool deletes nothing (what looks
    /// freed here may be another owner's now).
    pub(crate) fn defer_deletion(&mut self, frees: &[FreedExtent]) {
        if self.read_only.is_some() {
            return;
        }
        for record in frees {
            let bytes = (fragment::HEADER_LEN + codec::shard_len(record.core.policy, record.core.len as usize)) as u64;
            self.undurable.deferred_deletes.extend(fragments_of(record).map(|(disk, name)| (disk, name, bytes)));
        }
    }

    /// Inline data that fewer replicas took than its policy tolerates failures is
    /// acknowledged only once a checkpoint puts it on `required` journal disks.
    pub(crate) fn checkpoint_for_inline(&mut self, required: usize) -> Result<()> {
        let held = self.write_checkpoint().unwrap_or(0);
        if held < required {
            return Err(Error::Unavailable(format!(
                "data small enough to live in the metadata journal reached only {held} journal disk(s), and its \
                 policy needs {required} (a journal disk failed or is full, and no other disk could take its place)"
            )));
        }
        Ok(())
    }

    /// Whether freed fragments wait for a barrier before they are deleted, or are being
    /// deleted (`Pool::sync` waits for that).
    pub(crate) fn frees_pending(&self) -> bool {
        self.undurable.flight.is_some()
            || !self.undurable.frees.is_empty()
            || !self.undurable.fragment_frees.is_empty()
            || !self.undurable.deferred_deletes.is_empty()
            || self.undurable.deleting.is_some()
    }

    /// Starts deleting the fragments shared barriers left for later
    /// (`Undurable::deferred_deletes`) on a thread of their own, unless one still
    /// deletes (the next shared barrier then deletes them beside its syncs). Their
    /// freeing records are durable: nothing needs them, and the next barrier need not
    /// wait for their deletion — punches and unlinks the filesystem may make slow (on
    /// ext4 mounted `-o discard`, the segments of a deleted 1 GiB file took 0.4 s of
    /// unlinks, paid inside a later `fsync` when the next barrier deleted them). Their
    /// bytes stay free as far as `df` goes (`Undurable::deleting_bytes`).
    pub(crate) fn delete_in_background(&mut self) {
        assert!(!self.undurable.in_barrier, "a deletion starts after the barrier");
        if self.undurable.deleting.as_ref().is_some_and(|deleting| !deleting.is_finished()) {
            return;
        }
        self.join_deletion();
        if self.undurable.deferred_deletes.is_empty() || self.read_only.is_some() || !self.options.parallel_io {
            return;
        }
        // No deletion runs, so this is what the deferred deletes take.
        let dying = self.deferred_bytes();
        let jobs: Vec<DeleteJob> = self
            .take_deferred_deletes()
            .into_iter()
            .filter_map(|(disk, names)| {
                let device = self.devices.get(&disk)?.clone();
                Some(DeleteJob { disk, device, names, bytes: dying.get(&disk).copied().unwrap_or(0) })
            })
            .collect();
        let counted = Arc::clone(&self.undurable.deleting_bytes);
        {
            let mut counted = lock_bytes(&counted);
            assert!(counted.is_empty(), "no deletion is under way");
            counted.extend(jobs.iter().map(|job| (job.disk, job.bytes)));
        }
        let (sent, kept) = std::sync::mpsc::channel::<Vec<DeleteJob>>();
        let started = std::thread::Builder::new().name("dfs-free".into()).spawn(move || {
            let Ok(jobs) = kept.recv() else { return };
            run_all(true, jobs, |job| {
                // The disk stops counting them used as its deletion starts.
                if let Some(bytes) = lock_bytes(&counted).get_mut(&job.disk) {
                    *bytes = bytes.saturating_sub(job.bytes);
                }
                delete_all(job.device.as_ref(), &job.names);
            });
        });
        match started {
            Ok(handle) => {
                // The thread exists: it takes the jobs and runs until it has deleted them.
                let _ = sent.send(jobs);
                self.undurable.deleting = Some(handle);
            }
            Err(error) => {
                tracing::warn!(%error, "no thread to delete freed fragments; deleting them now");
                lock_bytes(&self.undurable.deleting_bytes).clear();
                run_all(true, jobs, |job| delete_all(job.device.as_ref(), &job.names));
            }
        }
    }

    /// Waits for the thread deleting freed fragments, if any.
    fn join_deletion(&mut self) {
        if let Some(deleting) = self.undurable.deleting.take() {
            if deleting.join().is_err() {
                tracing::error!(
                    "deleting freed fragments failed midway; what is left stays as orphans until the next open"
                );
            }
            lock_bytes(&self.undurable.deleting_bytes).clear();
        }
    }

    /// Bytes on each disk that freed fragments waiting for their deletion still take
    /// (already free as far as `df` goes): those left for a later barrier, and those the
    /// deleting thread has not started on.
    pub(crate) fn deferred_bytes(&self) -> BTreeMap<DiskId, u64> {
        let mut bytes: BTreeMap<DiskId, u64> = lock_bytes(&self.undurable.deleting_bytes).clone();
        for (disk, _, len) in &self.undurable.deferred_deletes {
            *bytes.entry(*disk).or_default() += len;
        }
        bytes
    }

    /// Takes the fragments earlier shared barriers left for later, by disk.
    pub(crate) fn take_deferred_deletes(&mut self) -> BTreeMap<DiskId, Vec<BlockName>> {
        let mut per_disk: BTreeMap<DiskId, Vec<BlockName>> = BTreeMap::new();
        for (disk, name, _) in std::mem::take(&mut self.undurable.deferred_deletes) {
            per_disk.entry(disk).or_default().push(name);
        }
        per_disk
    }

    /// Deletes each disk's `names`, every disk's at once.
    fn delete_per_disk(&self, per_disk: BTreeMap<DiskId, Vec<BlockName>>) {
        let jobs: Vec<(Arc<dyn BlockDevice>, Vec<BlockName>)> = per_disk
            .into_iter()
            .filter_map(|(disk, names)| self.devices.get(&disk).map(|device| (device.clone(), names)))
            .collect();
        run_all(self.options.parallel_io, jobs, |(device, names)| delete_all(device.as_ref(), &names));
    }

    /// Whether commits are waiting for a barrier (or for a record on its way).
    pub fn has_undurable_commits(&self) -> bool {
        !self.undurable.ops.is_empty() || self.undurable.flight.is_some()
    }

    /// How many committed ops wait for a barrier (those of a record on its way with the
    /// lock released not counted).
    pub fn undurable_ops(&self) -> usize {
        self.undurable.ops.len()
    }

    /// Notes fragments written for `extent` on `disks`, to be synced by the next barrier.
    pub(crate) fn fragments_written(&mut self, extent: ExtentId, disks: &[DiskId]) {
        self.undurable.extents.insert(extent);
        self.undurable.fragment_disks.extend(disks.iter().copied());
    }

    /// Step 1: syncs the disks that took fragments. A disk whose sync fails may have lost
    /// what it was given: it goes offline, owed the new extents' fragments, which are
    /// written again on other disks (and synced) where there is room for them.
    fn sync_fragments(&mut self) -> Result<()> {
        for _ in 0..SYNC_ATTEMPTS {
            self.relocate_undurable();
            if self.sync_fragment_disks() {
                break;
            }
        }
        // Whatever could not be moved stays degraded — or, short of the fragments a read
        // needs, cannot be committed at all.
        let readable = |pool: &Pool, disk: &DiskId| pool.state.disk_readable(*disk);
        for id in &self.undurable.extents {
            let Some(record) = self.state.extents.get(id) else { continue };
            let usable = record.fragments.iter().filter(|d| readable(self, d)).count();
            // What an offline disk lacks is owed to it (the write-intent map), not a repair.
            let awaited = record.fragments.iter().filter(|d| self.state.disk_awaited(**d)).count();
            if usable + awaited < record.fragments.len() {
                self.degraded.insert(*id);
            }
            if usable < record.policy.needed() {
                let reason = format!(
                    "a metadata commit failed (extent {id} could not be made durable: too few disks took its \
                     fragments); unmount and reopen it"
                );
                self.read_only = Some(reason.clone());
                return Err(Error::ReadOnly(reason));
            }
        }
        Ok(())
    }

    /// New extents with a fragment on a disk that is no longer readable get it
    /// rewritten elsewhere (an offline disk keeps what it is owed: see `geometry`).
    fn relocate_undurable(&mut self) {
        let stranded: Vec<ExtentId> = self
            .undurable
            .extents
            .iter()
            .filter(|id| {
                self.state.extents.get(id).is_some_and(|r| {
                    r.fragments.iter().any(|d| self.state.disks.get(d).is_none_or(|d| !d.state.readable()))
                })
            })
            .copied()
            .collect();
        for id in stranded {
            if let Err(e) = self.rewrite_fragments(id) {
                tracing::warn!(stored_as = %id, error = %e, "could not move a new extent off a failed disk");
            }
        }
    }

    /// Syncs every disk that took fragments; `false` when some failed (they are now
    /// offline and their extents need relocating).
    fn sync_fragment_disks(&mut self) -> bool {
        let disks = std::mem::take(&mut self.undurable.fragment_disks);
        if !self.syncs_fragments() {
            return true;
        }
        let jobs: Vec<(DiskId, Arc<dyn BlockDevice>)> =
            disks.iter().filter_map(|disk| self.devices.get(disk).map(|d| (*disk, d.clone()))).collect();
        let mut failed: Vec<(DiskId, String)> = group_sync::sync_grouped(
            self.options.parallel_io,
            jobs,
            |(_, device)| device.as_ref(),
            |_| Ok(Then::Sync),
            |(disk, _), e| (*disk, e.to_string()),
        )
        .into_iter()
        .filter_map(Result::err)
        .collect();
        failed.extend(std::mem::take(&mut self.undurable.sync_failed));
        self.reached(CommitPhase::FragmentsSynced);
        if failed.is_empty() {
            return true;
        }
        for (disk, error) in &failed {
            tracing::error!(%disk, %error, "disk may have lost writes it acknowledged (sync failed); taking it offline");
            let reason = format!("sync failed: {error}");
            if let Err(error) = self.mark_offline(*disk, &reason) {
                tracing::error!(%disk, %error, "marking the disk offline did not commit");
            }
        }
        false
    }

    /// Step 2: writes the queued ops as one record on every journal replica. A replica that
    /// fails the write for any reason but room is taken offline (as a disk whose sync
    /// failed) and the record that says so is written to the others, so the journal
    /// moves off it; the barrier's checkpoint then seeds the new set. Returns whether the
    /// journal disks changed, and the replicas a record short of them needed (inline data), if any.
    fn write_records(&mut self) -> Result<(bool, Option<usize>)> {
        let mut changed = false;
        // The most replicas a record short of them needed.
        let mut shortfall: Option<usize> = None;
        for _ in 0..SYNC_ATTEMPTS {
            let written = self.write_record()?;
            changed |= written.journal_set_changed;
            if written.held < written.required {
                shortfall = Some(shortfall.unwrap_or(0).max(written.required));
            }
            if written.failed.is_empty() {
                break;
            }
            self.journal_replicas_failed(&written.failed);
        }
        Ok((changed, shortfall))
    }

    /// Writes the queued ops as one record (see `write_records`).
    fn write_record(&mut self) -> Result<RecordWritten> {
        self.undurable.extents.clear();
        if self.undurable.ops.is_empty() {
            return Ok(RecordWritten::default());
        }
        let (previous, targets) = self.record_targets();
        let record = self.prepare_record(previous, targets)?;
        let refs: Vec<&dyn BlockDevice> = record.replicas.iter().map(|d| d.as_ref()).collect();
        let (durable, failures) = journal::write_replicas(
            &refs,
            BlockName::Journal { seq: record.sent.tip.seq },
            &record.block,
            self.options.parallel_io,
            || self.reached(CommitPhase::JournalWritten),
        );
        self.record_answered(&record.sent, &durable, failures)
    }

    /// Takes the queued ops as the record that chains on the tip, to go to `targets`
    /// (from `record_targets`, with the journal set `previous`), once the journal fence
    /// found no later record.
    pub(crate) fn prepare_record(&mut self, previous: Vec<DiskId>, targets: Vec<Replica>) -> Result<PreparedRecord> {
        let replicas: Vec<Arc<dyn BlockDevice>> = targets.iter().map(|(_, d)| d.clone()).collect();
        self.check_fence(&replicas)?;
        let txn = Transaction { ops: std::mem::take(&mut self.undurable.ops) };
        let required = replicas_required(&txn, &self.state.availability);
        let (block, tip) = journal::encode_record(self.tip, &txn);
        let sent = RecordSent {
            tip,
            bytes: block.len() as u64,
            journal_set: previous,
            targets: targets.iter().map(|(disk, _)| *disk).collect(),
            required,
        };
        Ok(PreparedRecord { ops: txn.ops, sent, replicas, block })
    }

    /// Publishes what the replicas answered to record `sent`: the chain advances if any
    /// holds it. `Err`, and read-only from here on, when none does or a replica found a
    /// later owner's claim (what landed elsewhere belongs to no owner's history).
    pub(crate) fn record_answered(
        &mut self,
        sent: &RecordSent,
        durable: &[bool],
        failures: Vec<ReplicaFailure>,
    ) -> Result<RecordWritten> {
        assert_eq!(durable.len(), sent.targets.len(), "one answer per replica");
        for failure in &failures {
            tracing::warn!(error = %failure.message, "journal replica write failed");
        }
        self.check_owner()?;
        let held = durable.iter().filter(|d| **d).count();
        self.counters.journal_bytes += sent.bytes * held as u64;
        if held == 0 {
            let errors: Vec<&str> = failures.iter().map(|f| f.message.as_str()).collect();
            let reason = format!(
                "a metadata commit failed (no journal replica accepted record {}: {}); unmount and reopen it",
                sent.tip.seq,
                errors.join("; ")
            );
            self.read_only = Some(reason.clone());
            return Err(Error::ReadOnly(reason));
        }
        self.reached(CommitPhase::JournalSynced);
        self.record_durable(sent.tip, sent.bytes);
        for failure in failures.iter().filter(|f| f.no_space) {
            self.journal_refused_room(sent.targets[failure.index]);
        }
        // A full disk is passed over from here on: the set may have changed with it.
        let current = self.journal_disks();
        let journal_set_changed = sent.journal_set != current;
        self.undurable.journal_set = current;
        let failed = failures.into_iter().filter(|f| !f.no_space).map(|f| (sent.targets[f.index], f.message)).collect();
        Ok(RecordWritten { journal_set_changed, failed, held, required: sent.required })
    }

    /// Takes offline the journal disks whose replica failed a record for a reason other
    /// than room (as a disk whose sync failed); the records saying so follow.
    pub(crate) fn journal_replicas_failed(&mut self, failed: &[(DiskId, String)]) {
        for (disk, error) in failed {
            tracing::error!(%disk, %error, "journal replica write failed; taking the disk offline");
            if let Err(error) = self.mark_offline(*disk, &format!("journal write failed: {error}")) {
                tracing::error!(%disk, %error, "marking the disk offline did not commit");
            }
        }
    }

    /// The journal disks the chain is on, and the readable disks the next record goes
    /// to: the old and the new journal disks alike, so it chains on whichever set
    /// recovery finds.
    pub(crate) fn record_targets(&self) -> (Vec<DiskId>, Vec<Replica>) {
        let current = self.journal_disks();
        let previous =
            if self.undurable.journal_set.is_empty() { current.clone() } else { self.undurable.journal_set.clone() };
        let targets = previous
            .iter()
            .chain(&current)
            .filter(|d| self.state.disk_readable(**d))
            .copied()
            .collect::<BTreeSet<DiskId>>()
            .into_iter()
            .filter_map(|disk| self.devices.get(&disk).map(|d| (disk, d.clone())))
            .collect();
        (previous, targets)
    }

    /// The journal fence: the record this process is about to write must not exist yet.
    /// A valid record there that chains from this process's tip was written by another
    /// process that opened the pool meanwhile (its lock forced away, a copied pool
    /// directory on another machine): that process owns the pool now, and this one stops
    /// writing — read-only — rather than overwrite its history. (A torn or unchained block
    /// there is a crash's leftover, which the write replaces.)
    ///
    /// On shared devices the owners' claims fence instead (`media::owner`): a journal
    /// record there is written create-only and counts only while no later claim exists,
    /// which no look beforehand could promise.
    pub(crate) fn check_fence(&mut self, devices: &[Arc<dyn BlockDevice>]) -> Result<()> {
        self.check_owner()?;
        let next = BlockName::Journal { seq: self.tip.seq + 1 };
        let taken = devices.iter().filter(|device| !device.shared()).any(|device| {
            device
                .read(next)
                .ok()
                .and_then(|block| journal::decode_record(&block).ok())
                .is_some_and(|(record, _, _)| record.prev_hash == self.tip.hash)
        });
        if taken {
            let reason = format!(
                "another process wrote journal record {} of this pool: it opened the pool while this one served it \
                 (a forced lock, a copied pool directory), and owns it now; this process stopped writing",
                self.tip.seq + 1
            );
            tracing::error!(%reason, "fenced");
            self.read_only = Some(reason.clone());
            return Err(Error::ReadOnly(reason));
        }
        self.fence_clear_at = Some(self.tip.seq);
        Ok(())
    }

    /// `Err(ReadOnly)`, and read-only from here on, once a shared device showed that a
    /// later owner claimed the pool.
    pub(crate) fn check_owner(&mut self) -> Result<()> {
        if let Some(reason) = self.owner.as_ref().and_then(|fence| fence.fenced()) {
            self.read_only = Some(reason.clone());
            return Err(Error::ReadOnly(reason));
        }
        Ok(())
    }

    /// Step 3: deletes freed fragments, every disk's at once. Failures leave orphans,
    /// which the next open removes.
    pub(crate) fn delete_freed(&mut self) {
        if self.read_only.is_some() {
            // Fenced or failed: what looks freed here may be another owner's now.
            return;
        }
        let frees = std::mem::take(&mut self.undurable.frees);
        let moved = std::mem::take(&mut self.undurable.fragment_frees);
        if frees.is_empty() && moved.is_empty() {
            return;
        }
        let mut per_disk: BTreeMap<DiskId, Vec<BlockName>> = BTreeMap::new();
        for (disk, name) in frees.iter().flat_map(fragments_of) {
            per_disk.entry(disk).or_default().push(name);
        }
        for (disk, name) in moved {
            // A fragment that moved away and back again is live here once more.
            if let BlockName::Fragment { extent, index } = name {
                let placed = self.state.extents.get(&extent).and_then(|r| r.fragments.get(usize::from(index)));
                if placed == Some(&disk) {
                    continue;
                }
            }
            per_disk.entry(disk).or_default().push(name);
        }
        self.delete_per_disk(per_disk);
        self.reached(CommitPhase::Freed);
    }
}

/// A journal replica a record goes to.
pub(crate) type Replica = (DiskId, Arc<dyn BlockDevice>);

/// A record taken from the queue and encoded, with the replicas it goes to.
pub(crate) struct PreparedRecord {
    /// Its ops, in commit order.
    pub(crate) ops: Vec<Op>,
    pub(crate) sent: RecordSent,
    /// The journal replicas, in the order of `RecordSent::targets`.
    pub(crate) replicas: Vec<Arc<dyn BlockDevice>>,
    pub(crate) block: Vec<u8>,
}

/// What writing one record did.
#[derive(Default)]
pub(crate) struct RecordWritten {
    /// The journal disks changed: a checkpoint must seed the new ones.
    pub(crate) journal_set_changed: bool,
    /// Replicas that failed the write for a reason other than room, with the error.
    pub(crate) failed: Vec<(DiskId, String)>,
    /// Replicas that hold the record durably.
    pub(crate) held: usize,
    /// Replicas the record must reach before it is acknowledged (see `replicas_required`).
    pub(crate) required: usize,
}

/// How many journal replicas must hold `txn` before it is acknowledged. An inline
/// extent lives nowhere else, so it is held to the bar a stored extent's write meets:
/// as many replicas as a write at its policy's quorum survives failures, plus one —
/// two for `erasure:4+2` and `replicate:3` (written at quorum they survive one failure),
/// one for `replicate:1`. Else one.
fn replicas_required(txn: &Transaction, availability: &Availability) -> usize {
    txn.ops
        .iter()
        .filter_map(Op::record)
        .filter(|record| record.is_inline())
        .map(|record| availability.write_quorum(record.policy) - record.policy.needed() + 1)
        .max()
        .unwrap_or(1)
}

/// Every fragment of `record`, with its disk.
pub(crate) fn fragments_of(record: &FreedExtent) -> impl Iterator<Item = (DiskId, BlockName)> + '_ {
    let extent = record.id;
    record
        .core
        .fragments
        .iter()
        .enumerate()
        .map(move |(index, disk)| (*disk, BlockName::Fragment { extent, index: index as u8 }))
}
