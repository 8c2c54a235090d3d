//! Metadata formats: a pool written in format 1 to 8 opens, is upgraded in place to
//! the current format and reads the same; a pool of a newer format is refused by name.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;

use common::{blocks, TestPool, OWNER};
use dfs_engine::media::frame::{self, FrameKind, METADATA_FORMAT};
use dfs_engine::meta::journal::{self, Checkpoint, JournalRecord};
use dfs_engine::meta::state::MetaState;
use dfs_engine::meta::state::{ChunkSlot, Op, Transaction};
use dfs_engine::temperature::tracker::Temperature;
use std::ops::Deref;

use dfs_engine::meta::v1::{CheckpointV1, InodeV1, JournalRecordV1, MetaStateV1, OpV1};
use dfs_engine::meta::v2::{CheckpointV2, MetaStateV2};
use dfs_engine::meta::v3::{CheckpointV3, MetaStateV3};
use dfs_engine::pooldir::PoolDir;
use dfs_engine::{Error, Ino};

/// The format-1 form of a state that uses nothing format 2 added.
/// The temperatures of a state held whole (`Pool::state_whole`).
fn held_temperatures(state: &MetaState) -> std::collections::BTreeMap<ChunkSlot, Temperature> {
    assert!(!state.temperature.is_based(), "a state read whole");
    state.temperature.held_all().filter_map(|(slot, t)| Some((*slot, t.clone()?))).collect()
}

fn downgrade(state: &MetaState) -> MetaStateV1 {
    assert!(state.xattrs.is_empty(), "format 1 has no extended attributes");
    MetaStateV1 {
        pool_id: state.pool_id,
        default_policy: state.default_policy,
        disks: state.disks.clone(),
        inodes: state
            .inodes
            .iter()
            .map(|(ino, i)| {
                assert_eq!(i.rdev, 0);
                let old = InodeV1 {
                    ino: i.ino,
                    kind: i.kind,
                    mode: i.mode,
                    uid: i.uid,
                    gid: i.gid,
                    nlink: i.nlink,
                    size: i.size,
                    atime: i.atime,
                    mtime: i.mtime,
                    ctime: i.ctime,
                    policy: i.policy,
                    symlink_target: i.symlink_target.clone(),
                };
                (*ino, old)
            })
            .collect(),
        dirs: state.dirs.deref().clone(),
        file_extents: state.file_extents.deref().clone(),
        extents: state.extents.whole_records().clone(),
        next_ino: state.next_ino,
        next_extent: state.next_extent,
        next_disk: state.next_disk,
        transitions: state.transitions.clone(),
        tiering: state.tiering,
        temperature: held_temperatures(state),
        passes: state.passes.clone(),
        scrub: state.scrub,
        scrubbed: state.scrubbed.deref().clone(),
    }
}

/// Replaces every metadata block on the three journal disks of `t` (closed) with
/// `checkpoint` at `seq` and `record` at `seq + 1`, as an older build would have left them.
fn replace_metadata(t: &TestPool, seq: u64, checkpoint: Vec<u8>, record: Vec<u8>) {
    for disk in 0..3 {
        common::remove_records(&t.disk_path(disk));
        for namespace in ["checkpoint", "store-root", "store-page"] {
            for path in blocks(&t.disk_path(disk), namespace) {
                fs::remove_file(path).unwrap();
            }
        }
        let dir = t.disk_path(disk);
        fs::create_dir_all(dir.join("checkpoint")).unwrap();
        fs::write(dir.join("checkpoint").join(format!("{seq:020}")), &checkpoint).unwrap();
        fs::create_dir_all(dir.join("journal")).unwrap();
        fs::write(dir.join("journal").join(format!("{:020}", seq + 1)), &record).unwrap();
    }
}

/// Replaces the metadata of `t` (closed) with `checkpoint` (at `seq`, chaining from
/// `tip_hash`) and one record putting `inode`, both framed as format `format`. Formats
/// 3 and 4 only appended ops, so a format-2 or format-3 record is the current structure.
fn install_older_format<C: serde::Serialize>(
    t: &TestPool,
    format: u8,
    checkpoint: &(u64, [u8; 32], C),
    inode: dfs_engine::meta::state::Inode,
) {
    let (seq, tip_hash, checkpoint) = checkpoint;
    let record =
        JournalRecord { seq: seq + 1, prev_hash: *tip_hash, txn: Transaction { ops: vec![Op::PutInode(inode)] } };
    replace_metadata(
        t,
        *seq,
        frame::encode_version(FrameKind::Checkpoint, format, checkpoint),
        frame::encode_version(FrameKind::JournalRecord, format, &record),
    );
}

