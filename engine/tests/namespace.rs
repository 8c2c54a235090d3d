//! POSIX semantics of the namespace API, checked against what ext4 answers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{pattern, TestPool, OWNER};
use dfs_engine::data::namespace::{dropped_privileges, PrivilegeCaller, PrivilegeChange, RenameMode, SetAttr};
use dfs_engine::{Error, Ino, InodeKind};

const MIB: usize = 1 << 20;

fn pool() -> TestPool {
    TestPool::new(&[64, 64, 64], "replicate:2")
}

#[test]
fn files_survive_reopen_with_their_attributes() {
    let mut t = pool();
    let data = pattern(3 * MIB + 5, 1);
    let ino = t.write_file("a", &data);
    let before = t.pool().getattr(ino).unwrap();
    t.reopen();
    let after = t.pool().getattr(ino).unwrap();
    assert_eq!(before, after);
    assert_eq!(t.read_file("/a").unwrap(), data);
}

#[test]
fn a_small_file_fsynced_inline_is_stored_as_fragments_once_closed() {
    let mut t = pool();
    let inline = |t: &mut TestPool, ino: Ino| {
        let state = t.pool().state();
        state.file_extents[&ino].values().map(|id| state.extents.get(id).unwrap().is_inline()).collect::<Vec<_>>()
    };
    // Up to 8 KiB goes inline at an fsync, so the fsync writes its journal record only.
    let young = pattern(5000, 1);
    let small = pattern(1000, 2);
    let open = pattern(6000, 3);
    let young_ino = t.write_file("young", &young);
    let small_ino = t.write_file("small", &small);
    let pool = t.pool();
    let open_ino = pool.create(Ino::ROOT, b"open", OWNER).unwrap().ino;
    let fh = pool.open_file(open_ino).unwrap();
    pool.write(fh, 0, &open).unwrap();
    pool.fsync(fh).unwrap();
    assert_eq!(inline(&mut t, young_ino), vec![true]);
    assert_eq!(inline(&mut t, open_ino), vec![true]);
    // Closed, a young inline extent is stored as fragments by the background; a small
    // one stays inline; an open file's waits for its close.
    assert_eq!(t.pool().merge_step(8, true).unwrap(), 1);
    assert_eq!(inline(&mut t, young_ino), vec![false]);
    assert_eq!(inline(&mut t, small_ino), vec![true]);
    assert_eq!(inline(&mut t, open_ino), vec![true]);
    assert_eq!(t.pool().merge_step(8, true).unwrap(), 0);
    t.pool().release(fh).unwrap();
    // A reopen finds what is left young by a scan.
    t.reopen();
    assert_eq!(t.pool().merge_step(8, true).unwrap(), 1);
    assert_eq!(inline(&mut t, open_ino), vec![false]);
    assert_eq!(t.read_file("/young").unwrap(), young);
    assert_eq!(t.read_file("/small").unwrap(), small);
    assert_eq!(t.read_file("/open").unwrap(), open);
}

#[test]
fn overwrites_in_the_middle_are_copy_on_write() {
    let mut t = pool();
    let mut data = pattern(2 * MIB + 100, 2);
    let ino = t.write_file("a", &data);
    let old_extents: Vec<_> = t.pool().state().file_extents[&ino].values().copied().collect();
    let pool = t.pool();
    let fh = pool.open_file(ino).unwrap();
    pool.write(fh, MIB as u64 - 10, b"0123456789abcdefghij").unwrap();
    assert_eq!(&pool.read(fh, MIB as u64 - 10, 20).unwrap(), b"0123456789abcdefghij");
    pool.release(fh).unwrap();
    data[MIB - 10..MIB + 10].copy_from_slice(b"0123456789abcdefghij");
    // A small overwrite leaves the extents it changes as they are and lays a new extent
    // with just the new bytes over each chunk it touches.
    let state = t.pool().state();
    let new_extents: Vec<_> = state.file_extents[&ino].values().copied().collect();
    assert_eq!(old_extents, new_extents);
    let layered: Vec<(u64, Vec<(u32, u32)>)> = state
        .layers
        .iter()
        .filter(|(slot, _)| slot.ino == ino)
        .flat_map(|(slot, layers)| layers.iter().map(|l| (slot.index, l.ranges.clone())))
        .collect();
    assert_eq!(layered, vec![(0, vec![(MIB as u32 - 10, 10)]), (1, vec![(0, 10)])]);
    t.reopen();
    assert_eq!(t.read_file("/a").unwrap(), data);
    // The background merge is paced by the migration budget: with one byte a second it
    // affords no 1 MiB chunk.
    let default = t.pool().state().tiering;
    let starved = dfs_engine::temperature::config::TieringConfig { migrate_bytes_per_sec: 1, ..default };
    t.pool().set_tiering(starved).unwrap();
    assert_eq!(t.pool().merge_step(8, false).unwrap(), 0);
    assert_eq!(t.pool().state().layers.len(), 2);
    t.pool().set_tiering(default).unwrap();
    // Unthrottled, the merge folds them into whole extents of the chunks' new contents.
    assert_eq!(t.pool().merge_step(8, true).unwrap(), 2);
    assert_eq!(t.pool().counters().layers_merged, 2);
    let state = t.pool().state();
    let merged: Vec<_> = state.file_extents[&ino].values().copied().collect();
    assert!(merged[0] != old_extents[0] && merged[1] != old_extents[1] && merged[2] == old_extents[2]);
    assert!(state.layers.is_empty());
    assert_eq!(t.pool().merge_step(8, true).unwrap(), 0);
    t.reopen();
    assert_eq!(t.read_file("/a").unwrap(), data);
}

