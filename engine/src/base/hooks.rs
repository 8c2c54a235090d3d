//! Hooks the simulator uses to stop the world at a named point of a commit, and (behind
//! the `sabotage` feature, for tests only) deliberate engine defects that prove the
//! simulator's oracle catches real bugs.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Named points of the commit protocol, in the order a write reaches them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum CommitPhase {
    /// New fragments written, not yet synced.
    FragmentsWritten,
    /// New fragments synced: durable.
    FragmentsSynced,
    /// Journal record written on the replicas, not yet synced.
    JournalWritten,
    /// Journal record durable: the commit point.
    JournalSynced,
    /// Transaction applied to the in-memory state.
    Applied,
    /// Fragments of freed extents deleted.
    Freed,
    /// Checkpoint written on the replicas, not yet synced.
    CheckpointWritten,
    /// Checkpoint durable; older records not yet trimmed.
    CheckpointSynced,
    /// Records and older checkpoints trimmed.
    Trimmed,
}

impl CommitPhase {
    /// Every phase, in protocol order.
    pub const ALL: [CommitPhase; 9] = [
        CommitPhase::FragmentsWritten,
        CommitPhase::FragmentsSynced,
        CommitPhase::JournalWritten,
        CommitPhase::JournalSynced,
        CommitPhase::Applied,
        CommitPhase::Freed,
        CommitPhase::CheckpointWritten,
        CommitPhase::CheckpointSynced,
        CommitPhase::Trimmed,
    ];
}

/// Told every time the engine reaches a `CommitPhase`.
pub trait CommitObserver: Send + Sync {
    fn reached(&self, phase: CommitPhase);
}

/// A shareable observer for `PoolOptions`.
#[derive(Clone)]
pub struct Observer(pub Arc<dyn CommitObserver>);

impl fmt::Debug for Observer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Observer")
    }
}

/// Deliberate defects, compiled only with the `sabotage` feature.
#[cfg(feature = "sabotage")]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Sabotage {
    /// Commit the journal record without syncing the new fragments first.
    SkipFragmentSync,
    /// Return fragment payloads and decoded extents without verifying checksums.
    SkipReadChecksum,
    /// Place the first two fragments of every extent on the same disk.
    SameDiskPlacement,
    /// Delete (punch) a freed extent's fragments as soon as the transaction freeing it is
    /// applied, before its journal record is durable.
    FreeBeforeDurable,
    /// Append at the wrong offset: when a write puts several fragments on one disk,
    /// each after the first lands where the one before it went (over it), as a segment
    /// writer that reserved the wrong offset would; the write reports success.
    MisplacedAppend,
}
