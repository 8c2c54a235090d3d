//! Range operations on open files, as ext4 answers them: `fallocate(2)` (extend, punch,
//! zero), `lseek(2)` with `SEEK_DATA`/`SEEK_HOLE`, and `copy_file_range(2)`; and the
//! access-time rule (`relatime`).
//!
//! Contract:
//! - Everything goes through the open file's buffer (`files`), so it is seen at once by
//!   every handle and committed by the next flush like any write; a range operation that
//!   fails changes nothing.
//! - A punched or zeroed range reads as zeros; a chunk it covers whole becomes a hole
//!   (no extent) at the flush. Extents are copy-on-write, so `fallocate` mode 0 cannot
//!   pin blocks for later: it checks that the pool has room for the range now (`ENOSPC`
//!   otherwise) and extends the size; the range stays a hole until written.
//! - `SEEK_DATA`/`SEEK_HOLE` see data at extent granularity: a chunk holding an extent
//!   of `len` bytes is data for those bytes and a hole after them; the end of the file is
//!   a hole. Offsets at or past the end are `ENXIO`.

use crate::base::error::{Error, Result};
use crate::base::zeros::all_zero;
use crate::data::files::FileHandle;
use crate::meta::state::{Ino, EXTENT_BYTES_MAX};
use crate::pool::Pool;

const CHUNK: u64 = EXTENT_BYTES_MAX;

/// Most bytes one `copy_file_range` call copies; the caller loops for more, as it must
/// for any short copy.
pub const COPY_BYTES_MAX: u64 = 16 << 20;

/// Where `seek_data_hole` looks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seek {
    /// `SEEK_DATA`: the first offset at or after the given one that holds data.
    Data,
    /// `SEEK_HOLE`: the first offset at or after the given one in a hole (or the size).
    Hole,
}

/// Which `fallocate(2)` operation, from its mode bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Allocate {
    /// Mode 0 or `KEEP_SIZE`: make room for the range.
    Reserve,
    /// `PUNCH_HOLE | KEEP_SIZE`: deallocate; the range reads as zeros.
    Punch,
    /// `ZERO_RANGE`: the range reads as zeros.
    Zero,
}

impl Pool {
    /// Bytes of data chunk `index` of `ino` holds from its start (0: a hole).
    fn chunk_data_len(&self, ino: Ino, index: u64) -> u64 {
        if let Some(chunk) = self.files.get(ino).and_then(|f| f.buffered(index)) {
            return if all_zero(chunk) { 0 } else { chunk.len() as u64 };
        }
        let patched = self.files.get(ino).map_or(0, |f| f.patch_end(index));
        self.state.slot_len(crate::meta::state::ChunkSlot { ino, index }).unwrap_or(0).max(patched)
    }

    /// The first chunk after `index` that holds data (buffered or committed).
    fn next_data_chunk(&self, ino: Ino, index: u64) -> Option<u64> {
        let committed =
            self.state.file_extents.get(&ino).into_iter().flat_map(|m| m.range(index + 1..).map(|(i, _)| *i));
        let buffered =
            self.files.get(ino).into_iter().flat_map(|f| f.buffered_chunks().map(|(i, _)| i).filter(|i| *i > index));
        let mut candidates: Vec<u64> = committed.chain(buffered).collect();
        candidates.sort_unstable();
        candidates.dedup();
        candidates.into_iter().find(|i| self.chunk_data_len(ino, *i) > 0)
    }

    /// `lseek(fd, offset, SEEK_DATA | SEEK_HOLE)`.
    pub fn seek_data_hole(&self, fh: FileHandle, offset: u64, seek: Seek) -> Result<u64> {
        let ino = self.handle_ino(fh)?;
        let size = self.current_size(ino);
        if offset >= size {
            return Err(Error::NoSuchOffset(format!("offset {offset} is at or past the end of the file ({size})")));
        }
        let mut position = offset;
        loop {
            let index = position / CHUNK;
            let chunk_start = index * CHUNK;
            let data_end = (chunk_start + self.chunk_data_len(ino, index)).min(size);
            match seek {
                Seek::Data if position < data_end => return Ok(position),
                Seek::Data => match self.next_data_chunk(ino, index) {
                    Some(next) if next * CHUNK < size => return Ok(next * CHUNK),
                    _ => return Err(Error::NoSuchOffset(format!("no data after offset {offset}"))),
                },
                Seek::Hole if position >= data_end => return Ok(position),
                Seek::Hole if data_end < (chunk_start + CHUNK).min(size) => return Ok(data_end),
                Seek::Hole => {
                    position = chunk_start + CHUNK;
                    if position >= size {
                        return Ok(size);
                    }
                }
            }
        }
    }

