//! `dfs mount` / `dfs umount` on a real FUSE mount (needs /dev/fuse; CI runs as root).
//! Fails loudly, never skips, when FUSE is unavailable.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{dfs, eventually, fails, fragments_on, ok, pattern, read_uncached, Pool};

fn mountpoint(pool: &Pool) -> PathBuf {
    let m = pool.root.path().join("mnt");
    fs::create_dir_all(&m).unwrap();
    m
}

fn is_mounted(m: &std::path::Path) -> bool {
    fs::read_to_string("/proc/self/mounts").unwrap().lines().any(|l| l.split_whitespace().nth(1) == m.to_str())
}

fn daemon_pid(mount_output: &str) -> i32 {
    let start = mount_output.find("daemon pid ").expect("mount prints the daemon pid") + "daemon pid ".len();
    mount_output[start..].split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
}

fn xattr(path: &std::path::Path, value: Option<&str>) -> std::process::Output {
    let script = match value {
        None => {
            format!("import os; print(os.getxattr({:?}, 'user.dynamicfs.policy').decode())", path.to_str().unwrap())
        }
        Some(v) => {
            format!("import os; os.setxattr({:?}, 'user.dynamicfs.policy', {v:?}.encode())", path.to_str().unwrap())
        }
    };
    Command::new("python3").args(["-c", &script]).output().unwrap()
}

#[test]
fn mount_serve_unmount_and_read_back_through_the_cli() {
    let pool = Pool::new("erasure:2+1", &[128, 256, 192, 160]);
    let m = mountpoint(&pool);
    let out = ok(&["mount", "--pool", pool.path(), "--mountpoint", m.to_str().unwrap()]);
    assert!(out.contains("mounted"), "{out}");
    assert!(is_mounted(&m));

    let data = pattern(2_500_000, 5);
    fs::write(m.join("big"), &data).unwrap();
    fs::create_dir(m.join("dir")).unwrap();
    fs::write(m.join("dir/small"), b"small").unwrap();
    assert_eq!(fs::read(m.join("big")).unwrap(), data);

    // Policy through the xattr: read the inherited one, set a directory's.
    let got = xattr(&m.join("big"), None);
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "erasure:2+1", "{got:?}");
    assert!(xattr(&m.join("dir"), Some("replicate:3")).status.success());
    fs::write(m.join("dir/copied"), b"three copies").unwrap();
    assert_eq!(String::from_utf8_lossy(&xattr(&m.join("dir/copied"), None).stdout).trim(), "replicate:3");
    let bad = xattr(&m.join("dir"), Some("erasure:0+2"));
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("Invalid argument"), "{bad:?}");
    // Setting it on a file re-encodes the file's data.
    assert!(xattr(&m.join("big"), Some("replicate:2")).status.success());
    let extents: serde_json::Value =
        serde_json::from_str(&ok(&["list-extents", "--pool", pool.path(), "/big", "--json"])).unwrap();
    assert!(extents.as_array().unwrap().iter().all(|e| e["policy"] == "replicate:2"), "{extents}");
    assert_eq!(fs::read(m.join("big")).unwrap(), data);

    // A second mount of the same pool fails clearly; admin commands say the pool is busy.
    let second = pool.root.path().join("mnt2");
    fs::create_dir(&second).unwrap();
    let error = fails(&["mount", "--pool", pool.path(), "--mountpoint", second.to_str().unwrap()]);
    assert!(error.contains("in use by another process"), "{error}");

    // Admin commands work on the mounted pool, through the daemon, with the same output.
    let mounted_ls = ok(&["ls", "--pool", pool.path(), "/dir"]);
    assert!(mounted_ls.contains("small") && mounted_ls.contains("copied"), "{mounted_ls}");
    let local = pool.local("via-daemon");
    fs::write(&local, b"put through the control socket").unwrap();
    ok(&["put", "--pool", pool.path(), local.to_str().unwrap(), "/via-daemon"]);
    assert_eq!(fs::read(m.join("via-daemon")).unwrap(), b"put through the control socket");
    let error = fails(&["get", "--pool", pool.path(), "/missing", local.to_str().unwrap()]);
    assert!(error.contains("ENOENT"), "{error}");
    let mounted_disks = ok(&["list-disks", "--pool", pool.path(), "--json"]);
    let socket = pool.root.path().join("pool/control.sock");
    assert_eq!(fs::metadata(&socket).unwrap().permissions().mode() & 0o777, 0o600);

    ok(&["umount", m.to_str().unwrap()]);
    assert_eq!(ok(&["ls", "--pool", pool.path(), "/dir"]), mounted_ls);
    let unmounted_disks: serde_json::Value =
        serde_json::from_str(&ok(&["list-disks", "--pool", pool.path(), "--json"])).unwrap();
    let mounted_disks: serde_json::Value = serde_json::from_str(&mounted_disks).unwrap();
    assert_eq!(mounted_disks.as_array().unwrap().len(), unmounted_disks.as_array().unwrap().len());
    assert!(!socket.exists(), "the control socket outlived the daemon");
    assert!(!is_mounted(&m));
    let back = pool.local("back");
    ok(&["get", "--pool", pool.path(), "/big", back.to_str().unwrap()]);
    assert_eq!(fs::read(&back).unwrap(), data);
    ok(&["get", "--pool", pool.path(), "/dir/small", back.to_str().unwrap()]);
    assert_eq!(fs::read(&back).unwrap(), b"small");
    let extents: serde_json::Value =
        serde_json::from_str(&ok(&["list-extents", "--pool", pool.path(), "/dir/copied", "--json"])).unwrap();
    assert_eq!(extents[0]["policy"], "replicate:3");
}

