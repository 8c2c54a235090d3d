//! How deep a sequential reader's read-ahead goes: a reader that reads a file's first
//! bytes fetches a few extents past them; one that reads on fetches more, up to sixteen
//! past the one it reads; and never more than a quarter of the extent cache holds, or
//! the extents fetched ahead would push each other out before they are read.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use dfs_engine::base::clock::SystemClock;
use dfs_engine::data::namespace::Owner;
use dfs_engine::media::device::{BlockDevice, BlockName};
use dfs_engine::pool::{PoolDevice, PoolOptions};
use dfs_engine::{Ino, Pool};
use dfs_sim::memdisk::MemDisk;

mod common;
use common::Tapped;

const OWNER: Owner = Owner { mode: 0o644, uid: 0, gid: 0, umask: 0 };
const MIB: usize = 1 << 20;
/// The file's length in extents.
const EXTENTS: usize = 64;

fn uuid(n: u64) -> uuid::Uuid {
    uuid::Uuid::from_u64_pair(n, n)
}

fn options(cache_bytes: usize) -> PoolOptions {
    PoolOptions { seed: 9, check_invariants: true, extent_cache_bytes: cache_bytes, ..PoolOptions::default() }
}

/// A one-disk `replicate:1` pool (one fragment per extent) holding `/f`, `EXTENTS`
/// extents long, opened again with a cold cache of `cache_bytes`; and the count of
/// fragment reads since.
fn cold_pool_with_file(cache_bytes: usize) -> (Pool, Arc<AtomicUsize>) {
    let disk = Arc::new(MemDisk::new("d0", 1 << 30));
    let policy = "replicate:1".parse().unwrap();
    let (mut pool, _) =
        Pool::open(uuid(1), policy, Vec::new(), Arc::new(SystemClock::new()), options(cache_bytes)).unwrap();
    pool.add_disk(uuid(10), Some(1 << 30), disk.clone()).unwrap();
    let ino = pool.create(Ino::ROOT, b"f", OWNER).unwrap().ino;
    let fh = pool.open_file(ino).unwrap();
    for i in 0..EXTENTS {
        let chunk: Vec<u8> = (0..MIB).map(|b| (b as u8).wrapping_add(i as u8) | 1).collect();
        pool.write(fh, (i * MIB) as u64, &chunk).unwrap();
    }
    pool.fsync(fh).unwrap();
    pool.release(fh).unwrap();
    drop(pool);
    let fragment_reads = Arc::new(AtomicUsize::new(0));
    let mut tapped = Tapped::new(disk);
    let counter = fragment_reads.clone();
    tapped.before_read = Box::new(move |name| {
        if matches!(name, BlockName::Fragment { .. }) {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    let device: Arc<dyn BlockDevice> = Arc::new(tapped);
    let devices = vec![PoolDevice { uuid: uuid(10), device }];
    let (pool, _) = Pool::open(uuid(1), policy, devices, Arc::new(SystemClock::new()), options(cache_bytes)).unwrap();
    fragment_reads.store(0, Ordering::SeqCst);
    (pool, fragment_reads)
}

/// Reads `/f` from its start in 1 MiB reads, `extents` of them; returns the fragment
/// reads counted after each.
fn read_on(pool: &mut Pool, fragment_reads: &AtomicUsize, extents: usize) -> Vec<usize> {
    let ino = pool.lookup(Ino::ROOT, b"f").unwrap().ino;
    let fh = pool.open_file(ino).unwrap();
    let counts = (0..extents)
        .map(|i| {
            assert_eq!(pool.read(fh, (i * MIB) as u64, MIB).unwrap().len(), MIB);
            fragment_reads.load(Ordering::SeqCst)
        })
        .collect();
    pool.release(fh).unwrap();
    counts
}

#[test]
fn a_first_read_fetches_a_few_extents_and_a_reader_that_reads_on_fetches_more() {
    let (mut pool, fragment_reads) = cold_pool_with_file(256 << 20);
    let ino = pool.lookup(Ino::ROOT, b"f").unwrap().ino;
    let fh = pool.open_file(ino).unwrap();
    assert_eq!(pool.read(fh, 0, 4096).unwrap().len(), 4096);
    assert_eq!(fragment_reads.load(Ordering::SeqCst), 1 + 4, "the extent read and four ahead of it");
    pool.release(fh).unwrap();

    let (mut pool, fragment_reads) = cold_pool_with_file(256 << 20);
    let counts = read_on(&mut pool, &fragment_reads, 40);
    for (i, fetched) in counts.iter().enumerate() {
        assert!(*fetched <= i + 1 + 16, "{fetched} extents fetched by the read of extent {i}: more than 16 ahead");
    }
    assert_eq!(counts[0], 1 + 4, "a new reader fetches four ahead");
    assert_eq!(counts[31], 32 + 16, "a reader 32 extents on fetches sixteen ahead");
}

#[test]
fn read_ahead_takes_at_most_a_quarter_of_the_extent_cache() {
    let (mut pool, fragment_reads) = cold_pool_with_file(8 << 20);
    let counts = read_on(&mut pool, &fragment_reads, 40);
    for (i, fetched) in counts.iter().enumerate() {
        assert!(*fetched <= i + 1 + 2, "{fetched} extents fetched by the read of extent {i} with an 8 MiB cache");
    }
    assert_eq!(*counts.last().unwrap(), 40 + 2, "every extent fetched once, none pushed out before its read");
}
