//! The pool changing shape on real directories: fail a disk, rebuild, remove a disk,
//! change policies — every file matching its original checksum throughout.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;

use common::{fails, ok, pattern, Pool};

/// (pool path, size, policy given at put)
const FILES: [(&str, usize, &str); 5] = [
    ("/r3/a", 3_000_001, "replicate:3"),
    ("/r3/b", 70_000, "replicate:3"),
    ("/ec/c", 5_200_000, "erasure:4+2"),
    ("/ec/d", 1_048_576, "erasure:3+2"),
    ("/tiny", 900, "replicate:2"),
];

fn put_all(pool: &Pool) -> Vec<blake3::Hash> {
    ok(&["mkdir", "--pool", pool.path(), "/r3"]);
    ok(&["mkdir", "--pool", pool.path(), "/ec"]);
    FILES
        .iter()
        .enumerate()
        .map(|(i, (path, len, policy))| {
            let data = pattern(*len, i as u64 + 1);
            let local = pool.local(&format!("src{i}"));
            fs::write(&local, &data).unwrap();
            ok(&["put", "--pool", pool.path(), "--policy", policy, local.to_str().unwrap(), path]);
            blake3::hash(&data)
        })
        .collect()
}

fn assert_all_intact(pool: &Pool, hashes: &[blake3::Hash], when: &str) {
    for (i, (path, _, _)) in FILES.iter().enumerate() {
        let out = pool.local("out");
        ok(&["get", "--pool", pool.path(), path, out.to_str().unwrap()]);
        assert_eq!(blake3::hash(&fs::read(&out).unwrap()), hashes[i], "{path} {when}");
    }
}

fn degraded_extents(pool: &Pool, verify: bool) -> u64 {
    let mut args = vec!["show-redundancy", "--pool", pool.path(), "--json"];
    if verify {
        args.push("--verify");
    }
    let summary: serde_json::Value = serde_json::from_str(&ok(&args)).unwrap();
    ["degraded", "lost"].iter().map(|h| summary["by_health"][h]["extents"].as_u64().unwrap_or(0)).sum()
}

#[test]
fn failing_rebuilding_removing_and_reencoding_keep_every_byte() {
    let pool = Pool::new("replicate:2", &[96, 128, 160, 96, 200, 128, 96, 144]);
    let hashes = put_all(&pool);

    // A disk fails: every file still reads, degraded, at once.
    ok(&["fail-disk", "--pool", pool.path(), "--disk", "d3"]);
    assert!(degraded_extents(&pool, false) > 0, "failing d3 degraded nothing");
    assert_all_intact(&pool, &hashes, "after failing d3");
    let queue: serde_json::Value = pool.json("rebuild-status");
    assert!(!queue.as_array().unwrap().is_empty());
    // Extents are named alike everywhere, and the names outlive the rebuild.
    let names = |pool: &Pool| -> Vec<String> {
        let listed = pool.json("list-extents");
        listed.as_array().unwrap().iter().map(|e| e["extent"].as_str().unwrap().to_string()).collect()
    };
    let before_rebuild = names(&pool);
    for item in queue.as_array().unwrap() {
        assert!(before_rebuild.iter().any(|n| item["extent"] == n.as_str()), "{item} not in list-extents");
        assert_eq!(item["fragments_to_rewrite"].as_u64(), Some(1), "{item}: replicate:2 lost one copy");
    }
    let table = ok(&["rebuild-status", "--pool", pool.path()]);
    assert!(table.lines().nth(1).is_some_and(|row| row.trim_end().ends_with(" 1")), "{table}");
    let first = queue[0]["extent"].as_str().unwrap().to_string();
    let stats = ok(&["extent-stats", "--pool", pool.path(), "--extent", &first]);
    assert!(stats.starts_with(&format!("extent {first}:")), "{stats}");

    // The rebuild restores full redundancy, verified fragment by fragment.
    ok(&["rebuild", "--pool", pool.path()]);
    assert_eq!(degraded_extents(&pool, true), 0, "the rebuild left degraded extents");
    assert!(pool.json("rebuild-status").as_array().unwrap().is_empty());
    assert_eq!(names(&pool), before_rebuild, "the rebuild renamed extents");
    assert_all_intact(&pool, &hashes, "after the rebuild");

    // Removing a disk drains it: nothing left there, everything still whole.
    ok(&["remove-disk", "--pool", pool.path(), "--disk", pool.disks[1].to_str().unwrap()]);
    let disks = pool.json("list-disks");
    let removed = disks.as_array().unwrap().iter().find(|d| d["id"] == "d2").unwrap();
    assert_eq!(removed["state"], "removed");
    assert!(common::fragments_on(&pool.disks[1]).is_empty(), "fragments left on the removed disk");
    assert_eq!(degraded_extents(&pool, true), 0);
    assert_all_intact(&pool, &hashes, "after removing d2");

    // Re-encoding a directory, then the pool default.
    ok(&["change-policy", "--pool", pool.path(), "--policy", "erasure:4+2", "--path", "/r3", "--recursive"]);
    let extents: serde_json::Value =
        serde_json::from_str(&ok(&["list-extents", "--pool", pool.path(), "/r3", "--json"])).unwrap();
    assert!(extents.as_array().unwrap().iter().all(|e| e["policy"] == "erasure:4+2"), "{extents}");
    assert_all_intact(&pool, &hashes, "after re-encoding /r3");
    let status: serde_json::Value = pool.json("policy-status");
    assert_eq!(status["transitions"][0]["state"], "done");
    assert!(status["extents"].as_array().unwrap().iter().any(|e| e["history"][0]["from"] == "replicate:3"));
    assert_eq!(degraded_extents(&pool, true), 0);
}

