//! `Nested`: a map of maps — a directory's entries by name, a file's extents by chunk —
//! that remembers which *inner* keys changed, so that a checkpoint writes what changed in
//! a directory of a million names or a file of a million chunks, not all of it.
//!
//! Reads go through `Deref` to the map of maps; every way to change it is a method here
//! that marks what it may change: an inner key as `(outer, Some(inner))`, and the outer
//! key's presence (an inner map, even an empty one — an empty directory) as `(outer,
//! None)`. Removing an outer key marks it and each of its inner keys. As with `Tracked`,
//! the dirty set is neither encoded nor compared, and a decoded map starts clean.

use std::collections::btree_map::{self, BTreeMap};
use std::collections::BTreeSet;
use std::fmt;
use std::ops::Deref;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What changed: an outer key's presence (`None`) or one of its inner keys.
pub type Mark<K, K2> = (K, Option<K2>);

/// A map of maps and the keys changed since the last `take_dirty`.
#[derive(Clone)]
pub struct Nested<K: Ord, K2: Ord, V> {
    map: BTreeMap<K, BTreeMap<K2, V>>,
    dirty: BTreeSet<Mark<K, K2>>,
    /// Every key is changed (a map built whole, never stored).
    all: bool,
}

impl<K: Ord, K2: Ord, V> Default for Nested<K, K2, V> {
    fn default() -> Self {
        Nested { map: BTreeMap::new(), dirty: BTreeSet::new(), all: false }
    }
}

impl<K: Ord + Clone, K2: Ord + Clone, V> Nested<K, K2, V> {
    /// A map whose every key is marked (it was never stored).
    pub fn all_dirty(map: BTreeMap<K, BTreeMap<K2, V>>) -> Self {
        Nested { map, dirty: BTreeSet::new(), all: true }
    }

    /// A map whose keys are all as stored.
    pub fn clean(map: BTreeMap<K, BTreeMap<K2, V>>) -> Self {
        Nested { map, dirty: BTreeSet::new(), all: false }
    }

    /// Makes sure `key` has an inner map (empty if new).
    pub fn ensure(&mut self, key: K) {
        if let btree_map::Entry::Vacant(vacant) = self.map.entry(key.clone()) {
            vacant.insert(BTreeMap::new());
            self.dirty.insert((key, None));
        }
    }

    /// Puts `value` under `key`'s `inner` key, giving `key` an inner map if it had none.
    pub fn insert(&mut self, key: K, inner: K2, value: V) -> Option<V> {
        self.ensure(key.clone());
        self.dirty.insert((key.clone(), Some(inner.clone())));
        self.map.get_mut(&key).and_then(|map| map.insert(inner, value))
    }

    /// Takes `inner` out of `key`'s map; the map stays, even when it is left empty.
    pub fn remove_inner(&mut self, key: &K, inner: &K2) -> Option<V> {
        let removed = self.map.get_mut(key)?.remove(inner)?;
        self.dirty.insert((key.clone(), Some(inner.clone())));
        Some(removed)
    }

    /// Takes `key` and its whole inner map out.
    pub fn remove(&mut self, key: &K) -> Option<BTreeMap<K2, V>> {
        let removed = self.map.remove(key)?;
        self.dirty.insert((key.clone(), None));
        self.dirty.extend(removed.keys().map(|inner| (key.clone(), Some(inner.clone()))));
        Some(removed)
    }

    /// What changed since the last call, in order (an outer key's presence before its
    /// inner keys); the map is clean after.
    pub fn take_dirty(&mut self) -> BTreeSet<Mark<K, K2>> {
        let mut dirty = std::mem::take(&mut self.dirty);
        if std::mem::take(&mut self.all) {
            for (key, inner) in &self.map {
                dirty.insert((key.clone(), None));
                dirty.extend(inner.keys().map(|k2| (key.clone(), Some(k2.clone()))));
            }
        }
        dirty
    }
}