#[test]
fn a_read_inside_a_plain_stored_chunk_is_a_window_of_its_extent_and_anything_over_it_is_not() {
    use dfs_engine::data::window::ReadData;
    let mut t = pool();
    let data = pattern(2 * MIB + 4096, 5);
    let ino = t.write_file("a", &data);
    let pool = t.pool();
    let fh = pool.open_file(ino).unwrap();
    let read = pool.read_data(fh, 4096, 65536).unwrap();
    assert!(matches!(read, ReadData::Shared { start: 4096, end: 69632, .. }), "{read:?}");
    assert_eq!(&read[..], &data[4096..69632]);
    // Across a chunk boundary, and past the end of the file: assembled, and exact.
    let across = pool.read_data(fh, MIB as u64 - 100, 200).unwrap();
    assert!(matches!(across, ReadData::Owned(_)));
    assert_eq!(&across[..], &data[MIB - 100..MIB + 100]);
    let tail = pool.read_data(fh, 2 * MIB as u64, 65536).unwrap();
    assert_eq!(&tail[..], &data[2 * MIB..]);
    // A patch waiting in the buffer, then the layer it became: never a window of the
    // extent under them.
    pool.write(fh, 8192, b"patched").unwrap();
    let patched = pool.read_data(fh, 4096, 65536).unwrap();
    assert!(matches!(patched, ReadData::Owned(_)));
    assert_eq!(&patched[4096..4103], b"patched");
    pool.fsync(fh).unwrap();
    let layered = pool.read_data(fh, 4096, 65536).unwrap();
    assert!(matches!(layered, ReadData::Owned(_)));
    assert_eq!(&layered[4096..4103], b"patched");
    assert_eq!(&layered[..4096], &data[4096..8192]);
    // The window read before the overwrite still holds what the file held then.
    assert_eq!(&read[4096..4103], &data[8192..8199]);
    pool.release(fh).unwrap();
}

#[test]
fn small_overwrites_lay_layers_and_zeros_are_bytes_not_holes() {
    let mut t = pool();
    let mut data = pattern(3 * MIB, 9);
    let ino = t.write_file("a", &data);
    let pool = t.pool();
    let fh = pool.open_file(ino).unwrap();
    // Zeros over part of a chunk, bytes across a chunk boundary, two writes that merge.
    pool.write(fh, 4096, &[0u8; 8192]).unwrap();
    pool.write(fh, 2 * MIB as u64 - 100, &[7u8; 200]).unwrap();
    pool.write(fh, 2 * MIB as u64 + 500_000, &[1u8; 10]).unwrap();
    pool.write(fh, 2 * MIB as u64 + 500_010, &[2u8; 10]).unwrap();
    assert_eq!(pool.read(fh, 4000, 200).unwrap()[96..], [0u8; 104]);
    pool.fsync(fh).unwrap();
    pool.release(fh).unwrap();
    data[4096..4096 + 8192].fill(0);
    data[2 * MIB - 100..2 * MIB + 100].fill(7);
    data[2 * MIB + 500_000..2 * MIB + 500_010].fill(1);
    data[2 * MIB + 500_010..2 * MIB + 500_020].fill(2);
    let state = t.pool().state();
    let ranges: Vec<(u64, Vec<(u32, u32)>)> =
        state.layers.iter().map(|(slot, layers)| (slot.index, layers[0].ranges.clone())).collect();
    assert_eq!(
        ranges,
        vec![(0, vec![(4096, 8192)]), (1, vec![(MIB as u32 - 100, 100)]), (2, vec![(0, 100), (500_000, 20)])]
    );
    assert_eq!(state.file_extents[&ino].len(), 3, "no chunk became a hole");
    assert_eq!(t.pool().counters().layers_written, 3);
    t.reopen();
    assert_eq!(t.read_file("/a").unwrap(), data);
}

