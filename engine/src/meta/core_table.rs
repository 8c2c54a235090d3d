//! `CoreTable`: a value per extent id — every extent's core (`meta::extents`) — in about
//! the memory the values themselves take. Extent ids are handed out in order and files are mostly written whole, so live
//! ids come in runs: the table cuts the id space into blocks of 64 and keeps, per block
//! holding any, a bitmap of which ids live and their cores packed in id order. A block of
//! 64 live extents costs 64 cores and 32 bytes; a block of one, one core and about 60
//! bytes — where an ordered map costs about 10 bytes an entry more when full, and
//! 20–30 more once changes have split its nodes.
//!
//! Contract: iteration is in ascending id order; a block is never empty (the last
//! removal frees it); `len` counts every core.

use std::collections::BTreeMap;
use std::ops::{Bound, RangeBounds};

use crate::media::device::ExtentId;

const BLOCK_BITS: u32 = 6;
const BLOCK_IDS: u64 = 1 << BLOCK_BITS;

/// One block's live ids (bit `id % 64`) and their cores, in id order.
#[derive(Clone, PartialEq, Eq)]
struct Block<V> {
    live: u64,
    cores: Box<[V]>,
}

impl<V> Block<V> {
    /// Where id bit `bit`'s core is (or goes): how many live ids come before it.
    fn rank(&self, bit: u32) -> usize {
        (self.live & ((1u64 << bit) - 1)).count_ones() as usize
    }
}

/// A value (an extent's core) per extent id, in blocks of 64 ids.
#[derive(Clone, PartialEq, Eq)]
pub struct CoreTable<V> {
    blocks: BTreeMap<u64, Block<V>>,
    len: usize,
}

impl<V> Default for CoreTable<V> {
    fn default() -> Self {
        CoreTable { blocks: BTreeMap::new(), len: 0 }
    }
}

fn split(id: ExtentId) -> (u64, u32) {
    (id.0 >> BLOCK_BITS, (id.0 & (BLOCK_IDS - 1)) as u32)
}

impl<V> CoreTable<V> {
    pub fn get(&self, id: &ExtentId) -> Option<&V> {
        let (block, bit) = split(*id);
        let block = self.blocks.get(&block)?;
        (block.live & (1 << bit) != 0).then(|| &block.cores[block.rank(bit)])
    }

    pub fn contains_key(&self, id: &ExtentId) -> bool {
        self.get(id).is_some()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Puts `core` under `id`; returns the core it replaced.
    pub fn insert(&mut self, id: ExtentId, core: V) -> Option<V> {
        let (key, bit) = split(id);
        let block = self.blocks.entry(key).or_insert_with(|| Block { live: 0, cores: Box::new([]) });
        let at = block.rank(bit);
        if block.live & (1 << bit) != 0 {
            return Some(std::mem::replace(&mut block.cores[at], core));
        }
        let mut cores = std::mem::take(&mut block.cores).into_vec();
        cores.insert(at, core);
        block.cores = cores.into_boxed_slice();
        block.live |= 1 << bit;
        self.len += 1;
        debug_assert_eq!(block.cores.len(), block.live.count_ones() as usize);
        None
    }

    /// Takes `id`'s core out.
    pub fn remove(&mut self, id: &ExtentId) -> Option<V> {
        let (key, bit) = split(*id);
        let block = self.blocks.get_mut(&key)?;
        if block.live & (1 << bit) == 0 {
            return None;
        }
        let at = block.rank(bit);
        let mut cores = std::mem::take(&mut block.cores).into_vec();
        let core = cores.remove(at);
        block.cores = cores.into_boxed_slice();
        block.live &= !(1 << bit);
        self.len -= 1;
        if block.live == 0 {
            self.blocks.remove(&key);
        }
        Some(core)
    }

    /// The cores of ids in `range`, ascending.
    pub fn range(&self, range: impl RangeBounds<ExtentId>) -> impl Iterator<Item = (ExtentId, &V)> + '_ {
        let low = match range.start_bound() {
            Bound::Included(id) => id.0,
            Bound::Excluded(id) => id.0.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let high = match range.end_bound() {
            Bound::Included(id) => Some(id.0),
            Bound::Excluded(id) => id.0.checked_sub(1),
            Bound::Unbounded => Some(u64::MAX),
        };
        let empty = high.is_none_or(|high| high < low);
        let high = high.unwrap_or(0);
        let blocks = if empty { None } else { Some(self.blocks.range(low >> BLOCK_BITS..=high >> BLOCK_BITS)) };
        blocks.into_iter().flatten().flat_map(move |(key, block)| {
            let mut live = block.live;
            let mut at = 0;
            std::iter::from_fn(move || loop {
                if live == 0 {
                    return None;
                }
                let bit = live.trailing_zeros();
                live &= live - 1;
                let id = (key << BLOCK_BITS) | u64::from(bit);
                let core = &block.cores[at];
                at += 1;
                if (low..=high).contains(&id) {
                    return Some((ExtentId(id), core));
                }
            })
        })
    }

    /// Every core, ascending by id.
    pub fn iter(&self) -> impl Iterator<Item = (ExtentId, &V)> + '_ {
        self.range(..)
    }
}

