//! The metadata journal: transactions appended as checksummed, sequence-numbered,
//! hash-chained records on several disks, with periodic checkpoints.
//!
//! On disk, per replica disk: `Checkpoint{seq}` blocks (the whole state after record
//! `seq`) and `Journal{seq}` blocks (one record each). Record `seq` carries the hash of
//! record `seq - 1` (or of the checkpoint it follows), so a stale or foreign record can
//! never be chained in.
//!
//! Recovery (`recover`) reads every replica, takes the newest checkpoint that verifies,
//! then extends it record by record with any replica's copy that verifies and chains —
//! the longest valid prefix across replicas. A record is acknowledged only once it is
//! durable on every reachable replica: a replica that fails the write is taken offline
//! (no longer reachable) and the journal moves off it (`data::durability`); one that is
//! full refuses it and stays, and the journal passes over it for a while. A record
//! carrying inline data — which lives nowhere else — is acknowledged only once as many
//! replicas hold it as a stored extent's write needs (see `durability::replicas_required`).
//! So whatever was acknowledged is in that prefix. Nothing is ever half-applied: a
//! record is applied whole or not at all.

use std::collections::{BTreeMap, BTreeSet};

use crate::base::io::run_all;
use crate::media::device::{BlockDevice, BlockKind, BlockName, DeviceError};
use crate::media::frame::{self, FrameError, FrameKind};
use crate::media::group_sync::{self, Then};
use crate::meta::paged;
use crate::meta::state::{MetaState, Transaction};
use crate::meta::store::{Store, StoreConfig};
use crate::meta::{v1, v2, v3};

pub use crate::meta::chain::{Checkpoint, JournalRecord};
use crate::meta::chain::{CheckpointRef, JournalRecordRef};

/// Where the chain stands: the last applied sequence number and the hash the next
/// record must carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JournalTip {
    pub seq: u64,
    pub hash: [u8; 32],
}

/// Decodes a checkpoint block of any format this build reads: formats 1 to 3 through
/// their frozen structures, converted. Returns it, its body hash and its format.
pub fn decode_checkpoint(block: &[u8]) -> Result<(Checkpoint, [u8; 32], u8), FrameError> {
    let opened = frame::open(FrameKind::Checkpoint, block)?;
    let mut checkpoint: Checkpoint = match opened.version {
        v1::FORMAT => frame::decode_body::<v1::CheckpointV1>(opened.body)?.into(),
        v2::FORMAT => frame::decode_body::<v2::CheckpointV2>(opened.body)?.into(),
        v3::FORMAT => frame::decode_body::<v3::CheckpointV3>(opened.body)?.into(),
        _ => frame::decode_body::<Checkpoint>(opened.body)?,
    };
    checkpoint.state.rebuild_indexes(false);
    Ok((checkpoint, opened.hash, opened.version))
}

/// Decodes a journal record of any format this build reads: format 1 through its frozen
/// ops, converted; formats 2 to 9 as the current ops (formats 3, 4, 6, 7 and 9 only
/// appended variants, and 5 and 8 changed where records and checkpoints live, not what
/// they hold).
pub fn decode_record(block: &[u8]) -> Result<(JournalRecord, [u8; 32], u8), FrameError> {
    let opened = frame::open(FrameKind::JournalRecord, block)?;
    let record = match opened.version {
        v1::FORMAT => frame::decode_body::<v1::JournalRecordV1>(opened.body)?.into(),
        _ => frame::decode_body::<JournalRecord>(opened.body)?,
    };
    Ok((record, opened.hash, opened.version))
}

/// Why metadata could not be recovered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecoveryError {
    #[error("the pool's metadata is format {found}, but this build reads formats 1 to {supported}: it was written by a newer DynamicFS; open it with that version")]
    NewerFormat { found: u8, supported: u8 },
    #[error("metadata blocks exist but no checkpoint verifies on any disk ({0}); refusing to open rather than serve wrong data")]
    NoValidCheckpoint(String),
    #[error("the disks hold data fragments but no metadata at all; refusing to open an empty pool over them")]
    MetadataMissing,
    #[error("the metadata store does not read back: {0}; refusing to open rather than serve wrong data")]
    StoreUnreadable(String),
}

