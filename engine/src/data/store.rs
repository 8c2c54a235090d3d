//! The extent store: encodes chunks into fragments, places and writes them, and
//! reads extents back, verifying every checksum and falling back to other fragments.
//!
//! Contract of `store_chunks` (and `write_chunks`, the same with the pool held
//! throughout): on `Ok`, every fragment of every returned extent is written (durable
//! after the next barrier, see `durability`) and no disk holds two fragments of one
//! extent; on `Err`, nothing is referenced and the fragments written so far were deleted
//! (or are orphans the collector removes). Between its phases the pool may serve other
//! requests: only taking ids, placing and booking need it; the extents being written sit
//! in `Pool::writing` until committed, out of the orphan collector's reach.
//!
//! Contract of `read_extent`: returns the extent's bytes exactly (BLAKE3 verified), or
//! `DataLost` — never other bytes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use thin_vec::ThinVec;

use crate::base::error::{Error, Result};
use crate::base::hooks::CommitPhase;
use crate::base::io::{run_all, spawn, Spawned};
use crate::base::policy::Policy;
use crate::base::zeros::all_zero;
use crate::data::placement::{self, Candidate};
use crate::media::codec::{self, CodecId};
use crate::media::device::{BlockDevice, BlockName, DeviceError, ExtentId, PartsBlock, STREAM_ID_GAP};
use crate::media::fragment;
use crate::media::landing::Landing;
use crate::media::read_buffer::{ReadBuffer, ALIGN as READ_ALIGN};
use crate::meta::state::{DiskId, DiskState, ExtentRecord, EXTENT_BYTES_MAX, INLINE_BYTES_MAX, INLINE_KEPT_BYTES_MAX};
use crate::pool::Pool;

struct PlannedBlock {
    name: BlockName,
    fragment: Sealed,
}

/// One fragment block, held as its header and its payload apart so that the payload is
/// copied once, into the device (`BlockDevice::write_parts`), and never into a block of
/// its own first.
#[derive(Clone)]
struct Sealed {
    header: [u8; fragment::HEADER_LEN],
    payload: Payload,
}

/// A fragment's payload: a stretch of the chunk itself (a replica, a data shard), or
/// bytes of its own (parity, a padded last data shard).
#[derive(Clone)]
enum Payload {
    Chunk(Bytes, std::ops::Range<usize>),
    Own(Bytes),
}

impl Sealed {
    fn payload(&self) -> &[u8] {
        match &self.payload {
            Payload::Chunk(chunk, range) => &chunk[range.clone()],
            Payload::Own(bytes) => bytes,
        }
    }

    /// The length of the block the device stores.
    fn block_len(&self) -> usize {
        fragment::HEADER_LEN + self.payload().len()
    }
}

/// One chunk, hashed and encoded into sealed fragments (none when inline).
struct Encoded {
    hash: [u8; 32],
    blocks: Vec<Sealed>,
}

/// Where `inner` lies within `outer`, when it is a stretch of it.
fn stretch_of(outer: &[u8], inner: &[u8]) -> Option<std::ops::Range<usize>> {
    let start = (inner.as_ptr() as usize).checked_sub(outer.as_ptr() as usize)?;
    let end = start.checked_add(inner.len())?;
    (end <= outer.len()).then_some(start..end)
}

/// How a write that runs in phases reaches the pool between them: directly, when the
/// caller holds it (the simulator, the CLI, every `&mut Pool` method: the phases then
/// run one after another), or through a front end's mutex, locked only for the short
/// phases that read or change the pool, so that hashing, encoding and fragment writes
/// run while other requests are served.
pub trait PoolAccess {
    /// Runs `f` with the pool.
    fn with<R>(&mut self, f: impl FnOnce(&mut Pool) -> R) -> R;
}

impl PoolAccess for &mut Pool {
    fn with<R>(&mut self, f: impl FnOnce(&mut Pool) -> R) -> R {
        f(self)
    }
}

impl PoolAccess for &std::sync::Mutex<Pool> {
    fn with<R>(&mut self, f: impl FnOnce(&mut Pool) -> R) -> R {
        f(&mut crate::pool::lock(self))
    }
}

/// A write of chunks as new extents, its ids taken (see `Pool::begin_write`).
#[derive(Clone)]
struct PendingWrite {
    policy: Policy,
    ids: Vec<Option<ExtentId>>,
    /// Extents up to this long go inline in metadata (0: none).
    inline_max: usize,
    parallel: bool,
    /// The `MisplacedAppend` sabotage (tests only).
    misplace: bool,
}

/// The fragment writes of one placement attempt, grouped by disk.
struct PlacedWrite {
    records: Vec<(u64, Option<ExtentRecord>)>,
    jobs: Vec<(DiskId, Arc<dyn BlockDevice>, Vec<PlannedBlock>)>,
    degraded: usize,
}

/// What each disk of a placement attempt did: the blocks it took, and its error.
type DiskOutcome = (DiskId, Arc<dyn BlockDevice>, Vec<BlockName>, std::result::Result<(), DeviceError>);

/// Chunks stored as new extents by `store_chunks`, not yet committed.
pub(crate) struct StoredChunks {
    /// `(chunk index, record)`; `None` for an all-zero chunk (a hole).
    pub(crate) records: Vec<(u64, Option<ExtentRecord>)>,
    /// Which disks took which extents' fragments (the next barrier syncs them).
    written: Vec<(ExtentId, DiskId)>,
}

