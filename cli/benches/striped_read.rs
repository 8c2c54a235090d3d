//! One file's reads striped over independent disks — what mergerfs cannot do: six loop
//! devices (each its own ext4), every one read-throttled to 100 MiB/s by cgroup v1
//! `blkio`, with the DynamicFS daemon (`erasure:4+2`) and mergerfs both moved into the
//! throttled group. A 768 MiB file is written through each mount, then read back with
//! every cache dropped (the kernel's and the engine's: DynamicFS is remounted), in
//! interleaved rounds. mergerfs keeps the file on one disk, so it reads at that disk's
//! 100 MiB/s; DynamicFS reads each extent's four data shards from four disks at once, and
//! successive extents' shards lie on different disks, so all six can serve: up to ~600.
//! Prints the medians and their ratio (issue 16's target: ≥ 3.2×).
//!
//! Run as root with Debian's mergerfs, util-linux (`losetup`), e2fsprogs (`mkfs.ext4`)
//! and cgroup v1's blkio controller mounted at /sys/fs/cgroup/blkio:
//! `cargo bench -p dfs-cli --bench striped_read` (DFS_BENCH_MIB overrides 768,
//! DFS_BENCH_ROUNDS overrides 3).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use rand::{Rng, SeedableRng};

mod common;

const MIB: usize = 1 << 20;
/// Each disk's read limit.
const DISK_BYTES_PER_SEC: u64 = 100 * MIB as u64;
const BLKIO: &str = "/sys/fs/cgroup/blkio";

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Six loop devices with an ext4 each, mounted under `root`; torn down on drop.
struct LoopDisks {
    devices: Vec<String>,
    mounts: Vec<PathBuf>,
}

impl LoopDisks {
    fn create(root: &Path, bytes: u64) -> LoopDisks {
        let mut disks = LoopDisks { devices: Vec::new(), mounts: Vec::new() };
        for i in 0..6 {
            let image = root.join(format!("image{i}"));
            fs::File::create(&image).unwrap().set_len(bytes).unwrap();
            let device = run("losetup", &["--find", "--show", image.to_str().unwrap()]).trim().to_string();
            disks.devices.push(device.clone());
            run("mkfs.ext4", &["-q", "-F", &device]);
            let mount = root.join(format!("fs{i}"));
            fs::create_dir(&mount).unwrap();
            run("mount", &[&device, mount.to_str().unwrap()]);
            disks.mounts.push(mount);
        }
        disks
    }

    /// `major:minor` of each device, as blkio wants them.
    fn numbers(&self) -> Vec<String> {
        self.devices
            .iter()
            .map(|d| {
                let rdev = fs::metadata(d).unwrap().rdev();
                let (major, minor) = ((rdev >> 8) & 0xfff, (rdev & 0xff) | ((rdev >> 12) & 0xfff00));
                format!("{major}:{minor}")
            })
            .collect()
    }
}

impl Drop for LoopDisks {
    fn drop(&mut self) {
        for mount in &self.mounts {
            let _ = Command::new("umount").arg(mount).status();
        }
        for device in &self.devices {
            let _ = Command::new("losetup").args(["-d", device]).status();
        }
    }
}

/// A blkio group that throttles reads from `devices`; removed on drop.
struct Throttle(PathBuf);

impl Throttle {
    fn new(devices: &[String]) -> Throttle {
        let group = Path::new(BLKIO).join(format!("dfs-bench-{}", std::process::id()));
        fs::create_dir(&group).unwrap();
        for device in devices {
            fs::write(group.join("blkio.throttle.read_bps_device"), format!("{device} {DISK_BYTES_PER_SEC}")).unwrap();
        }
        Throttle(group)
    }

    fn admit(&self, pid: u32) {
        fs::write(self.0.join("cgroup.procs"), pid.to_string()).unwrap();
    }
}

