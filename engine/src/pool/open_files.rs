//! Open files: handles and each file's write buffer, as the pool holds them; what a
//! read, write, flush or close does with them is `crate::data::files`.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;

use crate::base::clock::WallTime;
use crate::meta::state::{Ino, EXTENT_BYTES_MAX as CHUNK};

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
    /// Room the last reservation check found beyond every buffered byte, under a policy:
    /// writes under that policy take from it without looking at the disks again, until
    /// the next commit (which may change what is stored or where) forgets it.
    pub(crate) room: Option<(crate::base::policy::Policy, u64)>,
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
    /// Where the current run of sequential reads began: the longer the run, the deeper
    /// the read-ahead (`Pool::read_ahead_extents`).
    pub(crate) read_run_start: u64,
    /// Chunks a flush took out of `dirty` and is storing with the pool's lock released
    /// (`crate::data::files::flush_behind`), by index: what reads see of them until it
    /// commits, unless `dirty` holds a newer version. Empty when no flush is in flight.
    pub(crate) flushing: BTreeMap<u64, Bytes>,
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
    /// Bytes written over stored chunks that were not loaded, by chunk index: a small
    /// write into a chunk neither buffered nor being flushed whole lands here, and the
    /// flush stores it as a layer without ever reading the chunk. Never an index of
    /// `dirty`: a write that needs the whole chunk loads it with these bytes over it.
    pub(crate) patches: BTreeMap<u64, Patch>,
    /// Patches a flush took and is storing with the pool's lock released (as `flushing`
    /// for whole chunks): reads lay them under `patches`.
    pub(crate) flushing_patches: BTreeMap<u64, Patch>,
    /// Bumped when a flush in flight has its chunks taken back into `dirty`
    /// (`Pool::reclaim_flushing`): that flush's commit is then dropped.
    pub(crate) flush_epoch: u64,
    /// Tickets handed to flushes, one each, in the order they were taken.
    pub(crate) flush_tickets: u64,
    /// The ticket of the flush of this epoch that commits next: flushes commit in the
    /// order they were taken, so the size a later one commits never covers chunks an
    /// earlier one has not. The tickets from here to `flush_tickets` are the flights.
    pub(crate) flush_turn: u64,
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
            read_run_start: 0,
            flushing: BTreeMap::new(),
            loaded: BTreeSet::new(),
            overwritten: BTreeMap::new(),
            patches: BTreeMap::new(),
            flushing_patches: BTreeMap::new(),
            flush_epoch: 0,
            flush_tickets: 0,
            flush_turn: 0,
        }
    }

    /// Moves the chunks and patches being flushed back into the buffer, under what newer
    /// writes put there (a whole chunk buffered since holds the patch already: it was
    /// loaded with it), leaving nothing in flight.
    pub(crate) fn take_back_flushing(&mut self) {
        for (index, chunk) in std::mem::take(&mut self.flushing) {
            self.dirty.entry(index).or_insert_with(|| Vec::from(chunk));
        }
        for (index, older) in std::mem::take(&mut self.flushing_patches) {
            if self.dirty.contains_key(&index) {
                continue;
            }
            let patch = self.patches.entry(index).or_default();
            patch.lay_under(older);
        }
        self.recount();
    }

    /// Gives up every flush in flight: their chunks and patches go back into the buffer
    /// (`take_back_flushing`) and the epoch moves on, so their commits are dropped and
    /// none waits for its turn.
    pub(crate) fn abandon_flights(&mut self) {
        self.take_back_flushing();
        self.flush_epoch += 1;
        self.flush_turn = self.flush_tickets;
        debug_assert!(!self.in_flight());
    }

    /// Flushes of this epoch taken and neither committed nor given up: at most two, the
    /// second only beside a first that holds no patches and lies wholly below it
    /// (`room_for_flight`), so a writer streaming a file keeps the disks busy while the
    /// first one's last writes finish.
    pub(crate) fn flights(&self) -> u64 {
        self.flush_tickets - self.flush_turn
    }

    /// Hands the next ticket to a flush being taken (see `room_for_flight`).
    pub(crate) fn take_ticket(&mut self) -> u64 {
        assert!(self.flights() < 2, "a third flush of one file in flight");
        let ticket = self.flush_tickets;
        self.flush_tickets += 1;
        ticket
    }

    /// A flush of this epoch, ticket `ticket`, committed (or found nothing to commit):
    /// the next one's turn. Its chunks `taken` leave `flushing`.
    pub(crate) fn flight_landed(&mut self, ticket: u64, taken: &[u64]) {
        assert_eq!(ticket, self.flush_turn, "a flush committed out of turn");
        assert!(self.flights() > 0);
        for index in taken {
            self.flushing.remove(index);
        }
        self.flush_turn += 1;
        if self.flights() == 0 {
            self.flushing_patches.clear();
            debug_assert!(self.flushing.is_empty(), "chunks left in flight with no flush");
        }
    }

    /// Whether a flush may be taken now: none is in flight, or one is, holding no patches,
    /// with no patch waiting, and every whole chunk the buffer holds lies above every
    /// chunk it is storing (a writer streaming the file) — so the second flush neither
    /// stores a chunk the first does nor commits a size below it.
    pub(crate) fn room_for_flight(&self) -> bool {
        match self.flights() {
            0 => true,
            1 => {
                let above = self.flushing.keys().next_back().is_none_or(|last| {
                    self.dirty.iter().filter(|(_, c)| c.len() as u64 == CHUNK).all(|(i, _)| i > last)
                });
                self.patches.is_empty() && self.flushing_patches.is_empty() && above
            }
            _ => false,
        }
    }

    /// Sets `dirty_bytes` to what the buffer holds: whole chunks and patches.
    pub(crate) fn recount(&mut self) {
        self.dirty_bytes =
            self.dirty.values().map(Vec::len).sum::<usize>() + self.patches.values().map(Patch::bytes).sum::<usize>();
    }

    /// Whether a flush of this file is storing chunks or patches with the lock released.
    pub(crate) fn in_flight(&self) -> bool {
        self.flights() > 0
    }

    /// Lays what the buffer's patches (in flight, then waiting) hold of chunk `index`'s
    /// window starting at `window` over `target`.
    pub(crate) fn patch_window(&self, index: u64, target: &mut [u8], window: u64) {
        for patch in [self.flushing_patches.get(&index), self.patches.get(&index)].into_iter().flatten() {
            patch.copy_window(target, window);
        }
    }

    /// Lays the buffer's patches of chunk `index` (in flight, then waiting) over `chunk`.
    pub(crate) fn lay_patches(&self, index: u64, chunk: &mut Vec<u8>) {
        for patch in [self.flushing_patches.get(&index), self.patches.get(&index)].into_iter().flatten() {
            patch.lay_over(chunk);
        }
    }

    /// Whether the buffer holds patches of chunk `index` (in flight or waiting).
    pub(crate) fn has_patches(&self, index: u64) -> bool {
        self.flushing_patches.contains_key(&index) || self.patches.contains_key(&index)
    }

    /// Where the buffer's patches of chunk `index` end (0: none).
    pub(crate) fn patch_end(&self, index: u64) -> u64 {
        [self.flushing_patches.get(&index), self.patches.get(&index)]
            .into_iter()
            .flatten()
            .map(Patch::end)
            .max()
            .unwrap_or(0)
    }

    /// The buffered contents of chunk `index`: the newest write's, whether waiting in
    /// `dirty` or being flushed.
    pub(crate) fn buffered(&self, index: u64) -> Option<&[u8]> {
        self.dirty.get(&index).map(Vec::as_slice).or_else(|| self.flushing.get(&index).map(|c| &c[..]))
    }

    /// Buffered bytes, waiting or being flushed.
    /// (Patches not included: see `patches`.)
    pub(crate) fn buffered_chunks(&self) -> impl Iterator<Item = (u64, &[u8])> {
        let flushing = self.flushing.iter().filter(|(i, _)| !self.dirty.contains_key(i));
        self.dirty.iter().map(|(i, c)| (*i, c.as_slice())).chain(flushing.map(|(i, c)| (*i, &c[..])))
    }
}

