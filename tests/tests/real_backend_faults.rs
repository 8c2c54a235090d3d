//! The fault plan applied around the production backend: a pool over `FaultyDevice<DirDisk>`
//! reads around rotten and unreadable fragments on real directories, fails cleanly
//! with ENOSPC when too many disks are full, and keeps the journal's contract when a
//! journal replica fails: the disk is taken offline and the journal moves off it, and
//! data that lives in the journal is acknowledged only on as many replicas as its policy
//! needs. A disk that dies under a parallel rebuild, or under a flush with two groups of
//! fragment writes in flight, is written around.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use dfs_engine::base::clock::SystemClock;
use dfs_engine::data::namespace::Owner;
use dfs_engine::media::device::{BlockDevice, BlockKind};
use dfs_engine::media::dirdisk::DirDisk;
use dfs_engine::pool::{PoolDevice, PoolOptions};
use dfs_engine::{Error, Ino, Pool};
use dfs_faults::{CrashSwitch, Fault, FaultPlan, FaultyDevice};

const OWNER: Owner = Owner { mode: 0o644, uid: 0, gid: 0, umask: 0 };

fn pool_over_dirs(root: &std::path::Path, disks: usize) -> (Pool, Vec<Arc<FaultyDevice<DirDisk>>>) {
    pool_over_dirs_with(root, disks, "erasure:3+2")
}

fn pool_over_dirs_with(root: &std::path::Path, disks: usize, policy: &str) -> (Pool, Vec<Arc<FaultyDevice<DirDisk>>>) {
    let options = PoolOptions { seed: 9, check_invariants: true, ..PoolOptions::default() };
    pool_over_dirs_opened(root, disks, policy, options)
}

fn pool_over_dirs_opened(
    root: &std::path::Path,
    disks: usize,
    policy: &str,
    options: PoolOptions,
) -> (Pool, Vec<Arc<FaultyDevice<DirDisk>>>) {
    let switch = CrashSwitch::new();
    let devices: Vec<Arc<FaultyDevice<DirDisk>>> = (0..disks)
        .map(|i| {
            let dir = root.join(format!("disk{i}"));
            std::fs::create_dir(&dir).unwrap();
            let mut disk = DirDisk::open(&dir).unwrap();
            disk.set_capacity(Some(64 << 20));
            Arc::new(FaultyDevice::new(disk, switch.clone(), None))
        })
        .collect();
    let pool_id = uuid_from(1);
    let (mut pool, _) =
        Pool::open(pool_id, policy.parse().unwrap(), Vec::new(), Arc::new(SystemClock::new()), options).unwrap();
    for (i, device) in devices.iter().enumerate() {
        pool.add_disk(uuid_from(10 + i as u64), Some(64 << 20), device.clone()).unwrap();
    }
    (pool, devices)
}

fn uuid_from(n: u64) -> uuid::Uuid {
    uuid::Uuid::from_u64_pair(n, n)
}

fn reopen(pool: Pool, devices: &[Arc<FaultyDevice<DirDisk>>]) -> (Pool, dfs_engine::OpenReport) {
    let pool_id = pool.state().pool_id;
    let policy = pool.state().default_policy;
    drop(pool);
    let devices = devices
        .iter()
        .enumerate()
        .map(|(i, d)| PoolDevice { uuid: uuid_from(10 + i as u64), device: d.clone() as Arc<dyn BlockDevice> })
        .collect();
    Pool::open(pool_id, policy, devices, Arc::new(SystemClock::new()), PoolOptions::default()).unwrap()
}

fn write(pool: &mut Pool, name: &str, data: &[u8]) -> Result<Ino, Error> {
    let ino = pool.create(Ino::ROOT, name.as_bytes(), OWNER)?.ino;
    let fh = pool.open_file(ino)?;
    pool.write(fh, 0, data)?;
    pool.fsync(fh)?;
    pool.release(fh)?;
    Ok(ino)
}