/// Replaces the metadata of `t` (closed, holding `state`) with what a build of `format`
/// (4 to 7, whose checkpoint is the current structure) would have left: a checkpoint of
/// `state`, then a record setting `f`'s mode to `mode`. Reopens it and checks that it was
/// upgraded and the record replayed.
fn upgraded_from_current_structure(t: &mut TestPool, state: &MetaState, f: Ino, format: u8, mode: u32) {
    let seq = u64::from(format) * 1_000_000;
    let tip_hash = [format; 32];
    let checkpoint = (seq, tip_hash, Checkpoint { seq, tip_hash, state: state.clone() });
    let mut inode = state.inodes[&f].clone();
    inode.mode = mode;
    install_older_format(t, format, &checkpoint, inode);
    if format == 4 {
        assert!(!t.disk_path(0).join(dfs_engine::media::journal_log::LOG_DIR).exists());
    }
    let report = t.reopen();
    assert_eq!(report.upgraded_from, Some(format));
    assert_eq!(t.pool().getattr(f).unwrap().mode, mode, "the format-{format} record was replayed");
}

/// Closes `t` and checks that each journal disk holds its checkpoint in the store.
fn close_in_the_store(t: &mut TestPool) {
    t.pool = None;
    t.dir = None;
    for disk in 0..3 {
        assert_checkpoint_in_store(&t.disk_path(disk));
    }
}

/// From format 8 a journal disk's checkpoint is the paged store: one root, no checkpoint
/// block of an older format left, and the disk alone recovers in the current format.
fn assert_checkpoint_in_store(disk: &std::path::Path) {
    assert!(blocks(disk, "checkpoint").is_empty(), "the old checkpoints are trimmed");
    assert_eq!(blocks(disk, "store-root").len(), 1);
    assert!(!blocks(disk, "store-page").is_empty());
    let device = dfs_engine::media::dirdisk::DirDisk::open(disk).unwrap();
    let recovered = journal::recover(&[&device], &Default::default()).unwrap().unwrap();
    assert_eq!(recovered.oldest_format, METADATA_FORMAT);
    assert!(recovered.store.is_some());
}

/// A pool whose journal disks hold only format-1 blocks: a checkpoint of the pool's
/// state, then one record that makes `/f` mode 0600. Returns the pool, closed.
fn format_one_pool() -> (TestPool, MetaState) {
    let mut t = TestPool::new(&[64, 64, 64], "replicate:3");
    let pool = t.pool();
    pool.mkdir(Ino::ROOT, b"dir", OWNER).unwrap();
    pool.symlink(Ino::ROOT, b"link", b"dir", OWNER).unwrap();
    t.write_file("f", &common::pattern(1500, 7)); // inline: lives in the checkpoint
    t.write_file("big", &common::pattern(300_000, 8)); // fragments on the disks
    t.reopen();
    let pool = t.pool();
    pool.checkpoint().unwrap();
    let state = pool.state_whole().unwrap();
    t.pool = None;
    t.dir = None;
    let seq = 1_000_000;
    let tip_hash = [7u8; 32];
    let checkpoint = CheckpointV1 { seq, tip_hash, state: downgrade(&state) };
    let mut inode = checkpoint.state.inodes[&state.dirs[&Ino::ROOT][b"f".as_slice()]].clone();
    inode.mode = 0o600;
    let record = JournalRecordV1 { seq: seq + 1, prev_hash: tip_hash, ops: vec![OpV1::PutInode(inode)] };
    replace_metadata(
        &t,
        seq,
        frame::encode_version(FrameKind::Checkpoint, 1, &checkpoint),
        frame::encode_version(FrameKind::JournalRecord, 1, &record),
    );
    (t, state)
}

/// The format-2 form of a state that uses nothing format 3 added.
fn downgrade_to_two(state: &MetaState) -> MetaStateV2 {
    assert!(state.offline.is_empty() && state.owed.is_empty(), "format 2 knows no offline disks");
    MetaStateV2 {
        pool_id: state.pool_id,
        default_policy: state.default_policy,
        disks: state.disks.clone(),
        inodes: state.inodes.deref().clone(),
        dirs: state.dirs.deref().clone(),
        file_extents: state.file_extents.deref().clone(),
        extents: state.extents.whole_records().clone(),
        next_ino: state.next_ino,
        next_extent: state.next_extent,
        next_disk: state.next_disk,
        transitions: state.transitions.clone(),
        tiering: state.tiering,
        temperature: held_temperatures(state),
        passes: state.passes.clone(),
        scrub: state.scrub,
        scrubbed: state.scrubbed.deref().clone(),
        xattrs: state.xattrs.deref().clone(),
    }
}

