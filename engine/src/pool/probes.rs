//! When each disk is probed next, and how a disk is opened afresh to probe it; the
//! probing itself, and what a disk's answer changes, is `crate::services::reachability`.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use uuid::Uuid;

use crate::media::device::BlockDevice;
use crate::meta::state::DiskId;

/// How often a disk that is online is checked (its label read).
pub const ONLINE_PROBE_NANOS: u64 = 5_000_000_000;
/// The first retry of an offline disk; each failed retry doubles it, up to the maximum.
pub const OFFLINE_PROBE_FIRST_NANOS: u64 = 1_000_000_000;
pub const OFFLINE_PROBE_MAX_NANOS: u64 = 60_000_000_000;

/// Opens a disk afresh by its uuid (production: the directory the pool config names),
/// so a disk that was away when the pool opened, or whose filesystem was remounted, can
/// rejoin. Without one, the pool probes the device it holds.
#[derive(Clone)]
pub struct Reconnector(pub Arc<ReconnectFn>);

/// Opens the disk with this uuid, or says why it cannot.
pub type ReconnectFn = dyn Fn(Uuid) -> std::result::Result<Arc<dyn BlockDevice>, String> + Send + Sync;

impl fmt::Debug for Reconnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Reconnector")
    }
}

/// When each disk is probed next.
#[derive(Default)]
pub(crate) struct Probes {
    pub(crate) next: BTreeMap<DiskId, Probe>,
}

#[derive(Clone, Copy)]
pub(crate) struct Probe {
    pub(crate) at_nanos: u64,
    /// The backoff of an offline disk; 0 for an online one.
    pub(crate) delay_nanos: u64,
}

impl Probes {
    /// Forgets `disk`'s schedule: the next check probes it at once.
    pub(crate) fn forget(&mut self, disk: DiskId) {
        self.next.remove(&disk);
    }

    pub(crate) fn due(&self, disk: DiskId, now: u64) -> bool {
        self.next.get(&disk).is_none_or(|p| now >= p.at_nanos)
    }

    pub(crate) fn online(&mut self, disk: DiskId, now: u64) {
        self.next.insert(disk, Probe { at_nanos: now + ONLINE_PROBE_NANOS, delay_nanos: 0 });
    }

    pub(crate) fn backoff(&mut self, disk: DiskId, now: u64) -> u64 {
        let delay = match self.next.get(&disk) {
            Some(p) if p.delay_nanos > 0 => (p.delay_nanos * 2).min(OFFLINE_PROBE_MAX_NANOS),
            _ => OFFLINE_PROBE_FIRST_NANOS,
        };
        self.next.insert(disk, Probe { at_nanos: now + delay, delay_nanos: delay });
        delay
    }
}
