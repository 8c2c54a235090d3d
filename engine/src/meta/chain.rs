//! What the journal chains, in the current format: a record (one transaction, linked to
//! the one before by hash) and a checkpoint (the whole state after a record).
//!
//! Contract: these are the bodies the journal frames and writes today; the frozen formats
//! (`v1`–`v3`) convert into them, and the journal (`meta::journal`) reads, chains and
//! writes them. Plain values: nothing here touches a disk.

use serde::{Deserialize, Serialize};

use crate::meta::state::{MetaState, Transaction};

/// One journal record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JournalRecord {
    pub seq: u64,
    /// Hash of the previous record's body, or of the checkpoint this record follows.
    pub prev_hash: [u8; 32],
    pub txn: Transaction,
}

/// A full copy of the state after record `seq`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub seq: u64,
    /// The chain hash the next record must carry.
    pub tip_hash: [u8; 32],
    pub state: MetaState,
}

/// `JournalRecord` borrowing its transaction, which it encodes exactly as `JournalRecord`
/// does: a barrier encodes its ops (small files' data among them) without copying them.
#[derive(Serialize)]
pub(crate) struct JournalRecordRef<'a> {
    pub(crate) seq: u64,
    pub(crate) prev_hash: [u8; 32],
    pub(crate) txn: &'a Transaction,
}

/// `Checkpoint` borrowing its state, which it encodes exactly as `Checkpoint` does: a
/// checkpoint is written without a copy of the whole state.
#[derive(Serialize)]
pub(crate) struct CheckpointRef<'a> {
    pub(crate) seq: u64,
    pub(crate) tip_hash: [u8; 32],
    pub(crate) state: &'a MetaState,
}