/// The outcome of reading every replica.
pub struct Recovered {
    pub state: MetaState,
    pub tip: JournalTip,
    /// Sequence number of the checkpoint recovery started from.
    pub checkpoint_seq: u64,
    /// Records replayed on top of the checkpoint.
    pub replayed: u64,
    /// Slots (indexes into the device list) holding a valid copy of that checkpoint.
    pub checkpoint_slots: BTreeSet<usize>,
    /// What recovery noticed: corrupt blocks, torn tails, missing replicas.
    pub notes: Vec<String>,
    /// The oldest metadata format among the checkpoint and the records replayed; older
    /// than `frame::METADATA_FORMAT` means the pool must be upgraded (rewritten in the
    /// current format) before anything else.
    pub oldest_format: u8,
    /// The paged store the checkpoint was read from (format 8 on); `None` when it was a
    /// checkpoint block of an older format.
    pub store: Option<Store>,
}

/// One verified copy of a metadata block found during recovery.
struct Found<T> {
    /// Index of the device that holds it.
    slot: usize,
    value: T,
    /// Its checksum, which the next record chains to.
    hash: [u8; 32],
    /// The format it was written in.
    format: u8,
}

/// Reads the journal from `devices`. `Ok(None)` when no disk holds any metadata block
/// (and no fragment): a pool that never committed anything.
pub fn recover(devices: &[&dyn BlockDevice], store_config: &StoreConfig) -> Result<Option<Recovered>, RecoveryError> {
    let mut notes = Vec::new();
    // A checkpoint is the whole state: each copy is verified as read, but only one copy
    // of each distinct content is kept, and only the one recovery starts from is decoded.
    let mut checkpoints: BTreeMap<u64, Vec<Found<Option<Vec<u8>>>>> = BTreeMap::new();
    let mut records: BTreeMap<u64, Vec<Found<JournalRecord>>> = BTreeMap::new();
    let mut any_metadata = false;
    let mut only_genesis = true;
    let mut any_fragment = false;
    let mut newer_format = None;
    for (slot, device) in devices.iter().enumerate() {
        for kind in [BlockKind::Checkpoint, BlockKind::Journal] {
            let names = match device.list(kind) {
                Ok(names) => names,
                Err(e) => {
                    notes.push(format!("{}: cannot list {}: {e}", device.describe(), kind.namespace()));
                    continue;
                }
            };
            any_metadata |= !names.is_empty();
            only_genesis &= names.iter().all(|n| *n == BlockName::Checkpoint { seq: 0 });
            for name in names {
                let block = match device.read(name) {
                    Ok(block) => block,
                    // Listed, but deleted since (trimmed): a store's listing may lag.
                    Err(DeviceError::NotFound) if device.shared() => continue,
                    Err(e) => {
                        notes.push(format!("{}: {name}: {e}", device.describe()));
                        continue;
                    }
                };
                match name {
                    BlockName::Checkpoint { seq } => match frame::open(FrameKind::Checkpoint, &block) {
                        Ok(opened) => {
                            let (hash, format) = (opened.hash, opened.version);
                            let copies = checkpoints.entry(seq).or_default();
                            let first = !copies.iter().any(|c| c.hash == hash);
                            copies.push(Found { slot, value: first.then_some(block), hash, format });
                        }
                        Err(e) => note_frame_error(&mut notes, &mut newer_format, *device, name, e),
                    },
                    BlockName::Journal { seq } => {
                        file_record(&mut records, &mut notes, &mut newer_format, *device, slot, seq, &block)
                    }
                    _ => {}
                }
            }
        }
        if !any_fragment {
            any_fragment = device.list(BlockKind::Fragment).map(|f| !f.is_empty()).unwrap_or(false);
        }
    }
    // From format 8 the checkpoint is the paged store: where any disk holds a store root,
    // recovery starts from the store (written only after any older checkpoint it finds).
    let any_store = devices.iter().any(|d| crate::meta::store::holds_store(*d));
    let mut store = None;
    let mut start: Option<(Checkpoint, u8, BTreeSet<usize>)> = None;
    if any_store {
        let opened =
            Store::open(devices, store_config.clone()).map_err(|e| RecoveryError::StoreUnreadable(e.to_string()))?;
        let mut head = paged::load(&opened, devices).map_err(|e| match e {
            paged::LoadError::NewerFormat { found, supported } => RecoveryError::NewerFormat { found, supported },
            e => RecoveryError::StoreUnreadable(e.to_string()),
        })?;
        head.state.rebuild_indexes(store_config.parallel);
        let format = head.format;
        let checkpoint = Checkpoint { seq: head.seq, tip_hash: head.tip_hash, state: head.state };
        start = Some((checkpoint, format, opened.holders().clone()));
        store = Some(opened);
        checkpoints.clear();
    }
    // The newest checkpoint with a copy that decodes, and the slots holding that copy.
    'newest: for (&seq, copies) in checkpoints.iter_mut().rev() {
        for index in 0..copies.len() {
            let Some(block) = copies[index].value.take() else { continue };
            let slot = copies[index].slot;
            let name = BlockName::Checkpoint { seq };
            match decode_checkpoint(&block) {
                Ok((checkpoint, hash, format)) if checkpoint.seq == seq => {
                    let slots = copies.iter().filter(|c| c.hash == hash).map(|c| c.slot).collect();
                    start = Some((checkpoint, format, slots));
                    break 'newest;
                }
                Ok(_) => {
                    notes.push(format!("{}: {name}: sequence number does not match its name", devices[slot].describe()))
                }
                Err(e) => note_frame_error(&mut notes, &mut newer_format, devices[slot], name, e),
            }
        }
    }
    if let Some((found, supported)) = newer_format {
        // Never recover a prefix of a newer pool: the older records that would verify
        // are followed by ones this build cannot read.
        return Err(RecoveryError::NewerFormat { found, supported });
    }
    let Some((checkpoint, mut oldest_format, checkpoint_slots)) = start else {
        // A torn first checkpoint (seq 0) means the first disk was never fully added:
        // nothing was ever committed, so the pool is still empty.
        if any_metadata && (any_fragment || !only_genesis) {
            return Err(RecoveryError::NoValidCheckpoint(notes.join("; ")));
        }
        if any_fragment {
            return Err(RecoveryError::MetadataMissing);
        }
        return Ok(None);
    };
    let checkpoint_seq = checkpoint.seq;
    let mut tip = JournalTip { seq: checkpoint.seq, hash: checkpoint.tip_hash };
    let mut state = checkpoint.state;
    let mut replayed = 0;
    loop {
        let next = tip.seq + 1;
        if !records.get(&next).is_some_and(|candidates| candidates.iter().any(|c| c.value.prev_hash == tip.hash)) {
            // A store's listing may not show its newest records yet: ask for the next one
            // by name on each shared device (answered exactly).
            for (slot, device) in devices.iter().enumerate().filter(|(_, d)| d.shared()) {
                if let Ok(block) = device.read(BlockName::Journal { seq: next }) {
                    file_record(&mut records, &mut notes, &mut newer_format, *device, slot, next, &block);
                }
            }
        }
        let chained =
            records.get(&next).and_then(|candidates| candidates.iter().find(|c| c.value.prev_hash == tip.hash));
        let Some(found) = chained else {
            break;
        };
        let wanted = state.temperatures_wanted(&found.value.txn);
        paged::prefetch(&mut state, store.as_ref().map(|store| (store, devices)), wanted)
            .map_err(|e| RecoveryError::StoreUnreadable(e.to_string()))?;
        state.apply_transaction(&found.value.txn);
        tip = JournalTip { seq: next, hash: found.hash };
        oldest_format = oldest_format.min(found.format);
        replayed += 1;
    }
    if let Some((found, supported)) = newer_format {
        // A newer record found only by name, past what was listed.
        return Err(RecoveryError::NewerFormat { found, supported });
    }
    let dropped: Vec<u64> = records.range(tip.seq + 1..).map(|(seq, _)| *seq).collect();
    if !dropped.is_empty() {
        notes.push(format!("dropped {} record(s) past the valid prefix (torn or unchained tail)", dropped.len()));
    }
    Ok(Some(Recovered { state, tip, checkpoint_seq, replayed, checkpoint_slots, notes, oldest_format, store }))
}

