//! Flushing behind the writer (`dfs_engine::data::files::flush_behind`): a front end's
//! flush stores its chunks with the pool's lock released. While one is stopped in the
//! middle of its fragment writes (a disk that holds them back), the pool must serve
//! other requests, reads must see the chunks being stored, a newer write must win over
//! them, the orphan collector must leave their fragments alone, and a truncate must take
//! the chunks back so that the flush's late commit changes nothing. The same holds for
//! patches (small writes into stored chunks) stored as layers by a flush held midway.
//! A second flush may run beside the first behind a streaming writer; it commits only
//! after the first, and one that waits too long for its turn gives both up. After the
//! flushes end and a reopen, the file holds exactly what was written and no fragment is
//! left over.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use dfs_engine::base::clock::SystemClock;
use dfs_engine::data::files::{flush_behind, settled, write_shared};
use dfs_engine::data::namespace::{Owner, SetAttr};
use dfs_engine::media::device::{BlockDevice, BlockName};
use dfs_engine::pool::{PoolDevice, PoolOptions};
use dfs_engine::{Ino, Pool};
use dfs_sim::memdisk::MemDisk;

mod common;
use common::Tapped;

const OWNER: Owner = Owner { mode: 0o644, uid: 0, gid: 0, umask: 0 };
const MIB: usize = 1 << 20;

/// Holds back the first fragment write that reaches it once closed (later ones pass:
/// the test's own requests must not wait for the held flush), until opened.
#[derive(Default)]
struct Gate {
    closed: Mutex<bool>,
    opened: Condvar,
    held: AtomicUsize,
}

impl Gate {
    fn pass(&self) {
        let mut closed = self.closed.lock().unwrap();
        if *closed && self.held.fetch_add(1, Ordering::SeqCst) == 0 {
            while *closed {
                closed = self.opened.wait(closed).unwrap();
            }
        }
    }

    fn set(&self, closed: bool) {
        *self.closed.lock().unwrap() = closed;
        if closed {
            self.held.store(0, Ordering::SeqCst);
        }
        self.opened.notify_all();
    }

    /// Waits until a write is held back.
    fn wait_held(&self) {
        let started = Instant::now();
        while self.held.load(Ordering::SeqCst) == 0 {
            assert!(started.elapsed() < Duration::from_secs(20), "no fragment write reached the gate");
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// Opens the gate when dropped: a failing test must not leave a flush held (its I/O
/// thread would stay blocked under the other test's work).
struct OpenOnDrop(Arc<Gate>);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

/// `disk`, its fragment writes passing `gate`.
fn gated(disk: &Arc<MemDisk>, gate: Arc<Gate>) -> Arc<dyn BlockDevice> {
    let mut tapped = Tapped::new(disk.clone());
    tapped.before_write = Box::new(move |name| {
        if matches!(name, BlockName::Fragment { .. }) {
            gate.pass();
        }
    });
    Arc::new(tapped)
}

fn uuid(n: u64) -> uuid::Uuid {
    uuid::Uuid::from_u64_pair(n, n)
}

fn options() -> PoolOptions {
    PoolOptions { seed: 5, check_invariants: true, dirty_bytes_max: 4 * MIB, ..PoolOptions::default() }
}

/// Three disks under `erasure:2+1`; the third holds fragment writes back while its gate
/// is closed.
struct World {
    disks: Vec<Arc<MemDisk>>,
    gate: Arc<Gate>,
    pool: Arc<Mutex<Pool>>,
    _open_on_drop: OpenOnDrop,
}

impl World {
    fn new() -> World {
        let disks: Vec<Arc<MemDisk>> = (0..3).map(|i| Arc::new(MemDisk::new(format!("d{i}"), 256 << 20))).collect();
        let gate = Arc::new(Gate::default());
        let (mut pool, _) =
            Pool::open(uuid(1), "erasure:2+1".parse().unwrap(), Vec::new(), Arc::new(SystemClock::new()), options())
                .unwrap();
        for (i, disk) in disks.iter().enumerate() {
            let gate = if i == 2 { gate.clone() } else { Arc::new(Gate::default()) };
            pool.add_disk(uuid(10 + i as u64), Some(256 << 20), gated(disk, gate)).unwrap();
        }
        World { disks, _open_on_drop: OpenOnDrop(gate.clone()), gate, pool: Arc::new(Mutex::new(pool)) }
    }

    /// Closes the pool and opens it again over the same disks.
    fn reopen(self) -> Pool {
        let pool = Arc::try_unwrap(self.pool).ok().unwrap().into_inner().unwrap();
        drop(pool);
        let devices = self
            .disks
            .iter()
            .enumerate()
            .map(|(i, disk)| PoolDevice { uuid: uuid(10 + i as u64), device: gated(disk, Arc::new(Gate::default())) })
            .collect();
        Pool::open(uuid(1), "erasure:2+1".parse().unwrap(), devices, Arc::new(SystemClock::new()), options()).unwrap().0
    }
}

/// The pool's lock, taken while a flush's fragment write is held at the gate: it must come
/// free then (the flush takes it only for a moment, to place the next group), so a
/// request never waits for the disks. Panics with `why` if it stays held for seconds.
fn lock_while_held<'a>(world: &'a World, why: &str) -> std::sync::MutexGuard<'a, Pool> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match world.pool.try_lock() {
            Ok(guard) => return guard,
            Err(std::sync::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            Err(error) => panic!("{why}: {error}"),
        }
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1).collect()
}

