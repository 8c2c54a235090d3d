//! Checkpoints are commits of the paged metadata store (format 8 on): each writes what
//! changed since the last one, the store's runs are merged as they pile up, and a reopen
//! reads the state back from the store alone.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{pattern, TestPool, OWNER};
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

    let before = pool.state_whole().unwrap();
    let report = t.reopen();
    assert!(report.upgraded_from.is_none());
    let after = &t.pool().state_whole().unwrap();
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
    let state = t.pool().state_whole().unwrap();
    let entries = dfs_engine::meta::paged::entries(&state, Vec::new(), Default::default());
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

/// A small file's data lives in its extent's record in the store: memory holds it only
/// until the checkpoint that writes it. Reads, an overwrite laid over it, a scrub and a
/// reopen take it from the store; a record lost on every replica is an error of what
/// reads it (EIO, a scrub finding), never an empty file.
#[test]
fn small_files_data_stays_in_the_store_not_in_memory() {
    let mut t = TestPool::new(&[64, 64, 64], "replicate:3");
    let size = |i: u64| 600 + 30 * i as usize;
    for i in 0..40 {
        t.write_file(&format!("s{i}"), &pattern(size(i), i));
    }
    let held = |t: &mut TestPool| t.pool().state().extents.held_all().filter(|(_, r)| r.inline.is_some()).count();
    let inline = t.pool().state().extents.values().filter(|r| r.is_inline()).count();
    assert_eq!(inline, 40, "small files are stored inline");
    t.pool().checkpoint().unwrap();
    assert_eq!(held(&mut t), 0, "the checkpoint stored their data; memory let go of it");
    for i in 0..40 {
        assert_eq!(t.read_file(&format!("/s{i}")).unwrap(), pattern(size(i), i));
    }
    // An overwrite of a few bytes lays a layer over the stored data, read back whole.
    let s3 = t.pool().resolve("/s3").unwrap();
    let fh = t.pool().open_file(s3).unwrap();
    t.pool().write(fh, 10, b"overwritten").unwrap();
    t.pool().fsync(fh).unwrap();
    t.pool().release(fh).unwrap();
    let mut expected = pattern(size(3), 3);
    expected[10..21].copy_from_slice(b"overwritten");
    assert_eq!(t.read_file("/s3").unwrap(), expected);
    let report = t.pool().scrub_all(None, false).unwrap();
    assert!(report.unrecoverable.is_empty() && report.findings.is_empty(), "{report:?}");
    t.pool().checkpoint().unwrap();
    t.reopen();
    assert_eq!(held(&mut t), 0, "an open reads records without their data");
    for i in 0..40 {
        let want = if i == 3 { expected.clone() } else { pattern(size(i), i) };
        assert_eq!(t.read_file(&format!("/s{i}")).unwrap(), want, "s{i}");
    }
    t.pool().state().check().unwrap();
    // Every page of the store rots on every disk, after an open read it (and before
    // any read could cache what it holds).
    t.reopen();
    common::rot_every_store_page(&t, 3);
    let error = t.read_file("/s7").unwrap_err();
    assert_eq!(error.errno(), libc::EIO, "{error}");
    let report = t.pool().scrub_all(None, false).unwrap();
    assert!(report.unrecoverable.len() >= 40, "every small file and its layer: {report:?}");
}

