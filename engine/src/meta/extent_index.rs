//! Indexes over the extent records that the metadata state keeps but never stores:
//! which extents have a fragment on each disk, which extents are short of fragments,
//! grouped by how many more they can lose, which chunks tiering wants moved to another
//! policy, which extents the scrub pass in progress still has to check, and how many
//! extents and bytes each policy and each temperature class holds (what a metrics
//! scrape reports).
//!
//! Contract: the index is a pure function of the state it belongs to. `MetaState::apply`
//! keeps it in the same step that changes what it indexes, `MetaState::rebuild_indexes`
//! recomputes it after a checkpoint is decoded, and `MetaState::check` compares it with
//! a scan of every record (after every commit in tests and the simulator). Nothing here
//! reads a disk or the clock.
//!
//! The sets are compressed bitmaps (`roaring`): extent ids are handed out in order, so a
//! disk's set of ten million ids costs about a megabyte, where an ordered set of them
//! would cost hundreds — and a failed disk's set is walked in id order.

use std::collections::{BTreeMap, BTreeSet};

use roaring::RoaringTreemap;

use crate::base::policy::Policy;
use crate::media::device::ExtentId;
use crate::meta::ids::{ChunkSlot, DiskId};
use crate::temperature::Class;

/// The extents on each disk, those short of fragments by spare, the chunks whose extent
/// tiering wants under another policy, and the extents the scrub pass still owes a check.
#[derive(Clone, Debug, Default)]
pub struct ExtentIndex {
    /// Per disk, the extents naming a fragment there. A disk that holds none has no set.
    on_disk: BTreeMap<DiskId, RoaringTreemap>,
    /// `at_risk[s]`: the extents that need a fragment rewritten and can lose `s` more
    /// fragments and still be read. Each extent is in at most one of them.
    at_risk: Vec<RoaringTreemap>,
    /// Chunks whose extent is not under the policy tiering wants for it.
    to_migrate: BTreeSet<ChunkSlot>,
    /// Extents the scrub pass in progress has yet to check (empty without a pass).
    unscrubbed: RoaringTreemap,
    /// Extents and their bytes, per policy (every extent, layers included).
    by_policy: BTreeMap<Policy, Tally>,
    /// Chunks and their extents' bytes, per class a pass settled on (`None`: no pass
    /// judged the chunk yet). A chunk's layers are not counted.
    by_class: BTreeMap<Option<Class>, Tally>,
}

/// How many, and how many bytes (the metrics' `Count`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Tally {
    pub extents: u64,
    pub bytes: u64,
}

impl Tally {
    /// Both tallies together.
    pub fn plus(self, other: Tally) -> Tally {
        Tally { extents: self.extents + other.extents, bytes: self.bytes + other.bytes }
    }

    fn add(&mut self, bytes: u64) {
        self.extents += 1;
        self.bytes += bytes;
    }

    fn take(&mut self, bytes: u64) {
        debug_assert!(self.extents > 0 && self.bytes >= bytes, "a tally taken below zero");
        self.extents = self.extents.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(bytes);
    }
}

impl PartialEq for ExtentIndex {
    /// Equal when the same extents are indexed the same way; how the bitmaps happen to
    /// store them does not matter.
    fn eq(&self, other: &Self) -> bool {
        let sets = |index: &ExtentIndex| -> Vec<(DiskId, Vec<u64>)> {
            index.on_disk.iter().filter(|(_, s)| !s.is_empty()).map(|(d, s)| (*d, s.iter().collect())).collect()
        };
        let risk = |index: &ExtentIndex| -> Vec<(usize, u64)> { index.at_risk().map(|(s, id)| (s, id.0)).collect() };
        sets(self) == sets(other)
            && risk(self) == risk(other)
            && self.to_migrate == other.to_migrate
            && self.unscrubbed.iter().eq(other.unscrubbed.iter())
            && tallies(&self.by_policy) == tallies(&other.by_policy)
            && tallies(&self.by_class) == tallies(&other.by_class)
    }
}

/// The tallies that count something (an emptied one is kept until refiled).
fn tallies<K: Ord + Copy>(map: &BTreeMap<K, Tally>) -> Vec<(K, Tally)> {
    map.iter().filter(|(_, t)| t.extents > 0).map(|(k, t)| (*k, *t)).collect()
}

