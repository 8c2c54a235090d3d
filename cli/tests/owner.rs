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

/// A pool another process holds without serving it — a daemon finishing its shutdown, a
/// command about to end — is waited for a few seconds, not refused at once: a command
/// started while the lock is held for under a second succeeds once it is released; one
/// facing a lock held on for longer fails with EBUSY, having changed nothing.
#[test]
fn a_command_waits_briefly_for_a_pool_held_without_a_daemon() {
    let pool = Pool::new("replicate:2", &[64, 64]);
    ok(&["mkdir", "--pool", pool.path(), "/d"]);
    let lock_path = std::path::Path::new(pool.path()).join("lock");
    let hold = |for_ms: u64| {
        let lock = fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&lock_path).unwrap();
        lock.lock().unwrap();
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(for_ms));
            drop(lock);
        })
    };
    let holder = hold(800);
    let started = std::time::Instant::now();
    let listing = ok(&["ls", "--pool", pool.path(), "/"]);
    assert!(listing.lines().any(|line| line.ends_with(" d")), "{listing}");
    assert!(started.elapsed() >= std::time::Duration::from_millis(700), "the command ran while the pool was held");
    holder.join().unwrap();
    let holder = hold(6_000);
    let error = fails(&["mkdir", "--pool", pool.path(), "/e"]);
    assert!(error.contains("in use by another process") && error.contains("EBUSY"), "{error}");
    holder.join().unwrap();
    let listing = ok(&["ls", "--pool", pool.path(), "/"]);
    assert!(!listing.lines().any(|line| line.ends_with(" e")), "the refused mkdir changed nothing: {listing}");
}
