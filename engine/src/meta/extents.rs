//! `Extents`: every extent record, paged. What placement, repair planning, the extent
//! index and the tallies ask of an extent — its length, policy, codec and where each
//! fragment lives (`ExtentCore`, 40 bytes) — is held for every extent; a whole record
//! (its BLAKE3, its policy history, an inline extent's data) only for the extents changed
//! since the store's root. The others are read from the store (`meta::paged::read_extent`)
//! by the reads, scrubs, repairs and re-encodings that need them.
//!
//! Contract:
//! - `cores` holds `ExtentRecord::core` of every extent, root and changes together;
//!   every mutator here keeps it so.
//! - With `based`, an extent not in `held` has the record the store's root holds for it;
//!   `dirty` names the extents changed or removed since that root, and every one of them
//!   still present is in `held`, whole (an inline extent with its data). Without `based`,
//!   `held` is the whole table (a state never stored, or read from an encoding that holds
//!   every record).
//! - A change needs nothing read in: an insert carries the whole record, a removal only
//!   the core memory holds. So `MetaState::apply` stays infallible.
//! - Two tables compare equal when they hold the same cores and the same whole records:
//!   the same table over the same root. Over different roots, compare what the store
//!   reads back (`meta::paged::read_whole`).

use std::collections::btree_map::{self, BTreeMap};
use std::collections::{btree_set, BTreeSet};
use std::fmt;
use std::ops::RangeBounds;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::base::policy::Policy;
use crate::media::codec::CodecId;
use crate::media::device::ExtentId;
use crate::meta::core_table::CoreTable;
use crate::meta::record::{ExtentRecord, Fragments, INLINE_KEPT_BYTES_MAX};

/// The part of an extent record held in memory for every extent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtentCore {
    /// Bytes of file data in the extent.
    pub len: u32,
    pub policy: Policy,
    pub codec: CodecId,
    /// Where each fragment lives; index = fragment index. Empty for inline extents.
    pub fragments: Fragments,
}

impl ExtentCore {
    /// Whether the data lives in the metadata rather than in fragments.
    pub fn is_inline(&self) -> bool {
        self.codec == CodecId::Inline
    }

    /// Whether this is an inline extent too long to stay inline once its file is closed.
    pub fn is_young_inline(&self) -> bool {
        self.is_inline() && self.len as usize > INLINE_KEPT_BYTES_MAX
    }
}

impl ExtentRecord {
    /// What memory holds of this record for as long as the extent lives.
    pub fn core(&self) -> ExtentCore {
        ExtentCore { len: self.len, policy: self.policy, codec: self.codec, fragments: self.fragments.clone() }
    }
}

/// An extent a transaction freed: its fragments are deleted once the freeing is durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FreedExtent {
    pub id: ExtentId,
    pub core: ExtentCore,
}

/// Every extent's core, and the whole records changed since the store's root.
#[derive(Clone, Default)]
pub struct Extents {
    cores: CoreTable<ExtentCore>,
    held: BTreeMap<ExtentId, ExtentRecord>,
    dirty: BTreeSet<ExtentId>,
    based: bool,
}

impl Extents {
    /// A table the store's root holds, of which only the cores are in memory.
    pub fn based(cores: impl IntoIterator<Item = (ExtentId, ExtentCore)>) -> Self {
        let cores = cores.into_iter().collect();
        Extents { cores, held: BTreeMap::new(), dirty: BTreeSet::new(), based: true }
    }

    /// A table held whole: every record in memory, none marked (a decoded whole state,
    /// which a checkpoint writes whole).
    pub fn whole(records: BTreeMap<ExtentId, ExtentRecord>) -> Self {
        let cores = records.iter().map(|(id, r)| (*id, r.core())).collect();
        Extents { cores, held: records, dirty: BTreeSet::new(), based: false }
    }

    /// Whether the records not held are read from the store's root.
    pub fn is_based(&self) -> bool {
        self.based
    }

    /// Extent `id`'s core.
    pub fn get(&self, id: &ExtentId) -> Option<&ExtentCore> {
        self.cores.get(id)
    }

    pub fn contains_key(&self, id: &ExtentId) -> bool {
        self.cores.contains_key(id)
    }

    pub fn len(&self) -> usize {
        self.cores.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cores.is_empty()
    }

