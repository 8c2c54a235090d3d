//! `Pool`: an open pool — the metadata state, its journal, the disks, and the commit
//! protocol every change goes through.
//!
//! Commit rule: new fragments durable → journal record durable on every reachable
//! replica → state applied in memory → freed fragments deleted. A failed journal write
//! turns the pool read-only (like ext4's errors=remount-ro): the in-memory state could
//! otherwise run ahead of, or fork from, what the disks hold.
//!
//! Opening recovers the journal, re-replicates it as a fresh checkpoint when anything was
//! replayed or irregular, removes unlinked inodes nobody holds open (they cannot be open
//! after a restart) and deletes orphan fragments that no committed record references.

pub(crate) mod access_tracker;
pub(crate) mod cache;
pub(crate) mod op_stats;
pub(crate) mod open_files;
pub(crate) mod probes;
pub(crate) mod scrub_order;
pub(crate) mod shared_space;
pub(crate) mod stored;
pub(crate) mod undurable;
pub(crate) mod writing;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use uuid::Uuid;

use crate::base::clock::Clock;
use crate::base::error::{Error, Result};
use crate::base::hooks::CommitPhase;
use crate::base::policy::Policy;
use crate::base::rng::EngineRng;
use crate::media::device::{BlockDevice, BlockKind, BlockName, UnavailableDevice};
use crate::media::owner::OwnedDevice;
use crate::meta::journal::{self, JournalTip};
use crate::meta::state::{
    ChunkSlot, DiskId, DiskRecord, DiskState, ExtentRecord, FreedExtent, InodeKind, MetaState, Op, Transaction,
};
use crate::meta::store::{Store, StoreConfig};
use crate::pool::open_files::OpenFiles;

/// How an open pool behaves. Production and the simulator differ only here.
#[derive(Clone, Debug)]
pub struct PoolOptions {
    /// Seed of the engine's RNG (placement).
    pub seed: u64,
    /// Records after which a checkpoint is due.
    pub checkpoint_every_records: u64,
    /// Bytes of records after which a checkpoint is due, whatever their count: with
    /// `checkpoint_every_records` it bounds what an open replays and what the journal
    /// holds between checkpoints.
    pub checkpoint_every_bytes: u64,
    /// Dirty bytes an open file buffers before complete extents are written out.
    pub dirty_bytes_max: usize,
    /// Ops committed in memory after which a commit asks for a durability barrier: from
    /// the pool's barrier thread if it has one (`data::shared_barrier::BarrierThread`),
    /// else by running `Pool::sync` itself. The simulator sets `usize::MAX`: it places
    /// barriers.
    pub barrier_after_ops: usize,
    /// Memory for decoded extents (see `store::ExtentCache`).
    pub extent_cache_bytes: usize,
    /// How the paged metadata store pages and caches (`meta::store`).
    pub metadata_store: StoreConfig,
    /// Whether fragment I/O to different disks runs on threads. The simulator runs it
    /// sequentially so that a seed replays exactly.
    pub parallel_io: bool,
    /// Check the state's invariants after every commit (tests and the simulator).
    pub check_invariants: bool,
    /// Told each time a commit reaches a named phase (the simulator's crash points).
    pub observer: Option<crate::base::hooks::Observer>,
    /// Whether opening deletes orphan fragments (safe: nothing is in flight at open).
    /// The orphan commands turn it off, so they can show orphans and apply their age
    /// guard themselves.
    pub remove_orphans_at_open: bool,
    /// The tiering configuration a pool created by this open starts with; an existing
    /// pool keeps its own (`Pool::set_tiering`).
    pub tiering: crate::temperature::config::TieringConfig,
    /// Reopens a disk by uuid when it comes back (see `reachability`).
    pub reconnect: Option<crate::pool::probes::Reconnector>,
    /// Who this process is (host and pid), for the owner's claim it writes on shared
    /// devices (`media::owner`) and the message an earlier owner is fenced with.
    pub claimant: String,
    /// Opens the disks a pool directory keeps on object stores (`pooldir`); without it,
    /// such disks are unavailable.
    pub object_stores: Option<Arc<dyn crate::media::device::ObjectStores>>,
    /// A deliberate defect, to prove the simulator catches it.
    #[cfg(feature = "sabotage")]
    pub sabotage: Option<crate::base::hooks::Sabotage>,
}

impl Default for PoolOptions {
    fn default() -> Self {
        Self {
            seed: 0,
            // A checkpoint costs a few milliseconds whatever the interval (the store's
            // commit, its flushes, the trim); every 256 records it was a tenth of each
            // `fsync` of a database's single-row transactions. Replaying 1,024 records of
            // at most 8 MiB in all at open takes a few milliseconds more.
            checkpoint_every_records: 1024,
            checkpoint_every_bytes: crate::media::journal_log::LOG_BYTES_MAX,
            dirty_bytes_max: 16 << 20,
            barrier_after_ops: 4096,
            extent_cache_bytes: 256 << 20,
            metadata_store: StoreConfig { cache_bytes: 64 << 20, ..StoreConfig::default() },
            parallel_io: true,
            check_invariants: false,
            observer: None,
            remove_orphans_at_open: true,
            tiering: crate::temperature::config::TieringConfig::default(),
            reconnect: None,
            claimant: "a DynamicFS process".to_string(),
            object_stores: None,
            #[cfg(feature = "sabotage")]
            sabotage: None,
        }
    }
}

/// A disk handed to `Pool::open`, identified by the uuid of its label.
pub struct PoolDevice {
    pub uuid: Uuid,
    pub device: Arc<dyn BlockDevice>,
}

/// What opening found and did.
#[derive(Debug, Default, Clone)]
pub struct OpenReport {
    /// Journal records replayed over the newest checkpoint.
    pub records_replayed: u64,
    /// Whether the journal was rewritten (re-replicated) during recovery.
    pub journal_rewritten: bool,
    /// Fragment blocks that no committed record referenced, now deleted.
    pub orphan_fragments_removed: usize,
    /// Unlinked inodes left by a crash, now removed with their extents.
    pub orphan_inodes_removed: usize,
    /// Devices whose uuid metadata does not know (a crash during `add-disk`).
    pub unregistered: Vec<Uuid>,
    /// Irregularities recovery noticed and repaired or worked around.
    pub notes: Vec<String>,
    /// The metadata format the pool was in, when opening upgraded it.
    pub upgraded_from: Option<u8>,
}