#[test]
fn a_format_two_pool_is_upgraded_in_place_and_keeps_its_attributes() {
    let mut t = TestPool::new(&[64, 64, 64], "replicate:3");
    t.write_file("f", &common::pattern(1500, 7));
    t.write_file("big", &common::pattern(300_000, 8));
    let pool = t.pool();
    let f = pool.resolve("/f").unwrap();
    pool.setxattr(f, b"user.colour", b"blue", dfs_engine::data::xattr::SetMode::Any).unwrap();
    pool.checkpoint().unwrap();
    let state = pool.state_whole().unwrap();
    t.pool = None;
    t.dir = None;
    let seq = 2_000_000;
    let tip_hash = [9u8; 32];
    let checkpoint = (seq, tip_hash, CheckpointV2 { seq, tip_hash, state: downgrade_to_two(&state) });
    let mut inode = state.inodes[&f].clone();
    inode.mode = 0o640;
    install_older_format(&t, 2, &checkpoint, inode);
    let report = t.reopen();
    assert_eq!(report.upgraded_from, Some(2));
    let pool = t.pool();
    assert_eq!(pool.getattr(f).unwrap().mode, 0o640, "the format-2 record was replayed");
    assert_eq!(pool.getxattr(f, b"user.colour").unwrap(), b"blue");
    assert!(pool.state().offline.is_empty() && pool.state().owed.is_empty());
    assert_eq!(pool.state().availability, Default::default());
    assert_eq!(t.read_file("/big").unwrap(), common::pattern(300_000, 8));
    close_in_the_store(&mut t);
}

/// The format-3 form of a state without layers.
fn downgrade_to_three(state: &MetaState) -> MetaStateV3 {
    assert!(state.layers.is_empty(), "format 3 has no layers");
    MetaStateV3 {
        pool_id: state.pool_id,
        default_policy: state.default_policy,
        disks: state.disks.clone(),
        inodes: state.inodes.deref().clone(),
        dirs: state.dirs.deref().clone(),
        file_extents: state.file_extents.deref().clone(),
        extents: state.extents.whole_records().clone(),
        next_ino: state.next_ino,
        next_extent: state.next_extent,
        next_disk: state.next_disk,
        transitions: state.transitions.clone(),
        tiering: state.tiering,
        temperature: held_temperatures(state),
        passes: state.passes.clone(),
        scrub: state.scrub,
        scrubbed: state.scrubbed.deref().clone(),
        xattrs: state.xattrs.deref().clone(),
        offline: state.offline.clone(),
        disk_changed: state.disk_changed.clone(),
        owed: state.owed.clone(),
        availability: state.availability,
    }
}

/// A pool on three disks holding `/name` (`data`), checkpointed and closed; returns it,
/// its state and the file's inode.
fn closed_with_file(name: &str, data: &[u8]) -> (TestPool, MetaState, Ino) {
    let mut t = TestPool::new(&[64, 64, 64], "replicate:3");
    t.write_file(name, data);
    let pool = t.pool();
    let f = pool.resolve(&format!("/{name}")).unwrap();
    pool.checkpoint().unwrap();
    let state = pool.state_whole().unwrap();
    t.pool = None;
    t.dir = None;
    (t, state, f)
}

#[test]
fn a_format_three_pool_is_upgraded_in_place_and_then_takes_layers() {
    let mut big = common::pattern(300_000, 8);
    let (mut t, state, f) = closed_with_file("big", &big);
    let seq = 3_000_000;
    let tip_hash = [7u8; 32];
    let checkpoint = (seq, tip_hash, CheckpointV3 { seq, tip_hash, state: downgrade_to_three(&state) });
    let mut inode = state.inodes[&f].clone();
    inode.mode = 0o604;
    install_older_format(&t, 3, &checkpoint, inode);
    let report = t.reopen();
    assert_eq!(report.upgraded_from, Some(3));
    assert!(report.notes.iter().any(|n| n.contains("upgraded from format 3")), "{:?}", report.notes);
    let pool = t.pool();
    assert_eq!(pool.getattr(f).unwrap().mode, 0o604, "the format-3 record was replayed");
    assert_eq!(t.read_file("/big").unwrap(), big);
    // The upgraded pool stores a small overwrite as a layer, and keeps it across a reopen.
    let pool = t.pool();
    let fh = pool.open_file(f).unwrap();
    pool.write(fh, 5000, &[0xAB; 4096]).unwrap();
    pool.fsync(fh).unwrap();
    pool.release(fh).unwrap();
    big[5000..9096].fill(0xAB);
    assert_eq!(pool.state().layers.len(), 1);
    close_in_the_store(&mut t);
    let report = t.reopen();
    assert_eq!(report.upgraded_from, None);
    assert_eq!(t.pool().state().layers.len(), 1);
    assert_eq!(t.read_file("/big").unwrap(), big);
}

