//! Disk reachability: offline is not failed.
//!
//! A disk that cannot be reached — its I/O fails as unavailable or keeps failing, its
//! label is missing, unreadable or foreign — goes *offline*: reads go around it, nothing
//! new is placed on it (extents are written at reduced width down to the write quorum,
//! the fragments it would have held owed to it), and nothing of it is rebuilt. It is
//! probed with exponential backoff; when its label answers again it rejoins: the
//! fragments it holds that nothing references any more (extents freed while it was away)
//! are deleted, and only the extents it is owed are repaired (`geometry::rebuild_queue`).
//! Offline for longer than the pool's grace period (`Availability::grace_secs`), it is
//! marked failed and the lazy rebuild begins; `fail_disk` does that at once.
//!
//! Contract: every transition is journaled and dated (`Op::DiskOffline`,
//! `Op::DiskOnline`, `Op::SetDiskStateAt`). Probes are scheduled by the pool clock's
//! monotonic time, the grace period by its wall time. A disk rejoins only right after a
//! barrier, when every fragment there that the state does not reference is garbage, and
//! only once its label names this pool and this disk.

use std::sync::Arc;

use serde::Serialize;

use crate::base::error::{Error, Result};
use crate::media::device::{BlockDevice, BlockKind, BlockName};
use crate::media::label::DiskLabel;
use crate::meta::state::{DiskId, Op, Transaction};
use crate::pool::Pool;

pub use crate::pool::probes::{
    ReconnectFn, Reconnector, OFFLINE_PROBE_FIRST_NANOS, OFFLINE_PROBE_MAX_NANOS, ONLINE_PROBE_NANOS,
};

/// What one `check_disks` did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DiskCheck {
    /// Disks found unreachable, now offline.
    pub went_offline: Vec<DiskId>,
    /// Offline disks that answered again and rejoined.
    pub rejoined: Vec<Rejoined>,
    /// Offline disks whose grace period ended, now failed.
    pub failed: Vec<DiskId>,
}

impl DiskCheck {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.went_offline.is_empty() && self.rejoined.is_empty() && self.failed.is_empty()
    }
}

/// A disk that came back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Rejoined {
    pub disk: DiskId,
    /// Seconds it was offline.
    pub away_secs: i64,
    /// Extents it is owed, now queued for repair.
    pub owed: usize,
    /// Fragments of extents freed while it was away, deleted.
    pub stale_deleted: usize,
}

/// What offering a failed disk back found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Readmitted {
    pub disk: DiskId,
    /// Fragments it holds that are still referenced: read from it again.
    pub reused: usize,
    /// Referenced fragments it does not hold: repaired onto it.
    pub owed: usize,
    /// Fragments it holds that nothing references any more: deleted.
    pub stale_deleted: usize,
}

/// The shortest grace period a pool accepts: a disk blinking for less is not worth a
/// rebuild of everything it holds.
pub const GRACE_SECS_MIN: u64 = 1;

impl Pool {
    /// Sets how long an offline disk is waited for and the write quorum of replicated
    /// extents. Durable on return; refuses (changing nothing) a zero grace period or a
    /// replica quorum of 0.
    pub fn set_availability(&mut self, availability: crate::meta::state::Availability) -> Result<()> {
        if availability.grace_secs < GRACE_SECS_MIN {
            return Err(Error::InvalidArgument(format!(
                "a grace period of {} s is too short: at least {GRACE_SECS_MIN} s",
                availability.grace_secs
            )));
        }
        if availability.replica_quorum == 0 {
            return Err(Error::InvalidArgument("the replica write quorum must be at least 1 copy".into()));
        }
        self.commit(Transaction { ops: vec![Op::SetAvailability(availability)] })?;
        self.sync()
    }