/// Counters of what the pool did since it was opened.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PoolCounters {
    pub commits: u64,
    pub checkpoints: u64,
    /// Bytes of journal records written, summed over the replicas that took them.
    pub journal_bytes: u64,
    /// Bytes of checkpoints written, summed over the replicas that took them.
    pub checkpoint_bytes: u64,
    pub extents_written: u64,
    pub extents_read: u64,
    pub degraded_reads: u64,
    pub fragment_errors: u64,
    pub extents_repaired: u64,
    /// Durability barriers completed.
    pub barriers: u64,
    pub extents_reencoded: u64,
    /// Layered chunks folded back into whole extents by `merge_step`.
    pub layers_merged: u64,
    /// Small overwrites committed as layers over their chunk's extent.
    pub layers_written: u64,
    /// Extents re-encoded by tiering (also counted in `extents_reencoded`).
    pub extents_migrated: u64,
    pub disks_failed: u64,
    /// Times a disk went offline.
    pub disks_offline: u64,
    /// Times an offline disk came back and rejoined.
    pub disks_rejoined: u64,
    /// Extents written at reduced width while disks were away.
    pub degraded_writes: u64,
    /// Runs of the paged metadata store folded into one after a checkpoint.
    pub store_merges: u64,
}

/// How far past the state's next extent id one open may start allocating (see
/// `Pool::open`).
const EXTENT_ID_SPREAD: u64 = 1 << 32;

/// Locks `pool`, as a front end shares it between request threads: a panic in one
/// request must not take every later request down with it.
pub fn lock(pool: &Mutex<Pool>) -> MutexGuard<'_, Pool> {
    pool.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// An open pool.
pub struct Pool {
    pub(crate) state: MetaState,
    pub(crate) tip: JournalTip,
    records_since_checkpoint: u64,
    /// Bytes of the records written since the last checkpoint (one replica's).
    record_bytes_since_checkpoint: u64,
    /// Sequence number of the newest checkpoint known durable on the journal disks.
    /// A checkpoint is never rewritten in place: a crash could tear every copy.
    checkpoint_seq: Option<u64>,
    /// The paged metadata store the checkpoints go to; `None` until the first one
    /// of a pool recovered from an older format (or a new pool).
    store: Option<Store>,
    /// The journal disks holding the store's current root.
    store_members: BTreeSet<DiskId>,
    /// The store holds an older format's encoding (format 8): the next checkpoint writes
    /// the whole state as a new generation, never changes into the old one.
    rewrite_store: bool,
    pub(crate) devices: BTreeMap<DiskId, Arc<dyn BlockDevice>>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) rng: EngineRng,
    pub(crate) options: PoolOptions,
    pub(crate) next_extent: u64,
    pub(crate) files: OpenFiles,
    /// Extents a read found short of fragments; the repair queue of later workers.
    pub(crate) degraded: BTreeSet<crate::media::device::ExtentId>,
    pub(crate) counters: PoolCounters,
    pub(crate) cache: crate::pool::cache::ExtentCache,
    pub(crate) read_only: Option<String>,
    /// The journal tip at which the fence last found no other writer's next record: a
    /// store checks the fence only once per record this process writes (see
    /// `Pool::begin_write`), the barrier before every record.
    pub(crate) fence_clear_at: Option<u64>,
    /// This process's claim on the pool's shared devices, which wrap them (see
    /// `media::owner`); `None` while the pool has no shared device.
    pub(crate) owner: Option<Arc<crate::media::owner::Fence>>,
    /// Write and sync failures per disk since its last success (see `disk_io_failed`).
    pub(crate) io_errors: BTreeMap<DiskId, u32>,
    /// Disks that refused a journal block for lack of room, with the tip then: the
    /// journal passes over them for `JOURNAL_REFUSAL_RECORDS` records (see `journal_disks`).
    pub(crate) journal_refused: BTreeMap<DiskId, u64>,
    /// Chunks that got a young inline extent (see `MetaState::is_young_inline`),
    /// for the background to store as fragments once their file is closed; filled at
    /// open by a scan and by every commit since. Entries may be stale: checked on use.
    pub(crate) young_inline: BTreeSet<ChunkSlot>,
    /// Extents being fetched outside the lock (see `fetch`).
    pub(crate) in_flight: crate::pool::cache::InFlight,
    /// Extents being written outside the lock and not yet committed (see `store`).
    pub(crate) writing: crate::pool::writing::Writing,
    /// What the next durability barrier must make durable.
    pub(crate) undurable: crate::pool::undurable::Undurable,
    /// Access statistics not yet persisted, and the migration queues.
    pub(crate) tracker: crate::pool::access_tracker::Tracker,
    /// The background scrub's budget and the last foreground request it yields to.
    pub(crate) pacing: crate::base::budget::Pacing,
    /// The order the scrub pass in progress checks extents in.
    pub(crate) scrub_order: crate::pool::scrub_order::ScrubOrder,
    /// Foreground operation counts, bytes and latencies.
    pub(crate) ops: crate::pool::op_stats::OpStats,
    /// When this process last wrote a checkpoint (`Clock::monotonic_nanos`).
    pub(crate) checkpoint_written_nanos: Option<u64>,
    /// When each disk is probed next (see `reachability`).
    pub(crate) probes: crate::pool::probes::Probes,
}

/// Records a journal disk that refused a block for lack of room is passed over before it
/// is tried again (it may have room by then).
const JOURNAL_REFUSAL_RECORDS: u64 = 256;

