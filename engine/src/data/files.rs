//! Open files: handles, per-file write buffering cut at extent boundaries, and the
//! flush that turns buffered chunks into committed extents.
//!
//! All handles of one inode share one buffer, so every reader sees every write at once.
//! A buffered chunk holds the chunk's full current contents (loaded from its extent on
//! the first partial write). `flush`/`fsync`/`release` write the chunks as new extents
//! (copy-on-write) and commit them with the file's size and times in one transaction;
//! `fsync` then runs the durability barrier.
//!
//! A front end with several request threads flushes behind the writer
//! (`flush_behind`): once a file's buffer holds half its bound in whole chunks, the
//! lowest of them, up to half the bound, move to the file's `flushing` set, are stored
//! with the pool's lock released while writes go on filling the buffer, and are
//! committed. A second flush may run beside the first when the buffer's whole chunks
//! all lie above it and no patch is involved (a writer streaming the file): it encodes
//! and writes while the first one's last fragment writes finish, so the disks never
//! wait for a flush to drain before the next begins; flushes commit in the order they
//! were taken (`OpenFile::flush_turn`), so no committed size covers a chunk still being
//! stored. A writer that fills the buffer with no room for another flush waits
//! (`write_shared`: back pressure). Every other path holds the pool throughout, and one
//! that finds a flush in flight takes the chunks of all of them back first
//! (`Pool::reclaim_flushing`), so their commits are dropped and nothing is stored twice
//! or out of order.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;

use crate::base::error::{Error, Result};
use crate::data::store::{store_chunks, PoolAccess, StoredChunks};
use crate::data::window::ReadData;
use crate::media::device::ExtentId;
use crate::meta::state::{
    ChunkSlot, ExtentCore, ExtentRecord, Ino, InodeKind, Layer, Op, Transaction, EXTENT_BYTES_MAX, INLINE_BYTES_MAX,
};
use crate::pool::lock;
use crate::pool::open_files::{add_range, Patch};
use crate::pool::Pool;

const CHUNK: u64 = EXTENT_BYTES_MAX;

/// A write at least this large into a new chunk reserves the whole chunk.
const STREAM_WRITE_BYTES: usize = 64 << 10;

/// Extents a sequential reader has fetched ahead of the one it reads: as many as it has
/// read in its current run, from the least to the most, and never more than a quarter
/// of the extent cache (which the fetched extents wait in). A reader that reads on keeps
/// more of the disks busy (a 1 GiB read at 1,296 MiB/s with four, 1,538 with sixteen);
/// one that reads a file's first bytes fetches little it will not read.
const READ_AHEAD_EXTENTS_MIN: u64 = 4;
const READ_AHEAD_EXTENTS_MAX: u64 = 16;

/// The most bytes of a chunk a flush stores as a layer over its extent rather than
/// storing the whole chunk again; and the most ranges in one layer.
const LAYER_BYTES_MAX: u64 = CHUNK / 4;
const LAYER_RANGES_MAX: usize = 64;

/// The most layers a chunk holds: a flush that would add one more stores the whole
/// chunk instead (which replaces them), so a read of a chunk fetches at most this many
/// extents besides its own.
pub(crate) const LAYERS_MAX: usize = 8;

/// The most room a reservation check remembers for later writes (`OpenFiles::room`):
/// writes between two commits look at the disks at least once per this many bytes.
const ROOM_REMEMBERED_MAX: u64 = 256 << 20;

/// Whether overwritten `ranges` of a chunk are few and small enough for a layer.
fn layerable(ranges: &[(u32, u32)]) -> bool {
    ranges.len() <= LAYER_RANGES_MAX && ranges.iter().map(|(_, len)| u64::from(*len)).sum::<u64>() <= LAYER_BYTES_MAX
}

/// The disk space a buffered chunk of `len` bytes needs: none when it is small enough
/// to live inline in metadata.
fn stored_len(len: u64) -> u64 {
    if len <= INLINE_BYTES_MAX as u64 {
        0
    } else {
        len
    }
}

pub use crate::pool::open_files::FileHandle;
use crate::pool::open_files::{Handle, OpenFile};

impl Pool {
    pub(crate) fn handle_ino(&self, fh: FileHandle) -> Result<Ino> {
        self.files.handles.get(&fh).map(|h| h.ino).ok_or(Error::BadHandle(fh))
    }

    /// Marks handle `fh` as having written: its close then flushes.
    pub(crate) fn mark_wrote(&mut self, fh: FileHandle) {
        if let Some(handle) = self.files.handles.get_mut(&fh) {
            handle.wrote = true;
        }
    }

    /// The size of `ino`, buffered writes included.
    pub fn current_size(&self, ino: Ino) -> u64 {
        match self.files.get(ino) {
            Some(file) => file.size,
            None => self.state.inodes.get(&ino).map(|i| i.size).unwrap_or(0),
        }
    }

    /// The open-file entry of `ino`, created (with no handles) if absent.
    pub(crate) fn open_entry(&mut self, ino: Ino) -> Result<&mut OpenFile> {
        let inode = self.state.inodes.get(&ino).ok_or_else(|| Error::NotFound(format!("inode {}", ino.0)))?;
        if inode.kind != InodeKind::File {
            return Err(match inode.kind {
                InodeKind::Directory => Error::IsDirectory(format!("inode {}", ino.0)),
                _ => Error::InvalidArgument(format!("inode {} is not a regular file", ino.0)),
            });
        }
        let size = inode.size;
        Ok(self.files.files.entry(ino).or_insert_with(|| OpenFile::new(size)))
    }

    /// Opens a regular file for reading and writing.
    pub fn open_file(&mut self, ino: Ino) -> Result<FileHandle> {
        self.open_entry(ino)?.handles += 1;
        self.files.next_handle += 1;
        let fh = self.files.next_handle;
        self.files.handles.insert(fh, Handle { ino, wrote: false });
        Ok(fh)
    }

    /// Current contents of chunk `index` of `ino`, as a buffer to modify.
    pub(crate) fn load_chunk(&mut self, ino: Ino, index: u64) -> Result<Vec<u8>> {
        Ok(self.read_chunk(ino, index)?.map(|chunk| chunk.to_vec()).unwrap_or_default())
    }

    /// Current contents of chunk `index` of `ino` where it is not buffered whole: what is
    /// stored, with the file's patches over it (in flight, then waiting).
    pub(crate) fn current_chunk(&mut self, ino: Ino, index: u64) -> Result<Vec<u8>> {
        let mut chunk = self.load_chunk(ino, index)?;
        if let Some(file) = self.files.get(ino) {
            file.lay_patches(index, &mut chunk);
        }
        Ok(chunk)
    }

