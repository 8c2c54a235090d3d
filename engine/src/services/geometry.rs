//! The pool changing shape at runtime: failing, draining and removing disks, and the
//! per-extent repair (rebuild) that brings redundancy back lazily.
//!
//! Every repair follows one rule: the new fragments are written, a barrier makes them
//! durable together with the record that names them, and only then are the old
//! fragments deleted. An extent is repaired whole or not at all; a crash in between
//! leaves it readable under its old layout, and the work is found again from metadata
//! (disk states, missing fragments) — nothing about it lives only in memory.
//!
//! A rebuild step is a pipeline over batches of extents, its disk and CPU work on the
//! I/O threads and touching no pool state: while one batch's fragments are read
//! (`read_blocks`, one flat set of reads), the batch before it is verified, decoded and
//! its lost fragments made again (`repair_from`, one lane per core), and the batch
//! before that writes its new fragments, all of them at once (`write_repairs`). Between
//! those, under `&mut Pool` and in order, a batch is placed (`place_repair`) and booked
//! (`book_repair`). An extent whose record or disks changed since it was read (an
//! earlier repair failed a disk) is read again before it is placed; a repair whose
//! write failed, or whose target disk changed while it wrote, is not booked and waits
//! for a later step. Measured on six directories of one disk (1 GiB under
//! `erasure:4+2`, one disk replaced): 413 MiB/s with one extent's writes at a time and
//! every fragment's payload copied thrice, 726 this way.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::Serialize;

use crate::base::error::{Error, Result};
use crate::base::io::run_all;
use crate::data::placement::{self, Candidate};
use crate::media::codec;
use crate::media::device::{BlockDevice, BlockName, DeviceError, ExtentId, UnavailableDevice};
use crate::media::fragment;
use crate::meta::state::{DiskFate, DiskId, DiskState, ExtentRecord, Op, Transaction};
use crate::pool::Pool;

/// One extent waiting for repair.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RebuildItem {
    pub extent: ExtentId,
    pub policy: String,
    /// Fragments still usable beyond the ones a read needs: 0 means one more loss
    /// loses the extent. The queue is ordered by this, most endangered first.
    pub spare: usize,
    /// Fragment indexes to rewrite.
    pub missing: Vec<u8>,
}

/// Write or sync failures in a row after which a disk is marked failed.
pub const DISK_ERRORS_TO_FAIL: u32 = 3;

/// Where a drain stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DrainProgress {
    pub moved: usize,
    pub remaining: usize,
}

/// Why a fragment must be rewritten.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Keep,
    /// Its disk is fine but the block is missing or corrupt: rewrite it there.
    Rewrite,
    /// Its disk is failed, removed or being drained: place it on another disk.
    Move,
}

/// Extents per batch of a rebuild's pipeline. Each holds its fragments as read and the
/// ones made again (~1.5 MiB under `erasure:4+2`), and up to three batches are in
/// flight. Measured: 16 as fast as 32 or 64.
const REPAIR_BATCH: usize = 16;

/// What a repair of one extent reads from (`Pool::repair_input`).
struct RepairInput {
    record: ExtentRecord,
    /// Per fragment: the device to read it from (`None`: unreadable), its disk's fate.
    sources: Vec<(Option<Arc<dyn BlockDevice>>, DiskFate)>,
}

/// What a repair found, before it writes anything.
struct RepairRead {
    /// Per fragment: kept, rewritten in place or moved.
    fates: Vec<Fate>,
    /// The fragments to write (every one whose fate is not `Keep`, in index order);
    /// `None` when every fragment is kept.
    rewritten: std::result::Result<Option<Vec<Rewritten>>, RepairFailure>,
}

/// A fragment's payload made again from the extent's other fragments.
struct Rewritten {
    index: u8,
    payload: Vec<u8>,
    hash: [u8; 32],
}

/// Why an extent could not be made whole again.
enum RepairFailure {
    /// Too few fragments are whole, or what they decode to fails the extent's hash.
    Lost(String),
    /// The codec refused to encode the decoded extent.
    Encode(String),
}

/// One fragment a placed repair writes.
struct RepairWrite {
    index: u8,
    name: BlockName,
    target: DiskId,
    device: Arc<dyn BlockDevice>,
    /// The target's fate and readability when the write was placed: a write booked after
    /// either changed (another repair of the batch failed the disk) does not count.
    placed_on: (DiskFate, bool),
    header: [u8; fragment::HEADER_LEN],
    payload: Vec<u8>,
}

/// A repair whose fragments are placed, ready to write and then book
/// (`Pool::place_repair`, `write_repairs`, `Pool::book_repair`).
struct RepairPlan {
    record: ExtentRecord,
    fates: Vec<Fate>,
    /// Online disks that were owed this extent and hold it verified, or are about to.
    resynced: Vec<DiskId>,
    writes: Vec<RepairWrite>,
}

/// Writes every placed fragment, at once on the I/O threads when `parallel`; one
/// outcome per write, in order. Touches no pool state.
fn write_repairs(parallel: bool, writes: Vec<&RepairWrite>) -> Vec<std::result::Result<(), DeviceError>> {
    run_all(parallel, writes, |write| write.device.write_parts(write.name, &write.header, &write.payload))
}

/// Each fragment's block of one extent as read, unverified (`None`: unreadable).
type Blocks = Vec<Option<Vec<u8>>>;

