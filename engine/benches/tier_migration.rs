//! Read latency with and without a pending lazy migration, on six directory disks:
//! a 1 MiB extent read under erasure:4+2 with nothing pending (the baseline), with its
//! migration to replicate:3 queued by the read, with the background worker migrating
//! between reads, and after the migration. The read only queues; the re-encode runs in
//! `background_step`, whose cost is printed apart.
//!
//! Run: `cargo bench -p dfs-engine --bench tier_migration`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

mod common;

use dfs_engine::temperature::config::TieringConfig;
use dfs_engine::{Ino, Pool, PoolOptions};

const FILES: usize = 96;
const EXTENT: usize = 1 << 20;
const ROUNDS: usize = 3;

fn read_file(pool: &mut Pool, ino: Ino) -> Duration {
    let started = Instant::now();
    let fh = pool.open_file(ino).unwrap();
    let data = pool.read(fh, 0, EXTENT).unwrap();
    pool.release(fh).unwrap();
    assert_eq!(data.len(), EXTENT);
    started.elapsed()
}

struct Figures {
    p50: f64,
    p99: f64,
    mean: f64,
    reads: usize,
}

fn figures(mut samples: Vec<Duration>) -> Figures {
    samples.sort();
    let micros = |d: Duration| d.as_secs_f64() * 1e6;
    let at = |q: f64| micros(samples[((samples.len() - 1) as f64 * q).round() as usize]);
    let mean = samples.iter().map(|d| micros(*d)).sum::<f64>() / samples.len() as f64;
    Figures { p50: at(0.5), p99: at(0.99), mean, reads: samples.len() }
}

fn print(label: &str, f: &Figures) {
    println!("{label:<44} {:>8.0} {:>8.0} {:>8.0} {:>6}", f.p50, f.p99, f.mean, f.reads);
}

fn main() {
    // No extent cache: every read goes to the fragments.
    let options = PoolOptions { extent_cache_bytes: 0, ..PoolOptions::default() };
    let (_root, _dir, mut pool) = common::six_disk_pool("erasure:4+2", true, options);
    // Hot by rate alone, so passes run back to back make the extents hot.
    let mut config = TieringConfig::default();
    config.thresholds.hot_ops_per_day = 2.0;
    config.thresholds.warm_ops_per_day = 1.0;
    config.thresholds.hot_within_secs = 0;
    config.thresholds.warm_within_secs = 0;
    pool.set_tiering(config).unwrap();
    let inodes: Vec<Ino> =
        (0..FILES).map(|i| common::write_file(&mut pool, &format!("f{i}"), EXTENT, i as u64)).collect();
    let measure = |pool: &mut Pool| -> Vec<Duration> {
        (0..ROUNDS).flat_map(|_| inodes.clone()).map(|ino| read_file(pool, ino)).collect()
    };
    println!("read latency of one 1 MiB extent, erasure:4+2 -> replicate:3, {FILES} files (microseconds)");
    println!("{:<44} {:>8} {:>8} {:>8} {:>6}", "", "p50", "p99", "mean", "reads");
    let baseline = figures(measure(&mut pool));
    assert_eq!(pool.pending_migrations().len(), 0);
    print("no migration pending (baseline)", &baseline);

    for _ in 0..4 {
        for ino in &inodes {
            read_file(&mut pool, *ino);
        }
        pool.classify_pass().unwrap();
    }
    assert_eq!(pool.pending_migrations().len(), FILES, "every extent should be hot and waiting");
    let pending = figures(measure(&mut pool));
    assert_eq!(pool.pending_migrations().len(), FILES, "a read must not migrate anything itself");
    print("migration pending, queued by the read", &pending);

    let mut reads = Vec::new();
    let mut steps = Vec::new();
    let mut migrated = 0;
    for ino in inodes.iter().cycle() {
        if pool.pending_migrations().is_empty() {
            break;
        }
        let started = Instant::now();
        migrated += pool.background_step().unwrap();
        steps.push(started.elapsed());
        reads.push(read_file(&mut pool, *ino));
    }
    let during = figures(reads);
    print("worker migrating between reads", &during);
    let after = figures(measure(&mut pool));
    print("after migration (replicate:3)", &after);
    let step = figures(steps);
    println!(
        "\nthe migration itself, in background_step (not in any read above): {migrated} extents in {} steps, \
         {:.1} ms per step (p50), {:.1} ms per extent",
        step.reads,
        step.p50 / 1e3,
        step.mean * step.reads as f64 / migrated.max(1) as f64 / 1e3
    );
    println!("pending/baseline p50 ratio: {:.2}", pending.p50 / baseline.p50);
}
