//! Tiering: the pool's side of temperature — tracking accesses, classification passes,
//! and migrating extents to the policy their class calls for.
//!
//! Contract:
//! - A read or write records an access in memory only (`Tracker::live`); statistics
//!   reach the journal in batches (`flush_access_stats`, every `stats_flush_secs`, at
//!   every pass and every `dfs` command), so a crash loses at most that much of them
//!   and never any data.
//! - A pass journals its verdicts (`Op::ClassifyChanges`) but those the chunk's
//!   temperature implies (no access, the same observation and class): replay stores the
//!   journaled ones, repeats the rest, and never recomputes a float. Past
//!   `PASS_BATCH_VERDICTS` the verdicts go in records of their own (`Op::ClassifyMore`),
//!   so a pass that changes ten million verdicts writes many bounded records, not one.
//! - A file with a policy of its own (set by `change-policy --path`, `mkdir --policy`,
//!   `put --policy` or the `user.dynamicfs.policy` xattr, or inherited from a directory
//!   that has one) is pinned: tiering never changes its extents.
//! - Migration is a re-encode (`reencode_batch`): new fragments durable → switch
//!   committed → old fragments freed, so a crash leaves the old or the new layout.
//!   Extents a read touched go first and unthrottled, off the read's path (the read only
//!   queues them); the rest move within `migrate_bytes_per_sec`.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::base::error::{Error, Result};
use crate::base::policy::Policy;
use crate::meta::state::{ChangeCause, ChunkSlot, Ino, Op, Transaction, PASS_BATCH_VERDICTS};
use crate::pool::Pool;
use crate::temperature::access::AccessStats;
use crate::temperature::config::TieringConfig;
use crate::temperature::tracker::Temperature;
use crate::temperature::Class;

/// Seconds of budget the background may save up while idle.
const BUDGET_BURST_SECS: f64 = 60.0;

/// What a classification pass found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PassReport {
    /// When the pass ran (wall seconds).
    pub at_secs: i64,
    pub extents: usize,
    pub hot: usize,
    pub warm: usize,
    pub cold: usize,
    /// Extents whose class changed.
    pub changed: usize,
    /// Extents now waiting to migrate to another policy.
    pub migrations_pending: usize,
}

/// What one `tiering_tick` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TickReport {
    /// Chunks whose statistics were persisted.
    pub stats_flushed: usize,
    pub pass: Option<PassReport>,
}

impl Pool {
    /// The pool's tiering configuration.
    pub fn tiering(&self) -> &TieringConfig {
        &self.state.tiering
    }

    /// Replaces the tiering configuration (validated first; nothing changes on error).
    /// Durable on return. Turning tiering off drops nothing: the statistics stay, and
    /// extents keep their policies until `change-policy` moves them.
    pub fn set_tiering(&mut self, config: TieringConfig) -> Result<()> {
        config.validate().map_err(Error::InvalidArgument)?;
        if !config.enabled {
            self.flush_access_stats()?;
        }
        self.commit(Transaction { ops: vec![Op::SetTiering(config)] })?;
        self.tracker.failed.clear();
        self.sync()
    }

    fn now_secs(&self) -> i64 {
        self.clock.wall().secs
    }

    /// Records an access to the extent in `slot` (a read, when `read`, else a write).
    /// A read of an extent whose class calls for another policy queues it for migration.
    /// An access whose chunk's statistics cannot be read from the store is not counted
    /// (and said so): it never fails the read or write, and never resets the statistics.
    pub(crate) fn note_access(&mut self, slot: ChunkSlot, read: bool) {
        self.note_foreground();
        if !self.state.tiering.enabled {
            return;
        }
        let now = self.now_secs();
        let mut stats = match self.access_stats(slot) {
            Ok(stats) => stats,
            Err(error) => {
                tracing::warn!(chunk = %slot, %error, "access not counted: its statistics cannot be read");
                return;
            }
        };
        stats.record(now);
        self.tracker.live.insert(slot, stats);
        if read && self.migration_target(slot).is_some() && !self.tracker.failed.contains(&slot) {
            self.tracker.read_queue.insert(slot);
        }
    }

    /// The current access statistics of a chunk, those not yet persisted included.
    pub fn access_stats(&self, slot: ChunkSlot) -> Result<AccessStats> {
        if let Some(live) = self.tracker.live.get(&slot) {
            return Ok(*live);
        }
        Ok(self.temperature(slot)?.map(|t| t.stats).unwrap_or_default())
    }

    /// `access_stats`, for a chunk whose stored temperature is `stored`.
    pub(crate) fn access_stats_over(&self, slot: ChunkSlot, stored: Option<&Temperature>) -> AccessStats {
        self.tracker.live.get(&slot).copied().or_else(|| stored.map(|t| t.stats)).unwrap_or_default()
    }

