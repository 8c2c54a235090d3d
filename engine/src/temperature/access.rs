//! Per-extent access statistics: a decayed access count, read from the `Clock` only.
//!
//! Every access adds one to a count that decays exponentially with a mean lifetime of one
//! day (`TAU_SECS`). Under a steady rate of r accesses a day the count settles at r, so the
//! count *is* the rate in accesses per day; a day without access divides it by e.

use serde::{Deserialize, Serialize};

/// Mean lifetime of one access in the decayed count, in seconds.
pub const TAU_SECS: f64 = 86_400.0;

/// What is known about an extent's accesses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AccessStats {
    /// The decayed count as of `updated_secs`.
    pub decayed: f64,
    /// When `decayed` was last brought up to date (seconds since the epoch, from the Clock).
    pub updated_secs: i64,
    /// The last access, if any.
    pub last_access_secs: Option<i64>,
    /// Accesses ever recorded.
    pub total: u64,
}

impl AccessStats {
    /// Records one access at `now_secs`.
    pub fn record(&mut self, now_secs: i64) {
        self.decayed = self.decayed_at(now_secs) + 1.0;
        self.updated_secs = self.updated_secs.max(now_secs);
        self.last_access_secs = Some(self.last_access_secs.map_or(now_secs, |last| last.max(now_secs)));
        self.total += 1;
    }

    fn decayed_at(&self, now_secs: i64) -> f64 {
        let elapsed = now_secs.saturating_sub(self.updated_secs).max(0) as f64;
        self.decayed * (-elapsed / TAU_SECS).exp()
    }

    /// Accesses per day, as of `now_secs`.
    pub fn ops_per_day(&self, now_secs: i64) -> f64 {
        self.decayed_at(now_secs) * 86_400.0 / TAU_SECS
    }

    /// Seconds since the last access (`None`: never accessed).
    pub fn since_last_access(&self, now_secs: i64) -> Option<u64> {
        self.last_access_secs.map(|last| now_secs.saturating_sub(last).max(0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;

    #[test]
    fn a_steady_rate_reads_back_as_that_rate() {
        let mut stats = AccessStats::default();
        let per_day = 1000;
        for i in 0..7 * per_day {
            stats.record(i * DAY / per_day);
        }
        let rate = stats.ops_per_day(7 * DAY);
        assert!((rate - 1000.0).abs() < 10.0, "{rate}");
        assert_eq!(stats.total, 7000);
        let last = (7 * per_day - 1) * DAY / per_day;
        assert_eq!(stats.since_last_access(7 * DAY), Some((7 * DAY - last) as u64));
    }

    #[test]
    fn silence_decays_the_rate_by_e_a_day() {
        let mut stats = AccessStats::default();
        stats.record(0);
        assert!((stats.ops_per_day(0) - 1.0).abs() < 1e-12);
        assert!((stats.ops_per_day(DAY) - (-1.0f64).exp()).abs() < 1e-12);
        assert!(stats.ops_per_day(30 * DAY) < 1e-12);
        assert_eq!(AccessStats::default().since_last_access(DAY), None);
    }

    #[test]
    fn an_access_from_the_past_does_not_move_time_backwards() {
        let mut stats = AccessStats::default();
        stats.record(100);
        stats.record(50);
        assert_eq!(stats.last_access_secs, Some(100));
        assert_eq!(stats.updated_secs, 100);
        assert!((stats.ops_per_day(100) - 2.0).abs() < 1e-12);
    }
}