impl Pool {
    /// Opens a pool over `devices`. A pool whose disks hold no metadata yet starts empty
    /// with `default_policy`; otherwise metadata is recovered from the journal.
    pub fn open(
        pool_id: Uuid,
        default_policy: Policy,
        devices: Vec<PoolDevice>,
        clock: Arc<dyn Clock>,
        options: PoolOptions,
    ) -> Result<(Pool, OpenReport)> {
        let mut report = OpenReport::default();
        // On shared devices, this process claims the pool before it reads the journal: an
        // earlier owner still running is fenced from its next record on, and every
        // record it landed before is in what recovery reads.
        let owner = {
            let raw: Vec<&dyn BlockDevice> = devices.iter().map(|d| d.device.as_ref()).collect();
            crate::media::owner::claim(&raw, pool_id, &options.claimant, clock.wall()).map_err(|e| match e {
                crate::media::owner::ClaimError::Raced { .. } => Error::PoolBusy(e.to_string()),
                crate::media::owner::ClaimError::Unreachable(_) => Error::Unavailable(e.to_string()),
            })?
        };
        let devices: Vec<PoolDevice> = devices
            .into_iter()
            .map(|d| PoolDevice { uuid: d.uuid, device: OwnedDevice::wrap(d.device, owner.as_ref()) })
            .collect();
        let raw: Vec<&dyn BlockDevice> = devices.iter().map(|d| d.device.as_ref()).collect();
        let recovered =
            journal::recover(&raw, &options.metadata_store).map_err(|e| Error::MetadataCorrupt(e.to_string()))?;
        let recovered_checkpoint = recovered.is_some();
        let mut upgrade_from = None;
        let mut store = None;
        let (state, tip, clean, checkpoint_slots) = match recovered {
            Some(r) => {
                report.records_replayed = r.replayed;
                report.notes.extend(r.notes.iter().cloned());
                let clean = r.replayed == 0 && r.notes.is_empty();
                upgrade_from = (r.oldest_format < crate::media::frame::METADATA_FORMAT).then_some(r.oldest_format);
                store = r.store;
                (r.state, r.tip, clean, r.checkpoint_slots)
            }
            None => (
                MetaState { tiering: options.tiering, ..MetaState::new(pool_id, default_policy, clock.wall()) },
                JournalTip { seq: 0, hash: [0; 32] },
                true,
                BTreeSet::new(),
            ),
        };
        if state.pool_id != pool_id {
            return Err(Error::MetadataCorrupt(format!(
                "the disks' metadata belongs to pool {}, not {pool_id}",
                state.pool_id
            )));
        }
        let by_uuid: BTreeMap<Uuid, DiskId> = state.disks.values().map(|d| (d.uuid, d.id)).collect();
        let mut slots: BTreeMap<DiskId, usize> = BTreeMap::new();
        let mut disk_devices: BTreeMap<DiskId, Arc<dyn BlockDevice>> = BTreeMap::new();
        for (slot, device) in devices.into_iter().enumerate() {
            match by_uuid.get(&device.uuid) {
                Some(id) => {
                    slots.insert(*id, slot);
                    disk_devices.insert(*id, device.device);
                }
                None => report.unregistered.push(device.uuid),
            }
        }
        for disk in state.disks.values() {
            if !disk.state.readable() {
                // A failed or removed disk is never touched again, even if it is present.
                let reason = format!("disk {}", disk.state);
                disk_devices.insert(disk.id, Arc::new(UnavailableDevice::new(disk.uuid.to_string(), reason)));
                continue;
            }
            disk_devices.entry(disk.id).or_insert_with(|| {
                report.notes.push(format!("disk {} ({}) is missing", disk.id, disk.uuid));
                Arc::new(UnavailableDevice::new(disk.uuid.to_string(), "disk not found"))
            });
        }
        // Each open allocates extent ids from a random base past every id the state knows:
        // should a second process ever serve the same disks (a forced lock), the two
        // never write fragments under the same name, and the journal fence decides which
        // one owns the pool without either having overwritten the other's data.
        let mut rng = EngineRng::from_seed(options.seed);
        let next_extent = state.next_extent.saturating_add(rng.below(EXTENT_ID_SPREAD));
        let cache_bytes = options.extent_cache_bytes;
        let mut pool = Pool {
            state,
            tip,
            records_since_checkpoint: 0,
            record_bytes_since_checkpoint: 0,
            checkpoint_seq: (report.records_replayed == 0 && recovered_checkpoint).then_some(tip.seq),
            store_members: store.as_ref().map_or_else(BTreeSet::new, |_| {
                slots.iter().filter(|(_, slot)| checkpoint_slots.contains(slot)).map(|(id, _)| *id).collect()
            }),
            rewrite_store: store.is_some()
                && upgrade_from.is_some_and(|from| from < crate::meta::paged::STORE_ENCODING_SINCE),
            store,
            devices: disk_devices,
            clock,
            rng,
            options,
            next_extent,
            files: OpenFiles::default(),
            degraded: BTreeSet::new(),
            counters: PoolCounters::default(),
            cache: crate::pool::cache::ExtentCache::with_capacity(cache_bytes),
            read_only: None,
            fence_clear_at: None,
            owner,
            io_errors: BTreeMap::new(),
            journal_refused: BTreeMap::new(),
            young_inline: BTreeSet::new(),
            in_flight: Default::default(),
            writing: Default::default(),
            undurable: Default::default(),
            tracker: Default::default(),
            pacing: Default::default(),
            scrub_order: Default::default(),
            ops: Default::default(),
            checkpoint_written_nanos: None,
            probes: Default::default(),
        };
        pool.undurable.journal_set = pool.journal_disks();
        pool.young_inline = pool.state.young_inline_slots();
        let mut checkpoint_slots = checkpoint_slots;
        if let Some(store) = pool.store.as_ref() {
            // Members behind the store's root are brought up to it, and blocks of
            // crashed commits removed, before anything is written.
            let members = pool.journal_devices();
            let devices: Vec<&dyn BlockDevice> = members.iter().map(|(_, d)| d.as_ref()).collect();
            let failed: BTreeSet<usize> = store
                .tidy(&devices)
                .into_iter()
                .map(|failure| {
                    report.notes.push(format!("metadata store replica {}: {}", failure.device, failure.error));
                    failure.replica
                })
                .collect();
            pool.store_members =
                members.iter().enumerate().filter(|(i, _)| !failed.contains(i)).map(|(_, (id, _))| *id).collect();
            checkpoint_slots = pool.store_members.iter().filter_map(|id| slots.get(id).copied()).collect();
        }
        let journal_slots: BTreeSet<usize> =
            pool.journal_disks().iter().filter_map(|id| slots.get(id).copied()).collect();
        let metadata_blocks = pool.metadata_block_count();
        let journal_is_canonical =
            clean && journal_slots.is_subset(&checkpoint_slots) && metadata_blocks == journal_slots.len();
        if !pool.state.disks.is_empty() && !journal_is_canonical {
            // A checkpoint is a new store generation: no root is rewritten in place.
            match pool.write_checkpoint() {
                Ok(_) => report.journal_rewritten = true,
                // The recovered state stands on the old replicas; serve it and retry later.
                Err(e) => report.notes.push(format!("could not re-replicate the journal: {e}")),
            }
        }
        if let Some(from) = upgrade_from {
            pool.upgrade_format(from)?;
            report.notes.push(format!(
                "metadata upgraded from format {from} to format {}",
                crate::media::frame::METADATA_FORMAT
            ));
            report.upgraded_from = Some(from);
        }
        report.orphan_inodes_removed = pool.remove_orphan_inodes()?;
        pool.sync()?;
        if !pool.state.disks.is_empty() {
            // Disks away now go offline (or stay so); offline ones that answer rejoin.
            let check = pool.check_disks()?;
            for disk in &check.went_offline {
                let reason = pool.state.offline.get(disk).map(|o| o.reason.clone()).unwrap_or_default();
                report.notes.push(format!("disk {disk} is offline: {reason}"));
            }
            for back in &check.rejoined {
                report.notes.push(format!(
                    "disk {} is back; {} extent(s) owed to it are queued for repair",
                    back.disk, back.owed
                ));
            }
            for disk in &check.failed {
                report.notes.push(format!("disk {disk} stayed offline past the grace period and is now failed"));
            }
        }
        if pool.owner.is_some() && !pool.state.disks.is_empty() {
            // The takeover in the journal: the record after the recovered tip is this
            // process's, and whatever an earlier owner put under that number since it
            // was recovered is replaced (it counts for no one: see `media::owner`).
            pool.claim()?;
        }
        if pool.options.remove_orphans_at_open {
            report.orphan_fragments_removed = pool.remove_orphan_fragments();
        }
        pool.check_invariants();
        Ok((pool, report))
    }

