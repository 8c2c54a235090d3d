//! Scrub throughput, and what the background scrub costs foreground reads: 256 MiB under
//! erasure:4+2 on six directory disks. First a one-shot scrub alone (MiB of extent data
//! verified per second, every fragment read and checked); then sequential reads of every
//! file with no scrub (the baseline) and with the background scrub running beside them
//! at each intensity, the way the daemon runs it: a worker thread calling `scrub_tick`
//! every 50 ms under the pool's lock (without pause at `high`).
//!
//! Run: `cargo bench -p dfs-engine --bench scrub`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;

use dfs_engine::services::scrub::Intensity;
use dfs_engine::{Ino, Pool, PoolOptions};

const FILES: usize = 16;
const FILE_BYTES: usize = 16 << 20;
const READ_BYTES: usize = 1 << 20;

fn mib_per_sec(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / elapsed.as_secs_f64()
}

/// Reads every file front to back in 1 MiB requests, taking the lock per request.
fn read_everything(pool: &Mutex<Pool>, inodes: &[Ino]) -> (u64, Duration) {
    let started = Instant::now();
    let mut bytes = 0;
    for ino in inodes {
        let fh = pool.lock().unwrap().open_file(*ino).unwrap();
        for offset in (0..FILE_BYTES).step_by(READ_BYTES) {
            let data = pool.lock().unwrap().read(fh, offset as u64, READ_BYTES).unwrap();
            bytes += data.len() as u64;
        }
        pool.lock().unwrap().release(fh).unwrap();
    }
    (bytes, started.elapsed())
}

fn main() {
    let options = PoolOptions { extent_cache_bytes: 0, ..PoolOptions::default() };
    let (_root, _dir, mut pool) = common::six_disk_pool("erasure:4+2", false, options);
    let inodes: Vec<Ino> =
        (0..FILES).map(|i| common::write_file(&mut pool, &format!("f{i}"), FILE_BYTES, i as u64)).collect();
    let data_mib = (FILES * FILE_BYTES) as f64 / (1 << 20) as f64;
    println!("{data_mib:.0} MiB in {FILES} files, erasure:4+2 on six directory disks (page cache warm)\n");

    let started = Instant::now();
    let report = pool.scrub_all(None, false).unwrap();
    let elapsed = started.elapsed();
    assert_eq!(report.findings.len(), 0);
    println!(
        "one-shot scrub alone: {} extents, {} fragments in {:.2} s: {:.0} MiB/s of extent data verified ({:.0} MiB/s of fragments read)",
        report.extents_checked,
        report.fragments_checked,
        elapsed.as_secs_f64(),
        data_mib / elapsed.as_secs_f64(),
        mib_per_sec(report.bytes_checked, elapsed)
    );

    let pool = Arc::new(Mutex::new(pool));
    println!("\nsequential read of every file, 1 MiB requests, beside the background scrub:");
    println!("{:<28} {:>10} {:>10} {:>22}", "background scrub", "MiB/s", "vs none", "scrubbed meanwhile");
    read_everything(&pool, &inodes); // warm-up, not counted
    let (bytes, elapsed) = read_everything(&pool, &inodes);
    let baseline = mib_per_sec(bytes, elapsed);
    println!("{:<28} {:>10.0} {:>10.2} {:>22}", "none (baseline)", baseline, 1.0, "-");
    for intensity in [Intensity::Low, Intensity::Medium, Intensity::High] {
        pool.lock().unwrap().scrub_start(Some(intensity)).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let checked = Arc::new(AtomicU64::new(0));
        let worker = {
            let (pool, stop, checked) = (pool.clone(), stop.clone(), checked.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let tick = pool.lock().unwrap().scrub_tick().unwrap();
                    checked.fetch_add(tick.extents as u64, Ordering::Relaxed);
                    if intensity != Intensity::High || tick.extents == 0 {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            })
        };
        let (bytes, elapsed) = read_everything(&pool, &inodes);
        stop.store(true, Ordering::Relaxed);
        worker.join().unwrap();
        pool.lock().unwrap().scrub_stop().unwrap();
        let rate = mib_per_sec(bytes, elapsed);
        let meanwhile = format!("{} extents", checked.load(Ordering::Relaxed));
        println!("{:<28} {:>10.0} {:>10.2} {:>22}", intensity.to_string(), rate, rate / baseline, meanwhile);
    }
}