#[test]
fn a_format_one_pool_is_upgraded_in_place_and_reads_the_same() {
    let (mut t, before) = format_one_pool();
    let report = t.reopen();
    assert_eq!(report.upgraded_from, Some(1));
    assert!(report.notes.iter().any(|n| n.contains("upgraded from format 1")), "{:?}", report.notes);
    let pool = t.pool();
    assert_eq!(pool.getattr(pool.resolve("/f").unwrap()).unwrap().mode, 0o600, "the format-1 record was replayed");
    assert_eq!(pool.readlink(pool.resolve("/link").unwrap()).unwrap(), b"dir");
    assert_eq!(t.read_file("/f").unwrap(), common::pattern(1500, 7));
    assert_eq!(t.read_file("/big").unwrap(), common::pattern(300_000, 8));
    assert_eq!(t.pool().state().inodes.len(), before.inodes.len());
    // Every metadata block on the journal disks is now in the current format.
    t.pool = None;
    t.dir = None;
    for disk in 0..3 {
        assert!(common::journal_records(&t.disk_path(disk)).is_empty(), "the upgrade checkpoint trims the old records");
        assert_checkpoint_in_store(&t.disk_path(disk));
    }
    let report = t.reopen();
    assert_eq!(report.upgraded_from, None, "an upgraded pool opens as it is");
    assert_eq!(t.read_file("/big").unwrap(), common::pattern(300_000, 8));
}

#[test]
fn a_pool_of_a_newer_format_is_refused_by_name_and_left_alone() {
    let (t, _) = format_one_pool();
    let mut untouched = Vec::new();
    for disk in 0..3 {
        for path in blocks(&t.disk_path(disk), "checkpoint") {
            let (checkpoint, _, _) = journal::decode_checkpoint(&fs::read(&path).unwrap()).unwrap();
            let newer = frame::encode_version(FrameKind::Checkpoint, METADATA_FORMAT + 1, &checkpoint);
            fs::write(&path, &newer).unwrap();
            untouched.push((path, newer));
        }
    }
    let error = PoolDir::open(&t.pool_path(), common::options()).err().unwrap();
    assert!(matches!(error, Error::MetadataCorrupt(_)), "{error}");
    let message = error.to_string();
    assert!(message.contains(&format!("format {}", METADATA_FORMAT + 1)), "{message}");
    assert!(message.contains("newer DynamicFS"), "{message}");
    for (path, bytes) in untouched {
        assert_eq!(fs::read(&path).unwrap(), bytes, "refusing must change nothing");
    }
}

#[test]
fn a_format_four_pool_is_upgraded_and_then_keeps_its_records_in_the_journal_log() {
    let (mut t, state, f) = closed_with_file("small", b"before");
    // As a format-4 build left it: a checkpoint and a record, both files.
    upgraded_from_current_structure(&mut t, &state, f, 4, 0o640);
    t.write_file("after", b"logged");
    t.pool = None;
    t.dir = None;
    for disk in 0..3 {
        assert!(blocks(&t.disk_path(disk), "journal").is_empty(), "no record is a file any more");
        assert!(!common::journal_records(&t.disk_path(disk)).is_empty(), "the new records are in the log");
        assert_checkpoint_in_store(&t.disk_path(disk));
    }
    let report = t.reopen();
    assert_eq!(report.upgraded_from, None);
    assert_eq!(t.read_file("/after").unwrap(), b"logged");
    assert_eq!(t.read_file("/small").unwrap(), b"before");
}

#[test]
fn a_format_five_pool_is_upgraded_and_then_a_rewritten_layer_replaces_the_one_it_covers() {
    let mut big = common::pattern(300_000, 5);
    let (mut t, state, f) = closed_with_file("big", &big);
    upgraded_from_current_structure(&mut t, &state, f, 5, 0o620);
    // The same pages rewritten three times, as a database does: one layer stays.
    let pool = t.pool();
    let fh = pool.open_file(f).unwrap();
    for fill in [0xA1u8, 0xA2, 0xA3] {
        pool.write(fh, 8192, &[fill; 8192]).unwrap();
        pool.fsync(fh).unwrap();
        big[8192..16384].fill(fill);
        assert_eq!(pool.state().layers.values().map(Vec::len).sum::<usize>(), 1);
    }
    pool.release(fh).unwrap();
    assert_eq!(t.read_file("/big").unwrap(), big);
    t.pool = None;
    t.dir = None;
    let report = t.reopen();
    assert_eq!(report.upgraded_from, None);
    assert_eq!(t.pool().state().layers.values().map(Vec::len).sum::<usize>(), 1);
    assert_eq!(t.read_file("/big").unwrap(), big);
}