/// Writes each `(chunk index, bytes)` as a new extent under `policy`, reaching the pool
/// through `access` between phases: ids are taken (locked), chunks hashed and encoded
/// (unlocked), fragments placed (locked), written (unlocked), and the outcome booked
/// (locked), placing again without the disks that failed. An all-zero chunk becomes a
/// hole (`None`); one of at most `inline_max` bytes goes inline in its record (capped at
/// `INLINE_BYTES_MAX`, and none when the journal's replicas tolerate fewer failures than
/// `policy`).
///
/// On `Ok`, every fragment of every returned extent is written, and the extents stay in
/// `Pool::writing` — safe from the orphan collector — until the caller, holding the
/// pool, calls `Pool::stored` and commits the records. On `Err`, nothing is referenced,
/// nothing stays in `writing`, and the fragments written were deleted (or are orphans
/// the collector removes).
pub(crate) fn store_chunks(
    access: &mut impl PoolAccess,
    chunks: &[(u64, Bytes)],
    policy: Policy,
    keep_zeros: &BTreeSet<u64>,
    inline_max: usize,
) -> Result<StoredChunks> {
    let pending = access.with(|pool| pool.begin_write(chunks, policy, keep_zeros, inline_max))?;
    let taken: Vec<ExtentId> = pending.ids.iter().flatten().copied().collect();
    let result = store_groups(access, &pending, chunks);
    if result.is_err() {
        access.with(|pool| pool.end_writes(&taken));
    }
    result
}

/// Extents a store encodes while the group before them is written: with the pool's I/O
/// on threads, a flush's hashing and encoding (the CPU) and its fragment writes (the
/// disks) overlap instead of following each other.
const GROUP_EXTENTS: usize = 2;

/// Groups whose fragment writes a store keeps in flight at once when its I/O is
/// parallel. With one, every group waited for the slowest of its disks before the next
/// group's writes began: timed in a 1 GiB write, a disk's write took 1.3 ms on average
/// and a group's, the slowest of six, 3.3 ms, the disks idle meanwhile. With two, the
/// next group's writes are already on the disks while the stragglers finish.
const WRITES_IN_FLIGHT: usize = 2;

/// A chunk to store: its index in the file and its bytes.
type Chunk = (u64, Bytes);

/// A group whose fragments are being written: its placement, and the write.
struct Flight {
    records: Vec<(u64, Option<ExtentRecord>)>,
    degraded: usize,
    write: Spawned<Vec<DiskOutcome>>,
}

/// The phases of `store_chunks` after the ids are taken, `GROUP_EXTENTS` chunks at a
/// time: each group is placed, written and booked (placed again without the disks that
/// failed, and written again, until it is), in order. The next group is encoded while
/// this one's fragments are written, and with parallel I/O up to `WRITES_IN_FLIGHT`
/// groups are written at once — a group placed while the one before it is still being
/// written (a disk that fails the earlier one fails the later one too, which is then
/// placed again as well). Run one after another where the pool's I/O is (the
/// simulator), each group is encoded, placed, written and booked before the next is
/// placed, the calls in the same order every run.
fn store_groups(access: &mut impl PoolAccess, pending: &PendingWrite, chunks: &[(u64, Bytes)]) -> Result<StoredChunks> {
    let groups: Vec<(PendingWrite, &[Chunk])> = pending
        .ids
        .chunks(GROUP_EXTENTS)
        .zip(chunks.chunks(GROUP_EXTENTS))
        .map(|(ids, chunks)| (PendingWrite { ids: ids.to_vec(), ..*pending }, chunks))
        .collect();
    let depth = if pending.parallel { WRITES_IN_FLIGHT } else { 1 };
    let (parallel, misplace) = (pending.parallel, pending.misplace);
    let mut records = Vec::with_capacity(chunks.len());
    let mut written = Vec::new();
    let mut excluded: BTreeSet<DiskId> = BTreeSet::new();
    // Each group's encoding, from when it is made until the group is booked.
    let mut encodings: Vec<Option<Result<Vec<Option<Encoded>>>>> = (0..groups.len()).map(|_| None).collect();
    let mut flights: std::collections::VecDeque<Flight> = std::collections::VecDeque::new();
    let mut started = 0;
    if let Some((group, group_chunks)) = groups.first() {
        encodings[0] = Some(encode_chunks(group, group_chunks));
    }
    for (i, (group, group_chunks)) in groups.iter().enumerate() {
        while started < groups.len() && started < i + depth {
            let (next, next_chunks) = &groups[started];
            let encoded = match encodings[started].as_ref() {
                Some(Ok(encoded)) => encoded,
                Some(Err(error)) => return Err(error.clone()),
                None => unreachable!("every group is encoded before it is placed"),
            };
            let PlacedWrite { records: placed, jobs, degraded } =
                access.with(|pool| pool.place_write(next, next_chunks, encoded, &excluded))?;
            // A group with nothing for the disks (inline data, holes) is booked at once:
            // handing it to a pool thread only woke one for nothing.
            let write = spawn(parallel && !jobs.is_empty(), move || write_placed(parallel, misplace, jobs));
            flights.push_back(Flight { records: placed, degraded, write });
            started += 1;
            if let Some((after, after_chunks)) = groups.get(started) {
                encodings[started] = Some(encode_chunks(after, after_chunks));
            }
        }
        let Some(Flight { records: mut placed, mut degraded, write }) = flights.pop_front() else {
            unreachable!("group {i} was started before it is booked");
        };
        let mut outcomes = write.join();
        loop {
            let extents = placed.iter().filter(|(_, r)| r.is_some()).count();
            let booked =
                access.with(|pool| pool.book_write(&outcomes, &mut excluded, extents, degraded, group.policy))?;
            if booked {
                written.extend(outcomes.iter().flat_map(|(disk, _, names, _)| {
                    names.iter().filter_map(move |name| match name {
                        BlockName::Fragment { extent, .. } => Some((*extent, *disk)),
                        _ => None,
                    })
                }));
                records.extend(placed);
                break;
            }
            let Some(Ok(encoded)) = encodings[i].as_ref() else {
                unreachable!("a group being booked was encoded");
            };
            let again = access.with(|pool| pool.place_write(group, group_chunks, encoded, &excluded))?;
            (placed, degraded) = (again.records, again.degraded);
            outcomes = write_placed(parallel, misplace, again.jobs);
        }
        encodings[i] = None;
    }
    assert!(flights.is_empty(), "every group started was booked");
    assert_eq!(records.len(), chunks.len(), "a record (or a hole) for every chunk");
    Ok(StoredChunks { records, written })
}

