//! Tiering end to end on real directories: `dfs classify`, `list-hot`, `list-cold`,
//! `extent-stats`, `tiering`, `unpin`, and a lazy migration started by reads through a
//! real FUSE mount (needs /dev/fuse; CI runs as root; never skipped).
//!
//! Real time cannot be fast-forwarded, so the tests set thresholds that a few reads in a
//! second cross, and run the passes themselves with `dfs classify`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::time::{Duration, Instant};

use common::{fails, ok, pattern, read_uncached, Pool};
use serde_json::Value;

/// Hot above 2 ops/day, warm above 1, by rate alone (recency windows of zero seconds:
/// only an access in the same wall second counts). A file read a few times is hot; a
/// file written once and left alone for a second is cold.
const QUICK: [&str; 8] =
    ["--hot-ops-per-day", "2", "--warm-ops-per-day", "1", "--hot-within", "0s", "--warm-within", "0s"];

fn json(args: &[&str]) -> Value {
    serde_json::from_str(&ok(args)).unwrap()
}

fn policies_of(pool: &Pool, path: &str) -> Vec<String> {
    let extents = json(&["list-extents", "--pool", pool.path(), path, "--json"]);
    extents.as_array().unwrap().iter().map(|e| e["policy"].as_str().unwrap().to_string()).collect()
}

fn files_listed(rows: &Value) -> Vec<String> {
    let mut files: Vec<String> = rows.as_array().unwrap().iter().map(|r| r["file"].as_str().unwrap().into()).collect();
    files.sort();
    files.dedup();
    files
}

#[test]
fn reads_make_a_file_hot_and_classify_migrates_it_while_pinned_files_stay() {
    let pool = Pool::new("erasure:4+2", &[64, 64, 96, 96, 128, 128]);
    let p = pool.path();
    let mut args = vec!["tiering", "--pool", p];
    args.extend(QUICK);
    ok(&args);
    let hot = pattern(1_500_000, 1);
    let kept = pattern(1_200_000, 2);
    let other = pattern(1_100_000, 3);
    for (name, data) in [("hot", &hot), ("kept", &kept), ("other", &other)] {
        fs::write(pool.local(name), data).unwrap();
    }
    ok(&["put", "--pool", p, pool.local("hot").to_str().unwrap(), "/hot"]);
    ok(&["mkdir", "--pool", p, "/keep", "--policy", "erasure:4+2"]);
    ok(&["put", "--pool", p, pool.local("kept").to_str().unwrap(), "/keep/kept"]);
    ok(&["put", "--pool", p, pool.local("other").to_str().unwrap(), "/other"]);
    std::thread::sleep(Duration::from_millis(1100));

    let back = pool.local("back");
    for pass in 0..4 {
        for path in ["/hot", "/keep/kept"] {
            ok(&["get", "--pool", p, path, back.to_str().unwrap()]);
            ok(&["get", "--pool", p, path, back.to_str().unwrap()]);
        }
        let report = json(&["classify", "--pool", p, "--json"]);
        assert_eq!(report["extents"], 6, "pass {pass}: {report}");
    }

    // Four hot passes: /hot and the pinned /keep/kept are hot, /other is cold.
    let hot_rows = json(&["list-hot", "--pool", p, "--json"]);
    assert_eq!(files_listed(&hot_rows), ["/hot", "/keep/kept"], "{hot_rows}");
    for row in hot_rows.as_array().unwrap() {
        let pinned = row["file"] == "/keep/kept";
        assert_eq!(row["pinned"], pinned, "{row}");
        assert_eq!(row["target"], if pinned { "erasure:4+2" } else { "replicate:3" }, "{row}");
        assert_eq!(row["policy"], "erasure:4+2");
        assert!(row["confidence"].as_f64().unwrap() >= 0.9, "{row}");
        assert!(row["ops_per_day"].as_f64().unwrap() > 2.0, "{row}");
    }
    assert_eq!(files_listed(&json(&["list-cold", "--pool", p, "--json"])), ["/other"]);
    let table = ok(&["list-hot", "--pool", p]);
    assert!(table.starts_with("EXTENT") && table.contains("replicate:3") && table.contains("(pinned)"), "{table}");

    // An extent keeps its name through the re-encode that migrates it.
    let extent = json(&["list-extents", "--pool", p, "/hot", "--json"])[0]["extent"].as_str().unwrap().to_string();
    let migrated = json(&["classify", "--pool", p, "--migrate", "--json"]);
    assert_eq!((migrated["migrated"].as_u64(), migrated["migrations_left"].as_u64()), (Some(2), Some(0)));
    assert_eq!(policies_of(&pool, "/hot"), ["replicate:3", "replicate:3"]);
    assert_eq!(policies_of(&pool, "/keep/kept"), ["erasure:4+2", "erasure:4+2"]);
    assert_eq!(policies_of(&pool, "/other"), ["erasure:4+2", "erasure:4+2"]);

    // The extent's story: five passes, hot at the last, one change caused by tiering.
    assert_eq!(json(&["list-extents", "--pool", p, "/hot", "--json"])[0]["extent"], extent.as_str());
    assert!(json(&["list-hot", "--pool", p, "--json"])
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["extent"] == extent.as_str()));
    let stats = json(&["extent-stats", "--pool", p, "--extent", &extent, "--json"]);
    let passes = stats["passes"].as_array().unwrap();
    assert_eq!(passes.len(), 5, "{stats}");
    assert_eq!(passes.last().unwrap()["state"], "Hot");
    assert_eq!(passes[1]["accesses"], 2, "{stats}");
    let history = stats["policy_history"].as_array().unwrap();
    assert_eq!(history.len(), 1, "{stats}");
    assert_eq!((history[0]["from"].as_str(), history[0]["to"].as_str()), (Some("erasure:4+2"), Some("replicate:3")));
    assert_eq!(history[0]["cause"], "tiering (hot)");
    let text = ok(&["extent-stats", "--pool", p, "--extent", &extent]);
    assert!(text.contains("/hot at offset 0") && text.contains("tiering (hot)"), "{text}");

    // Unpinned, the kept file follows its temperature too.
    let out = ok(&["unpin", "--pool", p, "--path", "/keep", "--recursive"]);
    assert!(out.contains("2 inode(s) unpinned"), "{out}");
    ok(&["classify", "--pool", p, "--migrate"]);
    assert_eq!(policies_of(&pool, "/keep/kept"), ["replicate:3", "replicate:3"]);

    for (path, data) in [("/hot", &hot), ("/keep/kept", &kept), ("/other", &other)] {
        ok(&["get", "--pool", p, path, back.to_str().unwrap()]);
        assert_eq!(fs::read(&back).unwrap(), *data, "{path}");
    }
}

