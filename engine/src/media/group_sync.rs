//! Syncing several devices at once, with one flush per filesystem they share.
//!
//! Why: a pool's disks may be directories of one filesystem (six on one disk, as a new
//! user first tries it). A barrier syncs every disk that took writes — its record's
//! journal replicas, the disks its fragments went to — and each `fdatasync` ends in a
//! flush of the disk's write cache, which a filesystem does not merge across files: on
//! this machine's ext4, a 205-byte write and `fdatasync` on each of three zero-filled
//! files took 600 µs run at once and 680 µs in turn, where the three writes and one
//! `syncfs` took 230 µs. A database's transaction waits for three such barriers.
//!
//! Contract of `sync_grouped`: each job's device gets its `before` step (a write, the
//! deletes a barrier owes it) and then, if `before` asks for one, a sync — and its result
//! is what that sync would have returned: `Ok` only once every write made to the device
//! before the sync began is durable. Devices naming the same
//! `BlockDevice::filesystem` are synced in one job through one `flush_filesystem`: each
//! `sync_through` runs inside the flush of the one before it, the innermost flushing, so
//! every device takes what is unsynced before the one flush starts. A device alone on
//! its filesystem, or on none (the simulator's, an object store's), syncs itself. A
//! filesystem flush that fails — which may be another file's writeback error: `syncfs`
//! reports the filesystem's — is retried as each device's own `sync`, so no device fails
//! for a write that was not its own.
//!
//! The jobs run through `run_all`: at once when `parallel`, else one after another in the
//! order given (a device of the simulator has no filesystem, so each is its own job and
//! the order is the caller's).

use std::collections::BTreeMap;

use crate::base::io::run_all;
use crate::media::device::{BlockDevice, DeviceError};

/// What `before` asks of a job's device once it ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Then {
    /// Sync it.
    Sync,
    /// Nothing more: it has nothing to sync.
    Done,
}

/// Runs `before` on each job's device and syncs those it asks to, devices on one
/// filesystem with one flush (see the module header); the result of each job, in the
/// order of `jobs`: `before`'s error, or the sync's as `sync_failed` makes it.
pub fn sync_grouped<J, E>(
    parallel: bool,
    jobs: Vec<J>,
    device: impl (for<'a> Fn(&'a J) -> &'a dyn BlockDevice) + Sync,
    before: impl Fn(&J) -> Result<Then, E> + Sync,
    sync_failed: impl Fn(&J, DeviceError) -> E + Sync,
) -> Vec<Result<(), E>>
where
    J: Send,
    E: Send,
{
    let count = jobs.len();
    let mut groups: BTreeMap<u64, Vec<(usize, J)>> = BTreeMap::new();
    let mut units: Vec<Vec<(usize, J)>> = Vec::with_capacity(count);
    for (index, job) in jobs.into_iter().enumerate() {
        match device(&job).filesystem() {
            Some(filesystem) => groups.entry(filesystem).or_default().push((index, job)),
            None => units.push(vec![(index, job)]),
        }
    }
    units.extend(groups.into_values());
    // The caller's order where every job is its own unit (the simulator's case).
    units.sort_by_key(|unit| unit.first().map(|(index, _)| *index));
    let results = run_all(parallel, units, |unit| {
        let mut results: Vec<(usize, Result<(), E>)> = Vec::with_capacity(unit.len());
        let mut syncing: Vec<(usize, &J)> = Vec::with_capacity(unit.len());
        for (index, job) in &unit {
            match before(job) {
                Ok(Then::Sync) => syncing.push((*index, job)),
                Ok(Then::Done) => results.push((*index, Ok(()))),
                Err(error) => results.push((*index, Err(error))),
            }
        }
        let devices: Vec<&dyn BlockDevice> = syncing.iter().map(|(_, job)| device(job)).collect();
        let synced = sync_together(&devices);
        debug_assert_eq!(synced.len(), syncing.len());
        for ((index, job), outcome) in syncing.into_iter().zip(synced) {
            results.push((index, outcome.map_err(|error| sync_failed(job, error))));
        }
        results
    });
    let mut flat: Vec<(usize, Result<(), E>)> = results.into_iter().flatten().collect();
    flat.sort_by_key(|(index, _)| *index);
    assert_eq!(flat.len(), count, "every job has one result");
    debug_assert!(flat.iter().enumerate().all(|(at, (index, _))| at == *index));
    flat.into_iter().map(|(_, result)| result).collect()
}