/// The BLAKE3 chaining values of `data`'s data shards under an erasure `policy` when they
/// are whole subtrees of it (`fragment::subtree_layout`), in shard order; `None` for a
/// replica or another layout.
fn subtree_chaining_values(policy: Policy, data: &[u8]) -> Option<Vec<[u8; 32]>> {
    let Policy::Erasure { data: data_shards, .. } = policy else { return None };
    let shard_len = codec::shard_len(policy, data.len());
    if !fragment::subtree_layout(data.len(), usize::from(data_shards), shard_len) {
        return None;
    }
    let chaining_values: Vec<[u8; 32]> = data
        .chunks_exact(shard_len)
        .enumerate()
        .map(|(i, shard)| fragment::subtree_chaining_value(shard, (i * shard_len) as u64))
        .collect();
    assert_eq!(chaining_values.len(), usize::from(data_shards), "the layout fills every data shard");
    Some(chaining_values)
}

/// Hashes and encodes every chunk of `pending` (no lock needed).
fn encode_chunks(pending: &PendingWrite, chunks: &[(u64, Bytes)]) -> Result<Vec<Option<Encoded>>> {
    let policy = pending.policy;
    let codec = CodecId::for_policy(policy);
    let inline_max = pending.inline_max;
    let jobs: Vec<(&Bytes, Option<ExtentId>)> = chunks.iter().zip(&pending.ids).map(|((_, d), id)| (d, *id)).collect();
    run_all(pending.parallel, jobs, |(chunk, id)| {
        let id = id?;
        let data = &chunk[..];
        if data.len() <= inline_max {
            return Some(Ok(Encoded { hash: *blake3::hash(data).as_bytes(), blocks: Vec::new() }));
        }
        // Data shards that are whole BLAKE3 subtrees are hashed once, for their fragments
        // and (merged) for the extent; otherwise the extent is hashed, then each shard.
        let subtrees = subtree_chaining_values(policy, data);
        let hash = match &subtrees {
            Some(chaining_values) => fragment::merge_root(chaining_values),
            None => *blake3::hash(data).as_bytes(),
        };
        Some(codec::encode_shards(codec, policy, data).map(|fragments| {
            let blocks = fragments
                .into_iter()
                .enumerate()
                .map(|(i, shard)| {
                    let header = match (codec, subtrees.as_ref().and_then(|cvs| cvs.get(i))) {
                        (_, Some(chaining_value)) => fragment::header_subtree(id, i as u8, &shard, chaining_value),
                        // A replica's payload is the whole extent, whose hash is at hand.
                        (CodecId::Replica, None) => fragment::header(id, i as u8, &shard, &hash),
                        (_, None) => fragment::header(id, i as u8, &shard, blake3::hash(&shard).as_bytes()),
                    };
                    let payload = match stretch_of(data, &shard) {
                        Some(range) => Payload::Chunk(chunk.clone(), range),
                        None => Payload::Own(Bytes::from(shard.into_owned())),
                    };
                    Sealed { header, payload }
                })
                .collect();
            Encoded { hash, blocks }
        }))
    })
    .into_iter()
    .map(Option::transpose)
    .collect::<Result<_, _>>()
    .map_err(|e| Error::Io(format!("encoding failed: {e}")))
}

/// Writes each disk's blocks of a placement, every disk at once (no lock needed).
/// `misplace` is the `MisplacedAppend` sabotage.
fn write_placed(
    parallel: bool,
    misplace: bool,
    jobs: Vec<(DiskId, Arc<dyn BlockDevice>, Vec<PlannedBlock>)>,
) -> Vec<DiskOutcome> {
    run_all(parallel, jobs, |(disk, device, blocks)| {
        let batch: Vec<PartsBlock<'_>> = blocks
            .iter()
            .enumerate()
            .map(|(i, planned)| {
                let name = if misplace && i > 0 { blocks[i - 1].name } else { planned.name };
                (name, &planned.fragment.header[..], planned.fragment.payload())
            })
            .collect();
        let (count, result) = device.write_parts_batch(&batch);
        assert!(count <= blocks.len() && (count == blocks.len()) == result.is_ok(), "a batch writes a prefix");
        let written = blocks[..count].iter().map(|planned| planned.name).collect();
        (disk, device, written, result)
    })
}

