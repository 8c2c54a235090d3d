//! The time seam: `Clock`. The engine reads time only through it, so the simulator can
//! make hours pass in microseconds and replay them bit-for-bit.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Wall-clock time for inode timestamps: nanoseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WallTime {
    /// Seconds since the Unix epoch (negative before it).
    pub secs: i64,
    /// Nanoseconds within the second, below 1_000_000_000.
    pub nanos: u32,
}

/// Source of time for the engine.
pub trait Clock: Send + Sync {
    /// Monotonic nanoseconds since an arbitrary origin; never decreases.
    fn monotonic_nanos(&self) -> u64;
    /// Wall-clock time, for inode times.
    fn wall(&self) -> WallTime;
}

/// The production clock: `std::time`.
pub struct SystemClock {
    origin: Instant,
}

impl SystemClock {
    /// A clock whose monotonic origin is now.
    pub fn new() -> Self {
        Self { origin: Instant::now() }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn monotonic_nanos(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn wall(&self) -> WallTime {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => WallTime { secs: i64::try_from(d.as_secs()).unwrap_or(i64::MAX), nanos: d.subsec_nanos() },
            Err(e) => {
                let d = e.duration();
                WallTime { secs: -i64::try_from(d.as_secs()).unwrap_or(i64::MAX), nanos: 0 }
            }
        }
    }
}