    /// The committed contents of chunk `index` of `ino` — its extent with its layers laid
    /// over it, oldest first — or `None` for a hole.
    pub(crate) fn read_chunk(&mut self, ino: Ino, index: u64) -> Result<Option<Bytes>> {
        let slot = ChunkSlot { ino, index };
        let Some(id) = self.state.slot_extent_id(slot) else { return Ok(None) };
        let base = self.read_extent_id(id, index * CHUNK)?;
        let layers = self.layers_of(slot);
        if layers.is_empty() {
            return Ok(Some(base));
        }
        let mut chunk = base.to_vec();
        for layer in layers {
            let data = self.read_extent_id(layer.extent, index * CHUNK)?;
            layer.lay_over(&mut chunk, &data);
        }
        debug_assert!(chunk.len() as u64 <= CHUNK);
        Ok(Some(Bytes::from(chunk)))
    }

    /// Fetches the extents that `read_chunk` of each of `slots` reads (each chunk's extent
    /// and its layers), at once into the cache, where they are not yet: for work that
    /// reads many chunks one after another under the pool (re-encodes), which would
    /// otherwise wait for one extent's disks at a time.
    pub(crate) fn prefetch_chunks(&mut self, slots: &[ChunkSlot]) {
        let wanted: Vec<(ExtentId, u64)> = slots
            .iter()
            .flat_map(|slot| {
                let at = slot.index * CHUNK;
                let base = self.state.slot_extent_id(*slot);
                let layers = self.layers_of(*slot).into_iter().map(|layer| layer.extent);
                base.into_iter().chain(layers).map(move |id| (id, at)).collect::<Vec<_>>()
            })
            .collect();
        self.prefetch(wanted);
    }

    /// The layers of `slot`, oldest first.
    fn layers_of(&self, slot: ChunkSlot) -> Vec<Layer> {
        self.state.layers.get(&slot).cloned().unwrap_or_default()
    }

    /// Writes `data` at `offset`; buffered until flushed. Returns the bytes written.
    pub fn write(&mut self, fh: FileHandle, offset: u64, data: &[u8]) -> Result<usize> {
        self.write_bounded(fh, offset, data, self.options.dirty_bytes_max)
    }

    /// `write`, storing the buffer's whole chunks first once it holds `bound` bytes.
    fn write_bounded(&mut self, fh: FileHandle, offset: u64, data: &[u8], bound: usize) -> Result<usize> {
        let started = self.clock.monotonic_nanos();
        let written = self.write_buffered(fh, offset, data, bound)?;
        self.record_op(crate::pool::op_stats::OpKind::Write, written as u64, started);
        Ok(written)
    }

