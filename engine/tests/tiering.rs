//! Classification passes: what they journal, and what replay makes of it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{pattern, TestPool};
use dfs_engine::PoolOptions;

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
