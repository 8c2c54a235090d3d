//! Classification passes: what they journal, and what replay makes of it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{pattern, TestPool};
use dfs_engine::base::policy::Policy;
use dfs_engine::meta::state::{ChunkSlot, Op, PASS_BATCH_VERDICTS};
use dfs_engine::meta::temperatures::Temperatures;
use dfs_engine::temperature::access::AccessStats;
use dfs_engine::temperature::hmm::HISTORY_MAX;
use dfs_engine::temperature::tracker::{Observation, Verdict};
use dfs_engine::temperature::Class;
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
    let live = t.pool().temperatures().unwrap();
    assert_eq!(live.len(), 60);
    assert!(live.values().all(|temperature| temperature.history.len() == 9));
    let report = t.reopen();
    assert!(report.records_replayed > 9, "the passes must be replayed, not read from a checkpoint");
    assert_eq!(t.pool().temperatures().unwrap(), live, "replay must give the temperatures the passes left");
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

/// Verdicts of one pass for `slots`: every class and access count in turn.
fn verdicts_for(slots: &[ChunkSlot], seed: u32) -> Vec<(ChunkSlot, Verdict)> {
    slots
        .iter()
        .enumerate()
        .map(|(i, slot)| {
            let n = i as u32 + seed;
            let class = Class::ALL[(n % 3) as usize];
            let observation = Observation { observed: Class::ALL[(n / 3 % 3) as usize], accesses: n % 4 };
            let stats = AccessStats { total: u64::from(n), ..AccessStats::default() };
            (*slot, Verdict { stats, observation, class, confidence: 0.5 })
        })
        .collect()
}

/// A pass journaled as a first record and more (`ClassifyMore`) leaves the temperatures
/// one record of all its verdicts leaves, however its verdicts are cut, whatever each
/// chunk's history held before (empty, partly full, full).
#[test]
fn a_pass_cut_into_records_leaves_what_one_record_of_it_leaves() {
    let mut t = TestPool::new(&[64, 64, 64], "replicate:2");
    for i in 0..24 {
        t.write_file(&format!("f{i}"), &pattern(2_000, i));
    }
    let slots: Vec<ChunkSlot> =
        t.pool().state().file_extents.keys().map(|ino| ChunkSlot { ino: *ino, index: 0 }).collect();
    assert_eq!(slots.len(), 24);
    // The state alone, its temperatures held whole: no store behind it.
    let mut state = t.pool().state().clone();
    state.temperature = Temperatures::whole(t.pool().temperatures().unwrap());
    // Histories of every length: chunk i is judged from pass 6 i on (from 20 on, never).
    for pass in 0..HISTORY_MAX as u32 + 20 {
        let judged: Vec<ChunkSlot> =
            slots.iter().enumerate().filter(|(i, _)| pass >= *i as u32 * 6).map(|(_, s)| *s).collect();
        let changed = verdicts_for(&judged, pass).into_iter().filter(|(_, v)| v.class != Class::Warm).collect();
        state.apply(&Op::ClassifyChanges { at_secs: i64::from(pass), changed });
    }
    let held = state.temperature.held_all().filter_map(|(_, t)| t.as_ref());
    let lengths: std::collections::BTreeSet<usize> = held.map(|t| t.history.len()).collect();
    assert!(lengths.contains(&HISTORY_MAX) && lengths.len() > 3, "{lengths:?}");
    for cut in [0, 1, 7, 23] {
        let verdicts = verdicts_for(&slots, 1_000 + cut as u32);
        let changed: Vec<_> = verdicts.iter().filter(|(_, v)| v.class != Class::Hot).cloned().collect();
        let mut whole = state.clone();
        whole.apply(&Op::ClassifyChanges { at_secs: 9_999, changed: changed.clone() });
        let mut cut_up = state.clone();
        let (first, rest) = changed.split_at(cut.min(changed.len()));
        cut_up.apply(&Op::ClassifyChanges { at_secs: 9_999, changed: first.to_vec() });
        for batch in rest.chunks(5) {
            cut_up.apply(&Op::ClassifyMore { changed: batch.to_vec() });
        }
        assert_eq!(cut_up.temperature, whole.temperature, "cut after {cut}");
        assert_eq!(cut_up.passes, whole.passes);
        cut_up.check().unwrap();
    }
}

/// A pass that changes more verdicts than one record carries journals them in records of
/// at most `PASS_BATCH_VERDICTS`; replay gives the temperatures the pass left.
#[test]
fn a_pass_of_many_verdicts_journals_bounded_records_and_replays_the_same() {
    let options = PoolOptions { checkpoint_every_records: u64::MAX, ..common::options() };
    let mut t = TestPool::with_options(&[64, 64, 64], "replicate:2", options);
    let owner = dfs_engine::data::namespace::Owner { mode: 0o644, uid: 0, gid: 0, umask: 0 };
    let ino = t.pool().create(Ino::ROOT, b"many", owner).unwrap().ino;
    let chunks = 2 * PASS_BATCH_VERDICTS as u64 + 100;
    t.pool().attach_synthetic_extents(ino, chunks).unwrap();
    t.pool().sync().unwrap();
    let before = t.pool().counters().clone();
    let report = t.pool().classify_pass().unwrap();
    assert_eq!(report.extents as u64, chunks);
    let during = t.pool().counters().clone();
    assert_eq!(during.commits - before.commits, 3, "every new chunk's verdict, in three batches");
    assert_eq!(during.barriers - before.barriers, 2, "a barrier before each batch after the first");
    t.pool().sync().unwrap();
    let last = t.pool().counters().journal_bytes - during.journal_bytes;
    let first_two = during.journal_bytes - before.journal_bytes;
    assert!(
        last > 0 && last * 100 < first_two,
        "the last 100 verdicts are a record of their own: {last} of {first_two}"
    );
    let live = t.pool().temperatures().unwrap();
    assert_eq!(live.len() as u64, chunks);
    assert!(live.values().all(|t| t.history.len() == 1));
    let report = t.reopen();
    assert!(report.records_replayed >= 3, "the pass must be replayed, not read from a checkpoint: {report:?}");
    assert_eq!(t.pool().temperatures().unwrap(), live);
}

