//! The random-I/O exerciser `fsx` (the Rust one, 0.3.2; `.ci/run` installs it) runs
//! 200,000 operations — every kind it has: reads, writes, mapped reads and writes,
//! truncate, fsync, fallocate, hole punching, sendfile, copy_file_range, close/reopen —
//! against a mount while bits rot in fragment files on two disks and a third disk's
//! directory is moved away for five seconds and back, again and again. fsx checks every
//! read against its model of the file: no error and no miscompare may happen. Then a
//! scrub finds nothing it cannot repair.
//!
//! erasure:4+3 over eight directories: two rotting disks and one away are three lost
//! fragments at most, within the policy's tolerance. (`DFS_FSX_FAULT_OPS` shortens the
//! run for local work; CI runs the full 200,000.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{eventually, fragments_on, ok, run, Pool};
use rand::{Rng, SeedableRng};

/// fsx's configuration: every operation, as `cli/benches/fsx.rs` runs it.
const CONFIG: &str = include_str!("fsx/config.toml");

/// Operations per fsx process: fsx 0.3.2 leaks the mapping of every mapped read, so a
/// process gets slower the longer it runs (see `cli/benches/fsx.rs`).
const OPS_PER_RUN: u64 = 10_000;

/// Flips one bit in the payload of a random fragment of `disk` (the daemon keeps
/// appending meanwhile; a fragment deleted since the scan is rotted in vain).
fn rot_one(disk: &Path, rng: &mut impl Rng) -> bool {
    let fragments = fragments_on(disk);
    if fragments.is_empty() {
        return false;
    }
    let fragment = &fragments[rng.random_range(0..fragments.len())];
    if fragment.len < 64 {
        return false;
    }
    let at = rng.random_range(48..fragment.len);
    let Ok(mut byte) = fragment.read().map(|bytes| bytes[at as usize]) else { return false };
    byte ^= 1 << rng.random_range(0..8);
    fragment.overwrite(at, &[byte]).is_ok()
}

/// Until `stop`: rot a fragment on `rotting` every 300 ms, and move `blinking` away for
/// five seconds every fifteen. Returns how many bits it flipped and blinks it made.
fn faults(rotting: [PathBuf; 2], blinking: PathBuf, stop: Arc<AtomicBool>) -> (u64, u64) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(14);
    let away = blinking.with_extension("away");
    let (mut flips, mut blinks) = (0, 0);
    let mut tick = 0u64;
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(300));
        tick += 1;
        if rot_one(&rotting[(tick % 2) as usize], &mut rng) {
            flips += 1;
        }
        match tick % 50 {
            33 => {
                fs::rename(&blinking, &away).unwrap();
                blinks += 1;
            }
            0 if away.exists() => fs::rename(&away, &blinking).unwrap(),
            _ => {}
        }
    }
    if away.exists() {
        fs::rename(&away, &blinking).unwrap();
    }
    (flips, blinks)
}

#[test]
fn fsx_runs_clean_while_two_disks_rot_and_a_third_blinks() {
    let version = std::process::Command::new("fsx").arg("-V").output();
    assert!(version.is_ok(), "fsx is not installed: cargo install --locked fsx --version 0.3.2 (.ci/run does)");
    let total: u64 = std::env::var("DFS_FSX_FAULT_OPS").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000);
    let pool = Pool::new("erasure:4+3", &[512; 8]);
    let mount = pool.root.path().join("mnt");
    fs::create_dir(&mount).unwrap();
    ok(&["mount", "--pool", pool.path(), "--mountpoint", mount.to_str().unwrap()]);
    let config = pool.local("fsx.toml");
    fs::write(&config, CONFIG).unwrap();
    let artifacts = pool.local("fsx-artifacts");
    fs::create_dir(&artifacts).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let injector = {
        let rotting = [pool.disks[1].clone(), pool.disks[4].clone()];
        let blinking = pool.disks[6].clone();
        let stop = stop.clone();
        std::thread::spawn(move || faults(rotting, blinking, stop))
    };
    let runs = total.div_ceil(OPS_PER_RUN);
    let mut failure = None;
    for seed in 1..=runs {
        let out = std::process::Command::new("fsx")
            .args(["-f", config.to_str().unwrap(), "-N", &OPS_PER_RUN.to_string(), "-S", &seed.to_string()])
            .args(["-P", artifacts.to_str().unwrap()])
            .arg(mount.join(format!("fsx-{seed}")))
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        if !out.status.success() || !text.contains("All operations completed A-OK!") {
            failure = Some(format!(
                "fsx seed {seed} failed ({}):\n{}",
                out.status,
                text.lines().take(40).collect::<Vec<_>>().join("\n")
            ));
            break;
        }
    }
    stop.store(true, Ordering::SeqCst);
    let (flips, blinks) = injector.join().unwrap();
    if let Some(failure) = failure {
        let _ = run(&["umount", mount.to_str().unwrap()]);
        panic!("{failure}\n(after {flips} bit flips and {blinks} blinks)");
    }
    assert!(flips > 10 && blinks > 0, "the faults did not happen: {flips} flips, {blinks} blinks");
    eventually("the blinking disk to be back", || {
        pool.json("list-disks").as_array().unwrap().iter().all(|d| d["state"] == "active")
    });
    let scrub = run(&["scrub", "--pool", pool.path(), "--repair"]);
    assert!(scrub.status.success(), "the scrub found damage beyond repair: {}", String::from_utf8_lossy(&scrub.stdout));
    ok(&["umount", mount.to_str().unwrap()]);
}