/// Creates `name` and writes `data` into it, unsynced; returns the open handle.
fn write_unsynced(pool: &mut Pool, name: &str, data: &[u8]) -> (Ino, u64) {
    let ino = pool.create(Ino::ROOT, name.as_bytes(), OWNER).unwrap().ino;
    let fh = pool.open_file(ino).unwrap();
    pool.write(fh, 0, data).unwrap();
    (ino, fh)
}

/// `fsync`s `fh` as the FUSE daemon does, the pool shared behind a lock
/// (`dfs_engine::data::shared_barrier`); panics if it fails.
fn fsync_shared(pool: Pool, fh: u64) -> Pool {
    let shared = Mutex::new(pool);
    dfs_engine::data::files::fsync_shared(&shared, fh).expect("the fsync succeeds");
    shared.into_inner().unwrap()
}

/// Releases `fh`, reopens the pool over `devices` and asserts that `ino` reads back as
/// `data`: what an `fsync` acknowledged survives a restart.
fn assert_acknowledged_after_restart(
    mut pool: Pool,
    fh: u64,
    devices: &[Arc<FaultyDevice<DirDisk>>],
    ino: Ino,
    data: &[u8],
) {
    pool.release(fh).unwrap();
    let (mut pool, _) = reopen(pool, devices);
    assert_eq!(read(&mut pool, ino, data.len()).unwrap(), data);
}

fn read(pool: &mut Pool, ino: Ino, len: usize) -> Result<Vec<u8>, Error> {
    let fh = pool.open_file(ino)?;
    let data = pool.read(fh, 0, len);
    pool.release(fh)?;
    data
}

#[test]
fn rot_and_latent_errors_on_real_directories_are_read_around() {
    let root = tempfile::tempdir().unwrap();
    let (mut pool, devices) = pool_over_dirs(root.path(), 5);
    let data: Vec<u8> = (0..2_500_000u32).map(|i| (i % 241) as u8).collect();
    let ino = write(&mut pool, "f", &data).unwrap();
    for name in devices[0].list(BlockKind::Fragment).unwrap() {
        devices[0].rot(name, 12_345);
    }
    for name in devices[3].list(BlockKind::Fragment).unwrap() {
        devices[3].latent(name);
    }
    assert_eq!(read(&mut pool, ino, data.len()).unwrap(), data);
    assert!(pool.counters().degraded_reads > 0);
    // One more failing disk exceeds erasure:3+2's tolerance: EIO, never wrong bytes.
    // (Decoded extents are cached; the next read must go to the disks.)
    devices[1].apply(&FaultPlan { faults: vec![Fault::Die] });
    let (mut fresh, _) = reopen(pool, &devices);
    let error = read(&mut fresh, ino, data.len()).unwrap_err();
    assert_eq!(error.errno(), 5, "{error}");
    assert!(error.to_string().contains("is lost"), "{error}");
}

#[test]
fn full_real_disks_fail_the_write_with_enospc_and_change_nothing() {
    let root = tempfile::tempdir().unwrap();
    let (mut pool, devices) = pool_over_dirs(root.path(), 5);
    write(&mut pool, "kept", b"kept").unwrap();
    devices[2].inject(&Fault::Fill);
    let before = pool.state_whole().unwrap();
    let ino = pool.create(Ino::ROOT, b"new", OWNER).unwrap().ino;
    let fh = pool.open_file(ino).unwrap();
    pool.write(fh, 0, &[7u8; 100_000]).unwrap();
    let error = pool.fsync(fh).unwrap_err();
    assert_eq!(error.errno(), 28, "{error}");
    pool.release(fh).unwrap_err();
    assert_eq!(pool.state_whole().unwrap().extents, before.extents, "a failed write left extents behind");
    for device in &devices {
        let stored = device.list(BlockKind::Fragment).unwrap().len();
        let referenced = pool.state().extents.values().flat_map(|r| r.fragments.iter()).count();
        assert!(stored <= referenced);
    }
}