/// Reads every fragment of every extent in `inputs` (each from its own disk), at once on
/// the I/O threads when `parallel`: one flat set of reads, so that no read waits behind
/// another extent's decoding. Touches no pool state.
fn read_blocks(parallel: bool, inputs: &[&RepairInput]) -> Vec<Blocks> {
    let stored = |input: &RepairInput| !input.record.is_inline();
    let reads: Vec<(Option<&Arc<dyn BlockDevice>>, BlockName)> = inputs
        .iter()
        .filter(|input| stored(input))
        .flat_map(|input| {
            input.sources.iter().enumerate().map(|(index, (device, _))| {
                (device.as_ref(), BlockName::Fragment { extent: input.record.id, index: index as u8 })
            })
        })
        .collect();
    let mut blocks = run_all(parallel, reads, |(device, name)| device?.read(name).ok()).into_iter();
    let out: Vec<Blocks> = inputs
        .iter()
        .map(|input| if stored(input) { blocks.by_ref().take(input.sources.len()).collect() } else { Vec::new() })
        .collect();
    assert!(blocks.next().is_none(), "every block read handed to its extent");
    out
}

/// Reads and verifies every fragment of the extent, and what to write (`repair_from`).
fn read_for_repair(input: &RepairInput, parallel: bool) -> RepairRead {
    let blocks = read_blocks(parallel, &[input]).pop().unwrap_or_default();
    repair_from(input, blocks)
}

/// Verifies every fragment read of the extent (which are whole decides what is
/// rewritten), and when any must be written, restores the data shards, checks them
/// against the extent's hash and makes again the payloads of the fragments to write —
/// only those, and without joining the extent into one buffer. CPU work only; touches
/// no pool state, so several extents' repairs may be worked out side by side.
///
/// An erasure-coded extent is first worked out trusting its data shards' headers: the
/// extent's hash over the data shards then proves every one of them at once, and only
/// the parity fragments are verified one by one (a third less hashing). On any doubt —
/// the hash does not hold, too few fragments, a codec error — every fragment is
/// verified on its own and the work done again.
fn repair_from(input: &RepairInput, blocks: Blocks) -> RepairRead {
    let record = &input.record;
    if record.is_inline() {
        return RepairRead { fates: Vec::new(), rewritten: Ok(None) };
    }
    assert_eq!(blocks.len(), record.fragments.len(), "a read for every fragment");
    let erasure = matches!(record.policy, crate::base::policy::Policy::Erasure { .. });
    if let Some(read) = erasure.then(|| work_out(input, &blocks, true)).flatten() {
        return read;
    }
    match work_out(input, &blocks, false) {
        Some(read) => read,
        None => unreachable!("a repair that trusts nothing always settles"),
    }
}

/// `repair_from`'s work, with `trust_data`: the data shards' payloads taken on their
/// headers, to be proven by the extent's hash (`None` when it does not hold, or
/// anything else fails: the caller then trusts nothing). Without it, never `None`.
fn work_out(input: &RepairInput, blocks: &Blocks, trust_data: bool) -> Option<RepairRead> {
    let record = &input.record;
    let id = record.id;
    let shard_len = codec::shard_len(record.policy, record.len as usize);
    let data_count = match record.policy {
        crate::base::policy::Policy::Erasure { data, .. } => usize::from(data),
        crate::base::policy::Policy::Replicate { .. } => 0,
    };
    // Each whole fragment's payload.
    let payloads: Vec<Option<&[u8]>> = blocks
        .iter()
        .enumerate()
        .map(|(index, block)| {
            let block = block.as_deref()?;
            let trusted = trust_data && index < data_count;
            let payload = if trusted {
                fragment::payload_unchecked(block, id, index as u8, shard_len)
            } else {
                fragment::verify(block, id, index as u8, shard_len)
            };
            payload.ok()
        })
        .collect();
    let fates: Vec<Fate> = input
        .sources
        .iter()
        .zip(&payloads)
        .map(|((_, fate), payload)| match (fate, payload) {
            (DiskFate::Serving, Some(_)) => Fate::Keep,
            (DiskFate::Serving, None) => Fate::Rewrite,
            // Waited for: it keeps its fragment (or is owed it) until it returns.
            (DiskFate::Awaited, _) => Fate::Keep,
            (DiskFate::Leaving, _) => Fate::Move,
        })
        .collect();
    let all_kept = fates.iter().all(|f| *f == Fate::Keep);
    if all_kept && !trust_data {
        return Some(RepairRead { fates, rewritten: Ok(None) });
    }
    let rewritten = (|| {
        let available = payloads.iter().filter(|p| p.is_some()).count();
        if available < record.policy.needed() {
            return Err(RepairFailure::Lost(format!(
                "{available} of {} fragments readable, {} needed",
                record.fragments.len(),
                record.policy.needed()
            )));
        }
        let data = codec::data_shards(record.codec, record.policy, &payloads)
            .map_err(|e| RepairFailure::Lost(e.to_string()))?;
        let mut hasher = blake3::Hasher::new();
        let mut left = record.len as usize;
        for shard in &data {
            let take = left.min(shard.len());
            hasher.update(&shard[..take]);
            left -= take;
        }
        if left != 0 || hasher.finalize().as_bytes() != &record.hash {
            return Err(RepairFailure::Lost("decoded data does not match the extent checksum".into()));
        }
        if all_kept {
            return Ok(None);
        }
        let wanted = || fates.iter().enumerate().filter(|(_, f)| **f != Fate::Keep).map(|(index, _)| index);
        let parity = if wanted().any(|index| index >= data.len()) {
            codec::parity_shards(record.codec, record.policy, &data)
                .map_err(|e| RepairFailure::Encode(e.to_string()))?
        } else {
            Vec::new()
        };
        wanted()
            .map(|index| {
                let payload = match (data_count, index.checked_sub(data.len())) {
                    (0, _) => &data[0][..shard_len],
                    (_, None) => &data[index][..],
                    (_, Some(p)) => &parity[p][..],
                };
                assert_eq!(payload.len(), shard_len, "a rewritten fragment of the wrong length");
                let hash = *blake3::hash(payload).as_bytes();
                Ok(Rewritten { index: index as u8, payload: payload.to_vec(), hash })
            })
            .collect::<std::result::Result<Vec<_>, RepairFailure>>()
            .map(Some)
    })();
    match (trust_data, rewritten) {
        (true, Err(_)) => None,
        (_, rewritten) => Some(RepairRead { fates, rewritten }),
    }
}

