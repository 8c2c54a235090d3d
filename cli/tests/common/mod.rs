//! Helpers for driving the real `dfs` binary against pools of directory disks.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub use dfs_engine::media::dirdisk::{stored_fragments, StoredFragment};

pub fn dfs() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dfs"))
}

/// Runs `dfs ARGS`, returning its output.
pub fn run(args: &[&str]) -> Output {
    dfs().args(args).output().expect("dfs runs")
}

/// Runs `dfs ARGS` and asserts it succeeded; returns stdout.
pub fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "dfs {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `dfs ARGS` and asserts it failed with exit code 1; returns stderr.
pub fn fails(args: &[&str]) -> String {
    let out = run(args);
    assert_eq!(out.status.code(), Some(1), "dfs {args:?} should fail: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8(out.stderr).unwrap()
}

pub struct Pool {
    pub root: tempfile::TempDir,
    pub disks: Vec<PathBuf>,
}

impl Pool {
    /// A pool with one disk per capacity in MiB.
    pub fn new(policy: &str, capacities_mib: &[u64]) -> Pool {
        let root = tempfile::tempdir().unwrap();
        let pool = Pool { root, disks: Vec::new() };
        ok(&["init", "--pool", pool.path(), "--policy", policy]);
        let mut pool = pool;
        for (i, mib) in capacities_mib.iter().enumerate() {
            let disk = pool.root.path().join(format!("disk{i}"));
            std::fs::create_dir(&disk).unwrap();
            ok(&[
                "add-disk",
                "--pool",
                pool.path(),
                "--disk",
                disk.to_str().unwrap(),
                "--capacity",
                &format!("{mib}MiB"),
            ]);
            pool.disks.push(disk);
        }
        pool
    }

    pub fn path(&self) -> &str {
        self.root.path().join("pool").to_str().unwrap().to_string().leak()
    }

    pub fn local(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    pub fn json(&self, command: &str) -> serde_json::Value {
        serde_json::from_str(&ok(&[command, "--pool", self.path(), "--json"])).unwrap()
    }
}

/// Deterministic pseudo-random bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Every fragment stored on a disk directory (in its segments, or in files of their own
/// for a pool made before segments), by name.
pub fn fragments_on(disk: &Path) -> Vec<StoredFragment> {
    stored_fragments(disk).unwrap()
}

/// Waits up to a minute for `check` to hold, polling every 200 ms.
pub fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !check() {
        assert!(started.elapsed() < std::time::Duration::from_secs(60), "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Reads `path` through the mount past the page cache, so the daemon serves it.
pub fn read_uncached(path: &std::path::Path) -> Vec<u8> {
    let script = format!(
        "import os,sys\nfd=os.open({:?}, os.O_RDONLY)\nos.posix_fadvise(fd,0,0,os.POSIX_FADV_DONTNEED)\n\
         data=b''\nwhile True:\n    chunk=os.read(fd, 1<<20)\n    if not chunk: break\n    data+=chunk\n\
         sys.stdout.buffer.write(data)",
        path.to_str().unwrap()
    );
    let out = std::process::Command::new("python3").args(["-c", &script]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}