/// Bytes written over part of a chunk: pieces by offset in the chunk, disjoint and not
/// touching (a write next to or over a piece merges with it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Patch {
    pieces: BTreeMap<u32, Vec<u8>>,
}

impl Patch {
    /// Writes `data` at `offset`, over whatever the patch held there.
    pub(crate) fn write(&mut self, offset: u32, data: &[u8]) {
        assert!(!data.is_empty() && u64::from(offset) + data.len() as u64 <= crate::meta::state::EXTENT_BYTES_MAX);
        let end = offset + data.len() as u32;
        let touching: Vec<u32> = self
            .pieces
            .range(..=end)
            .filter(|(start, piece)| **start + piece.len() as u32 >= offset)
            .map(|(start, _)| *start)
            .collect();
        let low = touching.first().map_or(offset, |first| (*first).min(offset));
        let high = touching.iter().map(|start| start + self.pieces[start].len() as u32).fold(end, u32::max);
        let mut merged = vec![0u8; (high - low) as usize];
        for start in touching {
            if let Some(piece) = self.pieces.remove(&start) {
                merged[(start - low) as usize..(start - low) as usize + piece.len()].copy_from_slice(&piece);
            }
        }
        merged[(offset - low) as usize..(end - low) as usize].copy_from_slice(data);
        self.pieces.insert(low, merged);
        debug_assert!(self.ranges().windows(2).all(|w| w[0].0 + w[0].1 < w[1].0));
    }