/// One job of a rebuild's pipeline on the I/O threads: the writes of the batch placed
/// last, one lane of the next batch's decoding, the reads of the batch after it.
enum RepairStep<'a> {
    Write(Vec<&'a RepairWrite>),
    Decode(Vec<(Result<RepairInput>, Blocks)>),
    Read(Vec<Result<RepairInput>>),
}

/// What a `RepairStep` did.
enum RepairDone {
    Written(Vec<std::result::Result<(), DeviceError>>),
    Decoded(Vec<Result<(RepairInput, RepairRead)>>),
    Read(Vec<(Result<RepairInput>, Blocks)>),
}

impl RepairStep<'_> {
    fn run(self, parallel: bool) -> RepairDone {
        match self {
            RepairStep::Write(writes) => RepairDone::Written(write_repairs(parallel, writes)),
            RepairStep::Decode(lane) => RepairDone::Decoded(
                lane.into_iter()
                    .map(|(input, blocks)| {
                        input.map(|input| {
                            let read = repair_from(&input, blocks);
                            (input, read)
                        })
                    })
                    .collect(),
            ),
            RepairStep::Read(inputs) => RepairDone::Read(fetch_batch(parallel, inputs)),
        }
    }
}

/// Reads the fragments of every extent of a batch whose repair input was found
/// (`read_blocks`); an extent without one gets no blocks and keeps its error.
fn fetch_batch(parallel: bool, inputs: Vec<Result<RepairInput>>) -> Vec<(Result<RepairInput>, Blocks)> {
    let readable: Vec<&RepairInput> = inputs.iter().filter_map(|input| input.as_ref().ok()).collect();
    let mut blocks = read_blocks(parallel, &readable).into_iter();
    let fetched = inputs
        .into_iter()
        .map(|input| {
            let extent_blocks = if input.is_ok() { blocks.next().unwrap_or_default() } else { Vec::new() };
            (input, extent_blocks)
        })
        .collect();
    assert!(blocks.next().is_none(), "every readable extent's blocks handed back");
    fetched
}

/// Threads a rebuild decodes on at once: one per core, so that the rest of the I/O
/// threads stay free for the next batch's reads.
fn decode_lanes(parallel: bool) -> usize {
    if parallel {
        std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get).clamp(1, 8)
    } else {
        1
    }
}

impl Pool {
    fn disk_record_state(&self, disk: DiskId) -> Result<DiskState> {
        self.state
            .disks
            .get(&disk)
            .map(|d| d.state)
            .ok_or_else(|| Error::NotFound(format!("disk {disk} (see `dfs list-disks`)")))
    }

    /// Marks `disk` failed, as a dead disk would be: nothing reads or writes it again,
    /// reads of its extents are served degraded at once and the lazy rebuild begins. An
    /// offline disk may be failed at once instead of waiting for its grace period.
    /// Durable on return.
    pub fn fail_disk(&mut self, disk: DiskId) -> Result<()> {
        self.mark_failed(disk)?;
        self.sync()
    }

    /// `fail_disk` without the barrier (safe inside one).
    pub(crate) fn mark_failed(&mut self, disk: DiskId) -> Result<()> {
        match self.disk_record_state(disk)? {
            DiskState::Failed => return Err(Error::InvalidArgument(format!("disk {disk} is already failed"))),
            DiskState::Removed => return Err(Error::InvalidArgument(format!("disk {disk} was removed"))),
            DiskState::Active | DiskState::Draining => {}
        }
        let at = self.clock.wall();
        self.commit(Transaction { ops: vec![Op::SetDiskStateAt { disk, state: DiskState::Failed, at }] })?;
        self.devices.insert(disk, Arc::new(UnavailableDevice::new(disk.to_string(), "disk marked failed")));
        self.probes.forget(disk);
        tracing::warn!(%disk, "disk marked failed; its extents are degraded until rebuilt");
        self.counters.disks_failed += 1;
        Ok(())
    }

