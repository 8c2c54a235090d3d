//! A pool made before segments (every fragment a file of its own under `fragment/`) is
//! served as it is, and `dfs upgrade` packs its fragments into segments, resumably.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::path::Path;

use common::{fragments_on, ok, pattern, Pool};

/// Rewrites a disk in the layout of the build before segments: each fragment in a file
/// `fragment/<extent>.<index>` holding exactly its bytes, and no segments.
fn to_files_per_fragment(disk: &Path) -> usize {
    let fragments = fragments_on(disk);
    fs::create_dir_all(disk.join("fragment")).unwrap();
    for fragment in &fragments {
        fs::write(disk.join("fragment").join(fragment.name.leaf()), fragment.read().unwrap()).unwrap();
    }
    fs::remove_dir_all(disk.join("segments")).unwrap();
    fragments.len()
}

fn files_in(dir: &Path) -> usize {
    fs::read_dir(dir).map(|entries| entries.count()).unwrap_or(0)
}

#[test]
fn a_pool_of_one_file_per_fragment_is_served_and_upgraded_in_place() {
    let pool = Pool::new("erasure:2+1", &[64, 64, 64]);
    let data = pattern(5_000_000, 21);
    let local = pool.local("in");
    fs::write(&local, &data).unwrap();
    ok(&["put", "--pool", pool.path(), local.to_str().unwrap(), "/f"]);
    let mut legacy = 0;
    for disk in &pool.disks {
        legacy += to_files_per_fragment(disk);
    }
    assert_eq!(legacy, 15, "five extents of three fragments");

    // Served as it is: read back, and a new file goes to segments beside the old files.
    let out = pool.local("out");
    ok(&["get", "--pool", pool.path(), "/f", out.to_str().unwrap()]);
    assert_eq!(fs::read(&out).unwrap(), data);
    let extra = pattern(300_000, 22);
    fs::write(&local, &extra).unwrap();
    ok(&["put", "--pool", pool.path(), local.to_str().unwrap(), "/g"]);
    assert!(pool.disks.iter().all(|d| files_in(&d.join("segments")) == 1), "new fragments went to segments");

    // One fragment's bytes, to compare once it lies in a segment.
    let first = &pool.disks[0];
    let file = fs::read_dir(first.join("fragment")).unwrap().next().unwrap().unwrap().path();
    let before = fs::read(&file).unwrap();

    let health = pool.json("health");
    let named: Vec<&str> = health["problems"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["action"].as_str().unwrap().contains("dfs upgrade"))
        .map(|p| p["subject"].as_str().unwrap())
        .collect();
    assert_eq!(named, ["d1", "d2", "d3"], "{health}");

    let report = ok(&["upgrade", "--pool", pool.path()]);
    for (i, disk) in pool.disks.iter().enumerate() {
        assert!(report.contains(&format!("d{}: 5 fragment(s) moved into segments", i + 1)), "{report}");
        assert!(!disk.join("fragment").exists(), "{} kept its fragment folder", disk.display());
        assert_eq!(fragments_on(disk).len(), 6, "five old fragments and one new on {}", disk.display());
    }
    let name = file.file_name().unwrap().to_str().unwrap().to_string();
    let moved = fragments_on(first).into_iter().find(|f| f.name.leaf() == name).unwrap();
    assert_eq!(moved.read().unwrap(), before, "a fragment changed on its way into a segment");

    fs::remove_file(&out).unwrap();
    ok(&["get", "--pool", pool.path(), "/f", out.to_str().unwrap()]);
    assert_eq!(fs::read(&out).unwrap(), data);
    let verified: serde_json::Value =
        serde_json::from_str(&ok(&["list-extents", "--pool", pool.path(), "--verify", "--json"])).unwrap();
    for extent in verified.as_array().unwrap() {
        assert_eq!(extent["fragments_available"], extent["fragments_total"], "{extent}");
    }
    let health = ok(&["health", "--pool", pool.path()]);
    assert!(!health.contains("dfs upgrade"), "{health}");
    let again = ok(&["upgrade", "--pool", pool.path()]);
    assert!(again.contains("already stores its fragments in segments"), "{again}");
}

#[test]
fn an_upgrade_interrupted_after_its_copies_finishes_on_the_next_run() {
    let pool = Pool::new("replicate:2", &[64, 64]);
    let data = pattern(2_500_000, 23);
    let local = pool.local("in");
    fs::write(&local, &data).unwrap();
    ok(&["put", "--pool", pool.path(), local.to_str().unwrap(), "/f"]);
    // The crash window: every fragment both in a segment and in a file of its own.
    for disk in &pool.disks {
        for fragment in fragments_on(disk) {
            fs::create_dir_all(disk.join("fragment")).unwrap();
            fs::write(disk.join("fragment").join(fragment.name.leaf()), fragment.read().unwrap()).unwrap();
        }
    }
    let listed = pool.json("list-extents");
    assert_eq!(listed.as_array().unwrap().len(), 3);
    for extent in listed.as_array().unwrap() {
        assert_eq!(extent["fragments_available"], extent["fragments_total"], "{extent}");
    }
    let report = ok(&["upgrade", "--pool", pool.path()]);
    assert!(report.contains("d1: 3 fragment(s) moved") && report.contains("d2: 3 fragment(s) moved"), "{report}");
    for disk in &pool.disks {
        assert!(!disk.join("fragment").exists());
        assert_eq!(fragments_on(disk).len(), 3);
    }
    let out = pool.local("out");
    ok(&["get", "--pool", pool.path(), "/f", out.to_str().unwrap()]);
    assert_eq!(fs::read(&out).unwrap(), data);
}
