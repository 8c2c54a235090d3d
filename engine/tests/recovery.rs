//! Metadata recovery: torn and corrupt journal tails, corrupt replicas, orphans.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;

use common::{blocks, journal_records, pattern, read_record, write_record, TestPool};
use dfs_engine::pooldir::PoolDir;
use dfs_engine::Error;

/// A pool with three journal disks whose journal holds uncompacted records.
fn pool_with_records() -> (TestPool, Vec<Vec<u8>>) {
    let mut t = TestPool::new(&[64, 64, 64, 64], "replicate:2");
    t.reopen();
    let files: Vec<Vec<u8>> = (0..4).map(|i| pattern(300_000 + i * 1000, i as u64)).collect();
    for (i, data) in files.iter().enumerate() {
        t.write_file(&format!("f{i}"), data);
    }
    t.pool = None;
    t.dir = None;
    assert!(!journal_records(&t.disk_path(0)).is_empty(), "the test needs journal records on disk");
    (t, files)
}

fn assert_files(t: &mut TestPool, files: &[Vec<u8>]) {
    for (i, data) in files.iter().enumerate() {
        assert_eq!(&t.read_file(&format!("/f{i}")).unwrap(), data, "file f{i}");
    }
}

#[test]
fn a_torn_record_after_the_last_commit_is_dropped() {
    let (mut t, files) = pool_with_records();
    for disk in 0..3 {
        let seq = *journal_records(&t.disk_path(disk)).last().unwrap();
        let torn = read_record(&t.disk_path(disk), seq);
        write_record(&t.disk_path(disk), seq + 1, &torn[..torn.len() / 2]);
    }
    let report = t.reopen();
    assert!(report.journal_rewritten);
    assert_files(&mut t, &files);
    t.pool = None;
    t.dir = None;
    for disk in 0..3 {
        let left = journal_records(&t.disk_path(disk));
        assert!(left.is_empty(), "torn tail left on disk {disk}: {left:?}");
    }
}

#[test]
fn a_truncated_last_record_on_some_replicas_is_read_from_another() {
    let (mut t, files) = pool_with_records();
    for disk in 0..2 {
        let last = *journal_records(&t.disk_path(disk)).last().unwrap();
        let bytes = read_record(&t.disk_path(disk), last);
        write_record(&t.disk_path(disk), last, &bytes[..bytes.len() - 3]);
    }
    t.reopen();
    assert_files(&mut t, &files);
}

#[test]
fn a_corrupt_replica_is_recovered_from_the_others_and_rewritten() {
    let (mut t, files) = pool_with_records();
    let victim = t.disk_path(1);
    let flip = |bytes: &mut Vec<u8>| {
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x40;
    };
    for seq in journal_records(&victim) {
        let mut bytes = read_record(&victim, seq);
        flip(&mut bytes);
        write_record(&victim, seq, &bytes);
    }
    for path in blocks(&victim, "checkpoint") {
        let mut bytes = fs::read(&path).unwrap();
        flip(&mut bytes);
        fs::write(&path, bytes).unwrap();
    }
    let report = t.reopen();
    assert!(report.journal_rewritten);
    assert!(!report.notes.is_empty(), "recovery must say what it found");
    assert_files(&mut t, &files);
    // The replica was re-replicated: it alone now suffices.
    t.pool = None;
    t.dir = None;
    for disk in [0, 2] {
        for path in blocks(&t.disk_path(disk), "checkpoint") {
            fs::remove_file(path).unwrap();
        }
    }
    t.reopen();
    assert_files(&mut t, &files);
}

#[test]
fn a_pool_whose_every_replica_is_corrupt_refuses_to_open() {
    let (t, _) = pool_with_records();
    for disk in 0..3 {
        for path in blocks(&t.disk_path(disk), "store-root") {
            let mut bytes = fs::read(&path).unwrap();
            let last = bytes.len() - 1;
            bytes[last] ^= 1;
            fs::write(&path, bytes).unwrap();
        }
    }
    let error = PoolDir::open(&t.pool_path(), common::options()).err().unwrap();
    assert!(matches!(error, Error::MetadataCorrupt(_)), "{error}");
    assert!(error.to_string().contains("refusing to open"), "{error}");
    // Refusing changed nothing: the fragments are all still there.
    assert!(!common::fragments_on(&t.disk_path(0)).is_empty() || !common::fragments_on(&t.disk_path(3)).is_empty());
}

#[test]
fn a_pool_whose_metadata_vanished_refuses_to_open_over_its_data() {
    let (t, _) = pool_with_records();
    for disk in 0..4 {
        common::remove_records(&t.disk_path(disk));
        for namespace in ["checkpoint", "store-root", "store-page"] {
            for path in blocks(&t.disk_path(disk), namespace) {
                fs::remove_file(path).unwrap();
            }
        }
    }
    let error = PoolDir::open(&t.pool_path(), common::options()).err().unwrap();
    assert!(matches!(error, Error::MetadataCorrupt(_)), "{error}");
}