    /// Buffers `data` at `offset`, storing the buffer's whole chunks first once it holds
    /// `bound` bytes.
    pub(crate) fn write_buffered(&mut self, fh: FileHandle, offset: u64, data: &[u8], bound: usize) -> Result<usize> {
        let ino = self.handle_ino(fh)?;
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|end| *end <= i64::MAX as u64)
            .ok_or_else(|| Error::InvalidArgument("write past the largest file size".into()))?;
        if data.is_empty() {
            return Ok(0);
        }
        // A full buffer is written out before this write joins it, so a flush that fails
        // fails this write with nothing of it taken.
        if self.files.files.get(&ino).is_some_and(|f| f.dirty_bytes >= bound) {
            self.flush_ino(ino, true)?;
        }
        // Load every chunk the write only partly covers first, so a write that fails
        // (an unreadable extent) changes nothing — except where the write can be a
        // patch over the stored chunk, which needs nothing read.
        let mut loaded = BTreeMap::new();
        let mut from_store = BTreeSet::new();
        let mut patched = BTreeSet::new();
        let mut growth = 0u64;
        for index in offset / CHUNK..=(end - 1) / CHUNK {
            let chunk_start = index * CHUNK;
            let low = offset.max(chunk_start) - chunk_start;
            let high = end.min(chunk_start + CHUNK) - chunk_start;
            let whole = offset <= chunk_start && end >= chunk_start + CHUNK;
            let buffered = self.files.files.get(&ino).and_then(|f| f.dirty.get(&index)).map(|c| c.len() as u64);
            if !whole && buffered.is_none() {
                if self.patchable(ino, index, low, high) {
                    patched.insert(index);
                    growth += high - low;
                    continue;
                }
                let file = self.files.get(ino);
                let flushing = file.and_then(|f| f.flushing.get(&index)).map(|c| c.to_vec());
                let chunk = match flushing {
                    Some(chunk) => chunk,
                    None => {
                        // Only what the store holds may be stored again as a layer over
                        // it: not a patch in flight, whose commit may yet be dropped.
                        if !file.is_some_and(|f| f.flushing_patches.contains_key(&index)) {
                            from_store.insert(index);
                        }
                        self.current_chunk(ino, index)?
                    }
                };
                loaded.insert(index, chunk);
            }
            let before = buffered.unwrap_or(0);
            let after = before.max(high).max(loaded.get(&index).map_or(0, |c| c.len() as u64));
            growth += stored_len(after) - stored_len(before);
        }
        self.reserve(ino, growth)?;
        let file = self.open_entry(ino)?;
        for index in offset / CHUNK..=(end - 1) / CHUNK {
            let chunk_start = index * CHUNK;
            let low = (offset.max(chunk_start) - chunk_start) as usize;
            let high = (end.min(chunk_start + CHUNK) - chunk_start) as usize;
            let source =
                &data[(chunk_start + low as u64 - offset) as usize..(chunk_start + high as u64 - offset) as usize];
            if patched.contains(&index) {
                let patch = file.patches.entry(index).or_default();
                let before = patch.bytes();
                patch.write(low as u32, source);
                file.dirty_bytes += patch.bytes() - before;
                continue;
            }
            // A whole chunk buffered from here on holds the patch (loaded with it, or
            // overwritten whole).
            let patch = file.patches.remove(&index);
            file.dirty_bytes -= patch.as_ref().map_or(0, Patch::bytes);
            let mut chunk = match file.dirty.remove(&index) {
                Some(chunk) => {
                    debug_assert!(patch.is_none());
                    file.dirty_bytes -= chunk.len();
                    if let Some(ranges) = file.overwritten.get_mut(&index) {
                        add_range(ranges, low as u32, high as u32);
                        if !layerable(ranges) {
                            file.overwritten.remove(&index);
                        }
                    }
                    chunk
                }
                // A chunk a stream of large writes fills gets room for all of it at once,
                // so it is never copied as it grows.
                None => {
                    if low == 0 && high as u64 == CHUNK {
                        file.loaded.remove(&index);
                    } else if loaded.get(&index).is_some_and(|c| !c.is_empty()) {
                        file.loaded.insert(index);
                        if from_store.contains(&index) {
                            let mut ranges = patch.as_ref().map(Patch::ranges).unwrap_or_default();
                            add_range(&mut ranges, low as u32, high as u32);
                            if layerable(&ranges) {
                                file.overwritten.insert(index, ranges);
                            }
                        }
                    }
                    let mut chunk = loaded.remove(&index).unwrap_or_default();
                    if source.len() >= STREAM_WRITE_BYTES {
                        chunk.reserve_exact(CHUNK as usize - chunk.len());
                    }
                    chunk
                }
            };
            if chunk.len() < high {
                // What the write covers is not zeroed first.
                chunk.truncate(low);
                chunk.resize(low, 0);
                chunk.extend_from_slice(source);
            } else {
                chunk[low..high].copy_from_slice(source);
            }
            debug_assert!(chunk.len() >= high && chunk[low..high] == *source);
            file.dirty_bytes += chunk.len();
            file.dirty.insert(index, chunk);
        }
        if let Some(handle) = self.files.handles.get_mut(&fh) {
            handle.wrote = true;
        }
        let now = self.clock.wall();
        let file = self.open_entry(ino)?;
        file.size = file.size.max(end);
        file.mtime = Some(now);
        Ok(data.len())
    }

    /// Whether a write of `[low, high)` into chunk `index` of `ino` — not buffered whole —
    /// can be a patch over the stored chunk: the chunk holds an extent with room for
    /// another layer, is not being flushed whole, and its patch stays small enough for
    /// a layer.
    fn patchable(&self, ino: Ino, index: u64, low: u64, high: u64) -> bool {
        let slot = ChunkSlot { ino, index };
        if self.state.slot_extent(slot).is_none() || self.state.layers.get(&slot).map_or(0, Vec::len) >= LAYERS_MAX {
            return false;
        }
        let file = self.files.get(ino);
        if file.is_some_and(|f| f.flushing.contains_key(&index)) {
            return false;
        }
        let mut ranges = file.and_then(|f| f.patches.get(&index)).map(Patch::ranges).unwrap_or_default();
        add_range(&mut ranges, low as u32, high as u32);
        layerable(&ranges)
    }

    /// Buffered data is stored copy-on-write by the next flush at the latest, so a write
    /// that grows the buffers by `growth` bytes is taken only while the pool has room for
    /// every buffered byte under `ino`'s policy: a full pool refuses the write itself
    /// (`NoSpace`, nothing changed) rather than the close that would store it. Space that
    /// an unlink freed counts once the barrier freeing it has run, so when room is short
    /// and frees wait for a barrier, one runs now.
    fn reserve(&mut self, ino: Ino, growth: u64) -> Result<()> {
        if growth == 0 {
            return Ok(());
        }
        let policy = self.state.effective_policy(ino);
        if let Some((checked, room)) = &mut self.files.room {
            if *checked == policy && growth <= *room {
                *room -= growth;
                return Ok(());
            }
        }
        let chunks: u64 =
            self.files.files.values().flat_map(|f| f.buffered_chunks()).map(|(_, c)| stored_len(c.len() as u64)).sum();
        let patches: u64 = self
            .files
            .files
            .values()
            .flat_map(|f| f.patches.values().chain(f.flushing_patches.values()))
            .map(|p| p.bytes() as u64)
            .sum();
        let buffered = chunks + patches;
        let needed = buffered + growth;
        let mut free = self.space_for(policy).1;
        if needed > free && self.frees_pending() {
            self.sync()?;
            free = self.space_for(policy).1;
        }
        // Refused only for a known lack of room: where too few disks are reachable for
        // this policy's writes, or a disk's size cannot be read (it may be unreachable),
        // the flush finds out and says so.
        if needed <= free {
            self.files.room = Some((policy, (free - needed).min(ROOM_REMEMBERED_MAX)));
            return Ok(());
        }
        let sizes_known = self
            .state
            .disks
            .keys()
            .filter(|d| self.state.disk_writable(**d))
            .all(|d| self.devices.get(d).is_some_and(|device| device.capacity_bytes() > 0));
        if sizes_known && !matches!(self.check_writable(policy), Err(Error::Unavailable(_))) {
            return Err(Error::NoSpace(format!(
                "the pool has room for {free} more bytes under {policy}; this write would make {needed} bytes \
                 waiting to be stored"
            )));
        }
        Ok(())
    }

    /// Reads up to `size` bytes at `offset`; short only at end of file. Holes read as zeros.
    pub fn read(&mut self, fh: FileHandle, offset: u64, size: usize) -> Result<Vec<u8>> {
        self.read_data(fh, offset, size).map(ReadData::into_vec)
    }

    /// `read`, answering a read inside one stored chunk with nothing laid over it with a
    /// window of the cached extent itself: no copy, and the lock is not held for one.
    pub fn read_data(&mut self, fh: FileHandle, offset: u64, size: usize) -> Result<ReadData> {
        self.answer_read(fh, offset, size, true)
    }

    /// `read_data`; without `read_ahead` for a caller that planned the read-ahead itself
    /// (`fetch::read_shared`, whose plan has already noted the read as well).
    pub(crate) fn answer_read(
        &mut self,
        fh: FileHandle,
        offset: u64,
        size: usize,
        read_ahead: bool,
    ) -> Result<ReadData> {
        let started = self.clock.monotonic_nanos();
        let end = offset.saturating_add(size as u64);
        let (ino, sequential) =
            if read_ahead { self.note_read(fh, offset, end)? } else { (self.handle_ino(fh)?, false) };
        if sequential && size > 0 {
            self.read_ahead(ino, offset, end);
        }
        let data = match self.extent_window(ino, offset, size)? {
            Some(window) => window,
            None => ReadData::Owned(self.read_ino(ino, offset, size)?),
        };
        self.record_op(crate::pool::op_stats::OpKind::Read, data.len() as u64, started);
        Ok(data)
    }

    /// The read as a window of one stored extent, when it is one: inside one chunk and
    /// the file's size, the chunk stored (not buffered, patched or layered) and its
    /// extent's bytes covering the window. `None` otherwise: `read_ino` assembles it.
    fn extent_window(&mut self, ino: Ino, offset: u64, size: usize) -> Result<Option<ReadData>> {
        let file_size = self.current_size(ino);
        if size == 0 || offset >= file_size {
            return Ok(None);
        }
        let end = file_size.min(offset.saturating_add(size as u64));
        let index = offset / CHUNK;
        if (end - 1) / CHUNK != index {
            return Ok(None);
        }
        let slot = ChunkSlot { ino, index };
        if self.files.get(ino).is_some_and(|f| f.buffered(index).is_some() || f.has_patches(index))
            || self.state.layers.contains_key(&slot)
        {
            return Ok(None);
        }
        let Some(id) = self.state.slot_extent_id(slot) else { return Ok(None) };
        let chunk_start = index * CHUNK;
        let data = self.read_extent_id(id, chunk_start)?;
        let (low, high) = ((offset - chunk_start) as usize, (end - chunk_start) as usize);
        if data.len() < high {
            // The file's size reaches past the extent's bytes: zeros, which `read_ino` adds.
            return Ok(None);
        }
        self.note_access(slot, true);
        Ok(Some(ReadData::shared(data, low, high)))
    }

    /// Fetches, in parallel, the extents a sequential read covers and the next
    /// `read_ahead_extents` after it.
    fn read_ahead(&mut self, ino: Ino, offset: u64, end: u64) {
        let records = self.read_ahead_records(ino, offset, end);
        self.prefetch(records);
    }

    /// The extents (with their file offsets) of `[offset, end)` and the read-ahead window
    /// after it, except chunks buffered dirty.
    pub(crate) fn read_ahead_records(&self, ino: Ino, offset: u64, end: u64) -> Vec<(ExtentId, u64)> {
        let Some(map) = self.state.file_extents.get(&ino) else { return Vec::new() };
        let last = (end.saturating_sub(1) / CHUNK).saturating_add(self.read_ahead_extents(ino));
        let file = self.files.get(ino);
        let mut records = Vec::new();
        for (index, id) in map.range(offset / CHUNK..=last) {
            if file.is_some_and(|f| f.buffered(*index).is_some()) {
                continue;
            }
            records.push((*id, index * CHUNK));
            let layers = self.state.layers.get(&ChunkSlot { ino, index: *index });
            records.extend(layers.into_iter().flatten().map(|layer| (layer.extent, index * CHUNK)));
        }
        records
    }

    /// How many extents past a sequential read of `ino` to fetch (see
    /// `READ_AHEAD_EXTENTS_MIN`).
    pub(crate) fn read_ahead_extents(&self, ino: Ino) -> u64 {
        let run = self.files.get(ino).map_or(0, |f| f.read_end.saturating_sub(f.read_run_start) / CHUNK);
        let cache_share = (self.cache.capacity_bytes() as u64 / CHUNK / 4).max(1);
        let extents = run.clamp(READ_AHEAD_EXTENTS_MIN, READ_AHEAD_EXTENTS_MAX).min(cache_share);
        debug_assert!((1..=READ_AHEAD_EXTENTS_MAX).contains(&extents));
        extents
    }

    /// Notes a read of `[offset, end)` on `fh`'s file; returns whether it is sequential.
    pub(crate) fn note_read(&mut self, fh: FileHandle, offset: u64, end: u64) -> Result<(Ino, bool)> {
        let ino = self.handle_ino(fh)?;
        let Some(file) = self.files.files.get_mut(&ino) else { return Ok((ino, false)) };
        // The kernel's read-ahead sends several requests at once and they may be
        // served out of order: near the last end counts as sequential.
        let sequential = file.read_end.abs_diff(offset) <= 2 * CHUNK;
        if !sequential {
            file.read_run_start = offset;
        }
        file.read_end = file.read_end.max(end);
        Ok((ino, sequential))
    }

    pub(crate) fn read_ino(&mut self, ino: Ino, offset: u64, size: usize) -> Result<Vec<u8>> {
        let file_size = self.current_size(ino);
        if offset >= file_size || size == 0 {
            return Ok(Vec::new());
        }
        let end = file_size.min(offset.saturating_add(size as u64));
        let mut out = vec![0u8; (end - offset) as usize];
        for index in offset / CHUNK..=(end - 1) / CHUNK {
            let chunk_start = index * CHUNK;
            let low = offset.max(chunk_start) - chunk_start;
            let high = end.min(chunk_start + CHUNK) - chunk_start;
            let target = &mut out[(chunk_start + low - offset) as usize..(chunk_start + high - offset) as usize];
            let copy = |target: &mut [u8], source: &[u8]| {
                let available = source.len().saturating_sub(low as usize).min(target.len());
                if available > 0 {
                    target[..available].copy_from_slice(&source[low as usize..low as usize + available]);
                }
            };
            if let Some(chunk) = self.files.get(ino).and_then(|f| f.buffered(index)) {
                copy(target, chunk);
                continue;
            }
            if let Some(id) = self.state.slot_extent_id(ChunkSlot { ino, index }) {
                let data = self.read_extent_id(id, chunk_start)?;
                copy(target, &data);
                for layer in self.layers_of(ChunkSlot { ino, index }) {
                    let data = self.read_extent_id(layer.extent, chunk_start)?;
                    layer.copy_window(target, low, &data);
                }
                self.note_access(ChunkSlot { ino, index }, true);
            }
            if let Some(file) = self.files.get(ino) {
                file.patch_window(index, target, low);
            }
        }
        Ok(out)
    }

    /// Called on each close of a descriptor: if this handle wrote, writes every buffered
    /// chunk of its file and commits (durable at the next barrier, as on ext4 a close
    /// does not sync). A reader's close flushes nothing.
    pub fn flush(&mut self, fh: FileHandle) -> Result<()> {
        let ino = self.handle_ino(fh)?;
        if self.files.handles.get(&fh).is_some_and(|h| h.wrote) {
            return self.flush_ino(ino, false);
        }
        Ok(())
    }

    /// Makes the file's data and metadata durable, whoever wrote it (and, as a
    /// barrier, every other commit before it).
    pub fn fsync(&mut self, fh: FileHandle) -> Result<()> {
        let started = self.clock.monotonic_nanos();
        let ino = self.handle_ino(fh)?;
        self.flush_ino(ino, false)?;
        self.sync()?;
        self.record_op(crate::pool::op_stats::OpKind::Fsync, 0, started);
        Ok(())
    }

    /// Writes and commits the buffered data of every open file (what `sync(2)` does
    /// before its barrier). Returns the first failure after trying every file.
    pub fn flush_all(&mut self) -> Result<()> {
        let inos: Vec<Ino> = self.files.files.keys().copied().collect();
        let mut first_error = None;
        for ino in inos {
            if let Err(e) = self.flush_ino(ino, false) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Flushes if this handle wrote or is the file's last, drops the handle, and removes
    /// the file if this was the last handle of an unlinked file.
    pub fn release(&mut self, fh: FileHandle) -> Result<()> {
        let ino = self.handle_ino(fh)?;
        let wrote = self.files.handles.get(&fh).is_some_and(|h| h.wrote);
        let last = self.files.files.get(&ino).is_none_or(|f| f.handles <= 1);
        let flushed = if wrote || last { self.flush_ino(ino, false) } else { Ok(()) };
        self.files.handles.remove(&fh);
        let last = match self.files.files.get_mut(&ino) {
            Some(file) => {
                file.handles = file.handles.saturating_sub(1);
                file.handles == 0
            }
            None => true,
        };
        if last {
            self.files.files.remove(&ino);
            if self.state.inodes.get(&ino).is_some_and(|i| i.nlink == 0) {
                let freed = self.commit(Transaction { ops: vec![Op::RemoveInode(ino)] })?;
                self.free_extents(&freed);
            }
        }
        flushed
    }

    /// Writes buffered chunks of `ino` as extents and commits them with the size and
    /// times, the pool held throughout. With `complete_only`, only full chunks are written
    /// (the rest stay buffered). A flush in flight has its chunks taken back first.
    pub(crate) fn flush_ino(&mut self, ino: Ino, complete_only: bool) -> Result<()> {
        self.reclaim_flushing(ino);
        let Some(job) = self.take_flush(ino, complete_only, usize::MAX) else {
            return Ok(());
        };
        let mut access: &mut Pool = self;
        flush_job(&mut access, job)
    }

    /// Takes the chunks of the flushes in flight on `ino` back into its buffer (where no
    /// newer write replaced them): their commits will be dropped, and whoever called
    /// this stores them. Nothing when no flush is in flight.
    pub(crate) fn reclaim_flushing(&mut self, ino: Ino) {
        let Some(file) = self.files.files.get_mut(&ino) else { return };
        if !file.in_flight() {
            return;
        }
        file.abandon_flights();
    }

    /// Whether a flush of `ino` is storing chunks with the pool's lock released.
    pub(crate) fn flush_in_flight(&self, ino: Ino) -> bool {
        self.files.get(ino).is_some_and(|f| f.in_flight())
    }

    /// Whether `flush_behind` would store `ino`'s buffer now: at least half its bound
    /// in whole chunks built from writes alone, and room for a flush beside those in
    /// flight (`OpenFile::room_for_flight`).
    fn flush_behind_due(&self, ino: Ino) -> bool {
        let half = self.options.dirty_bytes_max / 2;
        self.files.get(ino).is_some_and(|f| {
            let fresh: usize = f
                .dirty
                .iter()
                .filter(|(i, c)| c.len() as u64 == CHUNK && !f.loaded.contains(i))
                .map(|(_, c)| c.len())
                .sum();
            f.room_for_flight() && fresh >= half
        })
    }

    /// Moves the buffered chunks of `ino` to flush (all, or only full ones, the lowest
    /// first up to `bytes_max`) to its `flushing` set, with the size and times to commit
    /// with them; `None` when nothing needs committing. A flush may be in flight only
    /// where `OpenFile::room_for_flight` allows one beside it.
    fn take_flush(&mut self, ino: Ino, complete_only: bool, bytes_max: usize) -> Option<FlushJob> {
        let policy = self.state.effective_policy(ino);
        let committed_size = self.state.inodes.get(&ino).map(|i| i.size);
        let file = self.files.files.get_mut(&ino)?;
        assert!(file.room_for_flight(), "a flush of inode {} in flight leaves no room for another", ino.0);
        assert!(complete_only || bytes_max == usize::MAX, "a flush of the whole buffer takes all of it");
        let mut taking = 0usize;
        let indexes: Vec<u64> = file
            .dirty
            .iter()
            .filter(|(_, chunk)| !complete_only || chunk.len() as u64 == CHUNK)
            .take_while(|(_, chunk)| {
                let first = taking == 0;
                taking = taking.saturating_add(chunk.len());
                first || taking <= bytes_max
            })
            .map(|(i, _)| *i)
            .collect();
        let unchanged = file.mtime.is_none() && committed_size == Some(file.size);
        if indexes.is_empty() && file.patches.is_empty() && (complete_only || unchanged) {
            return None;
        }
        // A partial flush commits only the size its chunks reach, so a crash never shows
        // a size whose bytes were still buffered.
        let last = indexes.iter().chain(file.patches.keys()).max();
        let size = match (complete_only, last) {
            (true, Some(last)) => file.size.min(committed_size.unwrap_or(0).max((last + 1) * CHUNK)),
            _ => file.size,
        };
        let whole: Vec<(u64, Bytes)> =
            indexes.iter().filter_map(|i| file.dirty.remove(i).map(|chunk| (*i, Bytes::from(chunk)))).collect();
        let beside = file.in_flight();
        let mut overwritten = BTreeMap::new();
        for index in &indexes {
            file.loaded.remove(index);
            overwritten.extend(file.overwritten.remove(index).map(|ranges| (*index, ranges)));
        }
        let ticket = file.take_ticket();
        assert!(whole.iter().all(|(i, _)| !file.flushing.contains_key(i)), "a chunk stored by two flushes at once");
        assert!(beside || file.flushing.is_empty());
        assert!(file.flushing_patches.is_empty(), "patches in flight with no flush, or beside a second one");
        file.flushing.extend(whole.iter().cloned());
        file.flushing_patches = std::mem::take(&mut file.patches);
        file.recount();
        let epoch = file.flush_epoch;
        let patches: Vec<(u64, Patch)> = file.flushing_patches.iter().map(|(i, p)| (*i, p.clone())).collect();
        // A chunk whose stored contents only a few small ranges changed stores just them,
        // as a layer over its extent — unless it holds `LAYERS_MAX` already: then it is
        // stored whole, which folds its layers in.
        let mut layers = BTreeMap::new();
        let mut chunks = Vec::with_capacity(whole.len());
        for (index, chunk) in whole {
            let slot = ChunkSlot { ino, index };
            let layer = overwritten.remove(&index).filter(|_| {
                self.state.slot_extent(slot).is_some() && self.state.layers.get(&slot).map_or(0, Vec::len) < LAYERS_MAX
            });
            let bytes = layer.as_ref().map(|ranges| {
                let mut bytes = Vec::with_capacity(ranges.iter().map(|(_, len)| *len as usize).sum());
                for (offset, len) in ranges {
                    bytes.extend_from_slice(&chunk[*offset as usize..(*offset + *len) as usize]);
                }
                bytes
            });
            match (layer, bytes) {
                (Some(ranges), Some(bytes)) => {
                    debug_assert!(Layer { extent: crate::media::device::ExtentId(0), ranges: ranges.clone() }
                        .well_formed(bytes.len() as u32));
                    layers.insert(index, ranges);
                    chunks.push((index, Bytes::from(bytes)));
                }
                _ => chunks.push((index, chunk)),
            }
        }
        // A patch is a layer already (its chunk holds an extent: patches are made only
        // over one, and what removes it takes the patches back first).
        for (index, patch) in patches {
            debug_assert!(self.state.slot_extent(ChunkSlot { ino, index }).is_some());
            layers.insert(index, patch.ranges());
            chunks.push((index, Bytes::from(patch.concat())));
        }
        Some(FlushJob { ino, epoch, ticket, taken: indexes, chunks, layers, size, policy })
    }

    /// The last phase of a flush, in its turn (`flush_in_turn`): commits what `stored`
    /// wrote of `job` with the size and times — unless the flush's chunks were taken back
    /// meanwhile (`reclaim_flushing`), when what it wrote is deleted unreferenced. On
    /// failure the chunks of every flush in flight go back to the buffer (where no newer
    /// write replaced them), so nothing is lost and no later flush commits past them.
    fn commit_flush(&mut self, job: FlushJob, stored: Result<StoredChunks>) -> Result<()> {
        let ino = job.ino;
        let current = self.files.get(ino).is_some_and(|f| f.flush_epoch == job.epoch);
        assert!(
            !current || self.files.get(ino).is_some_and(|f| f.flush_turn == job.ticket),
            "a flush of inode {} committing before the one taken before it",
            ino.0
        );
        let result = if !current {
            if let Ok(stored) = stored {
                self.discard_stored(stored);
            }
            Ok(())
        } else {
            match stored {
                Ok(stored) => {
                    let records = self.stored(stored);
                    self.commit_flushed(&job, records)
                }
                Err(e) => Err(e),
            }
        };
        if current {
            if let Some(file) = self.files.files.get_mut(&ino) {
                if result.is_err() {
                    file.abandon_flights();
                } else {
                    file.flight_landed(job.ticket, &job.taken);
                }
                let settled = file.dirty.is_empty() && file.patches.is_empty() && !file.in_flight();
                if result.is_ok() && settled && file.size == job.size {
                    file.mtime = None;
                }
            }
        }
        self.writing.flush_finished();
        result
    }

    /// Commits a flush's new extents with the file's size and times.
    fn commit_flushed(&mut self, job: &FlushJob, records: Vec<(u64, Option<ExtentRecord>)>) -> Result<()> {
        let (ino, size) = (job.ino, job.size);
        let mut ops: Vec<Op> = Vec::new();
        let beyond = size.div_ceil(CHUNK);
        if let Some(map) = self.state.file_extents.get(&ino) {
            for (&index, _) in map.range(beyond..) {
                ops.push(Op::SetExtent { ino, index, extent: None });
            }
        }
        for (index, record) in &records {
            if let Some(ranges) = job.layers.get(index) {
                let slot = ChunkSlot { ino, index: *index };
                // A layer is stored even when all zeros (`store_chunks`' `keep_zeros`).
                let Some(record) = record else { unreachable!("layer of chunk {slot} stored as a hole") };
                // Only a chunk's own flush changes which extent it holds, and what takes
                // a flush's chunks back drops its commit: the extent it was loaded from,
                // or the same bytes re-encoded, is still there.
                assert!(self.state.slot_extent(slot).is_some(), "a layer for chunk {slot}, which holds no extent");
                let (record, ranges) = self.coalesced(slot, record, ranges);
                let shadowed = self.state.shadowed_layers(slot, &ranges);
                ops.push(Op::PutLayer { slot, extent: record, ranges });
                if !shadowed.is_empty() {
                    ops.push(Op::DropLayers { slot, extents: shadowed });
                }
                continue;
            }
            let unchanged_hole =
                record.is_none() && !self.state.file_extents.get(&ino).is_some_and(|m| m.contains_key(index));
            if !unchanged_hole {
                ops.push(Op::SetExtent { ino, index: *index, extent: record.clone() });
            }
        }
        if let Some(inode) = self.state.inodes.get(&ino) {
            let mut inode = inode.clone();
            inode.size = size;
            // The file's times now: a `setattr` that set them while the flush was in
            // flight cleared them (they are committed), and a later write moved them on.
            if let Some(mtime) = self.files.get(ino).and_then(|f| f.mtime) {
                inode.mtime = mtime;
                inode.ctime = mtime;
            }
            ops.push(Op::PutInode(inode));
        }
        let new_extents: Vec<_> = records.iter().filter_map(|(_, r)| r.clone()).collect();
        let layers = ops.iter().filter(|op| matches!(op, Op::PutLayer { .. })).count() as u64;
        match self.commit(Transaction { ops }) {
            Ok(freed) => {
                self.counters.layers_written += layers;
                self.free_extents(&freed);
                for (index, record) in &records {
                    if record.is_some() {
                        self.note_access(ChunkSlot { ino, index: *index }, false);
                    }
                }
                Ok(())
            }
            Err(e) => {
                self.free_written(&new_extents);
                Err(e)
            }
        }
    }

    /// The layer to lay over `slot` for a new inline one (`record` over `ranges`): when
    /// the chunk's newest layer is inline too, the new ranges touch its ranges (an append
    /// or a rewrite, not a write elsewhere) and both fit one inline layer, one that
    /// holds both (the new bytes winning), which then covers the newest and drops it.
    /// A file appended to and synced a few KiB at a time (a log, a database's WAL) so
    /// gathers 16 KiB a layer rather than one layer per sync, and folds a quarter as
    /// often. Otherwise the new layer as it is.
    fn coalesced(
        &self,
        slot: ChunkSlot,
        record: &ExtentRecord,
        ranges: &[(u32, u32)],
    ) -> (ExtentRecord, Vec<(u32, u32)>) {
        let as_is = || (record.clone(), ranges.to_vec());
        let Some(bytes) = record.inline.as_deref() else { return as_is() };
        let Some(top) = self.state.layers.get(&slot).and_then(|layers| layers.last()) else { return as_is() };
        if !top.touched_by(ranges) {
            // Scattered small writes would each rewrite the gathered bytes for nothing.
            return as_is();
        }
        if !self.state.extents.get(&top.extent).is_some_and(ExtentCore::is_inline) {
            return as_is();
        }
        // Its data may be only in the store; unreadable, the new layer stays apart.
        let Ok(Some(top_record)) = self.extent_record(top.extent) else { return as_is() };
        let Ok(top_bytes) = self.inline_data(&top_record) else { return as_is() };
        let (merged, data) = top.merged_with(&top_bytes, ranges, bytes);
        if data.len() > INLINE_BYTES_MAX || merged.len() > LAYER_RANGES_MAX || top_record.policy != record.policy {
            return as_is();
        }
        let combined = ExtentRecord {
            len: data.len() as u32,
            hash: *blake3::hash(&data).as_bytes(),
            inline: Some(data.into()),
            ..record.clone()
        };
        debug_assert!(Layer { extent: combined.id, ranges: merged.clone() }.well_formed(combined.len));
        (combined, merged)
    }

    /// Deletes the fragments of stored chunks that will never be committed.
    fn discard_stored(&mut self, stored: StoredChunks) {
        let records = self.stored(stored);
        for record in records.iter().filter_map(|(_, r)| r.as_ref()) {
            for (index, disk) in record.fragments.iter().enumerate() {
                let name = crate::media::device::BlockName::Fragment { extent: record.id, index: index as u8 };
                if let Some(device) = self.devices.get(disk) {
                    if let Err(error) = device.delete(name) {
                        tracing::debug!(%error, %name, "deleting an unneeded fragment failed; left as an orphan");
                    }
                }
            }
        }
    }

    /// Sets the size of `ino`: cuts or extends (with a hole) and commits.
    pub(crate) fn truncate_ino(&mut self, ino: Ino, size: u64) -> Result<()> {
        if size > i64::MAX as u64 {
            return Err(Error::InvalidArgument("size past the largest file size".into()));
        }
        self.reclaim_flushing(ino);
        let boundary = size / CHUNK;
        let within = (size % CHUNK) as usize;
        // The chunk cut in two is loaded (with its patch over it) unless buffered whole.
        let patched = self.files.get(ino).is_some_and(|f| f.patches.contains_key(&boundary));
        let needs_cut = within > 0
            && !self.files.get(ino).is_some_and(|f| f.dirty.contains_key(&boundary))
            && (patched
                || self.state.slot_len(ChunkSlot { ino, index: boundary }).is_some_and(|len| len > within as u64));
        let loaded = if needs_cut { Some(self.current_chunk(ino, boundary)?) } else { None };
        let now = self.clock.wall();
        let file = self.open_entry(ino)?;
        let before = (file.dirty.clone(), file.size, file.mtime, file.overwritten.clone(), file.patches.clone());
        if let Some(chunk) = loaded {
            file.dirty.insert(boundary, chunk);
            file.patches.remove(&boundary);
        }
        let first_gone = size.div_ceil(CHUNK);
        file.dirty.retain(|index, _| *index < first_gone);
        file.patches.retain(|index, _| *index < first_gone);
        file.overwritten.retain(|index, _| *index < boundary);
        if within > 0 {
            if let Some(chunk) = file.dirty.get_mut(&boundary) {
                chunk.truncate(within);
            }
        }
        debug_assert!(file.patches.keys().all(|index| *index < boundary || within == 0));
        file.recount();
        file.size = size;
        file.mtime = Some(now);
        let result = self.flush_ino(ino, false);
        if result.is_err() {
            // A truncate that could not be made durable does not happen at all.
            if let Some(file) = self.files.files.get_mut(&ino) {
                (file.dirty, file.size, file.mtime, file.overwritten, file.patches) = before;
                file.recount();
            }
        }
        if !self.files.is_open(ino) {
            self.files.files.remove(&ino);
        }
        result
    }
}

/// A flush between its phases: the chunks it stores and what it commits with them.
pub(crate) struct FlushJob {
    ino: Ino,
    /// The file's `flush_epoch` when the chunks were taken.
    epoch: u64,
    /// Its place in the order the file's flushes commit in (`OpenFile::flush_turn`).
    ticket: u64,
    /// The indexes of the buffered chunks it took (into `flushing`).
    taken: Vec<u64>,
    /// What is stored: each chunk whole, or for those in `layers` the bytes of its ranges.
    chunks: Vec<(u64, Bytes)>,
    /// Chunks stored as a layer over their extent, with the ranges the layer covers.
    layers: BTreeMap<u64, Vec<(u32, u32)>>,
    size: u64,
    policy: crate::base::policy::Policy,
}

/// Stores a flush's chunks and commits them, reaching the pool through `access` (see
/// `store_chunks`). It must be the only flush of its file in flight: with the pool held
/// throughout, one beside it could never take its turn first.
fn flush_job(access: &mut impl PoolAccess, job: FlushJob) -> Result<()> {
    let stored = store_job(access, &job);
    access.with(|pool| pool.commit_flush(job, stored))
}

/// Stores a flush's chunks (see `store_chunks`). A flush short of room retries once
/// after a barrier: the room may be held by extents whose freeing waits for one.
fn store_job(access: &mut impl PoolAccess, job: &FlushJob) -> Result<StoredChunks> {
    let layers: BTreeSet<u64> = job.layers.keys().copied().collect();
    let stored = store_chunks(access, &job.chunks, job.policy, &layers, INLINE_BYTES_MAX);
    if matches!(stored, Err(Error::NoSpace(_) | Error::Unplaceable { .. })) && access.with(|pool| pool.frees_pending())
    {
        return access
            .with(Pool::sync)
            .and_then(|()| store_chunks(access, &job.chunks, job.policy, &layers, INLINE_BYTES_MAX));
    }
    stored
}

/// Stores a flush's chunks with the pool's lock released and commits them in the flush's
/// turn: after every flush of the file taken before it (`OpenFile::flush_turn`). One
/// that waits longer than `FLUSH_WAIT_MAX` for its turn gives up every flush in flight
/// (their chunks go back to the buffer, to be stored by the next flush): it must not
/// commit out of order, nor wait for ever.
fn flush_in_turn(pool: &Mutex<Pool>, job: FlushJob) -> Result<()> {
    let stored = store_job(&mut { pool }, &job);
    let guard = lock(pool);
    let signal = guard.writing.signal();
    let (ino, epoch, ticket) = (job.ino, job.epoch, job.ticket);
    let waiting =
        |pool: &mut Pool| pool.files.get(ino).is_some_and(|f| f.flush_epoch == epoch && f.flush_turn != ticket);
    let (mut guard, _) = signal.wait_timeout_while(guard, FLUSH_WAIT_MAX, waiting).unwrap_or_else(|p| p.into_inner());
    if waiting(&mut guard) {
        tracing::warn!(ino = ino.0, "a flush waited too long for the one before it; both are stored again later");
        guard.reclaim_flushing(ino);
    }
    guard.commit_flush(job, stored)
}

/// The most a flush behind the writer takes: half the buffer's bound, so with two in
/// flight and the buffer full again a file holds no more than it did with one.
fn flight_bytes_max(dirty_bytes_max: usize) -> usize {
    dirty_bytes_max / 2
}

/// How long a writer waits for a flush of its file before it stores the buffer itself
/// (a flush that never ends — a bug — must not hang writers).
const FLUSH_WAIT_MAX: Duration = Duration::from_secs(5);

/// Locks `pool` once no flush of `fh`'s file is in flight and, with `full_only`, its
/// buffer has room (or FLUSH_WAIT_MAX passed): what a request that would otherwise take
/// a flush's chunks back waits for.
fn settle(pool: &Mutex<Pool>, fh: FileHandle, full_only: bool) -> MutexGuard<'_, Pool> {
    let guard = lock(pool);
    let Ok(ino) = guard.handle_ino(fh) else { return guard };
    let signal = guard.writing.signal();
    let busy = |pool: &mut Pool| {
        let bound = pool.options.dirty_bytes_max;
        match pool.files.get(ino) {
            Some(f) if full_only => f.dirty_bytes >= bound && !f.room_for_flight(),
            _ => pool.flush_in_flight(ino),
        }
    };
    let (guard, _) = signal.wait_timeout_while(guard, FLUSH_WAIT_MAX, busy).unwrap_or_else(|p| p.into_inner());
    guard
}

