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

impl std::fmt::Display for WallTime {
    /// UTC, as `2026-11-25T15:35:44Z`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let days = self.secs.div_euclid(86_400);
        let second_of_day = self.secs.rem_euclid(86_400);
        // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let day_of_era = z.rem_euclid(146_097);
        let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
        let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
        let mp = (5 * day_of_year + 2) / 153;
        let day = day_of_year - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = year_of_era + era * 400 + i64::from(month <= 2);
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
            second_of_day / 3600,
            second_of_day / 60 % 60,
            second_of_day % 60
        )
    }
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

    /// The kernel's coarse real-time clock (`CLOCK_REALTIME_COARSE`), the one it stamps
    /// inode times with: under FUSE's writeback cache the kernel sets a file's mtime
    /// itself, and times taken here must order the same way against it (relatime's
    /// "atime not newer than mtime"). Falls back to `SystemTime` if the call fails.
    fn wall(&self) -> WallTime {
        // SAFETY: clock_gettime writes one timespec into the valid, writable `now`.
        #[allow(unsafe_code)]
        let coarse = unsafe {
            let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
            (libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut now) == 0).then_some(now)
        };
        if let Some(now) = coarse {
            if let Ok(nanos) = u32::try_from(now.tv_nsec) {
                return WallTime { secs: now.tv_sec, nanos };
            }
        }
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => WallTime { secs: i64::try_from(d.as_secs()).unwrap_or(i64::MAX), nanos: d.subsec_nanos() },
            Err(e) => {
                let d = e.duration();
                WallTime { secs: -i64::try_from(d.as_secs()).unwrap_or(i64::MAX), nanos: 0 }
            }
        }
    }
}

/// The real wall clock in nanoseconds since the epoch, to the nanosecond (0 before it):
/// for the production disk backend, which orders its records by it across restarts and
/// never runs in the simulator. The engine itself reads time only through `Clock`.
pub fn system_wall_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX / 2))
}

#[cfg(test)]
mod tests {
    use super::WallTime;

    #[test]
    fn wall_times_print_as_utc_dates() {
        assert_eq!(WallTime { secs: 0, nanos: 0 }.to_string(), "1970-01-01T00:00:00Z");
        assert_eq!(WallTime { secs: 951_782_400, nanos: 0 }.to_string(), "2000-02-29T00:00:00Z");
        assert_eq!(WallTime { secs: 1_795_620_944, nanos: 5 }.to_string(), "2026-11-25T15:35:44Z");
        assert_eq!(WallTime { secs: -1, nanos: 0 }.to_string(), "1969-12-31T23:59:59Z");
    }
}