/// Extent records live in the store: memory holds every extent's core (length, policy,
/// codec, fragments) and only the whole records changed since the last checkpoint. What
/// needs the rest — a read (the checksum), a re-encoding (the policy history), a rebuild,
/// a scrub — reads the record back, before and after a reopen.
#[test]
fn extent_records_stay_in_the_store_and_memory_holds_their_cores() {
    let mut t = TestPool::new(&[64, 64, 64, 64], "replicate:2");
    let size = |i: u64| 200_000 + 50_000 * i as usize;
    for i in 0..6 {
        t.write_file(&format!("f{i}"), &pattern(size(i), i));
    }
    let extents = t.pool().state().extents.len();
    assert!(extents >= 6, "{extents} extents");
    assert!(t.pool().state().extents.held_len() > 0, "records written since the checkpoint are held whole");
    t.pool().checkpoint().unwrap();
    assert_eq!(t.pool().state().extents.held_len(), 0, "the checkpoint stored every whole record");
    assert_eq!(t.pool().state().extents.len(), extents, "every core stays");
    t.reopen();
    assert_eq!(t.pool().state().extents.held_len(), 0, "an open reads cores only");
    for i in 0..6 {
        assert_eq!(t.read_file(&format!("/f{i}")).unwrap(), pattern(size(i), i), "f{i}");
    }
    // A re-encoding carries the history of the record it replaces, read from the store.
    let f2 = t.pool().resolve("/f2").unwrap();
    let slot = dfs_engine::meta::state::ChunkSlot { ino: f2, index: 0 };
    let scope = dfs_engine::meta::state::PolicyScope::Path { ino: f2, path: "/f2".into(), recursive: false };
    t.pool().change_policy(scope.clone(), "replicate:3".parse().unwrap()).unwrap();
    t.pool().checkpoint().unwrap();
    t.pool().change_policy(scope, "replicate:2".parse().unwrap()).unwrap();
    let history = t.pool().slot_record(slot).unwrap().unwrap().history;
    assert_eq!(history.len(), 2, "{history:?}");
    // A failed disk is rebuilt from records read back.
    t.pool().checkpoint().unwrap();
    let failed = *t.pool().state().disks.keys().next().unwrap();
    t.pool().fail_disk(failed).unwrap();
    let queued = t.pool().rebuild_queue().len();
    assert!(queued > 0);
    assert_eq!(t.pool().rebuild_step(usize::MAX).unwrap(), queued);
    let report = t.pool().scrub_all(None, false).unwrap();
    assert!(report.unrecoverable.is_empty() && report.findings.is_empty(), "{report:?}");
    let before = t.pool().state_whole().unwrap();
    t.pool().checkpoint().unwrap();
    t.reopen();
    assert_eq!(t.pool().state_whole().unwrap().extents, before.extents, "the store gives back every record");
    assert_eq!(t.pool().slot_record(slot).unwrap().unwrap().history, history);
    for i in 0..6 {
        assert_eq!(t.read_file(&format!("/f{i}")).unwrap(), pattern(size(i), i), "f{i}");
    }
    t.pool().state().check().unwrap();
    // Every store page rots on every disk: reads and scrubs that need a record fail by
    // name; nothing reads data it cannot verify.
    t.reopen();
    common::rot_every_store_page(&t, 4);
    let error = t.read_file("/f4").unwrap_err();
    assert_eq!(error.errno(), libc::EIO, "{error}");
    let report = t.pool().scrub_all(None, false).unwrap();
    assert_eq!(report.unrecoverable.len(), extents, "{report:?}");
    assert!(report.unrecoverable.iter().all(|e| e.detail.contains("metadata store")), "{report:?}");
}

/// The scrub of a whole pool reads every copy of the metadata store's live blocks on
/// every journal disk: a copy rotted on one disk is found, the repair rewrites it from
/// another disk's, and a copy rotted on every disk is reported as lost.
#[test]
fn a_scrub_finds_and_rewrites_a_rotten_copy_of_a_metadata_page() {
    let mut t = TestPool::new(&[64, 64, 64], "replicate:3");
    let pool = t.pool();
    for f in 0..30 {
        let file = pool.create(Ino::ROOT, format!("f{f}").as_bytes(), OWNER).unwrap().ino;
        let fh = pool.open_file(file).unwrap();
        pool.write(fh, 0, &pattern(100 + f, f as u64)).unwrap();
        pool.release(fh).unwrap();
    }
    pool.checkpoint().unwrap();
    let clean = t.pool().scrub_all(None, false).unwrap().metadata.unwrap();
    assert_eq!(clean.disks.len(), 3);
    assert!(clean.copies_checked >= 6, "a root and at least a page on each disk: {clean:?}");
    assert!(clean.findings.is_empty() && clean.lost.is_empty(), "{clean:?}");
    // In steps of one block, the check reads the same copies: a step a block, the root last.
    let (mut whole, mut from, mut steps) = (dfs_engine::services::scrub::MetadataCheck::default(), Some(0), 0);
    while let Some(at) = from {
        let (step, next) = t.pool().check_metadata_step(false, at, 1);
        assert!(step.copies_checked <= 3 * 2, "one block (and at the end the root) on three disks");
        whole.absorb(step);
        from = next;
        steps += 1;
    }
    assert_eq!(whole, clean);
    assert_eq!((steps as u64 + 1) * 3, clean.copies_checked, "a block a step, and the root with the last");

    common::rot_every_store_page(&t, 1);
    let found = t.pool().scrub_all(None, false).unwrap().metadata.unwrap();
    assert!(!found.findings.is_empty(), "the rotten pages of disk 1: {found:?}");
    assert!(found.findings.iter().all(|f| f.disk == found.disks[0] && !f.repaired), "{found:?}");
    assert!(found.lost.is_empty());
    let again = t.pool().scrub_all(None, false).unwrap().metadata.unwrap();
    assert_eq!(again.findings.len(), found.findings.len(), "a scrub without repair changes nothing");

    let repaired = t.pool().scrub_all(None, true).unwrap().metadata.unwrap();
    assert_eq!(repaired.findings.len(), found.findings.len());
    assert!(repaired.findings.iter().all(|f| f.repaired), "{repaired:?}");
    let after = t.pool().scrub_all(None, false).unwrap().metadata.unwrap();
    assert!(after.findings.is_empty(), "rewritten from the other disks: {after:?}");
    // Disk 1 alone now holds a whole store: with the others' pages rotten, it opens.
    rot_every_store_page_on(&t, &[1, 2]);
    t.reopen();
    for f in 0..30 {
        assert_eq!(t.read_file(&format!("/f{f}")).unwrap(), pattern(100 + f, f as u64));
    }

    // Under a subtree, the scrub leaves the metadata alone.
    let under = t.pool().scrub_all(Some(Ino::ROOT), false).unwrap();
    assert!(under.metadata.is_none());
    // The other disks' copies, which the open passed over, are rewritten too.
    let healed = t.pool().scrub_all(None, true).unwrap().metadata.unwrap();
    assert!(!healed.findings.is_empty() && healed.findings.iter().all(|f| f.disk != healed.disks[0] && f.repaired));
    assert!(t.pool().scrub_all(None, false).unwrap().metadata.unwrap().findings.is_empty());
    common::rot_every_store_page(&t, 3);
    let lost = t.pool().scrub_all(None, true).unwrap().metadata.unwrap();
    assert!(!lost.lost.is_empty() && lost.findings.iter().all(|f| !f.repaired), "{lost:?}");
}