#[test]
fn a_format_six_pool_replays_its_full_pass_and_is_upgraded_to_passes_that_journal_changes() {
    use dfs_engine::meta::state::ChunkSlot;
    use dfs_engine::temperature::tracker::Temperature;
    let (mut t, state, f) = closed_with_file("big", &common::pattern(3_000_000, 6));
    // As a format-6 build left it: a checkpoint, then a pass with a verdict for every
    // chunk (`Op::ClassifyPass`).
    let seq = 6_000_000;
    let tip_hash = [6u8; 32];
    let now = state.inodes[&f].mtime.secs;
    let verdicts: Vec<_> = state.file_extents[&f]
        .keys()
        .map(|index| {
            let verdict = Temperature::default().observe(Default::default(), now, &state.tiering);
            (ChunkSlot { ino: f, index: *index }, verdict)
        })
        .collect();
    assert_eq!(verdicts.len(), 3);
    let record = JournalRecord {
        seq: seq + 1,
        prev_hash: tip_hash,
        txn: Transaction { ops: vec![Op::ClassifyPass { at_secs: now, verdicts }] },
    };
    replace_metadata(
        &t,
        seq,
        frame::encode_version(FrameKind::Checkpoint, 6, &Checkpoint { seq, tip_hash, state: state.clone() }),
        frame::encode_version(FrameKind::JournalRecord, 6, &record),
    );
    let report = t.reopen();
    assert_eq!(report.upgraded_from, Some(6));
    let temperature = t.pool().temperatures().unwrap();
    assert_eq!(temperature.len(), 3, "the format-6 pass was replayed");
    assert!(temperature.values().all(|t| t.history.len() == 1));
    t.pool().classify_pass().unwrap();
    let live = t.pool().temperatures().unwrap();
    assert!(live.values().all(|t| t.history.len() == 2));
    let report = t.reopen();
    assert_eq!(report.upgraded_from, None);
    assert_eq!(t.pool().temperatures().unwrap(), live);
    assert_eq!(t.read_file("/big").unwrap(), common::pattern(3_000_000, 6));
}

#[test]
fn a_format_seven_pool_is_upgraded_into_the_paged_store_and_reads_the_same() {
    let (mut t, state, f) = closed_with_file("big", &common::pattern(3_000_000, 7));
    // As a format-7 build left it: the whole state in a checkpoint block, and a record.
    upgraded_from_current_structure(&mut t, &state, f, 7, 0o604);
    let upgraded = t.pool().state_whole().unwrap();
    assert_eq!(upgraded.extents, state.extents);
    assert_eq!(upgraded.file_extents, state.file_extents);
    close_in_the_store(&mut t);
    let report = t.reopen();
    assert_eq!(report.upgraded_from, None);
    assert_eq!(report.records_replayed, 0, "the store holds the whole state");
    assert_eq!(t.read_file("/big").unwrap(), common::pattern(3_000_000, 7));
    let reopened = t.pool().state_whole().unwrap();
    assert_eq!(reopened.inodes, upgraded.inodes);
    assert_eq!(reopened.extents, upgraded.extents);
    assert_eq!(t.pool().temperatures().unwrap(), held_temperatures(&upgraded));
}

/// The three disks of a closed `t`, opened directly.
fn dir_disks(t: &TestPool) -> Vec<dfs_engine::media::dirdisk::DirDisk> {
    (0..3).map(|d| dfs_engine::media::dirdisk::DirDisk::open(&t.disk_path(d)).unwrap()).collect()
}

fn as_devices(disks: &[dfs_engine::media::dirdisk::DirDisk]) -> Vec<&dyn dfs_engine::media::device::BlockDevice> {
    disks.iter().map(|d| d as &dyn dfs_engine::media::device::BlockDevice).collect()
}

