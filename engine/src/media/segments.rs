//! Segment storage: a `DirDisk`'s fragments packed into append-only segment files.
//!
//! Layout: `<root>/segments/<id:016x>.seg`. A segment starts with one 4 KiB header block
//! (magic, segment format); records follow, each at a 4 KiB-aligned offset: a 64-byte
//! record header (magic, format, the fragment's extent and index, payload length, a
//! per-disk sequence number, the write time, and a checksum over all of it *and* the
//! segment id and offset) and the payload. A record occupies its length rounded up to
//! 4 KiB (`span`), so a dead record's whole span can be punched out of the file.
//!
//! Contract:
//! - `append` is one positioned write at the segment's tail (reserved under the lock,
//!   written outside it; a payload of `DIRECT_APPEND_MIN` or more goes with `O_DIRECT`,
//!   its whole span zero-padded, where the filesystem allows it); the record is visible
//!   to `read` and `list` once it returns, and durable after the next `sync` returns
//!   `Ok`. Up to `LANES` segments are active at once, each the tail of its own stream of
//!   extent ids: a batch goes to the lane whose last id lies nearest its first (within
//!   `LANE_GAP_MAX`), else to the lane `open` left unclaimed, else to a new lane, else to
//!   the one used least recently — so two flushes in flight each lay their fragments in
//!   file order. A lane moves to a new segment when its own would grow past
//!   `SEGMENT_BYTES`. `append_batch` lays several records exactly where
//!   appends one after another would, and writes them at once: all are indexed, or
//!   (the write failed) none.
//! - Crash model (what `open` copes with): any append since the last `sync` may be lost,
//!   land whole, or be torn, in any combination; a punch or a segment's deletion since the
//!   last `sync` may be lost. Everything synced survives. `open` rebuilds the index by
//!   walking record headers: a header that fails its checksum (torn, rotten, a hole) is
//!   skipped by seeking to the next data, so one bad header costs one record, never the
//!   rest of its segment. Appends go on past the span of every valid header, a torn
//!   record's too, so no later record is ever swallowed by one (once later appends
//!   have grown the file past its claimed end, a torn record reads back as a block of
//!   its length with garbage in it, which the contract allows for a torn write). A
//!   payload is not checked here: it is a fragment block that
//!   carries its own BLAKE3, and the engine verifies it on every read.
//! - Because the checksum covers the record's own segment id and offset, and payloads
//!   start 64 bytes past a 4 KiB boundary, bytes inside a payload (even a copy of another
//!   segment) are never taken for a record header.
//! - A name written again gets a new record with a higher sequence number (never below
//!   the wall clock in nanoseconds, so numbers keep rising across reopens even when the
//!   segment that held the highest is gone); the newest valid record of a name wins at
//!   `open`. The replaced record is punched only after
//!   the next `sync`, so the old copy is never gone before the new one is durable.
//! - A deleted record's span is punched at once (the engine deletes a fragment only once
//!   the record freeing it is durable). A segment that holds no live record and is not
//!   an active one is deleted. Space is therefore returned as it dies. On a filesystem
//!   that cannot punch holes (exFAT, for one) a dead record's header is zeroed instead
//!   and its bytes return with its segment; there `compact` copies the live records of
//!   a mostly dead segment to an active one (a newer record of the same block, indexed
//!   only if the block was not deleted or rewritten meanwhile), syncs, and the emptied
//!   segment is deleted — the engine's background worker runs it in bounded steps.
//! - `used_bytes` is the sum of the live records' spans.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::base::clock::system_wall_nanos;
use crate::base::io::run_all;
use crate::media::device::{BlockCheck, BlockName, DeviceError, ExtentId, STREAM_ID_GAP};
use crate::media::landing::Landing;
use crate::media::read_buffer::ReadBuffer;

/// The folder under a disk's root that holds its segments.
pub const SEGMENTS_DIR: &str = "segments";
/// The segment format this build writes and reads.
pub const SEGMENT_FORMAT: u16 = 1;
/// A segment stops taking appends past this size.
pub const SEGMENT_BYTES: u64 = 256 << 20;
/// Records start at multiples of this, and spans are rounded up to it.
pub const ALIGN: u64 = 4096;
/// Bytes of a record header; the payload follows it.
pub const RECORD_HEADER_LEN: u64 = 64;

const SEGMENT_MAGIC: [u8; 8] = *b"DFSSEGMT";
const RECORD_MAGIC: [u8; 4] = *b"DFSR";
const KIND_FRAGMENT: u8 = 1;

/// Where one record lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Loc {
    segment: u64,
    offset: u64,
    len: u32,
    seq: u64,
    written_secs: i64,
}

impl Loc {
    fn span(&self) -> u64 {
        span(u64::from(self.len))
    }
}

/// Bytes a record with `len` payload bytes occupies in its segment.
pub fn span(len: u64) -> u64 {
    (RECORD_HEADER_LEN + len).div_ceil(ALIGN) * ALIGN
}

/// A record's place and its segment's handles, as `Segments::locate` finds them.
struct Located {
    file: Arc<File>,
    direct: Option<Arc<File>>,
    loc: Loc,
}

struct Segment {
    file: Arc<File>,
    /// The same file opened for direct I/O (`O_DIRECT`), where the filesystem allows it:
    /// a read lands in our buffer and a large append leaves from one without passing
    /// through the page cache (see `read` and `append`).
    direct: Option<Arc<File>>,
    /// Where the next append goes (the active segment only grows).
    tail: u64,
    /// Live records (in the index) plus replaced ones waiting for their punch.
    records: u64,
}

/// An active segment and the stream of extents it takes (see `Segments::lane_for`).
#[derive(Clone, Copy, Debug)]
struct Lane {
    segment: u64,
    /// The highest extent id of the last batch appended to it.
    last_extent: u64,
    /// When it last took an append (`State::appends`), for handing the least recently
    /// used lane to a new stream; 0 for the lane `open` left to the first stream.
    used_at: u64,
}

/// Segments taking appends at once, each the tail of its own stream of extent ids: two
/// flushes of a file in flight (each a run of consecutive ids) land in two segments,
/// each in file order, instead of interleaved in one — so a later read finds a disk's
/// fragments of neighbouring chunks side by side and reads them in one request.
const LANES: usize = 2;

/// How far from a lane's last extent id an append still continues that lane: a disk
/// takes a fragment of most extents of a file under erasure, of every few under
/// replication, and a flush's groups in flight may reach it in either order; a flush
/// beside it starts `STREAM_ID_GAP` past its ids, out of reach.
const LANE_GAP_MAX: u64 = STREAM_ID_GAP / 2;

#[derive(Default)]
struct State {
    index: BTreeMap<BlockName, Loc>,
    segments: BTreeMap<u64, Segment>,
    /// The active segments, at most `LANES`, each a different one.
    lanes: Vec<Lane>,
    /// Appends reserved so far: the lanes' clock.
    appends: u64,
    next_seq: u64,
    used_bytes: u64,
    /// Segments appended to or punched since the last sync.
    unsynced: BTreeSet<u64>,
    /// Segment files created or deleted since the last sync (the folder needs an fsync).
    dir_dirty: bool,
    /// The segments folder itself was created since the last sync (the root needs one).
    root_dirty: bool,
    /// Replaced records, punched once a sync has made their replacements durable.
    replaced: Vec<Loc>,
}

/// The fragments of one disk, in segment files. See the module header.
pub struct Segments {
    root: PathBuf,
    dir: PathBuf,
    state: Mutex<State>,
    /// A segment stops taking appends past this size (`SEGMENT_BYTES`; tests use less).
    segment_bytes: u64,
    /// Whether the filesystem has punched every hole asked of it. Once it refused, dead
    /// records keep their bytes until their segment dies, and `compact` empties segments
    /// that are mostly dead.
    holes: AtomicBool,
}

/// One record found by `scan`, for tools and tests that look at a disk from outside.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordInfo {
    /// The block the record holds.
    pub name: BlockName,
    /// Its segment file.
    pub path: PathBuf,
    /// Where its payload starts in that file.
    pub payload_offset: u64,
    /// Payload bytes.
    pub len: u64,
    /// Its sequence number (the newest record of a name wins).
    pub seq: u64,
}

impl Segments {
    /// Opens the segments of the disk at `root`, rebuilding the index from the record
    /// headers (see the module header). A segment of a format this build does not know is
    /// refused by name.
    pub fn open(root: &Path) -> Result<Segments, DeviceError> {
        Segments::open_sized(root, SEGMENT_BYTES)
    }

    fn open_sized(root: &Path, segment_bytes: u64) -> Result<Segments, DeviceError> {
        let dir = root.join(SEGMENTS_DIR);
        let mut state = State { next_seq: 1, ..State::default() };
        for (id, path) in segment_files(&dir)? {
            let file = OpenOptions::new().read(true).write(true).open(&path).map_err(|e| io_error(&path, e))?;
            let len = file.metadata().map_err(|e| io_error(&path, e))?.len();
            let mut records = Vec::new();
            let tail = scan_segment(&file, id, len, &path, &mut records)?;
            let file = Arc::new(file);
            state.segments.insert(id, Segment { file, direct: open_direct(&path), tail, records: 0 });
            state.unsynced.insert(id);
            for (name, loc) in records {
                state.next_seq = state.next_seq.max(loc.seq + 1);
                state.add(name, loc);
            }
        }
        let empty: Vec<u64> = state.segments.iter().filter(|(_, s)| s.records == 0).map(|(id, _)| *id).collect();
        let segments = Segments {
            root: root.to_path_buf(),
            dir,
            state: Mutex::new(state),
            segment_bytes,
            holes: AtomicBool::new(true),
        };
        {
            let mut state = segments.lock();
            for id in empty {
                segments.retire(&mut state, id);
            }
            // Appends go on at the end of the newest segment: its lane is unclaimed until
            // the first stream after the open takes it (a pool opened once per command
            // does not start a segment each time).
            if let Some(newest) = state.segments.keys().next_back().copied() {
                state.lanes.push(Lane { segment: newest, last_extent: 0, used_at: 0 });
            }
            state.check();
        }
        Ok(segments)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every mutation below keeps the index and the counts consistent before it can
        // panic; recover the guard instead of poisoning every caller.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:016x}.seg"))
    }

    /// The span the record of `name` occupies, if there is one.
    pub fn span_of(&self, name: BlockName) -> Option<u64> {
        self.lock().index.get(&name).map(Loc::span)
    }

    /// Names of every record, ascending.
    pub fn list(&self) -> Vec<BlockName> {
        self.lock().index.keys().copied().collect()
    }

    /// Sum of the live records' spans.
    pub fn used_bytes(&self) -> u64 {
        self.lock().used_bytes
    }

    /// When the record of `name` was written (seconds since the epoch).
    pub fn written_secs(&self, name: BlockName) -> Option<i64> {
        self.lock().index.get(&name).map(|loc| loc.written_secs)
    }

