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

// On shared devices (a disk on an object store, issue 18) no lock keeps a second machine
// away: owners' claims and create-only writes fence instead (`media::owner`). `MemDisk`
// models such a disk; handing the same disks to two pools models two machines.

use dfs_engine::media::device::{BlockName, Created, DeviceError};
use dfs_engine::media::owner::{self, OwnedDevice, OwnerClaim};
use dfs_sim::memdisk::MemDisk;

fn shared_disks() -> Vec<Arc<MemDisk>> {
    (0..3).map(|i| Arc::new(MemDisk::shared(format!("s3://bucket/disk{i}"), 256 << 20))).collect()
}

fn open_shared(disks: &[Arc<MemDisk>], claimant: &str, checkpoint_every_records: u64) -> dfs_engine::Result<Pool> {
    let devices =
        disks.iter().enumerate().map(|(i, d)| PoolDevice { uuid: uuid(10 + i as u64), device: d.clone() }).collect();
    let options = PoolOptions {
        check_invariants: true,
        claimant: claimant.to_string(),
        checkpoint_every_records,
        ..PoolOptions::default()
    };
    let (mut pool, _) =
        Pool::open(uuid(1), "replicate:2".parse().unwrap(), devices, Arc::new(SystemClock::new()), options)?;
    if pool.state().disks.is_empty() {
        for (i, disk) in disks.iter().enumerate() {
            pool.add_disk(uuid(10 + i as u64), None, disk.clone())?;
        }
    }
    Ok(pool)
}

fn claims(disk: &MemDisk) -> Vec<u64> {
    disk.blocks()
        .into_iter()
        .filter_map(|(name, _)| if let BlockName::Owner { epoch } = name { Some(epoch) } else { None })
        .collect()
}

#[test]
fn on_shared_disks_each_open_claims_the_next_epoch_on_every_disk() {
    let disks = shared_disks();
    let first = open_shared(&disks, "host-a pid 1", 256).unwrap();
    for disk in &disks {
        assert_eq!(claims(disk), vec![1], "{}", disk.describe());
    }
    drop(first);
    let _second = open_shared(&disks, "host-b pid 2", 256).unwrap();
    for disk in &disks {
        assert_eq!(claims(disk), vec![1, 2], "{}", disk.describe());
        let claim = OwnerClaim::decode(&disk.peek(BlockName::Owner { epoch: 2 }).unwrap()).unwrap();
        assert_eq!((claim.pool_id, claim.epoch, claim.by.as_str()), (uuid(1), 2, "host-b pid 2"));
    }
    // The journal says who opened the pool, at the record after the one it recovered.
    for disk in &disks {
        let openers: Vec<(String, Option<u64>)> = disk
            .blocks()
            .into_iter()
            .filter(|(name, _)| matches!(name, BlockName::Journal { .. }))
            .filter_map(|(name, _)| dfs_engine::meta::journal::decode_record(&disk.peek(name).unwrap()).ok())
            .flat_map(|(record, _, _)| record.txn.ops)
            .filter_map(|op| match op {
                dfs_engine::meta::state::Op::OpenedBy { by, epoch, .. } => Some((by, epoch)),
                _ => None,
            })
            .collect();
        assert_eq!(openers.last(), Some(&("host-b pid 2".to_string(), Some(2))), "{}: {openers:?}", disk.describe());
    }
}

