//! Candidate stores for the paged metadata (issue 17, item 1) on the metadata workload:
//! N extent records as the engine encodes them (postcard; `erasure:4+2` over six disks,
//! a BLAKE3 hash each) keyed by extent id. For each candidate — `redb`, a copy-on-write
//! B-tree in one file, and our own `meta::store`, a merge tree of immutable page blocks
//! on a directory disk; both with a 256 MiB page cache — it prints: building N records
//! (redb in transactions of 10⁵, ours in commits of 10⁶ and the merges they call for),
//! the bytes on disk, opening it in a fresh process, the process's resident memory
//! after, a durable commit of 100 records changed at random (time, and bytes the process
//! wrote), 10⁴ random reads, and a scan of every record. Beside it, in the same run, the
//! baseline it would replace: today's checkpoint of a state holding the same N records
//! — encoded from the borrowed state, written and synced (what every checkpoint writes,
//! whatever changed) — and decoding it, as an open does.
//!
//! Run: `cargo bench -p dfs-engine --bench meta_store` (`DFS_BENCH_SIZES=100000` picks
//! the sizes; the files go under `TMPDIR`). Caches are not dropped: reads after a build
//! may come from the page cache.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use dfs_engine::base::policy::Policy;
use dfs_engine::media::codec::CodecId;
use dfs_engine::media::device::{BlockDevice, ExtentId};
use dfs_engine::media::dirdisk::DirDisk;
use dfs_engine::meta::journal::{decode_checkpoint, encode_checkpoint, JournalTip};
use dfs_engine::meta::state::{DiskId, ExtentRecord, MetaState};
use dfs_engine::meta::store::{ScanCache, Store, StoreConfig};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

const EXTENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("extents");
const DEFAULT_SIZES: [u64; 3] = [100_000, 1_000_000, 10_000_000];
const CACHE_BYTES: usize = 256 << 20;
const BATCH: u64 = 100_000;
/// Our store keeps a commit's changes in memory until it commits: built in larger
/// commits, it merges less on the way.
const OURS_BATCH: u64 = 1_000_000;
const CHANGED: u64 = 100;
const COMMITS: u64 = 10;
const READS: u64 = 10_000;

type Figures = BTreeMap<String, f64>;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--redb-build") => redb_build(Path::new(&args[2]), args[3].parse().unwrap()),
        Some("--redb-measure") => redb_measure(Path::new(&args[2])),
        Some("--ours-build") => ours_build(Path::new(&args[2]), args[3].parse().unwrap()),
        Some("--ours-measure") => ours_measure(Path::new(&args[2])),
        Some("--baseline") => baseline(Path::new(&args[2]), args[3].parse().unwrap()),
        _ => run_all(),
    }
}

fn run_all() {
    let sizes: Vec<u64> = match std::env::var("DFS_BENCH_SIZES") {
        Ok(list) => list.split(',').map(|s| s.trim().parse().expect("DFS_BENCH_SIZES: extent counts")).collect(),
        Err(_) => DEFAULT_SIZES.to_vec(),
    };
    let exe = std::env::current_exe().unwrap();
    println!(
        "metadata store candidates: extent records keyed by id; redb with a {} MiB cache; \
         commits of {CHANGED} random records, each durable",
        CACHE_BYTES >> 20
    );
    println!(
        "\n{:>10} {:>6} | {:>9} {:>9} {:>9} {:>9} {:>12} {:>12} {:>9} {:>8} | {:>12} {:>12} {:>10}",
        "records",
        "store",
        "build s",
        "file MB",
        "open ms",
        "RSS MiB",
        "commit ms",
        "commit KB",
        "get µs",
        "scan s",
        "ckpt ms",
        "ckpt MB",
        "decode s"
    );
    for n in sizes {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("extents.redb");
        let mut redb = child(&exe, &["--redb-build", db.to_str().unwrap(), &n.to_string()]);
        redb.extend(child(&exe, &["--redb-measure", db.to_str().unwrap()]));
        std::fs::remove_file(&db).unwrap();
        let disk = dir.path().join("disk");
        std::fs::create_dir(&disk).unwrap();
        let mut ours = child(&exe, &["--ours-build", disk.to_str().unwrap(), &n.to_string()]);
        ours.extend(child(&exe, &["--ours-measure", disk.to_str().unwrap()]));
        std::fs::remove_dir_all(&disk).unwrap();
        let baseline = child(&exe, &["--baseline", dir.path().join("checkpoint").to_str().unwrap(), &n.to_string()]);
        let b = |key: &str| baseline[key];
        for (name, figures) in [("redb", &redb), ("ours", &ours)] {
            let f = |key: &str| figures[key];
            println!(
                "{n:>10} {name:>6} | {:>9.1} {:>9.0} {:>9.1} {:>9.1} {:>12.2} {:>12.0} {:>9.1} {:>8.2} | {:>12.0} {:>12.0} {:>10.2}",
                f("build_s"),
                f("file_mb"),
                f("open_ms"),
                f("rss_mib"),
                f("commit_ms"),
                f("commit_kb"),
                f("get_us"),
                f("scan_s"),
                b("ckpt_ms"),
                b("ckpt_mb"),
                b("decode_s")
            );
        }
        println!("{:>17} runs after the commits: {}", "ours:", ours["runs"]);
    }
    println!(
        "\nleft: the candidate store (commit = {CHANGED} changed records made durable; ours includes the merges \
         it then wants, amortized); right: today's checkpoint of the same records"
    );
}