    /// Puts `older` under this patch: where both hold bytes, this patch's win.
    pub(crate) fn lay_under(&mut self, older: Patch) {
        let newer = std::mem::replace(self, older);
        for (offset, piece) in newer.pieces {
            self.write(offset, &piece);
        }
    }

    /// Bytes the patch holds.
    pub(crate) fn bytes(&self) -> usize {
        self.pieces.values().map(Vec::len).sum()
    }

    /// Where its last piece ends in the chunk.
    pub(crate) fn end(&self) -> u64 {
        self.pieces.iter().next_back().map_or(0, |(start, piece)| u64::from(*start) + piece.len() as u64)
    }

    /// `(offset, length)` of each piece, in order.
    pub(crate) fn ranges(&self) -> Vec<(u32, u32)> {
        self.pieces.iter().map(|(start, piece)| (*start, piece.len() as u32)).collect()
    }

    /// The pieces' bytes, in order: a layer's contents.
    pub(crate) fn concat(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(self.bytes());
        for piece in self.pieces.values() {
            bytes.extend_from_slice(piece);
        }
        bytes
    }

    /// Copies the pieces over `chunk`, growing it with zeros where one ends past it.
    pub(crate) fn lay_over(&self, chunk: &mut Vec<u8>) {
        let end = self.end() as usize;
        if chunk.len() < end {
            chunk.resize(end, 0);
        }
        for (start, piece) in &self.pieces {
            chunk[*start as usize..*start as usize + piece.len()].copy_from_slice(piece);
        }
    }

    /// Copies what the pieces hold of the chunk window starting at `window` over
    /// `target`, the window's bytes.
    pub(crate) fn copy_window(&self, target: &mut [u8], window: u64) {
        let window_end = window + target.len() as u64;
        for (start, piece) in &self.pieces {
            let (start, end) = (u64::from(*start), u64::from(*start) + piece.len() as u64);
            let (low, high) = (start.max(window), end.min(window_end));
            if low < high {
                target[(low - window) as usize..(high - window) as usize]
                    .copy_from_slice(&piece[(low - start) as usize..(high - start) as usize]);
            }
        }
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
    use super::{add_range, Patch};

    #[test]
    fn a_patch_merges_touching_writes_and_the_newest_bytes_win() {
        let mut patch = Patch::default();
        patch.write(10, b"aaaa");
        patch.write(20, b"bb");
        patch.write(14, b"cc");
        assert_eq!(patch.ranges(), vec![(10, 6), (20, 2)]);
        patch.write(12, b"dddddddd");
        assert_eq!(patch.ranges(), vec![(10, 12)]);
        assert_eq!(patch.concat(), b"aaddddddddbb");
        let mut newer = Patch::default();
        newer.write(0, b"zz");
        newer.write(11, b"y");
        newer.lay_under(patch);
        assert_eq!(newer.ranges(), vec![(0, 2), (10, 12)]);
        assert_eq!(newer.concat(), b"zzayddddddddbb");
        let mut chunk = vec![1u8; 5];
        newer.lay_over(&mut chunk);
        assert_eq!(chunk.len(), 22);
        assert_eq!(&chunk[..5], b"zz\x01\x01\x01");
        assert!(chunk[5..10].iter().all(|b| *b == 0));
        let mut window = [9u8; 4];
        newer.copy_window(&mut window, 9);
        assert_eq!(&window, b"\x09ayd");
    }

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
