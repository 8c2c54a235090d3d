//! Disks that go away and come back (issue 14), through a real mount on real directories:
//! with exactly K+M disks, a disk directory moved away during a stream of writes is
//! offline, not failed — every write and fsync succeeds, `df` stays above zero, health
//! warns, nothing is rebuilt meanwhile — and when it is moved back it rejoins and only
//! what was written meanwhile is repaired. Never back, it is failed after the grace
//! period and rebuilt onto a spare. Below the write quorum writes fail with EIO, never
//! ENOSPC, and nothing acknowledged is lost.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::io::Write;
use std::path::Path;

use common::{eventually, fragments_on, ok, pattern, read_uncached, run, Pool};

fn write_synced(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut file = fs::File::create(path)?;
    file.write_all(data)?;
    file.sync_all()
}

fn df_total_bytes(mount: &Path) -> u64 {
    let out = std::process::Command::new("df").args(["-B1", "--output=size"]).arg(mount).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().lines().nth(1).unwrap().trim().parse().unwrap()
}

fn disk_state(pool: &Pool, id: &str) -> String {
    let disks = pool.json("list-disks");
    let disk = disks.as_array().unwrap().iter().find(|d| d["id"] == id).unwrap().clone();
    disk["state"].as_str().unwrap().to_string()
}

/// Unmounts (lazily) on drop, so a failing test leaves no daemon behind.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

fn mounted(pool: &Pool) -> (std::path::PathBuf, Unmount) {
    let mount = pool.root.path().join("mnt");
    fs::create_dir(&mount).unwrap();
    ok(&["mount", "--pool", pool.path(), "--mountpoint", mount.to_str().unwrap()]);
    (mount.clone(), Unmount(mount))
}