    /// Counts an I/O failure of `disk` (not a full disk). A disk that cannot be reached
    /// at all goes offline at once; one that keeps failing I/O goes offline after
    /// `DISK_ERRORS_TO_FAIL` failures without a success in between. Offline, not failed:
    /// it is failed only when its grace period ends (see `reachability`).
    pub(crate) fn disk_io_failed(&mut self, disk: DiskId, error: &crate::media::device::DeviceError) {
        let count = self.io_errors.entry(disk).or_default();
        *count += 1;
        let unreachable = matches!(error, crate::media::device::DeviceError::Unavailable(_));
        if (unreachable || *count >= DISK_ERRORS_TO_FAIL) && self.state.disk_readable(disk) {
            let reason = if unreachable {
                error.to_string()
            } else {
                format!("{} I/O errors in a row, the last: {error}", *count)
            };
            self.io_errors.remove(&disk);
            if let Err(error) = self.mark_offline(disk, &reason) {
                tracing::error!(%disk, %error, "marking the disk offline did not commit");
            }
        }
    }

    /// Starts removing `disk`: checks up front that the other disks can take every
    /// fragment it holds, then marks it draining (durable). Already draining: resumes.
    pub fn start_removal(&mut self, disk: DiskId) -> Result<usize> {
        match self.disk_record_state(disk)? {
            DiskState::Removed => return Err(Error::InvalidArgument(format!("disk {disk} was already removed"))),
            DiskState::Draining => return Ok(self.count_on(disk)),
            DiskState::Active | DiskState::Failed => {}
        }
        self.check_removable(disk)?;
        let affected = self.count_on(disk);
        let state = self.disk_record_state(disk)?;
        let next = if state == DiskState::Failed { DiskState::Failed } else { DiskState::Draining };
        if next == DiskState::Draining {
            let at = self.clock.wall();
            self.commit(Transaction { ops: vec![Op::SetDiskStateAt { disk, state: next, at }] })?;
            self.sync()?;
        }
        Ok(affected)
    }

    /// Refuses, with the reason, a removal the remaining disks could not absorb.
    fn check_removable(&self, disk: DiskId) -> Result<()> {
        let others: Vec<DiskId> = self
            .state
            .disks
            .values()
            .filter(|d| d.id != disk && self.state.disk_writable(d.id))
            .map(|d| d.id)
            .collect();
        if others.is_empty() {
            return Err(Error::InvalidArgument(format!("disk {disk} is the last active disk; add another first")));
        }
        // New data must stay placeable too: the default and every policy set on a file
        // or directory.
        let mut widest = Some(self.state.default_policy);
        for policy in self.state.inodes.values().filter_map(|i| i.policy) {
            if widest.is_none_or(|w: crate::base::policy::Policy| policy.width() > w.width()) {
                widest = Some(policy);
            }
        }
        let mut bytes = 0u64;
        for id in self.extents_on(disk) {
            let Some(record) = self.state.extents.get(&id) else { continue };
            if widest.is_none_or(|w: crate::base::policy::Policy| record.policy.width() > w.width()) {
                widest = Some(record.policy);
            }
            bytes += (fragment::HEADER_LEN + codec::shard_len(record.policy, record.len as usize)) as u64;
        }
        if let Some(policy) = widest {
            if others.len() < policy.width() {
                return Err(Error::Unplaceable { policy, needed: policy.width(), available: others.len() });
            }
        }
        let free: u64 = others
            .iter()
            .filter_map(|d| self.devices.get(d))
            .map(|d| d.capacity_bytes().saturating_sub(d.used_bytes()))
            .sum();
        if bytes > free {
            return Err(Error::NoSpace(format!(
                "disk {disk} holds {} of fragments but the other disks have {} free",
                crate::base::units::human(bytes),
                crate::base::units::human(free)
            )));
        }
        Ok(())
    }

    /// Extents with a fragment on `disk`, in id order.
    pub fn extents_on(&self, disk: DiskId) -> Vec<ExtentId> {
        self.state.extent_index.on_disk(disk).collect()
    }

    /// How many extents have a fragment on `disk`.
    pub fn count_on(&self, disk: DiskId) -> usize {
        usize::try_from(self.state.extent_index.count_on_disk(disk)).unwrap_or(usize::MAX)
    }

    /// Moves the fragments of up to `max_extents` extents off draining `disk`; once none
    /// is left, the disk is removed (durable). Returns where the drain stands.
    pub fn drain_step(&mut self, disk: DiskId, max_extents: usize) -> Result<DrainProgress> {
        if self.disk_record_state(disk)? != DiskState::Draining {
            return Err(Error::InvalidArgument(format!("disk {disk} is not draining")));
        }
        let pending: Vec<ExtentId> = self.state.extent_index.on_disk(disk).take(max_extents).collect();
        let mut moved = 0;
        for id in pending {
            self.rewrite_fragments(id)?;
            moved += 1;
        }
        self.sync()?;
        let remaining = self.count_on(disk);
        if remaining == 0 {
            self.finish_removal(disk)?;
        }
        Ok(DrainProgress { moved, remaining })
    }

    /// Marks a disk that holds no fragment removed, and deletes its metadata blocks.
    pub fn finish_removal(&mut self, disk: DiskId) -> Result<()> {
        if self.count_on(disk) > 0 {
            return Err(Error::InvalidArgument(format!("disk {disk} still holds fragments")));
        }
        let at = self.clock.wall();
        self.commit(Transaction { ops: vec![Op::SetDiskStateAt { disk, state: DiskState::Removed, at }] })?;
        self.sync()?;
        self.devices.insert(disk, Arc::new(UnavailableDevice::new(disk.to_string(), "disk removed")));
        tracing::info!(%disk, "disk removed from the pool");
        Ok(())
    }

