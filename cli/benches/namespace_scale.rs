//! A mounted pool of 10⁶ files beside the same tree on the host's ext4, in one run:
//! `ls -R | wc -l`, `find -newer`, `du -s`, and `stat` of a cold file, each after the
//! caches were dropped.
//!
//! The pool's files are metadata only (one 1 MiB extent each, placed on six directory
//! disks under `erasure:4+2` and never written: `dfs_engine::data::synthetic`), since
//! 1 TB of data does not fit this machine; nothing measured here reads file data. The
//! ext4 tree has the same names and sizes, as sparse files.
//!
//! Run: `cargo bench -p dfs-cli --bench namespace_scale` (root, for `drop_caches`;
//! `DFS_BENCH_FILES=100000` for a smaller tree; 1,000 files a directory).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use dfs_engine::data::namespace::Owner;
use dfs_engine::pooldir::PoolDir;
use dfs_engine::{Ino, PoolOptions};

const FILES_PER_DIR: u64 = 1000;
const FILE_BYTES: u64 = 1 << 20;
/// Files touched after the reference file, which `find -newer` must find.
const TOUCHED: u64 = 10;
const OWNER: Owner = Owner { mode: 0o644, uid: 0, gid: 0, umask: 0o022 };
const DIR_OWNER: Owner = Owner { mode: 0o755, uid: 0, gid: 0, umask: 0o022 };

fn dir_name(n: u64) -> String {
    format!("d{n:05}")
}

fn file_name(n: u64) -> String {
    format!("f{n:04}")
}

/// Builds the pool at `pool` over six new disks under `root`: `files` files of one
/// synthetic extent each.
fn build_pool(root: &Path, pool: &Path, files: u64) {
    PoolDir::init(pool, "erasure:4+2".parse().unwrap(), false).unwrap();
    let options = PoolOptions { checkpoint_every_records: u64::MAX, ..PoolOptions::default() };
    let (mut dir, mut engine, _) = PoolDir::open(pool, options).unwrap();
    for i in 0..6 {
        let disk = root.join(format!("disk{i}"));
        fs::create_dir(&disk).unwrap();
        dir.add_disk(&mut engine, &disk, None).unwrap();
    }
    let mut parent = Ino::ROOT;
    for n in 0..files {
        if n % FILES_PER_DIR == 0 {
            parent = engine.mkdir(Ino::ROOT, dir_name(n / FILES_PER_DIR).as_bytes(), DIR_OWNER).unwrap().ino;
        }
        let ino = engine.create(parent, file_name(n % FILES_PER_DIR).as_bytes(), OWNER).unwrap().ino;
        engine.attach_synthetic_extents(ino, 1).unwrap();
    }
    engine.checkpoint().unwrap();
}

/// The same tree under `top` on the host's filesystem, as sparse files.
fn build_host_tree(top: &Path, files: u64) {
    for n in 0..files {
        let dir = top.join(dir_name(n / FILES_PER_DIR));
        if n % FILES_PER_DIR == 0 {
            fs::create_dir(&dir).unwrap();
        }
        fs::File::create(dir.join(file_name(n % FILES_PER_DIR))).unwrap().set_len(FILE_BYTES).unwrap();
    }
}

/// Writes the reference file, then touches `TOUCHED` files spread over the tree after it.
fn touch_after_reference(top: &Path, files: u64) -> PathBuf {
    let reference = top.join("reference");
    fs::write(&reference, b"").unwrap();
    std::thread::sleep(Duration::from_millis(20));
    for k in 0..TOUCHED {
        let n = k * files / TOUCHED;
        let path = top.join(dir_name(n / FILES_PER_DIR)).join(file_name(n % FILES_PER_DIR));
        fs::File::options().write(true).open(&path).unwrap().set_modified(SystemTime::now()).unwrap();
    }
    reference
}

fn drop_caches() {
    let _ = Command::new("sync").status();
    fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
}