/// Syncs `devices` — all on one filesystem when there are two or more — with one flush
/// of it; falls back to each one's own `sync` when that flush fails.
fn sync_together(devices: &[&dyn BlockDevice]) -> Vec<Result<(), DeviceError>> {
    let [first, _, ..] = devices else {
        return devices.iter().map(|device| device.sync()).collect();
    };
    debug_assert!(devices.iter().all(|device| device.filesystem() == first.filesystem()));
    let mut results: Vec<Option<Result<(), DeviceError>>> = vec![None; devices.len()];
    let flushed = through(devices, 0, &mut results);
    if flushed.is_err() {
        return devices.iter().map(|device| device.sync()).collect();
    }
    let results: Vec<Result<(), DeviceError>> = results.into_iter().flatten().collect();
    assert_eq!(results.len(), devices.len(), "every device of the group was synced");
    results
}

/// Runs `devices[at]`'s `sync_through` around the syncs of the devices after it, the
/// innermost flushing the filesystem, leaving each device's result in `results`; returns
/// how the filesystem's flush went. A device that fails before it flushes (its own
/// pre-flush write) does not stop the others': the flush then runs without it.
fn through(
    devices: &[&dyn BlockDevice],
    at: usize,
    results: &mut [Option<Result<(), DeviceError>>],
) -> Result<(), DeviceError> {
    let Some(device) = devices.get(at) else {
        return devices.first().map_or(Ok(()), |device| device.flush_filesystem());
    };
    let mut flushed = None;
    let own = device.sync_through(&mut || {
        let outcome = through(devices, at + 1, results);
        flushed = Some(outcome.clone());
        outcome
    });
    results[at] = Some(own);
    match flushed {
        Some(outcome) => outcome,
        None => through(devices, at + 1, results),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use super::*;
    use crate::media::device::{BlockKind, BlockName};

    /// A device that counts how it was synced; `filesystem` groups it.
    struct Counted {
        filesystem: Option<u64>,
        /// Filesystem flushes, counted on every device of the filesystem that was asked.
        flushes: AtomicUsize,
        own_syncs: AtomicUsize,
        /// Syncs through a flush that came back `Ok`.
        covered: AtomicUsize,
        flush_fails: bool,
        /// Fails its own pre-flush step in `sync_through` (so never calls the flush).
        fails_before_flush: bool,
        log: &'static Mutex<Vec<String>>,
        name: &'static str,
    }

    impl Counted {
        fn new(name: &'static str, filesystem: Option<u64>, log: &'static Mutex<Vec<String>>) -> Counted {
            Counted {
                filesystem,
                flushes: AtomicUsize::new(0),
                own_syncs: AtomicUsize::new(0),
                covered: AtomicUsize::new(0),
                flush_fails: false,
                fails_before_flush: false,
                log,
                name,
            }
        }
    }

    impl BlockDevice for Counted {
        fn read(&self, _: BlockName) -> Result<Vec<u8>, DeviceError> {
            Err(DeviceError::NotFound)
        }
        fn write(&self, _: BlockName, _: &[u8]) -> Result<(), DeviceError> {
            Ok(())
        }
        fn delete(&self, _: BlockName) -> Result<(), DeviceError> {
            Ok(())
        }
        fn list(&self, _: BlockKind) -> Result<Vec<BlockName>, DeviceError> {
            Ok(Vec::new())
        }
        fn sync(&self) -> Result<(), DeviceError> {
            self.own_syncs.fetch_add(1, Ordering::SeqCst);
            self.log.lock().unwrap().push(format!("sync {}", self.name));
            Ok(())
        }
        fn capacity_bytes(&self) -> u64 {
            0
        }
        fn used_bytes(&self) -> u64 {
            0
        }
        fn describe(&self) -> String {
            self.name.to_string()
        }
        fn modified_secs(&self, _: BlockName) -> Result<Option<i64>, DeviceError> {
            Ok(None)
        }
        fn filesystem(&self) -> Option<u64> {
            self.filesystem
        }
        fn sync_through(&self, flush: &mut dyn FnMut() -> Result<(), DeviceError>) -> Result<(), DeviceError> {
            self.log.lock().unwrap().push(format!("take {}", self.name));
            if self.fails_before_flush {
                return Err(DeviceError::Io("zeroing failed".into()));
            }
            let flushed = flush();
            self.log.lock().unwrap().push(format!("settle {}", self.name));
            if flushed.is_ok() {
                self.covered.fetch_add(1, Ordering::SeqCst);
            }
            flushed
        }
        fn flush_filesystem(&self) -> Result<(), DeviceError> {
            self.flushes.fetch_add(1, Ordering::SeqCst);
            self.log.lock().unwrap().push(format!("flush {}", self.name));
            if self.flush_fails {
                return Err(DeviceError::Io("another file's writeback failed".into()));
            }
            Ok(())
        }
    }

    fn leak_log() -> &'static Mutex<Vec<String>> {
        Box::leak(Box::new(Mutex::new(Vec::new())))
    }

    fn run(devices: &[&Counted], before: impl Fn(&&Counted) -> Result<Then, String> + Sync) -> Vec<Result<(), String>> {
        sync_grouped(false, devices.to_vec(), |d: &&Counted| *d as &dyn BlockDevice, before, |_, e| e.to_string())
    }

    #[test]
    fn devices_of_one_filesystem_share_one_flush_taken_after_every_one_took_its_unsynced() {
        let log = leak_log();
        let (a, b, c) =
            (Counted::new("a", Some(7), log), Counted::new("b", Some(7), log), Counted::new("c", Some(7), log));
        let results = run(&[&a, &b, &c], |_| Ok(Then::Sync));
        assert!(results.iter().all(Result::is_ok));
        assert_eq!(
            a.flushes.load(Ordering::SeqCst) + b.flushes.load(Ordering::SeqCst) + c.flushes.load(Ordering::SeqCst),
            1
        );
        for device in [&a, &b, &c] {
            assert_eq!(device.own_syncs.load(Ordering::SeqCst), 0);
            assert_eq!(device.covered.load(Ordering::SeqCst), 1);
        }
        let log = log.lock().unwrap().clone();
        let flush = log.iter().position(|entry| entry.starts_with("flush")).unwrap();
        assert!(log[..flush].iter().filter(|entry| entry.starts_with("take")).count() == 3, "{log:?}");
        assert!(log[flush..].iter().filter(|entry| entry.starts_with("settle")).count() == 3, "{log:?}");
    }

    #[test]
    fn devices_alone_on_their_filesystem_or_on_none_sync_themselves() {
        let log = leak_log();
        let (a, b, c) =
            (Counted::new("a", Some(1), log), Counted::new("b", Some(2), log), Counted::new("c", None, log));
        let results = run(&[&a, &b, &c], |_| Ok(Then::Sync));
        assert!(results.iter().all(Result::is_ok));
        for device in [&a, &b, &c] {
            assert_eq!(device.own_syncs.load(Ordering::SeqCst), 1);
            assert_eq!(device.flushes.load(Ordering::SeqCst), 0);
        }
        assert_eq!(*log.lock().unwrap(), ["sync a", "sync b", "sync c"], "in the caller's order");
    }

    #[test]
    fn a_failed_filesystem_flush_is_retried_as_each_devices_own_sync() {
        let log = leak_log();
        let mut a = Counted::new("a", Some(7), log);
        a.flush_fails = true;
        let b = Counted::new("b", Some(7), log);
        let results = run(&[&a, &b], |_| Ok(Then::Sync));
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        assert_eq!(a.own_syncs.load(Ordering::SeqCst), 1);
        assert_eq!(b.own_syncs.load(Ordering::SeqCst), 1);
        assert_eq!(a.covered.load(Ordering::SeqCst) + b.covered.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_device_failing_before_the_flush_fails_alone_and_the_others_are_still_flushed() {
        let log = leak_log();
        let a = Counted::new("a", Some(7), log);
        let mut b = Counted::new("b", Some(7), log);
        b.fails_before_flush = true;
        let c = Counted::new("c", Some(7), log);
        let results = run(&[&a, &b, &c], |_| Ok(Then::Sync));
        assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
        assert!(results[1].as_ref().is_err_and(|e| e.contains("zeroing")), "{results:?}");
        assert_eq!(a.covered.load(Ordering::SeqCst), 1);
        assert_eq!(c.covered.load(Ordering::SeqCst), 1);
        assert_eq!(a.flushes.load(Ordering::SeqCst), 1, "one flush, by the group's first device");
    }

    #[test]
    fn before_decides_per_job_and_its_errors_are_the_jobs_results() {
        let log = leak_log();
        let (a, b, c) =
            (Counted::new("a", Some(7), log), Counted::new("b", Some(7), log), Counted::new("c", Some(7), log));
        let results = run(&[&a, &b, &c], |d| match d.name {
            "a" => Err("write refused".to_string()),
            "b" => Ok(Then::Done),
            _ => Ok(Then::Sync),
        });
        assert_eq!(results, [Err("write refused".to_string()), Ok(()), Ok(())]);
        assert_eq!(c.own_syncs.load(Ordering::SeqCst), 1, "a group of one syncs itself");
        assert_eq!(a.own_syncs.load(Ordering::SeqCst) + b.own_syncs.load(Ordering::SeqCst), 0);
        assert_eq!(a.flushes.load(Ordering::SeqCst) + c.flushes.load(Ordering::SeqCst), 0);
    }
}