impl ExtentIndex {
    /// Counts an extent of `bytes` under `policy` (`added`), or stops counting it.
    pub fn tally_policy(&mut self, policy: Policy, bytes: u64, added: bool) {
        let tally = self.by_policy.entry(policy).or_default();
        if added {
            tally.add(bytes);
        } else {
            tally.take(bytes);
        }
    }

    /// Counts a chunk of `bytes` under `class` (`added`), or stops counting it.
    pub fn tally_class(&mut self, class: Option<Class>, bytes: u64, added: bool) {
        let tally = self.by_class.entry(class).or_default();
        if added {
            tally.add(bytes);
        } else {
            tally.take(bytes);
        }
    }

    /// Extents and bytes per policy.
    pub fn by_policy(&self) -> impl Iterator<Item = (Policy, Tally)> + '_ {
        self.by_policy.iter().filter(|(_, t)| t.extents > 0).map(|(p, t)| (*p, *t))
    }

    /// Chunks and bytes per class (`None`: not judged yet).
    pub fn by_class(&self) -> impl Iterator<Item = (Option<Class>, Tally)> + '_ {
        self.by_class.iter().filter(|(_, t)| t.extents > 0).map(|(c, t)| (*c, *t))
    }

    /// Records that extent `id` names a fragment on each of `disks`.
    pub fn add_fragments(&mut self, id: ExtentId, disks: &[DiskId]) {
        for disk in disks {
            self.on_disk.entry(*disk).or_default().insert(id.0);
        }
    }

    /// Records that extent `id` no longer names a fragment on any of `disks`.
    pub fn remove_fragments(&mut self, id: ExtentId, disks: &[DiskId]) {
        for disk in disks {
            if let Some(set) = self.on_disk.get_mut(disk) {
                set.remove(id.0);
                if set.is_empty() {
                    self.on_disk.remove(disk);
                }
            }
        }
    }

    /// Takes `other`'s per-disk sets (this index has none yet).
    pub fn take_disks(&mut self, other: ExtentIndex) {
        debug_assert!(self.on_disk.is_empty());
        self.on_disk = other.on_disk;
    }

    /// Takes `other`'s tallies and migrations (this index has none yet).
    pub fn take_tallies_and_migrations(&mut self, other: ExtentIndex) {
        debug_assert!(self.by_policy.is_empty() && self.by_class.is_empty() && self.to_migrate.is_empty());
        self.by_policy = other.by_policy;
        self.by_class = other.by_class;
        self.to_migrate = other.to_migrate;
    }

    /// An index of the extents on each disk built from records visited in id order:
    /// ids are buffered per disk and appended in runs (a bitmap's own `insert` and
    /// `push` search the container each time).
    pub fn from_records<'a>(records: impl Iterator<Item = (ExtentId, &'a [DiskId])>) -> ExtentIndex {
        const RUN: usize = 4096;
        let mut index = ExtentIndex::default();
        let mut pending: BTreeMap<DiskId, Vec<u64>> = BTreeMap::new();
        let flush = |index: &mut ExtentIndex, disk: DiskId, ids: &mut Vec<u64>| {
            let set = index.on_disk.entry(disk).or_default();
            let appended = set.append(ids.drain(..));
            debug_assert!(appended.is_ok(), "records must come in id order");
        };
        for (id, disks) in records {
            for disk in disks {
                let ids = pending.entry(*disk).or_default();
                ids.push(id.0);
                if ids.len() == RUN {
                    flush(&mut index, *disk, ids);
                }
            }
        }
        for (disk, mut ids) in pending {
            if !ids.is_empty() {
                flush(&mut index, disk, &mut ids);
            }
        }
        index
    }

    /// The disks that hold a fragment of some extent.
    pub fn disks(&self) -> impl Iterator<Item = DiskId> + '_ {
        self.on_disk.keys().copied()
    }

    /// The extents with a fragment on `disk`, in id order.
    pub fn on_disk(&self, disk: DiskId) -> impl Iterator<Item = ExtentId> + '_ {
        self.on_disk.get(&disk).into_iter().flat_map(|set| set.iter().map(ExtentId))
    }

    /// How many extents have a fragment on `disk`.
    pub fn count_on_disk(&self, disk: DiskId) -> u64 {
        self.on_disk.get(&disk).map_or(0, RoaringTreemap::len)
    }

    /// The extents with a fragment on `disk` that are short of fragments now.
    pub fn at_risk_on_disk(&self, disk: DiskId) -> RoaringTreemap {
        let Some(on_disk) = self.on_disk.get(&disk) else { return RoaringTreemap::new() };
        self.at_risk.iter().map(|level| level & on_disk).fold(RoaringTreemap::new(), |all, level| all | level)
    }

    /// Files extent `id` as short of fragments with `spare` more to lose, or (`None`) as
    /// whole; it leaves whatever level it was in.
    pub fn set_risk(&mut self, id: ExtentId, spare: Option<usize>) {
        for level in &mut self.at_risk {
            if level.remove(id.0) {
                break;
            }
        }
        if let Some(spare) = spare {
            if self.at_risk.len() <= spare {
                self.at_risk.resize_with(spare + 1, RoaringTreemap::new);
            }
            self.at_risk[spare].insert(id.0);
        }
        while self.at_risk.last().is_some_and(RoaringTreemap::is_empty) {
            self.at_risk.pop();
        }
        debug_assert!(self.at_risk.last().is_none_or(|level| !level.is_empty()));
    }

    /// The extents short of fragments, most endangered first: by spare, then by id.
    pub fn at_risk(&self) -> impl Iterator<Item = (usize, ExtentId)> + '_ {
        self.at_risk.iter().enumerate().flat_map(|(spare, level)| level.iter().map(move |id| (spare, ExtentId(id))))
    }

    /// How many extents are short of fragments.
    pub fn at_risk_len(&self) -> u64 {
        self.at_risk.iter().map(RoaringTreemap::len).sum()
    }

    /// Files the chunk in `slot` as wanted elsewhere by tiering, or not.
    pub fn set_migration(&mut self, slot: ChunkSlot, wanted: bool) {
        if wanted {
            self.to_migrate.insert(slot);
        } else {
            self.to_migrate.remove(&slot);
        }
    }

    /// Forgets every chunk of the file `ino`.
    pub fn forget_migrations_of(&mut self, ino: crate::meta::ids::Ino) {
        let slots = ChunkSlot { ino, index: 0 }..=ChunkSlot { ino, index: u64::MAX };
        let gone: Vec<ChunkSlot> = self.to_migrate.range(slots).copied().collect();
        for slot in gone {
            self.to_migrate.remove(&slot);
        }
    }

    /// Replaces every chunk filed for migration with `slots`.
    pub fn set_migrations(&mut self, slots: BTreeSet<ChunkSlot>) {
        self.to_migrate = slots;
    }

    /// The chunks tiering wants moved, in slot order.
    pub fn migrations(&self) -> impl Iterator<Item = ChunkSlot> + '_ {
        self.to_migrate.iter().copied()
    }

    /// How many chunks tiering wants moved.
    pub fn migrations_len(&self) -> usize {
        self.to_migrate.len()
    }

    /// Files extent `id` as owed a check by the scrub pass, or not.
    pub fn set_unscrubbed(&mut self, id: ExtentId, owed: bool) {
        if owed {
            self.unscrubbed.insert(id.0);
        } else {
            self.unscrubbed.remove(id.0);
        }
    }

    /// Replaces the extents the scrub pass owes a check with `ids` (ascending).
    pub fn set_all_unscrubbed(&mut self, ids: impl Iterator<Item = ExtentId>) {
        let mut set = RoaringTreemap::new();
        for id in ids {
            let appended = set.try_push(id.0).is_ok();
            debug_assert!(appended, "extent ids must come in ascending order");
        }
        self.unscrubbed = set;
    }

    /// The extents the scrub pass still has to check, in id order.
    pub fn unscrubbed(&self) -> impl Iterator<Item = ExtentId> + '_ {
        self.unscrubbed.iter().map(ExtentId)
    }

    /// How many extents the scrub pass still has to check.
    pub fn unscrubbed_len(&self) -> u64 {
        self.unscrubbed.len()
    }

    /// Whether the scrub pass still has to check extent `id`.
    pub fn is_unscrubbed(&self, id: ExtentId) -> bool {
        self.unscrubbed.contains(id.0)
    }

    /// Whether extent `id` is short of fragments.
    pub fn is_at_risk(&self, id: ExtentId) -> bool {
        self.at_risk.iter().any(|level| level.contains(id.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disk_set_follows_its_fragments_and_disappears_when_empty() {
        let mut index = ExtentIndex::default();
        index.add_fragments(ExtentId(7), &[DiskId(1), DiskId(2)]);
        index.add_fragments(ExtentId(3), &[DiskId(2)]);
        assert_eq!(index.on_disk(DiskId(2)).collect::<Vec<_>>(), vec![ExtentId(3), ExtentId(7)]);
        index.remove_fragments(ExtentId(7), &[DiskId(1), DiskId(2)]);
        assert_eq!(index.count_on_disk(DiskId(1)), 0);
        assert!(!index.on_disk.contains_key(&DiskId(1)));
        assert_eq!(index.on_disk(DiskId(2)).collect::<Vec<_>>(), vec![ExtentId(3)]);
    }

    #[test]
    fn an_index_built_from_records_in_runs_equals_one_built_a_record_at_a_time() {
        let disks = [DiskId(1), DiskId(2), DiskId(3)];
        let records: Vec<(ExtentId, Vec<DiskId>)> =
            (1..20_000u64).map(|id| (ExtentId(id * 3), disks[(id % 3) as usize..].to_vec())).collect();
        let built = ExtentIndex::from_records(records.iter().map(|(id, d)| (*id, d.as_slice())));
        let mut one_by_one = ExtentIndex::default();
        for (id, d) in &records {
            one_by_one.add_fragments(*id, d);
        }
        assert_eq!(built, one_by_one);
        assert_eq!(built.count_on_disk(DiskId(3)), 19_999);
        assert_eq!(built.count_on_disk(DiskId(1)), records.iter().filter(|(_, d)| d.len() == 3).count() as u64);
    }

    #[test]
    fn risk_orders_by_spare_then_id_and_an_extent_sits_in_one_level() {
        let mut index = ExtentIndex::default();
        index.set_risk(ExtentId(9), Some(0));
        index.set_risk(ExtentId(2), Some(1));
        index.set_risk(ExtentId(5), Some(0));
        index.set_risk(ExtentId(2), Some(0));
        assert_eq!(index.at_risk().collect::<Vec<_>>(), vec![(0, ExtentId(2)), (0, ExtentId(5)), (0, ExtentId(9))]);
        assert_eq!(index.at_risk_len(), 3);
        index.set_risk(ExtentId(5), None);
        index.set_risk(ExtentId(9), Some(2));
        assert_eq!(index.at_risk().collect::<Vec<_>>(), vec![(0, ExtentId(2)), (2, ExtentId(9))]);
        index.set_risk(ExtentId(9), None);
        assert_eq!(index.at_risk.len(), 1, "empty top levels are dropped");
    }

    #[test]
    fn at_risk_on_a_disk_is_the_intersection() {
        let mut index = ExtentIndex::default();
        index.add_fragments(ExtentId(1), &[DiskId(1)]);
        index.add_fragments(ExtentId(2), &[DiskId(1)]);
        index.add_fragments(ExtentId(3), &[DiskId(2)]);
        index.set_risk(ExtentId(2), Some(1));
        index.set_risk(ExtentId(3), Some(0));
        assert_eq!(index.at_risk_on_disk(DiskId(1)).iter().collect::<Vec<_>>(), vec![2]);
        assert!(index.at_risk_on_disk(DiskId(4)).is_empty());
    }

    #[test]
    fn equality_ignores_how_the_bitmaps_store_the_same_sets() {
        let mut grown = ExtentIndex::default();
        for id in 0..10_000 {
            grown.add_fragments(ExtentId(id), &[DiskId(1)]);
        }
        for id in 10..10_000 {
            grown.remove_fragments(ExtentId(id), &[DiskId(1)]);
        }
        let mut direct = ExtentIndex::default();
        for id in 0..10 {
            direct.add_fragments(ExtentId(id), &[DiskId(1)]);
        }
        assert_eq!(grown, direct);
        direct.add_fragments(ExtentId(11), &[DiskId(1)]);
        assert_ne!(grown, direct);
    }
}