#[test]
fn bad_tiering_settings_are_refused_and_change_nothing() {
    let pool = Pool::new("replicate:2", &[64, 64, 64]);
    let p = pool.path();
    let before = json(&["tiering", "--pool", p, "--json"]);
    let error = fails(&["tiering", "--pool", p, "--hot-ops-per-day", "5"]);
    assert!(error.contains("at least as strict") && error.contains("EINVAL"), "{error}");
    let error = fails(&["tiering", "--pool", p, "--recency-boost", "0.5"]);
    assert!(error.contains("recency boost"), "{error}");
    let error = fails(&["tiering", "--pool", p, "--hmm-transition", "0.5,0.6,0;0,1,0;0,0,1"]);
    assert!(error.contains("transition"), "{error}");
    let usage = common::run(&["tiering", "--pool", p, "--hot-policy", "replicate:9"]);
    assert_eq!(usage.status.code(), Some(2));
    assert_eq!(json(&["tiering", "--pool", p, "--json"]), before);
    assert!(fails(&["extent-stats", "--pool", p, "--extent", "nothex"]).contains("INO:INDEX"));
    assert!(fails(&["extent-stats", "--pool", p, "--extent", "ffff"]).contains("EINVAL"));
    assert!(fails(&["extent-stats", "--pool", p, "--extent", "999:0"]).contains("ENOENT"));

    ok(&["tiering", "--pool", p, "--disable"]);
    assert!(fails(&["classify", "--pool", p]).contains("tiering is off"));
    assert!(fails(&["list-hot", "--pool", p]).contains("--enable"));
    let off = json(&["tiering", "--pool", p, "--json"]);
    assert_eq!(off["enabled"], false);
    ok(&["tiering", "--pool", p, "--enable", "--pass-interval", "2h", "--warm-policy", "replicate:3"]);
    let on = json(&["tiering", "--pool", p, "--json"]);
    assert_eq!((on["enabled"].as_bool(), on["pass_interval_secs"].as_u64()), (Some(true), Some(7200)));
    assert_eq!(on["tiers"]["warm"], "replicate:3");

    let plain = tempfile::tempdir().unwrap();
    let path = plain.path().join("pool");
    ok(&["init", "--pool", path.to_str().unwrap(), "--no-tiering"]);
    let disk = plain.path().join("d");
    fs::create_dir(&disk).unwrap();
    ok(&["add-disk", "--pool", path.to_str().unwrap(), "--disk", disk.to_str().unwrap(), "--capacity", "64MiB"]);
    assert_eq!(json(&["tiering", "--pool", path.to_str().unwrap(), "--json"])["enabled"], false);
}

#[test]
fn reads_through_a_mount_migrate_a_hot_file_in_the_background() {
    let pool = Pool::new("erasure:4+2", &[64, 64, 96, 96, 128, 128]);
    let p = pool.path();
    let mut args = vec!["tiering", "--pool", p, "--pass-interval", "1d"];
    args.extend(QUICK);
    ok(&args);
    // A first pass now, so the daemon's next one is a day away: the test runs them all.
    ok(&["classify", "--pool", p]);
    let m = pool.root.path().join("mnt");
    fs::create_dir(&m).unwrap();
    ok(&["mount", "--pool", p, "--mountpoint", m.to_str().unwrap()]);
    let data = pattern(2_300_000, 9);
    fs::write(m.join("f"), &data).unwrap();
    for _ in 0..4 {
        assert_eq!(read_uncached(&m.join("f")), data);
        assert_eq!(read_uncached(&m.join("f")), data);
        ok(&["classify", "--pool", p]);
    }
    let pending = json(&["list-hot", "--pool", p, "--json"]);
    assert_eq!(pending.as_array().unwrap().len(), 3, "{pending}");
    assert!(pending.as_array().unwrap().iter().all(|r| r["policy"] == "erasure:4+2" && r["target"] == "replicate:3"));
    // This read queues the extents; the daemon re-encodes them off the read's path.
    assert_eq!(read_uncached(&m.join("f")), data);
    let started = Instant::now();
    while policies_of(&pool, "/f") != ["replicate:3"; 3] {
        assert!(started.elapsed() < Duration::from_secs(60), "no migration: {:?}", policies_of(&pool, "/f"));
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(read_uncached(&m.join("f")), data);
    let status = ok(&["policy-status", "--pool", p]);
    assert!(status.contains("tiering (hot)"), "{status}");
    ok(&["umount", m.to_str().unwrap()]);
    assert_eq!(policies_of(&pool, "/f"), ["replicate:3"; 3]);
}
