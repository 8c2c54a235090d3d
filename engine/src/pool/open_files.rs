//! Open files: handles and each file's write buffer, as the pool holds them; what a
//! read, write, flush or close does with them is `crate::data::files`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::base::clock::WallTime;
use crate::meta::state::Ino;

/// A file handle returned by `Pool::open_file`.
pub type FileHandle = u64;

/// One open descriptor of a file.
pub(crate) struct Handle {
    pub(crate) ino: Ino,
    /// Whether this handle wrote: its close then makes the file's buffered data durable.
    pub(crate) wrote: bool,
}

/// Every open file and handle of the pool.
#[derive(Default)]
pub(crate) struct OpenFiles {
    pub(crate) handles: BTreeMap<FileHandle, Handle>,
    pub(crate) files: BTreeMap<Ino, OpenFile>,
    pub(crate) next_handle: FileHandle,
}

/// One open file: its handles and its buffered, not yet committed writes.
pub(crate) struct OpenFile {
    pub(crate) handles: u32,
    /// Buffered chunks, by index: each the chunk's whole current contents (an empty one
    /// reads as zeros throughout: a punched chunk).
    pub(crate) dirty: BTreeMap<u64, Vec<u8>>,
    pub(crate) dirty_bytes: usize,
    /// The file's size including buffered writes.
    pub(crate) size: u64,
    /// Set when the buffered state differs from the committed inode.
    pub(crate) mtime: Option<WallTime>,
    /// Where reads through any handle have reached: a read starting near it is sequential.
    pub(crate) read_end: u64,
    /// Chunks a flush took out of `dirty` and is storing with the pool's lock released
    /// (`crate::data::files::flush_behind`), by index: what reads see of them until it
    /// commits, unless `dirty` holds a newer version. Empty when no flush is in flight.
    pub(crate) flushing: BTreeMap<u64, Arc<Vec<u8>>>,
    /// Buffered chunks that began as a copy of stored data (a partial overwrite loads
    /// its chunk): flushing them early would store the same extent again and again, so
    /// only chunks built from writes alone are flushed behind the writer before the
    /// buffer is full.
    pub(crate) loaded: BTreeSet<u64>,
    /// Buffered chunks loaded from their committed extent (and layers) whose only changes
    /// since are these byte ranges (sorted, disjoint, merged): the flush may store just
    /// them as a layer (`crate::data::files`). A chunk changed any other way — cut,
    /// zeroed, loaded from a flush in flight — is not here and is stored whole.
    pub(crate) overwritten: BTreeMap<u64, Vec<(u32, u32)>>,
    /// Bumped when a flush in flight has its chunks taken back into `dirty`
    /// (`Pool::reclaim_flushing`): that flush's commit is then dropped.
    pub(crate) flush_epoch: u64,
}

impl OpenFile {
    /// A new entry for a file of `size` bytes with nothing buffered.
    pub(crate) fn new(size: u64) -> OpenFile {
        OpenFile {
            handles: 0,
            dirty: BTreeMap::new(),
            dirty_bytes: 0,
            size,
            mtime: None,
            read_end: 0,
            flushing: BTreeMap::new(),
            loaded: BTreeSet::new(),
            overwritten: BTreeMap::new(),
            flush_epoch: 0,
        }
    }

    /// Moves the chunks being flushed back into `dirty`, where no newer write replaced
    /// them, leaving `flushing` empty.
    pub(crate) fn take_back_flushing(&mut self) {
        for (index, chunk) in std::mem::take(&mut self.flushing) {
            self.dirty.entry(index).or_insert_with(|| Arc::try_unwrap(chunk).unwrap_or_else(|c| (*c).clone()));
        }
        self.dirty_bytes = self.dirty.values().map(Vec::len).sum();
        debug_assert!(self.flushing.is_empty());
    }

    /// The buffered contents of chunk `index`: the newest write's, whether waiting in
    /// `dirty` or being flushed.
    pub(crate) fn buffered(&self, index: u64) -> Option<&[u8]> {
        self.dirty.get(&index).or_else(|| self.flushing.get(&index).map(|c| &**c)).map(Vec::as_slice)
    }

    /// Buffered bytes, waiting or being flushed.
    pub(crate) fn buffered_chunks(&self) -> impl Iterator<Item = (u64, &[u8])> {
        let flushing = self.flushing.iter().filter(|(i, _)| !self.dirty.contains_key(i));
        self.dirty.iter().map(|(i, c)| (*i, c.as_slice())).chain(flushing.map(|(i, c)| (*i, c.as_slice())))
    }
}

/// Adds `[low, high)` to `ranges` (sorted, disjoint, merged), keeping them so.
pub(crate) fn add_range(ranges: &mut Vec<(u32, u32)>, low: u32, high: u32) {
    assert!(low < high);
    let (mut low, mut high) = (low, high);
    ranges.retain(|(offset, len)| {
        let end = offset + len;
        if end < low || *offset > high {
            return true;
        }
        low = low.min(*offset);
        high = high.max(end);
        false
    });
    let at = ranges.partition_point(|(offset, _)| *offset < low);
    ranges.insert(at, (low, high - low));
    debug_assert!(ranges.windows(2).all(|w| w[0].0 + w[0].1 < w[1].0));
}

impl OpenFiles {
    pub(crate) fn get(&self, ino: Ino) -> Option<&OpenFile> {
        self.files.get(&ino)
    }

    pub(crate) fn files_mut(&mut self, ino: Ino) -> Option<&mut OpenFile> {
        self.files.get_mut(&ino)
    }

    /// Whether any handle holds `ino` open.
    pub(crate) fn is_open(&self, ino: Ino) -> bool {
        self.files.get(&ino).is_some_and(|f| f.handles > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::add_range;

    #[test]
    fn ranges_merge_where_they_touch_or_overlap_and_stay_sorted() {
        let mut ranges = Vec::new();
        add_range(&mut ranges, 100, 200);
        add_range(&mut ranges, 0, 10);
        add_range(&mut ranges, 300, 400);
        assert_eq!(ranges, vec![(0, 10), (100, 100), (300, 100)]);
        add_range(&mut ranges, 200, 250);
        assert_eq!(ranges, vec![(0, 10), (100, 150), (300, 100)]);
        add_range(&mut ranges, 5, 350);
        assert_eq!(ranges, vec![(0, 400)]);
    }
}