/// The pool's id for the disk `devices[i]` was added as.
fn disk_id(pool: &Pool, i: u64) -> dfs_engine::meta::state::DiskId {
    pool.state().disks.values().find(|d| d.uuid == uuid_from(10 + i)).map(|d| d.id).unwrap()
}

#[test]
fn a_journal_replica_that_fails_is_taken_offline_and_the_journal_moves_off_it() {
    let root = tempfile::tempdir().unwrap();
    let (mut pool, devices) = pool_over_dirs(root.path(), 5);
    let first = disk_id(&pool, 0);
    assert!(pool.state().journal_disks().contains(&first));
    devices[0].inject(&Fault::Die);
    // 5,000 bytes live inline, in the journal only.
    let small = vec![7u8; 5000];
    let ino = write(&mut pool, "small", &small).expect("two other disks take the journal's place");
    assert!(!pool.state().disk_readable(first), "the failed replica's disk is offline");
    let journal = pool.state().journal_disks();
    assert_eq!(journal.len(), 3);
    assert!(!journal.contains(&first), "the journal moved off it: {journal:?}");
    // What was acknowledged is there after a restart, from the new journal disks.
    let (mut pool, _) = reopen(pool, &devices);
    assert_eq!(read(&mut pool, ino, small.len()).unwrap(), small);
}

#[test]
fn data_in_the_journal_on_fewer_replicas_than_its_policy_needs_is_not_acknowledged() {
    let root = tempfile::tempdir().unwrap();
    let (mut pool, devices) = pool_over_dirs_with(root.path(), 3, "replicate:3");
    // replicate:3 written at its quorum (two copies) survives one failure: data in the
    // journal needs two replicas too. Two of the three journal disks are full.
    devices[1].inject(&Fault::Fill);
    devices[2].inject(&Fault::Fill);
    let error = write(&mut pool, "small", &[9u8; 3000]).expect_err("one journal replica for replicate:3");
    assert!(matches!(error, Error::Unavailable(_)), "{error}");
    assert_eq!(error.errno(), libc::EIO);
    // A full disk refused the record but did not fail: it stays in the pool.
    assert!(pool.state().disk_readable(disk_id(&pool, 2)));
    devices[1].inject(&Fault::Unfill);
    devices[2].inject(&Fault::Unfill);
    // While the journal passes over the disk that was full, too few journal disks are
    // left to hold data for replicate:3: small files are stored as fragments instead,
    // and acknowledged.
    let ino = write(&mut pool, "later", &[5u8; 3001]).unwrap();
    assert!(!pool.state().extents.values().any(|r| r.is_inline() && r.len == 3001));
    let (mut pool, _) = reopen(pool, &devices);
    assert_eq!(read(&mut pool, ino, 3001).unwrap(), vec![5u8; 3001]);
}

