//! The extent index: which extents sit on each disk and which are short of fragments,
//! kept by the commits that change them rather than found by visiting every record.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{pattern, TestPool};
use dfs_engine::media::device::ExtentId;
use dfs_engine::meta::state::DiskId;

fn scanned_on(t: &mut TestPool, disk: DiskId) -> Vec<ExtentId> {
    t.pool().state().extents.iter().filter(|(_, r)| r.fragments.contains(&disk)).map(|(id, _)| id).collect()
}

/// Two disks fail in turn: the extents on both come first (one more loss loses them),
/// the queue survives a reopen, and a rebuild step takes them from the front.
#[test]
fn the_rebuild_queue_is_kept_by_commits_and_read_from_its_front() {
    let mut t = TestPool::new(&[64; 8], "erasure:4+2");
    for i in 0..6 {
        t.write_file(&format!("f{i}"), &pattern(3 << 20, i));
    }
    let disks: Vec<DiskId> = t.pool().state().disks.keys().copied().collect();
    for disk in &disks {
        assert_eq!(t.pool().extents_on(*disk), scanned_on(&mut t, *disk), "extents on {disk}");
        assert_eq!(t.pool().count_on(*disk), scanned_on(&mut t, *disk).len());
    }
    assert_eq!(t.pool().rebuild_queue_len(), 0);

    t.pool().fail_disk(disks[0]).unwrap();
    let first = t.pool().rebuild_queue();
    assert_eq!(first.iter().map(|item| item.extent).collect::<Vec<_>>(), scanned_on(&mut t, disks[0]));
    assert!(first.iter().all(|item| item.spare == 1 && item.missing.len() == 1), "{first:?}");

    t.pool().fail_disk(disks[1]).unwrap();
    let on_both: Vec<ExtentId> =
        scanned_on(&mut t, disks[0]).into_iter().filter(|id| scanned_on(&mut t, disks[1]).contains(id)).collect();
    assert!(!on_both.is_empty(), "the test needs extents on both failed disks");
    let queue = t.pool().rebuild_queue();
    let (endangered, rest) = queue.split_at(on_both.len());
    assert_eq!(endangered.iter().map(|item| item.extent).collect::<Vec<_>>(), on_both);
    assert!(endangered.iter().all(|item| item.spare == 0 && item.missing.len() == 2));
    assert!(rest.iter().all(|item| item.spare == 1 && item.missing.len() == 1));
    assert_eq!(t.pool().rebuild_queue_len(), queue.len());
    assert_eq!(t.pool().rebuild_front(2), queue[..2]);
    t.pool().state().check().unwrap();

    t.reopen();
    assert_eq!(t.pool().rebuild_queue(), queue, "rebuilt from the durable state at open");
    assert_eq!(t.pool().rebuild_step(on_both.len()).unwrap(), on_both.len());
    assert_eq!(t.pool().rebuild_queue(), rest, "the most endangered were repaired first");
    t.pool().rebuild_step(usize::MAX).unwrap();
    assert_eq!(t.pool().rebuild_queue_len(), 0);
    assert!(t.pool().extents_on(disks[0]).is_empty() && t.pool().extents_on(disks[1]).is_empty());
    assert_eq!(t.pool().count_on(disks[2]), scanned_on(&mut t, disks[2]).len());
    for i in 0..6 {
        assert_eq!(t.read_file(&format!("/f{i}")).unwrap(), pattern(3 << 20, i));
    }
}