/// Writes `writes` (offset, bytes) into a 300,000-byte file, each synced, and returns the
/// lengths of the file's layered chunk's layers after each; checks the file reads back
/// as written after a reopen.
fn layers_after_synced_writes(name: &str, writes: &[(usize, Vec<u8>)]) -> Vec<Vec<u32>> {
    let mut t = pool();
    let mut data = pattern(300_000, 4);
    let ino = t.write_file(name, &data);
    let pool = t.pool();
    let fh = pool.open_file(ino).unwrap();
    let mut layers = Vec::new();
    for (offset, bytes) in writes {
        pool.write(fh, *offset as u64, bytes).unwrap();
        pool.fsync(fh).unwrap();
        let end = offset + bytes.len();
        data.resize(data.len().max(end), 0);
        data[*offset..end].copy_from_slice(bytes);
        let slot = pool.state().layers.values().next().unwrap();
        layers.push(slot.iter().map(|l| pool.state().extents.get(&l.extent).unwrap().len).collect());
    }
    pool.release(fh).unwrap();
    t.reopen();
    assert_eq!(t.read_file(&format!("/{name}")).unwrap(), data);
    layers
}

#[test]
fn appends_synced_a_few_kib_at_a_time_gather_in_one_inline_layer() {
    let appends: Vec<(usize, Vec<u8>)> =
        (0..5u8).map(|n| (300_000 + 4120 * n as usize, vec![b'a' + n; 4120])).collect();
    let layers = layers_after_synced_writes("log", &appends);
    // The next two appends join the first layer; the fourth would take it past 16 KiB,
    // so it starts a second, which the fifth joins.
    assert_eq!(layers, vec![vec![4120], vec![8240], vec![12360], vec![12360, 4120], vec![12360, 8240]]);
}

#[test]
fn scattered_small_synced_writes_keep_layers_of_their_own() {
    let pages: Vec<(usize, Vec<u8>)> = [8192usize, 65536, 16384, 12288]
        .into_iter()
        .enumerate()
        .map(|(n, at)| (at, vec![b'a' + n as u8; 4096]))
        .collect();
    let layers = layers_after_synced_writes("db", &pages);
    // The second and third pages land apart from the newest layer, so each keeps its
    // own; the fourth ends where the third starts and joins it.
    assert_eq!(layers.last(), Some(&vec![4096, 4096, 8192]));
}

#[test]
fn sparse_files_read_zeros_in_holes_and_store_nothing_there() {
    let mut t = pool();
    let pool = t.pool();
    let ino = pool.create(Ino::ROOT, b"sparse", OWNER).unwrap().ino;
    let fh = pool.open_file(ino).unwrap();
    pool.write(fh, 10 * MIB as u64, b"end").unwrap();
    pool.release(fh).unwrap();
    assert_eq!(t.pool().getattr(ino).unwrap().size, 10 * MIB as u64 + 3);
    assert_eq!(t.pool().state().file_extents[&ino].len(), 1);
    let data = t.read_file("/sparse").unwrap();
    assert!(data[..10 * MIB].iter().all(|b| *b == 0));
    assert_eq!(&data[10 * MIB..], b"end");
}

#[test]
fn truncate_cuts_and_extends_with_zeros() {
    let mut t = pool();
    let data = pattern(3 * MIB, 3);
    let ino = t.write_file("a", &data);
    let pool = t.pool();
    pool.setattr(ino, &SetAttr { size: Some(MIB as u64 + 7), ..Default::default() }).unwrap();
    pool.setattr(ino, &SetAttr { size: Some(2 * MIB as u64), ..Default::default() }).unwrap();
    let read = t.read_file("/a").unwrap();
    assert_eq!(read.len(), 2 * MIB);
    assert_eq!(&read[..MIB + 7], &data[..MIB + 7]);
    assert!(read[MIB + 7..].iter().all(|b| *b == 0), "bytes past a truncation must read as zero");
    t.reopen();
    assert_eq!(t.read_file("/a").unwrap(), read);
}