impl Pool {
    /// Writes each `(chunk index, bytes)` as a new extent under `policy` and makes the
    /// fragments (durable at the next barrier), the pool held throughout. An all-zero
    /// chunk becomes a hole (`None`). The caller commits the records before it lets go
    /// of the pool. For the background's rewrites (re-encodes, merges): only what stays
    /// inline for long (`INLINE_KEPT_BYTES_MAX`) goes inline.
    pub(crate) fn write_chunks(
        &mut self,
        chunks: &[(u64, Bytes)],
        policy: Policy,
    ) -> Result<Vec<(u64, Option<ExtentRecord>)>> {
        let mut access: &mut Pool = self;
        let stored = store_chunks(&mut access, chunks, policy, &BTreeSet::new(), INLINE_KEPT_BYTES_MAX)?;
        Ok(self.stored(stored))
    }

    /// Takes chunks `store_chunks` stored, about to be committed: the next barrier syncs
    /// the disks that took their fragments, and they leave `writing`. Returns the records.
    pub(crate) fn stored(&mut self, stored: StoredChunks) -> Vec<(u64, Option<ExtentRecord>)> {
        for (extent, disk) in &stored.written {
            self.fragments_written(*extent, &[*disk]);
        }
        let ids: Vec<ExtentId> = stored.records.iter().filter_map(|(_, r)| r.as_ref().map(|r| r.id)).collect();
        self.end_writes(&ids);
        stored.records
    }

    /// The writes of `ids` are over: committed, or given up (see `store_chunks`).
    pub(crate) fn end_writes(&mut self, ids: &[ExtentId]) {
        self.writing.finish(ids.iter().copied());
    }

    /// The first phase of `store_chunks`: checks that the pool takes writes and takes
    /// an id for every chunk that is not all zeros, or whose index is in `keep_zeros`
    /// (a layer's zeros are bytes to lay over its chunk, not a hole) — consecutive ids,
    /// `STREAM_ID_GAP` past the last store's when there are several.
    fn begin_write(
        &mut self,
        chunks: &[(u64, Bytes)],
        policy: Policy,
        keep_zeros: &BTreeSet<u64>,
        inline_max: usize,
    ) -> Result<PendingWrite> {
        if let Some(reason) = &self.read_only {
            return Err(Error::ReadOnly(reason.clone()));
        }
        // Small extents live inline in metadata when its replicas tolerate as many
        // failures as the policy does.
        let inline_ok = self.journal_disks().len() > policy.tolerance();
        let inline_max = if inline_ok { inline_max.min(INLINE_BYTES_MAX) } else { 0 };
        // A fenced process fails here, before it writes fragments, rather than at its
        // barrier; once per record it writes, since the fence costs a look at every
        // journal disk and a small file's close stores one extent. A write that stores
        // only inline extents puts nothing on the disks before its barrier, which looks
        // itself (a database's fsync: one look per record, not two).
        let fragments = chunks.iter().any(|(_, data)| data.len() > inline_max);
        if fragments && self.fence_clear_at != Some(self.tip.seq) {
            let journal: Vec<Arc<dyn BlockDevice>> = self.journal_devices().into_iter().map(|(_, d)| d).collect();
            self.check_fence(&journal)?;
        }
        let kept: Vec<bool> = chunks
            .iter()
            .map(|(index, data)| {
                assert!(data.len() as u64 <= EXTENT_BYTES_MAX);
                keep_zeros.contains(index) || !all_zero(data)
            })
            .collect();
        if kept.iter().filter(|kept| **kept).count() > 1 {
            self.next_extent += STREAM_ID_GAP;
        }
        let first = self.next_extent;
        let ids: Vec<Option<ExtentId>> = kept
            .iter()
            .map(|kept| {
                kept.then(|| {
                    let id = ExtentId(self.next_extent);
                    self.next_extent += 1;
                    id
                })
            })
            .collect();
        debug_assert!(
            ids.iter().flatten().map(|id| id.0).eq(first..self.next_extent),
            "one store's ids are consecutive"
        );
        self.writing.start(ids.iter().flatten().copied());
        Ok(PendingWrite { policy, ids, inline_max, parallel: self.options.parallel_io, misplace: self.misplaces() })
    }

