//! Pools on an S3-compatible object store (issue 18), through the real `dfs` binary, a
//! real FUSE mount and a real SeaweedFS cluster (`.ci/seaweedfs start`, which CI runs;
//! its environment names the endpoint, the credentials and the bucket). Without that
//! environment these tests fail and say how to start the store: they never skip.
//!
//! - A pool whose disks all live on the store (and one mixing local and store disks)
//!   outlives its machine: files fsynced through a mount, the daemon SIGKILLed, the pool
//!   imported into a fresh pool directory ("a new machine") and mounted there — every
//!   fsynced file reads back identical and the pool is healthy.
//! - Split brain is refused: the first machine's daemon paused (SIGSTOP) while a second
//!   imports and mounts the pool; resumed, its next commit fails as fenced, and nothing
//!   it wrote after the second opened is visible; the second's data is intact.
//! - Space comes back: fragments travel in packs, and a pack goes once what it holds
//!   was deleted, so deleting most of a pool's files returns most of its room on the store.
//! - Bad input is refused by name and changes nothing — among it a store that accepts
//!   the create-only header and overwrites anyway (`object_pool/overwriting_s3.py`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::Command;

use common::{fails, ok, pattern};

/// The bucket the store was started with; panics, saying how to start it, without one.
fn bucket() -> String {
    let bucket = std::env::var("DFS_TEST_S3_BUCKET").ok().filter(|b| !b.is_empty());
    bucket.unwrap_or_else(|| {
        panic!(
            "these tests need an S3-compatible store: run `eval \"$(.ci/seaweedfs start /tmp/seaweedfs)\"` first \
             (CI does); DFS_TEST_S3_BUCKET is not set"
        )
    })
}

/// A prefix no other test run uses.
fn unique_prefix(name: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("s3://{}/{name}-{}-{nanos}", bucket(), std::process::id())
}