    /// The payload of `name`, or `NotFound`, read through the page cache: background work
    /// that reads a disk's fragments one after another (rebuild, scrub) gains from the
    /// kernel's read-ahead on the segment (measured: a rebuild 389–410 MiB/s this way,
    /// 248–252 with direct reads).
    pub fn read(&self, name: BlockName) -> Result<Vec<u8>, DeviceError> {
        let Located { file, loc, .. } = self.locate(name)?;
        read_buffered(&file, &loc).map_err(|e| io_error(&self.path(loc.segment), e))
    }

    /// The payload of `name` handed to `visit` (see `BlockDevice::read_with`): the engine's
    /// read path. Read directly where the filesystem allows it, straight into this
    /// thread's aligned buffer: the engine keeps its own cache of decoded extents and
    /// reads ahead itself, so a second copy of the fragments in the page cache costs
    /// memory and CPU (page insertion, accounting, one more copy) and serves no one. The
    /// filesystem keeps direct reads coherent with buffered appends not yet written back.
    pub fn read_with(&self, name: BlockName, visit: &mut dyn FnMut(&[u8])) -> Result<(), DeviceError> {
        let Located { file, direct, loc } = self.locate(name)?;
        if direct.is_some_and(|direct| read_direct(&direct, &loc, visit)) {
            return Ok(());
        }
        visit(&read_buffered(&file, &loc).map_err(|e| io_error(&self.path(loc.segment), e))?);
        Ok(())
    }

    /// The payload of `name` past its first `skip` bytes appended to `out` if `check`
    /// accepts the payload (see `BlockDevice::read_appending`): the engine's read of an
    /// extent's data shards. Read directly into its place in `out` where the filesystem
    /// and the layout allow it (see `media::landing`), else as `read_with` reads it.
    pub fn read_appending(
        &self,
        name: BlockName,
        skip: usize,
        out: &mut Landing,
        check: BlockCheck<'_>,
    ) -> Result<bool, DeviceError> {
        let Located { direct, loc, .. } = self.locate(name)?;
        let header = RECORD_HEADER_LEN as usize;
        let len = loc.len as usize;
        if let (Some(direct), Ok(span)) = (direct, usize::try_from(loc.span())) {
            if skip <= len {
                let dims = (header + skip, len - skip, span, ALIGN as usize);
                if let Some(kept) = out.land_direct(&direct, loc.offset, dims, header, check) {
                    return Ok(kept);
                }
            }
        }
        let mut kept = false;
        self.read_with(name, &mut |payload| kept = out.append_checked(payload, skip, check))?;
        Ok(kept)
    }

    /// The payloads of the records of `names` read into `out` (see
    /// `BlockDevice::read_into`): records that lie side by side in one segment, up to
    /// `RUN_BYTES_MAX` together, are read directly as one request where the filesystem
    /// allows it, straight into `out`; the rest one by one as `read_with` reads them. A
    /// name with no record, or whose read failed, gets `None`.
    pub fn read_into(&self, names: &[BlockName], out: &mut ReadBuffer) -> Vec<Option<Range<usize>>> {
        let mut ranges = vec![None; names.len()];
        let mut located: Vec<(usize, Located)> = {
            let state = self.lock();
            names
                .iter()
                .enumerate()
                .filter_map(|(i, name)| {
                    let loc = *state.index.get(name)?;
                    let segment = state.segments.get(&loc.segment)?;
                    Some((i, Located { file: Arc::clone(&segment.file), direct: segment.direct.clone(), loc }))
                })
                .collect()
        };
        located.sort_by_key(|(_, at)| (at.loc.segment, at.loc.offset));
        let mut rest = located.as_slice();
        while let Some(((_, first), _)) = rest.split_first() {
            let mut end = first.loc.offset + first.loc.span();
            let mut count = 1;
            while let Some((_, next)) = rest.get(count) {
                let joins = next.loc.segment == first.loc.segment && next.loc.offset == end;
                if !joins || end + next.loc.span() - first.loc.offset > RUN_BYTES_MAX {
                    break;
                }
                end += next.loc.span();
                count += 1;
            }
            let (run, after) = rest.split_at(count);
            rest = after;
            if let Some(direct) = &first.direct {
                if let Some(read) = read_run_direct(direct, run, out) {
                    for ((i, _), range) in run.iter().zip(read) {
                        ranges[*i] = Some(range);
                    }
                    continue;
                }
            }
            for (i, at) in run {
                if let Ok(payload) = read_buffered(&at.file, &at.loc) {
                    ranges[*i] = Some(out.push(&payload));
                }
            }
        }
        debug_assert_eq!(ranges.len(), names.len());
        ranges
    }

    /// Where the record of `name` lies, with its segment's handles (`NotFound`: none).
    fn locate(&self, name: BlockName) -> Result<Located, DeviceError> {
        let state = self.lock();
        let loc = *state.index.get(&name).ok_or(DeviceError::NotFound)?;
        let Some(segment) = state.segments.get(&loc.segment) else {
            unreachable!("an indexed record's segment is open");
        };
        Ok(Located { file: Arc::clone(&segment.file), direct: segment.direct.clone(), loc })
    }

    /// Appends `payload` as the record of `name` (a fragment), replacing any earlier one.
    /// The caller has checked capacity. Nothing is indexed when the write fails, and the
    /// reserved range is punched again.
    pub fn append(&self, name: BlockName, payload: &[u8]) -> Result<(), DeviceError> {
        self.append_record(name, &[payload], None)
    }

    /// `append` of every record of `records` in turn — each the concatenation of its
    /// parts (a fragment's header and its payload, held apart: see
    /// `BlockDevice::write_parts`), joined only in the write's buffer — as one write where
    /// the filesystem allows it: the records are reserved side by side at the active
    /// segment's tail, exactly where appends one after another would put them, and
    /// written together (directly, as one span, when their bytes reach
    /// `DIRECT_APPEND_MIN`). A disk that takes several fragments of one flush then sees
    /// one large write instead of several small ones in a row. All or nothing: when the
    /// write fails, none is indexed and the reserved range is punched again. Each record
    /// stays an append of its own to the crash model (lost, whole or torn, each apart).
    pub fn append_batch(&self, records: &[(BlockName, &[&[u8]])]) -> Result<(), DeviceError> {
        let batch: Vec<Pending<'_>> =
            records.iter().map(|(name, parts)| Pending { name: *name, parts, expect: None }).collect();
        self.append_records(&batch)
    }

    /// `append`, or with `expect` a relocation: indexed only if `name` still has the
    /// record `expect` once the copy is written (a block deleted or rewritten meanwhile
    /// stays so; the copy waits for a sync and is punched).
    fn append_record(&self, name: BlockName, parts: &[&[u8]], expect: Option<Loc>) -> Result<(), DeviceError> {
        self.append_records(&[Pending { name, parts, expect }])
    }

