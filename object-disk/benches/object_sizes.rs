//! What the size of an object costs on the store, and what packing fragments gains: the
//! same bytes written and read back through `ObjectDisk` (the `BlockDevice` a pool's
//! store disk is), from six threads at once as six store disks would be —
//! - as objects of one size, 64 KiB to 4 MiB (blocks the disk keeps one object each);
//! - as fragments of 256 KiB (one of a 1 MiB extent under `erasure:4+2`), which the disk
//!   gathers into packs of about 1 MiB, synced at the end; read back in the order
//!   written, one at a time and four at a time (the engine reads ahead); and the time
//!   an open of those disks takes, which reads every pack's header.
//!
//! Run: `eval "$(.ci/seaweedfs start /tmp/seaweedfs)"; cargo bench -p dfs-objectdisk
//! --bench object_sizes` (`DFS_BENCH_MIB`, default 192: bytes per row).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use dfs_engine::media::device::{BlockDevice, BlockName, ExtentId};
use dfs_objectdisk::{Access, Location, ObjectDisk};

const THREADS: usize = 6;

fn main() {
    let access = Access::from_env();
    assert!(
        access.endpoint.is_some(),
        "this benchmark needs an S3-compatible store: run `eval \"$(.ci/seaweedfs start /tmp/seaweedfs)\"` first"
    );
    let bucket = std::env::var("DFS_TEST_S3_BUCKET").expect("DFS_TEST_S3_BUCKET names the bucket (see .ci/seaweedfs)");
    let total: usize = std::env::var("DFS_BENCH_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(192) << 20;
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    println!("({} MiB a row, {THREADS} threads, one disk each)", total >> 20);
    println!("| blocks | PUTs | write MiB/s | PUTs/s | read MiB/s |");
    println!("|---|---|---|---|---|");
    let rows: [(&str, usize, bool, usize); 6] = [
        ("64 KiB objects", 64 << 10, false, 1),
        ("256 KiB objects", 256 << 10, false, 1),
        ("1 MiB objects", 1 << 20, false, 1),
        ("4 MiB objects", 4 << 20, false, 1),
        ("256 KiB fragments, packed, read one at a time", 256 << 10, true, 1),
        ("256 KiB fragments, packed, read four at a time", 256 << 10, true, 4),
    ];
    let mut opening = None;
    for (row, (label, size, packed, readers)) in rows.into_iter().enumerate() {
        let disks: Vec<Arc<ObjectDisk>> = (0..THREADS)
            .map(|t| {
                let location: Location = format!("s3://{bucket}/bench-sizes/{nanos}-{row}-{t}").parse().unwrap();
                Arc::new(ObjectDisk::open(&location, 1 << 40, &access).unwrap())
            })
            .collect();
        let blocks = total / size / THREADS;
        let data: Arc<Vec<u8>> = Arc::new((0..size).map(|i| (i as u8).wrapping_mul(7)).collect());
        let name = move |i: usize| match packed {
            true => BlockName::Fragment { extent: ExtentId(i as u64), index: 0 },
            false => BlockName::StorePage { id: i as u64 },
        };
        let run = |op: &(dyn Fn(&ObjectDisk, usize) + Sync), lanes: usize| {
            let start = Instant::now();
            std::thread::scope(|scope| {
                for disk in &disks {
                    for lane in 0..lanes {
                        scope.spawn(move || {
                            for i in (lane..blocks).step_by(lanes) {
                                op(disk, i);
                            }
                        });
                    }
                }
            });
            start.elapsed().as_secs_f64()
        };
        let write = run(
            &|disk, i| {
                disk.write(name(i), &data).unwrap();
                if i + 1 == blocks {
                    disk.sync().unwrap();
                }
            },
            1,
        );
        let read = run(&|disk, i| assert_eq!(disk.read(name(i)).unwrap().len(), size), readers);
        if packed && readers == 1 {
            // An open lists the packs and reads every header.
            let start = Instant::now();
            for (t, disk) in disks.iter().enumerate() {
                let location: Location = format!("s3://{bucket}/bench-sizes/{nanos}-{row}-{t}").parse().unwrap();
                let again = ObjectDisk::open(&location, 1 << 40, &access).unwrap();
                assert_eq!(again.used_bytes(), disk.used_bytes());
            }
            let packs = (blocks * size).div_ceil(1 << 20) * THREADS;
            opening = Some((packs, start.elapsed().as_secs_f64()));
        }
        let mib = (blocks * THREADS * size) as f64 / (1 << 20) as f64;
        let puts = if packed { (blocks * size).div_ceil(1 << 20) } else { blocks } * THREADS;
        println!("| {label} | {puts} | {:.0} | {:.0} | {:.0} |", mib / write, puts as f64 / write, mib / read);
        for disk in &disks {
            for i in 0..blocks {
                disk.delete(name(i)).unwrap();
            }
            disk.sync().unwrap();
        }
    }
    if let Some((packs, secs)) = opening {
        println!(
            "opening the six packed disks ({packs} packs, indexes of {} packs): {:.0} ms, {:.2} ms a pack",
            dfs_objectdisk::INDEX_PACKS,
            secs * 1000.0,
            secs * 1000.0 / packs as f64
        );
    }
}
