//! The pool changing shape at runtime: failing, draining and removing disks, and the
//! per-extent repair (rebuild) that brings redundancy back lazily.
//!
//! Every repair follows one rule: the new fragments are written, a barrier makes them
//! durable together with the record that names them, and only then are the old
//! fragments deleted. An extent is repaired whole or not at all; a crash in between
//! leaves it readable under its old layout, and the work is found again from metadata
//! (disk states, missing fragments) — nothing about it lives only in memory.
//!
//! A rebuild step reads, verifies, decodes and re-encodes a batch of extents at once on
//! the I/O threads (`read_for_repair`, which touches no pool state), then writes and
//! commits them one by one; an extent whose record or disks changed since its read (an
//! earlier repair of the batch failed a disk) is read again.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::Serialize;

use crate::base::error::{Error, Result};
use crate::base::io::run_all;
use crate::data::placement::{self, Candidate};
use crate::media::codec;
use crate::media::device::{BlockDevice, BlockName, ExtentId, UnavailableDevice};
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

/// Extents a rebuild step reads, decodes and encodes at once: ~4 MiB of buffers each.
const REPAIR_BATCH: usize = 8;

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
    /// Every shard re-encoded from the decoded extent; `None` when every fragment is kept.
    shards: std::result::Result<Option<Vec<Vec<u8>>>, RepairFailure>,
}

/// Why an extent could not be made whole again.
enum RepairFailure {
    /// Too few fragments are whole, or what they decode to fails the extent's hash.
    Lost(String),
    /// The codec refused to encode the decoded extent.
    Encode(String),
}