    /// Rewrites metadata recovered from format `from` in the current format: a record
    /// saying so (a fresh sequence number, so no checkpoint is rewritten in place), then a
    /// checkpoint, which trims every older block. A crash in between leaves the old
    /// blocks and the new record, which chains onto them: the next open upgrades again.
    fn upgrade_format(&mut self, from: u8) -> Result<()> {
        assert!(from < crate::media::frame::METADATA_FORMAT);
        let to = crate::media::frame::METADATA_FORMAT;
        self.commit(Transaction { ops: vec![Op::FormatUpgraded { from, to }] })?;
        self.sync()?;
        self.write_checkpoint()?;
        assert_eq!(self.checkpoint_seq, Some(self.tip.seq));
        tracing::info!(from, to, "metadata format upgraded");
        Ok(())
    }

    fn metadata_block_count(&self) -> usize {
        self.devices
            .values()
            .map(|d| {
                let journal = d.list(BlockKind::Journal).map(|v| v.len()).unwrap_or(0);
                let checkpoints = d.list(BlockKind::Checkpoint).map(|v| v.len()).unwrap_or(0);
                let roots = d.list(BlockKind::StoreRoot).map(|v| v.len()).unwrap_or(0);
                journal + checkpoints + roots
            })
            .sum()
    }

    /// Wall-clock time from the pool's clock (for "now" in timestamp updates).
    pub fn now(&self) -> crate::base::clock::WallTime {
        self.clock.wall()
    }

    /// The paged metadata store's shape: generation, runs, and blocks per replica; `None`
    /// before the first checkpoint of a pool recovered from an older format.
    pub fn metadata_store(&self) -> Option<(u64, usize, u64)> {
        self.store.as_ref().map(|store| (store.generation(), store.runs(), store.blocks()))
    }

    /// The committed metadata state.
    pub fn state(&self) -> &MetaState {
        &self.state
    }

    /// What the pool did since it was opened.
    pub fn counters(&self) -> &PoolCounters {
        &self.counters
    }

    /// The device of a disk.
    pub fn device(&self, disk: DiskId) -> Option<&Arc<dyn BlockDevice>> {
        self.devices.get(&disk)
    }

    /// Extents that reads found short of fragments since the pool was opened.
    pub fn degraded_extents(&self) -> &BTreeSet<crate::media::device::ExtentId> {
        &self.degraded
    }

    /// The journal's sequence number: how many records were ever committed.
    pub fn journal_seq(&self) -> u64 {
        self.tip.seq
    }

    /// The disks that carry the journal now: the metadata's choice (the first writable
    /// disks: `MetaState::journal_disks`), passing over any that refused a journal block
    /// for lack of room in the last `JOURNAL_REFUSAL_RECORDS` records. Recovery reads every
    /// disk, so the choice need not be journaled; a new member gets a checkpoint at the
    /// barrier that changed the set.
    pub fn journal_disks(&self) -> Vec<DiskId> {
        let refuses = |disk: DiskId| {
            self.journal_refused.get(&disk).is_some_and(|seq| seq + JOURNAL_REFUSAL_RECORDS > self.tip.seq)
        };
        let disks: Vec<DiskId> = self
            .state
            .disks
            .keys()
            .copied()
            .filter(|disk| self.state.disk_writable(*disk) && !refuses(*disk))
            .take(crate::meta::state::JOURNAL_REPLICAS)
            .collect();
        debug_assert!(disks.iter().all(|disk| self.state.disk_writable(*disk)));
        disks
    }

    /// Notes that journal disk `disk` refused a block for lack of room.
    pub(crate) fn journal_refused_room(&mut self, disk: DiskId) {
        tracing::warn!(%disk, "a journal disk is full; the journal moves to another disk for now");
        self.journal_refused.insert(disk, self.tip.seq);
    }

    pub(crate) fn journal_devices(&self) -> Vec<(DiskId, Arc<dyn BlockDevice>)> {
        self.journal_disks().into_iter().filter_map(|id| self.devices.get(&id).map(|d| (id, d.clone()))).collect()
    }