#[test]
fn a_killed_daemon_keeps_every_fsynced_file() {
    let pool = Pool::new("replicate:2", &[128, 128, 128]);
    let m = mountpoint(&pool);
    let out = ok(&["mount", "--pool", pool.path(), "--mountpoint", m.to_str().unwrap()]);
    let synced = pattern(1_300_000, 9);
    let mut f = fs::File::create(m.join("synced")).unwrap();
    f.write_all(&synced).unwrap();
    f.sync_all().unwrap();
    drop(f);
    fs::write(m.join("settled"), b"the daemon's barrier made this durable").unwrap();
    // Longer than the daemon's barrier interval (one second), with margin for a slow machine.
    std::thread::sleep(Duration::from_secs(3));
    fs::write(m.join("closed"), b"closed, not yet synced").unwrap();
    let mut unsynced = fs::File::create(m.join("unsynced")).unwrap();
    unsynced.write_all(b"maybe").unwrap();

    let pid = daemon_pid(&out);
    assert!(Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap().success());
    drop(unsynced);
    // The dead mount stays in the table until unmounted; `dfs umount` clears it.
    ok(&["umount", m.to_str().unwrap()]);
    ok(&["mount", "--pool", pool.path(), "--mountpoint", m.to_str().unwrap()]);
    assert_eq!(fs::read(m.join("synced")).unwrap(), synced);
    assert_eq!(fs::read(m.join("settled")).unwrap(), b"the daemon's barrier made this durable");
    // A close does not sync (as on ext4): the file is there whole, or not at all, or —
    // when the daemon's barrier fell between its create and its close, as ext4's
    // delayed allocation can leave it — empty; never part of its bytes.
    if let Ok(bytes) = fs::read(m.join("closed")) {
        assert!(bytes.is_empty() || bytes == b"closed, not yet synced", "half-visible: {bytes:?}");
    }
    if let Ok(bytes) = fs::read(m.join("unsynced")) {
        assert!(bytes.is_empty() || bytes == b"maybe", "half-visible: {bytes:?}");
    }
    ok(&["umount", m.to_str().unwrap()]);
}

#[test]
fn a_foreground_mount_stops_cleanly_on_sigterm() {
    let pool = Pool::new("replicate:1", &[64]);
    let m = mountpoint(&pool);
    let mut child = dfs()
        .args(["mount", "--pool", pool.path(), "--mountpoint", m.to_str().unwrap(), "--foreground"])
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !is_mounted(&m) {
        assert!(started.elapsed() < Duration::from_secs(20), "the foreground mount never appeared");
        assert!(child.try_wait().unwrap().is_none(), "dfs mount --foreground exited early");
        std::thread::sleep(Duration::from_millis(20));
    }
    fs::write(m.join("f"), b"kept").unwrap();
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(!is_mounted(&m));
    let back = pool.local("back");
    ok(&["get", "--pool", pool.path(), "/f", back.to_str().unwrap()]);
    assert_eq!(fs::read(back).unwrap(), b"kept");
}

