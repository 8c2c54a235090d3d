//! `ReadBuffer`: the bytes of several blocks read together (`BlockDevice::read_into`),
//! end to end in one buffer that a device reading past the OS cache can read into
//! directly, kept from read to read.
//!
//! Why: on a virtual disk every request costs a fixed round trip besides its bytes (on
//! this project's machine ≈ 45 µs, against 2.5 GB/s), so a run of records that lie side
//! by side in a segment is read as one request; that request needs one aligned buffer
//! to land in, and a fresh buffer per read costs a mapping, page faults and a zero fill.
//! The memory is an anonymous mapping (`memmap2`) advised for transparent huge pages
//! where the kernel offers them. A direct read into 4 KiB pages hands the disk one
//! segment a page — 254 at most a request on virtio, so a run past 1016 KiB leaves as
//! two — and into a 2 MiB page one. A read-ahead batch's shards on one disk lie side by
//! side (`segments`' lanes) and run to about 1 MiB. Measured on cold 1 GiB reads: 1,470
//! requests instead of 1,770, the disk busy 1.7 s instead of 3.9 s — this disk charges
//! for each segment of a request, not only for the request — and 1.0–1.2 GB/s instead
//! of 0.76–0.86; the daemon ~2 MB larger.
//!
//! Contract: `reserve_aligned` hands out a slot that starts on an `ALIGN` boundary in
//! memory and stays where it is until the next `reserve_aligned`, `reserve` or `push`,
//! which may move the buffer (the contents move with it, and ranges handed out stay
//! valid as offsets into `as_slice`). `clear` keeps the memory. A slot a read could
//! not fill is given back with `unreserve`, so `as_slice` never holds bytes no read
//! put there except a slot's alignment padding and the spans between records.

/// Slots start on multiples of this many bytes in memory (direct I/O alignment).
pub const ALIGN: usize = 4096;

/// Bytes of blocks read together (see the module header).
#[derive(Debug, Default)]
pub struct ReadBuffer {
    /// `buffer[start..start + len]` is the content; `start` puts it on an `ALIGN`
    /// boundary in memory (on a `HUGE_PAGE` one once the buffer is that large).
    buffer: Memory,
    start: usize,
    len: usize,
    /// `len` before the last `reserve_aligned`: what `unreserve` goes back to.
    before_slot: usize,
}

impl ReadBuffer {
    /// An empty buffer; memory comes with the first slot.
    pub fn new() -> ReadBuffer {
        ReadBuffer::default()
    }

    /// Forgets the content, keeping the memory for the next reads.
    pub fn clear(&mut self) {
        self.len = 0;
        self.before_slot = 0;
    }

    /// The content: every slot and pushed block, end to end with their padding.
    pub fn as_slice(&self) -> &[u8] {
        &self.buffer.as_slice()[self.start..self.start + self.len]
    }

    /// Makes room for `extra` more bytes past the content at once, so that reads that
    /// stay within it never move the buffer.
    pub fn reserve(&mut self, extra: usize) {
        self.make_room(extra);
    }