/// A drain moves the extents the index lists on the disk, in id order, and removes the
/// disk once its set is empty.
#[test]
fn a_drain_walks_the_disk_set_until_it_is_empty() {
    let mut t = TestPool::new(&[64; 4], "replicate:2");
    for i in 0..5 {
        t.write_file(&format!("f{i}"), &pattern(2 << 20, 10 + i));
    }
    let disk = *t.pool().state().disks.keys().next().unwrap();
    let before = scanned_on(&mut t, disk);
    assert!(before.len() > 2, "the test needs several extents on the disk");
    assert_eq!(t.pool().start_removal(disk).unwrap(), before.len());
    let progress = t.pool().drain_step(disk, 2).unwrap();
    assert_eq!((progress.moved, progress.remaining), (2, before.len() - 2));
    assert_eq!(t.pool().extents_on(disk), before[2..], "the first two in id order moved");
    let progress = t.pool().drain_step(disk, usize::MAX).unwrap();
    assert_eq!(progress.remaining, 0);
    assert!(scanned_on(&mut t, disk).is_empty());
    assert_eq!(t.pool().state().disks[&disk].state, dfs_engine::meta::state::DiskState::Removed);
    t.pool().state().check().unwrap();
}

/// Counts per health as `list_extents` finds them by listing every disk.
fn listed_health(t: &mut TestPool) -> std::collections::BTreeMap<String, u64> {
    let mut counts = std::collections::BTreeMap::new();
    for info in t.pool().list_extents(None, false) {
        *counts.entry(info.health.to_string()).or_default() += 1;
    }
    counts
}

/// A scrape counts health from what the pool knows — disk states, owed fragments,
/// damage found — without listing a disk or visiting a healthy extent; with disks
/// failed it counts what the listing finds.
#[test]
fn metrics_count_health_from_what_the_pool_knows_and_agree_with_the_listing() {
    let mut t = TestPool::new(&[64; 4], "erasure:2+1");
    for i in 0..6 {
        t.write_file(&format!("f{i}"), &pattern(1 << 20, 60 + i));
    }
    let known = |t: &mut TestPool| -> std::collections::BTreeMap<String, u64> {
        let metrics = t.pool().metrics();
        metrics.by_health.iter().filter(|(_, c)| c.extents > 0).map(|(h, c)| (h.clone(), c.extents)).collect()
    };
    assert_eq!(known(&mut t), listed_health(&mut t));
    assert!(t.pool().suspect_extents().is_empty(), "a healthy pool has nothing to look at");
    // Policies and classes are tallied by the commits, not counted at the scrape.
    let metrics = t.pool().metrics();
    assert_eq!(metrics.by_policy["erasure:2+1"].extents, 6);
    assert_eq!(metrics.by_policy["erasure:2+1"].bytes, 6 << 20);
    assert_eq!(metrics.by_class["unclassified"].extents, 6);
    t.pool().classify_pass().unwrap();
    let metrics = t.pool().metrics();
    assert!(!metrics.by_class.contains_key("unclassified"), "{:?}", metrics.by_class);
    assert_eq!(metrics.by_class.values().map(|c| c.extents).sum::<u64>(), 6);
    let gone = t.pool().lookup(dfs_engine::Ino::ROOT, b"f5").unwrap().ino;
    t.pool().unlink(dfs_engine::Ino::ROOT, b"f5").unwrap();
    t.pool().sync().unwrap();
    assert!(!t.pool().state().inodes.contains_key(&gone));
    let metrics = t.pool().metrics();
    assert_eq!(metrics.by_policy["erasure:2+1"].extents, 5);
    assert_eq!(metrics.by_class.values().map(|c| c.bytes).sum::<u64>(), 5 << 20);
    let disks: Vec<DiskId> = t.pool().state().disks.keys().copied().collect();
    t.pool().fail_disk(disks[0]).unwrap();
    assert_eq!(known(&mut t), listed_health(&mut t));
    assert!(known(&mut t)["degraded"] > 0);
    t.pool().fail_disk(disks[1]).unwrap();
    let counts = known(&mut t);
    assert_eq!(counts, listed_health(&mut t));
    assert!(counts["lost"] > 0 && counts["degraded"] > 0, "{counts:?}");
    assert_eq!(t.pool().known_lost_extents(), t.pool().lost_extents());
    assert!(!t.pool().known_pool_health().healthy && !t.pool().pool_health().healthy);
}
