//! The journal fence (issue 15, item 1): should two processes ever serve one pool — its
//! lock forced away — the first to write the next journal record owns the pool and the
//! other stops writing (EROFS) instead of overwriting that history. Everything either
//! acknowledged before the second opened, and everything the owner acknowledged after,
//! survives.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use dfs_engine::base::clock::SystemClock;
use dfs_engine::data::namespace::Owner;
use dfs_engine::media::device::BlockDevice;
use dfs_engine::media::dirdisk::DirDisk;
use dfs_engine::pool::{PoolDevice, PoolOptions};
use dfs_engine::{Ino, Pool};

const OWNER: Owner = Owner { mode: 0o644, uid: 0, gid: 0, umask: 0 };

fn uuid(n: u64) -> uuid::Uuid {
    uuid::Uuid::from_u64_pair(n, n)
}

/// A pool over the directories `root/disk0..3`, as a process that opened them would see it.
fn open(root: &std::path::Path) -> Pool {
    let devices = (0..3)
        .map(|i| PoolDevice {
            uuid: uuid(10 + i),
            device: Arc::new(DirDisk::open(&root.join(format!("disk{i}"))).unwrap()) as Arc<dyn BlockDevice>,
        })
        .collect();
    let (pool, _) = Pool::open(
        uuid(1),
        "replicate:2".parse().unwrap(),
        devices,
        Arc::new(SystemClock::new()),
        PoolOptions { check_invariants: true, ..PoolOptions::default() },
    )
    .unwrap();
    pool
}

fn write(pool: &mut Pool, name: &str, data: &[u8]) -> dfs_engine::Result<()> {
    let ino = pool.create(Ino::ROOT, name.as_bytes(), OWNER)?.ino;
    let fh = pool.open_file(ino)?;
    pool.write(fh, 0, data)?;
    let synced = pool.fsync(fh);
    let _ = pool.release(fh);
    synced
}

fn read(pool: &mut Pool, name: &str) -> Option<Vec<u8>> {
    let ino = pool.resolve(&format!("/{name}")).ok()?;
    let size = pool.getattr(ino).ok()?.size;
    let fh = pool.open_file(ino).ok()?;
    let data = pool.read(fh, 0, size as usize).ok();
    let _ = pool.release(fh);
    data
}

/// A pool on three directory disks under `root`, opened by this process.
fn first_writer(root: &std::path::Path) -> Pool {
    let (mut pool, _) = Pool::open(
        uuid(1),
        "replicate:2".parse().unwrap(),
        Vec::new(),
        Arc::new(SystemClock::new()),
        PoolOptions { check_invariants: true, ..PoolOptions::default() },
    )
    .unwrap();
    for i in 0..3u64 {
        let dir = root.join(format!("disk{i}"));
        std::fs::create_dir(&dir).unwrap();
        pool.add_disk(uuid(10 + i), None, Arc::new(DirDisk::open(&dir).unwrap())).unwrap();
    }
    pool
}

#[test]
fn a_fenced_writer_whose_write_is_all_inline_is_stopped_at_its_barrier() {
    let root = tempfile::tempdir().unwrap();
    let mut first = first_writer(root.path());
    write(&mut first, "before", b"small before").unwrap();
    let mut second = open(root.path());
    write(&mut second, "theirs", b"small theirs").unwrap();
    // Nothing of an inline write reaches the disks before its barrier, which looks.
    let error = write(&mut first, "mine", b"small mine").unwrap_err();
    assert_eq!(error.errno(), libc::EROFS, "{error}");
    assert!(error.to_string().contains("another process wrote journal record"), "{error}");
    drop(first);
    drop(second);
    let mut after = open(root.path());
    assert_eq!(read(&mut after, "theirs").unwrap(), b"small theirs");
    assert!(read(&mut after, "mine").is_none(), "the fenced writer's commit must not appear");
}

#[test]
fn a_second_writer_owns_the_pool_and_the_first_is_fenced() {
    let root = tempfile::tempdir().unwrap();
    let mut first = first_writer(root.path());
    let before = vec![1u8; 300_000];
    write(&mut first, "before", &before).unwrap();
    // The lock is gone: a second process opens the same disks and writes.
    let mut second = open(root.path());
    let theirs = vec![2u8; 200_000];
    write(&mut second, "theirs", &theirs).unwrap();
    // The first process's next barrier finds the record it would write taken.
    let error = write(&mut first, "mine", &[3u8; 100_000]).unwrap_err();
    assert_eq!(error.errno(), libc::EROFS, "{error}");
    assert!(error.to_string().contains("another process wrote journal record"), "{error}");
    assert!(write(&mut first, "later", b"x").is_err(), "a fenced process keeps refusing");
    // The owner goes on; what either acknowledged is there, the fenced write is not.
    let more = vec![4u8; 150_000];
    write(&mut second, "more", &more).unwrap();
    drop(first);
    drop(second);
    let mut after = open(root.path());
    assert_eq!(read(&mut after, "before").unwrap(), before);
    assert_eq!(read(&mut after, "theirs").unwrap(), theirs);
    assert_eq!(read(&mut after, "more").unwrap(), more);
    assert!(read(&mut after, "mine").is_none(), "the fenced writer's commit must not appear");
}