#[test]
fn mounting_on_a_missing_directory_or_unmounting_a_non_mount_fails_clearly() {
    let pool = Pool::new("replicate:1", &[64]);
    let error = fails(&["mount", "--pool", pool.path(), "--mountpoint", "/nonexistent/mnt"]);
    assert!(error.contains("/nonexistent/mnt"), "{error}");
    let error = fails(&["umount", pool.root.path().to_str().unwrap()]);
    assert!(error.contains("not a DynamicFS mount"), "{error}");
}

/// Polls `check` for up to 60 s: the daemon's background worker runs on its own time.

#[test]
fn a_mounted_pool_rebuilds_and_drains_in_the_background() {
    let pool = Pool::new("erasure:2+1", &[64, 64, 64, 64, 64]);
    let m = mountpoint(&pool);
    ok(&["mount", "--pool", pool.path(), "--mountpoint", m.to_str().unwrap()]);
    let data = pattern(3_300_000, 11);
    fs::write(m.join("f"), &data).unwrap();

    let out = ok(&["fail-disk", "--pool", pool.path(), "--disk", "d2"]);
    assert!(out.contains("marked failed"), "{out}");
    assert_eq!(fs::read(m.join("f")).unwrap(), data, "degraded read through the mount");
    eventually("the rebuild queue to empty", || pool.json("rebuild-status").as_array().unwrap().is_empty());

    let out = ok(&["remove-disk", "--pool", pool.path(), "--disk", "d4"]);
    assert!(out.contains("draining"), "{out}");
    eventually("d4 to be removed", || {
        pool.json("list-disks").as_array().unwrap().iter().any(|d| d["id"] == "d4" && d["state"] == "removed")
    });
    assert_eq!(fs::read(m.join("f")).unwrap(), data);
    ok(&["umount", m.to_str().unwrap()]);
    let summary: serde_json::Value =
        serde_json::from_str(&ok(&["show-redundancy", "--pool", pool.path(), "--verify", "--json"])).unwrap();
    assert!(summary["by_health"]["degraded"].is_null() && summary["by_health"]["lost"].is_null(), "{summary}");
}

#[test]
fn a_sequential_read_gathers_runs_of_shards_and_reads_around_rotten_ones() {
    let pool = Pool::new("erasure:4+2", &[64, 64, 64, 64, 64, 64]);
    let m = mountpoint(&pool);
    let mount = || ok(&["mount", "--pool", pool.path(), "--mountpoint", m.to_str().unwrap()]);
    mount();
    // 24 extents: the read-ahead fetches them in batches, each disk reading its data
    // shards of a batch side by side.
    let data = pattern(24 << 20, 21);
    fs::write(m.join("f"), &data).unwrap();
    ok(&["umount", m.to_str().unwrap()]);
    // Every third data shard on one disk rots, mid-run: a batch holding one is read
    // whole and its extent again on its own, from the other fragments.
    let data_shards: Vec<_> = fragments_on(&pool.disks[0])
        .into_iter()
        .filter(|f| f.name.leaf().rsplit('.').next().is_some_and(|index| index < "04"))
        .collect();
    assert!(data_shards.len() >= 12, "{} data shards on d1", data_shards.len());
    let rotten: Vec<_> = data_shards.iter().step_by(3).collect();
    for fragment in &rotten {
        fragment.flip_byte(fragment.len / 2).unwrap();
    }
    mount();
    assert!(read_uncached(&m.join("f")) == data, "the read did not return the file's bytes");
    ok(&["umount", m.to_str().unwrap()]);
    let log = fs::read_to_string(pool.root.path().join("pool/daemon.log")).unwrap();
    let degraded = log.lines().filter(|l| l.contains("degraded read")).count();
    assert!(degraded >= rotten.len(), "{degraded} degraded reads for {} rotten shards:\n{log}", rotten.len());
}

#[test]
fn serve_runs_the_daemon_without_a_mount() {
    let pool = Pool::new("replicate:2", &[64, 64]);
    let mut child = dfs().args(["serve", "--pool", pool.path()]).spawn().unwrap();
    let socket = pool.root.path().join("pool/control.sock");
    eventually("the control socket", || socket.exists());
    let local = pool.local("x");
    fs::write(&local, b"through serve").unwrap();
    ok(&["put", "--pool", pool.path(), local.to_str().unwrap(), "/x"]);
    assert!(ok(&["ls", "--pool", pool.path()]).contains('x'));
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    assert!(child.wait().unwrap().success());
    assert!(!socket.exists());
    let back = pool.local("back");
    ok(&["get", "--pool", pool.path(), "/x", back.to_str().unwrap()]);
    assert_eq!(fs::read(back).unwrap(), b"through serve");
}

