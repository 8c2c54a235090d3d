//! How the metadata state keeps what it indexes but never stores — each directory's
//! parent and the extent index (`meta::extent_index`) — and the questions those indexes
//! answer: what a disk means for its fragments, which fragments of an extent are
//! missing and how many more it can lose, which policy tiering wants for a chunk, which
//! extents the scrub pass still owes a check.
//!
//! Contract: `MetaState::apply` calls the `*_after` functions in the same step as the
//! change, so an index always equals what `scanned_*` computes from the state alone;
//! `rebuild_indexes` recomputes all of it after a checkpoint is decoded; `check()`
//! compares each index with its scan. Deterministic: ordered maps, no clock, no floats.

use std::collections::{BTreeMap, BTreeSet};

use crate::base::policy::Policy;
use crate::media::device::ExtentId;
use crate::meta::extent_index::ExtentIndex;
use crate::meta::ids::ChunkSlot;
use crate::meta::state::{
    DiskFate, DiskId, DiskState, ExtentCore, ExtentRecord, FreedExtent, Ino, InodeKind, MetaState, Op,
};
use crate::temperature::Class;

impl MetaState {
    /// Which extents the scrub pass in progress covers: those older than its limit that
    /// were not checked since it started.
    pub(super) fn scrub_pass_key(&self) -> Option<(i64, u64)> {
        self.scrub.pass.map(|pass| (pass.started_secs, pass.extent_limit))
    }

    /// Whether the scrub pass in progress still has to check extent `id`.
    pub(super) fn scrub_owes(&self, id: ExtentId) -> bool {
        self.scrub.pass.is_some_and(|pass| {
            id.0 < pass.extent_limit
                && self.extents.contains_key(&id)
                && self.scrubbed.get(&id).is_none_or(|at| *at < pass.started_secs)
        })
    }