/// Creates `/f`, writes `data` through the shared path and returns (ino, handle).
fn create_and_write(world: &World, data: &[u8]) -> (Ino, u64) {
    let (ino, fh) = {
        let mut pool = world.pool.lock().unwrap();
        let ino = pool.create(Ino::ROOT, b"f", OWNER).unwrap().ino;
        (ino, pool.open_file(ino).unwrap())
    };
    for (i, chunk) in data.chunks(MIB).enumerate() {
        assert_eq!(write_shared(&world.pool, fh, (i * MIB) as u64, chunk).unwrap().bytes, chunk.len());
    }
    (ino, fh)
}

/// Starts a flush behind the writer and returns once it is held at the gate.
fn flush_held(world: &World, fh: u64) -> std::thread::JoinHandle<()> {
    world.gate.set(true);
    let pool = world.pool.clone();
    let flusher = std::thread::spawn(move || flush_behind(&pool, fh));
    world.gate.wait_held();
    flusher
}

fn read_all(pool: &mut Pool, name: &[u8]) -> Vec<u8> {
    let attr = pool.lookup(Ino::ROOT, name).unwrap();
    let fh = pool.open_file(attr.ino).unwrap();
    let data = pool.read(fh, 0, attr.size as usize).unwrap();
    pool.release(fh).unwrap();
    data
}

/// Makes `/f` durable and closes it; then no fragment is left over, and after a reopen
/// it reads back as `expected` in a consistent state.
fn fsync_close_and_reopen(world: World, fh: u64, expected: &[u8]) {
    settled(&world.pool, fh).fsync(fh).unwrap();
    settled(&world.pool, fh).release(fh).unwrap();
    let orphans = world.pool.lock().unwrap().detect_orphans().unwrap();
    assert_eq!(orphans, Vec::new(), "no fragment is left over");
    let mut pool = world.reopen();
    assert_eq!(read_all(&mut pool, b"f"), expected);
    pool.state().check().unwrap();
}