/// A pass repeats every quiet chunk's last observation without marking it: the store
/// implies the repeats from the pass count. The checkpoint after a quiet pass writes next
/// to nothing, and a reopen — from checkpoints taken at different passes, with records
/// after the last one — reads back the temperatures the passes left.
#[test]
fn a_checkpoint_after_a_quiet_pass_writes_next_to_nothing_and_reads_back_the_repeats() {
    let mut t = TestPool::new(&[64, 64, 64], "replicate:2");
    for i in 0..40 {
        t.write_file(&format!("f{i}"), &pattern(3_000, i));
    }
    let checkpoint_bytes = |t: &mut TestPool| {
        let before = t.pool().counters().checkpoint_bytes;
        t.pool().checkpoint().unwrap();
        t.pool().counters().checkpoint_bytes - before
    };
    t.pool().classify_pass().unwrap();
    let first = checkpoint_bytes(&mut t);
    let mut quiet = Vec::new();
    for round in 0..6 {
        if round == 3 {
            t.read_file("/f7").unwrap();
            t.pool().flush_access_stats().unwrap();
        }
        t.pool().classify_pass().unwrap();
        quiet.push(checkpoint_bytes(&mut t));
    }
    assert!(quiet[0] * 4 < first, "a quiet pass rewrote the temperatures: {quiet:?} after {first}");
    assert!(quiet[3] > quiet[0], "the pass after a read writes that chunk: {quiet:?}");
    t.pool().classify_pass().unwrap();
    t.pool().classify_pass().unwrap();
    let live = t.pool().temperatures().unwrap();
    let live_passes = t.pool().state().repeating_passes;
    assert!(live.values().all(|t| t.history.len() == 9));
    let report = t.reopen();
    assert!(report.records_replayed > 0, "the last passes replay onto the checkpoint");
    assert_eq!(t.pool().temperatures().unwrap(), live);
    assert_eq!(t.pool().state().repeating_passes, live_passes);
}

/// A pool of `files` files `f{i}` of `bytes` each, judged by one pass and checkpointed.
fn judged_and_checkpointed(files: u64, bytes: usize) -> TestPool {
    let mut t = TestPool::new(&[64, 64, 64], "replicate:2");
    for i in 0..files {
        t.write_file(&format!("f{i}"), &pattern(bytes, i));
    }
    t.pool().classify_pass().unwrap();
    t.pool().checkpoint().unwrap();
    t
}

/// Temperatures live in the metadata store: memory holds every chunk's class, and whole
/// temperatures only for the chunks changed since the last checkpoint. A pass, an
/// access and a reopen read the rest from the store and give what memory would have.
#[test]
fn temperatures_stay_in_the_store_and_memory_holds_only_what_changed() {
    let mut t = judged_and_checkpointed(40, 3_000);
    let held = |t: &mut TestPool| t.pool().state().temperature.held_len();
    assert_eq!(held(&mut t), 0, "a checkpoint leaves no temperature in memory");
    assert_eq!(t.pool().state().temperature.classes().count(), 40, "but every chunk's class");
    t.read_file("/f7").unwrap();
    t.pool().flush_access_stats().unwrap();
    assert_eq!(held(&mut t), 1, "the chunk read, read in to be changed");
    let f7 = t.pool().resolve("/f7").unwrap();
    let slot = ChunkSlot { ino: f7, index: 0 };
    assert_eq!(t.pool().temperature(slot).unwrap().unwrap().stats.total, 2, "written once, read once");
    t.pool().classify_pass().unwrap();
    let live = t.pool().temperatures().unwrap();
    assert!(live.values().all(|t| t.history.len() == 2));
    t.pool().checkpoint().unwrap();
    assert_eq!(held(&mut t), 0);
    t.reopen();
    assert_eq!(held(&mut t), 0, "an open reads classes, not temperatures");
    assert_eq!(t.pool().temperatures().unwrap(), live);
    t.pool().state().check().unwrap();
}

/// A temperature whose page no replica holds intact is an error of what needs it — a
/// pass, a report — never a fresh temperature, and the pass changes nothing.
#[test]
fn a_temperature_lost_on_every_replica_fails_the_pass_and_resets_nothing() {
    let mut t = judged_and_checkpointed(10, 40_000);
    t.reopen();
    let passes = t.pool().state().passes.clone();
    // Every page of the store rots on every disk, after the open read it.
    common::rot_every_store_page(&t, 3);
    let f3 = t.pool().resolve("/f3").unwrap();
    let error = t.pool().temperature(ChunkSlot { ino: f3, index: 0 }).unwrap_err();
    assert!(matches!(error, dfs_engine::Error::MetadataCorrupt(_)), "{error}");
    let error = t.pool().classify_pass().unwrap_err();
    assert!(matches!(error, dfs_engine::Error::MetadataCorrupt(_)), "{error}");
    assert_eq!(t.pool().state().passes, passes, "the failed pass recorded nothing");
    // The file's record (its checksum) was in those pages too: its data is not read
    // unverified, the read is an I/O error.
    let error = t.read_file("/f3").unwrap_err();
    assert_eq!(error.errno(), libc::EIO, "{error}");
    assert_eq!(t.pool().state().temperature.held_len(), 0, "no temperature made up for the access");
}
