//! Metadata at scale: pools of 10⁴, 10⁵, 10⁶ and 10⁷ extents (10 a file, 1,000 files a
//! directory) on six directory disks under `erasure:4+2`, metadata only — extent records
//! committed through the engine's transactions for fragments that are placed but never
//! written (`data::synthetic`). Per size it prints: the time to open (recover) the pool
//! and the process's resident memory after it; time and journal bytes per create, per
//! 1 MiB write and per rename of a file (each followed by its barrier), and the time of a
//! directory's rename; a checkpoint's time and bytes after those few changes; a
//! classification pass (the build ran one, and nothing was read since) and the
//! checkpoint after it; the rebuild queue of the healthy pool, the question the daemon
//! asks at every tick (is any background work waiting?) and a metrics scrape; failing a
//! disk, and then the front of the rebuild queue a background step asks for; the
//! process's peak memory. A second
//! table divides each figure by the smallest size's: what grows with what exists rather
//! than with what changes.
//!
//! Each pool is built in one child process and measured in another, so each figure is
//! that of a process that opened the pool cold (the build's memory is not counted).
//!
//! Run: `cargo bench -p dfs-engine --bench metadata_scale`
//! (`DFS_BENCH_SIZES=10000,100000` picks the sizes, in extents; `DFS_BENCH_PASSES=100`
//! runs that many classification passes while building, as months of a running pool
//! would; the pools go under `TMPDIR`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use dfs_engine::data::namespace::{Owner, RenameMode};
use dfs_engine::pooldir::PoolDir;
use dfs_engine::services::background::STEP_EXTENTS;
use dfs_engine::{Ino, Pool, PoolOptions};

const EXTENTS_PER_FILE: u64 = 10;
const FILES_PER_DIR: u64 = 1000;
const DEFAULT_SIZES: [u64; 4] = [10_000, 100_000, 1_000_000, 10_000_000];
/// Operations timed per kind (each one followed by its own barrier).
const CREATES: usize = 100;
const WRITES: usize = 20;
const RENAMES: usize = 100;
const DIR_RENAMES: usize = 20;
const OWNER: Owner = Owner { mode: 0o644, uid: 0, gid: 0, umask: 0 };
const DIR_OWNER: Owner = Owner { mode: 0o755, uid: 0, gid: 0, umask: 0 };

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--build") => build(Path::new(&args[2]), args[3].parse().unwrap()),
        Some("--measure") => measure(Path::new(&args[2])),
        _ => run(),
    }
}

/// The figures of one size, as `key=value` pairs from the children.
type Figures = BTreeMap<String, f64>;

fn run() {
    let sizes: Vec<u64> = match std::env::var("DFS_BENCH_SIZES") {
        Ok(list) => {
            list.split(',').map(|s| s.trim().parse().expect("DFS_BENCH_SIZES: extents, comma-separated")).collect()
        }
        Err(_) => DEFAULT_SIZES.to_vec(),
    };
    println!(
        "metadata at scale: {EXTENTS_PER_FILE} extents a file, {FILES_PER_DIR} files a directory, six directory disks, \
         erasure:4+2, metadata only; each op followed by its barrier"
    );
    let exe = std::env::current_exe().unwrap();
    let mut rows: Vec<(u64, Figures)> = Vec::new();
    for extents in sizes {
        let root = tempfile::tempdir().unwrap();
        let pool = root.path().join("pool");
        let mut figures = child(&exe, &["--build", pool.to_str().unwrap(), &extents.to_string()]);
        figures.extend(child(&exe, &["--measure", pool.to_str().unwrap()]));
        figures.insert("metadata_mib".into(), tree_bytes(root.path()) as f64 / f64::from(1 << 20));
        eprintln!("{extents} extents measured");
        rows.push((extents, figures));
    }
    print_tables(&rows);
}

/// Runs this benchmark as a child with `args` and collects the `key=value` pairs it prints.
fn child(exe: &Path, args: &[&str]) -> Figures {
    let out = Command::new(exe).args(args).output().unwrap();
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_string(), v.parse().unwrap()))
        .collect()
}

const COLUMNS: [(&str, &str); 23] = [
    ("build_s", "build s"),
    ("open_s", "open s"),
    ("rss_mib", "RSS MiB"),
    ("peak_mib", "peak MiB"),
    ("create_us", "create µs"),
    ("create_b", "create B"),
    ("write_us", "1MiB wr µs"),
    ("write_b", "1MiB wr B"),
    ("rename_us", "rename µs"),
    ("rename_b", "rename B"),
    ("dir_rename_us", "dir ren µs"),
    ("checkpoint_ms", "ckpt ms"),
    ("checkpoint_mb", "ckpt MB"),
    ("classify_ms", "classify ms"),
    ("classify_kb", "classify KB"),
    ("pass_checkpoint_ms", "pass ckpt ms"),
    ("pass_checkpoint_mb", "pass ckpt MB"),
    ("healthy_queue_ms", "healthy q ms"),
    ("idle_check_ms", "bg check ms"),
    ("metrics_ms", "metrics ms"),
    ("fail_ms", "fail disk ms"),
    ("front_ms", "rebuild q ms"),
    ("metadata_mib", "on disk MiB"),
];

