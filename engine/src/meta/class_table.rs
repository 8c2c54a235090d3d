//! `ClassTable`: the class a classification pass settled on for every chunk, in two bits
//! a chunk. Chunks are grouped by file and by runs of 32 consecutive indexes, each run
//! one 64-bit word in an ordered map: a file of ten chunks costs one entry (~25 bytes)
//! where a map entry per chunk cost ~19 bytes each; a sparse file costs one word per run
//! that holds a classified chunk, never space for the holes between.
//!
//! Contract: iteration is in chunk-slot order; no word is zero (the last class cleared
//! removes it); `len` counts the classified chunks.

use std::collections::BTreeMap;

use crate::meta::ids::{ChunkSlot, Ino};
use crate::temperature::Class;

const RUN_BITS: u32 = 5;
const RUN_CHUNKS: u64 = 1 << RUN_BITS;

fn code(class: Option<Class>) -> u64 {
    match class {
        None => 0,
        Some(Class::Hot) => 1,
        Some(Class::Warm) => 2,
        Some(Class::Cold) => 3,
    }
}

fn class_of(code: u64) -> Option<Class> {
    match code & 3 {
        1 => Some(Class::Hot),
        2 => Some(Class::Warm),
        3 => Some(Class::Cold),
        _ => None,
    }
}

/// Where chunk `slot`'s two bits are: its run's key and the bit offset in the word.
fn place(slot: ChunkSlot) -> ((Ino, u64), u32) {
    ((slot.ino, slot.index >> RUN_BITS), 2 * (slot.index & (RUN_CHUNKS - 1)) as u32)
}

/// Every classified chunk's class.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ClassTable {
    runs: BTreeMap<(Ino, u64), u64>,
    len: usize,
}

impl ClassTable {
    pub fn get(&self, slot: &ChunkSlot) -> Option<Class> {
        let (key, shift) = place(*slot);
        self.runs.get(&key).and_then(|word| class_of(word >> shift))
    }

    /// Sets (or, with `None`, clears) chunk `slot`'s class.
    pub fn set(&mut self, slot: ChunkSlot, class: Option<Class>) {
        let (key, shift) = place(slot);
        let word = self.runs.get(&key).copied().unwrap_or(0);
        let before = (word >> shift) & 3;
        let after = (word & !(3 << shift)) | (code(class) << shift);
        match (before != 0, class.is_some()) {
            (false, true) => self.len += 1,
            (true, false) => self.len -= 1,
            _ => {}
        }
        if after == 0 {
            self.runs.remove(&key);
        } else {
            self.runs.insert(key, after);
        }
    }

    /// How many chunks have a class.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Every classified chunk with its class, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (ChunkSlot, Class)> + '_ {
        Self::expand(self.runs.iter())
    }

    /// The classified chunks of file `ino`, in slot order.
    pub fn of(&self, ino: Ino) -> impl Iterator<Item = (ChunkSlot, Class)> + '_ {
        Self::expand(self.runs.range((ino, 0)..=(ino, u64::MAX)))
    }

    fn expand<'a>(
        runs: impl Iterator<Item = (&'a (Ino, u64), &'a u64)> + 'a,
    ) -> impl Iterator<Item = (ChunkSlot, Class)> + 'a {
        runs.flat_map(|((ino, run), word)| {
            (0..RUN_CHUNKS).filter_map(move |i| {
                let class = class_of(word >> (2 * i))?;
                Some((ChunkSlot { ino: *ino, index: (run << RUN_BITS) | i }, class))
            })
        })
    }
}

impl FromIterator<(ChunkSlot, Class)> for ClassTable {
    /// Built in one pass when `classes` come in slot order (as the store reads them: the
    /// map's nodes packed full), one at a time otherwise.
    fn from_iter<I: IntoIterator<Item = (ChunkSlot, Class)>>(classes: I) -> Self {
        let mut runs: Vec<((Ino, u64), u64)> = Vec::new();
        let mut len = 0;
        let mut rest = Vec::new();
        for (slot, class) in classes {
            let (key, shift) = place(slot);
            match runs.last_mut() {
                Some((last, word)) if *last == key && *word >> shift == 0 => *word |= code(Some(class)) << shift,
                Some((last, _)) if *last >= key => {
                    rest.push((slot, class));
                    continue;
                }
                _ => runs.push((key, code(Some(class)) << shift)),
            }
            len += 1;
        }
        let mut table = ClassTable { runs: runs.into_iter().collect(), len };
        for (slot, class) in rest {
            table.set(slot, Some(class));
        }
        table
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn class(n: u8) -> Option<Class> {
        class_of(u64::from(n))
    }

    proptest! {
        /// Any sequence of sets and clears answers as a map of chunk to class does.
        #[test]
        fn answers_as_a_map_of_chunks(
            ops in proptest::collection::vec((1u64..4, prop_oneof![0u64..70, 1_000_000u64..1_000_040], 0u8..4), 0..300),
        ) {
            let mut map: BTreeMap<ChunkSlot, Class> = BTreeMap::new();
            let mut table = ClassTable::default();
            for (ino, index, n) in ops {
                let slot = ChunkSlot { ino: Ino(ino), index };
                table.set(slot, class(n));
                match class(n) {
                    Some(c) => map.insert(slot, c),
                    None => map.remove(&slot),
                };
                prop_assert_eq!(table.get(&slot), class(n));
                prop_assert_eq!(table.len(), map.len());
            }
            prop_assert_eq!(table.iter().collect::<Vec<_>>(), map.iter().map(|(s, c)| (*s, *c)).collect::<Vec<_>>());
            for ino in 1..4 {
                let of: Vec<(ChunkSlot, Class)> = map.iter().filter(|(s, _)| s.ino == Ino(ino)).map(|(s, c)| (*s, *c)).collect();
                prop_assert_eq!(table.of(Ino(ino)).collect::<Vec<_>>(), of);
            }
            prop_assert!(table.runs.values().all(|word| *word != 0));
            let rebuilt: ClassTable = map.iter().map(|(s, c)| (*s, *c)).collect();
            prop_assert!(rebuilt == table);
            let reversed: ClassTable = map.iter().rev().map(|(s, c)| (*s, *c)).collect();
            prop_assert!(reversed == table);
        }
    }
}