/// Notes why block `name` on `device` did not open; a newer format is remembered in
/// `newer`, so recovery refuses the pool rather than take a prefix of it.
fn note_frame_error(
    notes: &mut Vec<String>,
    newer: &mut Option<(u8, u8)>,
    device: &dyn BlockDevice,
    name: BlockName,
    e: FrameError,
) {
    if let FrameError::Version { found, supported } = e {
        if found > supported {
            *newer = Some((found, supported));
        }
    }
    notes.push(format!("{}: {name}: {e}", device.describe()));
}

/// Files journal block `seq`, read from device `slot`: a record that verifies under its
/// own number joins `records`; anything else is noted.
fn file_record(
    records: &mut BTreeMap<u64, Vec<Found<JournalRecord>>>,
    notes: &mut Vec<String>,
    newer: &mut Option<(u8, u8)>,
    device: &dyn BlockDevice,
    slot: usize,
    seq: u64,
    block: &[u8],
) {
    let name = BlockName::Journal { seq };
    match decode_record(block) {
        Ok((record, hash, format)) if record.seq == seq => {
            records.entry(seq).or_default().push(Found { slot, value: record, hash, format })
        }
        Ok(_) => notes.push(format!("{}: {name}: sequence number does not match its name", device.describe())),
        Err(e) => note_frame_error(notes, newer, device, name, e),
    }
}