    /// Appends `bytes` (a block a device read into a buffer of its own); the range they
    /// take in `as_slice`.
    pub fn push(&mut self, bytes: &[u8]) -> std::ops::Range<usize> {
        let at = self.len;
        self.make_room(bytes.len());
        self.buffer.as_mut_slice()[self.start + at..self.start + at + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
        at..self.len
    }

    /// A slot of `len` bytes at the end, starting on an `ALIGN` boundary in memory:
    /// its offset in `as_slice` and the slot to read into.
    pub fn reserve_aligned(&mut self, len: usize) -> (usize, &mut [u8]) {
        let at = self.len.next_multiple_of(ALIGN);
        self.before_slot = self.len;
        self.make_room(at - self.len + len);
        self.len = at + len;
        let slot = &mut self.buffer.as_mut_slice()[self.start + at..self.start + at + len];
        debug_assert!((slot.as_ptr() as usize).is_multiple_of(ALIGN), "a slot starts aligned in memory");
        (at, slot)
    }

    /// Gives back the last slot and its padding (a read that failed); nothing may have
    /// been pushed or reserved since.
    pub fn unreserve(&mut self) {
        assert!(self.before_slot <= self.len, "only what was reserved is given back");
        self.len = self.before_slot;
    }

    /// Room for `extra` more bytes past the content, the content still on an `ALIGN`
    /// boundary (a grown buffer starts its content where the new memory is aligned).
    fn make_room(&mut self, extra: usize) {
        let needed = self.len + extra;
        if self.start + needed <= self.buffer.len() {
            return;
        }
        // At least double: a buffer grown a block at a time grows rarely.
        let capacity = needed.max(2 * self.capacity()).max(64 << 10);
        let (mut grown, start) = Memory::map(capacity);
        grown.as_mut_slice()[start..start + self.len].copy_from_slice(self.as_slice());
        self.buffer = grown;
        self.start = start;
        debug_assert!(self.start + needed <= self.buffer.len());
        debug_assert!((self.buffer.as_slice()[self.start..].as_ptr() as usize).is_multiple_of(ALIGN));
    }

    /// Bytes the content may grow to without moving.
    fn capacity(&self) -> usize {
        self.buffer.len().saturating_sub(self.start)
    }
}

/// A transparent huge page (x86-64, aarch64 with 4 KiB base pages).
const HUGE_PAGE: usize = 2 << 20;

/// The buffer's memory: an anonymous mapping, none before the first slot.
#[derive(Debug, Default)]
struct Memory(Option<memmap2::MmapMut>);

impl Memory {
    /// A mapping with `capacity` bytes from the returned start on: page-aligned, and
    /// for `HUGE_PAGE` or more, huge-page aligned and advised for huge pages (a hint:
    /// where the kernel refuses, the pages stay small). Out of memory ends the process,
    /// as a `Vec`'s growth would.
    fn map(capacity: usize) -> (Memory, usize) {
        let huge = capacity >= HUGE_PAGE;
        let capacity = if huge { capacity.next_multiple_of(HUGE_PAGE) } else { capacity.next_multiple_of(ALIGN) };
        let slack = if huge { HUGE_PAGE } else { 0 };
        let Ok(map) = memmap2::MmapMut::map_anon(capacity + slack) else {
            let layout = std::alloc::Layout::array::<u8>(capacity + slack).unwrap_or(std::alloc::Layout::new::<u8>());
            std::alloc::handle_alloc_error(layout);
        };
        let start = if huge { (HUGE_PAGE - map.as_ptr() as usize % HUGE_PAGE) % HUGE_PAGE } else { 0 };
        if huge {
            // Unused slack around the aligned part is never touched, so never resident.
            let _ = map.advise_range(memmap2::Advice::HugePage, start, capacity);
        }
        assert!((map.as_ptr() as usize + start).is_multiple_of(ALIGN), "mappings are page-aligned");
        (Memory(Some(map)), start)
    }

    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |map| map.len())
    }

    fn as_slice(&self) -> &[u8] {
        self.0.as_deref().unwrap_or(&[])
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        self.0.as_deref_mut().unwrap_or(&mut [])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_start_aligned_and_the_content_survives_growth() {
        let mut buffer = ReadBuffer::new();
        let first = buffer.push(b"abc");
        assert_eq!(first, 0..3);
        let (at, slot) = buffer.reserve_aligned(5000);
        assert_eq!(at, ALIGN);
        assert_eq!(slot.as_ptr() as usize % ALIGN, 0);
        slot.fill(7);
        // Growth past the first allocation moves the buffer; offsets stay true.
        let (big_at, big) = buffer.reserve_aligned(1 << 20);
        assert_eq!(big_at, 3 * ALIGN);
        assert_eq!(big.as_ptr() as usize % ALIGN, 0);
        big.fill(9);
        assert_eq!(&buffer.as_slice()[first], b"abc");
        assert!(buffer.as_slice()[at..at + 5000].iter().all(|b| *b == 7));
        assert!(buffer.as_slice()[big_at..].iter().all(|b| *b == 9));
        assert_eq!(buffer.as_slice().len(), big_at + (1 << 20));
    }

    #[test]
    fn a_buffer_of_a_huge_page_or_more_starts_on_one_and_keeps_its_content() {
        let mut buffer = ReadBuffer::new();
        let small = buffer.push(b"kept");
        assert_eq!(buffer.as_slice().as_ptr() as usize % ALIGN, 0);
        let (at, slot) = buffer.reserve_aligned(3 << 20);
        slot.fill(5);
        assert_eq!(buffer.as_slice().as_ptr() as usize % HUGE_PAGE, 0, "the content starts on a huge page");
        assert_eq!(&buffer.as_slice()[small], b"kept");
        assert!(buffer.as_slice()[at..].iter().all(|b| *b == 5));
        assert!(buffer.capacity() >= at + (3 << 20));
    }

    #[test]
    fn a_slot_given_back_leaves_the_content_as_before_and_clear_keeps_memory() {
        let mut buffer = ReadBuffer::new();
        buffer.push(b"xy");
        buffer.reserve_aligned(8192);
        buffer.unreserve();
        assert_eq!(buffer.as_slice(), b"xy");
        buffer.clear();
        assert!(buffer.as_slice().is_empty());
        let (at, slot) = buffer.reserve_aligned(100);
        assert_eq!((at, slot.len()), (0, 100));
    }
}