impl<V> FromIterator<(ExtentId, V)> for CoreTable<V> {
    fn from_iter<I: IntoIterator<Item = (ExtentId, V)>>(cores: I) -> Self {
        let mut table = CoreTable::default();
        let mut open: Option<(u64, u64, Vec<V>)> = None;
        fn close<V>(table: &mut CoreTable<V>, open: Option<(u64, u64, Vec<V>)>) {
            if let Some((key, live, cores)) = open {
                table.len += cores.len();
                table.blocks.insert(key, Block { live, cores: cores.into_boxed_slice() });
            }
        }
        for (id, core) in cores {
            let (key, bit) = split(id);
            if let Some((at, live, cores)) = &mut open {
                if *at == key && *live >> bit == 0 {
                    *live |= 1 << bit;
                    cores.push(core);
                    continue;
                }
            }
            close(&mut table, open.take());
            if table.blocks.contains_key(&key) {
                // Not ascending: placed one at a time.
                table.insert(id, core);
            } else {
                open = Some((key, 1 << bit, vec![core]));
            }
        }
        close(&mut table, open);
        table
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A value to tell entries apart (the engine keeps extent cores).
    fn core(len: u32) -> u32 {
        len
    }

    proptest! {
        /// Any sequence of inserts and removals leaves the table answering as an ordered
        /// map does: lookups, length, ranges and iteration order.
        #[test]
        fn answers_as_an_ordered_map(
            start in proptest::collection::vec((0u64..400, 1u32..5), 0..200),
            ops in proptest::collection::vec((any::<bool>(), 0u64..400, 1u32..5), 0..300),
            low in 0u64..420,
            span in 0u64..200,
        ) {
            let mut map: BTreeMap<ExtentId, u32> =
                start.iter().map(|(id, len)| (ExtentId(*id), core(*len))).collect();
            let mut table: CoreTable<u32> = map.iter().map(|(id, c)| (*id, *c)).collect();
            for (insert, id, len) in ops {
                let id = ExtentId(id);
                if insert {
                    prop_assert_eq!(table.insert(id, core(len)), map.insert(id, core(len)));
                } else {
                    prop_assert_eq!(table.remove(&id), map.remove(&id));
                }
                prop_assert_eq!(table.len(), map.len());
            }
            for id in 0..420 {
                prop_assert_eq!(table.get(&ExtentId(id)), map.get(&ExtentId(id)));
            }
            let listed: Vec<(ExtentId, u32)> = table.iter().map(|(id, c)| (id, *c)).collect();
            prop_assert_eq!(listed, map.iter().map(|(id, c)| (*id, *c)).collect::<Vec<_>>());
            let range = ExtentId(low)..ExtentId(low + span);
            let ranged: Vec<ExtentId> = table.range(range.clone()).map(|(id, _)| id).collect();
            prop_assert_eq!(ranged, map.range(range).map(|(id, _)| *id).collect::<Vec<_>>());
            let inclusive: Vec<ExtentId> = table.range(ExtentId(low)..=ExtentId(low + span)).map(|(id, _)| id).collect();
            prop_assert_eq!(inclusive, map.range(ExtentId(low)..=ExtentId(low + span)).map(|(id, _)| *id).collect::<Vec<_>>());
            prop_assert!(table.blocks.values().all(|b| b.live != 0 && b.cores.len() == b.live.count_ones() as usize));
        }
    }

    #[test]
    fn unordered_input_builds_the_same_table() {
        let ids = [5u64, 700, 3, 64, 63, 65, 700, 1];
        let table: CoreTable<u32> = ids.iter().map(|id| (ExtentId(*id), core(*id as u32 + 1))).collect();
        let mut sorted: Vec<u64> = ids.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(table.iter().map(|(id, _)| id.0).collect::<Vec<_>>(), sorted);
        assert_eq!(table.len(), sorted.len());
        assert_eq!(table.get(&ExtentId(700)), Some(&701));
    }
}
