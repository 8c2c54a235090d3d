//! Rebuild and re-encode throughput, beside the raw copy speed of the same bytes on this
//! machine, in one run:
//! - rebuild: 1 GiB under erasure:4+2 on six directories; one disk fails, a replacement
//!   joins, `dfs rebuild` restores every extent (MiB/s of extent data made whole again,
//!   and of fragment bytes written);
//! - re-encode: 1 GiB under replicate:3, `dfs change-policy` to erasure:4+2;
//! - baseline: `cp` of a 1 GiB file then `sync`, between directories on the same disk.
//!
//! `cargo bench -p dfs-cli --bench rebuild_reencode` (DFS_BENCH_MIB overrides 1024).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use rand::{Rng, SeedableRng};

fn dfs(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_dfs")).args(args).output().unwrap();
    assert!(out.status.success(), "dfs {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sync() {
    let _ = Command::new("sync").status();
}

/// A pool of `disks` directories under `root` holding `source` at /data under `policy`.
fn pool_with(root: &Path, name: &str, policy: &str, disks: usize, source: &Path) -> PathBuf {
    let pool = root.join(name);
    dfs(&["init", "--pool", pool.to_str().unwrap(), "--policy", policy]);
    for i in 0..disks {
        let disk = root.join(format!("{name}-disk{i}"));
        fs::create_dir(&disk).unwrap();
        dfs(&["add-disk", "--pool", pool.to_str().unwrap(), "--disk", disk.to_str().unwrap()]);
    }
    dfs(&["put", "--pool", pool.to_str().unwrap(), source.to_str().unwrap(), "/data"]);
    sync();
    pool
}

fn main() {
    let mib: usize = std::env::var("DFS_BENCH_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(1024);
    let root = tempfile::tempdir().unwrap();
    let source = root.path().join("source");
    let mut data = vec![0u8; mib << 20];
    rand_chacha::ChaCha8Rng::seed_from_u64(3).fill(&mut data[..]);
    fs::write(&source, &data).unwrap();
    drop(data);
    sync();

    // Baseline: copying the same bytes with cp, made durable.
    let copy = root.path().join("copy");
    let started = Instant::now();
    assert!(Command::new("cp").arg(&source).arg(&copy).status().unwrap().success());
    sync();
    let raw = mib as f64 / started.elapsed().as_secs_f64();
    fs::remove_file(&copy).unwrap();

    // Rebuild after a disk failure, onto a replacement disk.
    let pool = pool_with(root.path(), "ec", "erasure:4+2", 6, &source);
    let p = pool.to_str().unwrap();
    dfs(&["fail-disk", "--pool", p, "--disk", "d3"]);
    let spare = root.path().join("ec-spare");
    fs::create_dir(&spare).unwrap();
    dfs(&["add-disk", "--pool", p, "--disk", spare.to_str().unwrap()]);
    let queue: serde_json::Value = serde_json::from_str(&dfs(&["rebuild-status", "--pool", p, "--json"])).unwrap();
    let extents = queue.as_array().unwrap().len() as f64;
    let started = Instant::now();
    dfs(&["rebuild", "--pool", p]);
    let seconds = started.elapsed().as_secs_f64();
    let rebuild_data = extents / seconds;
    let rebuild_fragments = extents / 4.0 / seconds;

    // Re-encode replicate:3 -> erasure:4+2.
    let pool = pool_with(root.path(), "r3", "replicate:3", 6, &source);
    let started = Instant::now();
    dfs(&["change-policy", "--pool", pool.to_str().unwrap(), "--policy", "erasure:4+2"]);
    let reencode = mib as f64 / started.elapsed().as_secs_f64();

    println!("{mib} MiB; six directories on one disk; this machine");
    println!("{:<46} {:>10} {:>9}", "operation", "MiB/s", "vs cp");
    println!("{:<46} {raw:>10.0} {:>9.2}", "cp + sync (raw copy of the same bytes)", 1.0);
    println!(
        "{:<46} {rebuild_data:>10.0} {:>9.2}",
        format!("rebuild, extent data restored ({extents:.0} extents)"),
        rebuild_data / raw
    );
    println!("{:<46} {rebuild_fragments:>10.0} {:>9.2}", "rebuild, fragment bytes written", rebuild_fragments / raw);
    println!("{:<46} {reencode:>10.0} {:>9.2}", "re-encode replicate:3 -> erasure:4+2", reencode / raw);
}