fn print_tables(rows: &[(u64, Figures)]) {
    let header = |title: &str| {
        println!("\n{title}");
        print!("{:>10}", "extents");
        for (_, name) in COLUMNS {
            print!(" {name:>12}");
        }
        println!();
    };
    header("figures (journal bytes summed over the three journal replicas)");
    for (extents, figures) in rows {
        print!("{extents:>10}");
        for (key, _) in COLUMNS {
            print!(" {:>12}", format_figure(figures[key]));
        }
        println!();
    }
    let Some((_, first)) = rows.first() else { return };
    header(&format!("growth: each figure ÷ the {} extents figure", rows[0].0));
    for (extents, figures) in rows {
        print!("{extents:>10}");
        for (key, _) in COLUMNS {
            let ratio = if first[key] > 0.0 { figures[key] / first[key] } else { f64::NAN };
            print!(" {:>12}", format!("{ratio:.2}×"));
        }
        println!();
    }
    if let Some((_, last)) = rows.last() {
        println!(
            "\nrebuild queue after failing one of six disks: {} extents; classification pass: {} extents",
            last["queue_len"], last["classified"]
        );
    }
}

fn format_figure(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 1.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.3}")
    }
}

fn tree_bytes(path: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(path).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() { tree_bytes(&entry.path()) } else { meta.len() };
    }
    total
}

/// `VmRSS` or `VmHWM` of this process, in MiB.
fn memory_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    let kib: f64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib / 1024.0
}

fn options() -> PoolOptions {
    PoolOptions { remove_orphans_at_open: false, ..PoolOptions::default() }
}

/// Child: builds a pool of `extents` synthetic extents at `path`, then checkpoints it.
fn build(path: &Path, extents: u64) {
    let started = Instant::now();
    PoolDir::init(path, "erasure:4+2".parse().unwrap(), true).unwrap();
    // No checkpoint while building: the build is setup, not what is measured.
    let build_options = PoolOptions { checkpoint_every_records: u64::MAX, ..options() };
    let (mut dir, mut pool, _) = PoolDir::open(path, build_options).unwrap();
    for i in 0..6 {
        let disk = path.parent().unwrap().join(format!("disk{i}"));
        std::fs::create_dir(&disk).unwrap();
        dir.add_disk(&mut pool, &disk, None).unwrap();
    }
    let files = extents.div_ceil(EXTENTS_PER_FILE);
    let mut parent = Ino::ROOT;
    for file in 0..files {
        if file % FILES_PER_DIR == 0 {
            parent = pool.mkdir(Ino::ROOT, format!("d{:05}", file / FILES_PER_DIR).as_bytes(), DIR_OWNER).unwrap().ino;
        }
        let ino = pool.create(parent, format!("f{:04}", file % FILES_PER_DIR).as_bytes(), OWNER).unwrap().ino;
        let chunks = EXTENTS_PER_FILE.min(extents - file * EXTENTS_PER_FILE);
        pool.attach_synthetic_extents(ino, chunks).unwrap();
    }
    // Every extent judged, as in a pool that has been running (`DFS_BENCH_PASSES`
    // passes, one by default; 100 fill every extent's observation window).
    let passes: usize = std::env::var("DFS_BENCH_PASSES").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    for _ in 0..passes {
        pool.classify_pass().unwrap();
    }
    pool.checkpoint().unwrap();
    assert_eq!(pool.state().extents.len() as u64, extents);
    println!("build_s={}", started.elapsed().as_secs_f64());
}

