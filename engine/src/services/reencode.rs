//! Policy changes of existing data: transitions kept in metadata, carried out extent by
//! extent — decode under the old policy, encode under the new one as a new extent, then
//! switch the file's chunk to it.
//!
//! Each batch follows the geometry rule: new fragments written, then one barrier makes
//! them durable together with the switch, then the old extents' fragments are deleted.
//! A crash leaves every extent whole under its old or its new layout. What remains to do
//! is recomputed from metadata (extents in scope whose policy differs from the target),
//! so a transition resumes exactly where it stopped.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::base::error::{Error, Result};
use crate::base::policy::Policy;
use crate::meta::state::{
    push_policy_change, ChangeCause, ChunkSlot, Ino, InodeKind, Op, PolicyChange, PolicyScope, PolicyTransition,
    Transaction, TransitionState,
};
use crate::pool::Pool;

/// Extents re-encoded per barrier.
const BATCH_EXTENTS: usize = 16;

/// Where a transition stands after a step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TransitionProgress {
    pub reencoded: usize,
    pub remaining: usize,
}

impl Pool {
    /// Records a policy change of `scope` to `policy` and applies its metadata part
    /// (the pool default, or the policy of the inodes in scope); the data is re-encoded
    /// by `policy_step`. Durable on return. Refuses, changing nothing, a policy the
    /// pool's active disks cannot place.
    pub fn begin_policy_change(&mut self, scope: PolicyScope, policy: Policy) -> Result<u64> {
        self.check_placeable(policy)?;
        let id = self.state.transitions.keys().next_back().map_or(1, |last| last + 1);
        let mut ops = Vec::new();
        match &scope {
            PolicyScope::Default => ops.push(Op::SetDefaultPolicy(policy)),
            PolicyScope::Path { ino, recursive, .. } => {
                let now = self.clock.wall();
                for target in self.scope_inodes(*ino, *recursive)? {
                    if let Some(inode) = self.state.inodes.get(&target) {
                        let mut inode = inode.clone();
                        inode.policy = Some(policy);
                        inode.ctime = now;
                        ops.push(Op::PutInode(inode));
                    }
                }
            }
            PolicyScope::Extent(extent) => {
                if !self.state.extents.contains_key(extent) {
                    return Err(Error::NotFound(format!("extent {extent} (see `dfs list-extents`)")));
                }
            }
        }
        ops.push(Op::PutTransition(PolicyTransition {
            id,
            scope,
            policy,
            state: TransitionState::InProgress,
            started: self.clock.wall(),
            finished: None,
            extents_done: 0,
            error: None,
        }));
        self.commit(Transaction { ops })?;
        self.sync()?;
        Ok(id)
    }

