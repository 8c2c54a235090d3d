//! The metrics registry: what the pool counts, the latency of its foreground operations
//! (timed by the pool's `Clock`, so the simulator's are deterministic), and a snapshot of
//! everything an exporter needs. No HTTP and no exposition format here: the daemon
//! renders the snapshot (Prometheus text, JSON).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::pool::{Pool, PoolCounters};
use crate::reports::report::Health;

pub use crate::pool::op_stats::{Histogram, OpKind, OpStats, LATENCY_BUCKETS_SECS};

/// One disk's figures.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DiskMetrics {
    pub disk: String,
    pub state: String,
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub fragments: u64,
    /// Write and sync failures since its last success.
    pub io_errors: u64,
    pub reachable: bool,
    /// Offline: unreachable, waited for until its grace period ends.
    pub offline: bool,
    /// No room for another fragment (its capacity or its filesystem is exhausted).
    pub full: bool,
    /// When its state last changed (wall seconds), if dated.
    pub changed_secs: Option<i64>,
    /// Extents written while it was away, still to repair onto it.
    pub owed_extents: u64,
}

/// Extents and their bytes.
pub use crate::meta::extent_index::Tally as Count;

/// Everything the exporter shows.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MetricsSnapshot {
    pub counters: PoolCounters,
    pub ops: OpStats,
    pub disks: Vec<DiskMetrics>,
    pub by_policy: BTreeMap<String, Count>,
    pub by_health: BTreeMap<String, Count>,
    pub by_class: BTreeMap<String, Count>,
    pub rebuild_queue: u64,
    pub migration_queue: u64,
    pub scrub_pass_running: bool,
    pub scrub_pass_extents_left: u64,
    pub scrub_pass_extents_checked: u64,
    pub scrub_passes_completed: u64,
    pub scrub_last_pass_corrupt: u64,
    pub scrub_last_pass_repaired: u64,
    pub scrub_last_pass_unrecoverable: u64,
    pub journal_seq: u64,
    /// Seconds since the newest durable checkpoint was written, when this process wrote one.
    pub checkpoint_age_secs: Option<f64>,
    pub healthy: bool,
}

impl Pool {
    /// Times a foreground operation of `kind` moving `bytes`, started at `started_nanos`
    /// (`Clock::monotonic_nanos`).
    pub(crate) fn record_op(&mut self, kind: OpKind, bytes: u64, started_nanos: u64) {
        let nanos = self.clock.monotonic_nanos().saturating_sub(started_nanos);
        self.ops.record(kind, bytes, nanos);
    }

    /// A snapshot of every metric.
    pub fn metrics(&self) -> MetricsSnapshot {
        let infos = self.disk_infos();
        let disks = infos
            .iter()
            .map(|info| DiskMetrics {
                disk: info.id.clone(),
                state: info.state.clone(),
                capacity_bytes: info.capacity_bytes,
                used_bytes: info.used_bytes,
                fragments: info.fragments as u64,
                io_errors: self
                    .state
                    .disks
                    .values()
                    .find(|d| d.id.to_string() == info.id)
                    .and_then(|d| self.io_errors.get(&d.id))
                    .map_or(0, |n| u64::from(*n)),
                reachable: info.reachable,
                offline: info.offline_reason.is_some(),
                full: info.full,
                changed_secs: info.changed_secs,
                owed_extents: info.owed_extents as u64,
            })
            .collect();
        // Counted by the index the commits keep, and health from the extents it names
        // as suspect: a scrape lists no disk and visits no healthy extent (health as the
        // pool knows it: `known_health`).
        let index = &self.state.extent_index;
        let by_policy: BTreeMap<String, Count> =
            index.by_policy().map(|(policy, tally)| (policy.to_string(), tally)).collect();
        let mut healthy = by_policy.values().fold(Count::default(), |all, c| all.plus(*c));
        let mut by_health: BTreeMap<String, Count> = BTreeMap::new();
        for id in self.suspect_extents() {
            let Some(record) = self.state.extents.get(&id) else { continue };
            let health = self.known_health(id, record).0;
            if health != Health::Healthy {
                let entry = by_health.entry(health.to_string()).or_default();
                entry.extents += 1;
                entry.bytes += u64::from(record.len);
                healthy.extents -= 1;
                healthy.bytes -= u64::from(record.len);
            }
        }
        by_health.insert(Health::Healthy.to_string(), healthy);
        let by_class: BTreeMap<String, Count> = index
            .by_class()
            .map(|(class, tally)| (class.map_or("unclassified".to_string(), |c| c.to_string()), tally))
            .collect();
        for health in [Health::Healthy, Health::Degraded, Health::Lost] {
            by_health.entry(health.to_string()).or_default();
        }
        let scrub = self.state.scrub;
        let left = self.scrub_pass_left();
        let last = scrub.last_full_pass.map(|p| p.stats).unwrap_or_default();
        MetricsSnapshot {
            counters: self.counters.clone(),
            ops: self.ops.clone(),
            disks,
            by_policy,
            by_health,
            by_class,
            rebuild_queue: self.rebuild_queue_len() as u64,
            migration_queue: self.pending_migrations_len() as u64,
            scrub_pass_running: scrub.pass.is_some() && !scrub.paused,
            scrub_pass_extents_left: left,
            scrub_pass_extents_checked: scrub.pass.map_or(0, |p| p.extents),
            scrub_passes_completed: scrub.passes_completed,
            scrub_last_pass_corrupt: last.corrupt,
            scrub_last_pass_repaired: last.repaired,
            scrub_last_pass_unrecoverable: last.unrecoverable,
            journal_seq: self.tip.seq,
            checkpoint_age_secs: self
                .checkpoint_written_nanos
                .map(|at| self.clock.monotonic_nanos().saturating_sub(at) as f64 / 1e9),
            healthy: self.known_pool_health().healthy,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_whose_bound_they_do_not_exceed() {
        let mut h = Histogram::default();
        h.observe_nanos(100_000); // exactly 0.0001 s: `le` is inclusive
        h.observe_nanos(100_001);
        h.observe_nanos(2_000_000_000); // above every bound
        assert_eq!(h.buckets[0], 1);
        assert_eq!(h.buckets[1], 1);
        assert_eq!(h.buckets[LATENCY_BUCKETS_SECS.len()], 1);
        assert_eq!(h.count, 3);
        assert!((h.sum_secs - 2.000200001).abs() < 1e-12, "{}", h.sum_secs);
    }
}