    /// Places every encoded chunk's fragments on disks, none of `excluded`, and builds
    /// the records the placement gives.
    fn place_write(
        &mut self,
        pending: &PendingWrite,
        chunks: &[(u64, Bytes)],
        encoded: &[Option<Encoded>],
        excluded: &BTreeSet<DiskId>,
    ) -> Result<PlacedWrite> {
        let policy = pending.policy;
        let codec = CodecId::for_policy(policy);
        let mut degraded = 0;
        let mut planned: BTreeMap<DiskId, Vec<PlannedBlock>> = BTreeMap::new();
        let mut planned_bytes: BTreeMap<DiskId, u64> = BTreeMap::new();
        let mut records = Vec::with_capacity(chunks.len());
        let all_disks: Vec<DiskId> = self.state.disks.keys().copied().collect();
        for (((index, data), id), encoded) in chunks.iter().zip(&pending.ids).zip(encoded) {
            let (Some(id), Some(encoded)) = (id, encoded) else {
                records.push((*index, None));
                continue;
            };
            let (record_codec, fragments, inline) = if encoded.blocks.is_empty() {
                (CodecId::Inline, Vec::new(), Some(data.to_vec()))
            } else {
                let block_bytes = encoded.blocks[0].block_len() as u64;
                #[allow(unused_mut)]
                let (mut disks, reachable) = self.place_extent(policy, block_bytes, excluded, &planned_bytes)?;
                if reachable < disks.len() {
                    degraded += 1;
                } else {
                    // Every fragment has its disk: lay them out for sequential reads. (A
                    // degraded write keeps the data shards first on the disks it reaches.)
                    placement::stripe_order(&mut disks, &all_disks, *index);
                }
                #[cfg(feature = "sabotage")]
                if self.options.sabotage == Some(crate::base::hooks::Sabotage::SameDiskPlacement) && disks.len() > 1 {
                    disks[1] = disks[0];
                }
                for (fragment_index, (disk, sealed)) in disks.iter().zip(&encoded.blocks).enumerate().take(reachable) {
                    let name = BlockName::Fragment { extent: *id, index: fragment_index as u8 };
                    *planned_bytes.entry(*disk).or_default() += block_bytes;
                    planned.entry(*disk).or_default().push(PlannedBlock { name, fragment: sealed.clone() });
                }
                (codec, disks, None)
            };
            let record = ExtentRecord {
                id: *id,
                len: data.len() as u32,
                hash: encoded.hash,
                policy,
                codec: record_codec,
                fragments: fragments.into(),
                inline: inline.map(Vec::into_boxed_slice),
                history: ThinVec::new(),
            };
            records.push((*index, Some(record)));
        }
        let jobs = planned
            .into_iter()
            .filter_map(|(disk, blocks)| self.devices.get(&disk).map(|d| (disk, d.clone(), blocks)))
            .collect();
        Ok(PlacedWrite { records, jobs, degraded })
    }

    /// Books a placement attempt's outcome. `Ok(true)`: every disk took its fragments.
    /// `Ok(false)`: some failed; what the attempt wrote is deleted and the disks that
    /// failed join `excluded`, for another attempt. `Err` when no disk is left.
    fn book_write(
        &mut self,
        outcomes: &[DiskOutcome],
        excluded: &mut BTreeSet<DiskId>,
        extents: usize,
        degraded: usize,
        policy: Policy,
    ) -> Result<bool> {
        if outcomes.iter().all(|(_, _, _, result)| result.is_ok()) {
            self.reached(CommitPhase::FragmentsWritten);
        }
        let failed: Vec<(DiskId, DeviceError)> = outcomes
            .iter()
            .filter_map(|(disk, _, _, result)| result.as_ref().err().map(|e| (*disk, e.clone())))
            .collect();
        if failed.is_empty() {
            self.counters.extents_written += extents as u64;
            if degraded > 0 {
                // What they lack is owed to the offline disks (the write-intent map)
                // or sits on failed or draining ones: the rebuild queue finds both.
                tracing::warn!(
                    extents = degraded,
                    %policy,
                    "disks are away: extents written at reduced width, to be repaired"
                );
                self.counters.degraded_writes += degraded as u64;
            }
            return Ok(true);
        }
        for (_, device, written, _) in outcomes {
            for name in written {
                let _ = device.delete(*name);
            }
        }
        for (disk, error) in &failed {
            tracing::warn!(disk = %disk, %error, "fragment write failed; placing elsewhere");
            excluded.insert(*disk);
            if *error != DeviceError::NoSpace {
                self.disk_io_failed(*disk, error);
            }
        }
        if excluded.len() >= self.state.disks.len() {
            let (_, error) = &failed[0];
            return Err(match error {
                DeviceError::NoSpace => Error::NoSpace("every disk refused the write".into()),
                other => Error::Io(format!("every disk refused the write: {other}")),
            });
        }
        Ok(false)
    }

    /// Chooses the disks of one extent's fragments: `policy.width()` distinct writable
    /// disks with room when there are enough; otherwise — disks being away — as many as
    /// there are, down to the write quorum, with the remaining fragment slots named on
    /// distinct disks that cannot take writes now (offline ones first: they are owed the
    /// fragment and get it when they return; failed or draining ones have it rebuilt
    /// elsewhere). A full disk is never such a stand-in: a pool short of room is short of
    /// room. Returns the disks, index = fragment index, and how many of them (a prefix,
    /// so the data shards come first) are written now.
    ///
    /// Fails with `NoSpace` when the disks that could take the writes lack the room, and
    /// with `Unavailable` (EIO) when too few are reachable — never the other way round.
    pub(crate) fn place_extent(
        &mut self,
        policy: Policy,
        block_bytes: u64,
        excluded: &BTreeSet<DiskId>,
        planned_bytes: &BTreeMap<DiskId, u64>,
    ) -> Result<(Vec<DiskId>, usize)> {
        let width = policy.width();
        let mut candidates = self.candidates(excluded, planned_bytes);
        if candidates.iter().filter(|c| c.free_bytes >= block_bytes).count() < width {
            // A disk that seems full may be one that is gone (a vanished directory has no
            // free space): ask before calling the pool full.
            let seemingly_full: Vec<DiskId> =
                candidates.iter().filter(|c| c.free_bytes < block_bytes).map(|c| c.disk).collect();
            let mut changed = false;
            for disk in seemingly_full {
                if let Err(reason) = self.probe_current(disk) {
                    self.mark_offline(disk, &reason)?;
                    changed = true;
                }
            }
            if changed {
                candidates = self.candidates(excluded, planned_bytes);
            }
        }
        let with_room = candidates.iter().filter(|c| c.free_bytes >= block_bytes).count();
        let quorum = self.state.availability.write_quorum(policy);
        let count = with_room.min(width);
        // Stand-ins for the fragments not written now: disks that take no writes.
        let mut fillers: Vec<DiskId> = self
            .state
            .disks
            .values()
            .filter(|d| d.state != DiskState::Removed && !self.state.disk_writable(d.id))
            .map(|d| d.id)
            .collect();
        fillers.sort_by_key(|d| (!self.state.offline.contains_key(d), *d));
        let reachable = candidates.len();
        if count >= quorum && fillers.len() < width - count {
            // Enough disks are reachable; too few of them have room.
            return Err(Error::Unplaceable { policy, needed: width, available: with_room });
        }
        if count < quorum {
            if reachable >= quorum {
                return Err(Error::Unplaceable { policy, needed: quorum, available: with_room });
            }
            let away: Vec<String> = self
                .state
                .disks
                .values()
                .filter(|d| d.state.readable() && !candidates.iter().any(|c| c.disk == d.id))
                .map(|d| match self.state.offline.get(&d.id) {
                    Some(offline) => format!("{} offline: {}", d.id, offline.reason),
                    None if excluded.contains(&d.id) => format!("{} failing writes", d.id),
                    None => format!("{} {}", d.id, d.state),
                })
                .collect();
            let reason = format!(
                "{policy} needs at least {quorum} disks to write to (its write quorum), but only {reachable} can take \
                 writes now{}",
                if away.is_empty() { String::new() } else { format!(" ({})", away.join("; ")) }
            );
            tracing::error!(%reason, "write refused below the write quorum");
            return Err(Error::Unavailable(reason));
        }
        let mut disks = placement::place(&mut self.rng, count, block_bytes, &candidates)
            .map_err(|available| Error::Unplaceable { policy, needed: count, available })?;
        disks.extend(fillers.into_iter().take(width - count));
        assert_eq!(disks.len(), width);
        Ok((disks, count))
    }

