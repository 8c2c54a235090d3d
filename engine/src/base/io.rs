//! The parallel-I/O seam: runs independent per-disk jobs at once in production, or one
//! after another in order when the simulator needs a seed to replay exactly.
//!
//! Parallel jobs run on one long-lived pool of I/O threads, not on threads spawned per
//! call: a barrier issues a few dozen short jobs, and spawning a thread for each cost more
//! than the jobs themselves. The threads mostly wait on disks, so the pool is much wider
//! than the machine has cores, and an idle thread sleeps at once on a condition variable:
//! it never spins (`rayon`'s idle threads yield in a loop before they sleep, which on two
//! cores took a third of the daemon's CPU under a database's stream of fsyncs).
//!
//! The caller of `run_all` queues its jobs and, while they are not all done, runs its own
//! queued jobs itself, so a job may itself call `run_all` (a disk's sync runs its fsyncs
//! at once) without ever waiting on a queue nobody serves: a caller waits idle only when
//! none of its jobs is left queued, and those running finish on their own. It runs only
//! its own: a caller that took the next job of anyone's — another step's fragment write,
//! blocked on the device for milliseconds — held up its own short ones behind it (a
//! write's encode of two extents, 1.2 ms of work, took 3.2 ms so). Jobs must not hold a
//! lock that other jobs take while they wait. And no job ever waits for the pool's lock (`Pool` behind a front
//! end's mutex): its holder may itself be waiting for I/O threads, and with every one of
//! them blocked on that lock nothing would move. Work that must book its results under
//! that lock (the read-ahead) runs on threads of its own (`data::fetch`) and only hands
//! its disk jobs to the pool.

use std::collections::VecDeque;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread;

/// Threads of the I/O pool: enough for every disk of a large pool to have a request in
/// flight during a barrier.
const IO_THREADS: usize = 16;

/// A queued job, its borrows erased (see `run_all` for why that is sound).
type Task = Box<dyn FnOnce() + Send + 'static>;

/// The shared queue of jobs and the threads' two reasons to wake.
struct IoPool {
    state: Mutex<Queue>,
    /// Signalled when a job is queued and a thread of the pool is idle.
    work: Condvar,
    /// Signalled when a job finishes (its caller may be waiting for it).
    progress: Condvar,
}

struct Queue {
    /// Queued jobs, each with the number of the `run_all` call that queued it.
    tasks: VecDeque<(u64, Task)>,
    /// The number the next `run_all` call takes.
    next_batch: u64,
    /// Pool threads waiting on `work`.
    idle: usize,
}

impl IoPool {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Tasks run outside the lock and catch their panics, so it is never poisoned by
        // one; recovering the guard keeps the pool alive regardless.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues `tasks` as one batch and wakes up to `helpers` idle threads for them;
    /// returns the batch's number. A caller that runs one of its jobs itself wakes one
    /// thread fewer than it has jobs: on two cores a thread woken for a job its caller
    /// had already taken cost two context switches for nothing, several times a barrier.
    fn push_all(&self, tasks: Vec<Task>, helpers: usize) -> u64 {
        debug_assert!(helpers <= tasks.len());
        let mut queue = self.lock();
        let batch = queue.next_batch;
        queue.next_batch += 1;
        queue.tasks.extend(tasks.into_iter().map(|task| (batch, task)));
        let idle = queue.idle;
        drop(queue);
        for _ in 0..helpers.min(idle) {
            self.work.notify_one();
        }
        batch
    }

    /// A pool thread: runs queued jobs for ever, sleeping while there are none.
    fn serve(&self) {
        let mut queue = self.lock();
        loop {
            if let Some((_, task)) = queue.tasks.pop_front() {
                drop(queue);
                task();
                queue = self.lock();
            } else {
                queue.idle += 1;
                queue = self.work.wait(queue).unwrap_or_else(|poisoned| poisoned.into_inner());
                queue.idle -= 1;
            }
        }
    }