/// Rewrites the store of `t` (closed, checkpointed) as a build of format 8 left it — a
/// new root whose head has no format byte, temperatures with no pass count (each with
/// the repeats it had then), a directory, a file's chunk map or an inode's attributes as
/// one value — or, with
/// `format`, a head saying `format`; and removes every record. Returns the head's
/// journal tip.
fn rewrite_store_head(t: &TestPool, format: Option<u8>) -> (u64, [u8; 32]) {
    use dfs_engine::temperature::tracker::Temperature;
    let disks = dir_disks(t);
    let devices = as_devices(&disks);
    let mut store = dfs_engine::meta::store::Store::open(&devices, Default::default()).unwrap();
    let payload = store.payload().to_vec();
    let (head, after): (dfs_engine::meta::paged::Head, &[u8]) = postcard::take_from_bytes(&payload).unwrap();
    assert_eq!(after[0], METADATA_FORMAT, "a head ends with its format, then its pass count");
    let passes: u64 = postcard::from_bytes(&after[1..]).unwrap();
    let mut rewritten = payload[..payload.len() - after.len()].to_vec();
    rewritten.extend(format);
    // Format 8 stored each temperature (tag 5) as it stood, each directory (tag 2) and
    // each file's chunk map (tag 3) as one value under its inode.
    type Dir = std::collections::BTreeMap<Vec<u8>, Ino>;
    type Chunks = std::collections::BTreeMap<u64, dfs_engine::media::device::ExtentId>;
    let mut changes: std::collections::BTreeMap<Vec<u8>, Option<Vec<u8>>> = Default::default();
    let mut dirs: std::collections::BTreeMap<[u8; 8], Dir> = Default::default();
    let mut files: std::collections::BTreeMap<[u8; 8], Chunks> = Default::default();
    let mut xattrs: std::collections::BTreeMap<[u8; 8], std::collections::BTreeMap<Vec<u8>, Vec<u8>>> =
        Default::default();
    store
        .scan(&devices, &[], None, dfs_engine::meta::store::ScanCache::Skip, &mut |key, value| {
            match key[0] {
                2 => {
                    changes.insert(key.to_vec(), None);
                    let dir = dirs.entry(key[1..9].try_into().unwrap()).or_default();
                    if key.len() > 9 {
                        dir.insert(key[9..].to_vec(), postcard::from_bytes(value).unwrap());
                    }
                }
                3 => {
                    changes.insert(key.to_vec(), None);
                    let segment: Chunks = postcard::from_bytes(value).unwrap();
                    files.entry(key[1..9].try_into().unwrap()).or_default().extend(segment);
                }
                7 => {
                    changes.insert(key.to_vec(), None);
                    let attribute: Vec<u8> = postcard::from_bytes(value).unwrap();
                    xattrs.entry(key[1..9].try_into().unwrap()).or_default().insert(key[9..].to_vec(), attribute);
                }
                5 => {
                    let (mut temperature, rest): (Temperature, &[u8]) = postcard::take_from_bytes(value).unwrap();
                    let written_at: u64 = postcard::from_bytes(rest).unwrap();
                    for _ in written_at..passes {
                        temperature.repeat();
                    }
                    changes.insert(key.to_vec(), Some(postcard::to_allocvec(&temperature).unwrap()));
                }
                _ => {}
            }
            true
        })
        .unwrap();
    for (ino, dir) in dirs {
        changes.insert([&[2u8][..], &ino].concat(), Some(postcard::to_allocvec(&dir).unwrap()));
    }
    for (ino, chunks) in files {
        changes.insert([&[3u8][..], &ino].concat(), Some(postcard::to_allocvec(&chunks).unwrap()));
    }
    for (ino, attributes) in xattrs {
        changes.insert([&[7u8][..], &ino].concat(), Some(postcard::to_allocvec(&attributes).unwrap()));
    }
    let changes: Vec<_> = changes.into_iter().collect();
    store.commit_changes(&devices, changes, rewritten).unwrap();
    for disk in 0..3 {
        common::remove_records(&t.disk_path(disk));
        assert_eq!(blocks(&t.disk_path(disk), "store-root").len(), 1);
    }
    (head.seq, head.tip_hash)
}

