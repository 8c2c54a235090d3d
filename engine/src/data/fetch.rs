//! Reading extents without holding the pool: `read_shared` — the read of a front end
//! with several request threads — plans a read under the pool's lock, fetches the extents
//! (disk reads, checks, decoding) with the lock released, books the results under the
//! lock again, and answers from the cache. Other requests are served meanwhile, so disk
//! time overlaps with everything else; read-ahead runs on a few long-lived threads of its
//! own (`ReadAheadQueue`), answering no one. A sequential reader's window grows a batch
//! of neighbouring extents at a time, and a worker fetches a batch together, each disk
//! reading its shards of the batch as one request where they lie side by side
//! (`READ_AHEAD_BATCH`).
//!
//! Contract: a plan never includes an extent another plan is fetching (`in_flight`), so
//! nothing is fetched twice at once: a read that needs such an extent waits for its
//! booking; booking puts only verified data into the cache and wakes those waiters; a
//! failed fetch books nothing, and the ordinary read then fetches again and reports the
//! error.

use std::collections::{BTreeMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use crate::base::error::Result;
use crate::base::io::run_all;
use crate::data::store::{fetch_extent, fetch_gathered, Fetched};
use crate::data::window::ReadData;
use crate::media::device::{BlockDevice, ExtentId};
use crate::meta::state::{DiskId, ExtentCore, ExtentRecord, EXTENT_BYTES_MAX};
use crate::pool::open_files::FileHandle;
use crate::pool::{lock, Pool};

/// Extents to fetch with the pool's lock released.
pub(crate) struct FetchPlan {
    jobs: Vec<(ExtentRecord, u64)>,
    devices: BTreeMap<DiskId, Arc<dyn BlockDevice>>,
    verify: bool,
    /// Threads, or one after another (the simulator).
    parallel: bool,
}

/// What a plan brought back, to hand to `Pool::book_fetched`.
pub(crate) struct FetchedExtents(Vec<(ExtentRecord, u64, Fetched)>);

/// A read's plan: what it must fetch before it can answer, what to fetch ahead (no one
/// needs to wait for that), and extents it needs that another request is fetching.
pub(crate) struct ReadPlan {
    pub(crate) fetch: Option<FetchPlan>,
    pub(crate) ahead: Option<FetchPlan>,
    pub(crate) wait_for: Vec<ExtentId>,
}

/// How long a read waits for another request's fetch of an extent it needs before
/// reading it itself (a fetch that never books — a bug — must not hang readers).
const FETCH_WAIT_MAX: Duration = Duration::from_secs(5);

/// Reads `size` bytes at `offset` through `fh` from a pool that several request threads
/// share, holding its lock only to plan, book and copy (see the module header). Read-ahead
/// the plan asks for goes on in the background after this returns.
pub fn read_shared(pool: &Arc<Mutex<Pool>>, fh: FileHandle, offset: u64, size: usize) -> Result<ReadData> {
    let plan = lock(pool).plan_read(fh, offset, size)?;
    if let Some(ahead) = plan.ahead {
        // The read-ahead belongs to this request: its log lines carry its id.
        if let Err(ahead) = ReadAheadQueue::push(pool, ahead, tracing::Span::current()) {
            // No thread, no read-ahead: the extents are no longer in flight, and the reads
            // that reach them fetch them themselves.
            lock(pool).abandon_fetch(&ahead.extents());
        }
    }
    if let Some(fetch) = plan.fetch {
        let fetched = fetch.run();
        lock(pool).book_fetched(fetched);
    }
    let mut guard = lock(pool);
    if !plan.wait_for.is_empty() {
        let booked = guard.in_flight.signal();
        let (waited, _) = booked
            .wait_timeout_while(guard, FETCH_WAIT_MAX, |pool| pool.fetching_any(&plan.wait_for))
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        guard = waited;
    }
    guard.answer_read(fh, offset, size, false)
}

/// Threads that run read-ahead plans and book what they fetch.
///
/// Why long-lived threads of their own: read-ahead books under the pool's lock, which no
/// I/O-pool job may wait for (see `base::io`); a thread spawned per plan (one per
/// sequential read request) cost its start and, worse, a fresh direct-read buffer whose
/// page faults and zero-fill took a tenth of a sequential read's CPU. A few threads
/// reading a batch each keep a request or two in flight, which is what this project's
/// virtual disks serve best (see `READ_AHEAD_BATCH`).
///
/// Contract: every extent of a queued plan is in flight until its worker books it (or,
/// if the fetch panicked, abandons it); plans run in the order they were queued.
struct ReadAheadQueue {
    jobs: Mutex<VecDeque<ReadAheadJob>>,
    /// Signalled when a job is queued.
    work: Condvar,
    /// Workers started (0: none could be, and read-ahead is off).
    workers: AtomicUsize,
}

/// A batch of read-ahead, with the pool to book it in and the request it serves.
struct ReadAheadJob {
    pool: Arc<Mutex<Pool>>,
    plan: FetchPlan,
    span: tracing::Span,
}

/// Read-ahead workers. Each fetches a batch at a time, reading from one disk after
/// another, so that a few of them keep about one large request in flight (see
/// `READ_AHEAD_BATCH`).
const READ_AHEAD_THREADS: usize = 4;

/// Neighbouring extents a read-ahead job fetches together (`FetchPlan::run_gathered`):
/// each disk reads its data shards of the batch, which placement lays side by side
/// (`placement::stripe_order`), in a request or two (two flushes of a file append to a
/// disk at once, two chunks at a time, so a batch's shards may lie in two runs).
///
/// Why: this project's virtual disk serves requests about one at a time, each costing
/// ≈ 45 µs besides its bytes at ≈ 2.5 GB/s; read one 256 KiB shard per request, a
/// 1 GiB read took 4,400 requests and a fifth of its time in that cost. In batches of
/// four it takes ~2,100, and more workers or larger batches (8 × 16, 4 × 16 with a
/// deeper window, per-disk reads at once) moved no more bytes: with a request or two
/// in flight the disk is busy, and more only wait in its queue.
const READ_AHEAD_BATCH: usize = 4;

static READ_AHEAD: OnceLock<ReadAheadQueue> = OnceLock::new();

impl ReadAheadQueue {
    /// The queue, its workers started on first use.
    fn get() -> &'static ReadAheadQueue {
        let mut first = false;
        let queue = READ_AHEAD.get_or_init(|| {
            first = true;
            ReadAheadQueue { jobs: Mutex::new(VecDeque::new()), work: Condvar::new(), workers: AtomicUsize::new(0) }
        });
        if first {
            for index in 0..READ_AHEAD_THREADS {
                let started =
                    std::thread::Builder::new().name(format!("dfs-read-ahead-{index}")).spawn(move || queue.serve());
                match started {
                    Ok(_) => {
                        queue.workers.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(error) => tracing::warn!(%error, "no thread for read-ahead"),
                }
            }
        }
        queue
    }

    /// Queues `plan`'s extents, a batch per job, so that the workers fetch the batches
    /// side by side; the plan back, nothing queued, when no worker runs.
    fn push(pool: &Arc<Mutex<Pool>>, plan: FetchPlan, span: tracing::Span) -> std::result::Result<(), FetchPlan> {
        let queue = ReadAheadQueue::get();
        if queue.workers.load(Ordering::Relaxed) == 0 {
            return Err(plan);
        }
        let mut jobs = queue.jobs.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for plan in plan.split() {
            jobs.push_back(ReadAheadJob { pool: pool.clone(), plan, span: span.clone() });
            queue.work.notify_one();
        }
        Ok(())
    }

    /// A worker: runs queued jobs for ever, sleeping while there are none.
    fn serve(&self) {
        loop {
            let job = {
                let mut jobs = self.jobs.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                loop {
                    if let Some(mut job) = jobs.pop_front() {
                        // Extents queued behind it for the same pool join it (up to a
                        // batch): fetched together, their shards go to each disk as runs.
                        while job.plan.jobs.len() < READ_AHEAD_BATCH {
                            match jobs.front() {
                                Some(next) if Arc::ptr_eq(&next.pool, &job.pool) => {
                                    if let Some(next) = jobs.pop_front() {
                                        job.plan.jobs.extend(next.plan.jobs);
                                    }
                                }
                                _ => break,
                            }
                        }
                        break job;
                    }
                    jobs = self.work.wait(jobs).unwrap_or_else(|poisoned| poisoned.into_inner());
                }
            };
            let ReadAheadJob { pool, plan, span } = job;
            let _span = span.enter();
            let extents = plan.extents();
            match catch_unwind(AssertUnwindSafe(|| plan.run_gathered())) {
                Ok(fetched) => lock(&pool).book_fetched(fetched),
                Err(_) => {
                    tracing::error!("a read-ahead fetch panicked; its extents are read on demand");
                    lock(&pool).abandon_fetch(&extents);
                }
            }
        }
    }
}

impl FetchPlan {
    /// The plan, as plans of `READ_AHEAD_BATCH` neighbouring extents (the last one
    /// shorter).
    fn split(self) -> Vec<FetchPlan> {
        let FetchPlan { jobs, devices, verify, parallel } = self;
        let mut jobs = jobs.into_iter().peekable();
        let mut plans = Vec::new();
        while jobs.peek().is_some() {
            let batch: Vec<_> = jobs.by_ref().take(READ_AHEAD_BATCH).collect();
            plans.push(FetchPlan { jobs: batch, devices: devices.clone(), verify, parallel });
        }
        plans
    }

    /// The extents the plan fetches.
    pub(crate) fn extents(&self) -> Vec<ExtentId> {
        self.jobs.iter().map(|(record, _)| record.id).collect()
    }

    /// Fetches every extent of the plan, in parallel. An extent's own shards are read in
    /// turn: at once, each on an I/O thread, they cost more CPU (jobs handed between
    /// threads) than they saved in time, the extents of a plan keeping the disks busy.
    pub(crate) fn run(self) -> FetchedExtents {
        let (devices, verify) = (&self.devices, self.verify);
        FetchedExtents(run_all(self.parallel, self.jobs, |(record, offset)| {
            let fetched = fetch_extent(devices, &record, verify, false);
            (record, offset, fetched)
        }))
    }

    /// Fetches every extent of the plan on this thread, their data shards gathered disk
    /// by disk (`fetch_gathered`: shards that lie side by side on a disk are read as one
    /// request); an extent that way could not give is fetched alone, which reads its
    /// other fragments and reports what it found.
    fn run_gathered(self) -> FetchedExtents {
        if !self.verify {
            return self.run();
        }
        let records: Vec<&ExtentRecord> = self.jobs.iter().map(|(record, _)| record).collect();
        let gathered = fetch_gathered(&self.devices, &records);
        debug_assert_eq!(gathered.len(), self.jobs.len());
        let devices = &self.devices;
        FetchedExtents(
            self.jobs
                .into_iter()
                .zip(gathered)
                .map(|((record, offset), data)| {
                    let fetched = match data {
                        Some(data) => Fetched::clean(data),
                        None => fetch_extent(devices, &record, true, false),
                    };
                    (record, offset, fetched)
                })
                .collect(),
        )
    }
}

impl Pool {
    /// Plans the fetches for a read of `size` bytes at `offset` through `fh`: the
    /// extents it covers and, for a sequential reader, the read-ahead window, except
    /// those cached, inline or already in flight.
    pub(crate) fn plan_read(&mut self, fh: FileHandle, offset: u64, size: usize) -> Result<ReadPlan> {
        let end = offset.saturating_add(size as u64);
        let (ino, sequential) = self.note_read(fh, offset, end)?;
        let needed_last = end.saturating_sub(1) / EXTENT_BYTES_MAX;
        // The window ends on a batch boundary: extents join it a batch at a time, so that
        // each read-ahead job fetches a batch of neighbours together.
        let batch = READ_AHEAD_BATCH as u64;
        let ahead_last = ((needed_last + 1 + self.read_ahead_extents(ino)) / batch * batch).saturating_sub(1);
        let mut jobs = Vec::new();
        let mut ahead = Vec::new();
        let mut wait_for = Vec::new();
        for (id, at) in self.read_ahead_records(ino, offset, end) {
            let index = at / EXTENT_BYTES_MAX;
            if self.state.extents.get(&id).is_none_or(ExtentCore::is_inline) || self.cache.contains(id) {
                continue;
            }
            if (!sequential || index > ahead_last) && index > needed_last {
                continue;
            }
            if self.in_flight.contains(id) {
                if index <= needed_last {
                    wait_for.push(id);
                }
                continue;
            }
            if index <= needed_last {
                let record = self.referenced_record(id)?;
                self.in_flight.start(id);
                jobs.push((record, at));
            } else if let Ok(Some(record)) = self.extent_record(id) {
                // Read-ahead only: a record that cannot be read now fails the read that needs it.
                self.in_flight.start(id);
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

    /// Fetches the extents of `records` that are neither cached nor in flight into the
    /// cache, in parallel unless the pool runs its I/O in order: read-ahead for a reader
    /// holding the pool.
    pub(crate) fn prefetch(&mut self, extents: Vec<(ExtentId, u64)>) {
        let wanted: Vec<(ExtentRecord, u64)> = extents
            .into_iter()
            .filter(|(id, _)| {
                self.state.extents.get(id).is_some_and(|r| !r.is_inline())
                    && !self.cache.contains(*id)
                    && !self.in_flight.contains(*id)
            })
            // Read-ahead only: a record that cannot be read now fails the read that needs it.
            .filter_map(|(id, at)| Some((self.extent_record(id).ok().flatten()?, at)))
            .collect();
        for (record, _) in &wanted {
            self.in_flight.start(record.id);
        }
        if let Some(plan) = self.fetch_plan(wanted, self.options.parallel_io) {
            let fetched = plan.run();
            self.book_fetched(fetched);
        }
    }

    /// Books fetched extents: verified data goes into the cache, and reads waiting for
    /// them wake.
    pub(crate) fn book_fetched(&mut self, fetched: FetchedExtents) {
        let mut booked = Vec::with_capacity(fetched.0.len());
        for (record, offset, outcome) in fetched.0 {
            booked.push(record.id);
            if outcome.data.is_ok() {
                let _ = self.settle(&record, offset, outcome);
            }
        }
        self.in_flight.finish(booked);
    }

    /// Gives up fetching `extents` (a plan that will not run): no longer in flight, and
    /// reads waiting for them go and read them themselves.
    pub(crate) fn abandon_fetch(&mut self, extents: &[ExtentId]) {
        self.in_flight.finish(extents.iter().copied());
    }

    /// Whether any of `extents` is still being fetched by another request.
    fn fetching_any(&self, extents: &[ExtentId]) -> bool {
        extents.iter().any(|id| self.in_flight.contains(*id))
    }
}
