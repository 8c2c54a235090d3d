//! The engine's POSIX surface without FUSE: special files, extended attributes, ACLs,
//! inheritance, range operations and relatime — each checked to survive a reopen, and
//! each refusal checked to change nothing. (`cli/tests/posix.rs` compares the same
//! operations through a mount with ext4.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{TestPool, OWNER};
use dfs_engine::data::acl::{Acl, Entry, Tag, ACCESS_XATTR, DEFAULT_XATTR};
use dfs_engine::data::file_ranges::Seek;
use dfs_engine::data::namespace::{Owner, SetAttr};
use dfs_engine::data::xattr::{SetMode, INODE_BYTES_MAX, POLICY_XATTR, VALUE_BYTES_MAX};
use dfs_engine::{Error, Ino, InodeKind};

fn errno(result: dfs_engine::Result<impl Sized>) -> i32 {
    result.err().map(|e| e.errno()).unwrap_or(0)
}

#[test]
fn special_files_keep_their_kind_and_device_number_and_hold_no_data() {
    let mut t = TestPool::new(&[64, 64, 64], "replicate:2");
    let pool = t.pool();
    let owner = Owner { mode: 0o666, umask: 0o022, ..OWNER };
    let fifo = pool.mknod(Ino::ROOT, b"fifo", libc::S_IFIFO, 0, owner).unwrap();
    let chr = pool.mknod(Ino::ROOT, b"chr", libc::S_IFCHR | 0o600, 0x0103, owner).unwrap();
    let blk = pool.mknod(Ino::ROOT, b"blk", libc::S_IFBLK, 0x0781, owner).unwrap();
    let sock = pool.mknod(Ino::ROOT, b"sock", libc::S_IFSOCK, 77, owner).unwrap();
    let plain = pool.mknod(Ino::ROOT, b"plain", 0, 0, owner).unwrap();
    assert_eq!(errno(pool.mknod(Ino::ROOT, b"d", libc::S_IFDIR, 0, owner)), libc::EPERM);
    assert_eq!(errno(pool.mknod(Ino::ROOT, b"l", libc::S_IFLNK, 0, owner)), libc::EINVAL);
    assert_eq!(errno(pool.mknod(Ino::ROOT, b"fifo", libc::S_IFIFO, 0, owner)), libc::EEXIST);
    assert_eq!(fifo.mode, 0o644, "the umask applies");
    assert_eq!(sock.rdev, 0, "only device nodes carry a device number");
    assert_eq!(plain.kind, InodeKind::File);
    pool.link(fifo.ino, Ino::ROOT, b"fifo2").unwrap();
    pool.setattr(chr.ino, &SetAttr { uid: Some(5), mode: Some(0o640), ..SetAttr::default() }).unwrap();
    assert_eq!(errno(pool.open_file(fifo.ino)), libc::EINVAL, "a FIFO is never opened as a file here");
    t.reopen();
    let pool = t.pool();
    let kinds: Vec<(InodeKind, u64)> = [fifo.ino, chr.ino, blk.ino, sock.ino]
        .iter()
        .map(|ino| pool.getattr(*ino).map(|a| (a.kind, a.rdev)).unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            (InodeKind::Fifo, 0),
            (InodeKind::CharDevice, 0x0103),
            (InodeKind::BlockDevice, 0x0781),
            (InodeKind::Socket, 0)
        ]
    );
    assert_eq!(pool.getattr(fifo.ino).unwrap().nlink, 2);
    let chr = pool.getattr(chr.ino).unwrap();
    assert_eq!((chr.uid, chr.mode, chr.size, chr.allocated_bytes), (5, 0o640, 0, 0));
    assert!(pool.state().file_extents.is_empty());
    pool.state().check().unwrap();
}