#[test]
fn a_mountpoint_that_is_not_empty_is_refused_unless_asked() {
    let pool = Pool::new("replicate:1", &[64]);
    let mount = pool.root.path().join("mnt");
    std::fs::create_dir(&mount).unwrap();
    std::fs::write(mount.join("hidden-by-a-mount"), b"x").unwrap();
    let error = fails(&["mount", "--pool", pool.path(), "--mountpoint", mount.to_str().unwrap()]);
    assert!(error.contains("is not empty") && error.contains("ENOTEMPTY") && error.contains("--nonempty"), "{error}");
    ok(&["mount", "--pool", pool.path(), "--mountpoint", mount.to_str().unwrap(), "--nonempty"]);
    assert!(!mount.join("hidden-by-a-mount").exists(), "the mount is over the directory");
    ok(&["umount", mount.to_str().unwrap()]);
    assert!(mount.join("hidden-by-a-mount").exists(), "the directory's file is back after unmount");
}

/// A mount over one of the pool's disks, or over a directory holding one (or the pool
/// directory), would hide them from the daemon, which reaches them through their paths:
/// its first write hung every access to the mount. Refused, even with `--nonempty`, in
/// the foreground too, and nothing is mounted.
#[test]
fn a_mountpoint_over_the_pools_own_directories_is_refused() {
    let pool = Pool::new("replicate:2", &[64, 64]);
    let root = pool.root.path().to_path_buf();
    let cases =
        [(pool.disks[0].clone(), "is disk"), (root.clone(), "holds"), (root.join("pool"), "is the pool directory")];
    for (mountpoint, said) in &cases {
        for foreground in [false, true] {
            let mut args =
                vec!["mount", "--pool", pool.path(), "--mountpoint", mountpoint.to_str().unwrap(), "--nonempty"];
            if foreground {
                args.push("--foreground");
            }
            let error = fails(&args);
            assert!(error.contains(said) && error.contains("EINVAL"), "{}: {error}", mountpoint.display());
            let table = fs::read_to_string("/proc/self/mounts").unwrap();
            assert!(!table.contains(&format!(" {} ", mountpoint.display())), "mounted at {}", mountpoint.display());
        }
    }
    // Inside a disk's directory is not over it: the disk's own folders stay visible.
    let inside = pool.disks[0].join("mnt");
    fs::create_dir(&inside).unwrap();
    ok(&["mount", "--pool", pool.path(), "--mountpoint", inside.to_str().unwrap()]);
    fs::write(inside.join("f"), b"written").unwrap();
    assert_eq!(fs::read(inside.join("f")).unwrap(), b"written");
    ok(&["umount", inside.to_str().unwrap()]);
}

#[test]
fn copies_do_not_carry_the_policy_attribute() {
    let pool = Pool::new("replicate:2", &[64, 64]);
    let mount = pool.root.path().join("mnt");
    fs::create_dir(&mount).unwrap();
    ok(&["mount", "--pool", pool.path(), "--mountpoint", mount.to_str().unwrap()]);
    fs::write(mount.join("f"), pattern(200_000, 9)).unwrap();
    let cp = |from: &std::path::Path, to: &std::path::Path| {
        assert!(Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap().success());
    };
    cp(&mount.join("f"), &mount.join("copy"));
    let outside = pool.local("outside");
    cp(&mount.join("f"), &outside);
    let dump = |path: &std::path::Path| {
        let out = Command::new("getfattr").args(["-d", "-m", "-", "--absolute-names"]).arg(path).output().unwrap();
        assert!(out.status.success(), "getfattr (from the attr package) runs");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert!(!dump(&mount.join("copy")).contains("dynamicfs"), "listed on the copy inside the mount");
    assert!(!dump(&outside).contains("dynamicfs"), "carried out to the host filesystem");
    // Read by name, it is the effective policy.
    let by_name = Command::new("getfattr")
        .args(["-n", "user.dynamicfs.policy", "--only-values"])
        .arg(mount.join("copy"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&by_name.stdout), "replicate:2");
    ok(&["umount", mount.to_str().unwrap()]);
}