    #[cfg(feature = "sabotage")]
    pub(crate) fn syncs_fragments(&self) -> bool {
        self.options.sabotage != Some(crate::base::hooks::Sabotage::SkipFragmentSync)
    }

    #[cfg(not(feature = "sabotage"))]
    pub(crate) fn syncs_fragments(&self) -> bool {
        true
    }

    #[cfg(feature = "sabotage")]
    fn misplaces(&self) -> bool {
        self.options.sabotage == Some(crate::base::hooks::Sabotage::MisplacedAppend)
    }

    #[cfg(not(feature = "sabotage"))]
    fn misplaces(&self) -> bool {
        false
    }

    #[cfg(feature = "sabotage")]
    pub(crate) fn verifies_reads(&self) -> bool {
        self.options.sabotage != Some(crate::base::hooks::Sabotage::SkipReadChecksum)
    }

    #[cfg(not(feature = "sabotage"))]
    pub(crate) fn verifies_reads(&self) -> bool {
        true
    }

    fn candidates(&self, excluded: &BTreeSet<DiskId>, planned_bytes: &BTreeMap<DiskId, u64>) -> Vec<Candidate> {
        self.state
            .disks
            .values()
            .filter(|d| self.state.disk_writable(d.id) && !excluded.contains(&d.id))
            .filter_map(|d| {
                let device = self.devices.get(&d.id)?;
                let free = device.capacity_bytes().saturating_sub(device.used_bytes());
                let planned = planned_bytes.get(&d.id).copied().unwrap_or(0);
                Some(Candidate { disk: d.id, free_bytes: free.saturating_sub(planned) })
            })
            .collect()
    }

    /// Reads an extent: the cheapest sufficient fragments first (data shards, then
    /// parity; the first copy, then others), each verified; decodes; verifies the
    /// extent's BLAKE3. `offset` only labels errors.
    pub(crate) fn read_extent(&mut self, record: &ExtentRecord, offset: u64) -> Result<Bytes> {
        if let Some(data) = self.cache.get(record.id) {
            return Ok(data);
        }
        let fetched = fetch_extent(&self.read_devices(), record, self.verifies_reads(), self.options.parallel_io);
        self.settle(record, offset, fetched)
    }

    /// `read_extent` of extent `id`, whose whole record is read only when the cache
    /// does not hold its data.
    pub(crate) fn read_extent_id(&mut self, id: ExtentId, offset: u64) -> Result<Bytes> {
        if let Some(data) = self.cache.get(id) {
            return Ok(data);
        }
        let record = self.referenced_record(id)?;
        self.read_extent(&record, offset)
    }

    /// The devices reads may try: all but the offline disks', which reads go around
    /// without waiting on them.
    pub(crate) fn read_devices(&self) -> std::borrow::Cow<'_, BTreeMap<DiskId, Arc<dyn BlockDevice>>> {
        if self.state.offline.is_empty() {
            return std::borrow::Cow::Borrowed(&self.devices);
        }
        std::borrow::Cow::Owned(
            self.devices
                .iter()
                .filter(|(disk, _)| !self.state.offline.contains_key(disk))
                .map(|(disk, device)| (*disk, device.clone()))
                .collect(),
        )
    }

    /// Books a fetch: counters, the degraded set, the cache.
    pub(crate) fn settle(&mut self, record: &ExtentRecord, offset: u64, fetched: Fetched) -> Result<Bytes> {
        self.counters.extents_read += 1;
        if !fetched.problems.is_empty() {
            self.counters.fragment_errors += fetched.problems.len() as u64;
            self.counters.degraded_reads += 1;
            self.degraded.insert(record.id);
            tracing::warn!(stored_as = %record.id, problems = %fetched.problems.join("; "), "degraded read");
        }
        let data = fetched.data.map_err(|detail| Error::DataLost {
            extent: self.state.extent_name(record.id),
            offset,
            detail,
        })?;
        self.cache.insert(record.id, data.clone());
        Ok(data)
    }
}

