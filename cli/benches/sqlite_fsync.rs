//! What an `fsync` costs, as a database sees it: one SQLite program doing single-row
//! transactions (each `COMMIT` fsyncs its journal and its database), run in the same
//! process on the host's own filesystem, on the DynamicFS mount (`erasure:4+2` over six
//! directories of that filesystem) and on mergerfs over the same six directories — in the
//! default rollback-journal mode and in WAL mode. Figures are medians of interleaved
//! rounds; the ratio is DynamicFS ÷ the host filesystem, which also pays for its fsyncs.
//! A second table gives each run's median transaction (its latency): this machine's
//! stalls land in a run's mean, and so in its rate, more than in its median.
//!
//! Run as root with python3 (its `sqlite3` module drives SQLite) and Debian's mergerfs:
//! `cargo bench -p dfs-cli --bench sqlite_fsync` (DFS_BENCH_TX overrides 500 transactions
//! a run, DFS_BENCH_ROUNDS overrides 3).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::Path;
use std::process::Command;

mod common;

/// Single-row transactions against a new database at argv[1]; prints transactions/s and
/// the median transaction in µs.
const PROGRAM: &str = r#"
import os, sqlite3, statistics, sys, time
path, count, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
db = sqlite3.connect(path, isolation_level=None)
db.execute(f"pragma journal_mode={mode}")
db.execute("create table t(id integer primary key, v text)")
took = []
started = time.monotonic()
for i in range(count):
    began = time.perf_counter()
    db.execute("begin")
    db.execute("insert into t(v) values (?)", ("x" * 100,))
    db.execute("commit")
    took.append(time.perf_counter() - began)
print(count / (time.monotonic() - started), statistics.median(took) * 1e6)
"#;

/// One run's transactions per second and median transaction (µs).
#[derive(Clone, Copy)]
struct Run {
    rate: f64,
    median_us: f64,
}

/// `count` single-row transactions in `dir`, journal `mode`, or SQLite's error (mergerfs
/// with `cache.files=off` cannot map WAL's shared memory).
fn transactions(dir: &Path, count: usize, mode: &str) -> Result<Run, String> {
    let db = dir.join(format!("bench-{mode}.db"));
    for suffix in ["", "-journal", "-wal", "-shm"] {
        let _ = fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let output =
        Command::new("python3").args(["-c", PROGRAM, db.to_str().unwrap(), &count.to_string(), mode]).output().unwrap();
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(stderr.lines().last().unwrap_or("failed").to_string());
    }
    let stdout = String::from_utf8(output.stdout).unwrap();
    let figures: Vec<f64> = stdout.split_whitespace().map(|f| f.parse().unwrap()).collect();
    Ok(Run { rate: figures[0], median_us: figures[1] })
}

/// The median over runs of `figure` as `N` + `unit`, or `fails` (the error goes to
/// stderr, once: `report` says whether this is the summary that reports it).
fn summary(runs: &[Result<Run, String>], figure: fn(&Run) -> f64, unit: &str, report: bool) -> (String, Option<f64>) {
    match runs.iter().cloned().collect::<Result<Vec<Run>, String>>() {
        Ok(all) => {
            let median = common::median(all.iter().map(figure).collect());
            (format!("{median:.0} {unit}"), Some(median))
        }
        Err(error) => {
            if report {
                eprintln!("a run failed: {error}");
            }
            ("fails".to_string(), None)
        }
    }
}

fn main() {
    common::require("mergerfs", "apt-get install mergerfs");
    if Command::new("python3").args(["-c", "import sqlite3"]).status().map_or(true, |s| !s.success()) {
        eprintln!("python3 with its sqlite3 module is not installed: apt-get install python3");
        std::process::exit(2);
    }
    let count: usize = std::env::var("DFS_BENCH_TX").ok().and_then(|v| v.parse().ok()).unwrap_or(500);
    let rounds: usize = std::env::var("DFS_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3).max(1);
    let root = tempfile::tempdir().unwrap();
    let host = root.path().join("host");
    fs::create_dir(&host).unwrap();
    let mounts = common::SixDisks::mount(root.path(), "category.create=mfs,cache.files=off");
    let places: [(&str, &Path); 3] =
        [("host filesystem", &host), ("DynamicFS", &mounts.dynamicfs), ("mergerfs", &mounts.mergerfs)];

    println!("{count} single-row SQLite transactions per run; medians of {rounds} interleaved round(s)");
    println!(
        "{:<22} {:>16} {:>12} {:>12} {:>22}",
        "journal mode", "host fs", "DynamicFS", "mergerfs", "DynamicFS ÷ host fs"
    );
    let mut latencies = Vec::new();
    for mode in ["delete", "wal"] {
        let mut figures: [Vec<Result<Run, String>>; 3] = Default::default();
        for round in 0..rounds {
            for (i, (_, dir)) in places.iter().enumerate() {
                figures[i].push(transactions(dir, count, mode));
            }
            eprintln!("{mode}: round {} of {rounds} done", round + 1);
        }
        let label = if mode == "delete" { "default (rollback)" } else { "WAL" };
        let [(host, host_tx), (ours, ours_tx), (theirs, _)] =
            figures.clone().map(|runs| summary(&runs, |r| r.rate, "tx/s", true));
        let ratio = host_tx.zip(ours_tx).map_or_else(String::new, |(h, o)| format!("{:.2}", o / h));
        println!("{label:<22} {host:>16} {ours:>12} {theirs:>12} {ratio:>22}");
        let [(host, host_us), (ours, ours_us), (theirs, _)] =
            figures.map(|runs| summary(&runs, |r| r.median_us, "µs", false));
        let ratio = host_us.zip(ours_us).map_or_else(String::new, |(h, o)| format!("{:.2}", h / o));
        latencies.push(format!("{label:<22} {host:>16} {ours:>12} {theirs:>12} {ratio:>22}"));
    }
    println!("\nmedian transaction (latency), medians of the rounds; the ratio is host fs ÷ DynamicFS");
    println!(
        "{:<22} {:>16} {:>12} {:>12} {:>22}",
        "journal mode", "host fs", "DynamicFS", "mergerfs", "host fs ÷ DynamicFS"
    );
    for line in latencies {
        println!("{line}");
    }
}
