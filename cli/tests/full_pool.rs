//! A nearly full pool through a real mount (issue 15, items 2 and 3): a write the pool
//! cannot store fails itself with ENOSPC, and the file is then exactly what the writes
//! before it made — the same size and bytes in the mount, after a remount, and as the
//! pool committed them, never a size whose bytes were dropped or zeros in their place.
//! Space that an unlink freed is usable at once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{ok, pattern, read_uncached, Pool};

/// Unmounts (lazily) on drop, so a failing test leaves no daemon behind.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

fn mount(pool: &Pool, mount: &Path) -> Unmount {
    if !mount.exists() {
        fs::create_dir(mount).unwrap();
    }
    ok(&["mount", "--pool", pool.path(), "--mountpoint", mount.to_str().unwrap()]);
    Unmount(mount.to_path_buf())
}

fn write_synced(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut file = fs::File::create(path)?;
    file.write_all(data)?;
    file.sync_all()
}

/// Two 64 MiB disks mirrored: 64 MiB of room, 30 MB of it taken.
fn nearly_full() -> (Pool, PathBuf, Vec<u8>) {
    let pool = Pool::new("replicate:2", &[64, 64]);
    let source = pool.local("source");
    let data = pattern(50_000_000, 7);
    fs::write(&source, &data).unwrap();
    (pool, source, data)
}

#[test]
fn a_write_the_pool_cannot_store_fails_itself_and_the_file_keeps_what_was_written() {
    let (pool, source, data) = nearly_full();
    let mnt = pool.local("mnt");
    let unmount = mount(&pool, &mnt);
    write_synced(&mnt.join("first"), &data[..30_000_000]).unwrap();

    let cp = Command::new("cp").arg(&source).arg(mnt.join("copy")).output().unwrap();
    let stderr = String::from_utf8_lossy(&cp.stderr);
    assert!(!cp.status.success(), "50 MB fit in the 34 MB left?");
    assert!(stderr.contains("No space left on device"), "{stderr}");
    let dd = Command::new("dd")
        .arg(format!("if={}", source.display()))
        .arg(format!("of={}", mnt.join("dd").display()))
        .arg("bs=1M")
        .output()
        .unwrap();
    assert!(!dd.status.success());
    assert!(String::from_utf8_lossy(&dd.stderr).contains("No space left on device"));

    // In the mount: a prefix of what was written, as long as the file says.
    let mut seen = Vec::new();
    for name in ["copy", "dd"] {
        let held = read_uncached(&mnt.join(name));
        assert_eq!(held.len() as u64, fs::metadata(mnt.join(name)).unwrap().len(), "{name}");
        assert!(held == data[..held.len()], "{name}: {} bytes that are not what was written", held.len());
        seen.push(held.len());
    }
    assert!(seen[0] > 0, "cp wrote nothing before the pool filled");

    // What the pool committed is the same.
    ok(&["umount", mnt.to_str().unwrap()]);
    drop(unmount);
    let listing = ok(&["ls", "--pool", pool.path(), "/", "--json"]);
    let entries: serde_json::Value = serde_json::from_str(&listing).unwrap();
    for (name, len) in ["copy", "dd"].iter().zip(&seen) {
        let entry = entries.as_array().unwrap().iter().find(|e| e["name"] == *name).unwrap();
        assert_eq!(entry["size"].as_u64(), Some(*len as u64), "{name} in the pool");
    }
    let unmount = mount(&pool, &mnt);
    for (name, len) in ["copy", "dd"].iter().zip(&seen) {
        assert_eq!(read_uncached(&mnt.join(name)), data[..*len], "{name} after a remount");
    }
    ok(&["umount", mnt.to_str().unwrap()]);
    drop(unmount);
}

#[test]
fn space_an_unlink_freed_is_usable_at_once() {
    let (pool, _, data) = nearly_full();
    let mnt = pool.local("mnt");
    let unmount = mount(&pool, &mnt);
    write_synced(&mnt.join("old"), &data[..40_000_000]).unwrap();
    for round in 0..3 {
        fs::remove_file(mnt.join("old")).unwrap();
        // At once: no barrier has run since the unlink.
        write_synced(&mnt.join("old"), &data[..40_000_000])
            .unwrap_or_else(|e| panic!("round {round}: writing into the space just freed: {e}"));
    }
    assert_eq!(read_uncached(&mnt.join("old")), data[..40_000_000]);
    ok(&["umount", mnt.to_str().unwrap()]);
    drop(unmount);
}
