//! A byte budget that refills with time (a token bucket), for background work that must
//! not exceed a rate: tiering's migrations and the background scrub (whose `Pacing` also
//! remembers the last foreground request, to yield to it). Time comes from
//! the caller (`Clock::monotonic_nanos`), so the simulator paces it deterministically.

/// Bytes that may be spent now, refilled at a rate up to a cap.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct ByteBudget {
    /// Bytes available, and when that was computed; `None` before first use (full).
    state: Option<(f64, u64)>,
}

impl ByteBudget {
    /// Refills for the time since the last call (at `rate` bytes/s, never above `cap`)
    /// and returns the bytes available at `now_nanos`. Starts full.
    pub(crate) fn available(&mut self, rate: f64, cap: f64, now_nanos: u64) -> f64 {
        let (bytes, at) = self.state.unwrap_or((cap, now_nanos));
        let elapsed_secs = now_nanos.saturating_sub(at) as f64 / 1e9;
        let bytes = (bytes + rate * elapsed_secs).min(cap);
        self.state = Some((bytes, now_nanos));
        bytes
    }

    /// Takes `bytes` from what `available` last returned.
    pub(crate) fn spend(&mut self, bytes: f64) {
        if let Some((available, _)) = self.state.as_mut() {
            *available -= bytes;
        }
    }
}

/// The scrub's in-memory pacing: budget, the last foreground request, and where the
/// pass's metadata check stands.
#[derive(Default)]
pub(crate) struct Pacing {
    /// Bytes that may be verified now.
    pub(crate) budget: ByteBudget,
    /// Monotonic nanos of the last foreground read or write.
    pub(crate) foreground_nanos: Option<u64>,
    /// Where the pass's check of the metadata store's copies goes on, once its extents
    /// are done (`Pool::check_metadata_step`).
    pub(crate) metadata_from: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_full_refills_at_the_rate_and_never_above_the_cap() {
        let mut budget = ByteBudget::default();
        assert_eq!(budget.available(10.0, 100.0, 0), 100.0);
        budget.spend(100.0);
        assert_eq!(budget.available(10.0, 100.0, 2_000_000_000), 20.0);
        assert_eq!(budget.available(10.0, 100.0, 60_000_000_000), 100.0);
    }
}