    /// Persists the statistics gathered in memory (committed; durable at the next
    /// barrier). Returns how many chunks it wrote.
    pub fn flush_access_stats(&mut self) -> Result<usize> {
        let live = std::mem::take(&mut self.tracker.live);
        let entries: Vec<(ChunkSlot, AccessStats)> =
            live.into_iter().filter(|(slot, _)| self.state.slot_extent(*slot).is_some()).collect();
        self.tracker.flushed_secs = Some(self.now_secs());
        if entries.is_empty() {
            return Ok(0);
        }
        let count = entries.len();
        if let Err(e) = self.commit(Transaction { ops: vec![Op::PutAccessStats(entries.clone())] }) {
            self.tracker.live.extend(entries);
            return Err(e);
        }
        Ok(count)
    }

    /// Runs a classification pass now over every extent; commits its verdicts (durable
    /// at the next barrier). Past `PASS_BATCH_VERDICTS` verdicts, each further batch
    /// follows a barrier, so that it is a record of its own.
    pub fn classify_pass(&mut self) -> Result<PassReport> {
        if !self.state.tiering.enabled {
            return Err(Error::InvalidArgument(
                "tiering is off for this pool (turn it on with `dfs tiering --enable`)".into(),
            ));
        }
        let now = self.now_secs();
        let config = self.state.tiering;
        let slots: Vec<ChunkSlot> = self
            .state
            .file_extents
            .iter()
            .flat_map(|(ino, map)| map.keys().map(move |index| ChunkSlot { ino: *ino, index: *index }))
            .collect();
        let mut report = PassReport { at_secs: now, extents: slots.len(), ..PassReport::default() };
        let mut changed = Vec::new();
        let fresh = Temperature::default();
        // Every chunk beside the temperatures, both in slot order: one walk of the store.
        let mut chunks = slots.iter().copied().peekable();
        let mut judge = |slot: ChunkSlot, temperature: &Temperature| {
            let verdict = temperature.observe(self.access_stats_over(slot, Some(temperature)), now, &config);
            match verdict.class {
                Class::Hot => report.hot += 1,
                Class::Warm => report.warm += 1,
                Class::Cold => report.cold += 1,
            }
            report.changed += usize::from(verdict.class != temperature.class);
            if !temperature.implies(&verdict) {
                changed.push((slot, verdict));
            }
        };
        let mut walk = |until: Option<(ChunkSlot, &Temperature)>| {
            while let Some(slot) = chunks.next_if(|slot| until.is_none_or(|(at, _)| *slot < at)) {
                judge(slot, &fresh);
            }
            if let Some((at, temperature)) = until {
                if chunks.next_if_eq(&at).is_some() {
                    judge(at, temperature);
                }
            }
        };
        self.each_temperature(&mut |slot, temperature| {
            walk(Some((slot, temperature)));
            true
        })?;
        walk(None);
        let mut batches = changed.chunks(PASS_BATCH_VERDICTS);
        let first = batches.next().unwrap_or_default().to_vec();
        self.commit(Transaction { ops: vec![Op::ClassifyChanges { at_secs: now, changed: first }] })?;
        for batch in batches {
            // A barrier writes what was committed since the last one as one record.
            self.sync()?;
            self.commit(Transaction { ops: vec![Op::ClassifyMore { changed: batch.to_vec() }] })?;
        }
        self.tracker.live.clear();
        self.tracker.flushed_secs = Some(now);
        self.tracker.failed.clear();
        report.migrations_pending = self.pending_migrations_len();
        Ok(report)
    }

    /// The daemon's timers: persists statistics and runs a pass when each is due.
    pub fn tiering_tick(&mut self) -> Result<TickReport> {
        let mut report = TickReport::default();
        let config = self.state.tiering;
        if !config.enabled {
            return Ok(report);
        }
        let now = self.now_secs();
        let due = |last: Option<i64>, every: u64| last.is_none_or(|last| now.saturating_sub(last) >= every as i64);
        if due(self.state.passes.back().copied(), config.pass_interval_secs) {
            report.pass = Some(self.classify_pass()?);
        } else if !self.tracker.live.is_empty() && due(self.tracker.flushed_secs, config.stats_flush_secs) {
            report.stats_flushed = self.flush_access_stats()?;
        }
        Ok(report)
    }

    /// Whether the file is pinned: it has a policy of its own, which tiering never changes.
    pub fn is_pinned(&self, ino: Ino) -> bool {
        self.state.inodes.get(&ino).is_some_and(|i| i.policy.is_some())
    }

    /// The policy the extent in `slot` should be under (see `MetaState::target_policy`).
    pub fn target_policy(&self, slot: ChunkSlot) -> Policy {
        self.state.target_policy(slot)
    }

    /// The policy to migrate the extent in `slot` to, when tiering wants it moved.
    pub fn migration_target(&self, slot: ChunkSlot) -> Option<Policy> {
        self.state.migration_target(slot)
    }

    /// Every extent tiering wants moved, with its target, in slot order (from the
    /// state's index: the chunks that are not need not be visited).
    pub fn pending_migrations(&self) -> Vec<(ChunkSlot, Policy)> {
        self.migrations().collect()
    }