#[test]
fn a_format_eight_pool_is_upgraded_and_then_folds_long_policy_histories() {
    let (mut t, _, f) = closed_with_file("big", &common::pattern(300_000, 9));
    t.reopen();
    t.write_file("small", &common::pattern(5_000, 10));
    for name in [&b"user.a"[..], b"user.b"] {
        t.pool().setxattr(f, name, b"value", dfs_engine::data::xattr::SetMode::Any).unwrap();
    }
    // Temperatures written at several pass counts: the last passes only repeat.
    for _ in 0..2 {
        t.pool().classify_pass().unwrap();
        t.pool().checkpoint().unwrap();
    }
    t.write_file("later", &common::pattern(5_000, 11));
    for _ in 0..3 {
        t.pool().classify_pass().unwrap();
    }
    t.pool().checkpoint().unwrap();
    let state = t.pool().state_whole().unwrap();
    let temperatures = held_temperatures(&state);
    assert!(temperatures.values().any(|t| t.history.len() == 5), "{temperatures:?}");
    assert!(temperatures.values().any(|t| t.history.len() == 3));
    t.pool = None;
    t.dir = None;
    let (seq, tip_hash) = rewrite_store_head(&t, None);
    // A format-8 record after the head, chaining onto it.
    let mut inode = state.inodes[&f].clone();
    inode.mode = 0o640;
    let record =
        JournalRecord { seq: seq + 1, prev_hash: tip_hash, txn: Transaction { ops: vec![Op::PutInode(inode)] } };
    for disk in 0..3 {
        let dir = t.disk_path(disk).join("journal");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(format!("{:020}", seq + 1)), frame::encode_version(FrameKind::JournalRecord, 8, &record))
            .unwrap();
    }
    let report = t.reopen();
    assert_eq!(report.upgraded_from, Some(8));
    assert_eq!(t.pool().getattr(f).unwrap().mode, 0o640, "the format-8 record was replayed");
    assert_eq!(t.pool().state_whole().unwrap().extents, state.extents);
    assert_eq!(t.pool().temperatures().unwrap(), temperatures, "format-8 temperatures read as they were");
    assert_eq!(t.pool().state().dirs, state.dirs);
    assert_eq!(t.pool().state().file_extents, state.file_extents);
    assert_eq!(t.pool().state().xattrs, state.xattrs);
    assert_eq!(state.xattrs[&f].len(), 2);
    close_in_the_store(&mut t);
    t.reopen();
    assert_eq!(t.pool().temperatures().unwrap(), temperatures, "and as upgraded");
    assert_eq!(t.pool().state().dirs, state.dirs);
    assert_eq!(t.pool().state().file_extents, state.file_extents);
    assert_eq!(t.pool().state().xattrs, state.xattrs);
    // The upgraded pool keeps at most POLICY_HISTORY_MAX changes an extent, the oldest folded.
    let policies = ["replicate:2", "replicate:3"];
    let changes = dfs_engine::meta::state::POLICY_HISTORY_MAX as u64 + 5;
    for round in 0..changes {
        let policy = policies[round as usize % 2].parse().unwrap();
        let scope = dfs_engine::meta::state::PolicyScope::Path { ino: f, path: "/big".into(), recursive: false };
        t.pool().change_policy(scope, policy).unwrap();
    }
    let history = |t: &mut TestPool| t.pool().slot_record(slot_of(f)).unwrap().unwrap().history.clone();
    let folded = history(&mut t);
    assert_eq!(folded.len(), dfs_engine::meta::state::POLICY_HISTORY_MAX);
    assert_eq!(folded.iter().map(|c| c.changes()).sum::<u64>(), changes);
    assert_eq!(folded[0].cause, dfs_engine::meta::state::ChangeCause::Earlier(6));
    assert_eq!(folded[0].from.to_string(), "replicate:3", "the folded entry starts where the first change did");
    close_in_the_store(&mut t);
    assert_eq!(t.reopen().upgraded_from, None);
    assert_eq!(history(&mut t), folded);
    assert_eq!(t.read_file("/big").unwrap(), common::pattern(300_000, 9));
}

fn slot_of(ino: Ino) -> dfs_engine::meta::ids::ChunkSlot {
    dfs_engine::meta::ids::ChunkSlot { ino, index: 0 }
}

#[test]
fn a_store_of_a_newer_format_is_refused_by_name_and_left_alone() {
    let (t, _, _) = closed_with_file("f", &common::pattern(300_000, 3));
    rewrite_store_head(&t, Some(METADATA_FORMAT + 1));
    let before: Vec<_> =
        (0..3).flat_map(|d| blocks(&t.disk_path(d), "store-root")).map(|p| fs::read(p).unwrap()).collect();
    let error = PoolDir::open(&t.pool_path(), common::options()).err().unwrap();
    let message = error.to_string();
    assert!(message.contains(&format!("format {}", METADATA_FORMAT + 1)), "{message}");
    assert!(message.contains("newer DynamicFS"), "{message}");
    let after: Vec<_> =
        (0..3).flat_map(|d| blocks(&t.disk_path(d), "store-root")).map(|p| fs::read(p).unwrap()).collect();
    assert_eq!(before, after, "refusing must change nothing");
}

/// Formats 10 and 11 changed no store encoding (10: the record an open writes names who
/// opened; 11: store disks may keep fragments in packs, which a format-10 build would
/// not find): a format-9 or format-10 pool's store reads as it is and is not rewritten,
/// and its records replay.
#[test]
fn a_format_nine_pool_is_upgraded_without_rewriting_its_store() {
    upgraded_without_rewriting_the_store(9);
}

#[test]
fn a_format_ten_pool_is_upgraded_without_rewriting_its_store() {
    upgraded_without_rewriting_the_store(10);
}

