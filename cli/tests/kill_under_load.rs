//! The daemon SIGKILLed, many times, while four writers fill the mount in parallel (the
//! load under which the data path overlaps encoding, fragment writes and barriers): after
//! each remount every file whose `fsync` returned reads back exactly, and once the pool
//! has recovered, no fragment is left on any disk that no extent references — nothing
//! acknowledged lost, no space leaked. Needs /dev/fuse (CI runs as root); never skips.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{ok, pattern, Pool};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const ROUNDS: u64 = 10;
const WRITERS: u64 = 4;

/// The contents of file `seed`: up to 3 MiB, so most span several extents.
fn content(seed: u64) -> Vec<u8> {
    pattern(64 * 1024 + (seed as usize * 104_729) % (3 << 20), seed)
}

fn daemon_pid(mount_output: &str) -> i32 {
    let start = mount_output.find("daemon pid ").expect("mount prints the daemon pid") + "daemon pid ".len();
    mount_output[start..].split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
}

/// Writes new files into `dir` until an error (the daemon is gone), recording each one
/// whose fsync returned.
fn writer(dir: PathBuf, first_seed: u64, acknowledged: Arc<Mutex<BTreeMap<String, u64>>>) {
    for n in 0.. {
        let seed = first_seed + n;
        let name = format!("file-{seed}");
        let written = fs::File::create(dir.join(&name)).and_then(|mut file| {
            file.write_all(&content(seed))?;
            file.sync_all()
        });
        if written.is_err() {
            return;
        }
        acknowledged.lock().unwrap().insert(name, seed);
    }
}

fn check_every_acknowledged_file(mount: &Path, acknowledged: &BTreeMap<String, u64>, round: u64) {
    for (name, seed) in acknowledged {
        let bytes = fs::read(mount.join(name)).unwrap_or_else(|e| panic!("round {round}: {name} lost: {e}"));
        assert!(bytes == content(*seed), "round {round}: {name} reads back {} wrong bytes", bytes.len());
    }
}

#[test]
fn a_daemon_killed_under_parallel_writes_keeps_every_fsynced_file_and_leaks_no_space() {
    let pool = Pool::new("erasure:4+2", &[512; 6]);
    let mount = pool.root.path().join("mnt");
    fs::create_dir(&mount).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(0x5161_4B11);
    let acknowledged: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let mut next_seed = 1;
    for round in 1..=ROUNDS {
        let out = ok(&["mount", "--pool", pool.path(), "--mountpoint", mount.to_str().unwrap()]);
        check_every_acknowledged_file(&mount, &acknowledged.lock().unwrap(), round);
        // Room for the next round: every other surviving file goes, and the removal is
        // made durable (fsync of the directory is a barrier).
        {
            let mut acked = acknowledged.lock().unwrap();
            let doomed: Vec<String> = acked.keys().step_by(2).cloned().collect();
            for name in doomed {
                fs::remove_file(mount.join(&name)).unwrap();
                acked.remove(&name);
            }
            fs::File::open(&mount).unwrap().sync_all().unwrap();
        }
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (dir, acked) = (mount.clone(), acknowledged.clone());
                let first = next_seed + w * 1_000;
                std::thread::spawn(move || writer(dir, first, acked))
            })
            .collect();
        next_seed += WRITERS * 1_000;
        std::thread::sleep(Duration::from_millis(rng.random_range(300..1_500)));
        let pid = daemon_pid(&out);
        assert!(Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap().success());
        for w in writers {
            w.join().unwrap();
        }
        // The dead mount stays in the table until unmounted; `dfs umount` clears it.
        ok(&["umount", mount.to_str().unwrap()]);
    }
    let acked = acknowledged.lock().unwrap().clone();
    assert!(acked.len() as u64 >= ROUNDS, "only {} files were acknowledged: the test proves little", acked.len());

    ok(&["mount", "--pool", pool.path(), "--mountpoint", mount.to_str().unwrap()]);
    check_every_acknowledged_file(&mount, &acked, ROUNDS + 1);
    ok(&["umount", mount.to_str().unwrap()]);

    // Recovery removed every fragment written for a file the kill left unacknowledged.
    let extents = pool.json("list-extents");
    let referenced: u64 = extents.as_array().unwrap().iter().map(|e| e["fragments_total"].as_u64().unwrap()).sum();
    let stored: usize = pool.disks.iter().map(|d| common::fragments_on(d).len()).sum();
    assert_eq!(stored as u64, referenced, "fragments no extent references remain after recovery");
    assert!(ok(&["health", "--pool", pool.path()]).contains("healthy"), "pool not healthy after the kills");
}
