//! The parallel-I/O seam: runs independent per-disk jobs at once in production, or one
//! after another in order when the simulator needs a seed to replay exactly.
//!
//! Parallel jobs run on one long-lived pool of I/O threads (`rayon`), not on threads
//! spawned per call: a barrier issues a few dozen short jobs, and spawning a thread for
//! each cost more than the jobs themselves. The threads mostly wait on disks, so the pool
//! is much wider than the machine has cores. A job may itself call `run_all` (a disk's
//! sync runs its fsyncs at once); a pool thread waiting for its nested jobs runs other
//! jobs meanwhile, so jobs must not hold a lock that other jobs take while they wait.
//! And no job ever waits for the pool's lock (`Pool` behind a front end's mutex): its
//! holder may itself be waiting for pool threads, and with every one of them blocked on
//! that lock nothing would move. Work that must book its results under that lock (the
//! read-ahead) runs on a thread of its own and only hands its disk jobs to the pool.

use std::sync::OnceLock;

use rayon::prelude::*;

/// Threads of the I/O pool: enough for every disk of a large pool to have a request in
/// flight during a barrier.
const IO_THREADS: usize = 16;

/// The shared I/O pool, or `None` when it could not be started (jobs then run in order).
fn io_pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(IO_THREADS)
            .thread_name(|i| format!("dfs-io-{i}"))
            .build()
            .map_err(|error| tracing::warn!(%error, "no I/O thread pool; disk jobs run one after another"))
            .ok()
    })
    .as_ref()
}

/// Runs `job` on every item, at once on the I/O pool when `parallel`, returning results
/// in input order either way.
pub(crate) fn run_all<T, R, F>(parallel: bool, items: Vec<T>, job: F) -> Vec<R>
where
    T: Send,
    R: Send,
    F: Fn(T) -> R + Sync + Send,
{
    let count = items.len();
    let results: Vec<R> = match io_pool() {
        Some(pool) if parallel && count > 1 => {
            pool.install(|| items.into_par_iter().with_max_len(1).map(job).collect())
        }
        _ => items.into_iter().map(job).collect(),
    };
    debug_assert_eq!(results.len(), count);
    results
}