/// What a `write_shared` took, and whether `flush_behind` has work once it is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wrote {
    /// Bytes written: all of `data`.
    pub bytes: usize,
    /// The file's buffer holds enough for `flush_behind` to store, as seen under the lock
    /// the write held. `false` spares the writer's thread taking the lock again after
    /// answering — where it met the writer's next request (a small file's close) head on.
    pub flush_due: bool,
}

/// Writes `data` at `offset` through `fh` to a pool that several request threads share,
/// waiting first while the file's buffer is full and a flush of it is in flight (back
/// pressure). Call `flush_behind` after answering when `flush_due`.
pub fn write_shared(pool: &Mutex<Pool>, fh: FileHandle, offset: u64, data: &[u8]) -> Result<Wrote> {
    let mut guard = settle(pool, fh, true);
    let ino = guard.handle_ino(fh)?;
    let bound = guard.options.dirty_bytes_max;
    let full = guard.files.get(ino).is_some_and(|f| f.room_for_flight() && f.dirty_bytes >= bound);
    // Full, with room for a flush beside those in flight and one due: the write joins the
    // buffer past its bound, and its answer starts that flush, so the writer is not held
    // up while it stores (every request thread adds one write at most before one of
    // them takes the flush).
    let behind = full && guard.flush_behind_due(ino);
    if full && !behind {
        // Still full once there is room for a flush, and nothing a flush behind would
        // take: store the whole chunks behind the lock's back too. Should that fail,
        // the write below flushes with the pool held and fails itself, nothing of it
        // taken.
        if let Some(job) = guard.take_flush(ino, true, flight_bytes_max(bound)) {
            drop(guard);
            if let Err(error) = flush_in_turn(pool, job) {
                tracing::debug!(ino = ino.0, %error, "flushing a full buffer failed; retrying with the pool held");
            }
            guard = lock(pool);
        }
    }
    let bytes = guard.write_bounded(fh, offset, data, if behind { usize::MAX } else { bound })?;
    debug_assert_eq!(bytes, data.len());
    Ok(Wrote { bytes, flush_due: guard.flush_behind_due(ino) })
}