/// Runs this benchmark as a child with `args` and collects the `key=value` pairs it prints.
fn child(exe: &Path, args: &[&str]) -> Figures {
    let out = Command::new(exe).args(args).output().unwrap();
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|pair| pair.split_once('='))
        .filter_map(|(key, value)| Some((key.to_string(), value.parse().ok()?)))
        .collect()
}

/// Extent `id` as the engine records it: `erasure:4+2` over six disks.
fn record(id: u64) -> ExtentRecord {
    ExtentRecord {
        id: ExtentId(id),
        len: 1 << 20,
        hash: *blake3::hash(&id.to_le_bytes()).as_bytes(),
        policy: Policy::Erasure { data: 4, parity: 2 },
        codec: CodecId::for_policy(Policy::Erasure { data: 4, parity: 2 }),
        fragments: (0..6).map(|i| DiskId(1 + ((id as u32 + i) % 6))).collect(),
        inline: None,
        history: Default::default(),
    }
}

fn redb_build(path: &Path, n: u64) {
    let db = Database::builder().set_cache_size(CACHE_BYTES).create(path).unwrap();
    let started = Instant::now();
    for start in (0..n).step_by(BATCH as usize) {
        let tx = db.begin_write().unwrap();
        {
            let mut table = tx.open_table(EXTENTS).unwrap();
            for id in start..(start + BATCH).min(n) {
                table.insert(id, postcard::to_allocvec(&record(id)).unwrap().as_slice()).unwrap();
            }
        }
        tx.commit().unwrap();
    }
    let build_s = started.elapsed().as_secs_f64();
    let file_mb = std::fs::metadata(path).unwrap().len() as f64 / 1e6;
    println!("build_s={build_s} file_mb={file_mb} records={n}");
}

fn redb_measure(path: &Path) {
    let started = Instant::now();
    let db = Database::builder().set_cache_size(CACHE_BYTES).create(path).unwrap();
    let open_ms = started.elapsed().as_secs_f64() * 1e3;
    let n = {
        let tx = db.begin_read().unwrap();
        let table = tx.open_table(EXTENTS).unwrap();
        redb::ReadableTableMetadata::len(&table).unwrap()
    };
    let mut random = Lcg(0x5eed);
    let written = write_bytes();
    let started = Instant::now();
    for _ in 0..COMMITS {
        let tx = db.begin_write().unwrap();
        {
            let mut table = tx.open_table(EXTENTS).unwrap();
            for _ in 0..CHANGED {
                let id = random.below(n);
                let mut changed = record(id);
                changed.fragments.swap(0, 1);
                table.insert(id, postcard::to_allocvec(&changed).unwrap().as_slice()).unwrap();
            }
        }
        tx.commit().unwrap();
    }
    let commit_ms = started.elapsed().as_secs_f64() * 1e3 / COMMITS as f64;
    let commit_kb = (write_bytes() - written) as f64 / 1e3 / COMMITS as f64;
    let tx = db.begin_read().unwrap();
    let table = tx.open_table(EXTENTS).unwrap();
    let started = Instant::now();
    for _ in 0..READS {
        let value = table.get(random.below(n)).unwrap().unwrap();
        let decoded: ExtentRecord = postcard::from_bytes(value.value()).unwrap();
        assert_eq!(decoded.fragments.len(), 6);
    }
    let get_us = started.elapsed().as_secs_f64() * 1e6 / READS as f64;
    let started = Instant::now();
    let scanned = table.iter().unwrap().filter(|item| item.is_ok()).count() as u64;
    assert_eq!(scanned, n);
    let scan_s = started.elapsed().as_secs_f64();
    println!(
        "open_ms={open_ms} rss_mib={} commit_ms={commit_ms} commit_kb={commit_kb} get_us={get_us} scan_s={scan_s}",
        resident_mib()
    );
}