impl<K: Ord, K2: Ord, V> Deref for Nested<K, K2, V> {
    type Target = BTreeMap<K, BTreeMap<K2, V>>;

    fn deref(&self) -> &BTreeMap<K, BTreeMap<K2, V>> {
        &self.map
    }
}

impl<K: Ord, K2: Ord, V: PartialEq> PartialEq for Nested<K, K2, V> {
    fn eq(&self, other: &Self) -> bool {
        self.map == other.map
    }
}

impl<K: Ord + fmt::Debug, K2: Ord + fmt::Debug, V: fmt::Debug> fmt::Debug for Nested<K, K2, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.map.fmt(f)
    }
}

impl<K: Ord + Serialize, K2: Ord + Serialize, V: Serialize> Serialize for Nested<K, K2, V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.map.serialize(serializer)
    }
}

impl<'de, K: Ord + Deserialize<'de>, K2: Ord + Deserialize<'de>, V: Deserialize<'de>> Deserialize<'de>
    for Nested<K, K2, V>
{
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Nested { map: BTreeMap::deserialize(deserializer)?, dirty: BTreeSet::new(), all: false })
    }
}

impl<'a, K: Ord, K2: Ord, V> IntoIterator for &'a Nested<K, K2, V> {
    type Item = (&'a K, &'a BTreeMap<K2, V>);
    type IntoIter = btree_map::Iter<'a, K, BTreeMap<K2, V>>;

    fn into_iter(self) -> Self::IntoIter {
        self.map.iter()
    }
}

impl<K: Ord + Clone, K2: Ord + Clone, V> From<BTreeMap<K, BTreeMap<K2, V>>> for Nested<K, K2, V> {
    /// A map built whole, never stored: every key marked.
    fn from(map: BTreeMap<K, BTreeMap<K2, V>>) -> Self {
        Nested::all_dirty(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_change_marks_what_it_changed_and_reads_mark_nothing() {
        let mut map: Nested<u32, u32, u32> =
            Nested::clean((0..3).map(|k| (k, (0..4).map(|i| (i, i)).collect())).collect());
        assert_eq!(map.get(&1).and_then(|m| m.get(&2)), Some(&2));
        assert!(map.take_dirty().is_empty());
        map.insert(1, 9, 9);
        map.remove_inner(&2, &3);
        map.remove_inner(&2, &42);
        map.ensure(7);
        map.ensure(0);
        map.insert(8, 1, 1);
        let marks: Vec<Mark<u32, u32>> = map.take_dirty().into_iter().collect();
        assert_eq!(marks, vec![(1, Some(9)), (2, Some(3)), (7, None), (8, None), (8, Some(1))]);
        assert_eq!(map.get(&7), Some(&BTreeMap::new()), "an ensured key holds an empty map");
        map.remove(&0);
        let marks: Vec<Mark<u32, u32>> = map.take_dirty().into_iter().collect();
        assert_eq!(marks, vec![(0, None), (0, Some(0)), (0, Some(1)), (0, Some(2)), (0, Some(3))]);
        let mut whole = Nested::all_dirty(map.deref().clone());
        assert_eq!(whole.take_dirty().len(), map.len() + map.values().map(BTreeMap::len).sum::<usize>());
        assert!(whole.take_dirty().is_empty());
    }

    #[test]
    fn the_dirty_set_is_neither_encoded_nor_compared() {
        let mut a: Nested<u32, u32, u32> = Nested::default();
        a.insert(1, 2, 3);
        let b = Nested::clean(BTreeMap::from([(1, BTreeMap::from([(2, 3)]))]));
        assert_eq!(a, b);
        let bytes = postcard::to_allocvec(&a).unwrap();
        assert_eq!(bytes, postcard::to_allocvec(&BTreeMap::from([(1u32, BTreeMap::from([(2u32, 3u32)]))])).unwrap());
        let mut decoded: Nested<u32, u32, u32> = postcard::from_bytes(&bytes).unwrap();
        assert!(decoded.take_dirty().is_empty());
        assert_eq!(decoded, a);
    }
}
