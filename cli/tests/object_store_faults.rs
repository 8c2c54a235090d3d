//! A pool on an S3-compatible store when the store itself loses parts (issue 18), with
//! the real `dfs` binary and the SeaweedFS cluster `.ci/seaweedfs start` runs (CI does;
//! `DFS_SEAWEEDFS` names its directory, so the tests can kill a volume server and delete
//! a bucket). Without it these tests fail and say how to start it: they never skip. The
//! tests here run one at a time: a volume server killed for one would disturb another.
//!
//! - One of the store's three volume servers killed: every read still succeeds and
//!   writes continue (the store replicates each volume on two servers).
//! - A whole store disk unreachable (its bucket gone): reads degrade exactly as with a
//!   failed local disk, and once it is failed `dfs rebuild` restores redundancy on the
//!   other disks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use common::{ok, pattern};

/// One test at a time: each breaks the store the others use.
static STORE: Mutex<()> = Mutex::new(());

/// The cluster's directory and bucket; panics, saying how to start it, without them.
fn cluster() -> (PathBuf, String) {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    match (var("DFS_SEAWEEDFS"), var("DFS_TEST_S3_BUCKET")) {
        (Some(dir), Some(bucket)) => (PathBuf::from(dir), bucket),
        _ => panic!(
            "these tests need the SeaweedFS cluster of .ci/seaweedfs: run `eval \"$(.ci/seaweedfs start \
             /tmp/seaweedfs)\"` first (CI does); DFS_SEAWEEDFS or DFS_TEST_S3_BUCKET is not set"
        ),
    }
}

fn seaweedfs(args: &[&str]) {
    let (dir, _) = cluster();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.ci/seaweedfs");
    let mut full = vec![args[0], dir.to_str().unwrap()];
    full.extend(&args[1..]);
    let status = Command::new("bash").arg(script).args(&full).status().unwrap();
    assert!(status.success(), ".ci/seaweedfs {full:?} failed");
}

/// Starts the volume server again however the test ends.
struct Revive(&'static str);

impl Drop for Revive {
    fn drop(&mut self) {
        seaweedfs(&["start-volume", self.0]);
    }
}

fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{name}-{}-{nanos}", std::process::id())
}

/// A pool at `pool` with one `--capacity 1GiB` disk per location.
fn pool_on(pool: &Path, policy: &str, disks: &[String]) {
    ok(&["init", "--pool", pool.to_str().unwrap(), "--policy", policy]);
    let mut args = vec!["add-disk", "--pool", pool.to_str().unwrap(), "--capacity", "1GiB"];
    for disk in disks {
        args.extend(["--disk", disk.as_str()]);
    }
    ok(&args);
}

fn put(pool: &Path, root: &Path, name: &str, data: &[u8]) {
    let local = root.join(format!("{name}.local"));
    std::fs::write(&local, data).unwrap();
    ok(&["put", "--pool", pool.to_str().unwrap(), local.to_str().unwrap(), &format!("/{name}")]);
}

fn get(pool: &Path, root: &Path, name: &str) -> Vec<u8> {
    let local = root.join(format!("{name}.back"));
    let _ = std::fs::remove_file(&local);
    ok(&["get", "--pool", pool.to_str().unwrap(), &format!("/{name}"), local.to_str().unwrap()]);
    std::fs::read(local).unwrap()
}

#[test]
fn a_killed_volume_server_costs_no_read_and_no_write() {
    let _one = STORE.lock().unwrap_or_else(|p| p.into_inner());
    let (_, bucket) = cluster();
    let root = tempfile::tempdir().unwrap();
    let pool = root.path().join("pool");
    let prefix = format!("s3://{bucket}/{}", unique("volume-kill"));
    pool_on(&pool, "erasure:4+2", &(1..=6).map(|i| format!("{prefix}/d{i}")).collect::<Vec<_>>());
    let before: Vec<Vec<u8>> = (0..4).map(|i| pattern(1_500_000 + i * 300_000, i as u64 + 1)).collect();
    for (i, data) in before.iter().enumerate() {
        put(&pool, root.path(), &format!("before{i}"), data);
    }

    seaweedfs(&["kill-volume", "2"]);
    let _revive = Revive("2");
    for (i, data) in before.iter().enumerate() {
        assert!(get(&pool, root.path(), &format!("before{i}")) == *data, "before{i} reads back wrong");
    }
    let after: Vec<Vec<u8>> = (0..4).map(|i| pattern(1_200_000 + i * 200_000, i as u64 + 11)).collect();
    for (i, data) in after.iter().enumerate() {
        put(&pool, root.path(), &format!("after{i}"), data);
    }
    for (i, data) in after.iter().enumerate() {
        assert!(get(&pool, root.path(), &format!("after{i}")) == *data, "after{i} reads back wrong");
    }
    let health = ok(&["health", "--pool", pool.to_str().unwrap()]);
    assert!(health.contains("healthy"), "{health}");
}

#[test]
fn a_store_disk_whose_bucket_is_gone_reads_degraded_and_is_rebuilt_elsewhere() {
    let _one = STORE.lock().unwrap_or_else(|p| p.into_inner());
    let (_, bucket) = cluster();
    let root = tempfile::tempdir().unwrap();
    let pool = root.path().join("pool");
    let lost_bucket = unique("dfs-gone");
    seaweedfs(&["bucket", "create", &lost_bucket]);
    let prefix = format!("s3://{bucket}/{}", unique("bucket-gone"));
    let mut disks: Vec<String> = (1..=6).map(|i| format!("{prefix}/d{i}")).collect();
    disks.push(format!("s3://{lost_bucket}/d7"));
    pool_on(&pool, "erasure:4+2", &disks);
    let files: Vec<Vec<u8>> = (0..6).map(|i| pattern(1_100_000 + i * 250_000, i as u64 + 21)).collect();
    for (i, data) in files.iter().enumerate() {
        put(&pool, root.path(), &format!("f{i}"), data);
    }
    let listed: serde_json::Value =
        serde_json::from_str(&ok(&["list-disks", "--pool", pool.to_str().unwrap(), "--json"])).unwrap();
    let d7 = listed.as_array().unwrap().iter().find(|d| d["path"].as_str().unwrap().contains(&lost_bucket)).unwrap();
    assert_eq!(d7["id"], "d7");
    assert!(d7["fragments"].as_u64().unwrap() > 0, "the test needs fragments on the disk it loses: {listed}");

    seaweedfs(&["bucket", "delete", &lost_bucket]);
    for (i, data) in files.iter().enumerate() {
        assert!(get(&pool, root.path(), &format!("f{i}")) == *data, "f{i} reads back wrong with d7 gone");
    }
    let redundancy = ok(&["show-redundancy", "--pool", pool.to_str().unwrap()]);
    assert!(redundancy.contains("degraded"), "{redundancy}");
    ok(&["fail-disk", "--pool", pool.to_str().unwrap(), "--disk", "d7"]);
    ok(&["rebuild", "--pool", pool.to_str().unwrap()]);
    let health = ok(&["health", "--pool", pool.to_str().unwrap()]);
    assert!(health.contains("healthy"), "{health}");
    let extents = ok(&["list-extents", "--pool", pool.to_str().unwrap(), "--verify"]);
    assert!(!extents.contains("degraded") && !extents.contains("lost"), "{extents}");
    for (i, data) in files.iter().enumerate() {
        assert!(get(&pool, root.path(), &format!("f{i}")) == *data, "f{i} reads back wrong after the rebuild");
    }
}
