//! Through the FUSE mount versus a `mergerfs` pool of the same six backing directories,
//! and the raw limit of those directories, in one run: sequential write and read of
//! 1 GiB (bs 1 MiB, fsync at the end), random 4 KiB reads and writes on a 256 MiB file,
//! and create+stat+unlink of 10,000 small files. The raw limit is six parallel writers
//! (one per directory, a sixth of the data each, fsync at the end) and six parallel
//! readers with caches dropped; under `erasure:4+2` user data can reach at most the raw
//! write ÷ 1.5. Every figure is the median of interleaved rounds (DynamicFS, mergerfs,
//! raw, then again): this machine's single runs vary by 2×. Each measurement starts once
//! the disk has gone quiet (`common::settle`), so neither side's writeback or deferred
//! deletions land in the other's. Also prints the daemon's CPU seconds per GiB written
//! and read.
//!
//! Run as root with Debian's mergerfs installed (`apt-get install mergerfs`):
//! `cargo bench -p dfs-cli --bench mount_vs_mergerfs` (DFS_BENCH_MIB overrides 1024,
//! DFS_BENCH_ROUNDS overrides 3).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
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

fn random_writes(path: &Path) -> f64 {
    let file = fs::OpenOptions::new().write(true).open(path).unwrap();
    let size = file.metadata().unwrap().len();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(8);
    let buffer = vec![0x5au8; 4096];
    let writes = 20_000;
    let started = Instant::now();
    for _ in 0..writes {
        let offset = rng.random_range(0..size / 4096) * 4096;
        file.write_all_at(&buffer, offset).unwrap();
    }
    file.sync_all().unwrap();
    f64::from(writes) / started.elapsed().as_secs_f64()
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

#[derive(Clone, Copy, Default)]
struct Figures {
    write: f64,
    read: f64,
    random: f64,
    random_write: f64,
    small: f64,
}

/// The figures of one mount; with `cpu` (a reading of the daemon's CPU seconds), also
/// the CPU seconds its sequential write and its sequential read took.
fn measure(
    mount: &Path,
    source: &Path,
    random_source: &Path,
    cpu: Option<&dyn Fn() -> f64>,
) -> (Figures, Option<(f64, f64)>) {
    let cpu_now = || cpu.map(|read| read());
    let before = cpu_now();
    let write = sequential_write(source, &mount.join("big"));
    let written = cpu_now();
    let read = sequential_read(&mount.join("big"));
    let done = cpu_now();
    let spent = match (before, written, done) {
        (Some(a), Some(b), Some(c)) => Some((b - a, c - b)),
        _ => None,
    };
    fs::remove_file(mount.join("big")).unwrap();
    sequential_write(random_source, &mount.join("random"));
    let random = random_reads(&mount.join("random"));
    let random_write = random_writes(&mount.join("random"));
    fs::remove_file(mount.join("random")).unwrap();
    let small = small_files(&mount.join("small"));
    (Figures { write, read, random, random_write, small }, spent)
}

/// The six directories' own limit: a sixth of `source` written to each in parallel
/// (fsync at the end), then read back in parallel with caches dropped. MiB/s of both.
fn raw_limit(disks: &[PathBuf], source: &Path) -> (f64, f64) {
    let data = fs::read(source).unwrap();
    let share = data.len().div_ceil(disks.len());
    let started = Instant::now();
    thread::scope(|scope| {
        for (disk, part) in disks.iter().zip(data.chunks(share)) {
            scope.spawn(move || {
                let mut file = fs::File::create(disk.join("raw")).unwrap();
                for chunk in part.chunks(MIB) {
                    file.write_all(chunk).unwrap();
                }
                file.sync_all().unwrap();
            });
        }
    });
    let write = data.len() as f64 / MIB as f64 / started.elapsed().as_secs_f64();
    drop_caches();
    let started = Instant::now();
    let read: u64 = thread::scope(|scope| {
        let readers: Vec<_> = disks
            .iter()
            .map(|disk| {
                scope.spawn(move || {
                    let file = fs::File::open(disk.join("raw")).unwrap();
                    let mut buffer = vec![0u8; MIB];
                    let mut offset = 0u64;
                    loop {
                        let n = file.read_at(&mut buffer, offset).unwrap();
                        if n == 0 {
                            return offset;
                        }
                        offset += n as u64;
                    }
                })
            })
            .collect();
        readers.into_iter().map(|r| r.join().unwrap()).sum()
    });
    let read = read as f64 / MIB as f64 / started.elapsed().as_secs_f64();
    for disk in disks {
        fs::remove_file(disk.join("raw")).unwrap();
    }
    (write, read)
}

/// A table row: label, unit, the figure, and the raw limit it is held against.
type Row = (&'static str, &'static str, fn(&Figures) -> f64, Option<f64>);

fn main() {
    common::require("mergerfs", "apt-get install mergerfs");
    let mib: usize = std::env::var("DFS_BENCH_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(1024);
    let rounds: usize = std::env::var("DFS_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3).max(1);
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

    println!(
        "{mib} MiB sequential, 256 MiB random file, 10,000 small files; six directories on one disk; \
         medians of {rounds} interleaved round(s)"
    );
    let (mut ours, mut theirs, mut raw) = (Vec::new(), Vec::new(), Vec::new());
    let (mut write_cpu, mut read_cpu) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let gib = mib as f64 / 1024.0;
        common::settle(root.path());
        let (figures, spent) =
            measure(dfs_mount, &at("source"), &at("random-source"), Some(&|| mounts.daemon_cpu_secs()));
        if let Some((write, read)) = spent {
            write_cpu.push(write / gib);
            read_cpu.push(read / gib);
        }
        ours.push(figures);
        common::settle(root.path());
        theirs.push(measure(merger_mount, &at("source"), &at("random-source"), None).0);
        common::settle(root.path());
        raw.push(raw_limit(&mounts.disks, &at("source")));
        let (a, b, r) = (ours[round], theirs[round], raw[round]);
        eprintln!(
            "round {} of {rounds}: write {:.0}/{:.0}/{:.0} MiB/s, read {:.0}/{:.0}/{:.0}, random reads {:.0}/{:.0}, \
             random writes {:.0}/{:.0}, small files {:.0}/{:.0} (DynamicFS/mergerfs/raw)",
            round + 1,
            a.write,
            b.write,
            r.0,
            a.read,
            b.read,
            r.1,
            a.random,
            b.random,
            a.random_write,
            b.random_write,
            a.small,
            b.small
        );
    }
    drop(mounts);

    let pick = |figures: &[Figures], field: fn(&Figures) -> f64| common::median(figures.iter().map(field).collect());
    let raw_write = common::median(raw.iter().map(|r| r.0).collect());
    let raw_read = common::median(raw.iter().map(|r| r.1).collect());
    println!(
        "{:<34} {:>16} {:>12} {:>7} {:>18} {:>9}",
        "workload", "DynamicFS", "mergerfs", "ratio", "limit", "of limit"
    );
    let rows: [Row; 5] = [
        ("sequential write (erasure:4+2)", "MiB/s", |f| f.write, Some(raw_write / 1.5)),
        ("sequential read", "MiB/s", |f| f.read, Some(raw_read)),
        ("random 4 KiB reads", "reads/s", |f| f.random, None),
        ("random 4 KiB writes", "writes/s", |f| f.random_write, None),
        ("create+stat+unlink small files", "files/s", |f| f.small, None),
    ];
    for (label, unit, field, limit) in rows {
        let (a, b) = (pick(&ours, field), pick(&theirs, field));
        let limit_text = limit.map_or_else(String::new, |l| format!("{l:>10.0} {unit}"));
        let of_limit = limit.map_or_else(String::new, |l| format!("{:.2}", a / l));
        println!("{label:<34} {a:>10.0} {unit:<7} {b:>10.0} {:>7.2} {limit_text:>18} {of_limit:>9}", a / b);
    }
    println!(
        "raw six directories: parallel write {raw_write:.0} MiB/s (÷ 1.5 = the erasure:4+2 limit), parallel read {raw_read:.0} MiB/s"
    );
    println!(
        "DynamicFS daemon CPU: {:.2} s per GiB written, {:.2} s per GiB read",
        common::median(write_cpu),
        common::median(read_cpu)
    );
}
