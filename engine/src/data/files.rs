//! Open files: handles, per-file write buffering cut at extent boundaries, and the
//! flush that turns buffered chunks into committed extents.
//!
//! All handles of one inode share one buffer, so every reader sees every write at once.
//! A buffered chunk holds the chunk's full current contents (loaded from its extent on
//! the first partial write). `flush`/`fsync`/`release` write the chunks as new extents
//! (copy-on-write) and commit them with the file's size and times in one transaction;
//! `fsync` then runs the durability barrier.

use std::collections::BTreeMap;

use crate::base::error::{Error, Result};
use crate::meta::state::{
    ChunkSlot, ExtentRecord, Ino, InodeKind, Op, Transaction, EXTENT_BYTES_MAX, INLINE_BYTES_MAX,
};
use crate::pool::Pool;

const CHUNK: u64 = EXTENT_BYTES_MAX;

/// Extents a sequential reader has fetched ahead of the one it reads.
const READ_AHEAD_EXTENTS: u64 = 4;

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
    pub(crate) fn current_size(&self, ino: Ino) -> u64 {
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
        Ok(self.files.files.entry(ino).or_insert_with(|| OpenFile {
            handles: 0,
            dirty: BTreeMap::new(),
            dirty_bytes: 0,
            size,
            mtime: None,
            read_end: 0,
        }))
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
        let record = self
            .state
            .file_extents
            .get(&ino)
            .and_then(|m| m.get(&index))
            .and_then(|id| self.state.extents.get(id))
            .cloned();
        match record {
            Some(record) => Ok(self.read_extent(&record, index * CHUNK)?.to_vec()),
            None => Ok(Vec::new()),
        }
    }

    /// Writes `data` at `offset`; buffered until flushed. Returns the bytes written.
    pub fn write(&mut self, fh: FileHandle, offset: u64, data: &[u8]) -> Result<usize> {
        let started = self.clock.monotonic_nanos();
        let written = self.write_buffered(fh, offset, data)?;
        self.record_op(crate::pool::op_stats::OpKind::Write, written as u64, started);
        Ok(written)
    }

    pub(crate) fn write_buffered(&mut self, fh: FileHandle, offset: u64, data: &[u8]) -> Result<usize> {
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
        if self.files.files.get(&ino).is_some_and(|f| f.dirty_bytes >= self.options.dirty_bytes_max) {
            self.flush_ino(ino, true)?;
        }
        // Load every chunk the write only partly covers first, so a write that fails
        // (an unreadable extent) changes nothing.
        let mut loaded = BTreeMap::new();
        let mut growth = 0u64;
        for index in offset / CHUNK..=(end - 1) / CHUNK {
            let chunk_start = index * CHUNK;
            let high = end.min(chunk_start + CHUNK) - chunk_start;
            let whole = offset <= chunk_start && end >= chunk_start + CHUNK;
            let buffered = self.files.files.get(&ino).and_then(|f| f.dirty.get(&index)).map(|c| c.len() as u64);
            if !whole && buffered.is_none() {
                loaded.insert(index, self.load_chunk(ino, index)?);
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
            let mut chunk = match file.dirty.remove(&index) {
                Some(chunk) => {
                    file.dirty_bytes -= chunk.len();
                    chunk
                }
                None => loaded.remove(&index).unwrap_or_default(),
            };
            if chunk.len() < high {
                chunk.resize(high, 0);
            }
            chunk[low..high].copy_from_slice(source);
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
        let buffered: u64 =
            self.files.files.values().flat_map(|f| f.dirty.values()).map(|c| stored_len(c.len() as u64)).sum();
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
        let started = self.clock.monotonic_nanos();
        let end = offset.saturating_add(size as u64);
        let (ino, sequential) = self.note_read(fh, offset, end)?;
        if sequential && size > 0 {
            self.read_ahead(ino, offset, end);
        }
        let data = self.read_ino(ino, offset, size)?;
        self.record_op(crate::pool::op_stats::OpKind::Read, data.len() as u64, started);
        Ok(data)
    }

    /// Fetches, in parallel, the extents a sequential read covers and the next
    /// `READ_AHEAD_EXTENTS` after it.
    fn read_ahead(&mut self, ino: Ino, offset: u64, end: u64) {
        let records = self.read_ahead_records(ino, offset, end);
        self.prefetch(records);
    }

    /// The extents (with their file offsets) of `[offset, end)` and the read-ahead window
    /// after it, except chunks buffered dirty.
    pub(crate) fn read_ahead_records(&self, ino: Ino, offset: u64, end: u64) -> Vec<(ExtentRecord, u64)> {
        let Some(map) = self.state.file_extents.get(&ino) else { return Vec::new() };
        let last = (end.saturating_sub(1) / CHUNK).saturating_add(READ_AHEAD_EXTENTS);
        let dirty = self.files.get(ino).map(|f| &f.dirty);
        map.range(offset / CHUNK..=last)
            .filter(|(index, _)| !dirty.is_some_and(|d| d.contains_key(index)))
            .filter_map(|(index, id)| self.state.extents.get(id).map(|r| (r.clone(), index * CHUNK)))
            .collect()
    }

    /// Notes a read of `[offset, end)` on `fh`'s file; returns whether it is sequential.
    pub(crate) fn note_read(&mut self, fh: FileHandle, offset: u64, end: u64) -> Result<(Ino, bool)> {
        let ino = self.handle_ino(fh)?;
        let Some(file) = self.files.files.get_mut(&ino) else { return Ok((ino, false)) };
        // The kernel's read-ahead sends several requests at once and they may be
        // served out of order: near the last end counts as sequential.
        let sequential = file.read_end.abs_diff(offset) <= 2 * CHUNK;
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
            if let Some(chunk) = self.files.get(ino).and_then(|f| f.dirty.get(&index)) {
                copy(target, chunk);
                continue;
            }
            let record = self
                .state
                .file_extents
                .get(&ino)
                .and_then(|m| m.get(&index))
                .and_then(|id| self.state.extents.get(id))
                .cloned();
            if let Some(record) = record {
                let data = self.read_extent(&record, chunk_start)?;
                copy(target, &data);
                self.note_access(ChunkSlot { ino, index }, true);
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
    /// times. With `complete_only`, only full chunks are written (the rest stay buffered).
    pub(crate) fn flush_ino(&mut self, ino: Ino, complete_only: bool) -> Result<()> {
        let Some(file) = self.files.files.get_mut(&ino) else {
            return Ok(());
        };
        let committed_size = self.state.inodes.get(&ino).map(|i| i.size);
        let indexes: Vec<u64> = file
            .dirty
            .iter()
            .filter(|(_, chunk)| !complete_only || chunk.len() as u64 == CHUNK)
            .map(|(i, _)| *i)
            .collect();
        if indexes.is_empty() && (complete_only || (file.mtime.is_none() && committed_size == Some(file.size))) {
            return Ok(());
        }
        let chunks: Vec<(u64, Vec<u8>)> =
            indexes.iter().filter_map(|i| file.dirty.remove(i).map(|chunk| (*i, chunk))).collect();
        // A partial flush commits only the size its chunks reach, so a crash never shows
        // a size whose bytes were still buffered.
        let size = match (complete_only, indexes.last()) {
            (true, Some(last)) => file.size.min(committed_size.unwrap_or(0).max((last + 1) * CHUNK)),
            _ => file.size,
        };
        let mtime = file.mtime;
        let restore = |pool: &mut Pool, chunks: Vec<(u64, Vec<u8>)>| {
            if let Some(file) = pool.files.files.get_mut(&ino) {
                for (index, chunk) in chunks {
                    file.dirty.insert(index, chunk);
                }
            }
        };
        let policy = self.state.effective_policy(ino);
        let mut written = self.write_chunks(&chunks, policy);
        if matches!(written, Err(Error::NoSpace(_) | Error::Unplaceable { .. })) && self.frees_pending() {
            // The room may be held by extents whose freeing waits for a barrier.
            written = self.sync().and_then(|()| self.write_chunks(&chunks, policy));
        }
        let records = match written {
            Ok(records) => records,
            Err(e) => {
                restore(self, chunks);
                return Err(e);
            }
        };
        let mut ops: Vec<Op> = Vec::new();
        let beyond = size.div_ceil(CHUNK);
        if let Some(map) = self.state.file_extents.get(&ino) {
            for (&index, _) in map.range(beyond..) {
                ops.push(Op::SetExtent { ino, index, extent: None });
            }
        }
        for (index, record) in &records {
            let unchanged_hole =
                record.is_none() && !self.state.file_extents.get(&ino).is_some_and(|m| m.contains_key(index));
            if !unchanged_hole {
                ops.push(Op::SetExtent { ino, index: *index, extent: record.clone() });
            }
        }
        if let Some(inode) = self.state.inodes.get(&ino) {
            let mut inode = inode.clone();
            inode.size = size;
            if let Some(mtime) = mtime {
                inode.mtime = mtime;
                inode.ctime = mtime;
            }
            ops.push(Op::PutInode(inode));
        }
        let new_extents: Vec<_> = records.iter().filter_map(|(_, r)| r.clone()).collect();
        match self.commit(Transaction { ops }) {
            Ok(freed) => {
                self.free_extents(&freed);
                for (index, record) in &records {
                    if record.is_some() {
                        self.note_access(ChunkSlot { ino, index: *index }, false);
                    }
                }
                if let Some(file) = self.files.files.get_mut(&ino) {
                    file.dirty_bytes = file.dirty.values().map(Vec::len).sum();
                    if file.dirty.is_empty() && file.size == size {
                        file.mtime = None;
                    }
                }
                Ok(())
            }
            Err(e) => {
                self.free_extents(&new_extents);
                restore(self, chunks);
                Err(e)
            }
        }
    }

    /// Sets the size of `ino`: cuts or extends (with a hole) and commits.
    pub(crate) fn truncate_ino(&mut self, ino: Ino, size: u64) -> Result<()> {
        if size > i64::MAX as u64 {
            return Err(Error::InvalidArgument("size past the largest file size".into()));
        }
        let boundary = size / CHUNK;
        let within = (size % CHUNK) as usize;
        let needs_cut = within > 0
            && !self.files.get(ino).is_some_and(|f| f.dirty.contains_key(&boundary))
            && self
                .state
                .file_extents
                .get(&ino)
                .and_then(|m| m.get(&boundary))
                .and_then(|id| self.state.extents.get(id))
                .is_some_and(|r| r.len as usize > within);
        let loaded = if needs_cut { Some(self.load_chunk(ino, boundary)?) } else { None };
        let now = self.clock.wall();
        let file = self.open_entry(ino)?;
        let before = (file.dirty.clone(), file.dirty_bytes, file.size, file.mtime);
        if let Some(chunk) = loaded {
            file.dirty.insert(boundary, chunk);
        }
        let first_gone = size.div_ceil(CHUNK);
        file.dirty.retain(|index, _| *index < first_gone);
        if within > 0 {
            if let Some(chunk) = file.dirty.get_mut(&boundary) {
                chunk.truncate(within);
            }
        }
        file.dirty_bytes = file.dirty.values().map(Vec::len).sum();
        file.size = size;
        file.mtime = Some(now);
        let result = self.flush_ino(ino, false);
        if result.is_err() {
            // A truncate that could not be made durable does not happen at all.
            if let Some(file) = self.files.files.get_mut(&ino) {
                (file.dirty, file.dirty_bytes, file.size, file.mtime) = before;
            }
        }
        if !self.files.is_open(ino) {
            self.files.files.remove(&ino);
        }
        result
    }
}
