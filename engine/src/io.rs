//! The parallel-I/O seam: runs independent per-disk jobs on threads in production, or
//! one after another in order when the simulator needs a seed to replay exactly.

/// Runs `job` on every item, on scoped threads when `parallel`, returning results in
/// input order either way.
pub(crate) fn run_all<T, R, F>(parallel: bool, items: Vec<T>, job: F) -> Vec<R>
where
    T: Send,
    R: Send,
    F: Fn(T) -> R + Sync,
{
    if !parallel || items.len() < 2 {
        return items.into_iter().map(job).collect();
    }
    let job = &job;
    std::thread::scope(|scope| {
        let handles: Vec<_> = items.into_iter().map(|item| scope.spawn(move || job(item))).collect();
        handles
            .into_iter()
            .map(|handle| match handle.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    })
}
