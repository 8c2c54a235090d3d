//! `Temperatures`: every chunk's temperature, paged. What tallies, migrations and target
//! policies ask of a chunk — its class — is held for every chunk; a whole temperature
//! (statistics, observation window, confidence: about 130 bytes in memory) only for the
//! chunks changed since the store's root. The others are read from the store
//! (`meta::paged::read_temperature`, `each_temperature`), which implies the repeats of
//! the passes since each was written.
//!
//! Contract:
//! - `classes` holds `Temperature::classified` of every chunk's temperature, root and
//!   changes together; every mutator here keeps it so.
//! - With `based`, a chunk not in `changed` has the temperature the store's root holds for
//!   it (or none); without, `changed` is the whole table (a state never stored, or read
//!   from an encoding that holds every temperature). A `None` in `changed` is a chunk
//!   known to have none: removed, or read from the root and found absent.
//! - A change needs the chunk's whole temperature: `MetaState::apply` changes only chunks
//!   in `changed`, which the caller reads in first (`meta::paged::prefetch`, for the
//!   slots `Temperatures::wanted` names). Without `based` nothing needs reading.
//! - Two tables compare equal when they hold the same classes and the same changes: the
//!   same table over the same root. Over different roots, compare what the store reads
//!   back (`meta::paged::temperatures`).

use std::collections::btree_map::{self, BTreeMap};
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::meta::class_table::ClassTable;
use crate::meta::ids::{ChunkSlot, Ino};
use crate::temperature::tracker::Temperature;
use crate::temperature::Class;

/// Every chunk's class, and the temperatures changed since the store's root.
#[derive(Clone, Default, PartialEq)]
pub struct Temperatures {
    classes: ClassTable,
    changed: BTreeMap<ChunkSlot, Option<Temperature>>,
    based: bool,
}

impl Temperatures {
    /// A table the store's root holds, of which only the classes are in memory.
    pub fn based(classes: impl IntoIterator<Item = (ChunkSlot, Class)>) -> Self {
        Temperatures { classes: classes.into_iter().collect(), changed: BTreeMap::new(), based: true }
    }

    /// A table held whole, never stored: every temperature is a change.
    pub fn whole(temperatures: BTreeMap<ChunkSlot, Temperature>) -> Self {
        let classes = temperatures.iter().filter_map(|(slot, t)| Some((*slot, t.classified()?))).collect();
        Temperatures { classes, changed: temperatures.into_iter().map(|(s, t)| (s, Some(t))).collect(), based: false }
    }

    /// Whether the chunks not changed are read from the store's root.
    pub fn is_based(&self) -> bool {
        self.based
    }

    /// The class a pass settled on for `slot` (`Temperature::classified`).
    pub fn class(&self, slot: &ChunkSlot) -> Option<Class> {
        self.classes.get(slot)
    }

    /// Every classified chunk with its class, in slot order.
    pub fn classes(&self) -> impl Iterator<Item = (ChunkSlot, Class)> + '_ {
        self.classes.iter()
    }

    /// The classified chunks of file `ino`, in slot order.
    pub fn classes_of(&self, ino: Ino) -> impl Iterator<Item = (ChunkSlot, Class)> + '_ {
        self.classes.of(ino)
    }

    /// `slot`'s temperature when memory holds it: `Some(None)` when it is known to have
    /// none, `None` when only the store knows (`based`, and not changed).
    pub fn held(&self, slot: &ChunkSlot) -> Option<Option<&Temperature>> {
        match self.changed.get(slot) {
            Some(held) => Some(held.as_ref()),
            None if self.based => None,
            None => Some(None),
        }
    }

    /// The temperatures held in memory, in slot order (`None`: known to have none).
    pub fn held_all(&self) -> btree_map::Iter<'_, ChunkSlot, Option<Temperature>> {
        self.changed.iter()
    }

    /// Of `slots`, those whose temperature must be read from the store before a change.
    pub fn wanted<'a>(
        &'a self,
        slots: impl IntoIterator<Item = ChunkSlot> + 'a,
    ) -> impl Iterator<Item = ChunkSlot> + 'a {
        slots.into_iter().filter(|slot| self.held(slot).is_none())
    }

    /// Holds `temperature`, read from the store's root for `slot`, to be changed.
    pub fn fetched(&mut self, slot: ChunkSlot, temperature: Option<Temperature>) {
        debug_assert!(self.based && !self.changed.contains_key(&slot));
        debug_assert_eq!(self.class(&slot), temperature.as_ref().and_then(Temperature::classified), "{slot:?}");
        self.changed.insert(slot, temperature);
    }

    /// Changes `slot`'s temperature (a new one when it has none). Its temperature must be
    /// held (`held`): a change of a chunk not read in would write over what the root holds.
    pub fn update(&mut self, slot: ChunkSlot, change: impl FnOnce(&mut Temperature)) {
        let held = match self.changed.entry(slot) {
            btree_map::Entry::Occupied(entry) => entry.into_mut(),
            btree_map::Entry::Vacant(entry) => {
                assert!(!self.based, "temperature of {slot:?} changed without being read in");
                entry.insert(None)
            }
        };
        let temperature = held.get_or_insert_with(Temperature::default);
        change(temperature);
        self.classes.set(slot, temperature.classified());
    }

    /// `slot` has no temperature any more.
    pub fn remove(&mut self, slot: ChunkSlot) {
        self.classes.set(slot, None);
        if self.based {
            self.changed.insert(slot, None);
        } else {
            self.changed.remove(&slot);
        }
    }

    /// Every temperature held, to change in place without marking: only for a change the
    /// store implies when it reads a temperature back (`meta::paged`: the observation a
    /// pass repeats, implied by the pass count). Classes do not change by it.
    pub fn held_mut_implied(&mut self) -> impl Iterator<Item = (&ChunkSlot, &mut Temperature)> {
        self.changed.iter_mut().filter_map(|(slot, held)| Some((slot, held.as_mut()?)))
    }

    /// The changes since the root, emptied: the store now holds them (the table is
    /// `based` from here on).
    pub fn take_changes(&mut self) -> BTreeMap<ChunkSlot, Option<Temperature>> {
        self.based = true;
        std::mem::take(&mut self.changed)
    }

    /// How many temperatures are held in memory.
    pub fn held_len(&self) -> usize {
        self.changed.len()
    }
}