#[test]
fn rename_replaces_atomically_and_frees_the_target() {
    let mut t = pool();
    t.write_file("a", b"new contents");
    let old = t.write_file("b", &pattern(MIB, 4));
    let pool = t.pool();
    pool.rename(Ino::ROOT, b"a", Ino::ROOT, b"b", RenameMode::Replace).unwrap();
    assert!(matches!(pool.lookup(Ino::ROOT, b"a"), Err(Error::NotFound(_))));
    assert!(pool.getattr(old).is_err());
    assert_eq!(t.read_file("/b").unwrap(), b"new contents");
    t.reopen();
    assert_eq!(t.read_file("/b").unwrap(), b"new contents");
}

#[test]
fn rename_follows_posix_rules() {
    let mut t = pool();
    let pool = t.pool();
    let d = pool.mkdir(Ino::ROOT, b"d", OWNER).unwrap().ino;
    let e = pool.mkdir(d, b"e", OWNER).unwrap().ino;
    pool.create(Ino::ROOT, b"f", OWNER).unwrap();
    pool.create(e, b"g", OWNER).unwrap();
    assert!(matches!(pool.rename(Ino::ROOT, b"d", e, b"x", RenameMode::Replace), Err(Error::InvalidArgument(_))));
    assert!(matches!(pool.rename(Ino::ROOT, b"f", Ino::ROOT, b"d", RenameMode::Replace), Err(Error::IsDirectory(_))));
    assert!(matches!(pool.rename(Ino::ROOT, b"d", Ino::ROOT, b"f", RenameMode::Replace), Err(Error::NotDirectory(_))));
    assert!(matches!(pool.rename(d, b"e", Ino::ROOT, b"f", RenameMode::NoReplace), Err(Error::Exists(_))));
    pool.mkdir(Ino::ROOT, b"empty", OWNER).unwrap();
    assert!(matches!(pool.rename(Ino::ROOT, b"empty", d, b"e", RenameMode::Replace), Err(Error::NotEmpty(_))));
    // Moving a directory moves its `..` link: parents' link counts follow.
    pool.rename(d, b"e", Ino::ROOT, b"e2", RenameMode::Replace).unwrap();
    assert_eq!(pool.getattr(d).unwrap().nlink, 2);
    assert_eq!(pool.getattr(Ino::ROOT).unwrap().nlink, 5);
    pool.rename(Ino::ROOT, b"f", Ino::ROOT, b"e2", RenameMode::Exchange).unwrap();
    assert_eq!(pool.lookup(Ino::ROOT, b"f").unwrap().kind, InodeKind::Directory);
    assert_eq!(pool.lookup(Ino::ROOT, b"e2").unwrap().kind, InodeKind::File);
    pool.state().check().unwrap();
}

#[test]
fn unlinked_open_files_stay_readable_until_the_last_release() {
    let mut t = pool();
    let data = pattern(MIB + 1, 5);
    let ino = t.write_file("a", &data);
    let pool = t.pool();
    let fh = pool.open_file(ino).unwrap();
    pool.unlink(Ino::ROOT, b"a").unwrap();
    assert!(pool.lookup(Ino::ROOT, b"a").is_err());
    assert_eq!(pool.read(fh, 0, data.len()).unwrap(), data);
    assert_eq!(pool.getattr(ino).unwrap().nlink, 0);
    pool.release(fh).unwrap();
    assert!(pool.getattr(ino).is_err());
    assert!(pool.state().extents.is_empty());
    pool.sync().unwrap();
    for i in 0..3 {
        assert!(common::fragments_on(&t.disk_path(i)).is_empty());
    }
}

#[test]
fn hard_links_share_contents_and_count() {
    let mut t = pool();
    let ino = t.write_file("a", b"shared");
    let pool = t.pool();
    let d = pool.mkdir(Ino::ROOT, b"d", OWNER).unwrap().ino;
    pool.link(ino, d, b"b").unwrap();
    assert_eq!(pool.getattr(ino).unwrap().nlink, 2);
    pool.unlink(Ino::ROOT, b"a").unwrap();
    assert_eq!(t.read_file("/d/b").unwrap(), b"shared");
    assert!(matches!(t.pool().link(d, Ino::ROOT, b"dl"), Err(Error::NotPermitted(_))));
}