    /// `pending_migrations`, lazily.
    fn migrations(&self) -> impl Iterator<Item = (ChunkSlot, Policy)> + '_ {
        self.state.extent_index.migrations().filter_map(|slot| Some((slot, self.state.migration_target(slot)?)))
    }

    /// How many extents tiering wants moved.
    pub fn pending_migrations_len(&self) -> usize {
        self.state.extent_index.migrations_len()
    }

    /// Whether a migration could run now (queued by a read, or pending and not failed).
    pub(crate) fn has_migration_work(&self) -> bool {
        !self.tracker.read_queue.is_empty()
            || self.state.extent_index.migrations().any(|slot| !self.tracker.failed.contains(&slot))
    }

    /// Takes from the background migration budget the longest prefix of `lens` (bytes
    /// each) it affords; returns that prefix's length.
    pub(crate) fn spend_migration_budget(&mut self, lens: &[f64]) -> usize {
        let rate = self.state.tiering.migrate_bytes_per_sec as f64;
        let budget = self.tracker.budget.available(rate, rate * BUDGET_BURST_SECS, self.clock.monotonic_nanos());
        let mut spent = 0.0;
        let mut taken = 0;
        for len in lens {
            if spent + len > budget {
                break;
            }
            spent += len;
            taken += 1;
        }
        self.tracker.budget.spend(spent);
        taken
    }

    /// Extents a read queued for migration.
    pub fn read_queued_migrations(&self) -> usize {
        self.tracker.read_queue.len()
    }

    /// Migrates up to `max_extents` extents: those reads queued first, then others
    /// within the budget (`unthrottled` ignores it: `dfs classify --migrate`). Returns
    /// how many it re-encoded.
    pub fn migration_step(&mut self, max_extents: usize, unthrottled: bool) -> Result<usize> {
        let mut items: Vec<(ChunkSlot, Policy)> = Vec::new();
        while items.len() < max_extents {
            let Some(slot) = self.tracker.read_queue.pop_first() else { break };
            if let Some(target) = self.migration_target(slot) {
                items.push((slot, target));
            }
        }
        if items.is_empty() {
            let budget = if unthrottled {
                f64::INFINITY
            } else {
                let rate = self.state.tiering.migrate_bytes_per_sec as f64;
                self.tracker.budget.available(rate, rate * BUDGET_BURST_SECS, self.clock.monotonic_nanos())
            };
            let mut spent = 0.0;
            let pending: Vec<(ChunkSlot, Policy)> =
                self.migrations().filter(|(slot, _)| !self.tracker.failed.contains(slot)).take(max_extents).collect();
            for (slot, target) in pending {
                if items.len() >= max_extents {
                    break;
                }
                let len = self.state.slot_extent(slot).map_or(0.0, |r| f64::from(r.len));
                if spent + len > budget {
                    break;
                }
                spent += len;
                items.push((slot, target));
            }
            if !unthrottled {
                self.tracker.budget.spend(spent);
            }
        }
        if items.is_empty() {
            return Ok(0);
        }
        let mut by_class: BTreeMap<Class, Vec<(Ino, u64, Policy)>> = BTreeMap::new();
        for (slot, target) in &items {
            let class = self.state.temperature.class(slot).unwrap_or(Class::Warm);
            by_class.entry(class).or_default().push((slot.ino, slot.index, *target));
        }
        let mut moved = 0;
        for (class, batch) in by_class {
            match self.reencode_batch(&batch, ChangeCause::Temperature(class)) {
                Ok(()) => {
                    moved += batch.len();
                    self.counters.extents_migrated += batch.len() as u64;
                }
                Err(e @ (Error::ReadOnly(_) | Error::NoDisks)) => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, extents = batch.len(), "migration failed; retrying after the next pass");
                    self.tracker
                        .failed
                        .extend(batch.iter().map(|(ino, index, _)| ChunkSlot { ino: *ino, index: *index }));
                }
            }
        }
        Ok(moved)
    }

    /// Hands files back to tiering: clears the policy of `ino` (and, for a directory
    /// with `recursive`, of everything beneath it; without, of the files directly in
    /// it). Returns how many inodes changed. Durable on return.
    pub fn unpin(&mut self, ino: Ino, recursive: bool) -> Result<usize> {
        let targets = self.scope_inodes(ino, recursive)?;
        let now = self.clock.wall();
        let ops: Vec<Op> = targets
            .iter()
            .filter_map(|ino| self.state.inodes.get(ino))
            .filter(|inode| inode.policy.is_some())
            .map(|inode| {
                let mut inode = inode.clone();
                inode.policy = None;
                inode.ctime = now;
                Op::PutInode(inode)
            })
            .collect();
        let count = ops.len();
        if count > 0 {
            self.commit(Transaction { ops })?;
            self.sync()?;
        }
        Ok(count)
    }
}
