//! Reading extents without holding the pool: a front end with several request threads
//! plans a read under its lock, fetches the extents (disk reads, checks, decoding) with
//! the lock released, and books the results under the lock again. Other requests are
//! served meanwhile, so disk time overlaps with everything else.
//!
//! Contract: a plan never includes an extent another plan is fetching (`in_flight`);
//! booking puts only verified data into the cache; a failed fetch books nothing, and the
//! ordinary read then fetches again and reports the error.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::device::{BlockDevice, ExtentId};
use crate::error::Result;
use crate::files::FileHandle;
use crate::io::run_all;
use crate::meta::state::{DiskId, ExtentRecord, EXTENT_BYTES_MAX};
use crate::pool::Pool;
use crate::store::{fetch_extent, Fetched};

/// Extents to fetch with the pool's lock released.
pub struct FetchPlan {
    jobs: Vec<(ExtentRecord, u64)>,
    devices: BTreeMap<DiskId, Arc<dyn BlockDevice>>,
    verify: bool,
    /// Threads, or one after another (the simulator).
    parallel: bool,
}

/// What a plan brought back, to hand to `Pool::book_fetched`.
pub struct FetchedExtents(Vec<(ExtentRecord, u64, Fetched)>);

/// A read's plan: what it must fetch before it can answer, what to fetch ahead (no one
/// needs to wait for that), and extents it needs that another request is fetching.
pub struct ReadPlan {
    pub fetch: Option<FetchPlan>,
    pub ahead: Option<FetchPlan>,
    pub wait_for: Vec<ExtentId>,
}

/// Extents being fetched outside the lock.
#[derive(Default)]
pub(crate) struct InFlight(BTreeSet<ExtentId>);

impl FetchPlan {
    /// Fetches every extent of the plan, in parallel.
    pub fn run(self) -> FetchedExtents {
        let (devices, verify) = (&self.devices, self.verify);
        FetchedExtents(run_all(self.parallel, self.jobs, |(record, offset)| {
            let fetched = fetch_extent(devices, &record, verify, false);
            (record, offset, fetched)
        }))
    }
}

impl Pool {
    /// Plans the fetches for a read of `size` bytes at `offset` through `fh`: the
    /// extents it covers and, for a sequential reader, the read-ahead window, except
    /// those cached, inline or already in flight.
    pub fn plan_read(&mut self, fh: FileHandle, offset: u64, size: usize) -> Result<ReadPlan> {
        let end = offset.saturating_add(size as u64);
        let (ino, sequential) = self.note_read(fh, offset, end)?;
        let needed_last = end.saturating_sub(1) / EXTENT_BYTES_MAX;
        let mut jobs = Vec::new();
        let mut ahead = Vec::new();
        let mut wait_for = Vec::new();
        for (record, at) in self.read_ahead_records(ino, offset, end) {
            let index = at / EXTENT_BYTES_MAX;
            if record.is_inline() || self.cache.contains(record.id) {
                continue;
            }
            if !sequential && index > needed_last {
                continue;
            }
            if self.in_flight.0.contains(&record.id) {
                if index <= needed_last {
                    wait_for.push(record.id);
                }
                continue;
            }
            self.in_flight.0.insert(record.id);
            if index <= needed_last {
                jobs.push((record, at));
            } else {
                ahead.push((record, at));
            }
        }
        Ok(ReadPlan { fetch: self.fetch_plan(jobs, true), ahead: self.fetch_plan(ahead, true), wait_for })
    }

    fn fetch_plan(&self, jobs: Vec<(ExtentRecord, u64)>, parallel: bool) -> Option<FetchPlan> {
        (!jobs.is_empty()).then(|| FetchPlan {
            jobs,
            devices: self.read_devices().into_owned(),
            verify: self.verifies_reads(),
            parallel,
        })
    }

    /// Fetches the extents of `records` that are not cached into the cache, in parallel
    /// unless the pool runs its I/O in order: read-ahead for a reader holding the pool.
    pub(crate) fn prefetch(&mut self, records: Vec<(ExtentRecord, u64)>) {
        let wanted: Vec<(ExtentRecord, u64)> =
            records.into_iter().filter(|(r, _)| !r.is_inline() && !self.cache.contains(r.id)).collect();
        if let Some(plan) = self.fetch_plan(wanted, self.options.parallel_io) {
            let fetched = plan.run();
            self.book_fetched(fetched);
        }
    }

    /// Books fetched extents: verified data goes into the cache.
    pub fn book_fetched(&mut self, fetched: FetchedExtents) {
        for (record, offset, outcome) in fetched.0 {
            self.in_flight.0.remove(&record.id);
            if outcome.data.is_ok() {
                let _ = self.settle(&record, offset, outcome);
            }
        }
    }

    /// Whether any of `extents` is still being fetched by another request.
    pub fn fetching_any(&self, extents: &[ExtentId]) -> bool {
        extents.iter().any(|id| self.in_flight.0.contains(id))
    }
}
