//! The thread that deletes what a shared barrier freed (`dfs_engine::data::durability`)
//! stays out of the requests' way: while commits or reads keep coming it waits (its
//! punches and unlinks would hold up the disks and the filesystem's journal commit every
//! barrier's fsync waits for), it deletes once they pause, and `Pool::sync` — which waits for it — makes it
//! start at once, however long the pause it would wait for.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use dfs_engine::base::clock::SystemClock;
use dfs_engine::data::durability::sync_shared;
use dfs_engine::data::namespace::Owner;
use dfs_engine::media::device::{BlockDevice, BlockKind};
use dfs_engine::{Ino, Pool, PoolOptions};
use dfs_sim::memdisk::MemDisk;

const OWNER: Owner = Owner { mode: 0o644, uid: 0, gid: 0, umask: 0 };
const MIB: usize = 1 << 20;

fn uuid(n: u64) -> uuid::Uuid {
    uuid::Uuid::from_u64_pair(n, n)
}

/// Three disks under `erasure:2+1` holding `/f`, 2 MiB (two extents, six fragments)
/// made durable; the pool shared as a front end shares it.
fn pool_with_a_file(quiet: Duration) -> (Vec<Arc<MemDisk>>, Arc<Mutex<Pool>>) {
    let disks: Vec<Arc<MemDisk>> = (0..3).map(|i| Arc::new(MemDisk::new(format!("d{i}"), 64 << 20))).collect();
    let options = PoolOptions { seed: 3, delete_after_quiet: quiet, ..PoolOptions::default() };
    let (mut pool, _) =
        Pool::open(uuid(1), "erasure:2+1".parse().unwrap(), Vec::new(), Arc::new(SystemClock::new()), options).unwrap();
    for (i, disk) in disks.iter().enumerate() {
        pool.add_disk(uuid(10 + i as u64), Some(64 << 20), disk.clone() as Arc<dyn BlockDevice>).unwrap();
    }
    let ino = pool.create(Ino::ROOT, b"f", OWNER).unwrap().ino;
    let fh = pool.open_file(ino).unwrap();
    assert_eq!(pool.write(fh, 0, &vec![7u8; 2 * MIB]).unwrap(), 2 * MIB);
    pool.fsync(fh).unwrap();
    pool.release(fh).unwrap();
    let ino = pool.create(Ino::ROOT, b"g", OWNER).unwrap().ino;
    let fh = pool.open_file(ino).unwrap();
    assert_eq!(pool.write(fh, 0, b"kept").unwrap(), 4);
    pool.fsync(fh).unwrap();
    pool.release(fh).unwrap();
    let pool = Arc::new(Mutex::new(pool));
    assert_eq!(fragments(&disks), 6);
    (disks, pool)
}

fn fragments(disks: &[Arc<MemDisk>]) -> usize {
    disks.iter().map(|disk| disk.list(BlockKind::Fragment).unwrap().len()).sum()
}

/// Unlinks `/f` and makes that durable through a shared barrier: its fragments go to
/// the deleting thread.
fn unlink_shared(pool: &Mutex<Pool>) {
    pool.lock().unwrap().unlink(Ino::ROOT, b"f").unwrap();
    sync_shared(pool).unwrap();
}

#[test]
fn freed_fragments_wait_while_commits_or_reads_come_and_go_once_they_pause() {
    let quiet = Duration::from_secs(1);
    let (disks, pool) = pool_with_a_file(quiet);
    unlink_shared(&pool);
    // Commits for 2.5 pauses' worth: the deletion must not have started.
    let until = Instant::now() + quiet * 5 / 2;
    while Instant::now() < until {
        let mut pool = pool.lock().unwrap();
        pool.mkdir(Ino::ROOT, b"d", Owner { mode: 0o755, ..OWNER }).unwrap();
        pool.rmdir(Ino::ROOT, b"d").unwrap();
    }
    assert_eq!(fragments(&disks), 6, "nothing deleted while commits keep coming");
    // Reads only, as long: still nothing.
    let fh = {
        let mut pool = pool.lock().unwrap();
        let ino = pool.lookup(Ino::ROOT, b"g").unwrap().ino;
        pool.open_file(ino).unwrap()
    };
    let until = Instant::now() + quiet * 5 / 2;
    while Instant::now() < until {
        assert_eq!(pool.lock().unwrap().read(fh, 0, 4).unwrap(), b"kept");
    }
    assert_eq!(fragments(&disks), 6, "nothing deleted while reads keep coming");
    pool.lock().unwrap().release(fh).unwrap();
    // No request now: the deletion starts after one pause.
    let deadline = Instant::now() + Duration::from_secs(60);
    while fragments(&disks) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(fragments(&disks), 0, "deleted once the requests paused");
}

#[test]
fn a_sync_makes_the_deletion_start_at_once() {
    let (disks, pool) = pool_with_a_file(Duration::from_secs(3600));
    unlink_shared(&pool);
    assert_eq!(fragments(&disks), 6, "the deletion waits for an hour's pause");
    let (done, finished) = mpsc::channel();
    let syncing = Arc::clone(&pool);
    std::thread::spawn(move || {
        syncing.lock().unwrap().sync().unwrap();
        done.send(()).unwrap();
    });
    finished.recv_timeout(Duration::from_secs(60)).expect("a sync waits for the deletion, which starts at once");
    assert_eq!(fragments(&disks), 0, "the sync returned once the fragments were deleted");
}