/// Runs `script` under `sh -c` with the caches dropped; returns its seconds and output.
fn timed_shell(script: &str) -> (f64, String) {
    drop_caches();
    let started = Instant::now();
    let out = Command::new("sh").args(["-c", script]).output().unwrap();
    let secs = started.elapsed().as_secs_f64();
    assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
    (secs, String::from_utf8(out.stdout).unwrap().trim().to_string())
}

/// The figures of one tree: (seconds, what the command printed) per operation.
fn measure(top: &Path, reference: &Path, files: u64) -> Vec<(f64, String)> {
    let top_s = top.to_str().unwrap();
    let mut figures = vec![
        timed_shell(&format!("ls -R {top_s} | wc -l")),
        timed_shell(&format!("find {top_s} -type f -newer {} | wc -l", reference.to_str().unwrap())),
        timed_shell(&format!("du -s --block-size=1M {top_s} | cut -f1")),
    ];
    let n = files * 7 / 10;
    let cold = top.join(dir_name(n / FILES_PER_DIR)).join(file_name(n % FILES_PER_DIR));
    drop_caches();
    let started = Instant::now();
    let size = fs::metadata(&cold).unwrap().len();
    figures.push((started.elapsed().as_secs_f64(), size.to_string()));
    figures
}

fn main() {
    let files: u64 = std::env::var("DFS_BENCH_FILES").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let root = tempfile::tempdir().unwrap();
    let (pool, mountpoint, host) = (root.path().join("pool"), root.path().join("mnt"), root.path().join("host"));
    let started = Instant::now();
    build_pool(root.path(), &pool, files);
    eprintln!("pool of {files} files built in {:.1} s", started.elapsed().as_secs_f64());
    let started = Instant::now();
    fs::create_dir(&host).unwrap();
    build_host_tree(&host, files);
    eprintln!("host tree built in {:.1} s", started.elapsed().as_secs_f64());
    fs::create_dir(&mountpoint).unwrap();
    let started = Instant::now();
    common::dfs(&["mount", "--pool", pool.to_str().unwrap(), "--mountpoint", mountpoint.to_str().unwrap()]);
    let mount_secs = started.elapsed().as_secs_f64();
    let unmount = Unmount(mountpoint.clone());
    let host_reference = touch_after_reference(&host, files);
    let pool_reference = touch_after_reference(&mountpoint, files);
    let on_host = measure(&host, &host_reference, files);
    let on_pool = measure(&mountpoint, &pool_reference, files);
    drop(unmount);

    println!(
        "{files} files in directories of {FILES_PER_DIR}, 1 MiB each (the pool's metadata only, the host's sparse); \
         caches dropped before each; `dfs mount` took {mount_secs:.1} s"
    );
    println!("{:<28} {:>12} {:>12} {:>9}   output (ext4 / DynamicFS)", "operation", "ext4 s", "DynamicFS s", "× ext4");
    let labels = ["ls -R | wc -l", "find -type f -newer | wc -l", "du -s (MiB)", "stat of a cold file"];
    for (label, ((host_secs, host_out), (pool_secs, pool_out))) in labels.iter().zip(on_host.iter().zip(&on_pool)) {
        println!(
            "{label:<28} {host_secs:>12.4} {pool_secs:>12.4} {:>9.2}   {host_out} / {pool_out}",
            pool_secs / host_secs
        );
    }
    // The trees are the same: listings and searches must agree.
    assert_eq!(on_host[0].1, on_pool[0].1, "ls -R differs");
    assert_eq!(on_host[1].1, TOUCHED.to_string(), "find -newer on the host");
    assert_eq!(on_pool[1].1, TOUCHED.to_string(), "find -newer on the pool");
    assert_eq!(on_host[3].1, on_pool[3].1, "stat sizes differ");
}

/// Unmounts the pool when dropped, so a failed measurement leaves no mount behind.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        common::dfs(&["umount", self.0.to_str().unwrap()]);
    }
}