impl fmt::Debug for Temperatures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Temperatures")
            .field("based", &self.based)
            .field("classes", &self.classes.len())
            .field("changed", &self.changed)
            .finish()
    }
}

/// Encoded as the map of every temperature (the encoding of the whole states of formats
/// before the store, and of a store head, whose table is empty): only a table held whole
/// can be encoded.
impl Serialize for Temperatures {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        assert!(!self.based || self.changed.is_empty(), "a paged temperature table encoded whole");
        use serde::ser::SerializeMap;
        let held: Vec<(&ChunkSlot, &Temperature)> =
            self.changed.iter().filter_map(|(slot, t)| Some((slot, t.as_ref()?))).collect();
        let mut map = serializer.serialize_map(Some(held.len()))?;
        for (slot, temperature) in held {
            map.serialize_entry(slot, temperature)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Temperatures {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Temperatures::whole(BTreeMap::deserialize(deserializer)?))
    }
}

impl From<BTreeMap<ChunkSlot, Temperature>> for Temperatures {
    fn from(map: BTreeMap<ChunkSlot, Temperature>) -> Self {
        Temperatures::whole(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::temperature::access::AccessStats;
    use crate::temperature::tracker::{Observation, Verdict};

    fn slot(index: u64) -> ChunkSlot {
        ChunkSlot { ino: Ino(7), index }
    }

    fn verdict(class: Class) -> Verdict {
        Verdict {
            stats: AccessStats::default(),
            observation: Observation { observed: class, accesses: 1 },
            class,
            confidence: 1.0,
        }
    }

    #[test]
    fn classes_follow_every_change() {
        let mut table = Temperatures::default();
        table.update(slot(1), |t| t.stats.total = 3);
        assert_eq!(table.class(&slot(1)), None, "no pass judged it yet");
        table.update(slot(1), |t| t.apply(&verdict(Class::Hot)));
        assert_eq!(table.class(&slot(1)), Some(Class::Hot));
        table.remove(slot(1));
        assert_eq!(table.class(&slot(1)), None);
        assert_eq!(table.held(&slot(1)), Some(None), "a table held whole knows every chunk");
    }

    #[test]
    fn a_based_table_changes_only_what_it_read_in() {
        let mut table = Temperatures::based(BTreeMap::from([(slot(1), Class::Cold), (slot(2), Class::Hot)]));
        assert_eq!(table.held(&slot(1)), None);
        assert_eq!(table.wanted([slot(1), slot(3)]).collect::<Vec<_>>(), vec![slot(1), slot(3)]);
        let mut cold = Temperature::default();
        cold.apply(&verdict(Class::Cold));
        table.fetched(slot(1), Some(cold));
        table.fetched(slot(3), None);
        assert!(table.wanted([slot(1), slot(3)]).next().is_none());
        table.update(slot(1), |t| t.apply(&verdict(Class::Warm)));
        table.update(slot(3), |t| t.apply(&verdict(Class::Hot)));
        table.remove(slot(2));
        assert_eq!(table.class(&slot(1)), Some(Class::Warm));
        assert_eq!(table.class(&slot(2)), None);
        let changes = table.take_changes();
        assert_eq!(changes.keys().copied().collect::<Vec<_>>(), vec![slot(1), slot(2), slot(3)]);
        assert_eq!(changes[&slot(2)], None, "a removal is a change the root must hear of");
        assert_eq!(table.held_len(), 0);
        assert_eq!(table.classes().count(), 2, "classes stay for every chunk");
    }

    #[test]
    #[should_panic(expected = "without being read in")]
    fn a_change_of_a_chunk_not_read_in_is_refused() {
        let mut table = Temperatures::based(BTreeMap::new());
        table.update(slot(1), |t| t.stats.total = 1);
    }

    #[test]
    fn encodes_as_the_map_of_its_temperatures() {
        let mut hot = Temperature::default();
        hot.apply(&verdict(Class::Hot));
        let map = BTreeMap::from([(slot(4), hot)]);
        let table = Temperatures::whole(map.clone());
        let bytes = postcard::to_allocvec(&table).unwrap();
        assert_eq!(bytes, postcard::to_allocvec(&map).unwrap());
        let decoded: Temperatures = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(decoded, table);
        assert_eq!(decoded.class(&slot(4)), Some(Class::Hot));
    }
}
