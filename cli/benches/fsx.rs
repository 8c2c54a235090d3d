//! The random-I/O exerciser `fsx` (the Rust one, 0.3.2: `cargo install fsx --version
//! 0.3.2`) with every operation it has turned on — reads, writes, mapped reads and
//! writes (each msync'd), truncate, fsync, fdatasync, posix_fallocate, hole punching,
//! sendfile, fadvise, copy_file_range, close/reopen and cache invalidation — on a
//! DynamicFS mount (erasure:4+2 over six directories), on one plain directory of the
//! host, and on mergerfs over the same six directories, in one run. fsx checks every
//! read against its model of the file; a miscompare stops it with a non-zero exit,
//! which fails this benchmark. Prints operations per second side by side.
//!
//! Run as root with mergerfs installed: `cargo bench -p dfs-cli --bench fsx`
//! (DFS_FSX_OPS overrides the 1,000,000 operations; DFS_FSX_SEED the seed, 1).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

mod common;

/// Every operation fsx 0.3.2 knows, weighted as its sample configuration weighs the
/// common ones; the file grows to 256 KiB, operations up to 64 KiB.
const CONFIG: &str = "\
flen = 262144
[opsize]
max = 65536
[weights]
close_open = 1
invalidate = 1
read = 10
write = 10
mapread = 10
mapwrite = 10
truncate = 5
fsync = 1
fdatasync = 1
posix_fallocate = 5
punch_hole = 5
sendfile = 5
posix_fadvise = 1
copy_file_range = 5
";

/// Runs fsx on `file`; returns operations per second, or fsx's verdict when it failed.
fn exercise(label: &str, file: &Path, config: &Path, ops: u64, seed: u64) -> Result<f64, String> {
    let artifacts = file.parent().unwrap().join(format!("fsx-{label}"));
    fs::create_dir_all(&artifacts).unwrap();
    let started = Instant::now();
    let out = Command::new("fsx")
        .args(["-f", config.to_str().unwrap(), "-N", &ops.to_string(), "-S", &seed.to_string()])
        .args(["-P", artifacts.to_str().unwrap()])
        .arg(file)
        .output()
        .unwrap_or_else(|e| panic!("fsx cannot start ({e}); install it: cargo install fsx --version 0.3.2"));
    let elapsed = started.elapsed().as_secs_f64();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() || !text.contains("All operations completed A-OK!") {
        return Err(format!("fsx on {label} FAILED ({}):\n{}", out.status, &text[text.len().saturating_sub(4000)..]));
    }
    Ok(ops as f64 / elapsed)
}

fn main() {
    common::require("fsx", "cargo install fsx --version 0.3.2");
    common::require("mergerfs", "apt-get install mergerfs");
    let ops: u64 = std::env::var("DFS_FSX_OPS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let seed: u64 = std::env::var("DFS_FSX_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let root = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let at = |name: &str| -> PathBuf { root.path().join(name) };
    let config = at("fsx.toml");
    fs::write(&config, CONFIG).unwrap();
    // mmap needs the page cache, which mergerfs's default direct I/O would bypass.
    let mounts = common::SixDisks::mount(root.path(), "category.create=mfs,cache.files=partial");
    let plain = at("plain");
    fs::create_dir(&plain).unwrap();

    println!("fsx 0.3.2, {ops} operations, seed {seed}, every operation enabled; six directories on one disk");
    let results = [
        exercise("dynamicfs", &mounts.dynamicfs.join("fsx-file"), &config, ops, seed),
        exercise("plain", &plain.join("fsx-file"), &config, ops, seed),
        exercise("mergerfs", &mounts.mergerfs.join("fsx-file"), &config, ops, seed),
    ];
    drop(mounts);
    let [ours, host, theirs] = results.map(|result| {
        result.unwrap_or_else(|verdict| {
            eprintln!("{verdict}");
            std::process::exit(1)
        })
    });

    println!("{:<28} {:>12} {:>16}", "fsx target", "ops/s", "ratio to plain");
    for (label, figure) in
        [("DynamicFS (erasure:4+2)", ours), ("plain directory (ext4)", host), ("mergerfs (6 directories)", theirs)]
    {
        println!("{label:<28} {figure:>12.0} {:>16.2}", figure / host);
    }
    println!("0 miscompares: fsx verified every read on all three");
}