#[test]
fn a_flush_behind_the_writer_leaves_the_pool_serving_and_the_newest_write_wins() {
    let world = World::new();
    let mut expected = pattern(4 * MIB, 3);
    let (ino, fh) = create_and_write(&world, &expected);
    let flusher = flush_held(&world, fh);
    {
        let mut pool = lock_while_held(&world, "the pool's lock is free while fragments are written");
        assert!(!pool.state().file_extents.contains_key(&ino), "nothing is committed before the fragments are written");
        assert_eq!(pool.read(fh, 0, 4 * MIB).unwrap(), expected, "reads see the chunks being flushed");
        let patch = pattern(4096, 99);
        pool.write(fh, (MIB + 100) as u64, &patch).unwrap();
        expected[MIB + 100..MIB + 100 + 4096].copy_from_slice(&patch);
        assert_eq!(pool.read(fh, 0, 4 * MIB).unwrap(), expected, "the newer write wins over the flush");
        let orphans = pool.cleanup_orphans(0).unwrap();
        assert_eq!(orphans.deleted, 0, "fragments of an extent being written are not orphans");
    }
    world.gate.set(false);
    flusher.join().unwrap();
    {
        let mut pool = world.pool.lock().unwrap();
        // A flush behind the writer takes the lowest whole chunks up to half the bound.
        assert_eq!(pool.state().file_extents.get(&ino).map(|m| m.len()), Some(2), "the flush committed its two");
        assert_eq!(pool.read(fh, 0, 4 * MIB).unwrap(), expected);
    }
    fsync_close_and_reopen(world, fh, &expected);
}

#[test]
fn a_truncate_during_a_flush_takes_its_chunks_back_and_the_late_commit_changes_nothing() {
    let world = World::new();
    let data = pattern(4 * MIB, 7);
    let (ino, fh) = create_and_write(&world, &data);
    let flusher = flush_held(&world, fh);
    let cut = 3 * MIB / 2;
    world.pool.lock().unwrap().setattr(ino, &SetAttr { size: Some(cut as u64), ..SetAttr::default() }).unwrap();
    world.gate.set(false);
    flusher.join().unwrap();
    {
        let mut pool = world.pool.lock().unwrap();
        assert_eq!(pool.getattr(ino).unwrap().size, cut as u64);
        assert_eq!(pool.read(fh, 0, 4 * MIB).unwrap(), data[..cut]);
        assert_eq!(pool.state().file_extents.get(&ino).map(|m| m.len()), Some(2), "only the truncate's chunks");
    }
    settled(&world.pool, fh).release(fh).unwrap();
    let orphans = world.pool.lock().unwrap().detect_orphans().unwrap();
    assert_eq!(orphans, Vec::new(), "the dropped flush's fragments were deleted");
    let mut pool = world.reopen();
    assert_eq!(read_all(&mut pool, b"f"), data[..cut]);
    pool.state().check().unwrap();
}

#[test]
fn patches_being_flushed_stay_readable_a_newer_write_wins_and_both_land_as_layers() {
    let world = World::new();
    let mut expected = pattern(32 * MIB, 11);
    let (ino, fh) = create_and_write(&world, &expected);
    settled(&world.pool, fh).fsync(fh).unwrap();
    let stored: Vec<_> = world.pool.lock().unwrap().state().file_extents[&ino].values().copied().collect();
    // Small writes into stored chunks are patches: 64 KiB twice in each of 32 chunks
    // fill the 4 MiB buffer without reading a chunk.
    let piece = pattern(64 << 10, 42);
    for index in 0..32 {
        for at in [0, MIB / 2] {
            let offset = index * MIB + at;
            assert_eq!(write_shared(&world.pool, fh, offset as u64, &piece).unwrap().bytes, piece.len());
            expected[offset..offset + piece.len()].copy_from_slice(&piece);
        }
    }
    // The next write finds the buffer full: its flush stores the patches with the lock
    // released, and is held at the gate.
    world.gate.set(true);
    let writer = {
        let pool = world.pool.clone();
        let piece = piece.clone();
        std::thread::spawn(move || write_shared(&pool, fh, (MIB / 4) as u64, &piece).unwrap())
    };
    world.gate.wait_held();
    expected[MIB / 4..MIB / 4 + piece.len()].copy_from_slice(&piece);
    {
        let mut pool = lock_while_held(&world, "the pool's lock is free while the patches are stored");
        assert!(pool.state().layers.is_empty(), "nothing is committed before the fragments are written");
        let before_newer = pool.read(fh, 0, 32 * MIB).unwrap();
        assert_eq!(before_newer[MIB / 2..MIB / 2 + piece.len()], piece[..], "reads see the patches being stored");
        let newer = pattern(4096, 77);
        pool.write(fh, (5 * MIB + 1000) as u64, &newer).unwrap();
        expected[5 * MIB + 1000..5 * MIB + 1000 + 4096].copy_from_slice(&newer);
    }
    world.gate.set(false);
    assert_eq!(writer.join().unwrap().bytes, piece.len());
    {
        let mut pool = world.pool.lock().unwrap();
        assert_eq!(pool.state().layers.len(), 32, "every patched chunk took a layer");
        let now: Vec<_> = pool.state().file_extents[&ino].values().copied().collect();
        assert_eq!(now, stored, "no chunk was stored again");
        assert_eq!(pool.read(fh, 0, 32 * MIB).unwrap(), expected, "the newer write wins over the stored patch");
    }
    fsync_close_and_reopen(world, fh, &expected);
}