    /// Every extent the scrub pass still has to check, in id order, from a visit of each.
    pub(super) fn scanned_unscrubbed(&self) -> impl Iterator<Item = ExtentId> + '_ {
        let limit = self.scrub.pass.map_or(0, |pass| pass.extent_limit);
        self.extents.range(..ExtentId(limit)).map(|(id, _)| id).filter(|id| self.scrub_owes(*id))
    }

    /// Files every extent the scrub pass still has to check, from a visit of each.
    pub(super) fn refile_unscrubbed(&mut self) {
        let mut index = std::mem::take(&mut self.extent_index);
        index.set_all_unscrubbed(self.scanned_unscrubbed());
        self.extent_index = index;
    }

    /// Refiles the extents whose scrub check `op` may have changed: those it checked,
    /// stored or freed.
    pub(super) fn rescrub_after(&mut self, op: &Op, freed: &[FreedExtent]) {
        let mut ids: Vec<ExtentId> = freed.iter().map(|r| r.id).collect();
        match op {
            Op::Scrubbed { extents, .. } => ids.extend(extents),
            Op::SetExtent { extent: Some(record), .. } | Op::PutExtent(record) => ids.push(record.id),
            Op::PutLayer { extent, .. } => ids.push(extent.id),
            _ => {}
        }
        for id in ids {
            let owed = self.scrub_owes(id);
            self.extent_index.set_unscrubbed(id, owed);
        }
    }

    /// Stores `record`, replacing any record of the same id, and indexes its fragments.
    pub(super) fn insert_extent(&mut self, record: ExtentRecord) {
        if let Some(old) = self.extents.get(&record.id) {
            self.extent_index.remove_fragments(record.id, &old.fragments);
            self.extent_index.tally_policy(old.policy, u64::from(old.len), false);
        }
        self.extent_index.add_fragments(record.id, &record.fragments);
        self.extent_index.tally_policy(record.policy, u64::from(record.len), true);
        self.extents.insert(record);
    }

    /// Removes extent `id`'s record, and its fragments from the index.
    pub(super) fn remove_extent(&mut self, id: ExtentId) -> Option<FreedExtent> {
        let core = self.extents.remove(&id)?;
        self.extent_index.remove_fragments(id, &core.fragments);
        self.extent_index.tally_policy(core.policy, u64::from(core.len), false);
        Some(FreedExtent { id, core })
    }

    /// The chunks whose class tally `op` may change: those it stores an extent in,
    /// removes with their file, or judges in a pass. Read before the op is applied.
    pub(super) fn class_slots(&self, op: &Op) -> Vec<ChunkSlot> {
        match op {
            Op::SetExtent { ino, index, .. } => vec![ChunkSlot { ino: *ino, index: *index }],
            Op::RemoveInode(ino) => self.chunk_slots(*ino).collect(),
            Op::ClassifyPass { verdicts: slots, .. }
            | Op::ClassifyChanges { changed: slots, .. }
            | Op::ClassifyMore { changed: slots } => slots.iter().map(|(slot, _)| *slot).collect(),
            _ => Vec::new(),
        }
    }

    /// Counts the chunks in `slots` under their class (`added`), or stops counting them.
    pub(super) fn tally_classes(&mut self, slots: &[ChunkSlot], added: bool) {
        for slot in slots {
            let Some(bytes) = self.slot_extent(*slot).map(|r| u64::from(r.len)) else { continue };
            let class = self.temperature.class(slot);
            self.extent_index.tally_class(class, bytes, added);
        }
    }

    /// Counts every extent under its policy and every chunk under its class, and files
    /// every chunk tiering wants moved, into `index`: one visit of each record, then one
    /// of each chunk (`each_chunk`), its record serving both.
    fn scan_tallies_and_migrations(&self, index: &mut ExtentIndex) {
        for record in self.extents.values() {
            index.tally_policy(record.policy, u64::from(record.len), true);
        }
        let tiers = self.tiering.enabled.then(|| self.tier_targets());
        let mut wanted = BTreeSet::new();
        self.each_chunk(|slot, record, class, pinned| {
            index.tally_class(class, u64::from(record.len), true);
            if tiers.is_some_and(|tiers| !pinned && record.policy != tiers.target(class)) {
                wanted.insert(slot);
            }
        });
        index.set_migrations(wanted);
    }

    /// Every chunk holding an extent, in slot order, with its record, its class and
    /// whether its file has a policy of its own: each file's inode is read once and its
    /// chunks walked beside its classes, so a chunk costs one lookup, its record.
    fn each_chunk<'a>(&'a self, mut visit: impl FnMut(ChunkSlot, &'a ExtentCore, Option<Class>, bool)) {
        for (ino, chunks) in &self.file_extents {
            let pinned = self.inodes.get(ino).is_some_and(|i| i.policy.is_some());
            for (slot, id, class) in self.chunks_with_classes(*ino, chunks) {
                if let Some(record) = self.extents.get(&id) {
                    visit(slot, record, class, pinned);
                }
            }
        }
    }

    /// File `ino`'s chunks (`chunks`, its map of them) in order, each with its extent and
    /// class: both maps walked side by side, no lookup per chunk.
    fn chunks_with_classes<'a>(
        &'a self,
        ino: Ino,
        chunks: &'a BTreeMap<u64, ExtentId>,
    ) -> impl Iterator<Item = (ChunkSlot, ExtentId, Option<Class>)> + 'a {
        let mut classes = self.temperature.classes_of(ino).peekable();
        chunks.iter().map(move |(index, id)| {
            let slot = ChunkSlot { ino, index: *index };
            while classes.next_if(|(at, _)| *at < slot).is_some() {}
            (slot, *id, classes.next_if(|(at, _)| *at == slot).map(|(_, class)| class))
        })
    }

    /// Where `disk` stands for the fragments on it.
    pub fn fate(&self, disk: DiskId) -> DiskFate {
        if self.disk_awaited(disk) {
            DiskFate::Awaited
        } else if self.disk_writable(disk) {
            DiskFate::Serving
        } else {
            DiskFate::Leaving
        }
    }

    /// The fragment indexes of `record` to rewrite: those on a leaving disk, and those
    /// owed to a serving one. A fragment on an awaited disk is not missing yet.
    pub fn missing_fragments(&self, id: ExtentId, record: &ExtentCore) -> Vec<u8> {
        let fates = self.fates();
        self.missing_with(id, record, &fates).collect()
    }

    /// `missing_fragments`, with each disk's fate looked up in `fates`.
    pub(super) fn missing_with<'a>(
        &'a self,
        id: ExtentId,
        record: &'a ExtentCore,
        fates: &'a BTreeMap<DiskId, DiskFate>,
    ) -> impl Iterator<Item = u8> + 'a {
        let fate = move |disk: &DiskId| fates.get(disk).copied().unwrap_or(DiskFate::Leaving);
        record
            .fragments
            .iter()
            .enumerate()
            .filter(move |(_, disk)| match fate(disk) {
                DiskFate::Serving => self.owed.get(disk).is_some_and(|owed| owed.contains(&id)),
                DiskFate::Awaited => false,
                DiskFate::Leaving => true,
            })
            .map(|(index, _)| index as u8)
    }

    /// Every disk's fate (a disk not listed is leaving).
    pub(super) fn fates(&self) -> BTreeMap<DiskId, DiskFate> {
        self.disks.keys().map(|disk| (*disk, self.fate(*disk))).collect()
    }

    /// How many more fragments `record` can lose and still be read: its readable ones
    /// beyond those a read needs.
    pub fn spare(&self, record: &ExtentCore) -> usize {
        let unreadable = record.fragments.iter().filter(|disk| !self.disk_readable(**disk)).count();
        (record.fragments.len() - unreadable).saturating_sub(record.policy.needed())
    }

    /// How many more fragments `record` can lose, if it is short of one (`None`: whole,
    /// or inline), with the disks' fates looked up in `fates`.
    pub(super) fn spare_with(
        &self,
        id: ExtentId,
        record: &ExtentCore,
        fates: &BTreeMap<DiskId, DiskFate>,
    ) -> Option<usize> {
        if record.is_inline() || self.missing_with(id, record, fates).next().is_none() {
            return None;
        }
        Some(self.spare(record))
    }

    /// `spare_with` while no disk is owed anything or offline: a fragment is missing
    /// exactly when its disk is not active (every disk is online, nothing is owed).
    fn spare_of_record(&self, record: &ExtentCore) -> Option<usize> {
        debug_assert!(self.owed.is_empty() && self.offline.is_empty());
        if record.is_inline() {
            return None;
        }
        let active = |disk: &DiskId| self.disks.get(disk).is_some_and(|d| d.state == DiskState::Active);
        (!record.fragments.iter().all(active)).then(|| self.spare(record))
    }

    /// Files each extent whose need of a rebuild `op` may have changed at its spare (or
    /// as whole). An extent's need depends on its record, the fates of its disks and
    /// what they are owed; when a disk's fate changes, only the extents on it can change,
    /// and of those, unless the disk is now leaving (every one of them needs it), only
    /// the ones already short or owed to it.
    pub(super) fn reassess_after(&mut self, op: &Op, freed: &[FreedExtent]) {
        let mut extents: Vec<ExtentId> = freed.iter().map(|r| r.id).collect();
        let mut disks = Vec::new();
        match op {
            Op::SetExtent { extent: Some(record), .. } | Op::PutExtent(record) => extents.push(record.id),
            Op::PutLayer { extent, .. } => extents.push(extent.id),
            Op::Resynced { extents: ids, .. } | Op::Owe { extents: ids, .. } => extents.extend(ids),
            Op::AddDisk(disk) => disks.push(disk.id),
            Op::SetDiskState { disk, .. }
            | Op::SetDiskStateAt { disk, .. }
            | Op::DiskOffline { disk, .. }
            | Op::DiskOnline { disk, .. } => disks.push(*disk),
            _ => {}
        }
        if extents.is_empty() && disks.is_empty() {
            return;
        }
        if disks.is_empty() && self.owed.is_empty() && self.offline.is_empty() {
            // Every extent a commit stores or frees while no disk is owed or offline —
            // nearly all of them — needs only its own disks looked up.
            for id in extents {
                let spare = self.extents.get(&id).and_then(|record| self.spare_of_record(record));
                self.extent_index.set_risk(id, spare);
            }
            return;
        }
        let fates = self.fates();
        for disk in disks {
            let affected = if fates.get(&disk).is_none_or(|fate| *fate == DiskFate::Leaving) {
                self.extent_index.on_disk(disk).collect::<Vec<_>>()
            } else {
                let mut affected = self.extent_index.at_risk_on_disk(disk);
                affected.extend(self.owed.get(&disk).into_iter().flatten().map(|id| id.0));
                affected.iter().map(ExtentId).collect()
            };
            for id in affected {
                self.assess(id, &fates);
            }
        }
        for id in extents {
            self.assess(id, &fates);
        }
    }

    /// What every chunk's tiering target depends on besides the chunk itself: whether
    /// tiering is on, and the policy each class (and a chunk no pass judged) calls for
    /// — so a disk added to a pool whose tiers it does not widen refiles nothing.
    pub(super) fn tiering_inputs(&self) -> Option<TierTargets> {
        self.tiering.enabled.then(|| self.tier_targets())
    }

    /// Refiles the chunks whose tiering target or extent `op` may have changed. (A
    /// change of what every chunk's target depends on, `tiering_inputs`, refiles all.)
    pub(super) fn retarget_after(&mut self, op: &Op) {
        let slots: Vec<ChunkSlot> = match op {
            Op::SetExtent { ino, index, .. } => vec![ChunkSlot { ino: *ino, index: *index }],
            Op::PutInode(inode) => self.chunk_slots(inode.ino).collect(),
            Op::RemoveInode(ino) => {
                self.extent_index.forget_migrations_of(*ino);
                Vec::new()
            }
            Op::ClassifyPass { verdicts: slots, .. }
            | Op::ClassifyChanges { changed: slots, .. }
            | Op::ClassifyMore { changed: slots } => slots.iter().map(|(slot, _)| *slot).collect(),
            _ => Vec::new(),
        };
        for slot in slots {
            let wanted = self.migration_target(slot).is_some();
            self.extent_index.set_migration(slot, wanted);
        }
    }

    /// The chunks of file `ino` that hold an extent, in order.
    pub(super) fn chunk_slots(&self, ino: Ino) -> impl Iterator<Item = ChunkSlot> + '_ {
        self.file_extents
            .get(&ino)
            .into_iter()
            .flat_map(move |map| map.keys().map(move |index| ChunkSlot { ino, index: *index }))
    }

    /// Every chunk tiering wants moved, from a visit of every chunk (`each_chunk`).
    pub(super) fn scanned_migrations(&self) -> BTreeSet<ChunkSlot> {
        let mut wanted = BTreeSet::new();
        if !self.tiering.enabled {
            return wanted;
        }
        let tiers = self.tier_targets();
        self.each_chunk(|slot, record, class, pinned| {
            if !pinned && record.policy != tiers.target(class) {
                wanted.insert(slot);
            }
        });
        debug_assert!(wanted.iter().all(|slot| self.migration_target(*slot).is_some()));
        wanted
    }

    /// The policy each class calls for in this pool now (tiering on, file not pinned).
    fn tier_targets(&self) -> TierTargets {
        let (default, active) = (self.default_policy, self.active_disk_count());
        let of = |class: Class| self.tiering.tiers.policy_for(class, default, active).unwrap_or(default);
        TierTargets { default, by_class: Class::ALL.map(of) }
    }

    /// How many disks are active: the widest a tier's policy is clamped to.
    pub fn active_disk_count(&self) -> usize {
        self.disks.values().filter(|d| d.state == DiskState::Active).count()
    }

    /// The policy the extent in `slot` should be under: its file's own (pinned), else —
    /// with tiering on and at least one pass behind it — the policy of its class,
    /// clamped to the active disks, else the pool default.
    pub fn target_policy(&self, slot: ChunkSlot) -> Policy {
        if let Some(policy) = self.inodes.get(&slot.ino).and_then(|i| i.policy) {
            return policy;
        }
        let default = self.default_policy;
        if !self.tiering.enabled {
            return default;
        }
        match self.temperature.class(&slot) {
            Some(class) => self.tiering.tiers.policy_for(class, default, self.active_disk_count()).unwrap_or(default),
            None => default,
        }
    }

    /// The policy to migrate the extent in `slot` to, when tiering wants it moved: never
    /// for a pinned file (one with a policy of its own), nor with tiering off.
    pub fn migration_target(&self, slot: ChunkSlot) -> Option<Policy> {
        if !self.tiering.enabled || self.inodes.get(&slot.ino).is_some_and(|i| i.policy.is_some()) {
            return None;
        }
        let record = self.slot_extent(slot)?;
        let target = self.target_policy(slot);
        (record.policy != target).then_some(target)
    }

    /// Files extent `id` at its current spare, or as whole (or gone).
    pub(super) fn assess(&mut self, id: ExtentId, fates: &BTreeMap<DiskId, DiskFate>) {
        let spare = self.extents.get(&id).and_then(|record| self.spare_with(id, record, fates));
        self.extent_index.set_risk(id, spare);
    }

    /// Rebuilds what the state indexes but never stores (`dir_parents`, `extent_index`):
    /// after decoding. Only extents on a disk that is not serving, or owed to one, can be
    /// short of fragments, so a healthy pool's are not assessed one by one.
    /// The per-disk sets, the tallies with the migrations, and the parents are built apart
    /// and at once when `parallel` (on the I/O threads; in order in the simulator).
    pub fn rebuild_indexes(&mut self, parallel: bool) {
        enum Part {
            Disks,
            Tallies,
            Parents,
        }
        enum Built {
            Disks(ExtentIndex),
            Tallies(ExtentIndex),
            Parents(BTreeMap<Ino, Ino>),
        }
        let this = &*self;
        let built =
            crate::base::io::run_all(parallel, vec![Part::Disks, Part::Tallies, Part::Parents], |part| match part {
                Part::Disks => Built::Disks(ExtentIndex::from_records(
                    this.extents.iter().map(|(id, r)| (id, r.fragments.as_slice())),
                )),
                Part::Tallies => {
                    let mut tallies = ExtentIndex::default();
                    this.scan_tallies_and_migrations(&mut tallies);
                    Built::Tallies(tallies)
                }
                Part::Parents => Built::Parents(this.scanned_dir_parents()),
            });
        let mut index = ExtentIndex::default();
        for part in built {
            match part {
                Built::Disks(disks) => index.take_disks(disks),
                Built::Tallies(tallies) => index.take_tallies_and_migrations(tallies),
                Built::Parents(parents) => self.dir_parents = parents,
            }
        }
        self.extent_index = index;
        let fates = self.fates();
        let mut suspects: BTreeSet<ExtentId> = self.owed.values().flatten().copied().collect();
        let not_serving = self.extent_index.disks().filter(|d| fates.get(d).is_none_or(|f| *f != DiskFate::Serving));
        for disk in not_serving.collect::<Vec<_>>() {
            suspects.extend(self.extent_index.on_disk(disk));
        }
        for id in suspects {
            self.assess(id, &fates);
        }
        self.refile_unscrubbed();
    }

    /// The extent index, from a visit of every record, each assessed on its own.
    pub(super) fn scanned_extent_index(&self) -> ExtentIndex {
        let mut index = ExtentIndex::default();
        let fates = self.fates();
        for (id, record) in self.extents.iter() {
            index.add_fragments(id, &record.fragments);
            index.set_risk(id, self.spare_with(id, record, &fates));
        }
        index.set_all_unscrubbed(self.scanned_unscrubbed());
        self.scan_tallies_and_migrations(&mut index);
        index
    }

    /// Each directory's parent, from a scan of every entry.
    pub(super) fn scanned_dir_parents(&self) -> BTreeMap<Ino, Ino> {
        let is_dir = |ino: &Ino| self.inodes.get(ino).is_some_and(|i| i.kind == InodeKind::Directory);
        self.dirs
            .iter()
            .flat_map(|(parent, entries)| entries.values().filter(|c| is_dir(c)).map(move |child| (*child, *parent)))
            .collect()
    }
}

/// The policy a chunk's temperature calls for, per class, with tiering on and the file
/// not pinned: computed once for a visit of every chunk.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) struct TierTargets {
    default: Policy,
    by_class: [Policy; 3],
}

impl TierTargets {
    /// The target of a chunk of `class` (none: no pass judged it yet, the default).
    fn target(&self, class: Option<Class>) -> Policy {
        class.map_or(self.default, |class| self.by_class[class.index()])
    }
}
