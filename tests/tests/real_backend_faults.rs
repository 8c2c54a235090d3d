//! The fault plan applied around the production backend: a pool over `FaultyDevice<DirDisk>`
//! reads around rotten and unreadable fragments on real directories, and fails cleanly
//! with ENOSPC when too many disks are full.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use dfs_engine::base::clock::SystemClock;
use dfs_engine::data::namespace::Owner;
use dfs_engine::media::device::{BlockDevice, BlockKind};
use dfs_engine::media::dirdisk::DirDisk;
use dfs_engine::pool::{PoolDevice, PoolOptions};
use dfs_engine::{Error, Ino, Pool};
use dfs_faults::{CrashSwitch, Fault, FaultPlan, FaultyDevice};

const OWNER: Owner = Owner { mode: 0o644, uid: 0, gid: 0, umask: 0 };

fn pool_over_dirs(root: &std::path::Path, disks: usize) -> (Pool, Vec<Arc<FaultyDevice<DirDisk>>>) {
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
    let options = PoolOptions { seed: 9, check_invariants: true, ..PoolOptions::default() };
    let pool_id = uuid_from(1);
    let (mut pool, _) =
        Pool::open(pool_id, "erasure:3+2".parse().unwrap(), Vec::new(), Arc::new(SystemClock::new()), options).unwrap();
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
    let before = pool.state().clone();
    let ino = pool.create(Ino::ROOT, b"new", OWNER).unwrap().ino;
    let fh = pool.open_file(ino).unwrap();
    pool.write(fh, 0, &[7u8; 100_000]).unwrap();
    let error = pool.fsync(fh).unwrap_err();
    assert_eq!(error.errno(), 28, "{error}");
    pool.release(fh).unwrap_err();
    assert_eq!(pool.state().extents, before.extents, "a failed write left extents behind");
    for device in &devices {
        let stored = device.list(BlockKind::Fragment).unwrap().len();
        let referenced = pool.state().extents.values().flat_map(|r| r.fragments.iter()).count();
        assert!(stored <= referenced);
    }
}