fn rot_every_store_page_on(t: &TestPool, disks: &[usize]) {
    for disk in disks {
        for page in common::blocks(&t.disk_path(*disk), "store-page") {
            let mut bytes = std::fs::read(&page).unwrap();
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x55;
            std::fs::write(&page, bytes).unwrap();
        }
    }
}

/// A checkpoint is due once `checkpoint_every_records` records, or
/// `checkpoint_every_bytes` of them, were written since the last one, whichever comes
/// first; neither, and records pile up with no checkpoint at all.
#[test]
fn a_checkpoint_comes_after_so_many_records_or_so_many_bytes_of_them() {
    // (records, bytes) limits; small files of 2 KiB live inline in the journal, so each
    // file's record is a few KiB and sixteen KiB of them come every few records.
    for (records, bytes) in [(u64::MAX, u64::MAX), (5, u64::MAX), (u64::MAX, 16 << 10), (7, 16 << 10)] {
        let options =
            PoolOptions { checkpoint_every_records: records, checkpoint_every_bytes: bytes, ..common::options() };
        let mut t = TestPool::with_options(&[64, 64, 64], "replicate:3", options);
        t.pool().checkpoint().unwrap();
        let replicas = t.pool().journal_disks().len() as u64;
        let checkpoints_before = t.pool().counters().checkpoints;
        let (mut since_records, mut since_bytes, mut expected) = (0u64, 0u64, 0u64);
        for i in 0..40u64 {
            let written = t.pool().counters().journal_bytes;
            t.write_file(&format!("f{i}"), &pattern(2048 + 97 * i as usize, i));
            let record = (t.pool().counters().journal_bytes - written) / replicas;
            assert!(record > 2048, "file {i}'s record held its data ({record} B)");
            since_records += 1;
            since_bytes += record;
            if since_records >= records || since_bytes >= bytes {
                expected += 1;
                (since_records, since_bytes) = (0, 0);
            }
        }
        let checkpoints = t.pool().counters().checkpoints - checkpoints_before;
        assert_eq!(checkpoints, expected, "limits of {records} records and {bytes} bytes");
        if records != u64::MAX || bytes != u64::MAX {
            assert!(checkpoints >= 5, "limits of {records} records and {bytes} bytes gave {checkpoints}");
        }
        for i in 0..40u64 {
            assert_eq!(t.read_file(&format!("f{i}")).unwrap(), pattern(2048 + 97 * i as usize, i));
        }
        t.reopen();
        assert_eq!(t.read_file("f39").unwrap(), pattern(2048 + 97 * 39, 39));
    }
}