    /// Runs `job` for a caller waiting on `batch`: leaves its result (or its panic) in
    /// `slot`, counts it done and, when it was the batch's last, wakes the caller — who
    /// waits for nothing else: its batch's jobs were all queued before it began to wait.
    /// Counting it done is the job's last use of `slot`: once the count reaches 0 the
    /// caller may return and drop it (`batch` is owned by the job, and the wake-up goes
    /// through the pool).
    fn run_job<R>(&self, job: impl FnOnce() -> R, slot: &Mutex<Option<thread::Result<R>>>, batch: &Batch) {
        let result = catch_unwind(AssertUnwindSafe(job));
        *slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(result);
        let before = batch.remaining.fetch_sub(1, Ordering::AcqRel);
        assert!(before > 0, "a batch counted more jobs done than it had");
        if before == 1 {
            let _wake = self.lock();
            self.progress.notify_all();
        }
    }

    /// Runs the queued jobs of batch number `number` until `batch` has none left running
    /// or queued.
    fn help_until_done(&self, number: u64, batch: &Batch) {
        let mut queue = self.lock();
        while batch.remaining.load(Ordering::Acquire) > 0 {
            let own = queue.tasks.iter().position(|(of, _)| *of == number);
            if let Some((_, task)) = own.and_then(|at| queue.tasks.remove(at)) {
                drop(queue);
                task();
                queue = self.lock();
            } else {
                queue = self.progress.wait(queue).unwrap_or_else(|poisoned| poisoned.into_inner());
            }
        }
    }
}

/// One `run_all` call's results, shared with its queued jobs.
struct Batch {
    remaining: AtomicUsize,
}

/// The shared I/O pool, or `None` when its threads could not be started (jobs then run
/// in order).
fn io_pool() -> Option<&'static IoPool> {
    static POOL: OnceLock<Option<&'static IoPool>> = OnceLock::new();
    *POOL.get_or_init(|| {
        let pool: &'static IoPool = Box::leak(Box::new(IoPool {
            state: Mutex::new(Queue { tasks: VecDeque::new(), next_batch: 0, idle: 0 }),
            work: Condvar::new(),
            progress: Condvar::new(),
        }));
        for i in 0..IO_THREADS {
            let started = thread::Builder::new().name(format!("dfs-io-{i}")).spawn(move || pool.serve());
            if let Err(error) = started {
                if i == 0 {
                    tracing::warn!(%error, "no I/O threads; disk jobs run one after another");
                    return None;
                }
                tracing::warn!(%error, threads = i, "fewer I/O threads than planned");
                break;
            }
        }
        Some(pool)
    })
}

/// Runs `job` on every item, at once on the I/O pool when `parallel`, returning results
/// in input order either way. A job's panic is re-raised here once every job has ended.
pub(crate) fn run_all<T, R, F>(parallel: bool, items: Vec<T>, job: F) -> Vec<R>
where
    T: Send,
    R: Send,
    F: Fn(T) -> R + Sync + Send,
{
    let count = items.len();
    let pool = match io_pool() {
        Some(pool) if parallel && count > 1 => pool,
        _ => return items.into_iter().map(job).collect(),
    };
    let batch = Arc::new(Batch { remaining: AtomicUsize::new(count) });
    let slots: Vec<Mutex<Option<thread::Result<R>>>> = (0..count).map(|_| Mutex::new(None)).collect();
    let tasks: Vec<Task> = items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let (job, slot, batch) = (&job, &slots[i], Arc::clone(&batch));
            let task: Box<dyn FnOnce() + Send + '_> = Box::new(move || pool.run_job(|| job(item), slot, &batch));
            erase(task)
        })
        .collect();
    // The caller runs one of its jobs itself (`help_until_done`).
    let number = pool.push_all(tasks, count - 1);
    pool.help_until_done(number, &batch);
    let mut results = Vec::with_capacity(count);
    for slot in slots {
        match slot.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner()) {
            Some(Ok(result)) => results.push(result),
            Some(Err(panic)) => resume_unwind(panic),
            None => unreachable!("run_all returned before a job ran"),
        }
    }
    debug_assert_eq!(results.len(), count);
    results
}