#[test]
fn a_record_that_does_not_chain_is_never_applied() {
    let (mut t, files) = pool_with_records();
    // A well-formed record from another history: copy the first record of disk 0 to a
    // sequence number past the end. Its checksum holds, its chain hash does not.
    for disk in 0..3 {
        let records = journal_records(&t.disk_path(disk));
        let first = read_record(&t.disk_path(disk), records[0]);
        write_record(&t.disk_path(disk), records.last().unwrap() + 1, &first);
    }
    t.reopen();
    assert_files(&mut t, &files);
    t.pool().state().check().unwrap();
}

#[test]
fn orphan_fragments_are_removed_on_open() {
    let (mut t, files) = pool_with_records();
    let disk = t.disk_path(3);
    // A file of its own, as a pool made before segments held fragments.
    let real = common::fragments_on(&t.disk_path(0)).into_iter().next().unwrap().read().unwrap();
    let orphan = disk.join("fragment").join("00000000deadbeef.00");
    fs::create_dir_all(orphan.parent().unwrap()).unwrap();
    fs::write(&orphan, real).unwrap();
    let report = t.reopen();
    assert_eq!(report.orphan_fragments_removed, 1);
    assert!(!orphan.exists());
    assert_files(&mut t, &files);
}

#[test]
fn a_checkpoint_is_never_rewritten_in_place() {
    let (mut t, files) = pool_with_records();
    t.reopen();
    let pool = t.pool();
    let before = pool.counters().checkpoints;
    pool.checkpoint().unwrap();
    pool.checkpoint().unwrap();
    assert_eq!(pool.counters().checkpoints, before, "a checkpoint of an unchanged state rewrote the only copy");
    t.write_file("new", b"x");
    t.pool().checkpoint().unwrap();
    assert_eq!(t.pool().counters().checkpoints, before + 1);
    assert_files(&mut t, &files);
}