#[test]
fn directories_and_symlinks_behave() {
    let mut t = pool();
    let pool = t.pool();
    let d = pool.mkdir(Ino::ROOT, b"d", OWNER).unwrap().ino;
    pool.create(d, b"x", OWNER).unwrap();
    assert!(matches!(pool.rmdir(Ino::ROOT, b"d"), Err(Error::NotEmpty(_))));
    assert!(matches!(pool.unlink(Ino::ROOT, b"d"), Err(Error::IsDirectory(_))));
    assert!(matches!(pool.mkdir(Ino::ROOT, b"d", OWNER), Err(Error::Exists(_))));
    assert!(matches!(pool.create(Ino::ROOT, &[b'n'; 256], OWNER), Err(Error::NameTooLong(256))));
    assert!(matches!(pool.create(Ino::ROOT, b"a/b", OWNER), Err(Error::InvalidArgument(_))));
    let s = pool.symlink(Ino::ROOT, b"s", b"d/x", OWNER).unwrap();
    assert_eq!(s.kind, InodeKind::Symlink);
    assert_eq!(pool.readlink(s.ino).unwrap(), b"d/x");
    let names: Vec<_> = pool.readdir(Ino::ROOT).unwrap().into_iter().map(|e| e.name).collect();
    assert_eq!(names, vec![b"d".to_vec(), b"s".to_vec()]);
    pool.unlink(d, b"x").unwrap();
    pool.rmdir(Ino::ROOT, b"d").unwrap();
    assert_eq!(pool.getattr(Ino::ROOT).unwrap().nlink, 2);
    pool.state().check().unwrap();
}

#[test]
fn setattr_changes_mode_owner_and_times() {
    let mut t = pool();
    let ino = t.write_file("a", b"x");
    let pool = t.pool();
    let when = dfs_engine::base::clock::WallTime { secs: 1_000_000, nanos: 5 };
    let attr = pool
        .setattr(
            ino,
            &SetAttr {
                mode: Some(0o600),
                uid: Some(7),
                gid: Some(8),
                mtime: Some(when),
                atime: Some(when),
                size: None,
                ctime: None,
            },
        )
        .unwrap();
    assert_eq!((attr.mode, attr.uid, attr.gid, attr.mtime, attr.atime), (0o600, 7, 8, when, when));
    t.reopen();
    assert_eq!(t.pool().getattr(ino).unwrap().mtime, when);
}

#[test]
fn files_inherit_the_directory_policy() {
    let mut t = TestPool::new(&[64; 6], "replicate:2");
    let pool = t.pool();
    let d = pool.mkdir(Ino::ROOT, b"d", OWNER).unwrap().ino;
    pool.set_policy(d, Some("erasure:4+2".parse().unwrap())).unwrap();
    let f = pool.create(d, b"f", OWNER).unwrap();
    assert_eq!(f.policy.to_string(), "erasure:4+2");
    let g = pool.create(Ino::ROOT, b"g", OWNER).unwrap();
    assert_eq!(g.policy.to_string(), "replicate:2");
}

/// The bits ext4 (Linux 6.18) dropped in `cli/tests/posix/observe.py`'s `privileges`
/// section, for each kind of change, caller and mode.
#[test]
fn privileges_are_dropped_by_the_changes_and_callers_that_drop_them_on_ext4() {
    let root = PrivilegeCaller { privileged: true, in_group: true };
    let stranger = PrivilegeCaller { privileged: false, in_group: false };
    let member = PrivilegeCaller { privileged: false, in_group: true };
    let (owner, contents) = (PrivilegeChange::Owner, PrivilegeChange::Contents);
    let file = InodeKind::File;
    // (mode, change, caller, the mode after it)
    let cases = [
        // Set-user-ID with set-group-ID and group execute: all but root's writes drop both.
        (0o6777, contents, stranger, 0o777),
        (0o6777, contents, member, 0o777),
        (0o6777, contents, root, 0o6777),
        (0o6777, owner, root, 0o777),
        (0o6755, owner, root, 0o755),
        (0o6777, owner, member, 0o777),
        // Set-group-ID without group execute: dropped only by a stranger to the group.
        (0o2767, contents, stranger, 0o767),
        (0o2767, contents, member, 0o2767),
        (0o2767, contents, root, 0o2767),
        (0o2767, owner, root, 0o2767),
        (0o2767, owner, member, 0o2767),
        (0o2767, owner, stranger, 0o767),
        // Nothing to drop.
        (0o777, contents, stranger, 0o777),
    ];
    for (mode, change, caller, after) in cases {
        let dropped = dropped_privileges(file, mode, change, caller);
        assert_eq!(mode & !dropped, after, "{mode:o} after {change:?} by {caller:?}");
    }
    // Directories keep both.
    assert_eq!(dropped_privileges(InodeKind::Directory, 0o6777, owner, stranger), 0);
    assert_eq!(dropped_privileges(InodeKind::Directory, 0o6777, contents, stranger), 0);
}

