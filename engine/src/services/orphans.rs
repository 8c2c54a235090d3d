//! Orphan GC: fragment blocks on disk that no committed metadata references — left by a
//! crash (on a disk that was away when recovery cleaned up), by a failed write whose
//! cleanup failed too, or by a delete that failed after a barrier.
//!
//! Contract:
//! - Detection runs after a durability barrier, so the state in memory is the durable
//!   one: no commit is in flight, and nothing a durable record names is an orphan. A
//!   fragment counts as referenced only where its extent's record places it.
//! - Cleanup deletes only orphans at least `older_than_secs` old by their disk's mtime
//!   (unknown age counts as young): the age guard against a writer this process cannot
//!   see. Each delete stands alone and the disk is synced after, so a crash in the
//!   middle leaves the rest as orphans for the next run — never a referenced fragment
//!   deleted.
//! - A fragment of an extent being written (`Pool::writing`: stored, not yet committed,
//!   while a front end flushes with the pool's lock released) is not an orphan.

use serde::Serialize;

use crate::base::error::Result;
use crate::media::device::{BlockKind, BlockName};
use crate::meta::state::DiskId;
use crate::pool::Pool;

/// One fragment block that no committed record references.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Orphan {
    pub disk: DiskId,
    /// The block, as `<extent>.<index>`.
    pub block: String,
    #[serde(skip)]
    pub name: BlockName,
    pub bytes: u64,
    /// Seconds since it was written, when the disk knows.
    pub age_secs: Option<u64>,
}

/// Orphans per disk.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct OrphanStats {
    pub disk: String,
    pub count: u64,
    pub bytes: u64,
    pub oldest_secs: Option<u64>,
}

/// What a cleanup did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct OrphanCleanup {
    pub deleted: u64,
    pub bytes_freed: u64,
    /// Orphans younger than the age guard, left alone.
    pub too_young: u64,
    /// Deletes or syncs that failed (they stay orphans).
    pub errors: Vec<String>,
}

impl Pool {
    /// Every orphan fragment on the disks that can be read, by disk and name. Runs a
    /// durability barrier first.
    pub fn detect_orphans(&mut self) -> Result<Vec<Orphan>> {
        self.sync()?;
        let now = self.clock.wall().secs;
        let mut orphans = Vec::new();
        for (disk, device) in &self.devices {
            if !self.state.disk_readable(*disk) {
                continue;
            }
            let Ok(names) = device.list(BlockKind::Fragment) else { continue };
            for name in names {
                let BlockName::Fragment { extent, index } = name else { continue };
                let placed = self.state.extents.get(&extent).and_then(|r| r.fragments.get(usize::from(index)));
                if placed == Some(disk) || self.writing.contains(extent) {
                    continue;
                }
                let bytes = device.read(name).map(|b| b.len() as u64).unwrap_or(0);
                let age_secs = device
                    .modified_secs(name)
                    .ok()
                    .flatten()
                    .map(|written| u64::try_from(now.saturating_sub(written)).unwrap_or(0));
                orphans.push(Orphan { disk: *disk, block: name.leaf(), name, bytes, age_secs });
            }
        }
        Ok(orphans)
    }

    /// Orphan counts, bytes and oldest age per disk (disks without orphans included).
    pub fn orphan_stats(&mut self) -> Result<Vec<OrphanStats>> {
        let orphans = self.detect_orphans()?;
        Ok(self
            .state
            .disks
            .values()
            .filter(|d| self.state.disk_readable(d.id))
            .map(|d| {
                let mine: Vec<&Orphan> = orphans.iter().filter(|o| o.disk == d.id).collect();
                OrphanStats {
                    disk: d.id.to_string(),
                    count: mine.len() as u64,
                    bytes: mine.iter().map(|o| o.bytes).sum(),
                    oldest_secs: mine.iter().filter_map(|o| o.age_secs).max(),
                }
            })
            .collect())
    }

    /// Deletes every orphan at least `older_than_secs` old.
    pub fn cleanup_orphans(&mut self, older_than_secs: u64) -> Result<OrphanCleanup> {
        let orphans = self.detect_orphans()?;
        let mut cleanup = OrphanCleanup::default();
        let mut touched = std::collections::BTreeSet::new();
        for orphan in orphans {
            let old_enough = older_than_secs == 0 || orphan.age_secs.is_some_and(|age| age >= older_than_secs);
            if !old_enough {
                cleanup.too_young += 1;
                continue;
            }
            let BlockName::Fragment { extent, index } = orphan.name else { continue };
            // The barrier above emptied every queue; the record is what is durable.
            let placed = self.state.extents.get(&extent).and_then(|r| r.fragments.get(usize::from(index)));
            assert_ne!(placed, Some(&orphan.disk), "an orphan became referenced");
            let Some(device) = self.devices.get(&orphan.disk) else { continue };
            match device.delete(orphan.name) {
                Ok(()) => {
                    cleanup.deleted += 1;
                    cleanup.bytes_freed += orphan.bytes;
                    touched.insert(orphan.disk);
                }
                Err(e) => cleanup.errors.push(format!("{} on {}: {e}", orphan.block, orphan.disk)),
            }
        }
        for disk in touched {
            if let Some(device) = self.devices.get(&disk) {
                if let Err(e) = device.sync() {
                    cleanup.errors.push(format!("syncing {disk}: {e}"));
                }
            }
        }
        Ok(cleanup)
    }
}