/// The fragments a shared barrier (an `fsync` through the mount) frees are deleted on a
/// thread of their own as it returns: no later barrier has to come, nor pay for their
/// deletion; `df` counts them free throughout. A plain barrier waits for them.
#[test]
fn a_shared_barrier_deletes_its_frees_on_a_thread_of_their_own_and_a_plain_barrier_waits_for_them() {
    let mut t = TestPool::new(&[64, 64, 64], "replicate:2");
    let empty = t.pool().statfs().free_bytes;
    t.write_file("doomed", &pattern(3 << 20, 7));
    assert!(t.pool().statfs().free_bytes + (3 << 20) <= empty);
    let count = |t: &TestPool| (0..3).map(|i| common::fragments_on(&t.disk_path(i)).len()).sum::<usize>();
    assert_eq!(count(&t), 3 * 2, "three 1 MiB extents, two copies each");
    let shared = std::sync::Mutex::new(t.pool.take().unwrap());
    shared.lock().unwrap().unlink(dfs_engine::Ino::ROOT, b"doomed").unwrap();
    dfs_engine::data::shared_barrier::sync_shared(&shared).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while count(&t) > 0 {
        assert!(std::time::Instant::now() < deadline, "{} fragments still there, with no barrier since", count(&t));
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let free = shared.lock().unwrap().statfs().free_bytes;
    assert!(free.abs_diff(empty) < 64 << 10, "df has the room back: {free} free, {empty} when empty");
    t.pool = Some(shared.into_inner().unwrap());
    assert!(!t.pool().has_undurable_commits());

    let mut t = TestPool::new(&[64, 64, 64], "replicate:2");
    for round in 0..5 {
        t.write_file("doomed", &pattern(2 << 20, round));
        let shared = std::sync::Mutex::new(t.pool.take().unwrap());
        shared.lock().unwrap().unlink(dfs_engine::Ino::ROOT, b"doomed").unwrap();
        dfs_engine::data::shared_barrier::sync_shared(&shared).unwrap();
        shared.lock().unwrap().sync().unwrap();
        assert_eq!(count(&t), 0, "round {round}: a plain barrier waits for the deletion");
        t.pool = Some(shared.into_inner().unwrap());
    }
    t.reopen();
}

/// A rebuild with the I/O threads on reads several extents at once: every extent of a
/// failed disk, more than one batch, comes back whole, and so do two whose fragments on
/// healthy disks rotted meanwhile — a data shard (which a repair first takes on its
/// header, for the extent's hash to prove) and a parity fragment (verified on its own).
#[test]
fn a_rebuild_of_many_extents_at_once_restores_each_one_whole() {
    let mut t = TestPool::new(&[64; 7], "erasure:4+2");
    let data = pattern(48 << 20, 7);
    t.write_file("big", &data);
    let failed = *t.pool().state().disks.keys().next().unwrap();
    // Fragments on healthy disks of extents the failed disk also holds: one data shard,
    // one parity fragment.
    let on_failed: Vec<_> = common::fragments_on(&t.disk_path(0)).iter().map(|f| extent_of(f.name)).collect();
    let candidates: Vec<_> = (1..7)
        .flat_map(|disk| common::fragments_on(&t.disk_path(disk)).into_iter().map(move |f| (disk, f)))
        .filter(|(_, f)| on_failed.contains(&extent_of(f.name)))
        .collect();
    let data_shard = candidates.iter().find(|(_, f)| index_of(f.name) < 4).cloned().unwrap();
    let parity = candidates
        .iter()
        .find(|(_, f)| index_of(f.name) >= 4 && extent_of(f.name) != extent_of(data_shard.1.name))
        .cloned()
        .unwrap();
    for (_, rotten) in [&data_shard, &parity] {
        let mut segment = fs::read(&rotten.path).unwrap();
        segment[(rotten.offset + rotten.len / 2) as usize] ^= 0x55;
        fs::write(&rotten.path, segment).unwrap();
    }
    t.pool().fail_disk(failed).unwrap();
    let queued = t.pool().rebuild_queue().len();
    assert!(queued > 16, "the test needs more than one batch: {queued} extents queued");
    assert_eq!(t.pool().rebuild_step(usize::MAX).unwrap(), queued);
    assert!(t.pool().rebuild_queue().is_empty());
    for (disk, rotten) in [&data_shard, &parity] {
        let rewritten = common::fragments_on(&t.disk_path(*disk)).into_iter().find(|f| f.name == rotten.name).unwrap();
        assert_ne!(
            (&rewritten.path, rewritten.offset),
            (&rotten.path, rotten.offset),
            "the rotten fragment {} was rewritten",
            rotten.name
        );
    }
    t.reopen();
    assert!(t.pool().rebuild_queue().is_empty(), "the repairs are durable");
    assert_eq!(t.read_file("/big").unwrap(), data);
}

fn index_of(name: dfs_engine::media::device::BlockName) -> u8 {
    match name {
        dfs_engine::media::device::BlockName::Fragment { index, .. } => index,
        _ => u8::MAX,
    }
}

fn extent_of(name: dfs_engine::media::device::BlockName) -> Option<dfs_engine::media::device::ExtentId> {
    match name {
        dfs_engine::media::device::BlockName::Fragment { extent, .. } => Some(extent),
        _ => None,
    }
}

#[test]
fn a_store_replica_of_another_history_is_rewritten_from_the_one_recovered() {
    use dfs_engine::media::device::BlockDevice;
    use dfs_engine::media::dirdisk::DirDisk;
    use dfs_engine::meta::{journal, paged, store::Store};
    let (mut t, files) = pool_with_records();
    t.reopen();
    t.pool = None;
    t.dir = None;
    // Disks 0 and 2 take one commit, disk 1 another of the same generation with another
    // state, as another history would have left them. Recovery starts from disk 0's, the
    // first in order; disk 1 does not hold it and must be given it.
    let disks: Vec<DirDisk> = (0..3).map(|disk| DirDisk::open(&t.disk_path(disk)).unwrap()).collect();
    let all: Vec<&dyn BlockDevice> = disks.iter().map(|d| d as &dyn BlockDevice).collect();
    let head = paged::load(&Store::open(&all, Default::default()).unwrap(), &all).unwrap();
    let mut state = head.state.clone();
    let mut ours = Store::open(&[all[0], all[2]], Default::default()).unwrap();
    ours.commit(&[all[0], all[2]], paged::encode_head(head.seq, head.tip_hash, &mut state)).unwrap();
    let mut other = head.state.clone();
    other.next_ino += 1000;
    let mut theirs = Store::open(&[all[1]], Default::default()).unwrap();
    theirs.put(vec![1, 0, 0, 0, 0, 0, 0, 0, 9], vec![0]);
    theirs.commit(&[all[1]], paged::encode_head(head.seq, head.tip_hash, &mut other)).unwrap();
    assert_eq!(ours.generation(), theirs.generation());
    drop(disks);
    t.reopen();
    assert_eq!(t.pool().state().next_ino, head.state.next_ino);
    t.pool = None;
    t.dir = None;
    let alone = DirDisk::open(&t.disk_path(1)).unwrap();
    let recovered = journal::recover(&[&alone], &Default::default()).unwrap().unwrap();
    assert_eq!(recovered.state.next_ino, head.state.next_ino, "disk 1 was given the recovered store");
    assert_eq!(recovered.state.inodes, head.state.inodes, "with the recovered pages, not its own");
    t.reopen();
    assert_files(&mut t, &files);
}

#[test]
fn journal_and_checkpoint_bytes_count_each_replica_written() {
    let mut t = TestPool::new(&[64, 64, 64], "replicate:2");
    let pool = t.pool();
    assert_eq!(pool.journal_disks().len(), 3);
    let before = pool.counters().clone();
    pool.mkdir(dfs_engine::Ino::ROOT, b"a", common::OWNER).unwrap();
    pool.sync().unwrap();
    let record = pool.counters().journal_bytes - before.journal_bytes;
    assert!(record > 0 && record.is_multiple_of(3), "{record} bytes for one record on three replicas");
    pool.checkpoint().unwrap();
    let checkpoint = pool.counters().checkpoint_bytes - before.checkpoint_bytes;
    assert!(
        checkpoint > record && checkpoint.is_multiple_of(3),
        "{checkpoint} bytes for one checkpoint on three replicas"
    );
}