#[test]
fn a_directory_knows_its_parent_through_renames_within_across_and_exchanged() {
    let mut t = TestPool::new(&[64, 64, 64], "replicate:2");
    let pool = t.pool();
    let dir =
        |pool: &mut dfs_engine::Pool, parent: Ino, name: &str| pool.mkdir(parent, name.as_bytes(), OWNER).unwrap().ino;
    let (a, b) = (dir(pool, Ino::ROOT, "a"), dir(pool, Ino::ROOT, "b"));
    let c = dir(pool, a, "c");
    pool.create(c, b"f", OWNER).unwrap();
    assert_eq!((pool.parent_of(a), pool.parent_of(c)), (Some(Ino::ROOT), Some(a)));
    pool.rename(a, b"c", a, b"c2", RenameMode::Replace).unwrap();
    assert_eq!(pool.parent_of(c), Some(a), "renamed within its parent");
    pool.rename(a, b"c2", b, b"c", RenameMode::Replace).unwrap();
    assert_eq!(pool.parent_of(c), Some(b), "moved to another parent");
    let x = dir(pool, a, "x");
    pool.rename(b, b"c", a, b"x", RenameMode::Exchange).unwrap();
    assert_eq!((pool.parent_of(c), pool.parent_of(x)), (Some(a), Some(b)), "exchanged");
    // A move into its own subtree is refused: the walk up from the target finds it.
    let error = pool.rename(Ino::ROOT, b"a", c, b"a", RenameMode::Replace).unwrap_err();
    assert!(matches!(error, Error::InvalidArgument(_)), "{error}");
    pool.rename(Ino::ROOT, b"b", c, b"b", RenameMode::Replace).unwrap();
    assert_eq!(pool.parent_of(b), Some(c));
    pool.rmdir(b, b"c").unwrap(); // x, since the exchange
    assert_eq!(pool.parent_of(x), None);
    t.reopen();
    let pool = t.pool();
    assert_eq!((pool.parent_of(a), pool.parent_of(b), pool.parent_of(c)), (Some(Ino::ROOT), Some(c), Some(a)));
    pool.checkpoint().unwrap();
    t.reopen();
    assert_eq!(t.pool().parent_of(b), Some(c), "rebuilt from the checkpoint");
}

/// An unlink of a directory's name keeps its parent only while it is named there twice —
/// inside an exchange within one directory, or a rename an older build journaled as the
/// new name's link before the old name's unlink — and never looks through the parent's
/// entries to find out (`MetaState::second_names`, empty between transactions).
#[test]
fn a_directory_named_twice_in_a_transaction_keeps_its_parent_and_only_then() {
    use dfs_engine::meta::state::{Op, Transaction};
    let mut t = TestPool::new(&[64, 64, 64], "replicate:2");
    let pool = t.pool();
    let p = pool.mkdir(Ino::ROOT, b"p", OWNER).unwrap().ino;
    let (x, y) = (pool.mkdir(p, b"x", OWNER).unwrap().ino, pool.mkdir(p, b"y", OWNER).unwrap().ino);
    pool.rename(p, b"x", p, b"y", RenameMode::Exchange).unwrap();
    assert_eq!((pool.parent_of(x), pool.parent_of(y)), (Some(p), Some(p)), "exchanged within one directory");
    assert_eq!(pool.lookup(p, b"y").unwrap().ino, x);
    pool.state().check().unwrap();
    // A rename within `p` as an older build journaled it: link the new name, then unlink
    // the old one.
    let mut state = pool.state().clone();
    let renamed = Transaction {
        ops: vec![Op::Link { parent: p, name: b"x2".to_vec(), ino: y }, Op::Unlink { parent: p, name: b"x".to_vec() }],
    };
    state.apply_transaction(&renamed);
    assert_eq!(state.dir_parents.get(&y), Some(&p));
    state.check().unwrap();
    // Its last name unlinked, a directory has no parent.
    state.apply_transaction(&Transaction { ops: vec![Op::Unlink { parent: p, name: b"x2".to_vec() }] });
    assert_eq!(state.dir_parents.get(&y), None);
    assert!(state.second_names.is_empty());
    pool.rmdir(p, b"x").unwrap();
    assert_eq!(pool.parent_of(y), None);
    pool.state().check().unwrap();
}