/// A rebuild writes a whole batch of repaired fragments at once: when a target disk dies
/// in the middle of it, the repairs that wrote there fail and are left for later (the
/// disk goes offline after its errors, and repairs placed on it before that count for
/// nothing), the others are booked — and once the disk is failed, the next steps
/// restore every extent onto the disks left, nothing lost.
#[test]
fn a_disk_that_dies_under_a_parallel_rebuild_fails_only_the_repairs_that_wrote_to_it() {
    use dfs_engine::meta::state::DiskState;
    let root = tempfile::tempdir().unwrap();
    let (mut pool, devices) = pool_over_dirs_with(root.path(), 8, "erasure:4+2");
    let data: Vec<u8> = (0..48u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let ino = write(&mut pool, "f", &data).unwrap();
    pool.fail_disk(disk_id(&pool, 0)).unwrap();
    let queued = pool.rebuild_queue().len();
    assert!(queued > 16, "the test needs more than one batch: {queued} extents queued");
    devices[1].inject(&Fault::Die);
    let first = pool.rebuild_step(usize::MAX).unwrap();
    assert!(first < queued, "repairs that wrote to the dead disk cannot have counted");
    let dead = disk_id(&pool, 1);
    assert!(!pool.state().disk_readable(dead), "the dead disk is taken offline after its errors");
    assert_eq!(pool.state().disks[&dead].state, DiskState::Active, "offline, waited for, not yet failed");
    // The operator gives up on it: its fragments are rebuilt elsewhere too.
    pool.fail_disk(dead).unwrap();
    for _ in 0..4 {
        if pool.rebuild_queue().is_empty() {
            break;
        }
        pool.rebuild_step(usize::MAX).unwrap();
    }
    assert!(pool.rebuild_queue().is_empty(), "{:?} left", pool.rebuild_queue());
    let (gone, dead_id) = (disk_id(&pool, 0), dead);
    for (id, record) in pool.state().extents.iter() {
        assert!(
            !record.fragments.contains(&gone) && !record.fragments.contains(&dead_id),
            "extent {id} still names a failed disk"
        );
    }
    assert_eq!(read(&mut pool, ino, data.len()).unwrap(), data);
    let (mut pool, _) = reopen(pool, &devices);
    assert!(pool.rebuild_queue().is_empty(), "the repairs are durable");
    assert_eq!(read(&mut pool, ino, data.len()).unwrap(), data);
}

#[test]
fn a_disk_that_dies_under_a_pipelined_flush_is_written_around() {
    let root = tempfile::tempdir().unwrap();
    let (mut pool, devices) = pool_over_dirs_with(root.path(), 8, "erasure:4+2");
    let data: Vec<u8> = (0..48u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8).collect();
    // The disk dies once it holds some of the file's fragments: with two groups of
    // fragments in flight, writes of both may fail, and each group is placed again.
    let dying = devices[1].clone();
    let killer = std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while dying.inner().used_bytes() < 2 << 20 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        dying.inject(&Fault::Die);
    });
    let ino = write(&mut pool, "f", &data).unwrap();
    killer.join().unwrap();
    let dead = disk_id(&pool, 1);
    assert!(!pool.state().disk_readable(dead), "the disk that died is taken offline");
    assert_eq!(read(&mut pool, ino, data.len()).unwrap(), data);
    let (mut pool, _) = reopen(pool, &devices);
    assert_eq!(read(&mut pool, ino, data.len()).unwrap(), data, "every acknowledged byte survives a reopen");
    pool.state().check().unwrap();
}

/// A shared barrier writes its record with the pool's lock released
/// (`dfs_engine::data::shared_barrier`). A journal replica that fails the write there is
/// taken offline as under the lock — the record saying so follows on the others — and
/// what the `fsync` acknowledged is there after a restart.
#[test]
fn a_journal_replica_that_fails_under_a_shared_barrier_is_taken_offline() {
    let root = tempfile::tempdir().unwrap();
    let (mut pool, devices) = pool_over_dirs(root.path(), 5);
    let first = disk_id(&pool, 0);
    assert!(pool.state().journal_disks().contains(&first));
    let barriers = pool.counters().barriers;
    // 5,000 bytes live inline, in the journal only.
    let small = vec![7u8; 5000];
    let (ino, fh) = write_unsynced(&mut pool, "small", &small);
    devices[0].inject(&Fault::Die);
    let pool = fsync_shared(pool, fh);
    assert!(!pool.state().disk_readable(first), "the failed replica's disk is offline");
    assert!(!pool.state().journal_disks().contains(&first), "the journal moved off it");
    assert!(!pool.has_undurable_commits(), "the record naming the offline disk followed at once");
    assert!(pool.counters().barriers >= barriers + 2, "the flown record, then the one under the lock");
    assert_acknowledged_after_restart(pool, fh, &devices, ino, &small);
}

