//! Losing fragments: within a policy's tolerance every file reads back exactly; one
//! fragment more and the read fails naming the lost extent — never wrong bytes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::{fails, ok, pattern, Pool, StoredFragment};
use dfs_engine::media::device::BlockDevice;
use dfs_engine::media::dirdisk::DirDisk;

#[derive(Clone, Copy, Debug)]
enum Damage {
    /// The fragment is gone (deleted through the disk, as a lost write would leave it).
    Delete,
    FlipByte,
    /// Its second half reads back as zeros (a torn write).
    LoseSecondHalf,
}

fn damage(disk: &Path, fragment: &StoredFragment, how: Damage) {
    match how {
        Damage::Delete => {
            let device = DirDisk::open(disk).unwrap();
            device.delete(fragment.name).unwrap();
            device.sync().unwrap();
        }
        Damage::FlipByte => fragment.flip_byte(fragment.len - 1 - fragment.len / 3).unwrap(),
        Damage::LoseSecondHalf => {
            let half = fragment.len / 2;
            fragment.overwrite(half, &vec![0u8; (fragment.len - half) as usize]).unwrap();
        }
    }
}

fn check(policy: &str, tolerance: usize, how: Damage) {
    let pool = Pool::new(policy, &[64; 11]);
    let data = pattern((3 << 20) + 5, tolerance as u64);
    let local = pool.local("in");
    std::fs::write(&local, &data).unwrap();
    ok(&["put", "--pool", pool.path(), local.to_str().unwrap(), "/f"]);
    let out = pool.local("out");

    // Within tolerance: wreck every fragment on `tolerance` whole disks.
    for disk in &pool.disks[..tolerance] {
        for fragment in common::fragments_on(disk) {
            damage(disk, &fragment, how);
        }
    }
    ok(&["get", "--pool", pool.path(), "/f", out.to_str().unwrap()]);
    assert_eq!(std::fs::read(&out).unwrap(), data, "{policy} {how:?} within tolerance");

    // One more: break fragments of one extent until one fewer than needed remain.
    let extents: serde_json::Value =
        serde_json::from_str(&ok(&["list-extents", "--pool", pool.path(), "--verify", "--json"])).unwrap();
    let victim = &extents[0];
    let id = victim["extent"].as_str().unwrap();
    let stored_as = victim["stored_as"].as_str().unwrap();
    let needed = victim["fragments_total"].as_u64().unwrap() as usize - tolerance;
    let mut to_break = victim["fragments_available"].as_u64().unwrap() as usize + 1 - needed;
    for (index, disk) in victim["disks"].as_array().unwrap().iter().enumerate() {
        let disk_number: usize = disk.as_str().unwrap()[1..].parse().unwrap();
        if disk_number <= tolerance || to_break == 0 {
            continue; // already damaged above, or enough broken
        }
        let disk = &pool.disks[disk_number - 1];
        let leaf = format!("{stored_as}.{index:02}");
        let fragment = common::fragments_on(disk).into_iter().find(|f| f.name.leaf() == leaf).unwrap();
        damage(disk, &fragment, how);
        to_break -= 1;
    }
    assert_eq!(to_break, 0);
    std::fs::remove_file(&out).ok();
    let error = fails(&["get", "--pool", pool.path(), "/f", out.to_str().unwrap()]);
    assert!(error.contains(&format!("extent {id}")), "{policy} {how:?}: error does not name extent {id}: {error}");
    assert!(error.contains("lost") && error.contains("EIO"), "{error}");
    assert!(!out.exists(), "a failed get must not leave a partial file");
}

#[test]
fn replicate_1_tolerates_nothing() {
    check("replicate:1", 0, Damage::Delete);
}

#[test]
fn replicate_3_tolerates_two_disks() {
    check("replicate:3", 2, Damage::Delete);
    check("replicate:3", 2, Damage::FlipByte);
}

#[test]
fn erasure_4_2_tolerates_two_disks() {
    check("erasure:4+2", 2, Damage::FlipByte);
    check("erasure:4+2", 2, Damage::LoseSecondHalf);
}

#[test]
fn erasure_8_3_tolerates_three_disks() {
    check("erasure:8+3", 3, Damage::Delete);
    check("erasure:8+3", 3, Damage::FlipByte);
}