#[test]
fn a_disk_away_for_five_seconds_during_writes_costs_nothing_and_resyncs() {
    let pool = Pool::new("erasure:4+2", &[256, 256, 256, 256, 256, 256]);
    let (mount, _unmount) = mounted(&pool);
    let before = pattern(3_000_000, 1);
    write_synced(&mount.join("before"), &before).unwrap();
    let fragments_elsewhere: usize = [0, 1, 2, 4, 5].iter().map(|d| fragments_on(&pool.disks[*d]).len()).sum();
    let away = pool.root.path().join("disk3.away");
    fs::rename(&pool.disks[3], &away).unwrap();
    let moved_at = std::time::Instant::now();
    let mut written = Vec::new();
    let mut warned = false;
    let mut i = 0;
    while moved_at.elapsed() < std::time::Duration::from_secs(5) || i < 6 {
        let data = pattern(700_000 + i * 1000, 100 + i as u64);
        let path = mount.join(format!("during{i}"));
        write_synced(&path, &data).unwrap_or_else(|e| panic!("write {i} failed while the disk was away: {e}"));
        written.push((path, data));
        assert!(df_total_bytes(&mount) > 0, "df shows a size of 0 while a disk is away");
        if !warned {
            let health = run(&["health", "--pool", pool.path()]);
            let text = String::from_utf8_lossy(&health.stdout).to_string();
            if text.contains("offline") {
                assert!(health.status.success(), "an offline disk is a warning, not unhealthy: {text}");
                warned = true;
            }
        }
        i += 1;
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    assert!(warned, "health never warned that the disk is offline");
    assert_eq!(disk_state(&pool, "d4"), "offline");
    let rebuilt: usize = [0, 1, 2, 4, 5].iter().map(|d| fragments_on(&pool.disks[*d]).len()).sum();
    let written_meanwhile: usize = written.iter().map(|(_, d)| d.len().div_ceil(1 << 20) * 5).sum();
    assert!(
        rebuilt <= fragments_elsewhere + written_meanwhile,
        "fragments were rebuilt during the grace period: {rebuilt} > {fragments_elsewhere} + {written_meanwhile}"
    );
    fs::rename(&away, &pool.disks[3]).unwrap();
    // Health last: while the disk is still away it is only a warning ("healthy, with
    // warnings"), and its rejoin moves what it is owed into the repair queue, so a health
    // read before the state could pass with repairs still to come.
    eventually("the disk to rejoin and its extents to be repaired", || {
        disk_state(&pool, "d4") == "active"
            && pool.json("list-disks").as_array().unwrap().iter().all(|d| d["owed_extents"] == 0)
            && run(&["health", "--pool", pool.path()]).status.success()
            && ok(&["health", "--pool", pool.path()]).contains("healthy")
    });
    let health = ok(&["health", "--pool", pool.path()]);
    assert!(!health.contains("offline"), "{health}");
    assert_eq!(read_uncached(&mount.join("before")), before);
    for (path, data) in &written {
        assert_eq!(read_uncached(path), *data, "{}", path.display());
    }
    ok(&["umount", mount.to_str().unwrap()]);
    // Every extent is whole again: the returning disk got what it was owed.
    let extents = pool.json("list-extents");
    for extent in extents.as_array().unwrap() {
        assert_eq!(extent["fragments_available"], extent["fragments_total"], "{extent}");
    }
}

#[test]
fn a_disk_that_never_returns_is_failed_after_the_grace_period_and_rebuilt_onto_a_spare() {
    let pool = Pool::new("erasure:4+2", &[256, 256, 256, 256, 256, 256]);
    ok(&["availability", "--pool", pool.path(), "--grace", "3s"]);
    // Without tiering nothing is re-encoded to fit the five disks left: the rebuild
    // needs the spare.
    ok(&["tiering", "--pool", pool.path(), "--disable"]);
    let (mount, _unmount) = mounted(&pool);
    let before = pattern(2_500_000, 2);
    write_synced(&mount.join("before"), &before).unwrap();
    fs::rename(&pool.disks[1], pool.root.path().join("disk1.gone")).unwrap();
    let during = pattern(1_500_000, 3);
    write_synced(&mount.join("during"), &during).unwrap();
    eventually("the offline disk to be failed after its grace period", || disk_state(&pool, "d2") == "failed");
    let spare = pool.root.path().join("spare");
    fs::create_dir(&spare).unwrap();
    ok(&["add-disk", "--pool", pool.path(), "--disk", spare.to_str().unwrap(), "--capacity", "256MiB"]);
    // Rebuilt onto the spare: nothing refers to the failed disk, and every extent is whole.
    eventually("the rebuild onto the spare", || {
        let disks = pool.json("list-disks");
        let failed_empty =
            disks.as_array().unwrap().iter().find(|d| d["id"] == "d2").is_some_and(|d| d["fragments"] == 0);
        failed_empty
            && pool
                .json("list-extents")
                .as_array()
                .unwrap()
                .iter()
                .all(|e| e["fragments_available"] == e["fragments_total"])
    });
    assert_eq!(fragments_on(&spare).len(), 5, "every extent has a fragment on the spare");
    assert_eq!(read_uncached(&mount.join("before")), before);
    assert_eq!(read_uncached(&mount.join("during")), during);
    ok(&["umount", mount.to_str().unwrap()]);
}

#[test]
fn below_the_write_quorum_writes_fail_with_eio_and_nothing_acknowledged_is_lost() {
    let pool = Pool::new("erasure:4+2", &[256, 256, 256, 256, 256, 256]);
    let (mount, _unmount) = mounted(&pool);
    let big = pattern(2_000_000, 4);
    write_synced(&mount.join("big"), &big).unwrap();
    let small = pattern(1000, 5); // inline: held by the metadata replicas
    write_synced(&mount.join("small"), &small).unwrap();
    // Three of six away: four remain, below erasure:4+2's write quorum of five. The
    // journal lives on d1-d3, so d4-d6 go.
    let away: Vec<(std::path::PathBuf, std::path::PathBuf)> =
        [3, 4, 5].iter().map(|d| (pool.disks[*d].clone(), pool.root.path().join(format!("disk{d}.away")))).collect();
    for (from, to) in &away {
        fs::rename(from, to).unwrap();
    }
    let error = write_synced(&mount.join("refused"), &pattern(1_500_000, 6)).unwrap_err();
    assert_eq!(error.raw_os_error(), Some(libc::EIO), "below the write quorum: {error}");
    let log = fs::read_to_string(Path::new(pool.path()).join("daemon.log")).unwrap_or_default();
    assert!(log.contains("write quorum"), "no log line names the reason");
    assert_eq!(read_uncached(&mount.join("small")), small, "an extent within tolerance must read");
    for (from, to) in &away {
        fs::rename(to, from).unwrap();
    }
    eventually("the disks to rejoin", || {
        pool.json("list-disks").as_array().unwrap().iter().all(|d| d["state"] == "active")
    });
    assert_eq!(read_uncached(&mount.join("big")), big, "acknowledged data was lost");
    assert_eq!(read_uncached(&mount.join("small")), small);
    let again = pattern(1_500_000, 7);
    write_synced(&mount.join("again"), &again).unwrap();
    assert_eq!(read_uncached(&mount.join("again")), again);
    ok(&["umount", mount.to_str().unwrap()]);
}

/// Mounts a tmpfs of `mib` MiB at `dir` (the tests run as root, as CI does); unmounted on
/// drop.
struct SmallFilesystem(std::path::PathBuf);

impl SmallFilesystem {
    fn mount(dir: &Path, mib: u64) -> SmallFilesystem {
        fs::create_dir(dir).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(status.success(), "mounting a tmpfs needs root (CI runs as root)");
        SmallFilesystem(dir.to_path_buf())
    }
}

impl Drop for SmallFilesystem {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_backing_filesystem_smaller_than_the_declared_capacity_is_reported_full() {
    let pool = Pool::new("replicate:2", &[256, 256]);
    let small = pool.root.path().join("small");
    let _tmpfs = SmallFilesystem::mount(&small, 24);
    let added = ok(&["add-disk", "--pool", pool.path(), "--disk", small.to_str().unwrap(), "--capacity", "256MiB"]);
    assert!(added.contains("warning: --capacity 256.0 MiB is more than"), "{added}");
    assert!(run(&["health", "--pool", pool.path()]).status.success());
    // Something else fills the filesystem the disk lives on.
    fs::write(small.join("filler"), vec![7u8; 23 << 20]).unwrap_or(());
    let health = run(&["health", "--pool", pool.path()]);
    let text = String::from_utf8_lossy(&health.stdout).to_string();
    assert_eq!(health.status.code(), Some(1), "a full disk under a healthy verdict: {text}");
    assert!(text.contains("disk d3 is full: the filesystem it lives on"), "{text}");
    let status = ok(&["status", "--pool", pool.path()]);
    assert!(status.contains("active, full"), "{status}");
    let metrics = ok(&["metrics", "--pool", pool.path()]);
    assert!(metrics.contains("dynamicfs_disk_full{disk=\"d3\"} 1"), "{metrics}");
    // Writes go to the disks with room, not into a stream of ENOSPC.
    let data = pattern(3_000_000, 8);
    let local = pool.local("data");
    fs::write(&local, &data).unwrap();
    ok(&["put", "--pool", pool.path(), local.to_str().unwrap(), "/data"]);
    let back = pool.local("back");
    ok(&["get", "--pool", pool.path(), "/data", back.to_str().unwrap()]);
    assert_eq!(fs::read(&back).unwrap(), data);
}

#[test]
fn a_failed_disk_offered_back_is_reused_for_what_it_still_holds() {
    let pool = Pool::new("erasure:4+2", &[256, 256, 256, 256, 256, 256]);
    let first = pool.local("first");
    fs::write(&first, pattern(3_000_000, 9)).unwrap();
    ok(&["put", "--pool", pool.path(), first.to_str().unwrap(), "/first"]);
    let held = fragments_on(&pool.disks[1]);
    assert_eq!(held.len(), 3);
    ok(&["fail-disk", "--pool", pool.path(), "--disk", "d2"]);
    // Written while d2 is failed: five fragments each, the sixth owed to nobody yet.
    let second = pool.local("second");
    fs::write(&second, pattern(2_000_000, 10)).unwrap();
    ok(&["put", "--pool", pool.path(), second.to_str().unwrap(), "/second"]);
    let out = ok(&["add-disk", "--pool", pool.path(), "--disk", pool.disks[1].to_str().unwrap()]);
    assert!(out.contains("took back failed disk d2"), "{out}");
    assert!(out.contains("2 extent(s) it lacks"), "{out}");
    assert_eq!(fragments_on(&pool.disks[1]), held, "what it held is kept, not rewritten");
    ok(&["rebuild", "--pool", pool.path()]);
    assert_eq!(fragments_on(&pool.disks[1]).len(), 5, "the extents it lacked were repaired onto it");
    for extent in pool.json("list-extents").as_array().unwrap() {
        assert_eq!(extent["fragments_available"], extent["fragments_total"], "{extent}");
        assert!(extent["disks"].as_array().unwrap().iter().any(|d| d == "d2"), "{extent}");
    }
    for (name, local) in [("/first", &first), ("/second", &second)] {
        let back = pool.local("back");
        ok(&["get", "--pool", pool.path(), name, back.to_str().unwrap()]);
        assert_eq!(fs::read(&back).unwrap(), fs::read(local).unwrap());
    }
}