/// Child: opens the pool at `path` and measures what the module header lists.
fn measure(path: &Path) {
    // The build just wrote the pool: its writeback would land on the first barriers
    // measured here (a create's fsync took 0.3 to 1.5 ms at 10^7 by how much was left).
    let synced = std::process::Command::new("sync").status().map(|s| s.success()).unwrap_or(false);
    assert!(synced, "sync(1) failed before measuring");
    let started = Instant::now();
    // No checkpoint but the one measured: it would land in whichever op crossed the
    // interval.
    let options = PoolOptions { checkpoint_every_records: u64::MAX, ..options() };
    let (_dir, mut pool, _) = PoolDir::open(path, options).unwrap();
    let open_s = started.elapsed().as_secs_f64();
    let rss_mib = memory_mib("VmRSS:");
    let extents = pool.state().extents.len();
    let work = pool.mkdir(Ino::ROOT, b"bench", DIR_OWNER).unwrap().ino;
    pool.sync().unwrap();

    let (create_us, create_b) = per_op(&mut pool, CREATES, |pool, i| {
        pool.create(work, format!("c{i}").as_bytes(), OWNER).unwrap();
        pool.sync().unwrap();
    });
    let data: Vec<u8> = (0..1u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let (write_us, write_b) = per_op(&mut pool, WRITES, |pool, i| {
        let ino = pool.create(work, format!("w{i}").as_bytes(), OWNER).unwrap().ino;
        let fh = pool.open_file(ino).unwrap();
        pool.write(fh, 0, &data).unwrap();
        pool.fsync(fh).unwrap();
        pool.release(fh).unwrap();
    });
    let (rename_us, rename_b) = per_op(&mut pool, RENAMES, |pool, i| {
        let from = d(pool, 0);
        pool.rename(from, format!("f{i:04}").as_bytes(), work, format!("r{i}").as_bytes(), RenameMode::Replace)
            .unwrap();
        pool.sync().unwrap();
    });
    // A directory of 1,000 files moved back and forth between the root and `bench`.
    let (dir_rename_us, _) = per_op(&mut pool, DIR_RENAMES, |pool, i| {
        let (from, to) = if i % 2 == 0 { (Ino::ROOT, work) } else { (work, Ino::ROOT) };
        pool.rename(from, b"d00000", to, b"d00000", RenameMode::Replace).unwrap();
        pool.sync().unwrap();
    });

    let before = pool.counters().checkpoint_bytes;
    let started = Instant::now();
    pool.checkpoint().unwrap();
    let checkpoint_ms = started.elapsed().as_secs_f64() * 1e3;
    let checkpoint_mb = (pool.counters().checkpoint_bytes - before) as f64 / 1e6;

    let before = pool.counters().journal_bytes;
    let started = Instant::now();
    let pass = pool.classify_pass().unwrap();
    pool.sync().unwrap();
    let classify_ms = started.elapsed().as_secs_f64() * 1e3;
    let classify_kb = (pool.counters().journal_bytes - before) as f64 / 1e3;
    // The checkpoint after that pass: what the pass changed, as the store sees it.
    let before = pool.counters().checkpoint_bytes;
    let started = Instant::now();
    pool.checkpoint().unwrap();
    let pass_checkpoint_ms = started.elapsed().as_secs_f64() * 1e3;
    let pass_checkpoint_mb = (pool.counters().checkpoint_bytes - before) as f64 / 1e6;

    let started = Instant::now();
    assert!(pool.rebuild_queue().is_empty());
    let healthy_queue_ms = started.elapsed().as_secs_f64() * 1e3;
    // What the daemon asks at every tick: is a rebuild, drain, migration… waiting?
    let started = Instant::now();
    let busy = pool.has_background_work();
    let idle_check_ms = started.elapsed().as_secs_f64() * 1e3;
    // What a Prometheus scrape of the daemon costs (`/metrics`).
    let started = Instant::now();
    let metrics = pool.metrics();
    let metrics_ms = started.elapsed().as_secs_f64() * 1e3;
    assert_eq!(metrics.rebuild_queue, 0);
    let disk = *pool.state().disks.keys().next().unwrap();
    let started = Instant::now();
    pool.fail_disk(disk).unwrap();
    let fail_ms = started.elapsed().as_secs_f64() * 1e3;
    // What each background rebuild step asks for: the front of the queue.
    let started = Instant::now();
    let front = pool.rebuild_front(STEP_EXTENTS);
    let front_ms = started.elapsed().as_secs_f64() * 1e3;
    assert_eq!(front.len(), STEP_EXTENTS.min(pool.rebuild_queue_len()));

    println!(
        "open_s={open_s} rss_mib={rss_mib} extents={extents} create_us={create_us} create_b={create_b} \
         write_us={write_us} write_b={write_b} rename_us={rename_us} rename_b={rename_b} dir_rename_us={dir_rename_us} \
         checkpoint_ms={checkpoint_ms} checkpoint_mb={checkpoint_mb} classify_ms={classify_ms} \
         classify_kb={classify_kb} pass_checkpoint_ms={pass_checkpoint_ms} pass_checkpoint_mb={pass_checkpoint_mb} classified={} healthy_queue_ms={healthy_queue_ms} idle_check_ms={idle_check_ms} metrics_ms={metrics_ms} busy={} fail_ms={fail_ms} front_ms={front_ms} queue_len={} peak_mib={}",
        pass.extents,
        u8::from(busy),
        pool.rebuild_queue_len(),
        memory_mib("VmHWM:")
    );
}

/// Directory `d{n}` of the built tree.
fn d(pool: &Pool, n: u64) -> Ino {
    pool.lookup(Ino::ROOT, format!("d{n:05}").as_bytes()).unwrap().ino
}

/// Runs `op` `count` times; returns microseconds and journal bytes per run.
fn per_op(pool: &mut Pool, count: usize, mut op: impl FnMut(&mut Pool, usize)) -> (f64, f64) {
    let before = pool.counters().journal_bytes;
    let started = Instant::now();
    for i in 0..count {
        op(pool, i);
    }
    let micros = started.elapsed().as_secs_f64() * 1e6 / count as f64;
    let bytes = (pool.counters().journal_bytes - before) as f64 / count as f64;
    (micros, bytes)
}
