//! Through the FUSE mount versus a `mergerfs` pool of the same six backing directories,
//! in one run: sequential write and read of 1 GiB (bs 1 MiB, fsync at the end), random
//! 4 KiB reads on a 256 MiB file, and create+stat+unlink of 10,000 small files. Prints
//! each figure and the ratio to mergerfs.
//!
//! Run as root with Debian's mergerfs installed (`apt-get install mergerfs`):
//! `cargo bench -p dfs-cli --bench mount_vs_mergerfs` (DFS_BENCH_MIB overrides 1024).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use rand::{Rng, SeedableRng};

mod common;

const MIB: usize = 1 << 20;

fn drop_caches() {
    let _ = Command::new("sync").status();
    let _ = fs::write("/proc/sys/vm/drop_caches", "3");
}

fn sequential_write(source: &Path, target: &Path) -> f64 {
    let data = fs::read(source).unwrap();
    let started = Instant::now();
    let mut file = fs::File::create(target).unwrap();
    for chunk in data.chunks(MIB) {
        file.write_all(chunk).unwrap();
    }
    file.sync_all().unwrap();
    drop(file);
    data.len() as f64 / MIB as f64 / started.elapsed().as_secs_f64()
}

fn sequential_read(path: &Path) -> f64 {
    drop_caches();
    let started = Instant::now();
    let file = fs::File::open(path).unwrap();
    let mut buffer = vec![0u8; MIB];
    let mut offset = 0u64;
    loop {
        let n = file.read_at(&mut buffer, offset).unwrap();
        if n == 0 {
            break;
        }
        offset += n as u64;
    }
    offset as f64 / MIB as f64 / started.elapsed().as_secs_f64()
}

fn random_reads(path: &Path) -> f64 {
    drop_caches();
    let file = fs::File::open(path).unwrap();
    let size = file.metadata().unwrap().len();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut buffer = vec![0u8; 4096];
    let reads = 20_000;
    let started = Instant::now();
    for _ in 0..reads {
        let offset = rng.random_range(0..size / 4096) * 4096;
        file.read_exact_at(&mut buffer, offset).unwrap();
    }
    f64::from(reads) / started.elapsed().as_secs_f64()
}

fn small_files(dir: &Path) -> f64 {
    fs::create_dir_all(dir).unwrap();
    let count = 10_000;
    let started = Instant::now();
    for i in 0..count {
        let path = dir.join(format!("f{i}"));
        fs::write(&path, b"small").unwrap();
        fs::metadata(&path).unwrap();
        fs::remove_file(&path).unwrap();
    }
    f64::from(count) / started.elapsed().as_secs_f64()
}

struct Figures {
    write: f64,
    read: f64,
    random: f64,
    small: f64,
}

fn measure(mount: &Path, source: &Path, random_source: &Path) -> Figures {
    let write = sequential_write(source, &mount.join("big"));
    let read = sequential_read(&mount.join("big"));
    fs::remove_file(mount.join("big")).unwrap();
    sequential_write(random_source, &mount.join("random"));
    let random = random_reads(&mount.join("random"));
    fs::remove_file(mount.join("random")).unwrap();
    let small = small_files(&mount.join("small"));
    Figures { write, read, random, small }
}

fn main() {
    common::require("mergerfs", "apt-get install mergerfs");
    let mib: usize = std::env::var("DFS_BENCH_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(1024);
    let root = tempfile::tempdir().unwrap();
    let at = |name: &str| -> PathBuf { root.path().join(name) };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let mut data = vec![0u8; mib * MIB];
    rng.fill(&mut data[..]);
    fs::write(at("source"), &data).unwrap();
    fs::write(at("random-source"), &data[..256 * MIB.min(data.len() / 256).max(1)]).unwrap();
    drop(data);
    // Neither side's final fsync should pay for writing back the sources.
    let _ = Command::new("sync").status();
    let mounts = common::SixDisks::mount(root.path(), "category.create=mfs,cache.files=off");
    let (dfs_mount, merger_mount) = (&mounts.dynamicfs, &mounts.mergerfs);

    println!("{mib} MiB sequential, 256 MiB random-read file, 10,000 small files; six directories on one disk");
    let ours = measure(dfs_mount, &at("source"), &at("random-source"));
    let theirs = measure(merger_mount, &at("source"), &at("random-source"));
    drop(mounts);

    println!("{:<34} {:>16} {:>12} {:>7}", "workload", "DynamicFS", "mergerfs", "ratio");
    for (label, unit, a, b) in [
        ("sequential write (erasure:4+2)", "MiB/s", ours.write, theirs.write),
        ("sequential read", "MiB/s", ours.read, theirs.read),
        ("random 4 KiB reads", "reads/s", ours.random, theirs.random),
        ("create+stat+unlink small files", "files/s", ours.small, theirs.small),
    ] {
        println!("{label:<34} {a:>10.0} {unit:<7} {b:>10.0} {:>7.2}", a / b);
    }
}