    /// Reserves, writes and indexes `batch` (see `append_batch`; one record with
    /// `expect` is a relocation, see `append_record`).
    fn append_records(&self, batch: &[Pending<'_>]) -> Result<(), DeviceError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut lens = Vec::with_capacity(batch.len());
        for pending in batch {
            let total: usize = pending.parts.iter().map(|part| part.len()).sum();
            lens.push(u32::try_from(total).map_err(|_| DeviceError::Io("fragment larger than 4 GiB".into()))?);
        }
        let spans: Vec<u64> = lens.iter().map(|len| span(u64::from(*len))).collect();
        let whole: u64 = spans.iter().sum();
        // The time, from the clock seam's production side (`DirDisk` never runs in the
        // simulator), to the nanosecond: the record's age for the orphan
        // collector's guard (see `BlockDevice::modified_secs`), and a floor for its
        // sequence number, so numbers keep rising across reopens even when the segments
        // that held the highest ones are gone.
        let now_nanos = system_wall_nanos();
        let written_secs = i64::try_from(now_nanos / 1_000_000_000).unwrap_or(i64::MAX);
        let (file, direct, locs) = {
            let mut state = self.lock();
            let first_extent = batch.iter().find_map(|pending| extent_of(pending.name)).unwrap_or(0);
            let last_extent = batch.iter().filter_map(|pending| extent_of(pending.name)).max().unwrap_or(0);
            let id = self.lane_for(&mut state, first_extent, last_extent, whole)?;
            // Never below a sequence number a deleted segment may still hold: a record
            // whose delete a crash undid must not outrank a later record of its name.
            let first_seq = state.next_seq.max(now_nanos);
            state.next_seq = first_seq + batch.len() as u64;
            let segment = state.segments.get_mut(&id).ok_or(DeviceError::NotFound)?;
            let mut locs = Vec::with_capacity(batch.len());
            for (i, (len, span)) in lens.iter().zip(&spans).enumerate() {
                let seq = first_seq + i as u64;
                locs.push(Loc { segment: id, offset: segment.tail, len: *len, seq, written_secs });
                segment.tail += span;
            }
            // Counted now, so the segment is not retired while the write is in flight.
            segment.records += batch.len() as u64;
            let segment = &state.segments[&id];
            (Arc::clone(&segment.file), segment.direct.clone(), locs)
        };
        let mut headers = Vec::with_capacity(batch.len());
        for (pending, loc) in batch.iter().zip(&locs) {
            let BlockName::Fragment { extent, index } = pending.name else {
                unreachable!("only fragments are stored in segments, not {}", pending.name);
            };
            headers.push(encode_header(extent, index, loc));
        }
        let base = locs[0].offset;
        let laid: Vec<Laid<'_>> = batch
            .iter()
            .zip(&locs)
            .zip(&headers)
            .map(|((pending, loc), header)| Laid { at: loc.offset - base, head: header, parts: pending.parts })
            .collect();
        let bytes: usize = lens.iter().map(|len| *len as usize).sum();
        let written = match direct.filter(|_| bytes >= DIRECT_APPEND_MIN) {
            Some(direct) => write_direct(&direct, &file, &laid, base, whole),
            None => write_buffered(&file, &laid, base),
        };
        if let Err(e) = written {
            let _ = punch(&file, base, whole);
            let mut state = self.lock();
            for loc in &locs {
                self.release(&mut state, loc.segment);
            }
            return Err(io_error(&self.path(locs[0].segment), e));
        }
        let mut state = self.lock();
        // Marked only now: a sync that began before the write ended does not cover it.
        state.unsynced.insert(locs[0].segment);
        for (pending, loc) in batch.iter().zip(locs) {
            if pending.expect.is_some() && state.index.get(&pending.name) != pending.expect.as_ref() {
                // Counted in its segment since the reservation, like any replaced record.
                state.replaced.push(loc);
                continue;
            }
            // The reservation counted this record in its segment; `add` counts it again.
            if let Some(segment) = state.segments.get_mut(&loc.segment) {
                segment.records -= 1;
            }
            state.add(pending.name, loc);
        }
        state.check();
        Ok(())
    }

    /// Removes the record of `name` and gives its span back (see `delete_many`); `false`
    /// when there was none.
    pub fn delete(&self, name: BlockName) -> Result<bool, DeviceError> {
        self.delete_many(&[name]).map(|count| count == 1)
    }

    /// Removes the records of `names` it holds and returns how many it held. Their spans
    /// come back in as few calls as possible: a segment left without records is deleted
    /// whole (unpunched), and in every other segment each run of adjacent dead records is
    /// one punch — one `fallocate`, and one discard on a filesystem mounted `discard`,
    /// where deleting a file of 1,024 extents punched 1,024 records a disk one by one. A
    /// failed punch is returned after the rest are done (the records are gone from the
    /// index all the same, as for `delete`).
    pub fn delete_many(&self, names: &[BlockName]) -> Result<usize, DeviceError> {
        let mut dead: BTreeMap<u64, Vec<Loc>> = BTreeMap::new();
        let punches: Vec<(u64, Arc<File>, Vec<Run>)> = {
            let mut state = self.lock();
            for name in names {
                if let Some(loc) = state.index.remove(name) {
                    state.used_bytes -= loc.span();
                    dead.entry(loc.segment).or_default().push(loc);
                }
            }
            dead.iter_mut()
                .filter_map(|(id, locs)| {
                    let Some(segment) = state.segments.get(id) else {
                        unreachable!("a record's segment is open until its last record is released");
                    };
                    let dies = segment.records == locs.len() as u64 && !state.is_active(*id);
                    (!dies).then(|| (*id, Arc::clone(&segment.file), runs(locs)))
                })
                .collect()
        };
        let mut failed = None;
        for (id, file, runs) in &punches {
            for run in runs {
                let punched = match punch(file, run.offset, run.span) {
                    Ok(true) => Ok(()),
                    // No holes here: the run's first header was zeroed; every other one
                    // must be too, or a scan would find its record again.
                    Ok(false) => {
                        self.holes.store(false, Ordering::Relaxed);
                        run.records.iter().skip(1).try_for_each(|&(at, span)| punch(file, at, span).map(drop))
                    }
                    Err(e) => Err(e),
                };
                if let Err(e) = punched {
                    failed.get_or_insert_with(|| io_error(&self.path(*id), e));
                }
            }
        }
        let mut state = self.lock();
        for (id, _, _) in &punches {
            state.unsynced.insert(*id);
        }
        let mut count = 0;
        for (id, locs) in &dead {
            for _ in locs {
                self.release(&mut state, *id);
                count += 1;
            }
        }
        state.check();
        debug_assert!(count <= names.len());
        failed.map_or(Ok(count), Err)
    }

    /// Whether a `sync` has anything to do.
    pub fn dirty(&self) -> bool {
        let state = self.lock();
        !state.unsynced.is_empty() || state.dir_dirty || state.root_dirty || !state.replaced.is_empty()
    }

    /// Makes every earlier append, punch and segment creation or deletion durable, then
    /// punches the records replaced before it began.
    pub fn sync(&self) -> Result<(), DeviceError> {
        let unsynced = self.take_unsynced();
        let flushed = self.flush(&unsynced);
        self.settle(unsynced, flushed)
    }

    /// `sync`, its flush done by `flush`, which makes every earlier write to the
    /// filesystem durable (a `syncfs`): called once, after what is unsynced is taken. On
    /// `Err`, what was unsynced stays so.
    pub(crate) fn sync_through(&self, flush: &mut dyn FnMut() -> Result<(), DeviceError>) -> Result<(), DeviceError> {
        let unsynced = self.take_unsynced();
        let flushed = flush();
        self.settle(unsynced, flushed)
    }

    /// Takes what the next flush must make durable.
    fn take_unsynced(&self) -> Unsynced {
        let mut state = self.lock();
        let ids = std::mem::take(&mut state.unsynced);
        let files = ids.iter().filter_map(|id| state.segments.get(id).map(|s| (*id, Arc::clone(&s.file)))).collect();
        Unsynced {
            files,
            dir_dirty: std::mem::take(&mut state.dir_dirty),
            root_dirty: std::mem::take(&mut state.root_dirty),
            replaced: std::mem::take(&mut state.replaced),
        }
    }

    /// `fdatasync`s each segment of `unsynced` and `fsync`s the folders, all at once.
    fn flush(&self, unsynced: &Unsynced) -> Result<(), DeviceError> {
        let mut jobs: Vec<Job> = unsynced.files.iter().map(|(id, file)| Job::Segment(*id, Arc::clone(file))).collect();
        if unsynced.dir_dirty {
            jobs.push(Job::Folder(self.dir.clone()));
        }
        if unsynced.root_dirty {
            jobs.push(Job::Folder(self.root.clone()));
        }
        let failed = run_all(true, jobs, |job| match job {
            Job::Segment(id, file) => file.sync_data().err().map(|e| io_error(&self.path(id), e)),
            Job::Folder(path) => File::open(&path).and_then(|f| f.sync_all()).err().map(|e| io_error(&path, e)),
        })
        .into_iter()
        .flatten()
        .next();
        failed.map_or(Ok(()), Err)
    }

    /// After a flush of `unsynced`: on failure puts it back, to be flushed by the next
    /// sync; on success punches the records replaced before the sync began.
    fn settle(&self, unsynced: Unsynced, flushed: Result<(), DeviceError>) -> Result<(), DeviceError> {
        let Unsynced { files, dir_dirty, root_dirty, replaced } = unsynced;
        if let Err(error) = flushed {
            let mut state = self.lock();
            state.unsynced.extend(files.iter().map(|(id, _)| *id));
            state.dir_dirty |= dir_dirty;
            state.root_dirty |= root_dirty;
            state.replaced.extend(replaced);
            return Err(error);
        }
        for loc in replaced {
            let file = Arc::clone(&self.lock().segments[&loc.segment].file);
            // A punch that fails leaves dead bytes, never a wrong answer: the newer record
            // wins at every open.
            let _ = self.punch(&file, &loc);
            let mut state = self.lock();
            state.unsynced.insert(loc.segment);
            self.release(&mut state, loc.segment);
        }
        Ok(())
    }

    /// Punches a dead record, noting a filesystem that cannot punch holes.
    fn punch(&self, file: &File, loc: &Loc) -> Result<(), DeviceError> {
        match punch(file, loc.offset, loc.span()) {
            Ok(true) => Ok(()),
            Ok(false) => {
                self.holes.store(false, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => Err(io_error(&self.path(loc.segment), e)),
        }
    }

    /// Whether a segment holds more dead bytes than live ones on a filesystem that keeps
    /// dead bytes (one that cannot punch holes): `compact` has work.
    pub fn wants_compaction(&self) -> bool {
        self.compaction_victim().is_some()
    }

    /// The segment (not an active one) with the most dead bytes, if more than half of
    /// it is dead and the filesystem keeps dead bytes.
    fn compaction_victim(&self) -> Option<u64> {
        if self.holes.load(Ordering::Relaxed) {
            return None;
        }
        let state = self.lock();
        let mut live: BTreeMap<u64, u64> = BTreeMap::new();
        for loc in state.index.values() {
            *live.entry(loc.segment).or_default() += loc.span();
        }
        state
            .segments
            .iter()
            .filter(|(id, _)| !state.is_active(**id))
            .map(|(id, segment)| (*id, segment.tail.saturating_sub(ALIGN), live.get(id).copied().unwrap_or(0)))
            .filter(|(_, size, live)| *size > 0 && live * 2 < *size)
            .max_by_key(|(_, size, live)| size - live)
            .map(|(id, _, _)| id)
    }

    /// Moves up to `budget` bytes of live records out of the most dead segment into
    /// an active one, then syncs: once none is left the old segment is deleted and its dead
    /// bytes come back. Crash-safe by construction: a copy is a newer record of the same
    /// block, and the original is only given up after the sync that made the copy
    /// durable. Returns the bytes moved (0: nothing to compact).
    pub fn compact(&self, budget: u64) -> Result<u64, DeviceError> {
        let Some(victim) = self.compaction_victim() else {
            return Ok(0);
        };
        let records: Vec<(BlockName, Loc)> =
            self.lock().index.iter().filter(|(_, loc)| loc.segment == victim).map(|(n, l)| (*n, *l)).collect();
        let mut moved = 0;
        for (name, old) in records {
            if moved >= budget {
                break;
            }
            let payload = match self.read(name) {
                Ok(payload) => payload,
                Err(DeviceError::NotFound) => continue,
                Err(e) => return Err(e),
            };
            self.append_record(name, &[&payload[..]], Some(old))?;
            moved += old.span();
        }
        self.sync()?;
        Ok(moved)
    }

    /// The segment that takes a batch of `span` bytes whose extent ids run from
    /// `first_extent` to `last_extent`: the tail of the lane whose stream it continues
    /// (the lane's last id nearest `first_extent`, at most `LANE_GAP_MAX` away: a flush's
    /// next group, or the one before it landing second), else of the lane `open` left
    /// unclaimed, else of a new lane while fewer than `LANES` exist, else of the least
    /// recently used one. A lane whose segment lacks room moves to a new segment.
    fn lane_for(&self, state: &mut State, first_extent: u64, last_extent: u64, span: u64) -> Result<u64, DeviceError> {
        state.appends += 1;
        let continued = state
            .lanes
            .iter()
            .enumerate()
            .filter(|(_, lane)| lane.last_extent.abs_diff(first_extent) <= LANE_GAP_MAX)
            .min_by_key(|(_, lane)| lane.last_extent.abs_diff(first_extent))
            .map(|(i, _)| i);
        let unclaimed = state.lanes.iter().position(|lane| lane.used_at == 0);
        let chosen = match continued.or(unclaimed) {
            Some(i) => i,
            None if state.lanes.len() < LANES => {
                let id = self.new_segment(state)?;
                state.lanes.push(Lane { segment: id, last_extent, used_at: state.appends });
                state.lanes.len() - 1
            }
            None => {
                let Some((i, _)) = state.lanes.iter().enumerate().min_by_key(|(_, lane)| lane.used_at) else {
                    unreachable!("LANES lanes exist");
                };
                i
            }
        };
        let segment = state.lanes[chosen].segment;
        if state.segments[&segment].tail + span > self.segment_bytes.max(ALIGN + span) {
            let id = self.new_segment(state)?;
            state.lanes[chosen].segment = id;
            if state.segments[&segment].records == 0 && !state.is_active(segment) {
                self.retire(state, segment);
            }
        }
        let lane = &mut state.lanes[chosen];
        lane.last_extent = last_extent;
        lane.used_at = state.appends;
        let id = lane.segment;
        assert!(state.segments.contains_key(&id), "a lane's segment is open");
        Ok(id)
    }

    /// Creates the next segment file (its header written) and opens it, in no lane yet.
    fn new_segment(&self, state: &mut State) -> Result<u64, DeviceError> {
        let id = state.segments.keys().next_back().map_or(1, |last| last + 1);
        if !self.dir.exists() {
            match fs::create_dir(&self.dir) {
                Ok(()) => state.root_dirty = true,
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_error(&self.dir, e)),
            }
        }
        let path = self.path(id);
        let file =
            OpenOptions::new().read(true).write(true).create_new(true).open(&path).map_err(|e| io_error(&path, e))?;
        if let Err(e) = file.write_all_at(&encode_segment_header(), 0) {
            let _ = fs::remove_file(&path);
            return Err(io_error(&path, e));
        }
        state
            .segments
            .insert(id, Segment { file: Arc::new(file), direct: open_direct(&path), tail: ALIGN, records: 0 });
        state.dir_dirty = true;
        state.unsynced.insert(id);
        Ok(id)
    }

    /// One record of segment `id` is gone (deleted, punched, or a failed append): retire
    /// the segment when it was the last.
    fn release(&self, state: &mut State, id: u64) {
        let Some(segment) = state.segments.get_mut(&id) else {
            unreachable!("a record's segment is open until its last record is released");
        };
        assert!(segment.records > 0, "segment {id:016x} released more records than it held");
        segment.records -= 1;
        if segment.records == 0 && !state.is_active(id) {
            self.retire(state, id);
        }
    }

    /// Deletes segment `id`, which holds no live or waiting record.
    fn retire(&self, state: &mut State, id: u64) {
        assert_eq!(state.segments.get(&id).map(|s| s.records), Some(0), "retiring a segment that holds records");
        state.lanes.retain(|lane| lane.segment != id);
        state.segments.remove(&id);
        state.unsynced.remove(&id);
        // A deletion that fails leaves an empty segment, which the next open retires.
        if fs::remove_file(self.path(id)).is_ok() {
            state.dir_dirty = true;
        }
    }

    /// Removes every segment file and the folder (the disk is leaving the pool).
    pub fn wipe(&self) -> Result<(), DeviceError> {
        let mut state = self.lock();
        *state = State { next_seq: state.next_seq, ..State::default() };
        match fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error(&self.dir, e)),
        }
    }
}

