//! Scrub and orphan GC end to end on real directories: bytes flipped in fragment files
//! on disk are found and repaired, beyond-tolerance damage is reported by file and
//! offset with exit code 1, orphans are collected only past the age guard; and the
//! background scrub through a real FUSE mount and through `dfs serve`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::time::Duration;

use common::{eventually, fails, fragments_on, ok, pattern, read_uncached, run, Pool, StoredFragment};
use serde_json::Value;

fn json(args: &[&str]) -> Value {
    serde_json::from_str(&ok(args)).unwrap()
}

fn flip_byte(fragment: &StoredFragment) {
    let middle = fragment.len / 2;
    let byte = fragment.read().unwrap()[middle as usize];
    fragment.overwrite(middle, &[byte ^ 0x5a]).unwrap();
}

/// Fragment files of `extent` (its name, `INO:INDEX`) on every disk.
fn fragments_of(pool: &Pool, extent: &str) -> Vec<StoredFragment> {
    let list = json(&["list-extents", "--pool", pool.path(), "--json"]);
    let entry = list.as_array().unwrap().iter().find(|e| e["extent"] == extent).unwrap().clone();
    let stored_as = entry["stored_as"].as_str().unwrap().to_string();
    pool.disks.iter().flat_map(|d| fragments_on(d)).filter(|f| f.name.leaf().starts_with(&stored_as)).collect()
}

/// The names of the extents of the file at `path`.
fn extents(pool: &Pool, path: &str) -> Vec<String> {
    let list = json(&["list-extents", "--pool", pool.path(), path, "--json"]);
    list.as_array().unwrap().iter().map(|e| e["extent"].as_str().unwrap().to_string()).collect()
}

fn all_healthy(pool: &Pool) -> bool {
    let report = json(&["show-redundancy", "--pool", pool.path(), "--verify", "--json"]);
    let by_health = report["by_health"].as_object().unwrap();
    by_health.keys().all(|health| health == "healthy")
}

/// Asserts that `dfs get` returns each file's bytes exactly.
fn assert_files_read_back(pool: &Pool, files: &[(&str, Vec<u8>)], label: &str) {
    for (i, (path, data)) in files.iter().enumerate() {
        let back = pool.local(&format!("{label}{i}"));
        ok(&["get", "--pool", pool.path(), path, back.to_str().unwrap()]);
        assert_eq!(fs::read(&back).unwrap(), *data, "{path}");
    }
}

/// Asserts that a scrub finds nothing and every extent is healthy, then that every file
/// reads back.
fn assert_clean(pool: &Pool, files: &[(&str, Vec<u8>)]) {
    let clean = json(&["scrub", "--pool", pool.path(), "--json"]);
    assert_eq!((clean["corrupt_fragments"].as_u64(), clean["missing_fragments"].as_u64()), (Some(0), Some(0)));
    assert!(all_healthy(pool), "a degraded extent is left");
    assert_files_read_back(pool, files, "out");
}