#[test]
fn a_file_takes_at_most_65000_links_as_on_ext4() {
    // 65,000 commits: the whole-state check after each would be quadratic; once at the end.
    let options = dfs_engine::PoolOptions { check_invariants: false, ..common::options() };
    let mut t = TestPool::with_options(&[64, 64, 64], "replicate:2", options);
    let pool = t.pool();
    let ino = pool.mknod(Ino::ROOT, b"f", libc::S_IFREG, 0, OWNER).unwrap().ino;
    let dir = pool.mkdir(Ino::ROOT, b"links", OWNER).unwrap().ino;
    for i in 1..dfs_engine::data::namespace::LINKS_MAX {
        pool.link(ino, dir, format!("l{i}").as_bytes()).unwrap();
    }
    assert_eq!(pool.getattr(ino).unwrap().nlink, dfs_engine::data::namespace::LINKS_MAX);
    assert_eq!(errno(pool.link(ino, dir, b"one-more")), libc::EMLINK);
    pool.unlink(dir, b"l1").unwrap();
    pool.link(ino, dir, b"one-more").unwrap();
    pool.state().check().unwrap();
}

#[test]
fn extended_attributes_follow_linux_limits_and_survive_a_reopen() {
    let mut t = TestPool::new(&[64, 64, 64], "replicate:2");
    let ino = t.write_file("f", b"data");
    let pool = t.pool();
    let link = pool.symlink(Ino::ROOT, b"link", b"f", OWNER).unwrap().ino;
    pool.setxattr(ino, b"user.a", b"1", SetMode::Any).unwrap();
    assert_eq!(errno(pool.setxattr(ino, b"user.a", b"2", SetMode::Create)), libc::EEXIST);
    assert_eq!(errno(pool.setxattr(ino, b"user.b", b"2", SetMode::Replace)), libc::ENODATA);
    pool.setxattr(ino, b"user.a", b"3", SetMode::Replace).unwrap();
    pool.setxattr(ino, b"trusted.t", b"", SetMode::Any).unwrap();
    let big = vec![7u8; VALUE_BYTES_MAX];
    pool.setxattr(ino, b"security.big", &big, SetMode::Any).unwrap();
    assert_eq!(errno(pool.setxattr(ino, b"user.huge", &[0; VALUE_BYTES_MAX + 1], SetMode::Any)), libc::E2BIG);
    assert_eq!(errno(pool.setxattr(ino, &[b'u'; 256], b"", SetMode::Any)), libc::ERANGE);
    assert_eq!(errno(pool.setxattr(ino, b"other.x", b"", SetMode::Any)), libc::EOPNOTSUPP);
    assert_eq!(errno(pool.setxattr(ino, b"system.other", b"", SetMode::Any)), libc::EOPNOTSUPP);
    assert_eq!(errno(pool.setxattr(ino, b"user.", b"", SetMode::Any)), libc::EINVAL);
    assert_eq!(errno(pool.setxattr(link, b"user.x", b"", SetMode::Any)), libc::EPERM);
    pool.setxattr(link, b"trusted.x", b"on a link", SetMode::Any).unwrap();
    // The inode's space: a second maximal value fits, a third does not, and the refusal
    // changes nothing.
    pool.setxattr(ino, b"security.big2", &big[..VALUE_BYTES_MAX - 100], SetMode::Any).unwrap();
    let before = pool.state().clone();
    let error = pool.setxattr(ino, b"security.big3", &big, SetMode::Any).unwrap_err();
    assert_eq!(error.errno(), libc::ENOSPC, "{error}");
    assert!(error.to_string().contains(&INODE_BYTES_MAX.to_string()), "{error}");
    assert_eq!(pool.state(), &before);
    // The policy reads as the effective one, is never listed, and "exists".
    assert_eq!(pool.getxattr(ino, POLICY_XATTR).unwrap(), b"replicate:2");
    assert_eq!(errno(pool.setxattr(ino, POLICY_XATTR, b"replicate:1", SetMode::Create)), libc::EEXIST);
    assert_eq!(errno(pool.setxattr(ino, POLICY_XATTR, b"mirror", SetMode::Any)), libc::EINVAL);
    assert_eq!(errno(pool.getxattr(link, POLICY_XATTR)), libc::ENODATA);
    // Writing back the policy a file inherits (what a copy tool restores) pins nothing.
    assert!(!pool.is_pinned(ino));
    pool.setxattr(ino, POLICY_XATTR, b"replicate:2", SetMode::Any).unwrap();
    assert!(!pool.is_pinned(ino), "setting the inherited policy pinned the file against tiering");
    let names = |pool: &dfs_engine::Pool, privileged| pool.listxattr(ino, privileged).unwrap();
    assert_eq!(names(pool, true), [&b"security.big"[..], b"security.big2", b"trusted.t", b"user.a"]);
    assert_eq!(names(pool, false), [&b"security.big"[..], b"security.big2", b"user.a"], "trusted.* for root only");
    t.reopen();
    let pool = t.pool();
    assert_eq!(pool.getxattr(ino, b"user.a").unwrap(), b"3");
    assert_eq!(pool.getxattr(ino, b"trusted.t").unwrap(), b"");
    assert_eq!(pool.getxattr(ino, b"security.big").unwrap(), big);
    assert_eq!(pool.getxattr(link, b"trusted.x").unwrap(), b"on a link");
    pool.removexattr(ino, b"user.a").unwrap();
    assert_eq!(errno(pool.removexattr(ino, b"user.a")), libc::ENODATA);
    assert_eq!(errno(pool.getxattr(ino, b"user.a")), libc::ENODATA);
    // Unlinking the last name takes the attributes with the inode.
    pool.unlink(Ino::ROOT, b"f").unwrap();
    assert!(!pool.state().xattrs.contains_key(&ino));
    pool.state().check().unwrap();
}