/// `write_shared` tells its caller when a flush behind it has work (its thread then takes
/// the pool's lock again after answering) and only then: not for a small file's bytes,
/// not below half the buffer's bound in whole chunks (counting none a flush in flight
/// holds), and not for a chunk loaded for a partial overwrite. Each answer matches what
/// `flush_behind` then does.
#[test]
fn a_write_reports_a_flush_due_exactly_when_flush_behind_has_work() {
    let world = World::new();
    let (ino, fh) = {
        let mut pool = world.pool.lock().unwrap();
        let ino = pool.create(Ino::ROOT, b"f", OWNER).unwrap().ino;
        (ino, pool.open_file(ino).unwrap())
    };
    let committed_size = |world: &World| world.pool.lock().unwrap().state().inodes.get(&ino).map(|i| i.size);
    assert!(!write_shared(&world.pool, fh, 0, b"small").unwrap().flush_due, "five bytes are nothing to flush behind");
    let chunk = pattern(MIB, 9);
    assert!(!write_shared(&world.pool, fh, 0, &chunk).unwrap().flush_due, "one whole chunk is a quarter of the bound");
    let wrote = write_shared(&world.pool, fh, MIB as u64, &chunk).unwrap();
    assert_eq!(wrote.bytes, MIB);
    assert!(wrote.flush_due, "two whole chunks are half the bound");
    assert_eq!(committed_size(&world), Some(0), "nothing committed before the flush behind");
    let flusher = flush_held(&world, fh);
    assert!(
        !write_shared(&world.pool, fh, 2 * MIB as u64, &chunk).unwrap().flush_due,
        "one chunk beside a flush in flight is not half the bound"
    );
    world.gate.set(false);
    flusher.join().unwrap();
    assert_eq!(committed_size(&world), Some(2 * MIB as u64), "the flush behind committed the two chunks");
    let wrote = write_shared(&world.pool, fh, 3 * MIB as u64, &chunk).unwrap();
    assert!(wrote.flush_due, "two whole fresh chunks once the flush ended");
    flush_behind(&world.pool, fh);
    assert_eq!(committed_size(&world), Some(4 * MIB as u64), "flush_behind stored what the write reported due");
    let patch = pattern(4096, 4);
    assert!(
        !write_shared(&world.pool, fh, 4096, &patch).unwrap().flush_due,
        "a chunk loaded for a partial overwrite is not flushed behind"
    );
    let mut expected = [chunk.clone(), chunk.clone(), chunk.clone(), chunk].concat();
    expected[4096..8192].copy_from_slice(&patch);
    fsync_close_and_reopen(world, fh, &expected);
}