    /// Commits `txn` in memory: applies it and queues its ops for the next durability
    /// barrier (`sync`), which writes them to the journal. Returns the extents it freed;
    /// the caller hands them to `free_extents`, which deletes their fragments only once
    /// the freeing record is durable.
    pub(crate) fn commit(&mut self, txn: Transaction) -> Result<Vec<FreedExtent>> {
        if let Some(reason) = &self.read_only {
            return Err(Error::ReadOnly(reason.clone()));
        }
        if self.journal_devices().is_empty() {
            return Err(Error::NoDisks);
        }
        debug_assert!(
            txn.ops.iter().filter_map(Op::record).all(|r| !r.is_inline() || r.inline.is_some()),
            "an inline extent committed without its data: {txn:?}"
        );
        self.read_in_temperatures(&txn)?;
        let freed = self.state.apply_transaction(&txn);
        for op in &txn.ops {
            if let Op::SetExtent { ino, index, extent: Some(record) } = op {
                if record.is_young_inline() {
                    self.young_inline.insert(ChunkSlot { ino: *ino, index: *index });
                }
            }
        }
        self.files.room = None;
        self.reached(CommitPhase::Applied);
        self.undurable.ops.extend(txn.ops);
        self.counters.commits += 1;
        self.check_invariants();
        let waiting = self.undurable.ops.len();
        if waiting >= self.options.barrier_after_ops && !self.undurable.in_barrier {
            // The barrier thread writes the record with the lock released; a commit runs
            // the barrier itself only without one, or when it lags too far behind.
            let backlog = self.options.barrier_after_ops.saturating_mul(undurable::BACKLOG_FACTOR);
            let asked = waiting < backlog && self.undurable.signal.as_ref().is_some_and(|signal| signal.raise());
            if !asked {
                if let Err(e) = self.sync_in_passing() {
                    tracing::warn!(error = %e, "durability barrier failed");
                }
            }
        }
        Ok(freed)
    }

    /// Writes a checkpoint after a durability barrier (see `write_checkpoint`).
    pub fn checkpoint(&mut self) -> Result<()> {
        self.sync()?;
        if self.checkpoint_seq == Some(self.tip.seq) {
            return Ok(()); // nothing committed since the last one
        }
        self.write_checkpoint().map(|_| ())
    }

    /// Whether a checkpoint is due after a barrier wrote a record.
    pub(crate) fn checkpoint_due(&self, journal_set_changed: bool) -> bool {
        journal_set_changed
            || self.records_since_checkpoint >= self.options.checkpoint_every_records
            || self.record_bytes_since_checkpoint >= self.options.checkpoint_every_bytes
    }

    /// Advances the chain after a barrier made record `tip`, of `bytes`, durable.
    pub(crate) fn record_durable(&mut self, tip: JournalTip, bytes: u64) {
        assert_eq!(tip.seq, self.tip.seq + 1, "a record extends the chain by one");
        self.tip = tip;
        self.records_since_checkpoint += 1;
        self.record_bytes_since_checkpoint += bytes;
    }

    /// Writes a checkpoint of the state at the tip; returns how many journal disks hold it.
    ///
    /// The checkpoint is a commit of the paged store (`meta::store`) on the journal
    /// disks: the keys the state's tables changed since the last one, and the head (the
    /// rest of the state and the tip). When the journal disks are not all holders of the
    /// store's current root (a new member, a first checkpoint after an upgrade), or the
    /// store is of an older format, the whole state is written as a new generation instead. Each is a new generation: no
    /// root is ever rewritten in place, so a crash cannot tear the only copy.
    pub(crate) fn write_checkpoint(&mut self) -> Result<usize> {
        let journal_set = self.journal_devices();
        let fence: Vec<Arc<dyn BlockDevice>> = journal_set.iter().map(|(_, d)| d.clone()).collect();
        self.check_fence(&fence)?;
        let ids: Vec<DiskId> = journal_set.iter().map(|(id, _)| *id).collect();
        let targets: Vec<&dyn BlockDevice> = journal_set.iter().map(|(_, d)| d.as_ref()).collect();
        if targets.is_empty() {
            return Err(Error::Io("no journal disk to take the checkpoint".into()));
        }
        let members: BTreeSet<DiskId> = ids.iter().copied().collect();
        let payload = crate::meta::paged::encode_head(self.tip.seq, self.tip.hash, &mut self.state);
        self.reached(CommitPhase::CheckpointWritten);
        // Members that joined since the last checkpoint get the store's blocks copied from
        // the holders (`tidy`); only with no holder left is the whole state written anew.
        let joining: Vec<DiskId> = ids.iter().filter(|id| !self.store_members.contains(id)).copied().collect();
        if let Some(store) = self
            .store
            .as_ref()
            .filter(|_| !joining.is_empty() && members.iter().any(|id| self.store_members.contains(id)))
        {
            let failed = store.tidy(&targets);
            for failure in &failed {
                tracing::warn!(disk = %ids[failure.replica], error = %failure.error, "metadata store replica not brought up");
            }
            let out: BTreeSet<usize> = failed.iter().map(|f| f.replica).collect();
            self.store_members = ids.iter().enumerate().filter(|(i, _)| !out.contains(i)).map(|(_, id)| *id).collect();
        }
        let whole = self.rewrite_store || self.store.is_none() || !members.is_subset(&self.store_members);
        let written = if whole {
            let config = self.options.metadata_store.clone();
            // What the store holds of the temperatures and the extent records goes to the
            // new generation as it is, read before anything is written.
            let stored = self.stored_temperatures()?;
            let stored_extents = self.stored_extents()?;
            let entries = crate::meta::paged::entries(&self.state, stored, stored_extents);
            let written = Store::write_whole(&targets, config, self.store.as_ref(), entries, payload);
            // The changes stay marked until the whole state is durable: should this fail
            // and a later checkpoint commit to the old store, they are still owed to it.
            written.map(|(store, committed)| {
                crate::meta::paged::mark_clean(&mut self.state);
                self.store = Some(store);
                self.rewrite_store = false;
                committed
            })
        } else {
            let changes = crate::meta::paged::changes(&mut self.state);
            let committed = match self.store.as_mut() {
                Some(store) => store.commit_changes(&targets, changes, payload),
                None => unreachable!("a checkpoint that is not whole has a store"),
            };
            if committed.is_ok() {
                crate::meta::paged::mark_clean(&mut self.state);
            }
            committed
        };
        let committed = written.map_err(|e| Error::Io(format!("no journal disk accepted the checkpoint: {e}")))?;
        self.reached(CommitPhase::CheckpointSynced);
        let failed: BTreeSet<DiskId> = committed.failed.iter().map(|f| ids[f.replica]).collect();
        for failure in &committed.failed {
            tracing::warn!(disk = %ids[failure.replica], error = %failure.error, "checkpoint replica write failed");
            if failure.error == crate::media::device::DeviceError::NoSpace {
                self.journal_refused_room(ids[failure.replica]);
            }
        }
        let mut bytes = committed.stats.bytes;
        let holding: Vec<(DiskId, &dyn BlockDevice)> =
            journal_set.iter().filter(|(id, _)| !failed.contains(id)).map(|(id, d)| (*id, d.as_ref())).collect();
        let holders: Vec<&dyn BlockDevice> = holding.iter().map(|(_, d)| *d).collect();
        let mut store_members: BTreeSet<DiskId> = holding.iter().map(|(id, _)| *id).collect();
        if let Some(store) = self.store.as_mut() {
            // Merging runs keeps reads and the run count bounded; it changes no content,
            // so a merge that fails leaves the checkpoint as good as it was.
            while store.wants_merge() {
                match store.merge(&holders) {
                    Ok(merged) => {
                        bytes += merged.stats.bytes;
                        self.counters.store_merges += 1;
                        for failure in &merged.failed {
                            // It keeps the root before the merge: the next checkpoint
                            // writes the whole state to it again.
                            tracing::warn!(error = %failure.error, "store merge failed on a replica");
                            store_members.remove(&holding[failure.replica].0);
                        }
                        if !merged.failed.is_empty() {
                            break;
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "store merge failed; the runs stay as they are");
                        break;
                    }
                }
            }
        }
        self.store_members = store_members;
        let held = holders.len();
        self.counters.checkpoint_bytes += bytes;
        let readable = |id: &DiskId| self.state.disk_readable(*id);
        let strangers: Vec<&dyn BlockDevice> = self
            .devices
            .iter()
            .filter(|(id, _)| !members.contains(id) && readable(id))
            .map(|(_, d)| d.as_ref())
            .collect();
        for error in journal::trim(&holders, &strangers, self.options.parallel_io) {
            tracing::warn!(%error, "journal trim incomplete; recovery will finish it");
        }
        self.reached(CommitPhase::Trimmed);
        self.records_since_checkpoint = 0;
        self.record_bytes_since_checkpoint = 0;
        self.checkpoint_seq = Some(self.tip.seq);
        self.counters.checkpoints += 1;
        self.checkpoint_written_nanos = Some(self.clock.monotonic_nanos());
        if committed.failed.iter().any(|f| f.error == crate::media::device::DeviceError::NoSpace) {
            // The journal moved off a full disk: its new members get the checkpoint too.
            // Each round passes over one more disk, so this ends.
            return self.write_checkpoint();
        }
        Ok(held)
    }

