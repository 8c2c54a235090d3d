//! `dfs put` and `dfs get` of one 256 MiB file under erasure:4+2 on 6 directory disks,
//! beside a plain `cp` of the same file into one of those directories, in one run.
//!
//! Run: `cargo bench -p dfs-cli --bench put_get` (DFS_BENCH_MIB overrides the size).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::Instant;

fn timed(what: &str, mib: f64, mut command: Command) -> f64 {
    let start = Instant::now();
    let out = command.output().unwrap();
    let seconds = start.elapsed().as_secs_f64();
    assert!(out.status.success(), "{what} failed: {}", String::from_utf8_lossy(&out.stderr));
    let rate = mib / seconds;
    println!("{what:<38} {seconds:>8.2} s {rate:>9.1} MiB/s");
    rate
}

fn dfs(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dfs"));
    command.args(args);
    command
}

fn sh(script: &str) -> Command {
    let mut command = Command::new("sh");
    command.args(["-c", script]);
    command
}

fn main() {
    let mib: usize = std::env::var("DFS_BENCH_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(256);
    let root = tempfile::tempdir().unwrap();
    let at = |name: &str| root.path().join(name).to_str().unwrap().to_string();
    let source = at("source");
    let mut data = vec![0u8; mib << 20];
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    std::fs::write(&source, &data).unwrap();
    drop(data);
    let pool = at("pool");
    assert!(dfs(&["init", "--pool", &pool, "--policy", "erasure:4+2"]).status().unwrap().success());
    for i in 0..6 {
        let disk = at(&format!("disk{i}"));
        std::fs::create_dir(&disk).unwrap();
        assert!(dfs(&["add-disk", "--pool", &pool, "--disk", &disk]).status().unwrap().success());
    }
    let size = mib as f64;
    println!("{mib} MiB file, erasure:4+2 on 6 directory disks (same filesystem), release build");
    println!("{:<38} {:>10} {:>15}", "operation", "time", "throughput");
    timed("cp into a disk directory", size, sh(&format!("cp {source} {}", at("disk0/copy"))));
    timed("cp + sync into a disk directory", size, sh(&format!("cp {source} {0} && sync {0}", at("disk0/copy2"))));
    timed("dfs put (fsynced, erasure:4+2)", size, dfs(&["put", "--pool", &pool, &source, "/file"]));
    let back = at("back");
    timed("dfs get", size, dfs(&["get", "--pool", &pool, "/file", &back]));
    timed("cat a disk-directory copy (baseline)", size, sh(&format!("cat {} > {}", at("disk0/copy"), at("catted"))));
    assert!(files_equal(Path::new(&source), Path::new(&back)), "dfs get returned different bytes");
}

fn files_equal(a: &Path, b: &Path) -> bool {
    std::fs::read(a).unwrap() == std::fs::read(b).unwrap()
}