enum Job {
    Segment(u64, Arc<File>),
    Folder(PathBuf),
}

/// What one sync makes durable, taken from the state as it begins (writes go on
/// meanwhile and wait for the next).
struct Unsynced {
    files: Vec<(u64, Arc<File>)>,
    dir_dirty: bool,
    root_dirty: bool,
    /// Records replaced before the sync began: punched once it succeeded.
    replaced: Vec<Loc>,
}

impl State {
    /// Indexes `loc` as the record of `name` unless a newer one is there; the loser waits
    /// for a sync and a punch. The record is already counted in its segment.
    fn add(&mut self, name: BlockName, loc: Loc) {
        let Some(segment) = self.segments.get_mut(&loc.segment) else {
            unreachable!("a record is added only while its segment is open");
        };
        segment.records += 1;
        match self.index.get(&name).copied() {
            Some(existing) if existing.seq > loc.seq => self.replaced.push(loc),
            Some(existing) => {
                self.used_bytes -= existing.span();
                self.index.insert(name, loc);
                self.used_bytes += loc.span();
                self.replaced.push(existing);
            }
            None => {
                self.index.insert(name, loc);
                self.used_bytes += loc.span();
            }
        }
    }

    /// The counts agree with the index and the waiting punches.
    fn check(&self) {
        if !cfg!(debug_assertions) {
            return;
        }
        let used: u64 = self.index.values().map(Loc::span).sum();
        assert_eq!(used, self.used_bytes, "segment space accounting drifted");
        for loc in self.index.values() {
            assert!(self.segments.contains_key(&loc.segment), "an indexed record's segment is gone");
        }
        assert!(self.lanes.len() <= LANES, "at most LANES active segments");
        for (i, lane) in self.lanes.iter().enumerate() {
            assert!(self.segments.contains_key(&lane.segment), "an active segment is gone");
            assert!(self.lanes[..i].iter().all(|other| other.segment != lane.segment), "two lanes share a segment");
        }
    }

    /// Whether segment `id` takes appends.
    fn is_active(&self, id: u64) -> bool {
        self.lanes.iter().any(|lane| lane.segment == id)
    }
}

/// The extent a block belongs to.
fn extent_of(name: BlockName) -> Option<u64> {
    match name {
        BlockName::Fragment { extent, .. } => Some(extent.0),
        _ => None,
    }
}

fn encode_segment_header() -> Vec<u8> {
    let mut block = vec![0u8; ALIGN as usize];
    block[..8].copy_from_slice(&SEGMENT_MAGIC);
    block[8..10].copy_from_slice(&SEGMENT_FORMAT.to_le_bytes());
    block
}

fn header_checksum(fields: &[u8], segment: u64, offset: u64) -> [u8; 16] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"dfs segment record");
    hasher.update(&segment.to_le_bytes());
    hasher.update(&offset.to_le_bytes());
    hasher.update(fields);
    let mut out = [0u8; 16];
    out.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
    out
}

/// `magic[4] | format u8 | kind u8 | index u8 | 0 | extent u64 | len u32 | 0u32 | seq u64 |
/// written_secs i64 | checksum[16] | 0[8]`, little-endian.
fn encode_header(extent: ExtentId, index: u8, loc: &Loc) -> [u8; RECORD_HEADER_LEN as usize] {
    let mut header = [0u8; RECORD_HEADER_LEN as usize];
    header[0..4].copy_from_slice(&RECORD_MAGIC);
    header[4] = SEGMENT_FORMAT as u8;
    header[5] = KIND_FRAGMENT;
    header[6] = index;
    header[8..16].copy_from_slice(&extent.0.to_le_bytes());
    header[16..20].copy_from_slice(&loc.len.to_le_bytes());
    header[24..32].copy_from_slice(&loc.seq.to_le_bytes());
    header[32..40].copy_from_slice(&loc.written_secs.to_le_bytes());
    let checksum = header_checksum(&header[..40], loc.segment, loc.offset);
    header[40..56].copy_from_slice(&checksum);
    header
}

/// The record a header at (`segment`, `offset`) describes, if it is one.
fn decode_header(header: &[u8], segment: u64, offset: u64) -> Option<(BlockName, Loc)> {
    if header.len() < RECORD_HEADER_LEN as usize || header[0..4] != RECORD_MAGIC {
        return None;
    }
    if header[40..56] != header_checksum(&header[..40], segment, offset) {
        return None;
    }
    if header[4] != SEGMENT_FORMAT as u8 || header[5] != KIND_FRAGMENT {
        return None;
    }
    let word = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().unwrap_or([0; 8]));
    let len = u32::from_le_bytes(header[16..20].try_into().unwrap_or([0; 4]));
    let name = BlockName::Fragment { extent: ExtentId(word(8)), index: header[6] };
    let loc = Loc { segment, offset, len, seq: word(24), written_secs: word(32) as i64 };
    Some((name, loc))
}

/// Segment files of the folder, by id. A missing folder holds none.
fn segment_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>, DeviceError> {
    numbered_files(dir, ".seg")
}

/// The files of `dir` named `<id:016x><suffix>`, by id (a disk's segments, its journal
/// log's files). A missing folder holds none.
pub(crate) fn numbered_files(dir: &Path, suffix: &str) -> Result<Vec<(u64, PathBuf)>, DeviceError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error(dir, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_error(dir, e))?;
        let file_name = entry.file_name();
        let Some(stem) = file_name.to_str().and_then(|n| n.strip_suffix(suffix)) else {
            continue;
        };
        if stem.len() != 16 {
            continue;
        }
        if let Ok(id) = u64::from_str_radix(stem, 16) {
            out.push((id, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Walks the record headers of one segment file of `len` bytes. Returns where appends
/// may go on: past the file's end, and past the span every valid header claims — a torn
/// record's too, so no later append lands inside it and is swallowed by it once the
/// file has grown past its claimed end.
fn scan_segment(
    file: &File,
    id: u64,
    len: u64,
    path: &Path,
    out: &mut Vec<(BlockName, Loc)>,
) -> Result<u64, DeviceError> {
    let mut tail = len.div_ceil(ALIGN) * ALIGN;
    let mut head = [0u8; 16];
    if len >= head.len() as u64 {
        file.read_exact_at(&mut head, 0).map_err(|e| io_error(path, e))?;
        let format = u16::from_le_bytes([head[8], head[9]]);
        if head[..8] == SEGMENT_MAGIC && format != SEGMENT_FORMAT {
            return Err(DeviceError::Unavailable(format!(
                "{} is segment format {format}; this build reads format {SEGMENT_FORMAT}: \
                 use a build that knows it",
                path.display()
            )));
        }
        // A rotten segment header is not fatal: every record proves itself.
    }
    let mut offset = ALIGN;
    let mut header = [0u8; RECORD_HEADER_LEN as usize];
    while offset + RECORD_HEADER_LEN <= len {
        file.read_exact_at(&mut header, offset).map_err(|e| io_error(path, e))?;
        let decoded = decode_header(&header, id, offset);
        if let Some((_, loc)) = &decoded {
            tail = tail.max(offset + loc.span());
        }
        match decoded {
            Some((name, loc)) if offset + RECORD_HEADER_LEN + u64::from(loc.len) <= len => {
                out.push((name, loc));
                offset += loc.span();
            }
            // A hole (punched), a torn or rotten header, or a record cut short: go on at
            // the next 4 KiB block that holds data.
            _ => match next_data(file, offset + ALIGN) {
                Some(next) => offset = next.div_ceil(ALIGN) * ALIGN,
                None => break,
            },
        }
    }
    Ok(tail)
}

/// The payload of the record at `loc`, read through the page cache.
fn read_buffered(file: &File, loc: &Loc) -> std::io::Result<Vec<u8>> {
    let mut payload = vec![0u8; loc.len as usize];
    file.read_exact_at(&mut payload, loc.offset + RECORD_HEADER_LEN)?;
    Ok(payload)
}

/// The most bytes of side-by-side records `Segments::read_into` reads as one request:
/// the most a request to this project's virtual disks carries (`max_sectors_kb`).
const RUN_BYTES_MAX: u64 = 4 << 20;

/// Reads `run` — records side by side in one segment, in file order — directly into one
/// aligned slot of `out`: each record's payload range, or `None` (the slot given back)
/// when the file answered short or with an error.
fn read_run_direct(file: &File, run: &[(usize, Located)], out: &mut ReadBuffer) -> Option<Vec<Range<usize>>> {
    let (first, last) = (&run.first()?.1.loc, &run.last()?.1.loc);
    assert_eq!(first.offset % ALIGN, 0, "records start aligned");
    let span = usize::try_from(last.offset + last.span() - first.offset).ok()?;
    // The last record of a file may end before its span: a short read there is whole.
    let wanted = span - usize::try_from(last.span()).ok()? + RECORD_HEADER_LEN as usize + last.len as usize;
    #[cfg(test)]
    tests::RUN_READS.with(|reads| reads.set(reads.get() + 1));
    let (at, slot) = out.reserve_aligned(span);
    let mut got = 0;
    while got < wanted {
        match file.read_at(&mut slot[got..], first.offset + got as u64) {
            Ok(n) if n > 0 && (n % 512 == 0 || got + n >= wanted) => got += n,
            Ok(_) | Err(_) => {
                out.unreserve();
                return None;
            }
        }
    }
    let ranges = run
        .iter()
        .map(|(_, record)| {
            let start = at + (record.loc.offset - first.offset) as usize + RECORD_HEADER_LEN as usize;
            start..start + record.loc.len as usize
        })
        .collect();
    Some(ranges)
}

/// Opens `path` for direct I/O; `None` where the filesystem refuses `O_DIRECT`.
fn open_direct(path: &Path) -> Option<Arc<File>> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new().read(true).write(true).custom_flags(libc::O_DIRECT).open(path).ok().map(Arc::new)
}

thread_local! {
    /// Each thread's buffer for direct reads, kept between reads: a fresh buffer of a
    /// fragment's size per read costs a mapping and its page faults every time.
    static DIRECT_BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Each thread's buffer for direct appends, kept for the same reason.
    static DIRECT_WRITE_BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Appends whose payload is at least this long are written with `O_DIRECT`.
///
/// Why: a buffered append copies the fragment into page-cache pages the engine never
/// reads again (reads are direct too), and the kernel's writeback then walks them. On
/// this project's virtual machines a page-cache page taken after the host reclaimed free
/// memory costs a host fault on first touch: a 1 GiB sequential write spent 61% of the
/// daemon's CPU in that copy. A direct append copies into this thread's warm buffer and
/// goes to the device from there. Small records (a small file's fragments) stay
/// buffered: a direct write waits for the device, which would put a round trip on
/// every small `close`, where the page cache lets the barrier's sync pay it once.
const DIRECT_APPEND_MIN: usize = 64 << 10;

/// A record of a batch being written: its header and payload parts, `at` bytes past the
/// batch's first record (a multiple of the alignment).
struct Laid<'a> {
    at: u64,
    head: &'a [u8],
    parts: &'a [&'a [u8]],
}

/// A record waiting to be appended; with `expect`, a relocation (see `append_record`).
struct Pending<'a> {
    name: BlockName,
    parts: &'a [&'a [u8]],
    expect: Option<Loc>,
}