/// A disk whose sync fails under a shared barrier may have dropped what it took: the
/// record is not written with the lock released but put back, and the barrier under the
/// lock takes the disk offline (owed what it may have lost) before the record is
/// written; every byte the `fsync` acknowledged reads back after a restart with the disk
/// still dead.
#[test]
fn a_disk_whose_sync_fails_under_a_shared_barrier_loses_nothing_acknowledged() {
    let root = tempfile::tempdir().unwrap();
    let (mut pool, devices) = pool_over_dirs_with(root.path(), 7, "erasure:3+2");
    let data: Vec<u8> = (0..3u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
    let (ino, fh) = write_unsynced(&mut pool, "f", &data);
    pool.flush(fh).unwrap();
    let holder = pool.state().extents.values().find_map(|r| r.fragments.first().copied()).expect("stored extents");
    let index = (0..7).find(|i| disk_id(&pool, *i) == holder).unwrap();
    devices[index as usize].inject(&Fault::Die);
    let pool = fsync_shared(pool, fh);
    assert!(!pool.state().disk_readable(holder), "the disk whose sync failed is offline");
    let state = pool.state();
    assert!(
        state.extents.values().all(|r| r.fragments.iter().filter(|d| state.disk_readable(**d)).count() >= 3),
        "every extent is readable without the disk that may have dropped its fragments"
    );
    assert_acknowledged_after_restart(pool, fh, &devices, ino, &data);
}

/// Commits ask the barrier thread for their barriers, which it writes with the lock
/// released while writers, `fsync`s and barriers under the lock go on around it: every
/// record lands in chain order (the pool reopens, every file whole), and once the thread
/// is stopped commits run their barriers themselves again.
#[test]
fn barriers_written_by_the_barrier_thread_amid_writers_and_syncs_keep_every_file() {
    use dfs_engine::data::shared_barrier::{sync_shared, BarrierThread};
    let root = tempfile::tempdir().unwrap();
    let options = PoolOptions { seed: 9, check_invariants: true, barrier_after_ops: 16, ..PoolOptions::default() };
    let (pool, devices) = pool_over_dirs_opened(root.path(), 5, "erasure:3+2", options);
    let shared = Arc::new(Mutex::new(pool));
    let thread = BarrierThread::start(&shared).unwrap();
    let files: Vec<(String, Vec<u8>)> = (0..160u32)
        .map(|i| (format!("f{i}"), vec![i as u8; if i % 16 == 0 { 300_000 } else { 100 + i as usize }]))
        .collect();
    let inos: Vec<Ino> = std::thread::scope(|scope| {
        let writers: Vec<_> = files
            .chunks(40)
            .enumerate()
            .map(|(writer, chunk)| {
                let shared = &shared;
                scope.spawn(move || {
                    let mut inos = Vec::new();
                    for (i, (name, data)) in chunk.iter().enumerate() {
                        let (ino, fh) = write_unsynced(&mut shared.lock().unwrap(), name, data);
                        match (writer + i) % 3 {
                            0 => dfs_engine::data::files::fsync_shared(shared, fh).unwrap(),
                            1 => shared.lock().unwrap().fsync(fh).unwrap(),
                            _ => {}
                        }
                        shared.lock().unwrap().release(fh).unwrap();
                        inos.push(ino);
                    }
                    inos
                })
            })
            .collect();
        writers.into_iter().flat_map(|w| w.join().unwrap()).collect()
    });
    // The thread's barriers alone make the last commits durable.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while shared.lock().unwrap().undurable_ops() >= 16 {
        assert!(std::time::Instant::now() < deadline, "the barrier thread never wrote the waiting ops");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    drop(thread);
    for i in 0..8 {
        let (_, fh) = write_unsynced(&mut shared.lock().unwrap(), &format!("late{i}"), b"late");
        shared.lock().unwrap().release(fh).unwrap();
        assert!(shared.lock().unwrap().undurable_ops() < 16, "without the thread a commit runs the barrier");
    }
    sync_shared(&shared).unwrap();
    let pool = Arc::into_inner(shared).unwrap().into_inner().unwrap();
    let (mut pool, _) = reopen(pool, &devices);
    for ((_, data), ino) in files.iter().zip(inos) {
        assert_eq!(&read(&mut pool, ino, data.len()).unwrap(), data);
    }
    pool.state().check().unwrap();
}