#[test]
fn flipped_bytes_on_disk_are_found_repaired_and_every_file_reads_back() {
    let pool = Pool::new("erasure:4+2", &[64, 64, 96, 96, 128, 128]);
    let p = pool.path();
    ok(&["mkdir", "--pool", p, "/mirror", "--policy", "replicate:3"]);
    let files = [("/a", pattern(3_200_000, 1)), ("/b", pattern(700_000, 2)), ("/mirror/c", pattern(2_200_000, 3))];
    for (i, (path, data)) in files.iter().enumerate() {
        let local = pool.local(&format!("in{i}"));
        fs::write(&local, data).unwrap();
        ok(&["put", "--pool", p, local.to_str().unwrap(), path]);
    }
    // Two fragments of every extent of /a, one of each of /mirror/c: all within tolerance.
    let mut flipped = 0;
    for extent in extents(&pool, "/a") {
        for file in fragments_of(&pool, &extent).iter().take(2) {
            flip_byte(file);
            flipped += 1;
        }
    }
    for extent in extents(&pool, "/mirror/c") {
        flip_byte(&fragments_of(&pool, &extent)[0]);
        flipped += 1;
    }
    assert!(!all_healthy(&pool));

    let found = json(&["scrub", "--pool", p, "--json"]);
    assert_eq!(found["corrupt_fragments"], flipped, "{found}");
    assert_eq!(found["repaired_extents"], 0);
    assert_eq!(found["extents_checked"], 8);
    assert!(found["findings"].as_array().unwrap().iter().all(|f| f["repaired"] == false));
    let text = ok(&["scrub", "--pool", p, "--path", "/mirror"]);
    assert!(text.contains("scrubbed 3 extent(s)") && text.contains("/mirror/c") && text.contains("--repair"), "{text}");

    let repaired = json(&["scrub", "--pool", p, "--repair", "--json"]);
    assert_eq!(repaired["repaired_fragments"], flipped, "{repaired}");
    assert_eq!(repaired["unrecoverable"].as_array().unwrap().len(), 0);
    assert_clean(&pool, &files);
}