    /// Takes back failed `disk` through `device` (its label names this pool and this
    /// disk): after a barrier, the fragments there that nothing references are deleted,
    /// the referenced ones it holds are read from it again, and the referenced ones it
    /// lacks are owed to it (repaired by the rebuild queue). Durable on return.
    pub fn readmit_disk(&mut self, disk: DiskId, device: Arc<dyn BlockDevice>) -> Result<Readmitted> {
        match self.state.disks.get(&disk).map(|d| d.state) {
            Some(crate::meta::state::DiskState::Failed) => {}
            Some(state) => {
                return Err(Error::Exists(format!("disk {disk} is {state}, not failed: nothing to take back")))
            }
            None => return Err(Error::NotFound(format!("disk {disk}"))),
        }
        self.verify_label(disk, device.as_ref()).map_err(|e| Error::InvalidArgument(format!("disk {disk}: {e}")))?;
        let device = self.owned(device)?;
        self.sync()?;
        let (names, stale_deleted) = self.delete_unreferenced(disk, device.as_ref())?;
        let mut reused = 0;
        let mut lacking = Vec::new();
        for (id, record) in self.state.extents.iter() {
            for (index, _) in record.fragments.iter().enumerate().filter(|(_, d)| **d == disk) {
                if names.contains(&BlockName::Fragment { extent: id, index: index as u8 }) {
                    reused += 1;
                } else {
                    lacking.push(id);
                }
            }
        }
        let owed = lacking.len();
        let at = self.clock.wall();
        self.devices.insert(disk, device);
        self.io_errors.remove(&disk);
        let state = crate::meta::state::DiskState::Active;
        self.commit(Transaction {
            ops: vec![Op::SetDiskStateAt { disk, state, at }, Op::Owe { disk, extents: lacking }],
        })?;
        self.sync()?;
        let now = self.clock.monotonic_nanos();
        self.probes.online(disk, now);
        tracing::info!(%disk, reused, owed, stale_deleted, "failed disk taken back");
        Ok(Readmitted { disk, reused, owed, stale_deleted })
    }

    /// Marks `disk` offline (it must be active or draining and online; otherwise nothing
    /// happens): reads go around it and writes continue without it. The extents that
    /// took fragments there since the last barrier are owed to it, as it may have lost
    /// them. Safe inside a barrier.
    pub(crate) fn mark_offline(&mut self, disk: DiskId, reason: &str) -> Result<()> {
        if !self.state.disk_readable(disk) {
            return Ok(());
        }
        let suspect = self
            .undurable
            .extents
            .iter()
            .filter(|id| self.state.extents.get(id).is_some_and(|r| r.fragments.contains(&disk)))
            .copied()
            .collect();
        let at = self.clock.wall();
        self.commit(Transaction { ops: vec![Op::DiskOffline { disk, at, reason: reason.to_string(), suspect }] })?;
        self.counters.disks_offline += 1;
        self.probes.forget(disk);
        let now = self.clock.monotonic_nanos();
        self.probes.backoff(disk, now);
        tracing::warn!(
            %disk,
            %reason,
            grace_secs = self.state.availability.grace_secs,
            "disk offline: reads go around it and writes continue without it; it is marked failed if it is not back \
             within the grace period"
        );
        debug_assert!(self.state.disk_awaited(disk));
        Ok(())
    }

    /// Checks the disks, as the daemon does every second: online disks are probed every
    /// few seconds (their label read) and go offline when they do not answer; offline
    /// disks are retried with backoff and rejoin when they answer as themselves; offline
    /// disks past the grace period are marked failed. Ends with a barrier when anything
    /// changed.
    pub fn check_disks(&mut self) -> Result<DiskCheck> {
        let mut check = DiskCheck::default();
        let now_nanos = self.clock.monotonic_nanos();
        let now_secs = self.clock.wall().secs;
        let grace = i64::try_from(self.state.availability.grace_secs).unwrap_or(i64::MAX);
        let disks: Vec<DiskId> = self.state.disks.values().filter(|d| d.state.readable()).map(|d| d.id).collect();
        for disk in disks {
            let offline_since = self.state.offline.get(&disk).map(|o| o.since.secs);
            match offline_since {
                Some(since) if now_secs.saturating_sub(since) >= grace => {
                    tracing::error!(%disk, offline_secs = now_secs - since, grace_secs = grace, "disk did not come back within the grace period");
                    self.mark_failed(disk)?;
                    check.failed.push(disk);
                }
                Some(_) => {
                    if !self.probes.due(disk, now_nanos) {
                        continue;
                    }
                    match self.probe(disk) {
                        Ok(device) => check.rejoined.push(self.rejoin(disk, device)?),
                        Err(reason) => {
                            let delay = self.probes.backoff(disk, now_nanos);
                            tracing::debug!(%disk, %reason, retry_in_secs = delay / 1_000_000_000, "disk still offline");
                        }
                    }
                }
                None => {
                    if !self.probes.due(disk, now_nanos) {
                        continue;
                    }
                    match self.probe_current(disk) {
                        Ok(()) => self.probes.online(disk, now_nanos),
                        Err(reason) => {
                            self.mark_offline(disk, &reason)?;
                            check.went_offline.push(disk);
                        }
                    }
                }
            }
        }
        if !check.is_empty() {
            self.sync()?;
        }
        Ok(check)
    }

