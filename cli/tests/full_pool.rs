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
    mount_with(pool, mount, "")
}

/// Mounts with the mount options `options` (`-o`).
fn mount_with(pool: &Pool, mount: &Path, options: &str) -> Unmount {
    if !mount.exists() {
        fs::create_dir(mount).unwrap();
    }
    ok(&["mount", "--pool", pool.path(), "--mountpoint", mount.to_str().unwrap(), "-o", options]);
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
    a_write_that_does_not_fit_fails_itself("");
}

/// The same under the kernel's writeback cache, where a `write(2)` returns once cached:
/// near full, writable opens must bypass that cache for the failure to surface there.
#[test]
fn under_the_writeback_cache_a_write_that_does_not_fit_fails_itself_too() {
    a_write_that_does_not_fit_fails_itself("writeback_cache");
}

fn a_write_that_does_not_fit_fails_itself(options: &str) {
    let (pool, source, data) = nearly_full();
    let mnt = pool.local("mnt");
    let unmount = mount_with(&pool, &mnt, options);
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
    // A read-write descriptor (kept in the page cache, and under the writeback cache
    // sent past it on a nearly full pool): the `write(2)` that does not fit fails.
    let mut rw =
        fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(mnt.join("rw")).unwrap();
    let refused = data.chunks(1 << 20).find_map(|chunk| rw.write_all(chunk).err());
    let refused = refused.expect("50 MB written read-write into the 34 MB left?");
    assert_eq!(refused.raw_os_error(), Some(libc::ENOSPC), "{refused}");
    rw.sync_all().unwrap();
    drop(rw);

    // In the mount: a prefix of what was written, as long as the file says.
    let mut seen = Vec::new();
    for name in ["copy", "dd", "rw"] {
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
    for (name, len) in ["copy", "dd", "rw"].iter().zip(&seen) {
        let entry = entries.as_array().unwrap().iter().find(|e| e["name"] == *name).unwrap();
        assert_eq!(entry["size"].as_u64(), Some(*len as u64), "{name} in the pool");
    }
    let unmount = mount_with(&pool, &mnt, options);
    for (name, len) in ["copy", "dd", "rw"].iter().zip(&seen) {
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

/// `df`'s size, used and available bytes for `path`.
fn df(path: &Path) -> (u64, u64, u64) {
    let out = Command::new("df").args(["-B1", "--output=size,used,avail"]).arg(path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let figures: Vec<i64> = text.lines().nth(1).unwrap().split_whitespace().map(|f| f.parse().unwrap()).collect();
    assert!(figures.iter().all(|f| *f >= 0), "df shows a negative figure: {text}");
    (figures[0] as u64, figures[1] as u64, figures[2] as u64)
}

/// Bytes the pool's disks really hold for fragments: the blocks allocated to their
/// segment files (punched ranges hold none) and to any fragment files.
fn fragment_bytes(pool: &Pool) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for disk in &pool.disks {
        for folder in ["segments", "fragment"] {
            for entry in fs::read_dir(disk.join(folder)).into_iter().flatten() {
                total += entry.unwrap().metadata().unwrap().blocks() * 512;
            }
        }
    }
    total
}

/// Ten times the pool's room written through the mount — overwrites in place, partial
/// overwrites, delete and create, replace by rename — while the live files fit easily:
/// no write ever fails for room, `df` never shows more room than there is nor loses
/// track of it, and once the last barrier ran the disks hold the live data × the
/// policy's overhead, within 10%.
#[test]
fn overwriting_and_deleting_ten_times_the_pool_never_runs_out_of_room() {
    use rand::{Rng, SeedableRng};
    const FILES: usize = 6;
    const FILE_BYTES: usize = 2 << 20;
    let pool = Pool::new("erasure:4+2", &[16; 6]);
    let mnt = pool.local("mnt");
    let unmount = mount(&pool, &mnt);
    let (size, _, _) = df(&mnt);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x5ACE);
    let mut live: Vec<Vec<u8>> = Vec::new();
    for i in 0..FILES {
        live.push(pattern(FILE_BYTES, i as u64));
        write_synced(&mnt.join(format!("f{i}")), &live[i]).unwrap();
    }
    let mut written = 0u64;
    let mut step = 0u64;
    while written < 10 * size {
        step += 1;
        let i = rng.random_range(0..FILES);
        let path = mnt.join(format!("f{i}"));
        let fresh = pattern(FILE_BYTES, 1_000 + step);
        let how = rng.random_range(0..4);
        let result = match how {
            0 => fs::write(&path, &fresh).map(|()| live[i] = fresh),
            1 => {
                let at = rng.random_range(0..FILE_BYTES >> 20) << 20;
                let patch = &fresh[..1 << 20];
                let done = fs::OpenOptions::new().write(true).open(&path).and_then(|mut f| {
                    use std::io::{Seek, SeekFrom};
                    f.seek(SeekFrom::Start(at as u64))?;
                    f.write_all(patch)
                });
                done.map(|()| live[i][at..at + patch.len()].copy_from_slice(patch))
            }
            2 => fs::remove_file(&path).and_then(|()| fs::write(&path, &fresh)).map(|()| live[i] = fresh),
            _ => {
                let tmp = mnt.join(format!("f{i}.tmp"));
                fs::write(&tmp, &fresh).and_then(|()| fs::rename(&tmp, &path)).map(|()| live[i] = fresh)
            }
        };
        result.unwrap_or_else(|e| panic!("step {step} (kind {how}) after {written} bytes written: {e}"));
        written += if how == 1 { 1 << 20 } else { FILE_BYTES as u64 };
        if step.is_multiple_of(16) {
            fs::File::open(&path).unwrap().sync_all().unwrap();
            // And a barrier of the whole pool, which frees what the barriers before it
            // released: what `df` shows then is the live files and what the last steps
            // freed, however far the paced background reclaim has got. (Without it the
            // check raced the writer: a fast run outran the reclaim.)
            fs::File::open(&mnt).unwrap().sync_all().unwrap();
            let (now_size, used, avail) = df(&mnt);
            assert_eq!(now_size, size, "step {step}: the pool's size changed");
            assert!(used + avail <= size, "step {step}: df shows {used} used + {avail} free of {size}");
            assert!(avail >= size / 2, "step {step}: only {avail} of {size} bytes free with 12 MiB live");
        }
    }
    // A barrier: everything freed is free as far as `df` goes (a shared barrier hands
    // the deletion of what it freed to a thread, so an fsync does not wait for it).
    fs::File::open(&mnt).unwrap().sync_all().unwrap();
    let live_bytes = (FILES * FILE_BYTES) as u64;
    let (_, used, _) = df(&mnt);
    assert!(used.abs_diff(live_bytes) * 10 <= live_bytes, "df says {used} used for {live_bytes} live");
    for (i, data) in live.iter().enumerate() {
        assert!(read_uncached(&mnt.join(format!("f{i}"))) == *data, "f{i} does not read back what was written");
    }
    ok(&["umount", mnt.to_str().unwrap()]);
    drop(unmount);
    // The last barrier, at unmount: everything freed is deleted.
    let raw = fragment_bytes(&pool);
    let expected = live_bytes * 3 / 2;
    assert!(raw.abs_diff(expected) * 10 <= expected, "disks hold {raw} bytes of fragments for {expected} expected");
}

/// Unmounts a filesystem mounted for a test (`umount -l`) on drop.
struct Filesystem(PathBuf);

impl Drop for Filesystem {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Three disks that are directories of one 96 MiB filesystem, without declared sizes:
/// each sees the filesystem's free space as its own, and the pool counts it once. `df`
/// shows what `erasure:2+1` can store in 96 MiB, not three times that; a write the
/// filesystem cannot take fails itself with ENOSPC (before, every write was taken and
/// the `fsync` failed), and the file holds what was written before it.
#[test]
fn disks_on_one_filesystem_count_its_free_space_once() {
    let root = tempfile::tempdir().unwrap();
    let shared = root.path().join("fs");
    fs::create_dir(&shared).unwrap();
    let status = Command::new("mount").args(["-t", "tmpfs", "-o", "size=96m", "tmpfs"]).arg(&shared).status().unwrap();
    assert!(status.success(), "mounting a tmpfs needs root");
    let filesystem = Filesystem(shared.clone());
    let pool = Pool { root, disks: (0..3).map(|i| shared.join(format!("disk{i}"))).collect() };
    ok(&["init", "--pool", pool.path(), "--policy", "erasure:2+1"]);
    for (i, disk) in pool.disks.iter().enumerate() {
        fs::create_dir(disk).unwrap();
        let added = ok(&["add-disk", "--pool", pool.path(), "--disk", disk.to_str().unwrap()]);
        // Said once, when the filesystem first holds two disks.
        assert_eq!(added.contains("is a directory of the same filesystem as d1"), i == 1, "{added}");
    }
    let disks = pool.json("list-disks");
    let capacities: u64 = disks.as_array().unwrap().iter().map(|d| d["capacity_bytes"].as_u64().unwrap()).sum();
    assert!(capacities <= 96 << 20, "three disks on 96 MiB claim {capacities} bytes");
    for disk in disks.as_array().unwrap() {
        assert_eq!(disk["shares_filesystem_with"].as_array().unwrap().len(), 2, "{disk}");
    }
    let listed = ok(&["list-disks", "--pool", pool.path()]);
    assert!(listed.contains("d1, d2, d3 are directories of one filesystem"), "{listed}");

    let mnt = pool.local("mnt");
    let unmount = mount(&pool, &mnt);
    let (size, _, available) = df(&mnt);
    assert!(size <= 64 << 20, "df shows {size} bytes where erasure:2+1 fits at most 64 MiB");
    assert!(available > 48 << 20, "df shows only {available} bytes free of 64 MiB");

    let data = pattern(128 << 20, 11);
    let source = pool.local("source");
    fs::write(&source, &data).unwrap();
    let dd = Command::new("dd")
        .arg(format!("if={}", source.display()))
        .arg(format!("of={}", mnt.join("big").display()))
        .args(["bs=1M", "conv=fsync"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&dd.stderr);
    assert!(!dd.status.success(), "128 MiB fit in 64?");
    assert!(stderr.contains("error writing") && stderr.contains("No space left on device"), "{stderr}");

    let held = read_uncached(&mnt.join("big"));
    assert!(held.len() > 40 << 20, "only {} bytes taken before the pool was full", held.len());
    assert!(held == data[..held.len()], "the file is not what was written");
    ok(&["umount", mnt.to_str().unwrap()]);
    drop(unmount);
    let unmount = mount(&pool, &mnt);
    assert!(read_uncached(&mnt.join("big")) == data[..held.len()], "after a remount");
    ok(&["umount", mnt.to_str().unwrap()]);
    drop(unmount);
    drop(filesystem);
}