/// `dfs scrub` of the whole pool also reads every copy of the metadata store on the
/// journal disks: a disk's rotten copies are listed, `--repair` rewrites them from
/// another disk's, and the next scrub finds none.
#[test]
fn rotten_metadata_pages_on_one_disk_are_found_and_rewritten() {
    let pool = Pool::new("replicate:3", &[64, 64, 64]);
    let p = pool.path();
    for i in 0..20u64 {
        let local = pool.local(&format!("in{i}"));
        fs::write(&local, pattern(500 + i as usize * 7, i)).unwrap();
        ok(&["put", "--pool", p, local.to_str().unwrap(), &format!("/f{i}")]);
    }
    // The last journal disk: an open reads the first disk's copies and never meets these.
    let pages: Vec<_> = fs::read_dir(pool.disks[2].join("store-page"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|path| !path.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    assert!(!pages.is_empty());
    for page in &pages {
        let mut bytes = fs::read(page).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x5a;
        fs::write(page, bytes).unwrap();
    }
    let text = ok(&["scrub", "--pool", p]);
    let bad = format!("on 3 journal disk(s) verified, {} bad", pages.len());
    assert!(text.contains(&bad) && text.contains("Metadata copies:") && text.contains("checksum"), "{text}");
    let repaired = json(&["scrub", "--pool", p, "--repair", "--json"]);
    let findings = repaired["metadata"]["findings"].as_array().unwrap();
    // The first scrub's own checkpoint replaced some of the pages it found.
    assert!(!findings.is_empty() && findings.len() <= pages.len(), "{repaired}");
    assert!(findings.iter().all(|f| f["repaired"] == true && f["disk"] == 3), "{repaired}");
    let clean = ok(&["scrub", "--pool", p]);
    assert!(clean.contains("on 3 journal disk(s) verified, 0 bad"), "{clean}");
}

#[test]
fn a_segment_rotten_over_a_stretch_mid_file_costs_only_the_records_there_and_is_repaired() {
    let pool = Pool::new("erasure:4+2", &[64, 64, 64, 64, 64, 64]);
    let p = pool.path();
    let files = [("/a", pattern(5_000_000, 4)), ("/b", pattern(3_000_000, 5))];
    for (i, (path, data)) in files.iter().enumerate() {
        let local = pool.local(&format!("in{i}"));
        fs::write(&local, data).unwrap();
        ok(&["put", "--pool", p, local.to_str().unwrap(), path]);
    }
    // 400 KiB of garbage in the middle of the first disk's segment: record headers and
    // payloads alike (each record here spans about 260 KiB).
    let segments: Vec<_> = fs::read_dir(pool.disks[0].join("segments")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(segments.len(), 1, "{segments:?}");
    let before = fragments_on(&pool.disks[0]).len();
    let len = fs::metadata(&segments[0]).unwrap().len();
    assert!(len > 1 << 20, "segment of {len} bytes");
    let garbage = pattern(400 << 10, 99);
    {
        use std::os::unix::fs::FileExt;
        let file = fs::OpenOptions::new().write(true).open(&segments[0]).unwrap();
        file.write_all_at(&garbage, len / 2 - 200 * 1024).unwrap();
        file.sync_all().unwrap();
    }
    // A record whose header went is gone at the next open; its neighbours stay.
    let after = fragments_on(&pool.disks[0]).len();
    assert!(after < before && after + 3 >= before, "{before} records, {after} after the damage");
    let found = json(&["scrub", "--pool", p, "--json"]);
    let bad = found["corrupt_fragments"].as_u64().unwrap() + found["missing_fragments"].as_u64().unwrap();
    assert!((2..=3).contains(&bad), "{found}");
    assert_files_read_back(&pool, &files, "degraded");
    let repaired = json(&["scrub", "--pool", p, "--repair", "--json"]);
    assert_eq!(repaired["unrecoverable"].as_array().unwrap().len(), 0, "{repaired}");
    assert_clean(&pool, &files);
}

#[test]
fn damage_beyond_tolerance_is_reported_by_file_and_offset_with_exit_code_one() {
    let pool = Pool::new("replicate:2", &[64, 64, 64]);
    let p = pool.path();
    let local = pool.local("in");
    fs::write(&local, pattern(2_500_000, 7)).unwrap();
    ok(&["put", "--pool", p, local.to_str().unwrap(), "/doomed"]);
    let second = extents(&pool, "/doomed")[1].clone();
    for file in fragments_of(&pool, &second) {
        flip_byte(&file);
    }
    let out = run(&["scrub", "--pool", p, "--repair"]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("Unrecoverable:") && stdout.contains("/doomed") && stdout.contains("1048576"), "{stdout}");
    assert!(stderr.contains("1 extent(s) unrecoverable") && stderr.contains("EIO"), "{stderr}");
    // The other extents of the file are untouched and intact.
    let report: Value =
        serde_json::from_str(&String::from_utf8_lossy(&run(&["scrub", "--pool", p, "--json"]).stdout)).unwrap();
    assert_eq!(report["unrecoverable"][0]["extent"], second.as_str());
    assert_eq!(report["corrupt_fragments"], 2);
}

#[test]
fn orphans_are_collected_only_past_the_age_guard_and_nothing_referenced_goes() {
    let pool = Pool::new("erasure:2+1", &[64, 64, 64]);
    let p = pool.path();
    let data = pattern(1_500_000, 4);
    let local = pool.local("in");
    fs::write(&local, &data).unwrap();
    ok(&["put", "--pool", p, local.to_str().unwrap(), "/kept"]);
    assert!(ok(&["detect-orphans", "--pool", p]).contains("no orphan fragments"));
    // Plant orphans: copies of real fragments under ids no record uses.
    // They lie in files of their own, as a pool made before segments holds fragments:
    // the collector works on that layout too, and a file's age can be set.
    let source = fragments_on(&pool.disks[0])[0].read().unwrap();
    let orphan_a = pool.disks[0].join("fragment/00000000000000f0.00");
    let orphan_b = pool.disks[1].join("fragment/00000000000000f1.01");
    for orphan in [&orphan_a, &orphan_b] {
        fs::create_dir_all(orphan.parent().unwrap()).unwrap();
        fs::write(orphan, &source).unwrap();
    }
    let found = json(&["detect-orphans", "--pool", p, "--json"]);
    let blocks: Vec<&str> = found.as_array().unwrap().iter().map(|o| o["block"].as_str().unwrap()).collect();
    assert_eq!(blocks, ["00000000000000f0.00", "00000000000000f1.01"], "{found}");
    let young = json(&["cleanup-orphans", "--pool", p, "--json"]);
    assert_eq!((young["deleted"].as_u64(), young["too_young"].as_u64()), (Some(0), Some(2)));
    assert!(orphan_a.exists() && orphan_b.exists());
    // Two hours old by mtime: past the default one-hour guard.
    let old = std::time::SystemTime::now() - Duration::from_secs(7200);
    fs::File::options().write(true).open(&orphan_a).unwrap().set_modified(old).unwrap();
    let stats = json(&["orphan-stats", "--pool", p, "--json"]);
    assert_eq!(stats.as_array().unwrap().iter().map(|s| s["count"].as_u64().unwrap()).sum::<u64>(), 2);
    let cleaned = json(&["cleanup-orphans", "--pool", p, "--json"]);
    assert_eq!((cleaned["deleted"].as_u64(), cleaned["too_young"].as_u64()), (Some(1), Some(1)));
    assert!(!orphan_a.exists() && orphan_b.exists());
    let all = json(&["cleanup-orphans", "--pool", p, "--older-than", "0", "--json"]);
    assert_eq!(all["deleted"], 1);
    assert!(ok(&["detect-orphans", "--pool", p]).contains("no orphan fragments"));
    let back = pool.local("back");
    ok(&["get", "--pool", p, "/kept", back.to_str().unwrap()]);
    assert_eq!(fs::read(&back).unwrap(), data);
    let usage = run(&["cleanup-orphans", "--pool", p, "--older-than", "soon"]);
    assert_eq!(usage.status.code(), Some(2), "a bad duration is a usage error");
}

#[test]
fn the_background_scrub_repairs_a_mounted_pool_and_reports_its_pass() {
    let pool = Pool::new("erasure:2+1", &[64, 64, 64, 64]);
    let p = pool.path();
    let m = pool.root.path().join("mnt");
    fs::create_dir(&m).unwrap();
    ok(&["mount", "--pool", p, "--mountpoint", m.to_str().unwrap()]);
    let data = pattern(3_000_000, 5);
    fs::write(m.join("f"), &data).unwrap();
    ok(&["list-disks", "--pool", p]); // every command ends with a barrier: the data is durable
    let extent = extents(&pool, "/f")[0].clone();
    flip_byte(&fragments_of(&pool, &extent)[0]);

    let status = ok(&["scrub-daemon", "status", "--pool", p]);
    assert!(status.contains("daemon: running") && status.contains("last full pass: never"), "{status}");
    ok(&["scrub-daemon", "start", "--pool", p, "--intensity", "high"]);
    eventually("a full background pass", || {
        json(&["scrub-daemon", "status", "--pool", p, "--json"])["state"]["passes_completed"] == 1
    });
    let done = json(&["scrub-daemon", "status", "--pool", p, "--json"]);
    let last = &done["state"]["last_full_pass"]["stats"];
    assert_eq!((last["corrupt"].as_u64(), last["repaired"].as_u64()), (Some(1), Some(1)), "{done}");
    assert_eq!(last["extents"], 3);
    assert!(all_healthy(&pool));
    assert_eq!(fs::read(m.join("f")).unwrap(), data);
    // Pause, resume and stop act on a pass in progress; without one they say so.
    assert!(fails(&["scrub-daemon", "pause", "--pool", p]).contains("ENOENT"));
    ok(&["scrub-daemon", "start", "--pool", p, "--intensity", "low"]);
    ok(&["scrub-daemon", "pause", "--pool", p]);
    assert!(ok(&["scrub-daemon", "status", "--pool", p]).contains("paused at"));
    ok(&["scrub-daemon", "resume", "--pool", p]);
    ok(&["scrub-daemon", "stop", "--pool", p]);
    assert!(ok(&["scrub-daemon", "status", "--pool", p]).contains("pass: none in progress"));
    let scheduled = ok(&["scrub-schedule", "--pool", p, "--frequency", "weekly", "--intensity", "medium"]);
    assert!(scheduled.contains("weekly") && scheduled.contains("medium"), "{scheduled}");
    // A one-shot scrub through the daemon answers like an unmounted one.
    let through = json(&["scrub", "--pool", p, "--json"]);
    assert_eq!((through["extents_checked"].as_u64(), through["corrupt_fragments"].as_u64()), (Some(3), Some(0)));
    ok(&["umount", m.to_str().unwrap()]);
    let after = ok(&["scrub-daemon", "status", "--pool", p]);
    assert!(after.contains("daemon: not running") && after.contains("schedule: weekly, intensity medium"), "{after}");
}

#[test]
fn scrub_daemon_start_on_an_unmounted_pool_starts_the_pool_daemon() {
    let pool = Pool::new("replicate:2", &[64, 64]);
    let p = pool.path();
    let local = pool.local("in");
    fs::write(&local, pattern(1_200_000, 6)).unwrap();
    ok(&["put", "--pool", p, local.to_str().unwrap(), "/x"]);
    let out = run(&["scrub-daemon", "start", "--pool", p, "--intensity", "high"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let pid: i32 =
        stderr.split("pid ").nth(1).unwrap().split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap();
    eventually("the pass to finish", || {
        json(&["scrub-daemon", "status", "--pool", p, "--json"])["state"]["passes_completed"] == 1
    });
    assert!(ok(&["scrub-daemon", "status", "--pool", p]).contains("daemon: running"));
    std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status().unwrap();
    // While it shuts down it still holds the pool: status is refused (EBUSY) until then.
    eventually("the daemon to stop", || {
        String::from_utf8_lossy(&run(&["scrub-daemon", "status", "--pool", p]).stdout).contains("daemon: not running")
    });
}

/// The daemon's life is visible (issue 15, item 8): the daemon `scrub-daemon start`
/// starts says how it ends; `scrub-daemon stop` says it keeps running; `dfs mount` takes
/// it over; `dfs stop` ends it; and a pass started right after a one-shot scrub checks
/// every extent rather than recording "0 of 0".
#[test]
fn the_pool_daemon_can_be_seen_stopped_and_taken_over() {
    let pool = Pool::new("replicate:2", &[64, 64]);
    let p = pool.path();
    let local = pool.local("in");
    let data = pattern(2_500_000, 8);
    fs::write(&local, &data).unwrap();
    ok(&["put", "--pool", p, local.to_str().unwrap(), "/x"]);

    // A one-shot scrub, and a pass at once: the pass checks all three extents.
    ok(&["scrub", "--pool", p]);
    let out = run(&["scrub-daemon", "start", "--pool", p, "--intensity", "high"]);
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success() && said.contains(&format!("dfs stop --pool {p}")), "{said}");
    eventually("the pass to finish", || {
        json(&["scrub-daemon", "status", "--pool", p, "--json"])["state"]["passes_completed"] == 1
    });
    let state = json(&["scrub-daemon", "status", "--pool", p, "--json"]);
    assert_eq!(state["state"]["last_full_pass"]["stats"]["extents"], 3, "{state}");
    let out = run(&["scrub-daemon", "stop", "--pool", p]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("keeps serving the pool"), "{out:?}");

    // `dfs mount` takes the pool over from that daemon, and `dfs stop` ends the mount.
    let m = pool.local("mnt");
    fs::create_dir(&m).unwrap();
    let out = run(&["mount", "--pool", p, "--mountpoint", m.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("took over"), "{out:?}");
    assert_eq!(read_uncached(&m.join("x")), data);
    assert!(ok(&["stop", "--pool", p]).contains(&format!("unmounted {}", fs::canonicalize(&m).unwrap().display())));
    assert!(!String::from_utf8_lossy(&fs::read(format!("{p}/daemon.log")).unwrap()).is_empty());

    // `dfs stop` ends a `dfs serve` daemon; with none left it says so and succeeds.
    ok(&["scrub-daemon", "start", "--pool", p]);
    let out = ok(&["stop", "--pool", p]);
    assert!(out.starts_with("stopped the pool daemon"), "{out}");
    assert!(ok(&["scrub-daemon", "status", "--pool", p]).contains("daemon: not running"));
    assert!(ok(&["stop", "--pool", p]).starts_with("no daemon serves"));
}
