//! The access tracker: the pool's in-memory tiering state — access statistics newer
//! than metadata's, the migration queues and the migration budget. None of it is needed
//! for correctness; `crate::services::tiering` persists the statistics and drains the queues.

use std::collections::{BTreeMap, BTreeSet};

use crate::meta::state::ChunkSlot;
use crate::temperature::access::AccessStats;

/// The pool's in-memory tiering state; none of it is needed for correctness.
#[derive(Default)]
pub(crate) struct Tracker {
    /// Statistics newer than metadata's, not yet persisted.
    pub(crate) live: BTreeMap<ChunkSlot, AccessStats>,
    /// When statistics were last persisted (wall seconds).
    pub(crate) flushed_secs: Option<i64>,
    /// Slots a read found under the wrong policy: migrated first.
    pub(crate) read_queue: BTreeSet<ChunkSlot>,
    /// Slots whose migration failed; retried after the next pass.
    pub(crate) failed: BTreeSet<ChunkSlot>,
    /// Bytes the background may re-encode now.
    pub(crate) budget: crate::base::budget::ByteBudget,
}
