//! Bad input gets a clear error, exit code 1, and changes nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{fails, fragments_on, ok, run, Pool};

/// Everything a pool's disks and config hold (path and BLAKE3 of each file), to prove a
/// failed command changed nothing. Runs `ls` first so the journal is compacted, as every
/// open leaves it.
fn snapshot(pool: &Pool) -> Vec<(String, String)> {
    ok(&["ls", "--pool", pool.path()]);
    let mut out = Vec::new();
    let mut stack = vec![pool.root.path().to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.file_name().unwrap() != "lock" && !path.starts_with(pool.root.path().join("local")) {
                out.push((
                    path.display().to_string(),
                    blake3::hash(&std::fs::read(&path).unwrap()).to_hex().to_string(),
                ));
            }
        }
    }
    out.sort();
    out
}

/// Every stored fragment of the pool, by disk and name, with a hash of its bytes.
fn stored(pool: &Pool) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for disk in &pool.disks {
        for fragment in fragments_on(disk) {
            let hash = blake3::hash(&fragment.read().unwrap()).to_hex().to_string();
            out.push((format!("{}/{}", disk.display(), fragment.name), hash));
        }
    }
    out
}

fn local_file(pool: &Pool, bytes: usize) -> String {
    let dir = pool.root.path().join("local");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("file-{bytes}"));
    std::fs::write(&path, common::pattern(bytes, 3)).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn impossible_policies_are_refused_with_a_reason() {
    let root = tempfile::tempdir().unwrap();
    let pool = root.path().join("p");
    for (policy, reason) in [
        ("erasure:0+2", "K must be between 1 and 16"),
        ("replicate:0", "N must be between 1 and 8"),
        ("foo", "unknown scheme"),
        ("erasure:4+9", "M must be between 1 and 8"),
    ] {
        let out = run(&["init", "--pool", pool.to_str().unwrap(), "--policy", policy]);
        assert_eq!(out.status.code(), Some(2), "{policy}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(reason), "{policy}: {stderr}");
        assert!(!pool.exists(), "a refused init created the pool");
    }
}

#[test]
fn a_policy_wider_than_the_pool_fails_and_changes_nothing() {
    let pool = Pool::new("replicate:2", &[64; 5]);
    let file = local_file(&pool, 3 << 20);
    let before = snapshot(&pool);
    let error = fails(&["put", "--pool", pool.path(), &file, "/f", "--policy", "erasure:4+2"]);
    assert!(error.contains("erasure:4+2 needs 6 distinct disks") && error.contains("only 5"), "{error}");
    assert!(error.contains("ENOSPC"), "{error}");
    assert_eq!(snapshot(&pool), before);
}

#[test]
fn an_unknown_pool_is_named() {
    let error = fails(&["ls", "--pool", "/nonexistent/pool"]);
    assert!(error.contains("/nonexistent/pool") && error.contains("no such pool"), "{error}");
    let dir = tempfile::tempdir().unwrap();
    let error = fails(&["ls", "--pool", dir.path().to_str().unwrap()]);
    assert!(error.contains("is not a pool"), "{error}");
}

#[test]
fn bad_disk_paths_are_refused() {
    let pool = Pool::new("replicate:1", &[64]);
    let before = snapshot(&pool);
    let error = fails(&["add-disk", "--pool", pool.path(), "--disk", "/nonexistent/disk"]);
    assert!(error.contains("/nonexistent/disk"), "{error}");
    let error = fails(&["add-disk", "--pool", pool.path(), "--disk", pool.disks[0].to_str().unwrap()]);
    assert!(error.contains("already a disk of this pool"), "{error}");
    let file = local_file(&pool, 10);
    let error = fails(&["add-disk", "--pool", pool.path(), "--disk", &file]);
    assert!(error.contains("not a directory"), "{error}");
    assert_eq!(snapshot(&pool), before);

    let other = Pool::new("replicate:1", &[64]);
    let error = fails(&["add-disk", "--pool", other.path(), "--disk", pool.disks[0].to_str().unwrap()]);
    assert!(error.contains("another pool"), "{error}");
    // An invalid size is bad usage: exit 2, as the README says.
    for size in ["1KiB", "0", "-1"] {
        let out =
            run(&["add-disk", "--pool", pool.path(), "--disk", other.disks[0].to_str().unwrap(), "--capacity", size]);
        assert_eq!(out.status.code(), Some(2), "--capacity {size}");
    }
    let out =
        run(&["add-disk", "--pool", pool.path(), "--disk", other.disks[0].to_str().unwrap(), "--capacity", "1KiB"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("below the minimum disk capacity"));
}

#[test]
fn errors_name_their_cause() {
    let root = tempfile::tempdir().unwrap();
    // A pool path that is a file: ENOTDIR, not EIO.
    let file = root.path().join("afile");
    std::fs::write(&file, b"x").unwrap();
    let error = fails(&["init", "--pool", file.to_str().unwrap()]);
    assert!(error.contains("ENOTDIR"), "{error}");
    // Another user on a root-owned (owner-only) pool: EACCES, not "no pool.ron" (ENOENT).
    let pool = Pool::new("replicate:1", &[64]);
    let out = std::process::Command::new("runuser")
        .args(["-u", "tests", "--", env!("CARGO_BIN_EXE_dfs"), "ls", "--pool", pool.path()])
        .output()
        .expect("runuser runs (the tests run as root, with a user `tests`, as .ci/run sets up)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("EACCES") && stderr.contains("may not use it"), "{stderr}");
    // Another user unmounting it: EACCES (was "is a file still open there? (EBUSY)"), and
    // the mount stays.
    let mnt = pool.local("mnt");
    std::fs::create_dir(&mnt).unwrap();
    ok(&["mount", "--pool", pool.path(), "--mountpoint", mnt.to_str().unwrap()]);
    let out = std::process::Command::new("runuser")
        .args(["-u", "tests", "--", env!("CARGO_BIN_EXE_dfs"), "umount", mnt.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let still = std::fs::read_to_string("/proc/mounts").unwrap().contains(mnt.to_str().unwrap());
    ok(&["umount", mnt.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("EACCES") && !stderr.contains("EBUSY"), "{stderr}");
    assert!(still, "another user's umount took the mount away");
}

#[test]
fn a_second_process_cannot_open_a_pool_in_use() {
    let pool = Pool::new("replicate:1", &[64]);
    let lock = std::fs::File::open(pool.root.path().join("pool/lock")).unwrap();
    lock.try_lock().unwrap();
    let error = fails(&["ls", "--pool", pool.path()]);
    assert!(error.contains("in use by another process") && error.contains("EBUSY"), "{error}");
    lock.unlock().unwrap();
    ok(&["ls", "--pool", pool.path()]);
}

#[test]
fn a_full_disk_fails_the_put_and_changes_nothing() {
    let pool = Pool::new("replicate:1", &[16, 16]);
    let small = local_file(&pool, 1 << 20);
    ok(&["put", "--pool", pool.path(), &small, "/small"]);
    let before = stored(&pool);
    let big = local_file(&pool, 40 << 20);
    let error = fails(&["put", "--pool", pool.path(), &big, "/big"]);
    assert!(error.contains("ENOSPC"), "{error}");
    let listing: serde_json::Value = serde_json::from_str(&ok(&["ls", "--pool", pool.path(), "--json"])).unwrap();
    assert_eq!(listing.as_array().unwrap().len(), 1, "the failed put is visible: {listing}");
    // The metadata journal may have been compacted by the reopen; the data must match:
    // the same fragments with the same bytes (a segment may have grown by what the
    // failed put appended and punched again).
    assert_eq!(stored(&pool), before);
}

#[test]
fn paths_that_do_not_exist_are_named() {
    let pool = Pool::new("replicate:1", &[64]);
    let out = pool.local("x");
    let error = fails(&["get", "--pool", pool.path(), "/missing", out.to_str().unwrap()]);
    assert!(error.contains("/missing") && error.contains("ENOENT"), "{error}");
    let error = fails(&["rm", "--pool", pool.path(), "/missing"]);
    assert!(error.contains("missing"), "{error}");
    let error = fails(&["mkdir", "--pool", pool.path(), "/a/b"]);
    assert!(error.contains("ENOENT"), "{error}");
    let error = fails(&["put", "--pool", pool.path(), "/nonexistent-local", "/x"]);
    assert!(error.contains("/nonexistent-local"), "{error}");
}

#[test]
fn adding_several_disks_is_all_or_nothing() {
    let pool = Pool::new("replicate:1", &[64]);
    let good = pool.root.path().join("good");
    std::fs::create_dir(&good).unwrap();
    let missing = pool.root.path().join("nonexistent");
    let before = pool.json("list-disks");
    let error = fails(&[
        "add-disk",
        "--pool",
        pool.path(),
        "--disk",
        good.to_str().unwrap(),
        "--disk",
        missing.to_str().unwrap(),
    ]);
    assert!(
        error.contains("nonexistent") && error.contains("ENOENT") && error.contains("nothing was added"),
        "{error}"
    );
    assert_eq!(pool.json("list-disks"), before, "a refused add-disk added a disk");
    assert!(std::fs::read_dir(&good).unwrap().next().is_none(), "the good disk was labelled anyway");
    let error =
        fails(&["add-disk", "--pool", pool.path(), "--disk", good.to_str().unwrap(), "--disk", good.to_str().unwrap()]);
    assert!(error.contains("given twice") && error.contains("nothing was added"), "{error}");
    assert_eq!(pool.json("list-disks"), before);
    ok(&["add-disk", "--pool", pool.path(), "--disk", good.to_str().unwrap(), "--capacity", "64MiB"]);
    assert_eq!(pool.json("list-disks").as_array().unwrap().len(), 2);
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let root = tempfile::tempdir().unwrap();
    let pool = root.path().join("p");
    // The reader is gone before `dfs init` prints: the write meets a broken pipe.
    let script = format!(
        "{} init --pool {} | (exec 0<&-; sleep 0.3); echo \"status ${{PIPESTATUS[0]}}\" >&2",
        env!("CARGO_BIN_EXE_dfs"),
        pool.display()
    );
    let out = std::process::Command::new("bash").args(["-c", &script]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("status 141") || stderr.contains("status 0"), "{stderr}");
    assert!(pool.join("pool.ron").exists(), "the command itself ran");
}

/// A disk directory the pool's owner may not use (mode 000) is named as a permission
/// problem (EACCES), not an I/O error (issue 15, item 6).
#[test]
fn a_disk_directory_this_user_may_not_use_is_named_as_eacces() {
    let root = tempfile::tempdir().unwrap();
    let base = root.path();
    let as_tests = |args: &[&str]| {
        std::process::Command::new("runuser")
            .args(["-u", "tests", "--", env!("CARGO_BIN_EXE_dfs")])
            .args(args)
            .current_dir(base)
            .output()
            .expect("runuser runs (the tests run as root, with a user `tests`, as .ci/run sets up)")
    };
    for disk in ["d1", "d2"] {
        std::fs::create_dir(base.join(disk)).unwrap();
    }
    let chown = std::process::Command::new("chown").args(["-R", "tests:tests"]).arg(base).status().unwrap();
    assert!(chown.success());
    assert!(as_tests(&["init", "--pool", "pool"]).status.success());
    let added = as_tests(&["add-disk", "--pool", "pool", "--disk", "d1", "--disk", "d2", "--capacity", "64MiB"]);
    assert!(added.status.success(), "{added:?}");
    std::fs::set_permissions(base.join("d2"), std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
    let listed = as_tests(&["list-disks", "--pool", "pool"]);
    let stdout = String::from_utf8_lossy(&listed.stdout);
    assert!(stdout.contains("d2 is offline") && stdout.contains("permission denied (EACCES)"), "{stdout}");
    assert!(!stdout.contains("I/O error"), "{stdout}");
}