/// A writer streaming a file keeps two flushes behind it in flight: the second starts
/// beside a first held midway, is stored while the first waits, and commits only after
/// it — the committed size never covers chunks still being stored. A write that fills
/// the buffer meanwhile leaves the first flush alone (its answer starts the second).
/// No third starts beside the two, and none beside a flush whose chunks a newer write
/// rewrites.
#[test]
fn a_second_flush_runs_beside_the_first_and_commits_after_it() {
    let world = World::new();
    let mut expected = pattern(8 * MIB, 5);
    let (ino, fh) = create_and_write(&world, &expected[..2 * MIB]);
    let committed_size = |world: &World| world.pool.lock().unwrap().state().inodes.get(&ino).map(|i| i.size);
    let write = |index: usize, bytes: &[u8]| write_shared(&world.pool, fh, (index * MIB) as u64, bytes).unwrap();
    let first = flush_held(&world, fh);
    assert!(!write(2, &expected[2 * MIB..3 * MIB]).flush_due);
    assert!(write(3, &expected[3 * MIB..4 * MIB]).flush_due, "two whole chunks above the flush in flight");
    assert!(write(4, &expected[4 * MIB..5 * MIB]).flush_due);
    assert!(write(5, &expected[5 * MIB..6 * MIB]).flush_due, "the buffer holds its bound now");
    assert!(write(6, &expected[6 * MIB..7 * MIB]).flush_due, "a write into the full buffer starts a second flush");
    assert_eq!(committed_size(&world), Some(0), "the full buffer was not stored under the lock, the first flush kept");
    let second = {
        let pool = world.pool.clone();
        std::thread::spawn(move || flush_behind(&pool, fh))
    };
    // The second's fragments pass the gate; its commit must wait for the first's.
    std::thread::sleep(Duration::from_millis(300));
    assert!(!second.is_finished(), "the second flush waits for the first to commit");
    {
        let mut pool = lock_while_held(&world, "the pool's lock is free while both flushes are in flight");
        assert_eq!(pool.state().inodes.get(&ino).map(|i| i.size), Some(0), "nothing committed out of order");
        assert_eq!(pool.read(fh, 0, 7 * MIB).unwrap(), expected[..7 * MIB], "reads see both flushes' chunks");
    }
    assert!(!write(7, &expected[7 * MIB..]).flush_due, "no third flush beside two");
    world.gate.set(false);
    first.join().unwrap();
    second.join().unwrap();
    assert_eq!(committed_size(&world), Some(4 * MIB as u64), "both flushes committed, in order");
    assert_eq!(world.pool.lock().unwrap().state().file_extents.get(&ino).map(|m| m.len()), Some(4));
    // A newer write of a chunk in flight leaves no room for a flush beside it.
    let third = flush_held(&world, fh);
    let newer = pattern(MIB, 8);
    assert!(!write(4, &newer).flush_due, "a chunk in flight rewritten: no second flush over it");
    expected[4 * MIB..5 * MIB].copy_from_slice(&newer);
    world.gate.set(false);
    third.join().unwrap();
    assert_eq!(committed_size(&world), Some(6 * MIB as u64));
    assert_eq!(world.pool.lock().unwrap().read(fh, 0, 8 * MIB).unwrap(), expected);
    fsync_close_and_reopen(world, fh, &expected);
}

/// A flush that waits too long for the one before it (here the first is held at the
/// gate past `FLUSH_WAIT_MAX`, five seconds) commits nothing out of order: it gives
/// both up, their chunks go back to the buffer, the first one's late commit is dropped
/// too, and the next flush stores everything — nothing lost, nothing left over.
#[test]
fn a_flush_that_waits_too_long_for_its_turn_gives_both_up_and_loses_nothing() {
    let world = World::new();
    let expected = pattern(4 * MIB, 13);
    let (ino, fh) = create_and_write(&world, &expected[..2 * MIB]);
    let committed_size = |world: &World| world.pool.lock().unwrap().state().inodes.get(&ino).map(|i| i.size);
    let first = flush_held(&world, fh);
    for index in 2..4 {
        write_shared(&world.pool, fh, (index * MIB) as u64, &expected[index * MIB..(index + 1) * MIB]).unwrap();
    }
    let started = Instant::now();
    flush_behind(&world.pool, fh);
    assert!(started.elapsed() >= Duration::from_secs(5), "the second flush waited for its turn until it gave up");
    assert_eq!(committed_size(&world), Some(0), "the second flush did not commit before the first");
    world.gate.set(false);
    first.join().unwrap();
    assert_eq!(committed_size(&world), Some(0), "the first flush's late commit was dropped");
    assert_eq!(world.pool.lock().unwrap().read(fh, 0, 4 * MIB).unwrap(), expected, "every chunk is buffered again");
    fsync_close_and_reopen(world, fh, &expected);
}
