//! The random-I/O exerciser `fsx` (the Rust one, 0.3.2: `cargo install fsx --version
//! 0.3.2`) with every operation it has turned on — reads, writes, mapped reads and
//! writes (each msync'd), truncate, fsync, fdatasync, posix_fallocate, hole punching,
//! sendfile, fadvise, copy_file_range, close/reopen and cache invalidation — on a
//! DynamicFS mount (erasure:4+2 over six directories), on one plain directory of the
//! host, and on mergerfs over the same six directories, in one run. fsx checks every
//! read against its model of the file; a miscompare stops it with a non-zero exit,
//! which fails this benchmark. Prints operations per second side by side.
//!
//! The operations run as fsx processes of `OPS_PER_RUN` each, seeds 1, 2, 3, …: fsx
//! 0.3.2 never unmaps the mapping of a mapped read, so within one process every later
//! truncate, msync and hole punch walks all the mappings leaked so far and each
//! operation gets slower — on every filesystem (ext4: 3.9 s for 20,000 operations,
//! 46 s for 80,000). Fresh processes keep the figures about the filesystem.
//!
//! Run as root with mergerfs installed: `cargo bench -p dfs-cli --bench fsx`
//! (DFS_FSX_OPS overrides the 1,000,000 operations in all, DFS_FSX_OPS_PER_RUN the
//! 10,000 per process).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

mod common;

/// Every operation fsx 0.3.2 knows, weighted as its sample configuration weighs the
/// common ones; the file grows to 256 KiB, operations are 1 byte to 64 KiB. (At the
/// default minimum of 0 bytes fsx issues `posix_fallocate` of length 0, which Linux
/// refuses with EINVAL on every filesystem, ext4 included, and fsx takes that for a
/// failure.)
const CONFIG: &str = include_str!("../tests/fsx/config.toml");

/// Runs fsx on `file` `runs` times, `ops` operations each, seeds 1 to `runs`; returns
/// operations per second, or fsx's verdict when a run failed.
fn exercise(label: &str, file: &Path, config: &Path, runs: u64, ops: u64) -> Result<f64, String> {
    let started = Instant::now();
    for seed in 1..=runs {
        exercise_once(label, file, config, ops, seed)?;
    }
    Ok((runs * ops) as f64 / started.elapsed().as_secs_f64())
}

fn exercise_once(label: &str, file: &Path, config: &Path, ops: u64, seed: u64) -> Result<(), String> {
    let artifacts = file.parent().unwrap().join(format!("fsx-{label}"));
    fs::create_dir_all(&artifacts).unwrap();
    let out = Command::new("fsx")
        .args(["-f", config.to_str().unwrap(), "-N", &ops.to_string(), "-S", &seed.to_string()])
        .args(["-P", artifacts.to_str().unwrap()])
        .arg(file)
        .output()
        .unwrap_or_else(|e| panic!("fsx cannot start ({e}); install it: cargo install fsx --version 0.3.2"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() || !text.contains("All operations completed A-OK!") {
        let log = file.parent().and_then(Path::parent).unwrap_or(file).join(format!("fsx-{label}.log"));
        fs::write(&log, &text).unwrap();
        let verdict = text.lines().filter(|l| !l.starts_with("[ERROR fsx] ")).take(20).collect::<Vec<_>>().join("\n");
        return Err(format!(
            "fsx on {label}, seed {seed}, FAILED ({}); whole output in {}:\n{verdict}",
            out.status,
            log.display()
        ));
    }
    Ok(())
}

fn main() {
    common::require("fsx", "cargo install fsx --version 0.3.2");
    common::require("mergerfs", "apt-get install mergerfs");
    let total: u64 = std::env::var("DFS_FSX_OPS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let ops: u64 = std::env::var("DFS_FSX_OPS_PER_RUN").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let runs = total.div_ceil(ops.max(1));
    let root = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let at = |name: &str| -> PathBuf { root.path().join(name) };
    let config = at("fsx.toml");
    fs::write(&config, CONFIG).unwrap();
    // mmap needs the page cache, which mergerfs's default direct I/O would bypass.
    let mounts = common::SixDisks::mount(root.path(), "category.create=mfs,cache.files=partial");
    let plain = at("plain");
    fs::create_dir(&plain).unwrap();

    println!(
        "fsx 0.3.2, {} operations ({runs} runs of {ops}, seeds 1-{runs}), every operation enabled; six directories on one disk",
        runs * ops
    );
    let results = [
        exercise("dynamicfs", &mounts.dynamicfs.join("fsx-file"), &config, runs, ops),
        exercise("plain", &plain.join("fsx-file"), &config, runs, ops),
        exercise("mergerfs", &mounts.mergerfs.join("fsx-file"), &config, runs, ops),
    ];
    drop(mounts);
    let [ours, host, theirs] = results.map(|result| {
        result.unwrap_or_else(|verdict| {
            eprintln!("{verdict}");
            std::process::exit(1)
        })
    });

    println!("{:<28} {:>12} {:>16}", "fsx target", "ops/s", "ratio to plain");
    for (label, figure) in
        [("DynamicFS (erasure:4+2)", ours), ("plain directory (ext4)", host), ("mergerfs (6 directories)", theirs)]
    {
        println!("{label:<28} {figure:>12.0} {:>16.2}", figure / host);
    }
    println!("0 miscompares: fsx verified every read on all three");
}
