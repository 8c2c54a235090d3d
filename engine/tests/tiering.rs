//! Classification passes: what they journal, and what replay makes of it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{pattern, TestPool};
use dfs_engine::base::policy::Policy;
use dfs_engine::meta::state::ChunkSlot;
use dfs_engine::{Ino, PoolOptions};

/// Journal bytes of one classification pass and its barrier.
fn pass_bytes(t: &mut TestPool) -> u64 {
    let pool = t.pool();
    let before = pool.counters().journal_bytes;
    pool.classify_pass().unwrap();
    pool.sync().unwrap();
    pool.counters().journal_bytes - before
}

#[test]
fn a_pass_over_untouched_extents_journals_only_what_changed_and_replays_to_the_same_temperatures() {
    let options = PoolOptions { checkpoint_every_records: u64::MAX, ..common::options() };
    let mut t = TestPool::with_options(&[64, 64, 64], "replicate:2", options);
    for i in 0..60 {
        t.write_file(&format!("f{i}"), &pattern(40_000, i));
    }
    // The first pass judges every extent; later ones journal an extent's verdict only
    // when its class settles elsewhere, and otherwise next to nothing.
    let bytes: Vec<u64> = (0..8).map(|_| pass_bytes(&mut t)).collect();
    let (full, quiet) = (bytes[0], *bytes.iter().min().unwrap());
    assert!(quiet * 10 < full, "a pass over untouched extents journaled {bytes:?}");
    // One extent read: its verdict alone is journaled.
    t.read_file("/f7").unwrap();
    let after_read = pass_bytes(&mut t);
    assert!(quiet < after_read && after_read * 4 < full, "{after_read} after one read; {bytes:?} before");
    let live = t.pool().state().temperature.clone();
    assert_eq!(live.len(), 60);
    assert!(live.values().all(|temperature| temperature.history.len() == 9));
    let report = t.reopen();
    assert!(report.records_replayed > 9, "the passes must be replayed, not read from a checkpoint");
    assert_eq!(t.pool().state().temperature, live, "replay must give the temperatures the passes left");
}

/// Every chunk whose extent tiering wants under another policy, from a visit of each.
fn scanned_migrations(t: &mut TestPool) -> Vec<(ChunkSlot, Policy)> {
    let pool = t.pool();
    let slots: Vec<ChunkSlot> = pool
        .state()
        .file_extents
        .iter()
        .flat_map(|(ino, map)| map.keys().map(|index| ChunkSlot { ino: *ino, index: *index }))
        .collect();
    slots.into_iter().filter_map(|slot| Some((slot, pool.migration_target(slot)?))).collect()
}

/// The migration queue is an index the commits keep — a pass, a pin, a disk leaving, a
/// migration, a reopen — never a visit of every chunk; at each step it is what a visit
/// finds.
#[test]
fn the_migration_queue_follows_passes_pins_disks_and_migrations() {
    let mut t = TestPool::new(&[64; 4], "replicate:2");
    let mut config = *t.pool().tiering();
    config.tiers.warm = Some("erasure:2+2".parse().unwrap());
    t.pool().set_tiering(config).unwrap();
    for i in 0..8 {
        t.write_file(&format!("f{i}"), &pattern(300_000, 40 + i));
    }
    assert!(t.pool().pending_migrations().is_empty(), "nothing is judged before a pass");
    t.pool().classify_pass().unwrap();
    let judged = t.pool().pending_migrations();
    assert_eq!(judged.len(), 8, "every new extent is warm, and warm is erasure:2+2 here: {judged:?}");
    assert_eq!(judged, scanned_migrations(&mut t));

    let pinned = t.pool().lookup(Ino::ROOT, b"f0").unwrap().ino;
    t.pool().set_policy(pinned, Some("replicate:2".parse().unwrap())).unwrap();
    let after_pin = t.pool().pending_migrations();
    assert_eq!(after_pin.len(), 7);
    assert!(after_pin.iter().all(|(slot, _)| slot.ino != pinned));
    assert_eq!(after_pin, scanned_migrations(&mut t));

    // Four active disks place erasure:2+2; three clamp it narrower.
    let disk = *t.pool().state().disks.keys().next().unwrap();
    t.pool().fail_disk(disk).unwrap();
    let after_fail = t.pool().pending_migrations();
    assert_eq!(after_fail, scanned_migrations(&mut t));
    assert_eq!(after_fail.len(), 7);
    assert!(
        after_fail.iter().all(|(_, target)| target.width() == 3),
        "the targets follow the active disks: {after_fail:?}"
    );

    t.pool().rebuild_step(usize::MAX).unwrap();
    assert_eq!(t.pool().migration_step(usize::MAX, true).unwrap(), 7);
    assert!(t.pool().pending_migrations().is_empty());
    t.pool().unpin(pinned, false).unwrap();
    assert_eq!(t.pool().pending_migrations(), scanned_migrations(&mut t));
    assert_eq!(t.pool().pending_migrations_len(), 1, "the unpinned file's chunk is wanted again");
    t.reopen();
    assert_eq!(t.pool().pending_migrations(), scanned_migrations(&mut t), "rebuilt at open");
    assert_eq!(t.pool().pending_migrations_len(), 1);
}
