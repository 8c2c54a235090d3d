//! Whole packs for readers that read on: a store serves a 1 MiB object at about the rate
//! of a 256 KiB one (the README's `object_sizes`), and a sequential reader wants the
//! fragments beside the one it asks for next — a pack holds the same disk's fragments of
//! consecutive extents, in the order they were written.
//!
//! Contract: the first read in a pack is a ranged GET of its fragment; a second read in
//! that pack, or a read in the pack that follows a pack read from, fetches the whole pack
//! once (readers of it meanwhile wait for that one fetch) and serves every read in it
//! from memory while it is among the `CACHED_PACKS` newest fetched; the pack after it is
//! then fetched ahead (`fetch_ahead`). Packs never change
//! once written, so a cached pack is never stale; one deleted is dropped (`forget`).

use std::collections::{HashMap, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard};

use crate::packs::PackId;

/// Whole packs kept per disk.
const CACHED_PACKS: usize = 8;
/// Packs remembered as read from, for telling a sequential reader.
const TOUCHED: usize = 64;

enum Slot {
    Fetching,
    Ready(bytes::Bytes),
}

#[derive(Default)]
struct ReadState {
    slots: HashMap<PackId, Slot>,
    /// Ready packs, oldest first.
    order: VecDeque<PackId>,
    touched: VecDeque<PackId>,
}

/// How to serve a read in a pack.
pub(crate) enum Plan {
    /// From this whole pack, fetched before.
    Cached(bytes::Bytes),
    /// Fetch the whole pack and hand it to `PackReads::fill`.
    Fetch,
    /// A ranged GET of the fragment alone.
    Range,
}

/// One disk's whole-pack reads. See the module header.
#[derive(Default)]
pub(crate) struct PackReads {
    state: Mutex<ReadState>,
    filled: Condvar,
}

impl PackReads {
    fn lock(&self) -> MutexGuard<'_, ReadState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// How a read in `pack` is served; a `Fetch` must be answered by `fill`.
    pub fn plan(&self, pack: PackId) -> Plan {
        let mut state = self.lock();
        loop {
            match state.slots.get(&pack) {
                Some(Slot::Ready(bytes)) => return Plan::Cached(bytes.clone()),
                Some(Slot::Fetching) => {
                    state = self.filled.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner());
                }
                None => break,
            }
        }
        let before = pack.seq.checked_sub(1).map(|seq| PackId { epoch: pack.epoch, seq });
        let reading_on = state.touched.iter().any(|t| *t == pack || Some(*t) == before);
        if reading_on {
            state.slots.insert(pack, Slot::Fetching);
            return Plan::Fetch;
        }
        if state.touched.len() == TOUCHED {
            state.touched.pop_front();
        }
        state.touched.push_back(pack);
        Plan::Range
    }

    /// Whether a fetch of `pack` ahead of its readers should start: `true` (and it is
    /// then being fetched, to be answered by `fill`) unless it is cached or being fetched.
    pub fn fetch_ahead(&self, pack: PackId) -> bool {
        let mut state = self.lock();
        if state.slots.contains_key(&pack) {
            return false;
        }
        state.slots.insert(pack, Slot::Fetching);
        true
    }

    /// The whole of `pack`, fetched after a `Fetch` (`None`: the fetch failed).
    pub fn fill(&self, pack: PackId, bytes: Option<bytes::Bytes>) {
        let mut state = self.lock();
        match bytes {
            Some(bytes) => {
                state.slots.insert(pack, Slot::Ready(bytes));
                state.order.push_back(pack);
                state.touched.push_back(pack);
                while state.order.len() > CACHED_PACKS {
                    if let Some(old) = state.order.pop_front() {
                        state.slots.remove(&old);
                    }
                }
                while state.touched.len() > TOUCHED {
                    state.touched.pop_front();
                }
            }
            None => {
                state.slots.remove(&pack);
            }
        }
        self.filled.notify_all();
    }

    /// `pack` was deleted.
    pub fn forget(&self, pack: PackId) {
        let mut state = self.lock();
        if matches!(state.slots.get(&pack), Some(Slot::Ready(_))) {
            state.slots.remove(&pack);
            state.order.retain(|p| *p != pack);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_that_reads_on_gets_whole_packs_and_a_lone_read_a_range() {
        let reads = PackReads::default();
        let pack = |seq| PackId { epoch: 1, seq };
        assert!(matches!(reads.plan(pack(5)), Plan::Range), "a first read");
        assert!(matches!(reads.plan(pack(9)), Plan::Range), "a read elsewhere");
        assert!(matches!(reads.plan(pack(5)), Plan::Fetch), "a second read in one pack");
        reads.fill(pack(5), Some(bytes::Bytes::from_static(b"whole")));
        assert!(matches!(reads.plan(pack(5)), Plan::Cached(b) if &b[..] == b"whole"));
        assert!(matches!(reads.plan(pack(6)), Plan::Fetch), "the next pack of a reader that reads on");
        reads.fill(pack(6), None);
        assert!(matches!(reads.plan(pack(6)), Plan::Fetch), "a failed fetch is tried again");
        reads.fill(pack(6), Some(bytes::Bytes::from_static(b"six")));
        for seq in 7..7 + CACHED_PACKS as u64 {
            assert!(matches!(reads.plan(pack(seq)), Plan::Fetch));
            reads.fill(pack(seq), Some(bytes::Bytes::from_static(b"on")));
        }
        assert!(matches!(reads.plan(pack(5)), Plan::Fetch), "the oldest whole pack was let go");
        reads.fill(pack(5), None);
        reads.forget(pack(7 + CACHED_PACKS as u64 - 1));
        assert!(matches!(reads.plan(pack(7 + CACHED_PACKS as u64 - 1)), Plan::Fetch), "a deleted pack is dropped");
    }

    #[test]
    fn readers_of_a_pack_being_fetched_wait_for_that_one_fetch() {
        let reads = std::sync::Arc::new(PackReads::default());
        let pack = PackId { epoch: 0, seq: 0 };
        assert!(matches!(reads.plan(pack), Plan::Range));
        assert!(matches!(reads.plan(pack), Plan::Fetch));
        let waiter = {
            let reads = reads.clone();
            std::thread::spawn(move || matches!(reads.plan(pack), Plan::Cached(b) if &b[..] == b"data"))
        };
        std::thread::sleep(std::time::Duration::from_millis(20));
        reads.fill(pack, Some(bytes::Bytes::from_static(b"data")));
        assert!(waiter.join().unwrap_or(false), "the waiter got the one fetch's bytes");
    }
}