    /// Adds a labelled disk to the pool. New writes use it at once.
    pub fn add_disk(
        &mut self,
        uuid: Uuid,
        capacity_bytes: Option<u64>,
        device: Arc<dyn BlockDevice>,
    ) -> Result<DiskId> {
        if self.state.disks.values().any(|d| d.uuid == uuid) {
            return Err(Error::Exists(format!("disk {uuid}")));
        }
        let device = self.owned(device)?;
        // A disk is only ever what its label says: it names this pool and `uuid`, or it
        // has no label yet and is given one.
        match crate::media::label::DiskLabel::read(device.as_ref()) {
            Ok(label) if label.pool_id == self.state.pool_id && label.disk_uuid == uuid => {}
            Ok(label) => {
                return Err(Error::Exists(format!(
                    "{} is labelled disk {} of pool {}, not disk {uuid} of this pool",
                    device.describe(),
                    label.disk_uuid,
                    label.pool_id
                )))
            }
            Err(crate::media::label::LabelError::Missing) => {
                let label =
                    crate::media::label::DiskLabel { pool_id: self.state.pool_id, disk_uuid: uuid, capacity_bytes };
                device
                    .write(BlockName::Label, &label.encode())
                    .and_then(|()| device.sync())
                    .map_err(|e| Error::Io(format!("labelling {}: {e}", device.describe())))?;
            }
            Err(e) => return Err(Error::Io(format!("{}: {e}", device.describe()))),
        }
        let record = DiskRecord {
            id: DiskId(self.state.next_disk),
            uuid,
            capacity_bytes,
            state: DiskState::Active,
            added_at: self.clock.wall(),
        };
        let id = record.id;
        self.devices.insert(id, device);
        let op = Op::AddDisk(record);
        let result = if self.state.disks.is_empty() {
            // The first disk starts the journal: its first checkpoint holds the disk itself.
            self.state.apply(&op);
            let result = self.checkpoint();
            if result.is_err() {
                self.state.disks.remove(&id);
                self.state.next_disk = id.0;
            }
            result
        } else {
            self.commit(Transaction { ops: vec![op] }).and_then(|_| self.sync())
        };
        if let Err(e) = result {
            self.devices.remove(&id);
            return Err(e);
        }
        Ok(id)
    }

    /// Frees `written`: extents whose fragments were written but that no committed
    /// record will reference (their transaction failed or was never made).
    pub(crate) fn free_written(&mut self, written: &[ExtentRecord]) {
        let freed: Vec<FreedExtent> = written.iter().map(|r| FreedExtent { id: r.id, core: r.core() }).collect();
        self.free_extents(&freed);
    }

    /// Queues the fragments of extents that a commit freed (or that were never
    /// committed) for deletion after the next durability barrier: until the freeing
    /// record is durable, a crash would bring back metadata that still needs them.
    pub(crate) fn free_extents(&mut self, freed: &[FreedExtent]) {
        self.undurable.frees.extend(freed.iter().cloned());
        #[cfg(feature = "sabotage")]
        if self.options.sabotage == Some(crate::base::hooks::Sabotage::FreeBeforeDurable) {
            self.delete_freed();
        }
    }