/// A job `spawn` started: `join` returns its result. Dropped unjoined, it waits for the
/// job to end all the same, so no job outlives the scope that started it.
pub(crate) struct Spawned<R: Send + 'static> {
    /// `None` once joined.
    state: Option<SpawnState<R>>,
}

enum SpawnState<R> {
    /// Run already, in order (not parallel, or no pool).
    Ran(thread::Result<R>),
    /// Queued on the pool as batch `number`.
    Queued { pool: &'static IoPool, number: u64, batch: Arc<Batch>, slot: Arc<Mutex<Option<thread::Result<R>>>> },
}

/// Starts `job` on the I/O pool when `parallel` and returns at once; not parallel (the
/// simulator), runs it now, so the order of everything it does stays the caller's.
/// `join` waits for it (running it itself if no pool thread took it yet).
pub(crate) fn spawn<R, F>(parallel: bool, job: F) -> Spawned<R>
where
    R: Send + 'static,
    F: FnOnce() -> R + Send + 'static,
{
    let pool = match io_pool() {
        Some(pool) if parallel => pool,
        _ => return Spawned { state: Some(SpawnState::Ran(catch_unwind(AssertUnwindSafe(job)))) },
    };
    let batch = Arc::new(Batch { remaining: AtomicUsize::new(1) });
    let slot: Arc<Mutex<Option<thread::Result<R>>>> = Arc::new(Mutex::new(None));
    let (task_batch, task_slot) = (Arc::clone(&batch), Arc::clone(&slot));
    let task: Task = Box::new(move || pool.run_job(job, &task_slot, &task_batch));
    let number = pool.push_all(vec![task], 1);
    Spawned { state: Some(SpawnState::Queued { pool, number, batch, slot }) }
}

impl<R: Send + 'static> Spawned<R> {
    /// Waits for the job and returns its result; a panic in it is raised here.
    pub(crate) fn join(mut self) -> R {
        match self.finish() {
            Some(Ok(result)) => result,
            Some(Err(panic)) => resume_unwind(panic),
            None => unreachable!("a spawned job is joined once"),
        }
    }

    fn finish(&mut self) -> Option<thread::Result<R>> {
        match self.state.take()? {
            SpawnState::Ran(result) => Some(result),
            SpawnState::Queued { pool, number, batch, slot } => {
                pool.help_until_done(number, &batch);
                let result = slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
                debug_assert!(result.is_some(), "a finished job left its result");
                result
            }
        }
    }
}

impl<R: Send + 'static> Drop for Spawned<R> {
    fn drop(&mut self) {
        // Unjoined (an early return): the job still ends before its starter goes on;
        // its result, or its panic, is dropped.
        let _ = self.finish();
    }
}

