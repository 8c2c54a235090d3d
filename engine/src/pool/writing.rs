//! Writes between their phases: the extents whose fragments are being written outside
//! the pool's lock (`crate::data::store::store_chunks`) and not yet committed, and the
//! signal that a file's flush finished.
//!
//! Contract: an extent is in `extents` from the moment its id is taken until its record
//! is committed or its write given up; nothing that deletes unreferenced fragments (the
//! orphan collector) touches the fragments of an extent in it.

use std::collections::BTreeSet;
use std::sync::{Arc, Condvar};

use crate::media::device::ExtentId;

/// Extents being written and not yet committed.
#[derive(Default)]
pub(crate) struct Writing {
    extents: BTreeSet<ExtentId>,
    done: Arc<Condvar>,
}

impl Writing {
    pub(crate) fn contains(&self, id: ExtentId) -> bool {
        self.extents.contains(&id)
    }

    /// Marks `ids` as being written; none may be already.
    pub(crate) fn start(&mut self, ids: impl IntoIterator<Item = ExtentId>) {
        for id in ids {
            let new = self.extents.insert(id);
            assert!(new, "extent {id} written twice at once");
        }
    }

    /// The writes of `ids` are over: committed, or given up and their fragments deleted
    /// (or left as orphans for the collector).
    pub(crate) fn finish(&mut self, ids: impl IntoIterator<Item = ExtentId>) {
        for id in ids {
            let was_writing = self.extents.remove(&id);
            debug_assert!(was_writing, "extent {id} finished but never started");
        }
    }

    /// Wakes the writers waiting for a file's flush to finish.
    pub(crate) fn flush_finished(&self) {
        self.done.notify_all();
    }

    /// The signal `flush_finished` gives, to wait on with the pool's lock.
    pub(crate) fn signal(&self) -> Arc<Condvar> {
        self.done.clone()
    }
}
