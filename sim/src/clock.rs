//! `SimClock`: time moves only when the simulator advances it, so days of simulated
//! history pass in microseconds and every run of a seed sees the same times.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dfs_engine::base::clock::{Clock, WallTime};

/// Wall-clock origin of every simulation: 2026-01-01T00:00:00Z.
const EPOCH_SECS: i64 = 1_767_225_600;

/// A clock the simulator drives.
#[derive(Debug, Default)]
pub struct SimClock {
    nanos: AtomicU64,
}

impl SimClock {
    /// A clock at the simulation origin.
    pub fn new() -> Arc<SimClock> {
        Arc::new(SimClock::default())
    }

    /// Moves time forward by `nanos`.
    pub fn advance(&self, nanos: u64) {
        self.nanos.fetch_add(nanos, Ordering::SeqCst);
    }

    /// Nanoseconds since the origin.
    pub fn elapsed_nanos(&self) -> u64 {
        self.nanos.load(Ordering::SeqCst)
    }
}

impl Clock for SimClock {
    fn monotonic_nanos(&self) -> u64 {
        self.elapsed_nanos()
    }

    fn wall(&self) -> WallTime {
        let nanos = self.elapsed_nanos();
        WallTime { secs: EPOCH_SECS + (nanos / 1_000_000_000) as i64, nanos: (nanos % 1_000_000_000) as u32 }
    }
}
