//! What the engine benchmarks share: a pool of six directory disks in a temp dir, and
//! files written through the engine.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use dfs_engine::data::namespace::Owner;
use dfs_engine::pooldir::PoolDir;
use dfs_engine::{Ino, Pool, PoolOptions};

const OWNER: Owner = Owner { mode: 0o644, uid: 0, gid: 0, umask: 0 };

/// A pool under `policy` on six 1 GiB directory disks; the temp dir lives as long as
/// the first element.
pub fn six_disk_pool(policy: &str, tiering: bool, options: PoolOptions) -> (tempfile::TempDir, PoolDir, Pool) {
    let root = tempfile::tempdir().unwrap();
    let pool_path = root.path().join("pool");
    PoolDir::init(&pool_path, policy.parse().unwrap(), tiering).unwrap();
    let (mut dir, mut pool, _) = PoolDir::open(&pool_path, options).unwrap();
    for i in 0..6 {
        let disk = root.path().join(format!("disk{i}"));
        std::fs::create_dir(&disk).unwrap();
        dir.add_disk(&mut pool, &disk, Some(1 << 30)).unwrap();
    }
    (root, dir, pool)
}

/// Writes `bytes` of a pattern seeded by `seed` as `/name`, fsynced.
pub fn write_file(pool: &mut Pool, name: &str, bytes: usize, seed: u64) -> Ino {
    let ino = pool.create(Ino::ROOT, name.as_bytes(), OWNER).unwrap().ino;
    let fh = pool.open_file(ino).unwrap();
    let data: Vec<u8> = (0..bytes).map(|b| (b as u64).wrapping_mul(seed + 3).to_le_bytes()[1]).collect();
    pool.write(fh, 0, &data).unwrap();
    pool.fsync(fh).unwrap();
    pool.release(fh).unwrap();
    ino
}
