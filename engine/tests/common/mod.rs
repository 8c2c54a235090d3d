//! Shared helpers for engine integration tests: pools over directory disks in a tempdir.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use dfs_engine::data::namespace::Owner;
pub use dfs_engine::media::dirdisk::{stored_fragments, StoredFragment};
use dfs_engine::pooldir::PoolDir;
use dfs_engine::{Ino, Policy, Pool, PoolOptions};

pub const OWNER: Owner = Owner { mode: 0o644, uid: 1000, gid: 1000, umask: 0 };

pub struct TestPool {
    pub root: tempfile::TempDir,
    pub dir: Option<PoolDir>,
    pub pool: Option<Pool>,
}

pub fn options() -> PoolOptions {
    PoolOptions { seed: 42, check_invariants: true, ..PoolOptions::default() }
}

impl TestPool {
    /// A pool with one disk per capacity (MiB) and the given default policy.
    pub fn new(capacities_mib: &[u64], policy: &str) -> TestPool {
        Self::with_options(capacities_mib, policy, options())
    }

    /// `new`, opened with `options` (for tests too large for a full invariant check
    /// after every commit).
    pub fn with_options(capacities_mib: &[u64], policy: &str, options: PoolOptions) -> TestPool {
        let root = tempfile::tempdir().unwrap();
        let pool_path = root.path().join("pool");
        PoolDir::init(&pool_path, policy.parse::<Policy>().unwrap(), true).unwrap();
        let (mut dir, mut pool, _) = PoolDir::open(&pool_path, options).unwrap();
        for (i, mib) in capacities_mib.iter().enumerate() {
            let disk = root.path().join(format!("disk{i}"));
            std::fs::create_dir(&disk).unwrap();
            dir.add_disk(&mut pool, &disk, Some(mib << 20)).unwrap();
        }
        TestPool { root, dir: Some(dir), pool: Some(pool) }
    }

    pub fn pool(&mut self) -> &mut Pool {
        self.pool.as_mut().unwrap()
    }

    pub fn pool_path(&self) -> PathBuf {
        self.root.path().join("pool")
    }

    pub fn disk_path(&self, i: usize) -> PathBuf {
        self.root.path().join(format!("disk{i}"))
    }

    /// Closes the pool cleanly (a final durability barrier, as at unmount) and opens it again.
    pub fn reopen(&mut self) -> dfs_engine::OpenReport {
        if let Some(pool) = self.pool.as_mut() {
            pool.sync().unwrap();
        }
        self.pool = None;
        self.dir = None;
        let (dir, pool, report) = PoolDir::open(&self.pool_path(), options()).unwrap();
        self.dir = Some(dir);
        self.pool = Some(pool);
        report
    }

    /// Writes a whole file at `/name` and fsyncs it.
    pub fn write_file(&mut self, name: &str, data: &[u8]) -> Ino {
        let pool = self.pool();
        let ino = pool.create(Ino::ROOT, name.as_bytes(), OWNER).unwrap().ino;
        let fh = pool.open_file(ino).unwrap();
        pool.write(fh, 0, data).unwrap();
        pool.fsync(fh).unwrap();
        pool.release(fh).unwrap();
        ino
    }

    pub fn read_file(&mut self, name: &str) -> dfs_engine::Result<Vec<u8>> {
        let pool = self.pool();
        let ino = pool.resolve(name)?;
        let size = pool.getattr(ino)?.size;
        let fh = pool.open_file(ino)?;
        let data = pool.read(fh, 0, size as usize);
        pool.release(fh)?;
        data
    }
}

/// Deterministic pseudo-random bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Every fragment stored on a disk directory (in its segments, or in files of their own
/// for a pool made before segments), by name.
pub fn fragments_on(disk: &Path) -> Vec<StoredFragment> {
    stored_fragments(disk).unwrap()
}

/// Every block file of one namespace (`journal`, `checkpoint`, `fragment`) of a disk
/// directory, in name order.
pub fn blocks(disk: &Path, namespace: &str) -> Vec<PathBuf> {
    // Dot files are not blocks: a write in progress (`.tmp-`) or a spare record file.
    let mut out: Vec<PathBuf> = std::fs::read_dir(disk.join(namespace))
        .map(|entries| entries.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    out.retain(|path| !path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')));
    out.sort();
    out
}

/// Sequence numbers of the journal records on the disk at `disk` (closed), wherever the
/// disk keeps them (its journal log, or files).
pub fn journal_records(disk: &Path) -> Vec<u64> {
    use dfs_engine::media::device::{BlockDevice, BlockKind, BlockName};
    let device = dfs_engine::media::dirdisk::DirDisk::open(disk).unwrap();
    let names = device.list(BlockKind::Journal).unwrap();
    names.into_iter().map(|name| if let BlockName::Journal { seq } = name { seq } else { unreachable!() }).collect()
}

/// The bytes of journal record `seq` on the disk at `disk` (closed).
pub fn read_record(disk: &Path, seq: u64) -> Vec<u8> {
    use dfs_engine::media::device::{BlockDevice, BlockName};
    dfs_engine::media::dirdisk::DirDisk::open(disk).unwrap().read(BlockName::Journal { seq }).unwrap()
}

/// Writes `bytes` as journal record `seq` on the disk at `disk` (closed) and syncs it:
/// a record as a crash, rot or another history would have left it.
pub fn write_record(disk: &Path, seq: u64, bytes: &[u8]) {
    use dfs_engine::media::device::{BlockDevice, BlockName};
    let device = dfs_engine::media::dirdisk::DirDisk::open(disk).unwrap();
    device.write(BlockName::Journal { seq }, bytes).unwrap();
    device.sync().unwrap();
}

/// Removes every journal record from the disk at `disk` (closed).
pub fn remove_records(disk: &Path) {
    for path in blocks(disk, "journal") {
        std::fs::remove_file(path).unwrap();
    }
    let log = disk.join(dfs_engine::media::journal_log::LOG_DIR);
    if log.exists() {
        std::fs::remove_dir_all(log).unwrap();
    }
}

/// Rots every page of the metadata store on each of the first `disks` disks (one byte
/// flipped mid-block): nothing the store holds can be read back from any replica.
pub fn rot_every_store_page(t: &TestPool, disks: usize) {
    for disk in 0..disks {
        for page in blocks(&t.disk_path(disk), "store-page") {
            let mut bytes = std::fs::read(&page).unwrap();
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x55;
            std::fs::write(&page, bytes).unwrap();
        }
    }
}