    /// Extents short of fragments, most endangered first: those with a fragment on a
    /// failed, removed or draining disk, those owed to a disk that is back online, and
    /// those a read found damaged. Fragments on an offline disk still waited for are not
    /// missing yet: nothing is rebuilt during the grace period.
    pub fn rebuild_queue(&self) -> Vec<RebuildItem> {
        self.rebuild_front(usize::MAX)
    }

    /// How many extents the rebuild queue holds.
    pub fn rebuild_queue_len(&self) -> usize {
        let indexed = usize::try_from(self.state.extent_index.at_risk_len()).unwrap_or(usize::MAX);
        indexed + self.damaged_only().count()
    }

    /// The first `max` items of the rebuild queue, from the state's index of extents
    /// short of fragments merged with the ones reads found damaged — without visiting
    /// the others.
    pub fn rebuild_front(&self, max: usize) -> Vec<RebuildItem> {
        let mut front: Vec<(usize, ExtentId)> = self.state.extent_index.at_risk().take(max).collect();
        front.extend(self.damaged_only());
        front.sort_unstable();
        front.truncate(max);
        let items: Vec<RebuildItem> = front
            .into_iter()
            .filter_map(|(spare, id)| {
                let record = self.state.extents.get(&id)?;
                let missing = self.state.missing_fragments(id, record);
                Some(RebuildItem { extent: id, policy: record.policy.to_string(), spare, missing })
            })
            .collect();
        debug_assert!(
            self.scanned_rebuild_queue().into_iter().take(max).eq(items.iter().cloned()),
            "the rebuild queue differs from a scan"
        );
        items
    }

