//! `Tracked`: an ordered map that remembers which keys changed, so that a checkpoint
//! writes only those into the paged store (`meta::store`).
//!
//! Reads go through `Deref` to the map; every way to change it is a method here that
//! marks the keys it may change, so no change can escape the dirty set (a key marked but
//! left unchanged only costs its rewrite). The dirty set is not part of the value: it is
//! neither encoded nor compared, and a decoded map starts clean.

use std::collections::btree_map::{self, BTreeMap};
use std::collections::BTreeSet;
use std::fmt;
use std::ops::Deref;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An ordered map and the keys changed since the last `take_dirty`.
#[derive(Clone)]
pub struct Tracked<K: Ord, V> {
    map: BTreeMap<K, V>,
    /// Keys changed or removed.
    dirty: BTreeSet<K>,
    /// Every key of the map is changed too (a walk over all values to change them marks
    /// this, not a million keys one by one).
    all: bool,
}

impl<K: Ord, V> Default for Tracked<K, V> {
    fn default() -> Self {
        Tracked { map: BTreeMap::new(), dirty: BTreeSet::new(), all: false }
    }
}

impl<K: Ord + Clone, V> Tracked<K, V> {
    /// A map whose every key is marked (it was never stored).
    pub fn all_dirty(map: BTreeMap<K, V>) -> Self {
        Tracked { map, dirty: BTreeSet::new(), all: true }
    }

    /// A map whose keys are all as stored.
    pub fn clean(map: BTreeMap<K, V>) -> Self {
        Tracked { map, dirty: BTreeSet::new(), all: false }
    }

    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        self.dirty.insert(key.clone());
        self.map.insert(key, value)
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        let removed = self.map.remove(key);
        if removed.is_some() {
            self.dirty.insert(key.clone());
        }
        removed
    }

    /// The value of `key`, to change in place: marked whether or not it then changes.
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let value = self.map.get_mut(key)?;
        self.dirty.insert(key.clone());
        Some(value)
    }

    /// The entry of `key`, marked.
    pub fn entry(&mut self, key: K) -> btree_map::Entry<'_, K, V> {
        self.dirty.insert(key.clone());
        self.map.entry(key)
    }

    /// Keeps the entries `keep` accepts; marks the others.
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &mut V) -> bool) {
        let dirty = &mut self.dirty;
        self.map.retain(|key, value| {
            let kept = keep(key, value);
            if !kept {
                dirty.insert(key.clone());
            }
            kept
        });
    }

    /// Every value, to change in place: every key is marked.
    pub fn values_mut(&mut self) -> btree_map::ValuesMut<'_, K, V> {
        self.all = true;
        self.map.values_mut()
    }

    /// Every entry, to change in place: every key is marked.
    pub fn iter_mut(&mut self) -> btree_map::IterMut<'_, K, V> {
        self.all = true;
        self.map.iter_mut()
    }

    /// Every entry, to change in place *without* marking any: only for a change the
    /// store derives by itself when it reads the entries back (`meta::paged`: the
    /// observation each classification pass repeats, implied by the pass count).
    pub fn iter_mut_implied(&mut self) -> btree_map::IterMut<'_, K, V> {
        self.map.iter_mut()
    }

    /// The value of `key`, to change in place *without* marking it: only for a change of
    /// what memory holds that leaves what the store holds as it is (`meta::paged`: an
    /// inline extent's data, released once stored or held again before it is written).
    pub fn get_mut_unmarked(&mut self, key: &K) -> Option<&mut V> {
        self.map.get_mut(key)
    }

    /// The keys marked since the last `take_dirty`, in order.
    pub fn dirty_keys(&self) -> Box<dyn Iterator<Item = &K> + '_> {
        if self.all {
            return Box::new(self.map.keys());
        }
        Box::new(self.dirty.iter())
    }

    /// The keys changed since the last call, and a clean map.
    pub fn take_dirty(&mut self) -> BTreeSet<K> {
        let mut dirty = std::mem::take(&mut self.dirty);
        if std::mem::take(&mut self.all) {
            dirty.extend(self.map.keys().cloned());
        }
        dirty
    }

    /// How many keys are marked.
    pub fn dirty_len(&self) -> usize {
        if self.all {
            return self.map.len() + self.dirty.iter().filter(|k| !self.map.contains_key(k)).count();
        }
        self.dirty.len()
    }
}

impl<K: Ord, V> Deref for Tracked<K, V> {
    type Target = BTreeMap<K, V>;

    fn deref(&self) -> &BTreeMap<K, V> {
        &self.map
    }
}

impl<K: Ord, V: PartialEq> PartialEq for Tracked<K, V> {
    fn eq(&self, other: &Self) -> bool {
        self.map == other.map
    }
}

impl<K: Ord + fmt::Debug, V: fmt::Debug> fmt::Debug for Tracked<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.map.fmt(f)
    }
}

impl<K: Ord + Serialize, V: Serialize> Serialize for Tracked<K, V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.map.serialize(serializer)
    }
}

impl<'de, K: Ord + Deserialize<'de>, V: Deserialize<'de>> Deserialize<'de> for Tracked<K, V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Tracked { map: BTreeMap::deserialize(deserializer)?, dirty: BTreeSet::new(), all: false })
    }
}

impl<'a, K: Ord, V> IntoIterator for &'a Tracked<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = btree_map::Iter<'a, K, V>;

    fn into_iter(self) -> Self::IntoIter {
        self.map.iter()
    }
}

impl<K: Ord + Clone, V> From<BTreeMap<K, V>> for Tracked<K, V> {
    /// A map built whole, never stored: every key marked.
    fn from(map: BTreeMap<K, V>) -> Self {
        Tracked::all_dirty(map)
    }
}

impl<K: Ord + Clone, V> FromIterator<(K, V)> for Tracked<K, V> {
    /// A map built whole, never stored: every key marked.
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Tracked::all_dirty(iter.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_change_marks_its_key_and_reads_mark_none() {
        let mut map: Tracked<u32, u32> = Tracked::clean((0..10).map(|k| (k, k)).collect());
        assert_eq!(map.get(&3), Some(&3));
        assert_eq!(map.dirty_len(), 0);
        map.insert(20, 1);
        map.remove(&1);
        map.remove(&99);
        *map.get_mut(&2).unwrap() += 1;
        *map.entry(30).or_insert(0) += 1;
        map.retain(|k, _| *k != 5);
        assert_eq!(map.take_dirty().into_iter().collect::<Vec<_>>(), vec![1, 2, 5, 20, 30]);
        assert_eq!(map.dirty_len(), 0);
        map.values_mut().for_each(|v| *v += 1);
        assert_eq!(map.dirty_len(), map.len());
        map.remove(&0);
        assert_eq!(map.take_dirty(), map.keys().copied().chain([0]).collect(), "a removed key stays marked");
        assert_eq!(map.dirty_len(), 0);
    }

    #[test]
    fn the_dirty_set_is_neither_encoded_nor_compared() {
        let mut a: Tracked<u32, u32> = Tracked::default();
        a.insert(1, 2);
        let b = Tracked::clean(BTreeMap::from([(1, 2)]));
        assert_eq!(a, b);
        let bytes = postcard::to_allocvec(&a).unwrap();
        assert_eq!(bytes, postcard::to_allocvec(&BTreeMap::from([(1u32, 2u32)])).unwrap());
        let decoded: Tracked<u32, u32> = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(decoded.dirty_len(), 0);
    }
}