/// Reads and verifies every fragment of the extent (each from its own disk, at once on
/// the I/O threads: which are whole decides what is rewritten), and when any must be
/// written, decodes the extent, checks it against its hash and encodes every shard
/// again. Touches no pool state, so several extents' reads may run side by side.
fn read_for_repair(input: &RepairInput, parallel: bool) -> RepairRead {
    let record = &input.record;
    let id = record.id;
    if record.is_inline() {
        return RepairRead { fates: Vec::new(), shards: Ok(None) };
    }
    let shard_len = codec::shard_len(record.policy, record.len as usize);
    let reads: Vec<(u8, Option<&Arc<dyn BlockDevice>>)> =
        input.sources.iter().enumerate().map(|(index, (device, _))| (index as u8, device.as_ref())).collect();
    let payloads: Vec<Option<Vec<u8>>> = run_all(parallel, reads, |(index, device)| {
        let block = device?.read(BlockName::Fragment { extent: id, index }).ok()?;
        fragment::verify(&block, id, index, shard_len).ok().map(<[u8]>::to_vec)
    });
    debug_assert_eq!(payloads.len(), record.fragments.len());
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
    if fates.iter().all(|f| *f == Fate::Keep) {
        return RepairRead { fates, shards: Ok(None) };
    }
    let shards = (|| {
        let available = payloads.iter().filter(|p| p.is_some()).count();
        if available < record.policy.needed() {
            return Err(RepairFailure::Lost(format!(
                "{available} of {} fragments readable, {} needed",
                record.fragments.len(),
                record.policy.needed()
            )));
        }
        let data = codec::decode(record.codec, record.policy, record.len as usize, &payloads)
            .map_err(|e| RepairFailure::Lost(e.to_string()))?;
        if blake3::hash(&data).as_bytes() != &record.hash {
            return Err(RepairFailure::Lost("decoded data does not match the extent checksum".into()));
        }
        codec::encode(record.codec, record.policy, &data).map(Some).map_err(|e| RepairFailure::Encode(e.to_string()))
    })();
    RepairRead { fates, shards }
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
        let mut repaired = 0;
        let queue = self.rebuild_front(max_extents);
        // Several extents are read, decoded and encoded at once (both cores busy), then
        // written and committed one by one. The simulator repairs one at a time, in order.
        let batch = if self.options.parallel_io { REPAIR_BATCH } else { 1 };
        for items in queue.chunks(batch) {
            let parallel = self.options.parallel_io;
            let inputs: Vec<Result<RepairInput>> = items.iter().map(|item| self.repair_input(item.extent)).collect();
            let reads = run_all(parallel, inputs, |input| {
                input.map(|input| {
                    let read = read_for_repair(&input, parallel);
                    (input, read)
                })
            });
            for (item, read) in items.iter().zip(reads) {
                let extent = item.extent;
                match read.and_then(|(input, read)| self.finish_repair(input, read)) {
                    Ok(_) => repaired += 1,
                    Err(e @ (Error::ReadOnly(_) | Error::NoDisks)) => return Err(e),
                    Err(e) => {
                        tracing::warn!(stored_as = %extent, error = %e, "rebuild skipped");
                        self.degraded.remove(&extent);
                    }
                }
            }
        }
        // One barrier for the whole batch: new fragments, then the records, then old copies.
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

    /// What repairing extent `id` reads from: its record, and each fragment's device
    /// (`None` where its disk cannot be read) and its disk's fate.
    fn repair_input(&self, id: ExtentId) -> Result<RepairInput> {
        let Some(record) = self.extent_record(id)? else {
            return Err(Error::NotFound(format!("extent {id}")));
        };
        let sources = record.fragments.iter().map(|disk| self.repair_source(*disk)).collect();
        Ok(RepairInput { record, sources })
    }

    /// Writes what `read` found missing and commits the extent's new layout (see
    /// `rewrite_fragments`), once it checked that `input` still holds: an earlier repair
    /// of the same batch may have failed a disk or moved a fragment meanwhile, and then
    /// the extent is read again.
    fn finish_repair(&mut self, input: RepairInput, read: RepairRead) -> Result<bool> {
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
            return self.apply_repair(input, read);
        }
        let input = self.repair_input(id)?;
        let read = read_for_repair(&input, self.options.parallel_io);
        self.apply_repair(input, read)
    }

    /// Where a repair reads a fragment on `disk` from (`None`: its disk cannot be read),
    /// and what the disk means for it.
    fn repair_source(&self, disk: DiskId) -> (Option<Arc<dyn BlockDevice>>, DiskFate) {
        let device = self.devices.get(&disk).filter(|_| self.state.disk_readable(disk)).cloned();
        (device, self.state.fate(disk))
    }

    /// `finish_repair` on a read that is known to be current.
    fn apply_repair(&mut self, input: RepairInput, read: RepairRead) -> Result<bool> {
        let RepairInput { record, .. } = input;
        let id = record.id;
        if record.is_inline() {
            return Ok(false);
        }
        let RepairRead { fates, shards } = read;
        // Online disks that were owed this extent and hold it verified, or are about to.
        let resynced: Vec<DiskId> = record
            .fragments
            .iter()
            .zip(&fates)
            .filter(|(d, f)| **f != Fate::Move && self.state.disk_readable(**d))
            .filter(|(d, _)| self.state.owed.get(d).is_some_and(|owed| owed.contains(&id)))
            .map(|(d, _)| *d)
            .collect();
        let all = match shards {
            Ok(None) => {
                self.degraded.remove(&id);
                self.commit_resynced(id, &resynced)?;
                return Ok(false);
            }
            Ok(Some(all)) => all,
            Err(RepairFailure::Lost(detail)) => {
                return Err(Error::DataLost { extent: self.state.extent_name(id), offset: 0, detail })
            }
            Err(RepairFailure::Encode(e)) => return Err(Error::Io(e)),
        };
        let mut updated = record.clone();
        let mut taken: BTreeSet<DiskId> =
            record.fragments.iter().zip(&fates).filter(|(_, f)| **f != Fate::Move).map(|(d, _)| *d).collect();
        let mut written: Vec<DiskId> = Vec::new();
        let mut old_copies = Vec::new();
        for (index, fate) in fates.iter().enumerate() {
            if *fate == Fate::Keep {
                continue;
            }
            let name = BlockName::Fragment { extent: id, index: index as u8 };
            let block = fragment::seal(id, index as u8, &all[index]);
            let target = match fate {
                Fate::Rewrite => record.fragments[index],
                _ => {
                    let candidates = self.repair_candidates(&taken, block.len() as u64);
                    let chosen =
                        placement::place(&mut self.rng, 1, block.len() as u64, &candidates).map_err(|available| {
                            Error::Unplaceable { policy: record.policy, needed: taken.len() + 1, available }
                        })?;
                    chosen[0]
                }
            };
            let device =
                self.devices.get(&target).cloned().ok_or_else(|| Error::Io(format!("disk {target} has no device")))?;
            if let Err(e) = device.write(name, &block) {
                if e != crate::media::device::DeviceError::NoSpace {
                    self.disk_io_failed(target, &e);
                }
                return Err(Error::Io(format!("writing {name} to {target}: {e}")));
            }
            written.push(target);
            taken.insert(target);
            if *fate == Fate::Move {
                if self.state.disk_readable(record.fragments[index]) {
                    old_copies.push((record.fragments[index], name));
                }
                updated.fragments[index] = target;
            }
        }
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