    /// Extents a read found damaged that the state does not already count short, each
    /// with its spare.
    fn damaged_only(&self) -> impl Iterator<Item = (usize, ExtentId)> + '_ {
        self.degraded.iter().filter(|id| !self.state.extent_index.is_at_risk(**id)).filter_map(|id| {
            let record = self.state.extents.get(id).filter(|r| !r.is_inline())?;
            Some((self.state.spare(record), *id))
        })
    }

    /// `rebuild_queue`, from a visit of every extent: what the index must agree with.
    fn scanned_rebuild_queue(&self) -> Vec<RebuildItem> {
        let mut items: Vec<RebuildItem> = self
            .state
            .extents
            .iter()
            .filter(|(_, r)| !r.is_inline())
            .filter_map(|(id, record)| {
                let missing = self.state.missing_fragments(id, record);
                if missing.is_empty() && !self.degraded.contains(&id) {
                    return None;
                }
                let spare = self.state.spare(record);
                Some(RebuildItem { extent: id, policy: record.policy.to_string(), spare, missing })
            })
            .collect();
        items.sort_by_key(|item| (item.spare, item.extent));
        items
    }

    /// Repairs up to `max_extents` extents from the front of the rebuild queue; returns
    /// how many it repaired. An extent that cannot be repaired now (lost, or no disk to
    /// put a fragment on) is skipped with a warning.
    pub fn rebuild_step(&mut self, max_extents: usize) -> Result<usize> {
        let parallel = self.options.parallel_io;
        let queue = self.rebuild_front(max_extents);
        // A pipeline over batches of extents: while batch i+1's fragments are read, batch
        // i is decoded (one lane per core) and batch i-1's new fragments are written;
        // then batch i-1 is booked and batch i placed, in order, under `&mut self`. The
        // simulator runs it one extent at a time, every step in order.
        let batches: Vec<&[RebuildItem]> = queue.chunks(if parallel { REPAIR_BATCH } else { 1 }).collect();
        let lanes = decode_lanes(parallel);
        let mut repaired = 0;
        let mut fetched = match batches.first() {
            Some(items) => fetch_batch(parallel, self.batch_inputs(items)),
            None => Vec::new(),
        };
        let mut placed: Vec<(ExtentId, Result<Option<RepairPlan>>)> = Vec::new();
        for i in 0..=batches.len() {
            let writes: Vec<&RepairWrite> =
                placed.iter().flat_map(|(_, plan)| plan.iter().flatten().flat_map(|plan| &plan.writes)).collect();
            let mut steps = vec![RepairStep::Write(writes)];
            let decode = std::mem::take(&mut fetched);
            let per_lane = decode.len().div_ceil(lanes).max(1);
            let mut decode = decode.into_iter().peekable();
            while decode.peek().is_some() {
                steps.push(RepairStep::Decode(decode.by_ref().take(per_lane).collect()));
            }
            if let Some(items) = batches.get(i + 1) {
                steps.push(RepairStep::Read(self.batch_inputs(items)));
            }
            let mut outcomes = Vec::new();
            let mut decoded = Vec::new();
            for done in run_all(parallel, steps, |step| step.run(parallel)) {
                match done {
                    RepairDone::Written(done) => outcomes = done,
                    RepairDone::Decoded(lane) => decoded.extend(lane),
                    RepairDone::Read(read) => fetched = read,
                }
            }
            let mut outcomes = outcomes.into_iter();
            for (extent, plan) in std::mem::take(&mut placed) {
                let booked = plan.and_then(|plan| match plan {
                    Some(plan) => {
                        let mine: Vec<_> = outcomes.by_ref().take(plan.writes.len()).collect();
                        self.book_repair(plan, mine)
                    }
                    None => Ok(false),
                });
                match booked {
                    Ok(_) => repaired += 1,
                    Err(e @ (Error::ReadOnly(_) | Error::NoDisks)) => return Err(e),
                    Err(e) => {
                        tracing::warn!(stored_as = %extent, error = %e, "rebuild skipped");
                        self.degraded.remove(&extent);
                    }
                }
            }
            assert!(outcomes.next().is_none(), "every write of the batch booked");
            let Some(items) = batches.get(i) else { break };
            assert_eq!(decoded.len(), items.len(), "a repair worked out for every extent of the batch");
            placed = items
                .iter()
                .zip(decoded)
                .map(|(item, read)| (item.extent, read.and_then(|(input, read)| self.place_current(input, read))))
                .collect();
        }
        assert!(placed.is_empty() && fetched.is_empty(), "every batch booked");
        // One barrier for the whole step: new fragments, then the records, then old copies.
        self.sync()?;
        self.counters.extents_repaired += repaired as u64;
        Ok(repaired)
    }

    /// Brings one extent back to full redundancy: fragments on failed, removed or
    /// draining disks move to active disks holding no other fragment of it; missing or
    /// corrupt fragments on healthy disks are rewritten in place. Only those fragments
    /// are written. Commits the record switch in memory and queues the old copies for
    /// deletion, so the caller's next barrier makes it durable (safe inside a barrier).
    /// Returns whether anything changed.
    pub(crate) fn rewrite_fragments(&mut self, id: ExtentId) -> Result<bool> {
        let input = self.repair_input(id)?;
        let read = read_for_repair(&input, self.options.parallel_io);
        self.apply_repair(input, read)
    }

    /// What repairing each extent of `items` reads from.
    fn batch_inputs(&self, items: &[RebuildItem]) -> Vec<Result<RepairInput>> {
        items.iter().map(|item| self.repair_input(item.extent)).collect()
    }

    /// What repairing extent `id` reads from: its record, and each fragment's device
    /// (`None` where its disk cannot be read) and its disk's fate.
    fn repair_input(&self, id: ExtentId) -> Result<RepairInput> {
        let Some(record) = self.extent_record(id)? else {
            return Err(Error::NotFound(format!("extent {id}")));
        };
        let sources = record.fragments.iter().map(|disk| self.repair_source(*disk)).collect();
        Ok(RepairInput { record, sources })
    }

    /// Places what `read` found missing (`place_repair`), once it checked that `input`
    /// still holds: an earlier repair of the same batch may have failed a disk or moved
    /// a fragment meanwhile, and then the extent is read again.
    fn place_current(&mut self, input: RepairInput, read: RepairRead) -> Result<Option<RepairPlan>> {
        let id = input.record.id;
        let current = |disk: &DiskId| {
            let (device, fate) = self.repair_source(*disk);
            (device.is_some(), fate)
        };
        let unchanged = self.state.extents.get(&id) == Some(&input.record.core())
            && input
                .record
                .fragments
                .iter()
                .zip(&input.sources)
                .all(|(disk, (device, fate))| current(disk) == (device.is_some(), *fate));
        if unchanged {
            return self.place_repair(input, read);
        }
        let input = self.repair_input(id)?;
        let read = read_for_repair(&input, self.options.parallel_io);
        self.place_repair(input, read)
    }

    /// Where a repair reads a fragment on `disk` from (`None`: its disk cannot be read),
    /// and what the disk means for it.
    fn repair_source(&self, disk: DiskId) -> (Option<Arc<dyn BlockDevice>>, DiskFate) {
        let device = self.devices.get(&disk).filter(|_| self.state.disk_readable(disk)).cloned();
        (device, self.state.fate(disk))
    }

    /// Places, writes and books a read that is known to be current, one fragment after
    /// another; whether anything changed.
    fn apply_repair(&mut self, input: RepairInput, read: RepairRead) -> Result<bool> {
        let Some(plan) = self.place_repair(input, read)? else {
            return Ok(false);
        };
        let outcomes = write_repairs(false, plan.writes.iter().collect());
        self.book_repair(plan, outcomes)
    }

    /// Chooses a disk for every fragment `read` found must be written, or settles the
    /// extent at once when none must (`None`: nothing changed).
    fn place_repair(&mut self, input: RepairInput, read: RepairRead) -> Result<Option<RepairPlan>> {
        let RepairInput { record, .. } = input;
        let id = record.id;
        if record.is_inline() {
            return Ok(None);
        }
        let RepairRead { fates, rewritten } = read;
        let resynced: Vec<DiskId> = record
            .fragments
            .iter()
            .zip(&fates)
            .filter(|(d, f)| **f != Fate::Move && self.state.disk_readable(**d))
            .filter(|(d, _)| self.state.owed.get(d).is_some_and(|owed| owed.contains(&id)))
            .map(|(d, _)| *d)
            .collect();
        let rewritten = match rewritten {
            Ok(None) => {
                self.degraded.remove(&id);
                self.commit_resynced(id, &resynced)?;
                return Ok(None);
            }
            Ok(Some(rewritten)) => rewritten,
            Err(RepairFailure::Lost(detail)) => {
                return Err(Error::DataLost { extent: self.state.extent_name(id), offset: 0, detail })
            }
            Err(RepairFailure::Encode(e)) => return Err(Error::Io(e)),
        };
        assert_eq!(
            rewritten.len(),
            fates.iter().filter(|f| **f != Fate::Keep).count(),
            "a payload for every fragment to write"
        );
        let mut taken: BTreeSet<DiskId> =
            record.fragments.iter().zip(&fates).filter(|(_, f)| **f != Fate::Move).map(|(d, _)| *d).collect();
        let mut writes = Vec::with_capacity(rewritten.len());
        for Rewritten { index, payload, hash } in rewritten {
            let block_len = (fragment::HEADER_LEN + payload.len()) as u64;
            let target = match fates[usize::from(index)] {
                Fate::Rewrite => record.fragments[usize::from(index)],
                _ => {
                    let candidates = self.repair_candidates(&taken, block_len);
                    let chosen = placement::place(&mut self.rng, 1, block_len, &candidates).map_err(|available| {
                        Error::Unplaceable { policy: record.policy, needed: taken.len() + 1, available }
                    })?;
                    chosen[0]
                }
            };
            let device =
                self.devices.get(&target).cloned().ok_or_else(|| Error::Io(format!("disk {target} has no device")))?;
            taken.insert(target);
            writes.push(RepairWrite {
                index,
                name: BlockName::Fragment { extent: id, index },
                target,
                device,
                placed_on: (self.state.fate(target), self.state.disk_readable(target)),
                header: fragment::header(id, index, &payload, &hash),
                payload,
            });
        }
        Ok(Some(RepairPlan { record, fates, resynced, writes }))
    }

    /// Commits a placed repair whose fragments were written (`outcomes`, one per write):
    /// the extent's new layout, what its disks were owed, the old copies to delete at
    /// the next barrier. A failed write, or a target whose disk changed since the write
    /// was placed, fails the whole repair (the fragments written become orphans) and
    /// leaves the extent for a later step.
    fn book_repair(&mut self, plan: RepairPlan, outcomes: Vec<std::result::Result<(), DeviceError>>) -> Result<bool> {
        let RepairPlan { record, fates, resynced, writes } = plan;
        let id = record.id;
        assert_eq!(outcomes.len(), writes.len(), "an outcome for every write");
        let mut failure = None;
        for (write, outcome) in writes.iter().zip(outcomes) {
            let (name, target) = (write.name, write.target);
            match outcome {
                Err(e) => {
                    if e != DeviceError::NoSpace {
                        self.disk_io_failed(target, &e);
                    }
                    failure.get_or_insert_with(|| Error::Io(format!("writing {name} to {target}: {e}")));
                }
                Ok(()) if (self.state.fate(target), self.state.disk_readable(target)) != write.placed_on => {
                    failure.get_or_insert_with(|| Error::Io(format!("disk {target} changed while {name} was written")));
                }
                Ok(()) => {}
            }
        }
        if let Some(error) = failure {
            return Err(error);
        }
        let mut updated = record.clone();
        let mut old_copies = Vec::new();
        for write in &writes {
            let index = usize::from(write.index);
            if fates[index] == Fate::Move {
                if self.state.disk_readable(record.fragments[index]) {
                    old_copies.push((record.fragments[index], write.name));
                }
                updated.fragments[index] = write.target;
            }
        }
        let written: Vec<DiskId> = writes.iter().map(|w| w.target).collect();
        self.fragments_written(id, &written);
        if updated.fragments != record.fragments {
            self.commit(Transaction { ops: vec![Op::PutExtent(updated)] })?;
        }
        self.commit_resynced(id, &resynced)?;
        self.undurable.fragment_frees.extend(old_copies);
        self.degraded.remove(&id);
        Ok(true)
    }

    /// Clears what `disks` were owed of extent `id` (they now hold it).
    fn commit_resynced(&mut self, id: ExtentId, disks: &[DiskId]) -> Result<()> {
        if disks.is_empty() {
            return Ok(());
        }
        let ops = disks.iter().map(|disk| Op::Resynced { disk: *disk, extents: vec![id] }).collect();
        self.commit(Transaction { ops })?;
        Ok(())
    }

    /// Active disks outside `taken`, with their free space.
    fn repair_candidates(&self, taken: &BTreeSet<DiskId>, block: u64) -> Vec<Candidate> {
        self.state
            .disks
            .values()
            .filter(|d| self.state.disk_writable(d.id) && !taken.contains(&d.id))
            .filter_map(|d| {
                let device: &Arc<dyn BlockDevice> = self.devices.get(&d.id)?;
                let free = device.capacity_bytes().saturating_sub(device.used_bytes());
                (free >= block).then_some(Candidate { disk: d.id, free_bytes: free })
            })
            .collect()
    }
}