    pub(crate) fn reached(&self, phase: CommitPhase) {
        if let Some(observer) = &self.options.observer {
            observer.0.reached(phase);
        }
    }

    /// Removes files whose last link is gone: after a restart nothing holds them open.
    fn remove_orphan_inodes(&mut self) -> Result<usize> {
        let orphans: Vec<_> =
            self.state.inodes.values().filter(|i| i.kind == InodeKind::File && i.nlink == 0).map(|i| i.ino).collect();
        if orphans.is_empty() {
            return Ok(0);
        }
        let ops = orphans.iter().map(|ino| Op::RemoveInode(*ino)).collect();
        let freed = self.commit(Transaction { ops })?;
        self.free_extents(&freed);
        Ok(orphans.len())
    }

    /// Deletes every fragment block that no extent record places where it is.
    fn remove_orphan_fragments(&mut self) -> usize {
        let mut orphans: Vec<(DiskId, BlockName)> = Vec::new();
        for (disk, device) in self.devices.iter().filter(|(disk, _)| self.state.disk_readable(**disk)) {
            let Ok(names) = device.list(BlockKind::Fragment) else {
                continue;
            };
            orphans.extend(names.into_iter().filter(|name| !self.state.places(*disk, *name)).map(|name| (*disk, name)));
        }
        if orphans.is_empty() {
            return 0;
        }
        // Deleting what this process's state does not reference is safe only if no other
        // process can still commit it: claim the journal first (see `claim`).
        if let Err(error) = self.claim() {
            tracing::warn!(%error, "orphan fragments left for the collector: the pool could not be claimed");
            return 0;
        }
        let mut removed = 0;
        for (disk, device) in &self.devices {
            let mut changed = false;
            for (_, name) in orphans.iter().filter(|(d, _)| d == disk) {
                if device.delete(*name).is_ok() {
                    removed += 1;
                    changed = true;
                }
            }
            if changed {
                if let Err(error) = device.sync() {
                    tracing::warn!(%error, disk = %disk, "sync after orphan removal failed");
                }
            }
        }
        removed
    }

    /// `device` as this owner writes it: a shared device wrapped under this process's
    /// claim (see `media::owner`). A pool that had no shared device claims on this one
    /// now; one that had puts a copy of its claim here too, so an opener that reaches
    /// only this device still takes a later epoch.
    pub(crate) fn owned(&mut self, device: Arc<dyn BlockDevice>) -> Result<Arc<dyn BlockDevice>> {
        if !device.shared() {
            return Ok(device);
        }
        let at = self.clock.wall();
        match &self.owner {
            Some(fence) => {
                let epoch = fence.epoch();
                let claim = crate::media::owner::OwnerClaim {
                    pool_id: self.state.pool_id,
                    epoch,
                    by: self.options.claimant.clone(),
                    at,
                };
                // A copy only: the claim that fences is on the devices of the open. A
                // device that cannot take it (full, failing) is still taken.
                if let Err(error) =
                    device.create(BlockName::Owner { epoch }, &claim.encode()).and_then(|_| device.sync())
                {
                    tracing::warn!(device = %device.describe(), %error, "this owner's claim was not copied here");
                }
            }
            None => {
                self.owner =
                    crate::media::owner::claim(&[device.as_ref()], self.state.pool_id, &self.options.claimant, at)
                        .map_err(|e| Error::PoolBusy(format!("{}: {e}", device.describe())))?;
            }
        }
        Ok(OwnedDevice::wrap(device, self.owner.as_ref()))
    }

    /// Writes `data` as `name` — a block outside the metadata, the pool configuration's
    /// copy (`BlockName::PoolConfig`) — on every readable disk that does not hold exactly
    /// it already, synced. Returns what failed, per disk.
    pub(crate) fn copy_to_disks(&mut self, name: BlockName, data: &[u8]) -> Vec<String> {
        assert_eq!(name.kind(), BlockKind::PoolConfig, "only blocks outside the metadata are copied");
        let targets: Vec<Arc<dyn BlockDevice>> =
            self.devices.iter().filter(|(disk, _)| self.state.disk_readable(**disk)).map(|(_, d)| d.clone()).collect();
        crate::base::io::run_all(self.options.parallel_io, targets, |device| {
            if device.read(name).is_ok_and(|held| held == data) {
                return None;
            }
            device.write(name, data).and_then(|()| device.sync()).err().map(|e| format!("{}: {e}", device.describe()))
        })
        .into_iter()
        .flatten()
        .collect()
    }

    /// Writes a journal record that says this process owns the pool (`Op::OpenedBy`:
    /// who, and the epoch of its claim on shared disks).
    /// Another process that served the same disks — its lock forced away — finds the
    /// record where it would write its next one and is fenced (see
    /// `durability::check_fence`) before it can commit anything; so fragments that this
    /// process's state does not reference may then be deleted.
    pub(crate) fn claim(&mut self) -> Result<()> {
        let at = self.clock.wall();
        let opened = Op::OpenedBy {
            at,
            by: self.options.claimant.clone(),
            epoch: self.owner.as_ref().map(|fence| fence.epoch()),
        };
        self.commit(Transaction { ops: vec![opened] })?;
        self.sync()
    }

    pub(crate) fn check_invariants(&self) {
        if self.options.check_invariants {
            if let Err(violation) = self.state.check() {
                panic!("metadata invariant violated: {violation}");
            }
        }
    }

    /// Usable bytes and free bytes of the pool under the default policy: how much data
    /// could be stored, given that every extent needs `width` distinct disks (so a small
    /// disk limits a wide policy).
    ///
    /// While disks are offline the figures stay truthful: the total counts every active
    /// disk whose size is known, the free space only the disks that take writes now, and
    /// where too few are left for the policy's width, at the reduced width new extents
    /// are written with (down to the write quorum) — but never more than the total.
    pub fn space(&self) -> (u64, u64) {
        self.space_for(self.state.default_policy)
    }

