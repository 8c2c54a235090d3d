//! Checkpoints are commits of the paged metadata store (format 8 on): each writes what
//! changed since the last one, the store's runs are merged as they pile up, and a reopen
//! reads the state back from the store alone.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{TestPool, OWNER};
use dfs_engine::data::namespace::SetAttr;
use dfs_engine::meta::store::StoreConfig;
use dfs_engine::{Ino, PoolOptions};

#[test]
fn a_checkpoint_writes_what_changed_and_a_reopen_reads_the_state_back_from_the_store() {
    // Small pages, so that the state spans many and merges split and join them.
    let options = PoolOptions {
        metadata_store: StoreConfig { page_bytes: 1024, bulk_page_bytes: 2048, ..StoreConfig::default() },
        ..common::options()
    };
    let mut t = TestPool::with_options(&[64, 64, 64], "replicate:3", options);
    let pool = t.pool();
    for d in 0..20 {
        let dir = pool.mkdir(Ino::ROOT, format!("d{d}").as_bytes(), OWNER).unwrap().ino;
        for f in 0..15 {
            pool.create(dir, format!("f{f}").as_bytes(), OWNER).unwrap();
        }
    }
    pool.checkpoint().unwrap();
    let (_, _, blocks) = pool.metadata_store().unwrap();
    assert!(blocks > 20, "the state spans many pages ({blocks} blocks)");

    // Each checkpoint after one small change writes a few pages, not the state.
    let whole = state_bytes(&mut t);
    let mut small = Vec::new();
    for d in 0..20 {
        let pool = t.pool();
        let dir = pool.lookup(Ino::ROOT, format!("d{d}").as_bytes()).unwrap().ino;
        let file = pool.lookup(dir, b"f3").unwrap().ino;
        pool.setattr(file, &SetAttr { mode: Some(0o600), ..SetAttr::default() }).unwrap();
        let before = pool.counters().checkpoint_bytes;
        pool.checkpoint().unwrap();
        small.push(pool.counters().checkpoint_bytes - before);
    }
    let largest = *small.iter().max().unwrap();
    assert!(largest * 5 < whole, "a one-file checkpoint wrote {largest} B of a {whole} B state");
    let pool = t.pool();
    assert!(pool.counters().store_merges > 0, "twenty small runs were merged");
    let (_, runs, _) = pool.metadata_store().unwrap();
    assert!(runs <= 8, "{runs} runs after twenty checkpoints");

    let before = pool.state().clone();
    let report = t.reopen();
    assert!(report.upgraded_from.is_none());
    let after = t.pool().state();
    assert_eq!(after.inodes, before.inodes);
    assert_eq!(after.dirs, before.dirs);
    assert_eq!(after.extents, before.extents);
    let dir = t.pool().lookup(Ino::ROOT, b"d7").unwrap().ino;
    let file = t.pool().lookup(dir, b"f3").unwrap().ino;
    assert_eq!(t.pool().getattr(file).unwrap().mode & 0o777, 0o600);
}

/// Bytes of the state's tables as store entries, times the replicas: what a checkpoint
/// of all of it writes, give or take page framing.
fn state_bytes(t: &mut TestPool) -> u64 {
    let state = t.pool().state().clone();
    let stored = t.pool().stored_temperatures().unwrap();
    let entries = dfs_engine::meta::paged::entries(&state, stored);
    let replicas = t.pool().journal_disks().len() as u64;
    replicas * entries.map(|(k, v)| (k.len() + v.as_ref().map_or(0, Vec::len)) as u64).sum::<u64>()
}

/// A directory is stored a name an entry, a file's chunk map a segment of 1,024 chunks an
/// entry (format 9): a create in a directory of thousands, or a truncate of a file of
/// twenty thousand chunks, writes what it changed, not the directory or the map; a
/// reopen reads both back.
#[test]
fn a_change_in_a_large_directory_or_file_writes_its_entry_not_the_whole() {
    let mut t = TestPool::new(&[64, 64, 64], "replicate:3");
    let pool = t.pool();
    let big = pool.mkdir(Ino::ROOT, b"big", OWNER).unwrap().ino;
    for f in 0..4_000 {
        pool.create(big, format!("a-rather-long-file-name-{f:06}").as_bytes(), OWNER).unwrap();
    }
    let file = pool.create(Ino::ROOT, b"huge", OWNER).unwrap().ino;
    pool.attach_synthetic_extents(file, 20_000).unwrap();
    let checkpoint_bytes = |t: &mut TestPool| {
        let pool = t.pool();
        pool.sync().unwrap();
        let before = pool.counters().checkpoint_bytes;
        pool.checkpoint().unwrap();
        pool.counters().checkpoint_bytes - before
    };
    let whole = checkpoint_bytes(&mut t);
    let pool = t.pool();
    let directory = postcard::to_allocvec(&pool.state().dirs[&big]).unwrap().len() as u64;
    let chunks = postcard::to_allocvec(&pool.state().file_extents[&file]).unwrap().len() as u64;
    assert!(directory > 100_000 && chunks > 100_000, "{directory} {chunks}");
    pool.create(big, b"one-more", OWNER).unwrap();
    pool.unlink(big, b"a-rather-long-file-name-000007").unwrap();
    let created = checkpoint_bytes(&mut t);
    // Summed over the three replicas, less than one copy of the directory.
    assert!(created < directory, "a create and an unlink wrote {created} bytes over 3 replicas of {whole}");
    let size = 19_990 << 20;
    t.pool().setattr(file, &SetAttr { size: Some(size), ..SetAttr::default() }).unwrap();
    let truncated = checkpoint_bytes(&mut t);
    assert!(truncated < chunks, "a truncate of 10 chunks wrote {truncated} bytes over 3 replicas");
    let live = t.pool().state().clone();
    assert_eq!(live.file_extents[&file].len(), 19_990);
    t.reopen();
    assert_eq!(t.pool().state().dirs, live.dirs);
    assert_eq!(t.pool().state().file_extents, live.file_extents);
}