/// Erases a job's borrows so the pool's threads can hold it.
///
/// Sound because `run_all`, which owns everything the job borrows (`job`, the result
/// slots), does not return — nor unwind: the job catches its own panic — before the job
/// has run and stopped touching them: it waits until the batch's `remaining` count, which
/// each job decrements after its last use of a borrow, reaches zero. Every queued job is
/// run (pool threads never exit, and the waiting caller runs queued jobs itself), so the
/// wait ends.
#[allow(unsafe_code)]
fn erase(task: Box<dyn FnOnce() + Send + '_>) -> Task {
    // SAFETY: see above; only the lifetime changes, the layout of a boxed trait object
    // does not depend on it.
    unsafe { std::mem::transmute::<Box<dyn FnOnce() + Send + '_>, Task>(task) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_come_back_in_input_order_and_jobs_run_at_once() {
        let running = AtomicUsize::new(0);
        let most = AtomicUsize::new(0);
        let out = run_all(true, (0..8u64).collect(), |i| {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            thread::sleep(std::time::Duration::from_millis(50));
            running.fetch_sub(1, Ordering::SeqCst);
            i * 10
        });
        assert_eq!(out, (0..8u64).map(|i| i * 10).collect::<Vec<_>>());
        // One after another, no two jobs would ever run together.
        assert!(most.load(Ordering::SeqCst) >= 4, "at most {} jobs ran at once", most.load(Ordering::SeqCst));
    }

    #[test]
    fn every_job_of_a_batch_runs_at_once_though_the_caller_wakes_one_thread_fewer() {
        // Each job waits until all three have started: they can only finish if the caller
        // runs one and two pool threads the others, at the same time. The pool's threads
        // are started and asleep first, so only those woken for the batch can take a job.
        run_all(true, vec![(); IO_THREADS], |()| ());
        thread::sleep(std::time::Duration::from_millis(50));
        let started = AtomicUsize::new(0);
        let saw = run_all(true, vec![(); 3], |()| {
            started.fetch_add(1, Ordering::SeqCst);
            // At most about five seconds, counted in naps rather than read from a clock.
            for _ in 0..5_000 {
                if started.load(Ordering::SeqCst) == 3 {
                    break;
                }
                thread::sleep(std::time::Duration::from_millis(1));
            }
            started.load(Ordering::SeqCst)
        });
        assert_eq!(saw, vec![3, 3, 3], "a job ran alone");
    }

    #[test]
    fn nested_calls_deeper_than_the_pool_is_wide_finish() {
        let total = AtomicUsize::new(0);
        let outer = run_all(true, (0..IO_THREADS * 2).collect(), |i| {
            let inner = run_all(true, (0..4usize).collect(), |j| {
                thread::sleep(std::time::Duration::from_millis(1));
                total.fetch_add(1, Ordering::Relaxed);
                i + j
            });
            inner.iter().sum::<usize>()
        });
        assert_eq!(total.load(Ordering::Relaxed), IO_THREADS * 2 * 4);
        assert_eq!(outer[3], 3 * 4 + 6);
    }

    #[test]
    fn a_panicking_job_panics_the_caller_after_the_others_finish() {
        let finished = AtomicUsize::new(0);
        let caught = catch_unwind(AssertUnwindSafe(|| {
            run_all(true, (0..6usize).collect(), |i| {
                if i == 2 {
                    panic!("job 2 fails");
                }
                thread::sleep(std::time::Duration::from_millis(20));
                finished.fetch_add(1, Ordering::SeqCst);
            })
        }));
        assert!(caught.is_err());
        assert_eq!(finished.load(Ordering::SeqCst), 5);
        assert_eq!(run_all(true, vec![1, 2, 3], |i| i + 1), vec![2, 3, 4], "the pool still serves");
    }

    #[test]
    fn a_spawned_job_runs_beside_its_starter_and_one_dropped_unjoined_still_ends_first() {
        let (tx, rx) = std::sync::mpsc::channel();
        let started = spawn(true, move || rx.recv_timeout(std::time::Duration::from_secs(10)).is_ok());
        // The starter goes on while the job waits for it: it ran elsewhere.
        tx.send(()).unwrap();
        assert!(started.join(), "the job saw the starter's message");
        let ended = Arc::new(AtomicUsize::new(0));
        {
            let ended = Arc::clone(&ended);
            let _unjoined = spawn(true, move || {
                thread::sleep(std::time::Duration::from_millis(30));
                ended.fetch_add(1, Ordering::SeqCst);
            });
        }
        assert_eq!(ended.load(Ordering::SeqCst), 1, "dropping the handle waited for the job");
        let caller = thread::current().id();
        assert!(spawn(false, move || thread::current().id() == caller).join(), "not parallel: run in place");
    }

    #[test]
    fn sequential_runs_in_input_order_on_the_calling_thread() {
        let caller = thread::current().id();
        let order = Mutex::new(Vec::new());
        run_all(false, (0..5usize).collect(), |i| {
            assert_eq!(thread::current().id(), caller);
            order.lock().unwrap_or_else(|p| p.into_inner()).push(i);
        });
        assert_eq!(order.into_inner().unwrap_or_else(|p| p.into_inner()), vec![0, 1, 2, 3, 4]);
    }
}
