//! One owner per pool, for real (issue 15, item 1): the rule does not hang on a path that
//! can be unlinked. With `POOL/lock` and the control socket deleted under a mounted pool,
//! a second mount is refused; a copy of the pool directory (its own lock) cannot serve the
//! same disks either; what the first mount acknowledged survives.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::io::Write;

use common::{fails, ok, pattern, Pool};

#[test]
fn a_second_owner_is_refused_even_with_the_lock_file_gone() {
    let pool = Pool::new("replicate:2", &[128, 128, 128]);
    let mount = pool.root.path().join("mnt");
    fs::create_dir(&mount).unwrap();
    ok(&["mount", "--pool", pool.path(), "--mountpoint", mount.to_str().unwrap()]);
    let data = pattern(1_500_000, 3);
    let mut file = fs::File::create(mount.join("kept")).unwrap();
    file.write_all(&data).unwrap();
    file.sync_all().unwrap();
    drop(file);
    let pool_dir = std::path::Path::new(pool.path());
    fs::remove_file(pool_dir.join("lock")).unwrap();
    fs::remove_file(pool_dir.join("control.sock")).unwrap();
    let second = pool.root.path().join("mnt2");
    fs::create_dir(&second).unwrap();
    let error = fails(&["mount", "--pool", pool.path(), "--mountpoint", second.to_str().unwrap()]);
    assert!(error.contains("in use by another process") && error.contains("EBUSY"), "{error}");
    // A copy of the pool directory has a lock of its own; the disks do not.
    let copy = pool.root.path().join("pool-copy");
    fs::create_dir(&copy).unwrap();
    fs::copy(pool_dir.join("pool.ron"), copy.join("pool.ron")).unwrap();
    let error = fails(&["ls", "--pool", copy.to_str().unwrap()]);
    assert!(error.contains("is in use by another process") && error.contains("EBUSY"), "{error}");
    assert!(error.contains("disk"), "the refusal names the disk: {error}");
    ok(&["umount", mount.to_str().unwrap()]);
    let back = pool.local("back");
    ok(&["get", "--pool", pool.path(), "/kept", back.to_str().unwrap()]);
    assert_eq!(fs::read(&back).unwrap(), data);
    // Once the owner is gone, the copy may open the disks (it is the same pool).
    ok(&["ls", "--pool", copy.to_str().unwrap()]);
}