    /// Every extent's core, in id order.
    pub fn iter(&self) -> impl Iterator<Item = (ExtentId, &ExtentCore)> + '_ {
        self.cores.iter()
    }

    /// Every extent's id, ascending.
    pub fn keys(&self) -> impl Iterator<Item = ExtentId> + '_ {
        self.cores.iter().map(|(id, _)| id)
    }

    /// Every extent's core, in id order.
    pub fn values(&self) -> impl Iterator<Item = &ExtentCore> + '_ {
        self.cores.iter().map(|(_, core)| core)
    }

    /// The cores of the extents with ids in `range`, ascending.
    pub fn range(&self, range: impl RangeBounds<ExtentId>) -> impl Iterator<Item = (ExtentId, &ExtentCore)> + '_ {
        self.cores.range(range)
    }

    /// Extent `id`'s whole record when memory holds it: `Some(None)` when it is known not
    /// to exist, `None` when only the store holds it (`based`, and not changed).
    pub fn held(&self, id: &ExtentId) -> Option<Option<&ExtentRecord>> {
        match self.held.get(id) {
            Some(record) => Some(Some(record)),
            None if self.based && self.cores.contains_key(id) => None,
            None => Some(None),
        }
    }

    /// The whole records held in memory, in id order.
    pub fn held_all(&self) -> btree_map::Iter<'_, ExtentId, ExtentRecord> {
        self.held.iter()
    }

    /// Every record of a table held whole (not `based`).
    pub fn whole_records(&self) -> &BTreeMap<ExtentId, ExtentRecord> {
        assert!(!self.based, "the whole records of a paged extent table");
        &self.held
    }

    /// How many whole records memory holds.
    pub fn held_len(&self) -> usize {
        self.held.len()
    }

    /// Stores `record` whole, replacing any record of its id; returns the core replaced.
    /// An inline record carries its data (the store's copy is written from this one).
    pub fn insert(&mut self, record: ExtentRecord) -> Option<ExtentCore> {
        assert!(!record.is_inline() || record.inline.is_some(), "inline extent {} stored without its data", record.id);
        let id = record.id;
        let old = self.cores.insert(id, record.core());
        self.held.insert(id, record);
        self.dirty.insert(id);
        old
    }

    /// Removes extent `id`; returns its core.
    pub fn remove(&mut self, id: &ExtentId) -> Option<ExtentCore> {
        let old = self.cores.remove(id)?;
        self.held.remove(id);
        self.dirty.insert(*id);
        Some(old)
    }

    /// The extents changed or removed since the store's root, in id order: what the next
    /// checkpoint writes (a removed one as a deletion).
    pub fn dirty_keys(&self) -> btree_set::Iter<'_, ExtentId> {
        self.dirty.iter()
    }

    /// The store now holds every change: forgets them and lets go of every whole record
    /// (the table is `based` from here on).
    pub fn mark_clean(&mut self) {
        self.dirty.clear();
        self.held.clear();
        self.based = true;
    }
}

impl PartialEq for Extents {
    /// Equal when they hold the same cores and the same whole records over a root (or
    /// none); which of them a checkpoint still owes is not part of the value.
    fn eq(&self, other: &Self) -> bool {
        self.based == other.based && self.cores == other.cores && self.held == other.held
    }
}

impl fmt::Debug for Extents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Extents")
            .field("based", &self.based)
            .field("cores", &self.cores.len())
            .field("held", &self.held)
            .field("dirty", &self.dirty)
            .finish()
    }
}

/// Encoded as the map of every record (the encoding of the whole states of formats
/// before the store, and of a store head, whose table is empty): only a table held whole
/// can be encoded.
impl Serialize for Extents {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        assert!(!self.based || self.cores.is_empty(), "a paged extent table encoded whole");
        self.held.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Extents {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Extents::whole(BTreeMap::deserialize(deserializer)?))
    }
}

impl From<BTreeMap<ExtentId, ExtentRecord>> for Extents {
    fn from(records: BTreeMap<ExtentId, ExtentRecord>) -> Self {
        Extents::whole(records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smallvec::smallvec;
    use thin_vec::ThinVec;

    use crate::meta::ids::DiskId;

    fn record(id: u64) -> ExtentRecord {
        ExtentRecord {
            id: ExtentId(id),
            len: 1000 + id as u32,
            hash: [id as u8; 32],
            policy: Policy::Replicate { copies: 2 },
            codec: CodecId::Replica,
            fragments: smallvec![DiskId(1), DiskId(2)],
            inline: None,
            history: ThinVec::new(),
        }
    }

    #[test]
    fn cores_follow_every_change_and_whole_records_only_what_changed() {
        let mut table = Extents::based((1..=3).map(|id| (ExtentId(id), record(id).core())));
        assert_eq!(table.held(&ExtentId(2)), None, "only the store holds it");
        assert_eq!(table.held(&ExtentId(9)), Some(None), "known not to exist");
        let mut changed = record(2);
        changed.fragments = smallvec![DiskId(3), DiskId(4)];
        assert_eq!(table.insert(changed.clone()), Some(record(2).core()));
        assert_eq!(table.get(&ExtentId(2)), Some(&changed.core()));
        assert_eq!(table.held(&ExtentId(2)), Some(Some(&changed)));
        assert_eq!(table.remove(&ExtentId(3)), Some(record(3).core()));
        assert_eq!(table.remove(&ExtentId(3)), None);
        assert_eq!(table.held(&ExtentId(3)), Some(None));
        assert_eq!(table.dirty_keys().copied().collect::<Vec<_>>(), vec![ExtentId(2), ExtentId(3)]);
        assert_eq!(table.len(), 2);
        table.mark_clean();
        assert_eq!((table.held_len(), table.dirty_keys().count()), (0, 0));
        assert_eq!(table.held(&ExtentId(2)), None);
        assert_eq!(table.get(&ExtentId(2)), Some(&changed.core()), "the core stays");
    }

    #[test]
    #[should_panic(expected = "stored without its data")]
    fn an_inline_record_is_never_stored_without_its_data() {
        let mut table = Extents::default();
        table.insert(ExtentRecord { codec: CodecId::Inline, fragments: Fragments::new(), ..record(1) });
    }

    #[test]
    fn encodes_as_the_map_it_replaced() {
        let records: BTreeMap<ExtentId, ExtentRecord> = (1..=3).map(|id| (ExtentId(id), record(id))).collect();
        let table = Extents::whole(records.clone());
        let bytes = postcard::to_allocvec(&table).unwrap();
        assert_eq!(bytes, postcard::to_allocvec(&records).unwrap());
        let decoded: Extents = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(decoded, table);
        assert!(!decoded.is_based());
    }
}