/// What a rebalance did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct RebalanceReport {
    pub fragments_moved: usize,
    pub bytes_moved: u64,
    /// Highest minus lowest fill ratio (used / capacity) of the active disks, after.
    pub spread: f64,
}

/// Fill-ratio spread below which a pool counts as balanced.
const BALANCED_SPREAD: f64 = 0.02;

/// Moves per barrier while rebalancing.
const REBALANCE_BATCH: usize = 16;

impl Pool {
    /// Fill ratio (used / capacity) of each active disk, counting moved-away fragments
    /// that wait for the barrier as gone already.
    fn fill_ratios(&self) -> Vec<(DiskId, f64, u64)> {
        let mut leaving: std::collections::BTreeMap<DiskId, u64> = std::collections::BTreeMap::new();
        for (disk, name) in &self.undurable.fragment_frees {
            if let BlockName::Fragment { extent, .. } = name {
                if let Some(record) = self.state.extents.get(extent) {
                    *leaving.entry(*disk).or_default() +=
                        (fragment::HEADER_LEN + codec::shard_len(record.policy, record.len as usize)) as u64;
                }
            }
        }
        self.state
            .disks
            .values()
            .filter(|d| self.state.disk_writable(d.id))
            .filter_map(|d| {
                let device = self.devices.get(&d.id)?;
                let capacity = device.capacity_bytes().max(1);
                let used = device.used_bytes().saturating_sub(leaving.get(&d.id).copied().unwrap_or(0));
                Some((d.id, used as f64 / capacity as f64, capacity))
            })
            .collect()
    }