    /// `space` for data written under `policy`.
    pub fn space_for(&self, policy: Policy) -> (u64, u64) {
        let mut total_room = Vec::new();
        let mut free_room = Vec::new();
        let deferred = self.deferred_bytes();
        let capacities = self.disk_capacities();
        for disk in self.state.disks.values().filter(|d| d.state == DiskState::Active) {
            let Some(device) = self.devices.get(&disk.id) else { continue };
            let capacity = match capacities.get(&disk.id).copied().unwrap_or(0) {
                0 => disk.capacity_bytes.unwrap_or(0),
                known => known,
            };
            if capacity > 0 {
                total_room.push(capacity);
            }
            if self.state.disk_writable(disk.id) {
                // Fragments a shared barrier freed and left for the next one to delete.
                let dying = deferred.get(&disk.id).copied().unwrap_or(0);
                free_room.push(capacity.saturating_sub(device.used_bytes().saturating_sub(dying)));
            }
        }
        let quorum = self.state.availability.write_quorum(policy);
        let width = |disks: usize| policy.width().min(disks.max(quorum));
        let total = usable_bytes_at(&total_room, width(total_room.len()), policy.needed());
        // New extents go out at full width while enough disks have room, then at reduced
        // width (down to the quorum) on the disks that still have some.
        let widths = (quorum.min(policy.width())..=policy.width()).rev();
        let free = filled_bytes(free_room, widths, policy.needed());
        // Rounding aside, what is free is never more than the pool holds, or `df` would
        // show negative use.
        let free = free.min(total);
        debug_assert!(free <= total);
        (total, free)
    }

    /// The capacity of each active disk as the pool counts it: its device's, except that
    /// free space several disks draw on (directories on one filesystem) is counted once
    /// (`shared_space`).
    pub(crate) fn disk_capacities(&self) -> BTreeMap<DiskId, u64> {
        shared_space::share_free_space(&self.disk_spaces())
    }

    /// Each active disk with a device, as the device sees itself: capacity, use and the
    /// free space it draws on.
    pub(crate) fn disk_spaces(&self) -> Vec<shared_space::DiskSpace> {
        self.state
            .disks
            .values()
            .filter(|d| d.state == DiskState::Active)
            .filter_map(|d| {
                let device = self.devices.get(&d.id)?;
                Some(shared_space::DiskSpace {
                    id: d.id,
                    capacity: device.capacity_bytes(),
                    used: device.used_bytes(),
                    shared: device.shared_free(),
                })
            })
            .collect()
    }
}

/// Data bytes that disks with `room` bytes each can hold under `policy`: the largest
/// per-disk share `s` with `sum(min(room, s)) >= width * s` (every stripe needs `width`
/// distinct disks), times the data fragments per stripe.
pub fn usable_bytes(room: &[u64], policy: Policy) -> u64 {
    usable_bytes_at(room, policy.width(), policy.needed())
}

/// `usable_bytes` for extents of `width` fragments, `needed` of which hold data.
fn usable_bytes_at(room: &[u64], width: usize, needed: usize) -> u64 {
    assert!(needed <= width);
    (stripe_share(room, width) * needed as u128).min(u128::from(u64::MAX)) as u64
}

/// Data bytes that disks with `room` bytes each take when extents go out at each of
/// `widths` in turn, every width filling what the ones before it left: the first as far
/// as it can, then the next on the disks that still have room.
fn filled_bytes(mut room: Vec<u64>, widths: impl Iterator<Item = usize>, needed: usize) -> u64 {
    let mut data = 0u128;
    for width in widths {
        assert!(needed <= width);
        let share = stripe_share(&room, width);
        if share == 0 {
            continue;
        }
        data += share * needed as u128;
        // The stripes take `width × share` bytes, at most `share` from a disk, spread in
        // proportion to what each could give.
        let offered: Vec<u128> = room.iter().map(|r| u128::from(*r).min(share)).collect();
        let offered_sum: u128 = offered.iter().sum();
        let taken = width as u128 * share;
        debug_assert!(offered_sum >= taken);
        for (r, offer) in room.iter_mut().zip(offered) {
            *r -= (offer * taken / offered_sum) as u64;
        }
    }
    data.min(u128::from(u64::MAX)) as u64
}

/// The largest per-disk share `s` of stripes `width` wide that disks with `room` bytes
/// each can hold: `sum(min(room, s)) >= width * s`.
fn stripe_share(room: &[u64], width: usize) -> u128 {
    if room.len() < width || width == 0 {
        return 0;
    }
    let width = width as u128;
    let fits = |share: u128| room.iter().map(|r| u128::from(*r).min(share)).sum::<u128>() >= width * share;
    let (mut low, mut high) = (0u128, room.iter().map(|r| u128::from(*r)).sum::<u128>() / width.max(1));
    while low < high {
        let mid = (low + high).div_ceil(2);
        if fits(mid) {
            low = mid;
        } else {
            high = mid - 1;
        }
    }
    low
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_disk_limits_a_wide_policy() {
        let erasure = Policy::erasure(4, 2).unwrap();
        // Six disks of 1, 1, 2, 2, 4, 8 units: every stripe needs all six, so the
        // smallest disk (1 unit) caps the share; 4 data fragments per stripe.
        assert_eq!(usable_bytes(&[100, 100, 200, 200, 400, 800], erasure), 400);
        let mirror = Policy::replicate(2).unwrap();
        assert_eq!(usable_bytes(&[100, 100], mirror), 100);
        // One huge disk cannot mirror with itself.
        assert_eq!(usable_bytes(&[100, 1000], mirror), 100);
        assert_eq!(usable_bytes(&[300, 300, 300], mirror), 450);
        assert_eq!(usable_bytes(&[100, 100, 100, 100, 100], erasure), 0);
    }

    #[test]
    fn free_space_fills_full_width_first_then_reduced_width() {
        // Six equal disks: all of it at full width; reduced width never adds what full
        // width already took (the old reckoning said 4.8 units for 4).
        assert_eq!(filled_bytes(vec![100; 6], (5..=6).rev(), 4), 400);
        // One disk nearly full: full width until it is, then five wide on the others.
        assert_eq!(filled_bytes(vec![10, 100, 100, 100, 100, 100], (5..=6).rev(), 4), 40 + 4 * 90);
        // Too few disks for even the quorum: nothing.
        assert_eq!(filled_bytes(vec![100; 4], (5..=6).rev(), 4), 0);
    }
}