/// `fsync` through a pool several request threads share: the file's buffer is stored
/// (once no flush of it is in flight) and the barrier runs with its disk syncs outside
/// the lock (`shared_barrier::sync_shared`).
pub fn fsync_shared(pool: &Mutex<Pool>, fh: FileHandle) -> Result<()> {
    let started = lock(pool).clock.monotonic_nanos();
    store_buffer(pool, fh)?;
    crate::data::shared_barrier::sync_shared(pool)?;
    lock(pool).record_op(crate::pool::op_stats::OpKind::Fsync, 0, started);
    Ok(())
}

/// After a write through a shared pool: once `fh`'s file buffers at least half its
/// bound in whole chunks built from writes alone (not loaded for a partial overwrite:
/// see `OpenFile::loaded`) and no flush of it is in flight, stores them with the pool's
/// lock released and commits them, while other requests go on. A failure leaves the
/// chunks buffered: the next flush, `fsync` or close stores them and reports it.
pub fn flush_behind(pool: &Mutex<Pool>, fh: FileHandle) {
    let job = {
        let mut guard = lock(pool);
        let Ok(ino) = guard.handle_ino(fh) else { return };
        if !guard.flush_behind_due(ino) {
            return;
        }
        let bytes_max = flight_bytes_max(guard.options.dirty_bytes_max);
        guard.take_flush(ino, true, bytes_max)
    };
    if let Some(job) = job {
        let ino = job.ino;
        if let Err(error) = flush_in_turn(pool, job) {
            tracing::warn!(ino = ino.0, %error, "flushing behind the writer failed; the data stays buffered");
        }
    }
}