/// Writes `records` at `offset` through `direct` in one write of `span` bytes, each
/// record at its place and the gaps zero-filled (every record's span is a multiple of the
/// alignment, so the write is aligned in the file and in this thread's buffer). Where the
/// filesystem refuses it after all, the records go through the page cache on `file`
/// instead.
fn write_direct(direct: &File, file: &File, records: &[Laid<'_>], offset: u64, span: u64) -> std::io::Result<()> {
    let align = ALIGN as usize;
    let span = usize::try_from(span).map_err(|_| std::io::Error::from(ErrorKind::InvalidInput))?;
    assert!(offset.is_multiple_of(ALIGN) && span.is_multiple_of(align));
    let done = DIRECT_WRITE_BUFFER.with(|cell| {
        let Ok(mut buffer) = cell.try_borrow_mut() else { return None };
        if buffer.len() < span + align {
            *buffer = vec![0u8; span + align];
        }
        let pad = (align - buffer.as_ptr() as usize % align) % align;
        let whole = &mut buffer[pad..pad + span];
        let mut filled = 0;
        for record in records {
            let start = usize::try_from(record.at).ok()?;
            assert!(start >= filled && start.is_multiple_of(align), "records laid in order, each aligned");
            whole[filled..start].fill(0);
            let mut at = start;
            for part in std::iter::once(record.head).chain(record.parts.iter().copied()) {
                whole[at..at + part.len()].copy_from_slice(part);
                at += part.len();
            }
            filled = at;
        }
        whole[filled..].fill(0);
        Some(direct.write_all_at(whole, offset))
    });
    match done {
        Some(Ok(())) => Ok(()),
        // EINVAL: the filesystem took the open but not this write; anything else is an
        // I/O error that the buffered write reports again if it is real.
        Some(Err(_)) | None => write_buffered(file, records, offset),
    }
}

/// Writes `records` at `offset` through the page cache, each at its place.
fn write_buffered(file: &File, records: &[Laid<'_>], offset: u64) -> std::io::Result<()> {
    records.iter().try_for_each(|record| write_parts_at(file, record.head, record.parts, offset + record.at))
}

/// Reads the record at `loc` with `O_DIRECT` — its whole span (aligned in the file) into
/// an aligned stretch of this thread's buffer — and hands `visit` the payload. `false`
/// on any failure, before `visit` ran: the caller then reads through the page cache
/// (which reports the error, if there is one).
fn read_direct(file: &File, loc: &Loc, visit: &mut dyn FnMut(&[u8])) -> bool {
    assert_eq!(loc.offset % ALIGN, 0, "records start aligned");
    let Ok(span) = usize::try_from(loc.span()) else { return false };
    let wanted = RECORD_HEADER_LEN as usize + loc.len as usize;
    assert!(wanted <= span);
    let align = ALIGN as usize;
    DIRECT_BUFFER.with(|cell| {
        let Ok(mut buffer) = cell.try_borrow_mut() else { return false };
        if buffer.len() < span + align {
            *buffer = vec![0u8; span + align];
        }
        let pad = (align - buffer.as_ptr() as usize % align) % align;
        let mut got = 0;
        while got < wanted {
            // The last record of a file may end before its span: a short read there.
            match file.read_at(&mut buffer[pad + got..pad + span], loc.offset + got as u64) {
                Ok(n) if n > 0 && (n % 512 == 0 || got + n >= wanted) => got += n,
                Ok(_) | Err(_) => return false,
            }
        }
        visit(&buffer[pad + RECORD_HEADER_LEN as usize..pad + wanted]);
        true
    })
}

/// Writes `head` then `body` at `offset` in one system call where it can (no copy of the
/// body to join them), finishing a short write with plain positioned writes.
pub(crate) fn write_two_at(file: &File, head: &[u8], body: &[u8], offset: u64) -> std::io::Result<()> {
    write_parts_at(file, head, &[body], offset)
}

/// The most parts after the head that `write_parts_at` takes: a fragment's header and
/// its payload.
const PARTS_MAX: usize = 2;

/// Writes `head` and then each of `parts` at `offset`, in one system call where it can
/// (no copy to join them), finishing a short write with plain positioned writes.
#[allow(unsafe_code)]
fn write_parts_at(file: &File, head: &[u8], parts: &[&[u8]], offset: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    assert!(parts.len() <= PARTS_MAX, "{} parts, at most {PARTS_MAX}", parts.len());
    let empty = libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 };
    let mut iov = [empty; 1 + PARTS_MAX];
    for (slot, part) in iov.iter_mut().zip(std::iter::once(head).chain(parts.iter().copied())) {
        *slot = libc::iovec { iov_base: part.as_ptr() as *mut libc::c_void, iov_len: part.len() };
    }
    let count = 1 + parts.len();
    let at = libc::off_t::try_from(offset).map_err(|_| std::io::Error::from(ErrorKind::InvalidInput))?;
    // SAFETY: the first `count` iovecs point into slices that outlive the call, with
    // their true lengths; pwritev only reads them.
    let written = unsafe { libc::pwritev(file.as_raw_fd(), iov.as_ptr(), count as libc::c_int, at) };
    let Ok(mut written) = usize::try_from(written) else {
        return Err(std::io::Error::last_os_error());
    };
    let mut at = offset;
    for part in std::iter::once(head).chain(parts.iter().copied()) {
        let done = written.min(part.len());
        written -= done;
        file.write_all_at(&part[done..], at + done as u64)?;
        at += part.len() as u64;
    }
    Ok(())
}

/// The first offset at or after `from` that holds data, `None` past the end.
#[allow(unsafe_code)]
fn next_data(file: &File, from: u64) -> Option<u64> {
    use std::os::fd::AsRawFd;
    let from_off = libc::off_t::try_from(from).ok()?;
    // SAFETY: the descriptor is open for the duration of the call; lseek touches no user
    // memory, and nothing here uses the file offset it moves (all I/O is positioned).
    let at = unsafe { libc::lseek(file.as_raw_fd(), from_off, libc::SEEK_DATA) };
    if at < 0 {
        // ENXIO: no data past `from`. Any other error: fall back to the next block.
        let error = std::io::Error::last_os_error();
        return (error.raw_os_error() != Some(libc::ENXIO)).then_some(from);
    }
    u64::try_from(at).ok()
}

/// The runs of adjacent records among `locs` (records of one segment), each as its
/// `(offset, span)` and its records' own; sorts `locs` by offset.
fn runs(locs: &mut [Loc]) -> Vec<Run> {
    locs.sort_by_key(|loc| loc.offset);
    let mut runs: Vec<Run> = Vec::new();
    for loc in locs.iter() {
        match runs.last_mut() {
            Some(run) if run.offset + run.span == loc.offset => {
                run.span += loc.span();
                run.records.push((loc.offset, loc.span()));
            }
            _ => runs.push(Run { offset: loc.offset, span: loc.span(), records: vec![(loc.offset, loc.span())] }),
        }
    }
    debug_assert_eq!(runs.iter().map(|run| run.span).sum::<u64>(), locs.iter().map(Loc::span).sum::<u64>());
    runs
}

/// Adjacent dead records of one segment, punched as one.
struct Run {
    offset: u64,
    span: u64,
    /// Each record's `(offset, span)`: where holes cannot be punched, each one's header
    /// is zeroed apart.
    records: Vec<(u64, u64)>,
}

/// Frees `span` bytes at `offset`, keeping the file's size; `false` where the filesystem
/// cannot punch holes and the record's header was zeroed instead, so no scan finds it
/// again (its bytes return with its segment).
#[allow(unsafe_code)]
fn punch(file: &File, offset: u64, span: u64) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    let (Ok(off), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(span)) else {
        return Err(std::io::Error::from(ErrorKind::InvalidInput));
    };
    // SAFETY: the descriptor is open for the duration of the call; fallocate reads no
    // user memory.
    let rc =
        unsafe { libc::fallocate(file.as_raw_fd(), libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, off, len) };
    if rc == 0 {
        return Ok(true);
    }
    let error = std::io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::EOPNOTSUPP) {
        return file.write_all_at(&[0u8; RECORD_HEADER_LEN as usize], offset).map(|()| false);
    }
    Err(error)
}

fn io_error(path: &Path, e: std::io::Error) -> DeviceError {
    DeviceError::from_io(path, e)
}

