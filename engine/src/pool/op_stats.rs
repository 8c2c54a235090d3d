//! Counts, bytes and latencies of foreground operations, timed by the pool's `Clock`
//! (so the simulator's are deterministic); `crate::reports::metrics` reports them.

use std::collections::BTreeMap;

use serde::Serialize;

/// Upper bounds of the latency buckets, in seconds (Prometheus `le`).
pub const LATENCY_BUCKETS_SECS: [f64; 12] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0];

/// A latency histogram with `LATENCY_BUCKETS_SECS` (cumulative counts per bucket, as
/// Prometheus wants them, are computed when rendering).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Histogram {
    /// Observations in each bucket (not cumulative); the last slot is above every bound.
    pub buckets: [u64; LATENCY_BUCKETS_SECS.len() + 1],
    pub count: u64,
    pub sum_secs: f64,
}

impl Histogram {
    /// Records one observation of `nanos`.
    pub fn observe_nanos(&mut self, nanos: u64) {
        let secs = nanos as f64 / 1e9;
        let slot = LATENCY_BUCKETS_SECS.iter().position(|bound| secs <= *bound).unwrap_or(LATENCY_BUCKETS_SECS.len());
        self.buckets[slot] += 1;
        self.count += 1;
        self.sum_secs += secs;
    }
}

/// Foreground operations the pool times.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum OpKind {
    Read,
    Write,
    Fsync,
}

impl OpKind {
    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Read => "read",
            OpKind::Write => "write",
            OpKind::Fsync => "fsync",
        }
    }
}

/// Counts and latencies of foreground operations since the pool was opened.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct OpStats {
    pub ops: BTreeMap<OpKind, u64>,
    pub bytes: BTreeMap<OpKind, u64>,
    pub latency: BTreeMap<OpKind, Histogram>,
}

impl OpStats {
    pub(crate) fn record(&mut self, kind: OpKind, bytes: u64, nanos: u64) {
        *self.ops.entry(kind).or_default() += 1;
        *self.bytes.entry(kind).or_default() += bytes;
        self.latency.entry(kind).or_default().observe_nanos(nanos);
    }
}