/// Encodes record `tip.seq + 1` carrying `txn`; returns its block and the new tip.
pub fn encode_record(tip: JournalTip, txn: &Transaction) -> (Vec<u8>, JournalTip) {
    let record = JournalRecordRef { seq: tip.seq + 1, prev_hash: tip.hash, txn };
    let (block, hash) = frame::encode(FrameKind::JournalRecord, &record);
    (block, JournalTip { seq: record.seq, hash })
}

/// Encodes a checkpoint of `state` at `tip`.
pub fn encode_checkpoint(tip: JournalTip, state: &MetaState) -> Vec<u8> {
    frame::encode(FrameKind::Checkpoint, &CheckpointRef { seq: tip.seq, tip_hash: tip.hash, state }).0
}

/// Why one replica did not take a block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaFailure {
    /// The replica's position in the devices given to `write_replicas`.
    pub index: usize,
    /// The disk was full: it refused the block, it did not fail.
    pub no_space: bool,
    pub message: String,
}

/// Writes `block` under `name` to every device and syncs each; returns, per device,
/// whether its copy is durable, and why the others are not. Without `parallel`, as the
/// simulator needs, every replica is written one after another, then `written` is called,
/// then each is synced in order; with it, each replica is written and synced in a job of
/// its own, all at once (the barrier costs one write and one sync, not one per replica) —
/// replicas on one filesystem in one job, with one flush of it (`media::group_sync`) —
/// and `written` is called once they are done.
pub fn write_replicas(
    devices: &[&dyn BlockDevice],
    name: BlockName,
    block: &[u8],
    parallel: bool,
    written: impl FnOnce(),
) -> (Vec<bool>, Vec<ReplicaFailure>) {
    let describe = |device: &dyn BlockDevice, what: &str, e: DeviceError| {
        (matches!(e, DeviceError::NoSpace), format!("{}: {name}{what}: {e}", device.describe()))
    };
    let write = |device: &dyn BlockDevice| device.write(name, block).map_err(|e| describe(device, "", e));
    let sync = |device: &dyn BlockDevice| device.sync().map_err(|e| describe(device, ": sync", e));
    let synced: Vec<Result<(), (bool, String)>> = if parallel {
        // Each replica written and synced in one job (one round of the I/O pool, not
        // two); replicas on one filesystem written in one job and flushed together.
        let synced = group_sync::sync_grouped(
            true,
            devices.to_vec(),
            |device| *device,
            |device| write(*device).map(|()| Then::Sync),
            |device, e| describe(*device, ": sync", e),
        );
        written();
        synced
    } else {
        let wrote: Vec<Result<(), (bool, String)>> = devices.iter().map(|device| write(*device)).collect();
        written();
        devices.iter().zip(wrote).map(|(device, wrote)| wrote.and_then(|()| sync(*device))).collect()
    };
    debug_assert_eq!(synced.len(), devices.len());
    let durable = synced.iter().map(Result::is_ok).collect();
    let failures = synced
        .into_iter()
        .enumerate()
        .filter_map(|(index, result)| {
            result.err().map(|(no_space, message)| ReplicaFailure { index, no_space, message })
        })
        .collect();
    (durable, failures)
}