fn upgraded_without_rewriting_the_store(old: u8) {
    let (mut t, state, f) = closed_with_file("big", &common::pattern(300_000, 12));
    t.reopen();
    for i in 0..40 {
        t.write_file(&format!("s{i}"), &common::pattern(3_000, i));
    }
    t.pool().checkpoint().unwrap();
    t.pool = None;
    t.dir = None;
    // The store's head as an older build wrote it: its format byte says so.
    let disks = dir_disks(&t);
    let devices = as_devices(&disks);
    let mut store = dfs_engine::meta::store::Store::open(&devices, Default::default()).unwrap();
    let payload = store.payload().to_vec();
    let (head, after): (dfs_engine::meta::paged::Head, &[u8]) = postcard::take_from_bytes(&payload).unwrap();
    let at = payload.len() - after.len();
    assert_eq!(payload[at], METADATA_FORMAT);
    let mut older = payload.clone();
    older[at] = old;
    store.commit_changes(&devices, Vec::new(), older).unwrap();
    let runs_before = store.runs();
    drop(disks);
    for disk in 0..3 {
        common::remove_records(&t.disk_path(disk));
    }
    // A record of that format after the head, chaining onto it.
    let mut inode = state.inodes[&f].clone();
    inode.mode = 0o650;
    let record = JournalRecord {
        seq: head.seq + 1,
        prev_hash: head.tip_hash,
        txn: Transaction { ops: vec![Op::PutInode(inode)] },
    };
    for disk in 0..3 {
        let dir = t.disk_path(disk).join("journal");
        fs::create_dir_all(&dir).unwrap();
        let block = frame::encode_version(FrameKind::JournalRecord, old, &record);
        fs::write(dir.join(format!("{:020}", head.seq + 1)), block).unwrap();
    }
    let report = t.reopen();
    assert_eq!(report.upgraded_from, Some(old));
    let note = format!("from format {old} to format {METADATA_FORMAT}");
    assert!(report.notes.iter().any(|n| n.contains(&note)), "{:?}", report.notes);
    assert_eq!(t.pool().getattr(f).unwrap().mode, 0o650, "the older record was replayed");
    let (_, runs, _) = t.pool().metadata_store().unwrap();
    assert!(runs > 1 && runs >= runs_before, "the store was committed to, not written anew as one run ({runs})");
    for i in 0..40 {
        assert_eq!(t.read_file(&format!("/s{i}")).unwrap(), common::pattern(3_000, i));
    }
    close_in_the_store(&mut t);
    assert_eq!(t.reopen().upgraded_from, None);
    assert_eq!(t.read_file("/big").unwrap(), common::pattern(300_000, 12));
}

/// Format 12: a full 1 MiB extent under `erasure:4+2` stores its four data fragments with
/// their BLAKE3 subtree chaining values (fragment version 2) and its parity with root
/// hashes (version 1). A flipped byte in a data fragment is caught by scrub and repaired,
/// and the file reads back the same after a reopen; an extent that does not fill
/// power-of-two shards (1 MiB less 10 bytes) keeps version 1 throughout.
#[test]
fn full_extents_carry_subtree_chaining_values_that_scrub_checks() {
    use dfs_engine::media::device::BlockName;
    let mut t = TestPool::new(&[64, 64, 64, 64, 64, 64], "erasure:4+2");
    let full = common::pattern(1 << 20, 21);
    let short = common::pattern((1 << 20) - 10, 22);
    t.write_file("full", &full);
    t.pool().sync().unwrap();
    let versions = |t: &TestPool| -> Vec<(u8, u8)> {
        let mut found: Vec<(u8, u8)> = (0..6)
            .flat_map(|disk| common::fragments_on(&t.disk_path(disk)))
            .map(|f| match f.name {
                BlockName::Fragment { index, .. } => (index, f.read().unwrap()[4]),
                other => panic!("not a fragment: {other}"),
            })
            .collect();
        found.sort_unstable();
        found
    };
    assert_eq!(versions(&t), vec![(0, 2), (1, 2), (2, 2), (3, 2), (4, 1), (5, 1)]);
    let data_fragment = (0..6)
        .flat_map(|disk| common::fragments_on(&t.disk_path(disk)))
        .find(|f| matches!(f.name, BlockName::Fragment { index: 2, .. }))
        .unwrap();
    data_fragment.overwrite(100_000, &[0x5a]).unwrap();
    let report = t.pool().scrub_all(None, true).unwrap();
    assert_eq!((report.corrupt_fragments, report.repaired_fragments), (1, 1), "{report:?}");
    t.reopen();
    assert_eq!(t.read_file("full").unwrap(), full);
    let report = t.pool().scrub_all(None, false).unwrap();
    assert_eq!(report.corrupt_fragments, 0, "the repaired fragment verifies: {report:?}");
    t.pool().unlink(Ino::ROOT, b"full").unwrap();
    t.pool().sync().unwrap();
    t.write_file("short", &short);
    t.pool().sync().unwrap();
    assert!(versions(&t).iter().all(|(_, version)| *version == 1), "{:?}", versions(&t));
    t.reopen();
    assert_eq!(t.read_file("short").unwrap(), short);
}