    /// `ino` and, for a directory, the files directly in it — or, with `recursive`,
    /// every inode beneath it.
    pub(crate) fn scope_inodes(&self, ino: Ino, recursive: bool) -> Result<Vec<Ino>> {
        let inode = self.state.inodes.get(&ino).ok_or_else(|| Error::NotFound(format!("inode {}", ino.0)))?;
        let mut out = vec![ino];
        if inode.kind != InodeKind::Directory {
            return Ok(out);
        }
        let mut pending = vec![ino];
        while let Some(dir) = pending.pop() {
            for child in self.state.dirs.get(&dir).map(|d| d.values().copied().collect::<Vec<_>>()).unwrap_or_default()
            {
                let Some(kind) = self.state.inodes.get(&child).map(|i| i.kind) else { continue };
                match kind {
                    InodeKind::File => out.push(child),
                    InodeKind::Directory if recursive => {
                        out.push(child);
                        pending.push(child);
                    }
                    _ => {}
                }
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// The chunks transition `id` still has to re-encode, as (file, chunk index, policy).
    /// Under the pool default each extent goes to the policy its file and temperature
    /// call for (`target_policy`); a path or extent scope pins the transition's policy.
    fn transition_work(&self, transition: &PolicyTransition) -> Result<Vec<(Ino, u64, Policy)>> {
        let target = transition.policy;
        let mismatched = |ino: Ino| -> Vec<(Ino, u64, Policy)> {
            self.state
                .file_extents
                .get(&ino)
                .map(|map| {
                    map.iter()
                        .filter(|(_, id)| self.state.extents.get(id).is_some_and(|r| r.policy != target))
                        .map(|(index, _)| (ino, *index, target))
                        .collect()
                })
                .unwrap_or_default()
        };
        Ok(match &transition.scope {
            PolicyScope::Default => self
                .state
                .inodes
                .values()
                .filter(|i| i.kind == InodeKind::File && i.policy.is_none())
                .flat_map(|i| {
                    let map = self.state.file_extents.get(&i.ino);
                    map.into_iter().flat_map(|m| m.iter()).filter_map(|(index, id)| {
                        let wanted = self.target_policy(ChunkSlot { ino: i.ino, index: *index });
                        let record = self.state.extents.get(id)?;
                        (record.policy != wanted).then_some((i.ino, *index, wanted))
                    })
                })
                .collect(),
            PolicyScope::Path { ino, recursive, .. } => {
                if !self.state.inodes.contains_key(ino) {
                    return Ok(Vec::new()); // removed meanwhile: nothing left to do
                }
                self.scope_inodes(*ino, *recursive)?.into_iter().flat_map(mismatched).collect()
            }
            PolicyScope::Extent(extent) => self
                .state
                .file_extents
                .iter()
                .flat_map(|(ino, map)| map.iter().map(move |(index, id)| (*ino, *index, *id)))
                .filter(|(_, _, id)| id == extent)
                .filter(|(_, _, id)| self.state.extents.get(id).is_some_and(|r| r.policy != target))
                .map(|(ino, index, _)| (ino, index, target))
                .collect(),
        })
    }

    /// Re-encodes up to `max_extents` extents of transition `id`, in batches; marks it
    /// done when nothing is left, or failed (with why) when a batch cannot be written.
    pub fn policy_step(&mut self, id: u64, max_extents: usize) -> Result<TransitionProgress> {
        let transition =
            self.state.transitions.get(&id).cloned().ok_or_else(|| Error::NotFound(format!("transition {id}")))?;
        if matches!(transition.state, TransitionState::Done | TransitionState::Failed) {
            return Ok(TransitionProgress::default());
        }
        let work = self.transition_work(&transition)?;
        let mut reencoded = 0;
        for batch in work.chunks(BATCH_EXTENTS).take(max_extents.div_ceil(BATCH_EXTENTS)) {
            if let Err(e) = self.reencode_batch(batch, ChangeCause::Transition(id)) {
                self.finish_transition(id, TransitionState::Failed, Some(e.to_string()))?;
                return Err(e);
            }
            reencoded += batch.len();
        }
        let remaining = work.len() - reencoded;
        if remaining == 0 {
            self.finish_transition(id, TransitionState::Done, None)?;
        }
        Ok(TransitionProgress { reencoded, remaining })
    }

    fn finish_transition(&mut self, id: u64, state: TransitionState, error: Option<String>) -> Result<()> {
        let Some(mut transition) = self.state.transitions.get(&id).cloned() else { return Ok(()) };
        transition.state = state;
        transition.finished = Some(self.clock.wall());
        transition.error = error;
        self.commit(Transaction { ops: vec![Op::PutTransition(transition)] })?;
        self.sync()
    }

    /// Re-encodes each (file, chunk, policy) of `items` in one barrier: new fragments,
    /// then the switch (and the transition's progress, for a transition), then the old
    /// fragments freed. Every re-encoded extent's history records `cause`.
    pub(crate) fn reencode_batch(&mut self, items: &[(Ino, u64, Policy)], cause: ChangeCause) -> Result<()> {
        let mut by_policy: BTreeMap<Policy, Vec<(Ino, u64)>> = BTreeMap::new();
        for (ino, index, policy) in items {
            by_policy.entry(*policy).or_default().push((*ino, *index));
        }
        let now = self.clock.wall();
        let mut ops = Vec::with_capacity(items.len() + 1);
        let mut done = 0u64;
        for (policy, group) in by_policy {
            match self.reencode_group(&group, policy, cause, now, &mut ops) {
                Ok(count) => done += count as u64,
                Err(e) => {
                    // Fragments of the groups written so far are referenced by nothing.
                    let unreferenced: Vec<_> = ops
                        .iter()
                        .filter_map(|op| match op {
                            Op::SetExtent { extent: Some(record), .. } => Some(record.clone()),
                            _ => None,
                        })
                        .collect();
                    self.free_written(&unreferenced);
                    return Err(e);
                }
            }
        }
        if let ChangeCause::Transition(id) = cause {
            if let Some(mut updated) = self.state.transitions.get(&id).cloned() {
                updated.extents_done += done;
                ops.push(Op::PutTransition(updated));
            }
        }
        let freed = self.commit(Transaction { ops })?;
        self.free_extents(&freed);
        self.sync()?;
        self.counters.extents_reencoded += done;
        Ok(())
    }

    /// Writes `items` anew under `policy` and appends their switches to `ops`; returns
    /// how many it re-encoded.
    fn reencode_group(
        &mut self,
        items: &[(Ino, u64)],
        policy: Policy,
        cause: ChangeCause,
        now: crate::base::clock::WallTime,
        ops: &mut Vec<Op>,
    ) -> Result<usize> {
        let mut olds = Vec::with_capacity(items.len());
        let mut chunks = Vec::with_capacity(items.len());
        let slots: Vec<ChunkSlot> = items.iter().map(|(ino, index)| ChunkSlot { ino: *ino, index: *index }).collect();
        self.prefetch_chunks(&slots);
        for (ino, index) in items {
            let Some(record) = self.slot_record(ChunkSlot { ino: *ino, index: *index })? else { continue };
            // Its layers fold in: the new extent holds what the chunk reads as.
            let Some(data) = self.read_chunk(*ino, *index)? else { continue };
            chunks.push((*index, data));
            olds.push((*ino, record));
        }
        let records = self.write_chunks(&chunks, policy)?;
        for ((ino, old), (index, new)) in olds.iter().zip(records) {
            let new = new.map(|mut record| {
                record.history = old.history.clone();
                push_policy_change(&mut record.history, PolicyChange { at: now, from: old.policy, to: policy, cause });
                record
            });
            ops.push(Op::SetExtent { ino: *ino, index, extent: new });
        }
        Ok(olds.len())
    }

    /// Transitions not yet done or failed, oldest first.
    pub fn open_transitions(&self) -> Vec<u64> {
        self.state
            .transitions
            .values()
            .filter(|t| matches!(t.state, TransitionState::Pending | TransitionState::InProgress))
            .map(|t| t.id)
            .collect()
    }

    /// Changes `scope` to `policy` and re-encodes everything in it before returning.
    pub fn change_policy(&mut self, scope: PolicyScope, policy: Policy) -> Result<u64> {
        let id = self.begin_policy_change(scope, policy)?;
        while self.policy_step(id, BATCH_EXTENTS)?.remaining > 0 {}
        Ok(id)
    }
}

impl Pool {
    /// Folds the layers of up to `max` chunks of files no one holds open back into whole
    /// extents, under each chunk's present policy and keeping its history: the chunk's
    /// contents written as a new extent, then one barrier makes the switch durable (which
    /// frees the old extent and its layers), as a re-encode does. A crash leaves the chunk
    /// layered or whole, never both. An open file's chunks fold when their flush would add
    /// a layer past `LAYERS_MAX`. Rewrites count against the background migration
    /// budget (`TieringConfig::migrate_bytes_per_sec`, shared with tiering's migrations);
    /// `unthrottled` ignores it. Young inline extents (longer than `INLINE_KEPT_BYTES_MAX`:
    /// a file `fsync`ed while small) of files no one holds open are stored as fragments
    /// the same way. Returns how many chunks it folded or stored.
    pub fn merge_step(&mut self, max: usize, unthrottled: bool) -> Result<usize> {
        let state = &self.state;
        self.young_inline.retain(|slot| state.is_young_inline(*slot));
        let candidates: BTreeSet<ChunkSlot> = self
            .state
            .layers
            .keys()
            .chain(&self.young_inline)
            .filter(|slot| self.files.get(slot.ino).is_none())
            .copied()
            .collect();
        let candidates = candidates.iter();
        let slots: Vec<ChunkSlot> = if unthrottled {
            candidates.take(max).copied().collect()
        } else {
            let lens: Vec<(ChunkSlot, f64)> = candidates
                .take(max)
                .map(|slot| (*slot, self.state.slot_extent(*slot).map_or(0.0, |r| f64::from(r.len))))
                .collect();
            let spent = self.spend_migration_budget(&lens.iter().map(|(_, len)| *len).collect::<Vec<_>>());
            lens.into_iter().take(spent).map(|(slot, _)| slot).collect()
        };
        let mut ops = Vec::with_capacity(slots.len());
        let mut written = Vec::with_capacity(slots.len());
        for slot in &slots {
            match self.merge_one(*slot) {
                Ok(Some(extent)) => {
                    written.extend(extent.clone());
                    ops.push(Op::SetExtent { ino: slot.ino, index: slot.index, extent });
                }
                Ok(None) => {}
                Err(e) => {
                    self.free_written(&written);
                    return Err(e);
                }
            }
        }
        if ops.is_empty() {
            return Ok(0);
        }
        let folded = ops.len();
        let freed = match self.commit(Transaction { ops }) {
            Ok(freed) => freed,
            Err(e) => {
                self.free_written(&written);
                return Err(e);
            }
        };
        self.free_extents(&freed);
        self.sync()?;
        self.counters.layers_merged += folded as u64;
        Ok(folded)
    }

    /// Writes what layered chunk `slot` reads as as one new extent under its extent's
    /// policy: `Some(None)` when it reads as zeros (it becomes a hole), `None` if the
    /// chunk holds no extent.
    #[allow(clippy::option_option)]
    fn merge_one(&mut self, slot: ChunkSlot) -> Result<Option<Option<crate::meta::state::ExtentRecord>>> {
        let Some(base) = self.slot_record(slot)? else { return Ok(None) };
        debug_assert!(self.state.layers.contains_key(&slot) || self.state.is_young_inline(slot));
        let Some(data) = self.read_chunk(slot.ino, slot.index)? else { return Ok(None) };
        let records = self.write_chunks(&[(slot.index, data)], base.policy)?;
        let record = records.into_iter().next().and_then(|(_, record)| record);
        Ok(Some(record.map(|mut record| {
            record.history = base.history.clone();
            record
        })))
    }

    /// Whether a chunk of a file no one holds open has layers to fold or a young inline
    /// extent to store.
    pub(crate) fn has_merge_work(&self) -> bool {
        self.state.layers.keys().chain(&self.young_inline).any(|slot| self.files.get(slot.ino).is_none())
    }
}