/// The outcome of fetching one extent from its disks.
pub(crate) struct Fetched {
    pub(crate) data: std::result::Result<Bytes, String>,
    /// Fragments that could not be used, with why.
    problems: Vec<String>,
}

impl Fetched {
    /// Verified bytes, found without a problem.
    pub(crate) fn clean(data: Bytes) -> Fetched {
        Fetched { data: Ok(data), problems: Vec::new() }
    }
}

/// The fast path of a healthy read: the data shards alone, whose payloads the extent's
/// BLAKE3 then checks all at once. `None` on any doubt; the caller then verifies
/// fragment by fragment.
fn fetch_data_shards(
    devices: &BTreeMap<DiskId, Arc<dyn BlockDevice>>,
    record: &ExtentRecord,
    parallel: bool,
) -> Option<Bytes> {
    let policy = record.policy;
    let shard_len = codec::shard_len(policy, record.len as usize);
    let jobs: Vec<(usize, Arc<dyn BlockDevice>)> = (0..policy.needed())
        .map(|i| devices.get(record.fragments.get(i)?).map(|d| (i, d.clone())))
        .collect::<Option<_>>()?;
    if !is_systematic(record) || shard_len == 0 {
        return None;
    }
    let id = record.id;
    let total = policy.needed() * shard_len;
    // Read in turn, the shards are appended in order to a buffer that is never zeroed
    // first (a zero-fill of the whole extent cost a tenth of a sequential read's CPU),
    // each read by the device straight into its place where it can (`media::landing`);
    // read at once, each is copied into its own slot of a zeroed buffer.
    if !parallel {
        let mut data = Landing::with_capacity(total);
        for (i, device) in jobs {
            let mut header_holds = |block: &[u8]| fragment::payload_unchecked(block, id, i as u8, shard_len).is_ok();
            let name = BlockName::Fragment { extent: id, index: i as u8 };
            if !matches!(device.read_appending(name, fragment::HEADER_LEN, &mut data, &mut header_holds), Ok(true)) {
                return None;
            }
        }
        assert_eq!(data.len(), total, "every data shard landed whole");
        data.truncate(record.len as usize);
        let data = data.into_bytes();
        return (blake3::hash(&data).as_bytes() == &record.hash).then_some(data);
    }
    let mut data = vec![0; total];
    let slots: Vec<_> = jobs.into_iter().zip(data.chunks_mut(shard_len)).map(|((i, d), slot)| (i, d, slot)).collect();
    let landed: Vec<bool> = run_all(parallel, slots, |(i, device, slot)| {
        let mut landed = false;
        let read = device.read_with(BlockName::Fragment { extent: id, index: i as u8 }, &mut |block| {
            if let Ok(payload) = fragment::payload_unchecked(block, id, i as u8, shard_len) {
                slot.copy_from_slice(payload);
                landed = true;
            }
        });
        read.is_ok() && landed
    });
    if !landed.iter().all(|landed| *landed) {
        return None;
    }
    data.truncate(record.len as usize);
    (blake3::hash(&data).as_bytes() == &record.hash).then(|| Bytes::from(data))
}

thread_local! {
    /// Each read-ahead thread's buffer for `fetch_gathered`, kept between fetches.
    static GATHERED: std::cell::RefCell<ReadBuffer> = std::cell::RefCell::new(ReadBuffer::new());
}

/// The data shards of several extents read together, one `BlockDevice::read_into` per
/// disk, so that a disk holding shards of neighbouring extents side by side reads them
/// as one request (see `media::read_buffer` for why that matters): for each record its
/// verified bytes, or `None` where this way could not give them (inline, not
/// systematic, a data shard's disk not at hand, a shard unreadable or refused by its
/// header, a checksum mismatch). Reports nothing: the caller fetches a `None` extent
/// again with `fetch_extent`, which reads the other fragments and reports problems.
pub(crate) fn fetch_gathered(
    devices: &BTreeMap<DiskId, Arc<dyn BlockDevice>>,
    records: &[&ExtentRecord],
) -> Vec<Option<Bytes>> {
    let gathered = GATHERED.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buffer) => gather(devices, records, &mut buffer),
        Err(_) => gather(devices, records, &mut ReadBuffer::new()),
    });
    assert_eq!(gathered.len(), records.len(), "one answer per record");
    gathered
}

/// A data shard of a gathered fetch: the record's place in the batch, the shard's index.
type ShardKey = (usize, usize);