fn acl(entries: &[(Tag, u16)]) -> Vec<u8> {
    Acl::new(entries.iter().map(|(tag, perm)| Entry { tag: *tag, perm: *perm }).collect()).unwrap().to_xattr()
}

#[test]
fn acls_set_the_mode_follow_chmod_and_are_inherited() {
    let mut t = TestPool::new(&[64, 64, 64], "replicate:2");
    let ino = t.write_file("f", b"data");
    let pool = t.pool();
    let named = acl(&[(Tag::UserObj, 6), (Tag::User(1000), 6), (Tag::GroupObj, 4), (Tag::Mask, 6), (Tag::Other, 0)]);
    pool.setxattr(ino, ACCESS_XATTR, &named, SetMode::Any).unwrap();
    assert_eq!(pool.getattr(ino).unwrap().mode, 0o660, "the mask shows in the group bits");
    pool.setattr(ino, &SetAttr { mode: Some(0o604), ..SetAttr::default() }).unwrap();
    let after = Acl::parse(&pool.getxattr(ino, ACCESS_XATTR).unwrap()).unwrap();
    assert_eq!(after.mode_bits(), 0o604, "chmod rewrote the ACL's owner, mask and other");
    assert!(after.entries().contains(&Entry { tag: Tag::User(1000), perm: 6 }));
    // An ACL the mode says in full is not stored.
    let minimal = acl(&[(Tag::UserObj, 7), (Tag::GroupObj, 5), (Tag::Other, 1)]);
    pool.setxattr(ino, ACCESS_XATTR, &minimal, SetMode::Any).unwrap();
    assert_eq!(pool.getattr(ino).unwrap().mode, 0o751);
    assert_eq!(errno(pool.getxattr(ino, ACCESS_XATTR)), libc::ENODATA);
    assert_eq!(errno(pool.setxattr(ino, ACCESS_XATTR, b"garbage", SetMode::Any)), libc::EINVAL);
    assert_eq!(errno(pool.setxattr(ino, DEFAULT_XATTR, &minimal, SetMode::Any)), libc::EACCES);
    // A directory's default ACL decides its children's bits (not the umask); a
    // subdirectory inherits it as its own default.
    let dir = pool.mkdir(Ino::ROOT, b"d", Owner { mode: 0o755, umask: 0o022, ..OWNER }).unwrap().ino;
    let default = acl(&[(Tag::UserObj, 7), (Tag::User(1000), 7), (Tag::GroupObj, 5), (Tag::Mask, 7), (Tag::Other, 0)]);
    pool.setxattr(dir, DEFAULT_XATTR, &default, SetMode::Any).unwrap();
    let child = pool.create(dir, b"new", Owner { mode: 0o666, umask: 0o077, ..OWNER }).unwrap();
    assert_eq!(child.mode, 0o660, "umask 077 would have given 0600");
    let child_acl = Acl::parse(&pool.getxattr(child.ino, ACCESS_XATTR).unwrap()).unwrap();
    assert!(child_acl.entries().contains(&Entry { tag: Tag::User(1000), perm: 7 }));
    assert_eq!(errno(pool.getxattr(child.ino, DEFAULT_XATTR)), libc::ENODATA, "files take no default ACL");
    let sub = pool.mkdir(dir, b"sub", Owner { mode: 0o777, umask: 0o077, ..OWNER }).unwrap();
    assert_eq!(sub.mode, 0o770);
    assert_eq!(pool.getxattr(sub.ino, DEFAULT_XATTR).unwrap(), default);
    let link = pool.symlink(dir, b"link", b"new", OWNER).unwrap();
    assert_eq!((link.mode, errno(pool.getxattr(link.ino, ACCESS_XATTR))), (0o777, libc::ENODATA));
    t.reopen();
    let pool = t.pool();
    assert_eq!(pool.getxattr(sub.ino, DEFAULT_XATTR).unwrap(), default);
    pool.state().check().unwrap();
}