impl Drop for Throttle {
    fn drop(&mut self) {
        // Whatever is left (the daemons exit at unmount) goes back to the root group.
        if let Ok(pids) = fs::read_to_string(self.0.join("cgroup.procs")) {
            for pid in pids.lines() {
                let _ = fs::write(Path::new(BLKIO).join("cgroup.procs"), pid);
            }
        }
        let _ = fs::remove_dir(&self.0);
    }
}

fn drop_caches() {
    let _ = Command::new("sync").status();
    fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
}

/// MiB/s of reading `path` from start to end in 1 MiB requests.
fn read_speed(path: &Path) -> f64 {
    let started = Instant::now();
    let mut file = fs::File::open(path).unwrap();
    let mut buffer = vec![0u8; MIB];
    let mut total = 0;
    loop {
        let n = file.read(&mut buffer).unwrap();
        if n == 0 {
            break;
        }
        total += n;
    }
    total as f64 / MIB as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    common::require("mergerfs", "apt-get install mergerfs");
    common::require("losetup", "apt-get install util-linux");
    if !Path::new(BLKIO).join("blkio.throttle.read_bps_device").exists() {
        eprintln!("cgroup v1's blkio controller is not mounted at {BLKIO}: this benchmark needs it");
        std::process::exit(2);
    }
    let mib: usize = std::env::var("DFS_BENCH_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(768);
    let rounds: usize = std::env::var("DFS_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3).max(1);
    let root = tempfile::tempdir().unwrap();
    // Room on one disk for the whole file (mergerfs) plus ext4's own.
    let loops = LoopDisks::create(root.path(), (mib as u64 * MIB as u64) * 5 / 4 + (256 << 20));
    let branches: Vec<PathBuf> = loops.mounts.iter().map(|m| m.join("data")).collect();
    for branch in &branches {
        fs::create_dir(branch).unwrap();
    }
    // mergerfs skips branches with less than 4 GiB free unless told otherwise.
    let mounts =
        common::SixDisks::mount_over(root.path(), branches, "category.create=mfs,cache.files=off,minfreespace=64M");

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let mut chunk = vec![0u8; MIB];
    for target in [&mounts.dynamicfs, &mounts.mergerfs] {
        let mut file = fs::File::create(target.join("big")).unwrap();
        for _ in 0..mib {
            rng.fill(&mut chunk[..]);
            file.write_all(&chunk).unwrap();
        }
        file.sync_all().unwrap();
    }
    let throttle = Throttle::new(&loops.numbers());
    throttle.admit(mounts.mergerfs_pid());

    println!(
        "{mib} MiB file read sequentially (1 MiB requests, caches dropped), six loop-device disks each \
         read-throttled to 100 MiB/s; medians of {rounds} interleaved round(s)"
    );
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        // A fresh daemon: nothing of the file left in the engine's cache.
        common::dfs(&["umount", mounts.dynamicfs.to_str().unwrap()]);
        common::dfs(&[
            "mount",
            "--pool",
            mounts.pool.to_str().unwrap(),
            "--mountpoint",
            mounts.dynamicfs.to_str().unwrap(),
        ]);
        throttle.admit(mounts.daemon_pid());
        drop_caches();
        ours.push(read_speed(&mounts.dynamicfs.join("big")));
        drop_caches();
        theirs.push(read_speed(&mounts.mergerfs.join("big")));
        eprintln!("round {} of {rounds} done", round + 1);
    }
    let (ours, theirs) = (common::median(ours), common::median(theirs));
    println!("{:<44} {:>12}", "mount", "read");
    println!("{:<44} {:>7.0} MiB/s", "mergerfs (the file on one disk)", theirs);
    println!("{:<44} {:>7.0} MiB/s", "DynamicFS erasure:4+2 (four data shards)", ours);
    println!("ratio {:.2} (all six disks' worth would be 6.0)", ours / theirs);
    drop(mounts);
    drop(throttle);
}