/// Every record in the segments of the disk at `root`, newest per name, read without
/// taking the disk: for tests and tools that examine a disk from outside.
pub fn scan(root: &Path) -> Result<Vec<RecordInfo>, DeviceError> {
    let mut newest: BTreeMap<BlockName, RecordInfo> = BTreeMap::new();
    for (id, path) in segment_files(&root.join(SEGMENTS_DIR))? {
        let file = File::open(&path).map_err(|e| io_error(&path, e))?;
        let len = file.metadata().map_err(|e| io_error(&path, e))?.len();
        let mut records = Vec::new();
        scan_segment(&file, id, len, &path, &mut records)?;
        for (name, loc) in records {
            let info = RecordInfo {
                name,
                path: path.clone(),
                payload_offset: loc.offset + RECORD_HEADER_LEN,
                len: u64::from(loc.len),
                seq: loc.seq,
            };
            if newest.get(&name).is_none_or(|old| old.seq < info.seq) {
                newest.insert(name, info);
            }
        }
    }
    Ok(newest.into_values().collect())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use proptest::prelude::*;

    use super::*;

    thread_local! {
        /// Direct reads of runs this thread made (`read_run_direct`).
        pub(super) static RUN_READS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    fn name(extent: u64, index: u8) -> BlockName {
        BlockName::Fragment { extent: ExtentId(extent), index }
    }

    /// `read_into` of `names`: each name's bytes (or `None`), and the direct run reads
    /// it made.
    fn read_into_counted(segments: &Segments, names: &[BlockName]) -> (Vec<Option<Vec<u8>>>, usize) {
        let mut out = ReadBuffer::new();
        let before = RUN_READS.with(std::cell::Cell::get);
        let ranges = segments.read_into(names, &mut out);
        let runs = RUN_READS.with(std::cell::Cell::get) - before;
        assert_eq!(ranges.len(), names.len());
        (ranges.into_iter().map(|r| r.map(|r| out.as_slice()[r].to_vec())).collect(), runs)
    }

    #[test]
    fn records_side_by_side_are_read_as_one_run_and_each_name_gets_its_own_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let segments = synced_records(dir.path(), 10, 2, 100_000);
        let direct = segments.lock().segments.values().all(|s| s.direct.is_some());
        // A hole in the middle: record 4 is deleted (punched).
        assert!(segments.delete(name(4, 2)).unwrap());
        // Asked out of order, with a deleted and an unknown name among them.
        let order = [9, 0, 4, 1, 2, 99, 3, 5, 6, 7, 8];
        let names: Vec<BlockName> = order.iter().map(|i| name(*i, 2)).collect();
        let (read, runs) = read_into_counted(&segments, &names);
        for (i, got) in order.iter().zip(&read) {
            match i {
                4 | 99 => assert_eq!(got, &None, "record {i} is not there"),
                _ => assert_eq!(got.as_deref(), Some(&payload(*i, 100_000)[..]), "record {i}"),
            }
        }
        // Records 0..=3 and 5..=9 lie side by side: two requests, where the filesystem
        // reads directly (else each record is read on its own, through the page cache).
        assert_eq!(runs, if direct { 2 } else { 0 });
    }

    /// Where each record of `names` lies: (segment id, offset).
    fn places(segments: &Segments, names: &[BlockName]) -> Vec<(u64, u64)> {
        let state = segments.lock();
        names.iter().map(|name| state.index[name]).map(|loc| (loc.segment, loc.offset)).collect()
    }

    #[test]
    fn two_streams_appended_in_turns_each_lie_in_order_in_a_segment_of_their_own() {
        let dir = tempfile::tempdir().unwrap();
        let segments = Segments::open(dir.path()).unwrap();
        let stream = |start: u64| -> Vec<BlockName> { (start..start + 12).map(|e| name(e, 1)).collect() };
        let (a, b) = (stream(1_000), stream(5_000));
        // Two flushes in flight: their batches of two reach the disk in turns.
        for (batch_a, batch_b) in a.chunks(2).zip(b.chunks(2)) {
            for batch in [batch_a, batch_b] {
                let payloads: Vec<Vec<u8>> = batch.iter().map(|n| payload(extent_of(*n).unwrap(), 9_000)).collect();
                let records: Vec<(BlockName, Vec<&[u8]>)> =
                    batch.iter().zip(&payloads).map(|(n, p)| (*n, vec![&p[..]])).collect();
                let records: Vec<(BlockName, &[&[u8]])> = records.iter().map(|(n, parts)| (*n, &parts[..])).collect();
                segments.append_batch(&records).unwrap();
            }
        }
        for names in [&a, &b] {
            let at = places(&segments, names);
            assert!(at.iter().all(|(segment, _)| *segment == at[0].0), "a stream keeps to one segment");
            assert!(
                at.windows(2).all(|w| w[1].1 == w[0].1 + span(RECORD_HEADER_LEN + 9_000)),
                "a stream's records lie side by side, in order: {at:?}"
            );
        }
        assert_ne!(places(&segments, &a[..1])[0].0, places(&segments, &b[..1])[0].0, "two segments take appends");
        let direct = segments.lock().segments.values().all(|s| s.direct.is_some());
        let (read, runs) = read_into_counted(&segments, &a[4..10]);
        assert!(read
            .iter()
            .zip(&a[4..10])
            .all(|(got, n)| got.as_deref() == Some(&payload(extent_of(*n).unwrap(), 9_000)[..])));
        assert_eq!(runs, usize::from(direct), "six neighbours of a stream are one request");
        // Reopened, every record is where it was, and the newest segment's stream goes on
        // right after its last record.
        let b_last = places(&segments, &b[11..])[0];
        drop(segments);
        let segments = Segments::open(dir.path()).unwrap();
        assert_eq!(segments.list().len(), 24);
        segments.append(name(5_012, 1), &payload(5_012, 9_000)).unwrap();
        assert_eq!(segments.read(name(5_012, 1)).unwrap(), payload(5_012, 9_000));
        assert_eq!(places(&segments, &[name(5_012, 1)])[0], (b_last.0, b_last.1 + span(RECORD_HEADER_LEN + 9_000)));
    }

    #[test]
    fn each_open_goes_on_in_the_newest_segment_whatever_ids_its_first_stream_has() {
        let dir = tempfile::tempdir().unwrap();
        // A command per open, each allocating ids from a base of its own.
        for (i, base) in [7_000u64, 40, 1 << 40, 123_456].into_iter().enumerate() {
            let segments = Segments::open(dir.path()).unwrap();
            for extent in base..base + 3 {
                segments.append(name(extent, 0), &payload(extent, 3_000)).unwrap();
            }
            segments.sync().unwrap();
            assert_eq!(segments.list().len(), 3 * (i + 1));
        }
        assert_eq!(segment_files(&dir.path().join(SEGMENTS_DIR)).unwrap().len(), 1);
    }

    #[test]
    fn a_third_stream_takes_over_the_lane_used_least_recently_and_no_more_segments_open() {
        let dir = tempfile::tempdir().unwrap();
        let segments = Segments::open(dir.path()).unwrap();
        for extent in [10, 11, 500, 501, 12, 900, 901, 902, 13, 3, 4] {
            segments.append(name(extent, 0), &payload(extent, 5_000)).unwrap();
        }
        let at = |extent: u64| places(&segments, &[name(extent, 0)])[0].0;
        // Streams 10.. and 500.. hold a lane each; 900.. arrives when 10.. was used last
        // (12), so it takes 500..'s lane; 13 still continues 10..'s.
        assert_eq!(at(11), at(10));
        assert_eq!(at(12), at(10));
        assert_eq!(at(13), at(10));
        assert_ne!(at(500), at(10));
        assert_eq!(at(900), at(500));
        assert_eq!(at(902), at(500));
        // A stream of lower ids (a relocation's, say) takes over a lane all the same.
        assert_eq!(at(3), at(500));
        assert_eq!(at(4), at(500));
        assert_eq!(segments.lock().segments.len(), LANES);
        assert_eq!(segment_files(&dir.path().join(SEGMENTS_DIR)).unwrap().len(), LANES);
    }

    #[test]
    fn a_run_stops_at_the_request_limit() {
        let dir = tempfile::tempdir().unwrap();
        let len = 256 << 10;
        let segments = synced_records(dir.path(), 20, 0, len);
        let direct = segments.lock().segments.values().all(|s| s.direct.is_some());
        let names: Vec<BlockName> = (0..20).map(|i| name(i, 0)).collect();
        let (read, runs) = read_into_counted(&segments, &names);
        for (i, got) in read.iter().enumerate() {
            assert_eq!(got.as_deref(), Some(&payload(i as u64, len)[..]), "record {i}");
        }
        // 20 spans of 260 KiB: 15 fit in 4 MiB, then the other 5.
        assert_eq!(RUN_BYTES_MAX / span(len as u64), 15);
        assert_eq!(runs, if direct { 2 } else { 0 });
    }

    fn payload(seed: u64, len: usize) -> Vec<u8> {
        (0..len).map(|i| (seed.wrapping_mul(31).wrapping_add(i as u64 * 7) % 251) as u8).collect()
    }

    /// A disk holding `count` synced records of `len` bytes: extents `0..count`, fragment
    /// `index`.
    fn synced_records(dir: &Path, count: u64, index: u8, len: usize) -> Segments {
        let segments = Segments::open(dir).unwrap();
        for i in 0..count {
            segments.append(name(i, index), &payload(i, len)).unwrap();
        }
        segments.sync().unwrap();
        segments
    }

    /// The disk's oldest segment file.
    fn first_segment(dir: &Path) -> PathBuf {
        segment_files(&dir.join(SEGMENTS_DIR)).unwrap().remove(0).1
    }

    fn allocated(root: &Path) -> u64 {
        segment_files(&root.join(SEGMENTS_DIR))
            .unwrap()
            .iter()
            .map(|(_, p)| fs::metadata(p).unwrap().blocks() * 512)
            .sum()
    }

    #[test]
    fn records_survive_reopen_and_a_delete_returns_its_space() {
        let dir = tempfile::tempdir().unwrap();
        let segments = Segments::open(dir.path()).unwrap();
        for i in 0..8 {
            segments.append(name(i, 0), &payload(i, 100_000)).unwrap();
        }
        segments.sync().unwrap();
        assert_eq!(segments.used_bytes(), 8 * span(100_000));
        let before = allocated(dir.path());
        assert!(segments.delete(name(3, 0)).unwrap());
        assert!(!segments.delete(name(3, 0)).unwrap(), "a second delete finds nothing");
        assert!(allocated(dir.path()) + span(100_000) - ALIGN <= before, "the span was not punched");
        drop(segments);
        let segments = Segments::open(dir.path()).unwrap();
        assert_eq!(segments.list().len(), 7);
        assert_eq!(segments.read(name(3, 0)), Err(DeviceError::NotFound));
        for i in [0, 1, 2, 4, 5, 6, 7] {
            assert_eq!(segments.read(name(i, 0)).unwrap(), payload(i, 100_000));
        }
        assert_eq!(segments.used_bytes(), 7 * span(100_000));
    }

    #[test]
    fn a_record_appended_in_parts_reads_back_joined_through_either_write_path() {
        let dir = tempfile::tempdir().unwrap();
        let segments = Segments::open(dir.path()).unwrap();
        // Below and above `DIRECT_APPEND_MIN`: through the page cache, and direct.
        let lens = [100, DIRECT_APPEND_MIN + 4_099];
        for (i, len) in lens.iter().enumerate() {
            let whole = payload(i as u64, *len);
            let (head, body) = whole.split_at(52);
            segments.append_batch(&[(name(i as u64, 1), &[head, body])]).unwrap();
            assert_eq!(segments.read(name(i as u64, 1)).unwrap(), whole);
        }
        segments.sync().unwrap();
        assert_eq!(segments.used_bytes(), lens.iter().map(|len| span(*len as u64)).sum::<u64>());
        drop(segments);
        let segments = Segments::open(dir.path()).unwrap();
        for (i, len) in lens.iter().enumerate() {
            assert_eq!(segments.read(name(i as u64, 1)).unwrap(), payload(i as u64, *len));
        }
    }

    #[test]
    fn a_batch_lies_where_appends_one_by_one_would_and_reads_back_through_both_paths() {
        // Small (buffered) and large (direct) batches, and a name written twice in one.
        for lens in [[100usize, 5_000, 300], [DIRECT_APPEND_MIN, 4_099, DIRECT_APPEND_MIN + 1]] {
            let dir = tempfile::tempdir().unwrap();
            let segments = Segments::open(dir.path()).unwrap();
            segments.append(name(9, 0), b"before").unwrap();
            let payloads: Vec<Vec<u8>> = lens.iter().enumerate().map(|(i, len)| payload(i as u64, *len)).collect();
            let parts: Vec<[&[u8]; 2]> = payloads.iter().map(|p| [&p[..10], &p[10..]]).collect();
            let names = [name(1, 0), name(2, 0), name(1, 0)];
            let records: Vec<(BlockName, &[&[u8]])> = names.iter().zip(&parts).map(|(n, p)| (*n, &p[..])).collect();
            segments.append_batch(&records).unwrap();
            assert_eq!(segments.read(name(1, 0)).unwrap(), payloads[2], "the later record of a name wins");
            assert_eq!(segments.read(name(2, 0)).unwrap(), payloads[1]);
            let offsets: Vec<u64> =
                [name(9, 0), name(2, 0), name(1, 0)].iter().map(|n| segments.lock().index[n].offset).collect();
            let start = ALIGN + span(6);
            assert_eq!(
                offsets,
                vec![ALIGN, start + span(lens[0] as u64), start + span(lens[0] as u64) + span(lens[1] as u64)]
            );
            segments.sync().unwrap();
            assert_eq!(segments.used_bytes(), span(6) + span(lens[1] as u64) + span(lens[2] as u64));
            drop(segments);
            let reopened = Segments::open(dir.path()).unwrap();
            assert_eq!(reopened.read(name(1, 0)).unwrap(), payloads[2]);
            assert_eq!(reopened.read(name(2, 0)).unwrap(), payloads[1]);
            assert_eq!(reopened.read(name(9, 0)).unwrap(), b"before");
        }
    }

    #[test]
    fn a_replaced_record_is_punched_only_after_a_sync_and_the_newest_wins() {
        let dir = tempfile::tempdir().unwrap();
        let segments = Segments::open(dir.path()).unwrap();
        segments.append(name(1, 2), b"old").unwrap();
        segments.sync().unwrap();
        segments.append(name(1, 2), b"new!").unwrap();
        assert_eq!(segments.read(name(1, 2)).unwrap(), b"new!");
        // Not synced yet: both records are on disk, and a reopen takes the newer.
        assert_eq!(scan(dir.path()).unwrap().len(), 1);
        let reopened = Segments::open(dir.path()).unwrap();
        assert_eq!(reopened.read(name(1, 2)).unwrap(), b"new!");
        drop(reopened);
        segments.sync().unwrap();
        let raw: Vec<(BlockName, Loc)> = {
            let (id, path) = segment_files(&dir.path().join(SEGMENTS_DIR)).unwrap().remove(0);
            let file = File::open(&path).unwrap();
            let mut out = Vec::new();
            scan_segment(&file, id, file.metadata().unwrap().len(), &path, &mut out).unwrap();
            out
        };
        assert_eq!(raw.len(), 1, "the replaced record is still there after the sync: {raw:?}");
        assert_eq!(segments.used_bytes(), span(4));
    }

    #[test]
    fn direct_and_buffered_appends_read_back_alike_through_both_read_paths() {
        let dir = tempfile::tempdir().unwrap();
        let segments = Segments::open_sized(dir.path(), 64 << 10).unwrap();
        // Lengths around the alignment, records that fill a segment and start another,
        // and appends on both sides of `DIRECT_APPEND_MIN` between small ones.
        let min = DIRECT_APPEND_MIN;
        let lens =
            [1, 63, 64, 4031, 4032, 4033, 4096, 9000, 30_000, 50_000, 7, min - 1, min, 5, min + 4033, 262_144, 7];
        for (i, len) in lens.iter().enumerate() {
            segments.append(name(i as u64, 0), &payload(i as u64, *len)).unwrap();
        }
        let check = |segments: &Segments| {
            for (i, len) in lens.iter().enumerate() {
                let mut direct = None;
                segments.read_with(name(i as u64, 0), &mut |bytes| direct = Some(bytes.to_vec())).unwrap();
                assert_eq!(direct.as_deref(), Some(&payload(i as u64, *len)[..]), "record {i}");
                assert_eq!(segments.read(name(i as u64, 0)).unwrap(), payload(i as u64, *len), "record {i}");
            }
            let mut visited = false;
            assert_eq!(segments.read_with(name(99, 0), &mut |_| visited = true), Err(DeviceError::NotFound));
            assert!(!visited);
        };
        // Before a sync (dirty pages under the direct read), after it, and after a reopen.
        check(&segments);
        segments.sync().unwrap();
        check(&segments);
        drop(segments);
        check(&Segments::open_sized(dir.path(), 64 << 10).unwrap());
    }

    #[test]
    fn a_large_append_goes_direct_with_its_span_padded_and_a_small_one_through_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let segments = Segments::open(dir.path()).unwrap();
        segments.append(name(1, 0), &payload(1, 5000)).unwrap();
        let small_end = ALIGN + RECORD_HEADER_LEN + 5000;
        let path = first_segment(dir.path());
        assert_eq!(fs::metadata(&path).unwrap().len(), small_end, "buffered: the file ends where the record does");
        let len = DIRECT_APPEND_MIN + 100;
        segments.append(name(2, 0), &payload(2, len)).unwrap();
        let direct_end = ALIGN + span(5000) + span(len as u64);
        let size = fs::metadata(&path).unwrap().len();
        if open_direct(&path).is_some() {
            assert_eq!(size, direct_end, "direct: the whole span is written, padding included");
        } else {
            assert_eq!(size, direct_end - span(len as u64) + RECORD_HEADER_LEN + len as u64);
        }
        drop(segments);
        let reopened = Segments::open(dir.path()).unwrap();
        assert_eq!(reopened.read(name(2, 0)).unwrap(), payload(2, len));
        assert_eq!(reopened.read(name(1, 0)).unwrap(), payload(1, 5000));
    }

    #[test]
    fn deleting_many_punches_each_run_once_and_deletes_a_segment_left_empty() {
        let dir = tempfile::tempdir().unwrap();
        let segments = Segments::open_sized(dir.path(), 1 << 20).unwrap();
        for i in 0..12 {
            segments.append(name(i, 0), &payload(i, 100_000)).unwrap();
        }
        segments.sync().unwrap();
        let files = || segment_files(&dir.path().join(SEGMENTS_DIR)).unwrap().len();
        assert_eq!(files(), 2, "twelve records of 100 KB fill one 1 MiB segment and start a second");
        let before = allocated(dir.path());
        // The first segment's records all but one; two runs (1-4, 6-8) in it; a name twice
        // and one never written.
        let oldest = segments.lock().segments.keys().next().copied().unwrap();
        let first: Vec<u64> = (0..12).filter(|i| segments.lock().index[&name(*i, 0)].segment == oldest).collect();
        assert!(first.len() >= 9, "{first:?}");
        let doomed: Vec<BlockName> = [1, 2, 3, 4, 6, 7, 8, 3, 99].iter().map(|i| name(*i, 0)).collect();
        assert_eq!(segments.delete_many(&doomed).unwrap(), 7);
        assert!(allocated(dir.path()) + 7 * (span(100_000) - ALIGN) <= before, "the runs were not punched");
        for i in (0..12).filter(|i| ![1, 2, 3, 4, 6, 7, 8].contains(i)) {
            assert_eq!(segments.read(name(i, 0)).unwrap(), payload(i, 100_000), "record {i} beside the runs");
        }
        assert_eq!(segments.used_bytes(), 5 * span(100_000));
        // The rest of the first segment: it goes whole.
        let rest: Vec<BlockName> =
            first.iter().filter(|i| ![1, 2, 3, 4, 6, 7, 8].contains(*i)).map(|i| name(*i, 0)).collect();
        assert_eq!(segments.delete_many(&rest).unwrap(), rest.len());
        assert_eq!(files(), 1, "the segment left without records is deleted");
        segments.sync().unwrap();
        drop(segments);
        let reopened = Segments::open_sized(dir.path(), 1 << 20).unwrap();
        let left: Vec<u64> = (0..12).filter(|i| !first.contains(i)).collect();
        assert_eq!(reopened.list().len(), left.len());
        for i in left {
            assert_eq!(reopened.read(name(i, 0)).unwrap(), payload(i, 100_000));
        }
    }

    #[test]
    fn runs_join_adjacent_records_and_keep_each_ones_place_for_header_zeroing() {
        let loc = |offset: u64, len: u32| Loc { segment: 1, offset, len, seq: 0, written_secs: 0 };
        let a = span(1000);
        let mut locs = vec![loc(ALIGN + 2 * a, 1000), loc(ALIGN, 1000), loc(ALIGN + a, 1000), loc(ALIGN + 4 * a, 1000)];
        let runs = runs(&mut locs);
        assert_eq!(runs.len(), 2, "records 0-2 touch, record 4 stands apart");
        assert_eq!((runs[0].offset, runs[0].span), (ALIGN, 3 * a));
        assert_eq!(runs[0].records, vec![(ALIGN, a), (ALIGN + a, a), (ALIGN + 2 * a, a)]);
        assert_eq!((runs[1].offset, runs[1].span, runs[1].records.len()), (ALIGN + 4 * a, a, 1));
    }

    #[test]
    fn a_segment_whose_records_all_died_is_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let segments = Segments::open(dir.path()).unwrap();
        let big = payload(1, (SEGMENT_BYTES / 2 - 2 * ALIGN) as usize);
        for i in 0..3 {
            segments.append(name(i, 0), &big).unwrap();
        }
        assert_eq!(segment_files(&dir.path().join(SEGMENTS_DIR)).unwrap().len(), 2);
        segments.delete(name(0, 0)).unwrap();
        assert_eq!(segment_files(&dir.path().join(SEGMENTS_DIR)).unwrap().len(), 2, "one record is still live");
        segments.delete(name(1, 0)).unwrap();
        assert_eq!(segment_files(&dir.path().join(SEGMENTS_DIR)).unwrap().len(), 1);
        segments.delete(name(2, 0)).unwrap();
        assert_eq!(segment_files(&dir.path().join(SEGMENTS_DIR)).unwrap().len(), 1, "the active one stays");
        drop(segments);
        Segments::open(dir.path()).unwrap();
        assert!(segment_files(&dir.path().join(SEGMENTS_DIR)).unwrap().is_empty(), "an empty segment outlived open");
    }

    #[test]
    fn a_rotten_header_costs_its_record_and_no_other() {
        let dir = tempfile::tempdir().unwrap();
        let segments = synced_records(dir.path(), 5, 1, 9000);
        drop(segments);
        let path = first_segment(dir.path());
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[0xff], ALIGN + span(9000) + 20).unwrap();
        let segments = Segments::open(dir.path()).unwrap();
        assert_eq!(segments.list(), vec![name(0, 1), name(2, 1), name(3, 1), name(4, 1)]);
        for i in [0, 2, 3, 4] {
            assert_eq!(segments.read(name(i, 1)).unwrap(), payload(i, 9000));
        }
    }

    #[test]
    fn a_payload_holding_a_copy_of_a_segment_is_never_taken_for_records() {
        let dir = tempfile::tempdir().unwrap();
        let segments = synced_records(dir.path(), 4, 0, 5000);
        let path = first_segment(dir.path());
        let image = fs::read(&path).unwrap();
        segments.append(name(9, 0), &image).unwrap();
        segments.sync().unwrap();
        // Rot the header of the record holding the image, so the walk steps through it.
        let image_offset = ALIGN + 4 * span(5000);
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[0xff], image_offset + 1).unwrap();
        drop(segments);
        let segments = Segments::open(dir.path()).unwrap();
        assert_eq!(segments.list(), vec![name(0, 0), name(1, 0), name(2, 0), name(3, 0)]);
        for i in 0..4 {
            assert_eq!(segments.read(name(i, 0)).unwrap(), payload(i, 5000));
        }
    }

    #[test]
    fn an_append_that_lands_at_the_wrong_offset_is_never_read_as_a_record() {
        let dir = tempfile::tempdir().unwrap();
        let segments = synced_records(dir.path(), 3, 0, 6000);
        drop(segments);
        // Record 0's bytes written where record 2 lives, as a misdirected write would.
        let path = first_segment(dir.path());
        let image = fs::read(&path).unwrap();
        let record = &image[ALIGN as usize..(ALIGN + RECORD_HEADER_LEN) as usize + 6000];
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(record, ALIGN + 2 * span(6000)).unwrap();
        let segments = Segments::open(dir.path()).unwrap();
        // Record 2 is lost (the engine repairs a missing fragment) and nothing answers
        // with record 0's bytes from the wrong place.
        assert_eq!(segments.list(), vec![name(0, 0), name(1, 0)]);
        assert_eq!(segments.read(name(0, 0)).unwrap(), payload(0, 6000));
        assert_eq!(segments.used_bytes(), 2 * span(6000));
    }

    #[test]
    fn sequence_numbers_keep_rising_when_the_segments_that_held_them_are_gone() {
        let dir = tempfile::tempdir().unwrap();
        let segments = Segments::open(dir.path()).unwrap();
        segments.append(name(1, 0), b"first").unwrap();
        segments.sync().unwrap();
        let first = scan(dir.path()).unwrap()[0].seq;
        segments.delete(name(1, 0)).unwrap();
        segments.sync().unwrap();
        drop(segments);
        let segments = Segments::open(dir.path()).unwrap();
        assert!(scan(dir.path()).unwrap().is_empty(), "the empty segment outlived open");
        segments.append(name(1, 0), b"second").unwrap();
        let second = scan(dir.path()).unwrap()[0].seq;
        assert!(second > first, "a record written after the reopen ranks below an older one: {second} <= {first}");
    }

    #[test]
    fn an_append_after_a_torn_record_is_never_swallowed_by_it() {
        let dir = tempfile::tempdir().unwrap();
        let segments = Segments::open(dir.path()).unwrap();
        segments.append(name(0, 0), &[7]).unwrap();
        segments.sync().unwrap();
        segments.append(name(1, 0), &payload(1, 8129)).unwrap();
        drop(segments);
        // The crash keeps the torn record's header and its first 4 KiB.
        let path = first_segment(dir.path());
        let image = fs::read(&path).unwrap();
        fs::write(&path, &image[..2 * ALIGN as usize + 4097]).unwrap();
        let segments = Segments::open(dir.path()).unwrap();
        assert_eq!(segments.list(), vec![name(0, 0)]);
        segments.append(name(2, 0), b"after").unwrap();
        segments.sync().unwrap();
        drop(segments);
        let segments = Segments::open(dir.path()).unwrap();
        assert_eq!(segments.read(name(2, 0)).unwrap(), b"after");
        assert_eq!(segments.read(name(0, 0)).unwrap(), [7]);
    }

    #[test]
    fn where_holes_cannot_be_punched_compaction_empties_mostly_dead_segments() {
        let dir = tempfile::tempdir().unwrap();
        // 64 KiB segments of seven 8 KiB records each.
        let segments = Segments::open_sized(dir.path(), 64 << 10).unwrap();
        for i in 0..20 {
            segments.append(name(i, 0), &payload(i, 5000)).unwrap();
        }
        segments.sync().unwrap();
        let files = || segment_files(&dir.path().join(SEGMENTS_DIR)).unwrap().len();
        assert_eq!(files(), 3);
        for i in [0, 1, 2, 3, 4, 8] {
            segments.delete(name(i, 0)).unwrap();
        }
        assert!(!segments.wants_compaction(), "holes were punched: nothing to compact");
        segments.holes.store(false, Ordering::Relaxed);
        assert!(segments.wants_compaction());
        assert_eq!(segments.compact(1 << 20).unwrap(), 2 * span(5000), "the two live records of the first segment");
        let first = dir.path().join(SEGMENTS_DIR).join(format!("{:016x}.seg", 1));
        assert!(!first.exists(), "the emptied segment was not deleted");
        assert!(!segments.wants_compaction(), "the second segment is mostly live");
        let live: Vec<u64> = (0..20).filter(|i| ![0, 1, 2, 3, 4, 8].contains(i)).collect();
        for i in &live {
            assert_eq!(segments.read(name(*i, 0)).unwrap(), payload(*i, 5000));
        }
        assert_eq!(segments.used_bytes(), live.len() as u64 * span(5000));
        drop(segments);
        let segments = Segments::open(dir.path()).unwrap();
        assert_eq!(segments.list().len(), live.len());
        for i in &live {
            assert_eq!(segments.read(name(*i, 0)).unwrap(), payload(*i, 5000));
        }
    }

    #[test]
    fn a_segment_of_an_unknown_format_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let segments = Segments::open(dir.path()).unwrap();
        segments.append(name(1, 0), b"x").unwrap();
        segments.sync().unwrap();
        let path = first_segment(dir.path());
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&(SEGMENT_FORMAT + 1).to_le_bytes(), 8).unwrap();
        let error = Segments::open(dir.path()).err().unwrap();
        let text = error.to_string();
        assert!(text.contains("segment format 2") && text.contains("reads format 1"), "{text}");
    }

    /// How a crash leaves the bytes appended since the last sync.
    #[derive(Clone, Debug)]
    enum Fate {
        Lost,
        Whole,
        /// Only this many bytes of the record landed.
        Torn(usize),
        /// Garbage over the record from this byte on.
        Garbage(usize, u8),
    }

    fn fate() -> impl Strategy<Value = Fate> {
        prop_oneof![
            Just(Fate::Lost),
            Just(Fate::Whole),
            (0usize..20_000).prop_map(Fate::Torn),
            (0usize..20_000, 1u8..=255).prop_map(|(at, byte)| Fate::Garbage(at, byte)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// The crash model of the module header: whatever happens to the appends since the
        /// last sync, every synced record reads back exactly, the walk never fails, and a
        /// name is only ever listed with bytes that were written for it.
        #[test]
        fn every_synced_record_survives_any_fate_of_the_unsynced_ones(
            synced in proptest::collection::vec(1usize..20_000, 1..6),
            unsynced in proptest::collection::vec((1usize..20_000, fate()), 1..6),
            batched in any::<bool>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let segments = Segments::open(dir.path()).unwrap();
            for (i, len) in synced.iter().enumerate() {
                segments.append(name(i as u64, 0), &payload(i as u64, *len)).unwrap();
            }
            segments.sync().unwrap();
            let path = first_segment(dir.path());
            let durable_len = fs::metadata(&path).unwrap().len();
            // One by one, or as one batch (`append_batch`): each record meets its own fate.
            let payloads: Vec<Vec<u8>> =
                unsynced.iter().enumerate().map(|(j, (len, _))| payload(8 + j as u64, *len)).collect();
            if batched {
                let parts: Vec<[&[u8]; 1]> = payloads.iter().map(|p| [&p[..]]).collect();
                let records: Vec<(BlockName, &[&[u8]])> =
                    parts.iter().enumerate().map(|(j, p)| (name(8 + j as u64, 0), &p[..])).collect();
                segments.append_batch(&records).unwrap();
            } else {
                for (j, bytes) in payloads.iter().enumerate() {
                    segments.append(name(8 + j as u64, 0), bytes).unwrap();
                }
            }
            let mut landed = Vec::new();
            for (j, (len, fate)) in unsynced.iter().enumerate() {
                let extent = 8 + j as u64;
                let offset = segments.lock().index[&name(extent, 0)].offset;
                landed.push((extent, offset, *len, fate.clone()));
            }
            drop(segments);
            // The crash: rebuild the file from its durable prefix plus each append's fate.
            let image = fs::read(&path).unwrap();
            let mut crashed = image[..durable_len as usize].to_vec();
            for (_, offset, len, fate) in &landed {
                let record = &image[*offset as usize..*offset as usize + RECORD_HEADER_LEN as usize + len];
                let bytes: Vec<u8> = match fate {
                    Fate::Lost => continue,
                    Fate::Whole => record.to_vec(),
                    Fate::Torn(n) => record[..(*n).min(record.len())].to_vec(),
                    Fate::Garbage(at, byte) => {
                        let mut r = record.to_vec();
                        let from = (*at).min(r.len());
                        r[from..].iter_mut().for_each(|b| *b = *byte);
                        r
                    }
                };
                let end = *offset as usize + bytes.len();
                if crashed.len() < end {
                    crashed.resize(end, 0);
                }
                crashed[*offset as usize..end].copy_from_slice(&bytes);
            }
            fs::write(&path, &crashed).unwrap();
            let segments = Segments::open(dir.path()).unwrap();
            for (i, len) in synced.iter().enumerate() {
                prop_assert_eq!(segments.read(name(i as u64, 0)).unwrap(), payload(i as u64, *len));
            }
            for listed in segments.list() {
                let BlockName::Fragment { extent: ExtentId(extent), .. } = listed else { unreachable!() };
                let Some((_, _, len, fate)) = landed.iter().find(|l| l.0 == extent) else {
                    prop_assert!((extent as usize) < synced.len(), "listed a block never written: {}", listed);
                    continue;
                };
                prop_assert!(!matches!(fate, Fate::Lost), "a lost append came back: {}", listed);
                // A whole record reads back exactly; a torn one may read back anything of
                // the right length (the fragment's own BLAKE3 rejects it).
                let read = segments.read(listed).unwrap();
                prop_assert_eq!(read.len(), *len);
                if matches!(fate, Fate::Whole) {
                    prop_assert_eq!(read, payload(extent, *len));
                }
            }
            // The disk takes appends again after the crash, and they survive a reopen.
            segments.append(name(999, 0), b"after").unwrap();
            segments.sync().unwrap();
            drop(segments);
            prop_assert_eq!(Segments::open(dir.path()).unwrap().read(name(999, 0)).unwrap(), b"after".to_vec());
        }
    }
}