    /// Whether the device the pool holds for `disk` still answers as that disk.
    pub(crate) fn probe_current(&self, disk: DiskId) -> std::result::Result<(), String> {
        let device = self.devices.get(&disk).cloned().ok_or_else(|| format!("disk {disk} has no device"))?;
        self.verify_label(disk, device.as_ref())
    }

    /// Reaches `disk` afresh (through the `Reconnector` when there is one) and verifies
    /// its label.
    fn probe(&self, disk: DiskId) -> std::result::Result<Arc<dyn BlockDevice>, String> {
        let uuid = self.state.disks.get(&disk).map(|d| d.uuid).ok_or_else(|| format!("disk {disk} is unknown"))?;
        let device = match &self.options.reconnect {
            Some(reconnect) => (reconnect.0)(uuid)?,
            None => self.devices.get(&disk).cloned().ok_or_else(|| format!("disk {disk} has no device"))?,
        };
        self.verify_label(disk, device.as_ref())?;
        Ok(device)
    }

    fn verify_label(&self, disk: DiskId, device: &dyn BlockDevice) -> std::result::Result<(), String> {
        let uuid = self.state.disks.get(&disk).map(|d| d.uuid).ok_or_else(|| format!("disk {disk} is unknown"))?;
        match DiskLabel::read(device) {
            Ok(label) if label.pool_id == self.state.pool_id && label.disk_uuid == uuid => Ok(()),
            Ok(label) if label.pool_id != self.state.pool_id => {
                Err(format!("its label names pool {}, not this pool", label.pool_id))
            }
            Ok(label) => Err(format!("a different disk ({}) is at its place", label.disk_uuid)),
            Err(crate::media::label::LabelError::Missing) => {
                Err("its label is missing: is the disk mounted?".to_string())
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Deletes the fragments on `device` (coming back as `disk`) that the state does not
    /// place there, after claiming the pool when there are any (see `Pool::claim`).
    /// Call right after a barrier, with nothing writing to the disk. Returns the
    /// fragments it held that are kept, and how many were deleted.
    fn delete_unreferenced(
        &mut self,
        disk: DiskId,
        device: &dyn BlockDevice,
    ) -> Result<(std::collections::BTreeSet<BlockName>, usize)> {
        let (kept, stale): (std::collections::BTreeSet<BlockName>, std::collections::BTreeSet<BlockName>) = device
            .list(BlockKind::Fragment)
            .map_err(|e| Error::Io(format!("listing disk {disk}: {e}")))?
            .into_iter()
            .partition(|name| {
                self.state.places(disk, *name)
                    || matches!(name, BlockName::Fragment { extent, .. } if self.writing.contains(*extent))
            });
        if !stale.is_empty() {
            self.claim()?;
        }
        for name in &stale {
            device.delete(*name).map_err(|e| Error::Io(format!("deleting {name} on disk {disk}: {e}")))?;
        }
        Ok((kept, stale.len()))
    }

    /// Brings offline `disk` back through `device` (verified by its label): after a
    /// barrier, deletes the fragments there that nothing references, marks it online
    /// (durable), and leaves the extents it is owed to the rebuild queue.
    fn rejoin(&mut self, disk: DiskId, device: Arc<dyn BlockDevice>) -> Result<Rejoined> {
        debug_assert!(self.state.disk_awaited(disk));
        let device = self.owned(device)?;
        // Only at a barrier boundary is an unreferenced fragment there garbage: nothing
        // durable still names it, and nothing writes to an offline disk.
        self.sync()?;
        let (_, stale_deleted) = self.delete_unreferenced(disk, device.as_ref())?;
        let since = self.state.offline.get(&disk).map_or(0, |o| o.since.secs);
        let at = self.clock.wall();
        self.devices.insert(disk, device);
        self.io_errors.remove(&disk);
        self.commit(Transaction { ops: vec![Op::DiskOnline { disk, at }] })?;
        self.sync()?;
        self.counters.disks_rejoined += 1;
        let now = self.clock.monotonic_nanos();
        self.probes.online(disk, now);
        let owed = self.state.owed.get(&disk).map_or(0, |o| o.len());
        let away_secs = at.secs.saturating_sub(since);
        tracing::info!(%disk, away_secs, owed, stale_deleted, "disk is back: it rejoined, and only the extents written while it was away are repaired");
        debug_assert!(self.state.disk_online(disk));
        Ok(Rejoined { disk, away_secs, owed, stale_deleted })
    }
}