#[test]
fn on_shared_disks_a_later_owner_fences_the_first_even_after_its_checkpoints_trimmed_the_journal() {
    let disks = shared_disks();
    let mut first = open_shared(&disks, "host-a pid 1", 4).unwrap();
    let before = vec![1u8; 300_000];
    write(&mut first, "before", &before).unwrap();
    // Another machine imports the pool while the first is paused, and writes enough that
    // checkpoints trim every journal record the first could collide with.
    let mut second = open_shared(&disks, "host-b pid 2", 4).unwrap();
    let mut theirs = Vec::new();
    for i in 0..6u8 {
        let data = vec![10 + i; 50_000];
        write(&mut second, &format!("theirs{i}"), &data).unwrap();
        theirs.push(data);
    }
    assert!(second.counters().checkpoints >= 1, "the test needs a checkpoint to have trimmed the journal");
    // The first resumes: its next write is refused, naming who owns the pool now.
    for (name, data) in [("mine", vec![3u8; 100_000]), ("mine-small", b"tiny".to_vec())] {
        let error = write(&mut first, name, &data).unwrap_err();
        assert_eq!(error.errno(), libc::EROFS, "{error}");
        assert!(error.to_string().contains("host-b pid 2 (epoch 2"), "{error}");
    }
    write(&mut second, "more", b"the owner goes on").unwrap();
    drop(first);
    drop(second);
    let mut after = open_shared(&disks, "host-c pid 3", 4).unwrap();
    assert_eq!(read(&mut after, "before").unwrap(), before);
    for (i, data) in theirs.iter().enumerate() {
        assert_eq!(&read(&mut after, &format!("theirs{i}")).unwrap(), data);
    }
    assert_eq!(read(&mut after, "more").unwrap(), b"the owner goes on");
    assert!(read(&mut after, "mine").is_none(), "the fenced writer's commit must not appear");
    assert!(read(&mut after, "mine-small").is_none(), "the fenced writer's commit must not appear");
}

#[test]
fn a_record_landing_after_a_later_owners_claim_is_not_acknowledged() {
    let disks = shared_disks();
    let mut first = open_shared(&disks, "host-a pid 1", 256).unwrap();
    write(&mut first, "before", b"acknowledged").unwrap();
    // A later owner has claimed and is reading the journal: the first's next record may
    // land where that owner no longer looks, so it must not be acknowledged.
    let claim = OwnerClaim { pool_id: uuid(1), epoch: 2, by: "host-b pid 2".into(), at: Default::default() };
    disks[0].write(BlockName::Owner { epoch: 2 }, &claim.encode()).unwrap();
    let error = write(&mut first, "mine", b"never acknowledged").unwrap_err();
    assert_eq!(error.errno(), libc::EROFS, "{error}");
    assert!(error.to_string().contains("host-b pid 2 (epoch 2"), "{error}");
}

#[test]
fn an_owned_device_replaces_leftovers_but_a_superseded_one_writes_nothing() {
    let disk = Arc::new(MemDisk::shared("s3://bucket/disk0", 1 << 20));
    let fence = owner::claim(&[disk.as_ref() as &dyn BlockDevice], uuid(1), "host-a pid 1", Default::default())
        .unwrap()
        .expect("a shared disk is claimed");
    assert_eq!(fence.epoch(), 1);
    let owned = OwnedDevice::wrap(disk.clone(), Some(&fence));
    let fragment = BlockName::Fragment { extent: dfs_engine::media::device::ExtentId(7), index: 0 };
    // A leftover under the name (a crashed or fenced writer's) is replaced by the owner.
    disk.write(fragment, b"leftover").unwrap();
    owned.write(fragment, b"owner's").unwrap();
    assert_eq!(disk.read(fragment).unwrap(), b"owner's");
    assert_eq!(disk.create(fragment, b"other").unwrap(), Created::Taken, "create-only on the raw device");
    // Once a later owner has claimed, a taken name is never overwritten, and nothing is
    // written or deleted from then on.
    disk.write(BlockName::Owner { epoch: 2 }, b"a later claim").unwrap();
    let error = owned.write(fragment, b"stale").unwrap_err();
    assert!(matches!(&error, DeviceError::Fenced(m) if m.contains("epoch 2")), "{error}");
    assert_eq!(disk.read(fragment).unwrap(), b"owner's");
    let other = BlockName::Fragment { extent: dfs_engine::media::device::ExtentId(8), index: 0 };
    assert!(matches!(owned.write(other, b"new"), Err(DeviceError::Fenced(_))));
    assert!(matches!(owned.delete(fragment), Err(DeviceError::Fenced(_))));
    assert_eq!(disk.read(other), Err(DeviceError::NotFound));
    assert_eq!(disk.read(fragment).unwrap(), b"owner's");
    assert!(fence.fenced().is_some());
}
