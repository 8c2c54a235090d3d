//! The background worker's unit of work: drain draining disks, carry policy transitions
//! forward, rebuild degraded extents (most endangered first), then migrate extents to
//! the policy their temperature calls for, fold layered chunks of closed files back into
//! whole extents, and last compact disks that keep dead space
//! (a filesystem that cannot punch holes). Each step is bounded, so a foreground request
//! waits at most for one small batch; the daemon calls it in a loop. Redundancy comes
//! before temperature: migrations run only when nothing else is waiting.

use crate::base::error::Result;
use crate::meta::state::DiskState;
use crate::pool::Pool;

/// Extents one background step touches at most.
pub const STEP_EXTENTS: usize = 4;

/// Bytes one compaction step moves at most.
pub const STEP_COMPACT_BYTES: u64 = 16 << 20;

impl Pool {
    /// Whether a drain, a transition, a rebuild or a migration is waiting.
    pub fn has_background_work(&self) -> bool {
        self.draining_online().next().is_some()
            || !self.open_transitions().is_empty()
            || self.rebuild_queue_len() > 0
            || self.has_migration_work()
            || self.has_merge_work()
            || self.devices.values().any(|d| d.wants_compaction())
    }

    /// Draining disks that can be read: an offline one waits until it is back (or failed).
    fn draining_online(&self) -> impl Iterator<Item = crate::meta::state::DiskId> + '_ {
        self.state
            .disks
            .values()
            .filter(|d| d.state == DiskState::Draining && self.state.disk_online(d.id))
            .map(|d| d.id)
    }

    /// Does one bounded piece of background work; returns how many extents it touched
    /// (0: nothing to do, or nothing could be done now).
    pub fn background_step(&mut self) -> Result<usize> {
        let draining: Vec<_> = self.draining_online().collect();
        for disk in draining {
            let progress = self.drain_step(disk, STEP_EXTENTS)?;
            if progress.moved > 0 {
                return Ok(progress.moved);
            }
        }
        if let Some(id) = self.open_transitions().first().copied() {
            let progress = self.policy_step(id, STEP_EXTENTS)?;
            if progress.reencoded > 0 {
                return Ok(progress.reencoded);
            }
        }
        let rebuilt = self.rebuild_step(STEP_EXTENTS)?;
        if rebuilt > 0 {
            return Ok(rebuilt);
        }
        let migrated = self.migration_step(STEP_EXTENTS, false)?;
        if migrated > 0 {
            return Ok(migrated);
        }
        let merged = self.merge_step(STEP_EXTENTS, false)?;
        if merged > 0 {
            return Ok(merged);
        }
        Ok(self.compact_step())
    }

    /// Compacts one disk that keeps dead space; 1 if it moved anything. A disk that fails
    /// to compact is left as it is (its blocks are unchanged) and tried again later.
    fn compact_step(&mut self) -> usize {
        for (disk, device) in &self.devices {
            if !device.wants_compaction() {
                continue;
            }
            match device.compact(STEP_COMPACT_BYTES) {
                Ok(moved) if moved > 0 => return 1,
                Ok(_) => {}
                Err(error) => tracing::warn!(%disk, %error, "compaction failed; the disk keeps its dead space for now"),
            }
        }
        0
    }
}
