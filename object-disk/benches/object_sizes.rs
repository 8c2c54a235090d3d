//! What the size of an object costs on the store: the same bytes written and read back
//! as objects of 64 KiB to 4 MiB, through `ObjectDisk` (the `BlockDevice` a pool's store
//! disk is), from six threads at once as six store disks would be. DynamicFS stores a
//! fragment as one object — under `erasure:4+2` a 1 MiB extent is six objects of
//! 256 KiB — where JuiceFS packs 4 MiB blocks; this prints what packing fragments into
//! larger objects could gain on the same store.
//!
//! Run: `eval "$(.ci/seaweedfs start /tmp/seaweedfs)"; cargo bench -p dfs-objectdisk
//! --bench object_sizes` (`DFS_BENCH_MIB`, default 192: bytes per size).
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
    println!(
        "object size | objects | write MiB/s | PUTs/s | read MiB/s | GETs/s   ({} MiB each, {THREADS} threads)",
        total >> 20
    );
    for size in [64usize << 10, 256 << 10, 1 << 20, 4 << 20] {
        let location: Location = format!("s3://{bucket}/bench-sizes/{nanos}-{size}").parse().unwrap();
        let disk = Arc::new(ObjectDisk::open(&location, 1 << 40, &access).unwrap());
        let objects = total / size;
        let data: Arc<Vec<u8>> = Arc::new((0..size).map(|i| (i as u8).wrapping_mul(7)).collect());
        let name = |i: usize| BlockName::Fragment { extent: ExtentId(i as u64 / 8), index: (i % 8) as u8 };
        let run = |op: &(dyn Fn(&ObjectDisk, usize) + Sync)| {
            let start = Instant::now();
            std::thread::scope(|scope| {
                for t in 0..THREADS {
                    let disk = disk.clone();
                    scope.spawn(move || {
                        for i in (t..objects).step_by(THREADS) {
                            op(&disk, i);
                        }
                    });
                }
            });
            start.elapsed().as_secs_f64()
        };
        let write = run(&|disk, i| disk.write(name(i), &data).unwrap());
        let read = run(&|disk, i| assert_eq!(disk.read(name(i)).unwrap().len(), size));
        let mib = (objects * size) as f64 / (1 << 20) as f64;
        println!(
            "{:>8} KiB | {objects:>7} | {:>11.0} | {:>6.0} | {:>10.0} | {:>6.0}",
            size >> 10,
            mib / write,
            objects as f64 / write,
            mib / read,
            objects as f64 / read
        );
        for i in 0..objects {
            disk.delete(name(i)).unwrap();
        }
    }
}