#[test]
fn rebalance_fills_new_disks_in_proportion() {
    let pool = Pool::new("replicate:2", &[64, 64, 64]);
    let data = pattern(40_000_000, 3);
    let local = pool.local("src");
    fs::write(&local, &data).unwrap();
    ok(&["put", "--pool", pool.path(), local.to_str().unwrap(), "/f"]);
    for (i, mib) in [(3, "64MiB"), (4, "128MiB")] {
        let disk = pool.root.path().join(format!("new{i}"));
        fs::create_dir(&disk).unwrap();
        ok(&["add-disk", "--pool", pool.path(), "--disk", disk.to_str().unwrap(), "--capacity", mib]);
    }
    let ratios = |pool: &Pool| -> Vec<f64> {
        pool.json("list-disks")
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["used_bytes"].as_f64().unwrap() / d["capacity_bytes"].as_f64().unwrap())
            .collect()
    };
    let spread = |r: &[f64]| r.iter().cloned().fold(0.0, f64::max) - r.iter().cloned().fold(1.0, f64::min);
    assert!(spread(&ratios(&pool)) > 0.3, "{:?}", ratios(&pool));
    let out = ok(&["rebalance", "--pool", pool.path(), "--max-bytes", "4MiB"]);
    assert!(out.contains("moved"), "{out}");
    ok(&["rebalance", "--pool", pool.path()]);
    let after = ratios(&pool);
    assert!(spread(&after) < 0.05, "still unbalanced: {after:?}");
    let back = pool.local("back");
    ok(&["get", "--pool", pool.path(), "/f", back.to_str().unwrap()]);
    assert_eq!(fs::read(&back).unwrap(), data);
    assert_eq!(degraded_extents(&pool, true), 0);
}

#[test]
fn impossible_geometry_changes_are_refused_and_change_nothing() {
    let pool = Pool::new("erasure:4+2", &[64, 64, 64, 64, 64, 64]);
    let data = pattern(2_500_000, 7);
    let local = pool.local("src");
    fs::write(&local, &data).unwrap();
    ok(&["put", "--pool", pool.path(), local.to_str().unwrap(), "/f"]);
    let before = ok(&["list-extents", "--pool", pool.path(), "--json"]);

    let error = fails(&["remove-disk", "--pool", pool.path(), "--disk", "d1"]);
    assert!(error.contains("needs 6 distinct disks") && error.contains("ENOSPC"), "{error}");
    let error = fails(&["change-policy", "--pool", pool.path(), "--policy", "erasure:6+2"]);
    assert!(error.contains("ENOSPC"), "{error}");
    let error = fails(&["fail-disk", "--pool", pool.path(), "--disk", "d42"]);
    assert!(error.contains("no disk 'd42'") && error.contains("ENOENT"), "{error}");
    let error = fails(&["change-policy", "--pool", pool.path(), "--policy", "erasure:2+1", "--extent", "zz"]);
    assert!(error.contains("EINVAL"), "{error}");

    assert_eq!(ok(&["list-extents", "--pool", pool.path(), "--json"]), before);
    assert!(pool.json("policy-status")["transitions"].as_array().unwrap().is_empty());
    let disks = pool.json("list-disks");
    assert!(disks.as_array().unwrap().iter().all(|d| d["state"] == "active"));
}