/// Initialises a pool at `pool` of `local` directory disks (under `root`) and `objects`
/// disks under a new prefix of the store; returns the prefix.
fn object_pool(root: &Path, pool: &Path, policy: &str, local: usize, objects: usize) -> String {
    let prefix = unique_prefix("pool");
    ok(&["init", "--pool", pool.to_str().unwrap(), "--policy", policy]);
    let mut args: Vec<String> =
        ["add-disk", "--pool", pool.to_str().unwrap(), "--capacity", "1GiB"].iter().map(|s| s.to_string()).collect();
    for i in 0..local {
        let dir = root.join(format!("local{i}"));
        fs::create_dir(&dir).unwrap();
        args.extend(["--disk".to_string(), dir.to_str().unwrap().to_string()]);
    }
    for i in 0..objects {
        args.extend(["--disk".to_string(), format!("{prefix}/disk{i}")]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = ok(&args);
    assert_eq!(out.matches("added disk").count(), local + objects, "{out}");
    prefix
}

fn mount(pool: &Path, mountpoint: &Path) -> i32 {
    fs::create_dir_all(mountpoint).unwrap();
    let out = ok(&["mount", "--pool", pool.to_str().unwrap(), "--mountpoint", mountpoint.to_str().unwrap()]);
    let start = out.find("daemon pid ").expect("mount prints the daemon pid") + "daemon pid ".len();
    out[start..].split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
}

fn signal(pid: i32, name: &str) {
    assert!(Command::new("kill").args([&format!("-{name}"), &pid.to_string()]).status().unwrap().success());
}

fn write_synced(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut file = fs::File::create(path)?;
    file.write_all(data)?;
    file.sync_all()
}

/// The files written by `moves_to_a_new_machine`: a few sizes, from inline to several
/// extents.
fn files() -> Vec<(String, Vec<u8>)> {
    [100, 70_000, 1 << 20, (3 << 20) + 12_345]
        .iter()
        .enumerate()
        .map(|(i, len)| (format!("f{i}"), pattern(*len, i as u64 + 1)))
        .collect()
}

/// Files fsynced through a mount; the daemon SIGKILLed mid-write; the pool imported from
/// one of its store disks into a new pool directory and mounted there.
fn moves_to_a_new_machine(local: usize, objects: usize, import_from: usize) {
    let root = tempfile::tempdir().unwrap();
    let (old_pool, new_pool) = (root.path().join("old-pool"), root.path().join("new-pool"));
    let prefix = object_pool(root.path(), &old_pool, "erasure:4+2", local, objects);
    let mnt = root.path().join("mnt");
    let pid = mount(&old_pool, &mnt);
    for (name, data) in files() {
        write_synced(&mnt.join(&name), &data).unwrap();
    }
    // Unsynced writes in flight when the machine dies.
    let mut unsynced = fs::File::create(mnt.join("unsynced")).unwrap();
    unsynced.write_all(&pattern(2 << 20, 99)).unwrap();
    signal(pid, "KILL");
    ok(&["umount", mnt.to_str().unwrap()]);

    let out = ok(&["import", "--pool", new_pool.to_str().unwrap(), "--disk", &format!("{prefix}/disk{import_from}")]);
    assert!(out.contains(&format!("{} disk(s)", local + objects)), "{out}");
    let new_mnt = root.path().join("new-mnt");
    mount(&new_pool, &new_mnt);
    for (name, data) in files() {
        let read = fs::read(new_mnt.join(&name)).unwrap_or_else(|e| panic!("{name} lost: {e}"));
        assert!(read == data, "{name} reads back {} bytes that differ", read.len());
    }
    ok(&["umount", new_mnt.to_str().unwrap()]);
    let health = ok(&["health", "--pool", new_pool.to_str().unwrap()]);
    assert!(health.contains("healthy"), "{health}");
}

#[test]
fn a_pool_of_six_store_disks_moves_to_a_new_machine_after_a_crash() {
    moves_to_a_new_machine(0, 6, 3);
}

#[test]
fn a_pool_of_local_and_store_disks_moves_to_a_new_machine_after_a_crash() {
    moves_to_a_new_machine(3, 3, 1);
}

/// What the pool's store disks hold on the store, summed: each opened afresh, counting
/// the objects listed (packs and metadata).
fn bytes_on_the_store(prefix: &str, disks: usize) -> u64 {
    let access = dfs_objectdisk::Access::from_env();
    (0..disks)
        .map(|i| {
            let location: dfs_objectdisk::Location = format!("{prefix}/disk{i}").parse().unwrap();
            let disk = dfs_objectdisk::ObjectDisk::open(&location, 0, &access).unwrap();
            dfs_engine::media::device::BlockDevice::used_bytes(&disk)
        })
        .sum()
}

#[test]
fn deleting_files_on_store_disks_gives_their_room_back() {
    let root = tempfile::tempdir().unwrap();
    let pool = root.path().join("pool");
    let prefix = object_pool(root.path(), &pool, "erasure:4+2", 0, 6);
    let mnt = root.path().join("mnt");
    mount(&pool, &mnt);
    let data = |i: usize| pattern((3 << 20) + 1000 * i, 40 + i as u64);
    for i in 0..8 {
        write_synced(&mnt.join(format!("f{i}")), &data(i)).unwrap();
    }
    ok(&["umount", mnt.to_str().unwrap()]);
    let full = bytes_on_the_store(&prefix, 6);
    let written: u64 = (0..8).map(|i| data(i).len() as u64).sum::<u64>() * 3 / 2;
    assert!(full >= written, "{full} bytes on the store for {written} of fragments");

    mount(&pool, &mnt);
    for i in 2..8 {
        fs::remove_file(mnt.join(format!("f{i}"))).unwrap();
    }
    write_synced(&mnt.join("f1"), &data(9)).unwrap();
    ok(&["umount", mnt.to_str().unwrap()]);
    // The deletes a barrier defers go at the next open.
    mount(&pool, &mnt);
    ok(&["umount", mnt.to_str().unwrap()]);
    let after = bytes_on_the_store(&prefix, 6);
    let live = (data(0).len() + data(9).len()) as u64 * 3 / 2;
    eprintln!("on the store: {full} bytes with 8 files, {after} after deleting 6 ({live} of live fragments)");
    assert!(
        after < full / 2 && after < live * 3 / 2 + (4 << 20),
        "{after} bytes on the store after deleting 6 of 8 files ({full} before, {live} live)"
    );
    mount(&pool, &mnt);
    assert!(fs::read(mnt.join("f0")).unwrap() == data(0));
    assert!(fs::read(mnt.join("f1")).unwrap() == data(9));
    ok(&["umount", mnt.to_str().unwrap()]);
}

#[test]
fn a_paused_writer_is_fenced_when_another_machine_takes_the_pool_over() {
    let root = tempfile::tempdir().unwrap();
    let (pool_a, pool_b) = (root.path().join("pool-a"), root.path().join("pool-b"));
    let prefix = object_pool(root.path(), &pool_a, "replicate:2", 0, 3);
    let (mnt_a, mnt_b) = (root.path().join("mnt-a"), root.path().join("mnt-b"));
    let pid_a = mount(&pool_a, &mnt_a);
    let before = pattern(300_000, 1);
    write_synced(&mnt_a.join("before"), &before).unwrap();

    // Machine A stops answering (paused, not dead); machine B takes the pool over.
    signal(pid_a, "STOP");
    ok(&["import", "--pool", pool_b.to_str().unwrap(), "--disk", &format!("{prefix}/disk0")]);
    mount(&pool_b, &mnt_b);
    let theirs = pattern(200_000, 2);
    write_synced(&mnt_b.join("theirs"), &theirs).unwrap();

    // A wakes up: its next commit is refused.
    signal(pid_a, "CONT");
    let error = write_synced(&mnt_a.join("mine"), &pattern(100_000, 3)).expect_err("a fenced writer commits nothing");
    assert_eq!(error.raw_os_error(), Some(libc::EROFS), "{error}");
    assert!(write_synced(&mnt_a.join("later"), b"x").is_err(), "a fenced writer keeps refusing");
    ok(&["umount", mnt_a.to_str().unwrap()]);

    // B goes on; what either acknowledged is there, A's late writes are not.
    let more = pattern(150_000, 4);
    write_synced(&mnt_b.join("more"), &more).unwrap();
    ok(&["umount", mnt_b.to_str().unwrap()]);
    mount(&pool_b, &mnt_b);
    assert_eq!(fs::read(mnt_b.join("before")).unwrap(), before);
    assert_eq!(fs::read(mnt_b.join("theirs")).unwrap(), theirs);
    assert_eq!(fs::read(mnt_b.join("more")).unwrap(), more);
    assert!(!mnt_b.join("mine").exists(), "the fenced writer's file must not appear");
    assert!(!mnt_b.join("later").exists(), "the fenced writer's file must not appear");
    ok(&["umount", mnt_b.to_str().unwrap()]);
    let health = ok(&["health", "--pool", pool_b.to_str().unwrap()]);
    assert!(health.contains("healthy"), "{health}");
}

/// `object_pool/overwriting_s3.py`: a minimal S3 endpoint that ignores `If-None-Match`
/// and overwrites; killed on drop.
struct OverwritingStore {
    child: std::process::Child,
    port: u16,
}

impl OverwritingStore {
    fn start(dir: &Path) -> OverwritingStore {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/object_pool/overwriting_s3.py");
        let port_file = dir.join("overwriting-store.port");
        let child = Command::new("python3").arg(script).arg(&port_file).spawn().unwrap();
        let mut store = OverwritingStore { child, port: 0 };
        for _ in 0..100 {
            if let Ok(text) = fs::read_to_string(&port_file) {
                store.port = text.trim().parse().unwrap();
                return store;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("the overwriting store did not start");
    }
}

impl Drop for OverwritingStore {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Environment variables a case sets for its `dfs`.
type Env = Vec<(&'static str, &'static str)>;

#[test]
fn bad_store_disks_are_refused_by_name_and_change_nothing() {
    let root = tempfile::tempdir().unwrap();
    let pool = root.path().join("pool");
    let prefix = object_pool(root.path(), &pool, "replicate:2", 0, 2);
    let pool = pool.to_str().unwrap();
    let config = fs::read_to_string(Path::new(pool).join("pool.ron")).unwrap();
    let other = root.path().join("other");
    ok(&["init", "--pool", other.to_str().unwrap()]);
    let other = other.to_str().unwrap();
    let cases: Vec<(Env, String, &str)> = vec![
        (vec![], format!("{prefix}/disk0"), "is a disk of another pool"),
        (vec![], format!("{prefix}/new"), "needs --capacity"),
        (vec![], "s3://Not_A_Bucket/x".to_string(), "is not an object store location"),
        (vec![], format!("s3://no-such-bucket-{}/x", std::process::id()), "does not exist"),
        (vec![("AWS_SECRET_ACCESS_KEY", "wrong-secret")], format!("{prefix}/new"), "rejected the credentials"),
        (vec![("AWS_ENDPOINT_URL", "http://127.0.0.1:1")], format!("{prefix}/new"), "cannot be reached"),
    ];
    for (env, disk, expected) in cases {
        let mut command = common::dfs();
        command.args(["add-disk", "--pool", other, "--disk", &disk]);
        if !expected.contains("--capacity") {
            command.args(["--capacity", "1GiB"]);
        }
        command.envs(env.iter().copied());
        let out = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{disk}: {stderr}");
        assert!(stderr.contains(expected) && stderr.contains("nothing was added"), "{disk}: {stderr}");
        assert!(!stderr.contains("wrong-secret"), "a secret was echoed: {stderr}");
    }
    // A store that takes the create-only header and overwrites anyway.
    let store = OverwritingStore::start(root.path());
    let out = common::dfs()
        .args(["add-disk", "--pool", other, "--disk", "s3://bucket/disk", "--capacity", "1GiB"])
        .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{}", store.port))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("accepted a second create-only write") && stderr.contains("nothing was added"), "{stderr}");
    let other_config = fs::read_to_string(Path::new(other).join("pool.ron")).unwrap();
    assert!(other_config.contains("disks: []"), "{other_config}");
    // Importing needs a disk of a pool, and a new pool directory.
    let stderr = fails(&["import", "--pool", &format!("{other}-2"), "--disk", &format!("{prefix}/none")]);
    assert!(stderr.contains("holds no DynamicFS disk label"), "{stderr}");
    let stderr = fails(&["import", "--pool", other, "--disk", &format!("{prefix}/disk1")]);
    assert!(stderr.contains("already holds a pool"), "{stderr}");
    assert!(!Path::new(&format!("{other}-2")).exists());
    assert_eq!(fs::read_to_string(Path::new(pool).join("pool.ron")).unwrap(), config);
}