fn gather(
    devices: &BTreeMap<DiskId, Arc<dyn BlockDevice>>,
    records: &[&ExtentRecord],
    buffer: &mut ReadBuffer,
) -> Vec<Option<Bytes>> {
    // Per disk, the data shards it holds: (record, shard index) and the block's name.
    let mut wanted: BTreeMap<DiskId, Vec<(ShardKey, BlockName)>> = BTreeMap::new();
    let mut gathering = vec![false; records.len()];
    let mut bytes = 0;
    for (r, record) in records.iter().enumerate() {
        let policy = record.policy;
        let shard_len = codec::shard_len(policy, record.len as usize);
        let shards = policy.needed();
        let on_hand = record.fragments.get(..shards).is_some_and(|disks| disks.iter().all(|d| devices.contains_key(d)));
        if record.inline.is_some() || !is_systematic(record) || !on_hand || shard_len == 0 {
            continue;
        }
        gathering[r] = true;
        // Each block with room for its device's record header and alignment padding.
        bytes += shards * (fragment::HEADER_LEN + shard_len + 2 * READ_ALIGN);
        for (i, disk) in record.fragments[..shards].iter().enumerate() {
            wanted.entry(*disk).or_default().push(((r, i), BlockName::Fragment { extent: record.id, index: i as u8 }));
        }
    }
    buffer.clear();
    // Room for every block at once: the buffer grows (and moves) at most once here.
    buffer.reserve(bytes);
    let mut shards: BTreeMap<ShardKey, std::ops::Range<usize>> = BTreeMap::new();
    for (disk, blocks) in &wanted {
        let Some(device) = devices.get(disk) else { continue };
        let names: Vec<BlockName> = blocks.iter().map(|(_, name)| *name).collect();
        for ((key, _), range) in blocks.iter().zip(device.read_into(&names, buffer)) {
            if let Some(range) = range {
                shards.insert(*key, range);
            }
        }
    }
    let read = buffer.as_slice();
    records
        .iter()
        .enumerate()
        .map(|(r, record)| {
            if !gathering[r] {
                return None;
            }
            let shard_len = codec::shard_len(record.policy, record.len as usize);
            let mut data = Vec::with_capacity(record.policy.needed() * shard_len);
            for i in 0..record.policy.needed() {
                let block = read.get(shards.get(&(r, i))?.clone())?;
                data.extend_from_slice(fragment::payload_unchecked(block, record.id, i as u8, shard_len).ok()?);
            }
            data.truncate(record.len as usize);
            debug_assert_eq!(data.len(), record.len as usize, "whole shards hold the extent");
            (blake3::hash(&data).as_bytes() == &record.hash).then(|| Bytes::from(data))
        })
        .collect()
}

/// Whether the extent's data shards (or one replica) end to end are its bytes: true of
/// every codec here but inline data.
fn is_systematic(record: &ExtentRecord) -> bool {
    matches!(
        (record.codec, record.policy),
        (CodecId::Replica, Policy::Replicate { .. })
            | (CodecId::RsErasureGf8 | CodecId::RsSimd, Policy::Erasure { .. })
    )
}

/// Reads, verifies and decodes one extent without touching the pool: safe to run for
/// several extents at once. A fragment whose disk is not in `devices` (offline) is
/// skipped without counting as a problem: the extent is not damaged, only waiting.
pub(crate) fn fetch_extent(
    devices: &BTreeMap<DiskId, Arc<dyn BlockDevice>>,
    record: &ExtentRecord,
    verify: bool,
    parallel: bool,
) -> Fetched {
    if let Some(data) = &record.inline {
        let data = if blake3::hash(data).as_bytes() == &record.hash {
            Ok(Bytes::copy_from_slice(data))
        } else {
            Err("inline data does not match the extent checksum".to_string())
        };
        return Fetched { data, problems: Vec::new() };
    }
    if verify {
        if let Some(data) = fetch_data_shards(devices, record, parallel) {
            return Fetched { data: Ok(data), problems: Vec::new() };
        }
    }
    let policy = record.policy;
    let width = policy.width();
    let needed = policy.needed();
    let shard_len = codec::shard_len(policy, record.len as usize);
    let mut fragments: Vec<Option<Vec<u8>>> = vec![None; width];
    let mut problems = Vec::new();
    let mut away = Vec::new();
    let mut next = 0;
    let mut have = 0;
    while have < needed && next < width {
        let batch: Vec<usize> = (next..width.min(next + needed - have)).collect();
        next += batch.len();
        let jobs: Vec<(usize, Option<Arc<dyn BlockDevice>>)> =
            batch.iter().map(|&i| (i, devices.get(&record.fragments[i]).cloned())).collect();
        let id = record.id;
        let results = run_all(parallel, jobs, |(i, device)| {
            let name = BlockName::Fragment { extent: id, index: i as u8 };
            let result = match device {
                None => Err(None),
                Some(device) => device.read(name).map_err(|e| Some(e.to_string())).and_then(|block| {
                    if !verify {
                        let mut payload = block.get(fragment::HEADER_LEN..).unwrap_or_default().to_vec();
                        payload.resize(shard_len, 0);
                        return Ok(payload);
                    }
                    fragment::verify(&block, id, i as u8, shard_len)
                        .map(<[u8]>::to_vec)
                        .map_err(|e| Some(e.to_string()))
                }),
            };
            (i, result)
        });
        for (i, result) in results {
            match result {
                Ok(payload) => {
                    fragments[i] = Some(payload);
                    have += 1;
                }
                Err(Some(e)) => problems.push(format!("fragment {i} on {}: {e}", record.fragments[i])),
                Err(None) => away.push(format!("fragment {i} on {} (offline)", record.fragments[i])),
            }
        }
    }
    let data = if have < needed {
        let why: Vec<String> = problems.iter().chain(&away).cloned().collect();
        Err(format!("{have} of {width} fragments readable, {needed} needed ({})", why.join("; ")))
    } else {
        codec::decode(record.codec, policy, record.len as usize, &fragments).map_err(|e| e.to_string()).and_then(
            |data| {
                if verify && blake3::hash(&data).as_bytes() != &record.hash {
                    Err("decoded data does not match the extent checksum".to_string())
                } else {
                    Ok(Bytes::from(data))
                }
            },
        )
    };
    Fetched { data, problems }
}