/// `flush` (a descriptor's close) through a pool several request threads share: if `fh`
/// wrote, its file's whole buffer is stored with the pool's lock released and committed
/// (durable at the next barrier, as `Pool::flush`).
pub fn flush_shared(pool: &Mutex<Pool>, fh: FileHandle) -> Result<()> {
    let wrote = lock(pool).files.handles.get(&fh).map(|h| h.wrote).ok_or(Error::BadHandle(fh))?;
    if wrote {
        store_buffer(pool, fh)?;
    }
    Ok(())
}

/// Stores and commits the whole buffer of `fh`'s file — once no flush of it is in
/// flight — with the pool's lock released while encoding and writing.
fn store_buffer(pool: &Mutex<Pool>, fh: FileHandle) -> Result<()> {
    let job = {
        let mut guard = settled(pool, fh);
        let ino = guard.handle_ino(fh)?;
        guard.reclaim_flushing(ino);
        guard.take_flush(ino, false, usize::MAX)
    };
    match job {
        Some(job) => flush_job(&mut { pool }, job),
        None => Ok(()),
    }
}

/// Locks `pool` for a request on `fh` that stores or drops its file's buffer (`flush`,
/// `fsync`, `release`), once no flush of it is in flight.
pub fn settled(pool: &Mutex<Pool>, fh: FileHandle) -> MutexGuard<'_, Pool> {
    settle(pool, fh, false)
}