    /// Moves fragments from the fullest disks (by fill ratio) to the emptiest, keeping
    /// every extent on distinct disks, until the ratios are within 2% of each other, a
    /// move would no longer narrow the spread, or `max_bytes` have moved. Each batch is
    /// copied, committed and its old copies deleted in that order, as every repair is.
    pub fn rebalance(&mut self, max_bytes: Option<u64>) -> Result<RebalanceReport> {
        let mut report = RebalanceReport::default();
        loop {
            let mut batch = 0;
            while batch < REBALANCE_BATCH {
                if max_bytes.is_some_and(|max| report.bytes_moved >= max) {
                    break;
                }
                let Some((id, index, target, bytes)) = self.next_rebalance_move() else { break };
                self.move_fragment(id, index, target)?;
                report.fragments_moved += 1;
                report.bytes_moved += bytes;
                batch += 1;
            }
            self.sync()?;
            if batch < REBALANCE_BATCH {
                break;
            }
        }
        let ratios = self.fill_ratios();
        let (low, high) = ratios.iter().fold((f64::MAX, 0.0f64), |(lo, hi), (_, r, _)| (lo.min(*r), hi.max(*r)));
        report.spread = if ratios.is_empty() { 0.0 } else { high - low };
        Ok(report)
    }

    /// The most useful single move now: a fragment from the fullest disk that has one
    /// movable (by fill ratio) to the emptiest disk not holding its extent, if the move
    /// narrows the spread.
    fn next_rebalance_move(&self) -> Option<(ExtentId, usize, DiskId, u64)> {
        let mut ratios = self.fill_ratios();
        ratios.sort_by(|a, b| a.1.total_cmp(&b.1));
        let (lowest, highest) = (ratios.first()?.1, ratios.last()?.1);
        if highest - lowest < BALANCED_SPREAD {
            return None;
        }
        for (source, source_ratio, source_capacity) in ratios.iter().rev() {
            for (id, record) in self.state.extents.iter().filter(|(_, r)| r.fragments.contains(source)) {
                let Some(index) = record.fragments.iter().position(|d| d == source) else { continue };
                let bytes = (fragment::HEADER_LEN + codec::shard_len(record.policy, record.len as usize)) as u64;
                for (target, ratio, capacity) in ratios.iter().filter(|(d, _, _)| d != source) {
                    if record.fragments.contains(target) {
                        continue;
                    }
                    // Only moves that leave the source at least as full as the target.
                    let source_after = source_ratio - bytes as f64 / *source_capacity as f64;
                    let target_after = ratio + bytes as f64 / *capacity as f64;
                    if target_after > source_after {
                        break; // targets are in rising order: the rest fit worse
                    }
                    let free = self.devices.get(target).map(|d| d.capacity_bytes().saturating_sub(d.used_bytes()));
                    if free.is_some_and(|f| f >= bytes) {
                        return Some((id, index, *target, bytes));
                    }
                }
            }
        }
        None
    }

    /// Copies fragment `index` of extent `id` to `target` (verified first) and commits
    /// the move in memory; the old copy is deleted after the next barrier.
    fn move_fragment(&mut self, id: ExtentId, index: usize, target: DiskId) -> Result<()> {
        let Some(record) = self.extent_record(id)? else {
            return Err(Error::NotFound(format!("extent {id}")));
        };
        let source = record.fragments[index];
        let name = BlockName::Fragment { extent: id, index: index as u8 };
        let shard_len = codec::shard_len(record.policy, record.len as usize);
        let block = self
            .devices
            .get(&source)
            .and_then(|d| d.read(name).ok())
            .filter(|block| fragment::verify(block, id, index as u8, shard_len).is_ok());
        let Some(block) = block else {
            // Unreadable where it is: that is a repair, not a move.
            self.degraded.insert(id);
            return self.rewrite_fragments(id).map(|_| ());
        };
        let device =
            self.devices.get(&target).cloned().ok_or_else(|| Error::Io(format!("disk {target} has no device")))?;
        device.write(name, &block).map_err(|e| Error::Io(format!("writing {name} to {target}: {e}")))?;
        self.fragments_written(id, &[target]);
        let mut updated = record;
        updated.fragments[index] = target;
        self.commit(Transaction { ops: vec![Op::PutExtent(updated)] })?;
        self.undurable.fragment_frees.push((source, name));
        Ok(())
    }
}