    /// `fallocate(fd, mode, offset, len)`: mode 0 or `FALLOC_FL_KEEP_SIZE` make room,
    /// `FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE` punches, `FALLOC_FL_ZERO_RANGE`
    /// zeroes (extending the size unless `KEEP_SIZE`); any other mode is `EOPNOTSUPP`.
    pub fn fallocate(&mut self, fh: FileHandle, offset: u64, len: u64, mode: i32) -> Result<()> {
        let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let operation = match mode & !libc::FALLOC_FL_KEEP_SIZE {
            0 => Allocate::Reserve,
            libc::FALLOC_FL_PUNCH_HOLE if keep_size => Allocate::Punch,
            libc::FALLOC_FL_ZERO_RANGE => Allocate::Zero,
            _ => {
                return Err(Error::NotSupported(format!(
                    "fallocate mode {mode:#x}: only 0, KEEP_SIZE, PUNCH_HOLE|KEEP_SIZE and ZERO_RANGE are supported"
                )))
            }
        };
        if len == 0 {
            return Err(Error::InvalidArgument("fallocate of zero bytes".into()));
        }
        let end = offset
            .checked_add(len)
            .filter(|end| *end <= i64::MAX as u64)
            .ok_or_else(|| Error::InvalidArgument("fallocate past the largest file size".into()))?;
        let ino = self.handle_ino(fh)?;
        let size = self.current_size(ino);
        match operation {
            Allocate::Reserve => {
                let (_, free_bytes) = self.space();
                if len > free_bytes {
                    return Err(Error::NoSpace(format!(
                        "fallocate of {len} bytes, but the pool has room for {free_bytes} under its default policy"
                    )));
                }
            }
            Allocate::Punch | Allocate::Zero => self.zero_range(ino, offset, end.min(size))?,
        }
        let grows = !keep_size && end > size;
        let now = self.clock.wall();
        let file = self.open_entry(ino)?;
        if grows {
            file.size = end;
        }
        if grows || operation != Allocate::Reserve {
            file.mtime = Some(now);
            self.mark_wrote(fh);
        }
        Ok(())
    }

    /// Makes `[offset, end)` of `ino` read as zeros in the buffer: chunks it covers whole
    /// become empty (holes at the flush); the two it covers in part are loaded and
    /// zeroed. Loads first, so a failure changes nothing.
    fn zero_range(&mut self, ino: Ino, offset: u64, end: u64) -> Result<()> {
        if offset >= end {
            return Ok(());
        }
        self.reclaim_flushing(ino);
        let size = self.current_size(ino);
        assert!(end <= size);
        let (first, last) = (offset / CHUNK, (end - 1) / CHUNK);
        let whole = |index: u64| offset <= index * CHUNK && end >= (index * CHUNK + CHUNK).min(size);
        let mut loaded = std::collections::BTreeMap::new();
        for index in [first, last] {
            let buffered = self.files.get(ino).is_some_and(|f| f.dirty.contains_key(&index));
            if !whole(index) && !buffered && !loaded.contains_key(&index) {
                loaded.insert(index, self.current_chunk(ino, index)?);
            }
        }
        let file = self.open_entry(ino)?;
        for index in first..=last {
            file.overwritten.remove(&index);
            if let Some(patch) = file.patches.remove(&index) {
                file.dirty_bytes -= patch.bytes();
            }
            let old = file.dirty.remove(&index);
            file.dirty_bytes -= old.as_ref().map_or(0, Vec::len);
            let chunk = if whole(index) {
                Vec::new()
            } else {
                let mut chunk = old.or_else(|| loaded.remove(&index)).unwrap_or_default();
                let chunk_start = index * CHUNK;
                let low = (offset.max(chunk_start) - chunk_start) as usize;
                let high = ((end.min(chunk_start + CHUNK) - chunk_start) as usize).min(chunk.len());
                if low < high {
                    chunk[low..high].fill(0);
                }
                chunk
            };
            file.dirty_bytes += chunk.len();
            file.dirty.insert(index, chunk);
        }
        Ok(())
    }

    /// `copy_file_range`: copies up to `len` bytes (at most `COPY_BYTES_MAX`) from
    /// `source` at `source_offset` to `target` at `target_offset`; returns the bytes
    /// copied, short only at the source's end.
    pub fn copy_range(
        &mut self,
        source: FileHandle,
        source_offset: u64,
        target: FileHandle,
        target_offset: u64,
        len: u64,
    ) -> Result<u64> {
        let source_ino = self.handle_ino(source)?;
        self.handle_ino(target)?;
        let available = self.current_size(source_ino).saturating_sub(source_offset);
        let total = len.min(available).min(COPY_BYTES_MAX);
        let mut copied = 0;
        while copied < total {
            let piece = (total - copied).min(CHUNK);
            let data = self.read_ino(source_ino, source_offset + copied, piece as usize)?;
            assert_eq!(data.len() as u64, piece, "the source's size was checked before reading");
            self.write_buffered(target, target_offset + copied, &data, self.options.dirty_bytes_max)?;
            copied += piece;
        }
        Ok(copied)
    }

    /// Records a read of `ino` (a file read or a directory listing) in its access time,
    /// as `relatime` does: only when atime is not newer than mtime or ctime, or is a day
    /// old. Returns whether atime changed.
    pub fn touch_atime(&mut self, ino: Ino) -> Result<bool> {
        const DAY_SECS: i64 = 24 * 3600;
        // The inode and the buffered mtime, not `getattr`: this runs on every read, and
        // `getattr` sums the file's extents.
        let inode = self.inode(ino)?;
        let mtime = self.files.get(ino).and_then(|f| f.mtime).unwrap_or(inode.mtime).max(inode.mtime);
        let ctime = inode.ctime.max(mtime);
        let atime = inode.atime;
        let now = self.clock.wall();
        let stale = atime <= mtime || atime <= ctime || now.secs - atime.secs >= DAY_SECS;
        if !stale || atime == now || self.read_only.is_some() {
            return Ok(false);
        }
        let mut inode = inode.clone();
        inode.atime = now;
        self.commit(crate::meta::state::Transaction { ops: vec![crate::meta::state::Op::PutInode(inode)] })?;
        Ok(true)
    }
}
