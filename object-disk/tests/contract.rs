//! The `BlockDevice` contract, checked the same way on a directory disk (the reference)
//! and on an object disk on a real S3-compatible store: SeaweedFS, which `.ci/run`
//! starts (`.ci/seaweedfs start DIR` prints the environment these tests read). Without
//! that environment the object-store tests fail, naming what is missing: they never
//! skip.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use dfs_engine::media::device::Created;
use dfs_engine::media::device::{BlockDevice, BlockKind, BlockName, DeviceError, ExtentId};
use dfs_engine::media::dirdisk::DirDisk;
use dfs_objectdisk::{Access, Location, ObjectDisk};

const GIB: u64 = 1 << 30;

/// The store the tests use, from the environment `.ci/seaweedfs start` prints.
fn access() -> Access {
    let access = Access::from_env();
    assert!(
        access.endpoint.is_some() && access.key_id.is_some() && access.secret.is_some(),
        "these tests need an S3-compatible store: run `eval \"$(.ci/seaweedfs start /tmp/seaweedfs)\"` first \
         (it sets AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and DFS_TEST_S3_BUCKET)"
    );
    access
}

fn bucket() -> String {
    std::env::var("DFS_TEST_S3_BUCKET").expect("DFS_TEST_S3_BUCKET names the test bucket (see .ci/seaweedfs)")
}

/// A prefix no other test (or earlier run) has used.
fn fresh_location(test: &str) -> Location {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("s3://{}/contract/{test}-{}-{nanos}-{n}", bucket(), std::process::id()).parse().unwrap()
}

fn payload(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

/// What every `BlockDevice` promises, exercised on `device` (empty), then on `reopen()`,
/// a second instance over the same storage.
fn contract(device: &dyn BlockDevice, reopen: &dyn Fn() -> Box<dyn BlockDevice>) {
    let fragment = BlockName::Fragment { extent: ExtentId(0xfe), index: 3 };
    for kind in [BlockKind::Fragment, BlockKind::Journal, BlockKind::StorePage] {
        assert_eq!(device.list(kind).unwrap(), Vec::new(), "a fresh device lists no {kind:?}");
    }
    assert_eq!(device.read(fragment), Err(DeviceError::NotFound));
    assert_eq!(device.modified_secs(fragment), Err(DeviceError::NotFound));
    device.delete(fragment).expect("deleting a missing block is Ok");

    let big = payload(1, 300_000);
    device.write(fragment, &big).unwrap();
    let journal: Vec<BlockName> = [3u64, 1, 2].iter().map(|&seq| BlockName::Journal { seq }).collect();
    for (i, name) in journal.iter().enumerate() {
        device.write(*name, &payload(10 + i as u8, 100 + i)).unwrap();
    }
    device.write(BlockName::StorePage { id: 7 }, &payload(20, 4096)).unwrap();
    device.write(BlockName::Label, b"label bytes").unwrap();

    assert_eq!(device.read(fragment).unwrap(), big, "a block reads back as written");
    let mut visited = None;
    device.read_with(fragment, &mut |bytes| visited = Some(bytes.to_vec())).unwrap();
    assert_eq!(visited.as_deref(), Some(&big[..]));
    assert_eq!(device.list(BlockKind::Fragment).unwrap(), vec![fragment]);
    assert_eq!(
        device.list(BlockKind::Journal).unwrap(),
        vec![BlockName::Journal { seq: 1 }, BlockName::Journal { seq: 2 }, BlockName::Journal { seq: 3 }],
        "listed in ascending order"
    );
    assert_eq!(device.list(BlockKind::Label).unwrap(), vec![BlockName::Label]);
    let written = (big.len() + 100 + 101 + 102 + 4096 + 11) as u64;
    assert!(device.used_bytes() >= written, "used {} < written {written}", device.used_bytes());
    assert!(device.used_bytes() <= device.capacity_bytes());
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let modified = device.modified_secs(fragment).unwrap().expect("a known write time");
    assert!((modified - now).abs() < 600, "written at {modified}, now {now}");

    let replaced = payload(2, 1000);
    device.write(fragment, &replaced).unwrap();
    assert_eq!(device.read(fragment).unwrap(), replaced, "a write replaces the block");
    device.delete(BlockName::Journal { seq: 2 }).unwrap();
    assert_eq!(device.read(BlockName::Journal { seq: 2 }), Err(DeviceError::NotFound));
    device.sync().unwrap();

    let again = reopen();
    assert_eq!(again.read(fragment).unwrap(), replaced, "what was synced is there after a reopen");
    assert_eq!(
        again.list(BlockKind::Journal).unwrap(),
        vec![BlockName::Journal { seq: 1 }, BlockName::Journal { seq: 3 }]
    );
    assert_eq!(again.read(BlockName::StorePage { id: 7 }).unwrap(), payload(20, 4096));
    let used_before = again.used_bytes();
    again.delete(fragment).unwrap();
    again.sync().unwrap();
    assert!(again.used_bytes() < used_before, "a delete gives its room back");
    assert_eq!(again.list(BlockKind::Fragment).unwrap(), Vec::new());
}

#[test]
fn a_directory_disk_meets_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let disk = DirDisk::open(dir.path()).unwrap();
    contract(&disk, &|| Box::new(DirDisk::open(dir.path()).unwrap()));
}

