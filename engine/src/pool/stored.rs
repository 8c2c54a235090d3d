//! The pool's reads of what the state does not hold in memory — the temperatures
//! (`meta::temperatures`) and whole extent records (`meta::extents`) — from the metadata store, on the
//! replicas that hold its root. A read that fails is an error of the operation that
//! needed it, never a default: a chunk's statistics or window are never silently reset,
//! a small file's data never read as empty.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::base::error::{Error, Result};
use crate::media::device::{BlockDevice, ExtentId};
use crate::meta::ids::ChunkSlot;
use crate::meta::paged::{self, LoadError};
use crate::meta::state::DiskId;
use crate::meta::state::{ExtentRecord, MetaState, Transaction};
use crate::meta::store::{Devices, StoreError};
use crate::pool::Pool;
use crate::temperature::tracker::Temperature;

impl From<LoadError> for Error {
    fn from(error: LoadError) -> Self {
        match error {
            LoadError::Store(StoreError::Lost { .. }) | LoadError::Entry { .. } | LoadError::Head(_) => {
                Error::MetadataCorrupt(format!("reading metadata: {error}"))
            }
            error => Error::Io(format!("reading metadata: {error}")),
        }
    }
}

impl Pool {
    /// The replicas holding the store's root, in the order reads try them.
    fn store_replicas(&self) -> Vec<Arc<dyn BlockDevice>> {
        self.store_members.iter().filter_map(|id| self.devices.get(id).cloned()).collect()
    }

    /// Calls `read` with where the state's paged tables are read from.
    fn with_source<T>(&self, read: impl FnOnce(paged::Source) -> T) -> T {
        let replicas = self.store_replicas();
        let devices: Vec<&dyn BlockDevice> = replicas.iter().map(|d| d.as_ref()).collect();
        read(self.store.as_ref().map(|store| (store, devices.as_slice() as &Devices)))
    }

    /// `with_source`, for a change of the state read from the store.
    fn with_source_mut<T>(&mut self, change: impl FnOnce(&mut MetaState, paged::Source) -> T) -> T {
        let replicas = self.store_replicas();
        let devices: Vec<&dyn BlockDevice> = replicas.iter().map(|d| d.as_ref()).collect();
        change(&mut self.state, self.store.as_ref().map(|store| (store, devices.as_slice() as &Devices)))
    }

    /// `slot`'s temperature, none when no access or pass has touched it.
    pub fn temperature(&self, slot: ChunkSlot) -> Result<Option<Temperature>> {
        Ok(self.with_source(|source| paged::read_temperature(&self.state, source, slot))?)
    }

    /// Visits every chunk's temperature in slot order, until `visit` returns `false`.
    pub fn each_temperature(&self, visit: &mut dyn FnMut(ChunkSlot, &Temperature) -> bool) -> Result<()> {
        Ok(self.with_source(|source| paged::each_temperature(&self.state, source, visit))?)
    }

    /// Every chunk's temperature (reports, and tests comparing two pools).
    pub fn temperatures(&self) -> Result<BTreeMap<ChunkSlot, Temperature>> {
        Ok(self.with_source(|source| paged::temperatures(&self.state, source))?)
    }

    /// Reads in the temperatures `txn` changes, before it is applied.
    pub(crate) fn read_in_temperatures(&mut self, txn: &Transaction) -> Result<()> {
        let wanted = self.state.temperatures_wanted(txn);
        if wanted.is_empty() {
            return Ok(());
        }
        Ok(self.with_source_mut(|state, source| paged::prefetch(state, source, wanted))?)
    }

    /// The stored temperatures a whole write of the state carries beside those held.
    pub(crate) fn stored_temperatures(&self) -> Result<Vec<paged::StoredEntry>> {
        Ok(self.with_source(|source| paged::stored_temperatures(&self.state, source))?)
    }
}

impl Pool {
    /// The state with everything the store holds for it in memory — every temperature,
    /// every whole extent record: a state that encodes whole, as the formats before the
    /// store did, and compares with one over another root (upgrade tests, the
    /// simulator's replica check).
    pub fn state_whole(&self) -> Result<crate::meta::state::MetaState> {
        let mut state = self.state.clone();
        self.with_source(|source| paged::read_whole(&mut state, source))?;
        Ok(state)
    }

    /// Extent `id`'s whole record — its hash, history and an inline extent's data —
    /// held, or read from the store; `None` when there is no such extent.
    pub fn extent_record(&self, id: ExtentId) -> Result<Option<ExtentRecord>> {
        Ok(self.with_source(|source| paged::read_extent(&self.state, source, id))?)
    }