/// Called once the store root at the tip is durable on `devices`: deletes every journal
/// record from them (those up to the tip are covered by it; any past it are a torn or
/// unchained tail) and every checkpoint block of an older format, plus every metadata
/// block — the store's included — from `strangers` (disks that no longer carry the
/// journal), every disk's at once when `parallel`. Returns what could not be deleted.
pub fn trim(devices: &[&dyn BlockDevice], strangers: &[&dyn BlockDevice], parallel: bool) -> Vec<String> {
    let prune = |device: &dyn BlockDevice, stranger: bool| -> Result<(), DeviceError> {
        let mut kinds = vec![BlockKind::Journal, BlockKind::Checkpoint];
        if stranger {
            kinds.extend([BlockKind::StoreRoot, BlockKind::StorePage]);
        }
        for kind in kinds {
            for name in device.list(kind)? {
                device.delete(name)?;
            }
        }
        device.sync()
    };
    let jobs: Vec<(&dyn BlockDevice, bool)> =
        devices.iter().map(|d| (*d, false)).chain(strangers.iter().map(|d| (*d, true))).collect();
    run_all(parallel, jobs, |(device, stranger)| {
        prune(device, stranger).err().map(|e| format!("{}: {e}", device.describe()))
    })
    .into_iter()
    .flatten()
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::clock::WallTime;
    use crate::meta::state::{Ino, Op};

    #[test]
    fn a_checkpoint_encoded_from_a_borrowed_state_decodes_as_the_checkpoint() {
        let state = MetaState::new(uuid::Uuid::from_u128(7), "erasure:4+2".parse().unwrap(), WallTime::default());
        let tip = JournalTip { seq: 41, hash: [3; 32] };
        let block = encode_checkpoint(tip, &state);
        let owned = Checkpoint { seq: 41, tip_hash: [3; 32], state: state.clone() };
        assert_eq!(block, frame::encode(FrameKind::Checkpoint, &owned).0);
        let (decoded, _, format) = decode_checkpoint(&block).unwrap();
        assert_eq!(decoded, owned);
        assert_eq!(format, frame::METADATA_FORMAT);
    }

    #[test]
    fn a_record_encoded_from_a_borrowed_transaction_decodes_as_the_record() {
        let ino = Ino(5);
        let txn = Transaction {
            ops: vec![
                Op::SetXattr { ino, name: b"user.a".to_vec(), value: Some(vec![5; 300]) },
                Op::SetXattr { ino, name: b"user.b".to_vec(), value: None },
            ],
        };
        let tip = JournalTip { seq: 41, hash: [3; 32] };
        let (block, next) = encode_record(tip, &txn);
        let owned = JournalRecord { seq: 42, prev_hash: [3; 32], txn: txn.clone() };
        let (owned_block, owned_hash) = frame::encode(FrameKind::JournalRecord, &owned);
        assert_eq!(block, owned_block);
        assert_eq!(next, JournalTip { seq: 42, hash: owned_hash });
        let (decoded, hash, _) = decode_record(&block).unwrap();
        assert_eq!((decoded, hash), (owned, owned_hash));
    }
}