#[test]
fn an_object_disk_meets_the_contract_on_seaweedfs() {
    let access = access();
    let location = fresh_location("contract");
    let disk = ObjectDisk::open(&location, GIB, &access).unwrap();
    assert_eq!(disk.describe(), location.to_string());
    contract(&disk, &|| Box::new(ObjectDisk::open(&location, GIB, &access).unwrap()));
}

#[test]
fn an_object_disk_refuses_a_write_past_its_capacity_and_keeps_nothing_of_it() {
    let location = fresh_location("capacity");
    let disk = ObjectDisk::open(&location, 10_000, &access()).unwrap();
    let name = BlockName::Fragment { extent: ExtentId(1), index: 0 };
    disk.write(name, &payload(1, 6_000)).unwrap();
    let second = BlockName::Fragment { extent: ExtentId(2), index: 0 };
    assert_eq!(disk.write(second, &payload(2, 6_000)), Err(DeviceError::NoSpace));
    assert_eq!(disk.read(second), Err(DeviceError::NotFound));
    // Replacing a block counts only the difference.
    disk.write(name, &payload(3, 9_000)).unwrap();
    assert_eq!(disk.used_bytes(), 9_000);
}

#[test]
fn an_object_disk_says_why_it_cannot_open() {
    let access = access();
    let unreachable = Access { endpoint: Some("http://127.0.0.1:9".into()), ..access.clone() };
    let error = ObjectDisk::open(&fresh_location("unreachable"), GIB, &unreachable).err().unwrap();
    assert!(matches!(&error, DeviceError::Unavailable(m) if m.contains("cannot be reached")), "{error}");

    let wrong = Access { secret: Some("not-the-secret".into()), ..access.clone() };
    let error = ObjectDisk::open(&fresh_location("credentials"), GIB, &wrong).err().unwrap();
    assert!(matches!(&error, DeviceError::Unavailable(m) if m.contains("rejected the credentials")), "{error}");
    assert!(!error.to_string().contains("not-the-secret"), "a secret in a message: {error}");

    let missing: Location = "s3://dfs-no-such-bucket/x".parse().unwrap();
    let error = ObjectDisk::open(&missing, GIB, &access).err().unwrap();
    assert!(matches!(&error, DeviceError::Unavailable(m) if m.contains("does not exist")), "{error}");
}

#[test]
fn object_disks_under_different_prefixes_do_not_see_each_other() {
    let access = access();
    let (a, b) = (fresh_location("neighbour-a"), fresh_location("neighbour-b"));
    let disk_a = ObjectDisk::open(&a, GIB, &access).unwrap();
    let disk_b = ObjectDisk::open(&b, GIB, &access).unwrap();
    let name = BlockName::Journal { seq: 5 };
    disk_a.write(name, b"a's record").unwrap();
    assert_eq!(disk_b.list(BlockKind::Journal).unwrap(), Vec::new());
    assert_eq!(disk_b.read(name), Err(DeviceError::NotFound));
    // A prefix inside another is not a disk of it either.
    let nested: Location = format!("{a}/inner").parse().unwrap();
    let disk_nested = ObjectDisk::open(&nested, GIB, &access).unwrap();
    disk_nested.write(name, b"nested").unwrap();
    assert_eq!(disk_a.read(name).unwrap(), b"a's record");
    assert_eq!(disk_a.list(BlockKind::Journal).unwrap(), vec![name]);
}

#[test]
fn a_create_only_write_is_refused_once_the_name_is_taken_by_anyone() {
    let access = access();
    let location = fresh_location("create-only");
    let mine = ObjectDisk::open(&location, GIB, &access).unwrap();
    let theirs = ObjectDisk::open(&location, GIB, &access).unwrap();
    let record = BlockName::Journal { seq: 42 };
    assert_eq!(mine.create(record, b"mine").unwrap(), Created::Written);
    assert_eq!(theirs.create(record, b"theirs").unwrap(), Created::Taken, "another writer's create");
    assert_eq!(mine.create(record, b"mine again").unwrap(), Created::Taken, "its own second create");
    assert_eq!(theirs.create(record, b"mine").unwrap(), Created::Written, "the same bytes again: a retry's answer");
    assert_eq!(theirs.read(record).unwrap(), b"mine", "the first create stays");
    // Racing writers: of many creates of one name at once, exactly one wins.
    let contested = BlockName::Journal { seq: 43 };
    let outcomes: Vec<Created> = std::thread::scope(|scope| {
        let racers: Vec<_> = (0..8u8)
            .map(|i| {
                let disk = if i % 2 == 0 { &mine } else { &theirs };
                scope.spawn(move || disk.create(contested, &[i; 64]).unwrap())
            })
            .collect();
        racers.into_iter().map(|r| r.join().unwrap()).collect()
    });
    assert_eq!(outcomes.iter().filter(|o| **o == Created::Written).count(), 1, "{outcomes:?}");
    let winner = mine.read(contested).unwrap();
    assert!(winner.iter().all(|b| *b == winner[0]) && winner.len() == 64, "one racer's bytes, whole");
}

#[test]
fn seaweedfs_honours_create_only_writes() {
    let disk = ObjectDisk::open(&fresh_location("probe"), GIB, &access()).unwrap();
    disk.check_create_only().unwrap();
    assert_eq!(disk.list(BlockKind::Fragment).unwrap(), Vec::new());
    assert_eq!(disk.used_bytes(), 0, "the probe leaves nothing behind");
}