#[test]
fn a_setgid_directory_gives_its_group_and_its_bit() {
    let mut t = TestPool::new(&[64, 64, 64], "replicate:2");
    let pool = t.pool();
    let dir = pool.mkdir(Ino::ROOT, b"g", Owner { mode: 0o775, uid: 0, gid: 0, umask: 0 }).unwrap().ino;
    pool.setattr(dir, &SetAttr { gid: Some(4242), mode: Some(0o2775), ..SetAttr::default() }).unwrap();
    let owner = Owner { mode: 0o777, uid: 1000, gid: 1000, umask: 0o022 };
    let file = pool.create(dir, b"f", owner).unwrap();
    let sub = pool.mkdir(dir, b"sub", owner).unwrap();
    let fifo = pool.mknod(dir, b"p", libc::S_IFIFO | 0o666, 0, owner).unwrap();
    assert_eq!((file.gid, file.mode), (4242, 0o755));
    assert_eq!((sub.gid, sub.mode), (4242, 0o2755));
    assert_eq!(fifo.gid, 4242);
    let plain = pool.create(Ino::ROOT, b"elsewhere", owner).unwrap();
    assert_eq!(plain.gid, 1000);
}

#[test]
fn range_operations_punch_zero_seek_copy_and_refuse_cleanly() {
    const MIB: u64 = 1 << 20;
    let mut t = TestPool::new(&[64, 64, 64], "replicate:2");
    let data: Vec<u8> = (0..3 * MIB).map(|i| (i % 251) as u8 + 1).collect();
    let ino = t.write_file("f", &data);
    let pool = t.pool();
    let fh = pool.open_file(ino).unwrap();
    assert_eq!(errno(pool.fallocate(fh, 0, 0, 0)), libc::EINVAL);
    assert_eq!(errno(pool.fallocate(fh, 0, MIB, libc::FALLOC_FL_PUNCH_HOLE)), libc::EOPNOTSUPP);
    assert_eq!(errno(pool.fallocate(fh, 0, MIB, libc::FALLOC_FL_COLLAPSE_RANGE)), libc::EOPNOTSUPP);
    assert_eq!(errno(pool.fallocate(fh, 0, 1 << 40, 0)), libc::ENOSPC, "more than the pool holds");
    assert_eq!(pool.getattr(ino).unwrap().size, 3 * MIB, "refusals change nothing");
    // Punch [1 MiB - 10, 2 MiB + 10): chunk 1 becomes a hole, its neighbours zeroed in part.
    let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    pool.fallocate(fh, MIB - 10, MIB + 20, punch).unwrap();
    assert_eq!(pool.seek_data_hole(fh, 0, Seek::Hole).unwrap(), MIB, "buffered: a punched chunk is a hole");
    pool.fallocate(fh, 5, 5, libc::FALLOC_FL_ZERO_RANGE).unwrap();
    pool.fallocate(fh, 4 * MIB, MIB, 0).unwrap();
    assert_eq!(pool.getattr(ino).unwrap().size, 5 * MIB);
    pool.fallocate(fh, 0, 8 * MIB, libc::FALLOC_FL_KEEP_SIZE).unwrap();
    assert_eq!(pool.getattr(ino).unwrap().size, 5 * MIB, "KEEP_SIZE keeps it");
    pool.fsync(fh).unwrap();
    let mut expected = data.clone();
    expected[5..10].fill(0);
    expected[(MIB - 10) as usize..(2 * MIB + 10) as usize].fill(0);
    expected.resize(5 * MIB as usize, 0);
    assert_eq!(pool.read(fh, 0, 5 * MIB as usize).unwrap(), expected);
    let seek = |pool: &dfs_engine::Pool, offset, how| pool.seek_data_hole(fh, offset, how).map_err(|e| e.errno());
    assert_eq!(seek(pool, 0, Seek::Data), Ok(0));
    assert_eq!(seek(pool, 0, Seek::Hole), Ok(MIB));
    assert_eq!(seek(pool, MIB, Seek::Data), Ok(2 * MIB));
    assert_eq!(seek(pool, 2 * MIB, Seek::Hole), Ok(3 * MIB));
    assert_eq!(seek(pool, 3 * MIB, Seek::Data), Err(libc::ENXIO), "no data after the last extent");
    assert_eq!(seek(pool, 4 * MIB, Seek::Hole), Ok(4 * MIB));
    assert_eq!(seek(pool, 5 * MIB, Seek::Hole), Err(libc::ENXIO), "at the end");
    // copy_file_range into a second file, short at the source's end.
    let target = pool.create(Ino::ROOT, b"copy", OWNER).unwrap().ino;
    let out = pool.open_file(target).unwrap();
    assert_eq!(pool.copy_range(fh, 2 * MIB, out, 7, 10 * MIB).unwrap(), 3 * MIB);
    assert_eq!(pool.copy_range(fh, 9 * MIB, out, 0, 10).unwrap(), 0);
    pool.release(out).unwrap();
    pool.release(fh).unwrap();
    t.reopen();
    let copied = t.read_file("/copy").unwrap();
    assert_eq!(copied.len() as u64, 3 * MIB + 7);
    assert_eq!(&copied[7..], &expected[2 * MIB as usize..]);
    assert_eq!(t.read_file("/f").unwrap(), expected);
    // The punched chunk holds no extent at all.
    assert!(!t.pool().state().file_extents[&ino].contains_key(&1));
    t.pool().state().check().unwrap();
}

#[test]
fn relatime_records_a_read_once_after_each_change() {
    let mut t = TestPool::new(&[64, 64, 64], "replicate:2");
    let ino = t.write_file("f", b"data");
    let pool = t.pool();
    // Past the coarse clock's tick (a few ms), so "now" differs from the creation time.
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert!(pool.touch_atime(ino).unwrap(), "atime not newer than mtime: recorded");
    assert!(!pool.touch_atime(ino).unwrap(), "already newer: left alone");
    let before = pool.getattr(ino).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    pool.setattr(ino, &SetAttr { mode: Some(0o600), ..SetAttr::default() }).unwrap();
    assert!(pool.touch_atime(ino).unwrap(), "a change (ctime) makes the next read count again");
    let after = pool.getattr(ino).unwrap();
    assert!(after.atime > before.atime && after.atime >= after.ctime);
    assert_eq!(after.mtime, before.mtime, "a read changes only atime");
    assert!(matches!(pool.touch_atime(Ino(999_999)), Err(Error::NotFound(_))));
}
