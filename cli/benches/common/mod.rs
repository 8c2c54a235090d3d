//! The setup the mount benchmarks share: six backing directories, a DynamicFS pool
//! (`erasure:4+2`) mounted over them, and mergerfs over the same six directories.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs the `dfs` binary under test; panics if it fails.
pub fn dfs(args: &[&str]) {
    let status =
        Command::new(env!("CARGO_BIN_EXE_dfs")).args(args).stdout(std::process::Stdio::null()).status().unwrap();
    assert!(status.success(), "dfs {args:?} failed");
}

/// The median of `values` (the upper one of an even count).
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Waits until the block device holding `path` has written, discarded and had in flight
/// nothing for a second (at most 30 s), so that what one measurement left behind — the
/// page cache's writeback, a filesystem's discards, a daemon's deferred deletions —
/// lands before the next one starts and is not charged to it. Returns at once when
/// `/proc/diskstats` does not list the device (a filesystem in memory).
pub fn settle(path: &Path) {
    use std::os::unix::fs::MetadataExt;
    let dev = fs::metadata(path).unwrap().dev();
    let (major, minor) = (((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff), (dev & 0xff) | ((dev >> 12) & !0xff));
    // Sectors written, in flight, sectors discarded: fields 10, 12 and 17 of the line.
    let activity = || -> Option<(u64, u64, u64)> {
        let stats = fs::read_to_string("/proc/diskstats").ok()?;
        stats.lines().find_map(|line| {
            let f: Vec<u64> = line.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
            (f.len() >= 17 && f[0] == major && f[1] == minor).then(|| (f[9], f[11], f[16]))
        })
    };
    let started = std::time::Instant::now();
    let Some(mut last) = activity() else { return };
    while started.elapsed() < std::time::Duration::from_secs(30) {
        std::thread::sleep(std::time::Duration::from_secs(1));
        let Some(now) = activity() else { return };
        if now.0 == last.0 && now.1 == 0 && now.2 == last.2 {
            return;
        }
        last = now;
    }
}

/// Exits with status 2 and the install command when `tool` is missing.
pub fn require(tool: &str, install: &str) {
    if Command::new(tool).arg("-V").output().is_err() {
        eprintln!("{tool} is not installed: {install}");
        std::process::exit(2);
    }
}

/// Both mounts over the same six directories under `root`; unmounted on drop.
pub struct SixDisks {
    pub dynamicfs: PathBuf,
    pub mergerfs: PathBuf,
    /// The six backing directories.
    pub disks: Vec<PathBuf>,
    /// The DynamicFS pool directory.
    pub pool: PathBuf,
}

impl SixDisks {
    /// Mounts DynamicFS and mergerfs (with `mergerfs_options`) over `root/disk0..5`.
    pub fn mount(root: &Path, mergerfs_options: &str) -> SixDisks {
        let disks: Vec<PathBuf> = (0..6).map(|i| root.join(format!("disk{i}"))).collect();
        for disk in &disks {
            fs::create_dir(disk).unwrap();
        }
        SixDisks::mount_over(root, disks, mergerfs_options)
    }

    /// Mounts DynamicFS (pool and mountpoints under `root`) and mergerfs over `disks`.
    pub fn mount_over(root: &Path, disks: Vec<PathBuf>, mergerfs_options: &str) -> SixDisks {
        let pool = root.join("pool");
        dfs(&["init", "--pool", pool.to_str().unwrap(), "--policy", "erasure:4+2"]);
        for disk in &disks {
            dfs(&["add-disk", "--pool", pool.to_str().unwrap(), "--disk", disk.to_str().unwrap()]);
        }
        let mounts = SixDisks {
            dynamicfs: root.join("dfs-mnt"),
            mergerfs: root.join("mergerfs-mnt"),
            disks: disks.clone(),
            pool: pool.clone(),
        };
        fs::create_dir(&mounts.dynamicfs).unwrap();
        fs::create_dir(&mounts.mergerfs).unwrap();
        dfs(&["mount", "--pool", pool.to_str().unwrap(), "--mountpoint", mounts.dynamicfs.to_str().unwrap()]);
        let branches = disks.iter().map(|d| d.to_str().unwrap().to_string()).collect::<Vec<_>>().join(":");
        let status = Command::new("mergerfs")
            .args(["-o", mergerfs_options, &branches, mounts.mergerfs.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(status.success(), "mergerfs did not mount");
        mounts
    }
}

/// The pid of the process whose arguments include every one of `wanted`.
fn pid_with_args(wanted: &[&str]) -> Option<u32> {
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else { continue };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if wanted.iter().all(|w| args.contains(&w.as_bytes())) {
            return entry.file_name().to_str().and_then(|pid| pid.parse().ok());
        }
    }
    None
}

impl SixDisks {
    /// The DynamicFS daemon's pid.
    pub fn daemon_pid(&self) -> u32 {
        let pool = fs::canonicalize(&self.pool).unwrap();
        pid_with_args(&["--foreground", "mount", pool.to_str().unwrap()]).expect("no DynamicFS daemon found")
    }

    /// The mergerfs process's pid.
    pub fn mergerfs_pid(&self) -> u32 {
        pid_with_args(&[self.mergerfs.to_str().unwrap()]).expect("no mergerfs process found")
    }

    /// CPU seconds (user + system) the DynamicFS daemon has used so far.
    pub fn daemon_cpu_secs(&self) -> f64 {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.daemon_pid())).unwrap();
        // Fields after the command name (which ends at the last ')'): utime is the 12th,
        // stime the 13th, in clock ticks.
        let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
        let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
        // SAFETY: sysconf only reads a configuration value.
        #[allow(unsafe_code)]
        let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        ticks / per_sec
    }
}

impl Drop for SixDisks {
    fn drop(&mut self) {
        dfs(&["umount", self.dynamicfs.to_str().unwrap()]);
        let _ = Command::new("umount").arg(&self.mergerfs).status();
    }
}