    /// The whole record of extent `id`, which a chunk or layer names: its absence is
    /// metadata that contradicts itself.
    pub(crate) fn referenced_record(&self, id: ExtentId) -> Result<ExtentRecord> {
        self.extent_record(id)?.ok_or_else(|| Error::MetadataCorrupt(format!("extent {id} is named but has no record")))
    }

    /// Visits every extent's whole record in id order, until `visit` returns `false`.
    pub fn each_extent_record(&self, visit: &mut dyn FnMut(&ExtentRecord) -> bool) -> Result<()> {
        Ok(self.with_source(|source| paged::each_extent(&self.state, source, visit))?)
    }

    /// The whole record of the extent chunk `slot` holds.
    pub fn slot_record(&self, slot: ChunkSlot) -> Result<Option<ExtentRecord>> {
        match self.state.slot_extent_id(slot) {
            Some(id) => self.extent_record(id),
            None => Ok(None),
        }
    }

    /// The data of inline extent `record` (a whole record always carries it).
    pub fn inline_data(&self, record: &ExtentRecord) -> Result<Box<[u8]>> {
        debug_assert!(record.is_inline());
        record
            .inline
            .clone()
            .ok_or_else(|| Error::MetadataCorrupt(format!("inline extent {} holds no data", record.id)))
    }

    /// The stored extent records a whole write of the state carries beside those held.
    pub(crate) fn stored_extents(&self) -> Result<Vec<paged::StoredEntry>> {
        Ok(self.with_source(|source| paged::stored_extents(&self.state, source))?)
    }
}

/// One copy of a metadata block that did not verify (`Pool::check_metadata`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MetadataFinding {
    pub disk: DiskId,
    pub block: String,
    pub problem: String,
    /// Whether a good copy was written over it.
    pub repaired: bool,
}

/// What a check of the metadata store's copies on its journal disks found.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct MetadataCheck {
    /// The journal disks whose copies were read.
    pub disks: Vec<DiskId>,
    /// Copies read and verified, over those disks.
    pub copies_checked: u64,
    pub findings: Vec<MetadataFinding>,
    /// Blocks no disk holds a good copy of: the pool would refuse to open.
    pub lost: Vec<String>,
}

/// Live metadata blocks one step of a metadata check reads (on every journal disk): the
/// pool is held for one step at a time.
pub const METADATA_CHECK_STEP: usize = 64;

impl MetadataCheck {
    /// Adds what a later step of the same check found.
    pub fn absorb(&mut self, step: MetadataCheck) {
        if self.disks.is_empty() {
            self.disks = step.disks;
        }
        self.copies_checked += step.copies_checked;
        self.findings.extend(step.findings);
        self.lost.extend(step.lost);
    }
}

impl Pool {
    /// Reads every copy of every metadata block the store's current root names, on each
    /// readable disk that holds that root, and verifies it; with `repair` (and a pool
    /// that takes writes) each bad copy is rewritten from a good one. Reads nothing
    /// through the cache. A pool whose state still lives in its journal alone (no
    /// checkpoint yet) has nothing to check. All steps of `check_metadata_step` at once.
    pub fn check_metadata(&self, repair: bool) -> MetadataCheck {
        let mut whole = MetadataCheck::default();
        let mut from = Some(0);
        while let Some(at) = from {
            let (step, next) = self.check_metadata_step(repair, at, METADATA_CHECK_STEP);
            whole.absorb(step);
            from = next;
        }
        whole
    }

    /// One step of `check_metadata`: the live blocks with ids from `from` on, at most
    /// `max_blocks` of them (`Store::check`); returns where the next step starts, `None`
    /// once done.
    pub fn check_metadata_step(&self, repair: bool, from: u64, max_blocks: usize) -> (MetadataCheck, Option<u64>) {
        let Some(store) = self.store.as_ref() else { return (MetadataCheck::default(), None) };
        let members: Vec<(DiskId, Arc<dyn BlockDevice>)> = self
            .store_members
            .iter()
            .filter(|id| self.state.disk_readable(**id))
            .filter_map(|id| self.devices.get(id).map(|d| (*id, d.clone())))
            .collect();
        let devices: Vec<&dyn BlockDevice> = members.iter().map(|(_, d)| d.as_ref()).collect();
        let repair = repair && self.read_only.is_none();
        let (check, next) = store.check(&devices, repair, from, max_blocks);
        let findings = check
            .bad
            .iter()
            .map(|bad| MetadataFinding {
                disk: members[bad.replica].0,
                block: bad.name.to_string(),
                problem: bad.why.clone(),
                repaired: bad.rewritten,
            })
            .collect();
        let step = MetadataCheck {
            disks: members.iter().map(|(id, _)| *id).collect(),
            copies_checked: check.copies,
            findings,
            lost: check.lost.iter().map(ToString::to_string).collect(),
        };
        (step, next)
    }
}