/// Our store (`meta::store`) on one directory disk: built in commits of `OURS_BATCH`
/// records, each followed by the merges it wants; the payload holds `n`.
fn ours_build(path: &Path, n: u64) {
    let disk = DirDisk::open(path).unwrap();
    let devices: [&dyn BlockDevice; 1] = [&disk];
    let mut store = Store::create(&devices, ours_config(), Vec::new()).unwrap();
    let started = Instant::now();
    for start in (0..n).step_by(OURS_BATCH as usize) {
        for id in start..(start + OURS_BATCH).min(n) {
            store.put(id.to_be_bytes().to_vec(), postcard::to_allocvec(&record(id)).unwrap());
        }
        store.commit(&devices, n.to_le_bytes().to_vec()).unwrap();
        while store.wants_merge() {
            store.merge(&devices).unwrap();
        }
    }
    let build_s = started.elapsed().as_secs_f64();
    let file_mb = disk.used_bytes() as f64 / 1e6;
    println!("build_s={build_s} file_mb={file_mb} records={n}");
}

fn ours_measure(path: &Path) {
    let started = Instant::now();
    let disk = DirDisk::open(path).unwrap();
    let devices: [&dyn BlockDevice; 1] = [&disk];
    let mut store = Store::open(&devices, ours_config()).unwrap();
    let open_ms = started.elapsed().as_secs_f64() * 1e3;
    let n = u64::from_le_bytes(store.payload().try_into().unwrap());
    let mut random = Lcg(0x5eed);
    let written = write_bytes();
    let started = Instant::now();
    for _ in 0..COMMITS {
        for _ in 0..CHANGED {
            let id = random.below(n);
            let mut changed = record(id);
            changed.fragments.swap(0, 1);
            store.put(id.to_be_bytes().to_vec(), postcard::to_allocvec(&changed).unwrap());
        }
        store.commit(&devices, n.to_le_bytes().to_vec()).unwrap();
        while store.wants_merge() {
            store.merge(&devices).unwrap();
        }
    }
    let commit_ms = started.elapsed().as_secs_f64() * 1e3 / COMMITS as f64;
    let commit_kb = (write_bytes() - written) as f64 / 1e3 / COMMITS as f64;
    let started = Instant::now();
    for _ in 0..READS {
        let value = store.get(&devices, &random.below(n).to_be_bytes()).unwrap().unwrap();
        let decoded: ExtentRecord = postcard::from_bytes(&value).unwrap();
        assert_eq!(decoded.fragments.len(), 6);
    }
    let get_us = started.elapsed().as_secs_f64() * 1e6 / READS as f64;
    let started = Instant::now();
    let mut scanned = 0u64;
    store
        .scan(&devices, &[], None, ScanCache::Keep, &mut |_, _| {
            scanned += 1;
            true
        })
        .unwrap();
    assert_eq!(scanned, n);
    let scan_s = started.elapsed().as_secs_f64();
    println!(
        "open_ms={open_ms} rss_mib={} commit_ms={commit_ms} commit_kb={commit_kb} get_us={get_us} scan_s={scan_s} runs={}",
        resident_mib(),
        store.runs()
    );
}

fn ours_config() -> StoreConfig {
    StoreConfig { cache_bytes: CACHE_BYTES as u64, ..StoreConfig::default() }
}

/// Today's checkpoint of a state holding `n` extent records: encoded, written, synced;
/// then decoded.
fn baseline(path: &Path, n: u64) {
    let mut state = MetaState::new(uuid::Uuid::nil(), Policy::Erasure { data: 4, parity: 2 }, Default::default());
    for id in 0..n {
        state.extents.insert(record(id));
    }
    let tip = JournalTip { seq: 1, hash: [0; 32] };
    let started = Instant::now();
    let block = encode_checkpoint(tip, &state);
    let mut file = std::fs::File::create(path).unwrap();
    file.write_all(&block).unwrap();
    file.sync_all().unwrap();
    let ckpt_ms = started.elapsed().as_secs_f64() * 1e3;
    let started = Instant::now();
    let (decoded, _, _) = decode_checkpoint(&block).unwrap();
    let decode_s = started.elapsed().as_secs_f64();
    assert_eq!(decoded.state.extents.len() as u64, n);
    println!("ckpt_ms={ckpt_ms} ckpt_mb={} decode_s={decode_s}", block.len() as f64 / 1e6);
}

/// A small deterministic generator of record ids.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 11) % n
    }
}

fn write_bytes() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").unwrap();
    io.lines().find_map(|l| l.strip_prefix("write_bytes: ")).unwrap().trim().parse().unwrap()
}

fn resident_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap();
    kb / 1024.0
}
