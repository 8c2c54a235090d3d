//! Swarm throughput on the small profile (4–8 disks, 1,000 operations per scenario):
//! seeds per minute on every core, beside the same seeds on one thread in the same run.
//!
//! Run: `cargo bench -p dfs-sim --bench swarm` (DFS_BENCH_SEEDS overrides the count).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use dfs_sim::runner::RunOptions;
use dfs_sim::swarm::{self, Profile};

fn main() {
    let seeds: u64 = std::env::var("DFS_BENCH_SEEDS").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let profile = Profile { ops: 1000, out_of_budget: false };
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("swarm, small profile: 4-8 disks, 1000 ops per scenario, {seeds} seeds");
    println!("{:<26} {:>9} {:>12} {:>8}", "configuration", "seconds", "seeds/min", "failed");
    for (label, threads) in [(format!("{cores} threads (all cores)"), cores), ("1 thread (baseline)".to_string(), 1)] {
        let started = Instant::now();
        let report = swarm::run(1..1 + seeds, &profile, &RunOptions::default(), Some(threads), None);
        let seconds = started.elapsed().as_secs_f64();
        println!(
            "{label:<26} {seconds:>9.1} {:>12.0} {:>8}",
            report.ran as f64 / seconds * 60.0,
            report.failures.len()
        );
    }
}
