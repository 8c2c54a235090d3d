//! Crash safety on the real backend: `dfs put` processes are SIGKILLed at random points.
//! Afterwards every put that returned is intact, no file is half-visible, and no orphan
//! fragment survives recovery.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{dfs, ok, pattern, Pool};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const SLOTS: usize = 4;
const ROUNDS: u64 = 100;

fn content(seed: u64) -> Vec<u8> {
    let len = (seed as usize * 7919) % (3 << 20);
    pattern(len, seed)
}

#[test]
fn killed_puts_leave_every_acknowledged_file_intact_and_no_orphans() {
    let pool = Pool::new("erasure:4+2", &[256; 6]);
    let mut rng = ChaCha8Rng::seed_from_u64(0xC0FFEE);
    // Per slot: the seed of the last acknowledged put, and seeds of killed puts since.
    let mut acknowledged: BTreeMap<usize, u64> = BTreeMap::new();
    let mut in_doubt: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
    let mut killed = 0;
    for round in 1..=ROUNDS {
        let slot = rng.random_range(0..SLOTS);
        let local = pool.local(&format!("src-{round}"));
        std::fs::write(&local, content(round)).unwrap();
        let mut child = dfs()
            .args(["put", "--pool", pool.path(), local.to_str().unwrap(), &format!("/slot{slot}")])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_micros(rng.random_range(0..80_000));
        let mut finished = None;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                finished = Some(status);
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        match finished {
            Some(status) => {
                assert!(status.success(), "round {round}: put failed on its own");
                acknowledged.insert(slot, round);
                in_doubt.remove(&slot);
            }
            None => {
                child.kill().unwrap();
                let status = child.wait().unwrap();
                if status.success() {
                    acknowledged.insert(slot, round);
                    in_doubt.remove(&slot);
                } else {
                    killed += 1;
                    in_doubt.entry(slot).or_default().push(round);
                }
            }
        }
        std::fs::remove_file(&local).unwrap();
    }
    assert!(killed >= ROUNDS / 4, "only {killed} of {ROUNDS} puts were interrupted; the test proves little");

    for slot in 0..SLOTS {
        let out = pool.local("out");
        let result = dfs()
            .args(["get", "--pool", pool.path(), &format!("/slot{slot}"), out.to_str().unwrap()])
            .output()
            .unwrap();
        let candidates: Vec<u64> =
            acknowledged.get(&slot).into_iter().chain(in_doubt.get(&slot).into_iter().flatten()).copied().collect();
        if !result.status.success() {
            assert!(
                !acknowledged.contains_key(&slot),
                "slot {slot}: acknowledged put {:?} lost",
                acknowledged.get(&slot)
            );
            continue;
        }
        let got = std::fs::read(&out).unwrap();
        assert!(
            candidates.iter().any(|seed| content(*seed) == got),
            "slot {slot}: content ({} bytes) is none of the puts {candidates:?}",
            got.len()
        );
    }

    let extents = pool.json("list-extents");
    let referenced: u64 = extents.as_array().unwrap().iter().map(|e| e["fragments_total"].as_u64().unwrap()).sum();
    let stored: usize = pool.disks.iter().map(|d| common::fragments_on(d).len()).sum();
    assert_eq!(stored as u64, referenced, "orphan fragments remain after recovery");
    let files: serde_json::Value = serde_json::from_str(&ok(&["ls", "--pool", pool.path(), "--json"])).unwrap();
    assert!(files.as_array().unwrap().iter().all(|f| f["name"].as_str().unwrap().starts_with("slot")));
}
