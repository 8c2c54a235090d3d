//! The POSIX surface judged from outside, as root (CI runs as root; these fail loudly,
//! never skip, without FUSE, root or the tools they drive):
//! - every operation of `posix/observe.py` answers on a mount exactly as on a plain
//!   directory of the host (ext4): special files, extended attributes, ACLs, and the
//!   edges (names, setgid and sticky directories, sparse files, fallocate, SEEK_DATA,
//!   copy_file_range, utimensat, which times each operation changes);
//! - the independent suite pjdfstest passes with no failure;
//! - an fstab line mounts through the helper, `umount` unmounts, and a killed daemon's
//!   dead mountpoint recovers with one `mount` or `dfs mount`;
//! - `tar` and `rsync -aHAX` round-trip a tree of every file kind through the mount.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{ok, Pool};

/// A pool mounted with `allow_other` (so the user nobody can reach it), and a plain
/// directory of the host beside it, both reachable by every user.
struct Bench {
    pool: Pool,
    mount: PathBuf,
    host: PathBuf,
}

/// A scratch directory for root alone, on another filesystem than the mount.
fn scratch() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

/// Lets every user through `dir` (a new temporary directory is 0700); its parents must
/// already let them (`/tmp` does).
fn open_to_all(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(dir).unwrap().permissions().mode();
    fs::set_permissions(dir, fs::Permissions::from_mode(mode | 0o055)).unwrap();
    for parent in dir.ancestors().skip(1) {
        let mode = fs::metadata(parent).unwrap().permissions().mode();
        assert!(mode & 0o001 != 0, "{} must let other users through for the tests as nobody", parent.display());
    }
}

fn assert_root() {
    let out = Command::new("id").arg("-u").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "0",
        "the POSIX tests run as root (they mount, mknod and switch users); CI does"
    );
}

impl Bench {
    fn new() -> Bench {
        Bench::with_options("allow_other")
    }

    /// A bench whose mount has the mount options `options`.
    fn with_options(options: &str) -> Bench {
        assert_root();
        let pool = Pool::new("erasure:2+1", &[256, 256, 256]);
        open_to_all(pool.root.path());
        let mount = pool.root.path().join("mnt");
        fs::create_dir(&mount).unwrap();
        ok(&["mount", "--pool", pool.path(), "--mountpoint", mount.to_str().unwrap(), "-o", options]);
        let host = pool.root.path().join("host");
        fs::create_dir(&host).unwrap();
        Bench { pool, mount, host }
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = common::run(&["umount", self.mount.to_str().unwrap()]);
    }
}

fn run(command: &mut Command) -> Output {
    let out = command.output().unwrap_or_else(|e| panic!("{command:?} cannot start: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    out
}

/// Runs one section of observe.py in a fresh directory under `base`.
fn observe(base: &Path, section: &str) -> serde_json::Value {
    let dir = base.join(section);
    fs::create_dir(&dir).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/posix/observe.py");
    let out = run(Command::new("python3").args([script, dir.to_str().unwrap(), section]));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Runs `section` on the host and on the mount; every answer must be the same.
fn same_answers(section: &str) -> serde_json::Value {
    same_answers_on(section, Bench::new())
}

fn same_answers_on(section: &str, bench: Bench) -> serde_json::Value {
    let host = observe(&bench.host, section);
    let mounted = observe(&bench.mount, section);
    let host = host.as_object().unwrap();
    let mounted = mounted.as_object().unwrap();
    let mut differences = Vec::new();
    for key in host.keys().chain(mounted.keys()) {
        if host.get(key) != mounted.get(key) {
            differences.push(format!("{key}: ext4 {:?}, DynamicFS {:?}", host.get(key), mounted.get(key)));
        }
    }
    assert!(differences.is_empty(), "DynamicFS answers differently from ext4:\n{}", differences.join("\n"));
    drop(bench);
    serde_json::Value::Object(mounted.clone())
}

#[test]
fn special_files_answer_as_on_ext4() {
    let answers = same_answers("special_files");
    // Both answering the same could still mean both failing: pin what matters.
    assert_eq!(answers["fifo_io"], "through the fifo");
    assert_eq!(answers["socket"], "through the socket");
    assert_eq!(answers["stat_chr"]["type"], libc::S_IFCHR);
    assert_eq!(answers["stat_chr"]["rdev"], serde_json::json!([1, 3]));
    assert_eq!(answers["stat_blk"]["rdev"], serde_json::json!([7, 129]));
    assert_eq!(answers["stat_sock"]["type"], libc::S_IFSOCK);
    assert_eq!(answers["nlink_fifo"], 2);
    assert_eq!(answers["mknod_dir"], "EPERM");
    assert_eq!(answers["setxattr_user_on_fifo"], "EPERM");
    assert_eq!(answers["getxattr_trusted_on_fifo"], "1");
    assert_eq!(answers["after_blk"]["uid"], 1234);
}

#[test]
fn extended_attributes_answer_as_on_ext4() {
    let answers = same_answers("xattrs");
    assert_eq!(answers["get_replaced"], "green");
    assert_eq!(answers["create_existing"], "EEXIST");
    assert_eq!(answers["replace_missing"], "ENODATA");
    assert_eq!(answers["get_into_small_buffer"], "ERANGE");
    assert_eq!(answers["name_too_long"], "ERANGE");
    assert_eq!(answers["value_too_large"], "E2BIG");
    assert_eq!(answers["unknown_namespace"], "ENOTSUP"); // Python's name for EOPNOTSUPP
    assert_eq!(answers["symlink_user_xattr"], "EPERM");
    assert_eq!(answers["get_trusted_as_nobody"], "ENODATA");
    assert_eq!(answers["ctime_on_set"], serde_json::json!([false, false, true]));
    let listed: Vec<&str> = answers["list_f"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(listed.contains(&"security.capability") && listed.contains(&"trusted.secret"), "{listed:?}");
    assert!(!listed.contains(&"user.dynamicfs.policy"), "the policy attribute is not listed: {listed:?}");
}

#[test]
fn acls_are_enforced_and_inherited_as_on_ext4() {
    let answers = same_answers("acls");
    assert_eq!(answers["nobody_reads_600"], "EACCES");
    assert_eq!(answers["nobody_reads_with_acl"], "secret");
    assert_eq!(answers["nobody_masked_out"], "EACCES");
    assert_eq!(answers["mode_shows_mask"], 0o640);
    assert_eq!(answers["child_mode_d/new"], 0o660, "a default ACL, not the umask, decides");
    assert_eq!(answers["nobody_in_default_dir"], "n");
    assert_eq!(answers["after_remove_default"], 0o755, "without a default ACL the umask applies again");
    let inherited = answers["child_acl_d/sub"].to_string();
    assert!(inherited.contains("default:user:65534:rwx"), "{inherited}");
}

#[test]
fn edges_answer_as_on_ext4() {
    let answers = same_answers("edges");
    assert_eq!(answers["name_256"], "ENAMETOOLONG");
    assert_eq!(answers["path_too_long"], "ENAMETOOLONG");
    assert_eq!(answers["setgid_subdir"]["gid"], 5678);
    assert_eq!(answers["sticky_unlink_others"], "EPERM");
    assert_eq!(answers["blocks_dense"], 2048);
    assert_eq!(answers["seek_sparse"][0], 5 << 20);
    assert_eq!(answers["copy_file_range"], serde_json::json!([2096152, 0, true]));
    assert_eq!(answers["utime_now_mtime"], serde_json::json!([true, false]));
    assert_eq!(answers["t_read_after_write"], serde_json::json!([true, false, false]));
    assert_eq!(answers["t_chmod"], serde_json::json!([false, false, true]));
    assert_eq!(answers["statfs_namemax"], 255);
    assert_eq!(answers["statfs_sane"], serde_json::json!([true, true, true, true]));
}

/// Set-user-ID and set-group-ID bits are cleared by the same calls, for the same callers,
/// as on ext4 (the kernel leaves it to the filesystem: `FUSE_HANDLE_KILLPRIV_V2`).
#[test]
fn privileges_are_dropped_as_on_ext4() {
    let answers = same_answers("privileges");
    assert_eq!(answers["write_nobody_6777"], "0o777");
    assert_eq!(answers["write_nobody_6777_fresh"], "0o777");
    assert_eq!(answers["write_root_6777"], "0o6777");
    // A write-only descriptor's writes go direct, past the page cache.
    assert_eq!(answers["write_only_nobody_6777"], "0o777");
    assert_eq!(answers["write_only_root_6777"], "0o6777");
    assert_eq!(answers["write_only_nobody_2767"], "0o767");
    assert_eq!(answers["truncate_nobody_6777"], "0o777");
    assert_eq!(answers["open_trunc_nobody_6777"], "0o777");
    assert_eq!(answers["fallocate_nobody_6777"], "0o777");
    assert_eq!(answers["copy_file_range_nobody_6777"], "0o777");
    assert_eq!(answers["chown_unchanged_nobody_6777"], "0o777");
    assert_eq!(answers["chown_unchanged_root_6777"], "0o777");
    assert_eq!(answers["chown_root_6755"], "0o755");
    assert_eq!(answers["chown_root_2767"], "0o2767");
    assert_eq!(answers["chown_dir"], "0o6777");
}

/// A write-only descriptor's writes (served with direct I/O, past the page cache) are
/// seen at once by a reader holding the file's pages, by a shared mapping holding a dirty
/// page they overlap, and after an append, as on ext4.
#[test]
fn write_only_descriptors_stay_coherent_with_cached_readers_as_on_ext4() {
    let answers = same_answers("coherence");
    assert_eq!(answers["reader_cached"], 16384);
    assert_eq!(answers["mapped_after_write"], "aammddddaaaaWXYZaa");
    assert_eq!(answers["reader_after_write"], "aammddddaaaaWXYZaa");
    assert_eq!(answers["reader_size_after_append"], 16388);
    assert_eq!(answers["reader_tail"], "aaaatail");
    assert_eq!(answers["fresh"], "aammddddaaaaWXYZaaaaaatail");
    assert_eq!(answers["fresh_len"], 16388);
}

/// A read-write descriptor (served with direct I/O, as a database's: `open_flags`) reads
/// its own unaligned writes across page boundaries, nothing past the end, the dirty
/// pages of its own shared mapping; its writes reach that mapping, a reader holding the
/// file's pages, an append and a truncate, and advance mtime and ctime, as on ext4.
#[test]
fn read_write_descriptors_stay_coherent_as_on_ext4() {
    check_read_write(same_answers("read_write"));
}

/// The same under the kernel's writeback cache, where a read-write descriptor keeps the
/// page cache.
#[test]
fn read_write_descriptors_stay_coherent_under_the_writeback_cache() {
    check_read_write(same_answers_on("read_write", Bench::with_options("writeback_cache")));
}

fn check_read_write(answers: serde_json::Value) {
    assert_eq!(answers["reader_cached"], 16384);
    assert_eq!(answers["own_write"], "bbbbbbbb");
    assert_eq!(answers["reader_sees_write"], "bbbbbbbb");
    assert_eq!(answers["read_past_end"], 0);
    assert_eq!(answers["size_after_growing_write"], serde_json::json!([16388, 16388]));
    assert_eq!(answers["own_read_sees_mapping"], "aaMAPDaa");
    assert_eq!(answers["mapping_sees_own_write"], "aaMAWRTE");
    assert_eq!(answers["reader_sees_both"], "aaMAWRTE");
    assert_eq!(answers["write_times"], serde_json::json!([false, true, true]));
    assert_eq!(answers["append_read_back"], "growtail");
    assert_eq!(answers["after_truncate"], serde_json::json!([12000, 3808]));
    assert_eq!(answers["fresh"], serde_json::json!([12000, "hhhhthhh", "hhhhaaaabbbb", "aaMAWRTE"]));
}

/// Without the writeback cache a read-write descriptor's writes go past the page cache
/// (one copy, no split at page boundaries, no `security.capability` lookup first): once
/// written, none of the file's pages is in the page cache (`mincore` of a mapping that
/// never touched them), where a cached write would have left them there.
#[test]
fn read_write_descriptors_write_past_the_page_cache() {
    let bench = Bench::new();
    let file = bench.mount.join("rw");
    let script = format!(
        "import ctypes, mmap, os\n\
         fd = os.open({0:?}, os.O_RDWR | os.O_CREAT, 0o644)\n\
         os.pwrite(fd, b'x' * 65536, 0)\n\
         m = mmap.mmap(fd, 65536)\n\
         libc = ctypes.CDLL(None, use_errno=True)\n\
         vec = (ctypes.c_ubyte * 16)()\n\
         addr = ctypes.addressof(ctypes.c_char.from_buffer(m))\n\
         assert libc.mincore(ctypes.c_void_p(addr), ctypes.c_size_t(65536), vec) == 0, ctypes.get_errno()\n\
         print(sum(b & 1 for b in vec), bytes(m[65530:]).decode())\n",
        file.to_str().unwrap()
    );
    let out = run(Command::new("python3").args(["-c", &script]));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0 xxxxxx");
}

/// The same under the kernel's writeback cache, where the kernel sends what these calls
/// change differently (a `chown` to the same ids arrives as a ctime).
#[test]
fn privileges_are_dropped_as_on_ext4_under_the_writeback_cache() {
    let answers = same_answers_on("privileges", Bench::with_options("allow_other,writeback_cache"));
    assert_eq!(answers["chown_unchanged_root_6777"], "0o777");
    assert_eq!(answers["write_root_6777"], "0o6777");
    assert_eq!(answers["write_nobody_6777"], "0o777");
}

/// A read-only descriptor on a file of several extents (served past the page cache:
/// `direct_reads`) sees a shared mapping's dirty page, another descriptor's write, a
/// truncate and a growing write at once, reads a few bytes at a time, and can itself be
/// mapped shared, as on ext4.
#[test]
fn read_only_descriptors_of_large_files_stay_coherent_as_on_ext4() {
    check_direct_reads(same_answers("direct_reads"));
}

/// The same under the kernel's writeback cache, whose dirty pages the kernel writes back
/// before a direct read.
#[test]
fn read_only_descriptors_of_large_files_stay_coherent_under_the_writeback_cache() {
    check_direct_reads(same_answers_on("direct_reads", Bench::with_options("writeback_cache")));
}

fn check_direct_reads(answers: serde_json::Value) {
    assert_eq!(answers["reader_sees_dirty_mapping"], "mmap");
    assert_eq!(answers["reader_small_reads"], 64 * 4096);
    assert_eq!(answers["reader_after_write"], "fcfd726477720203");
    assert_eq!(answers["read_only_map"], "rdwr");
    assert_eq!(answers["read_only_map_sees_mapping"], "MAPD");
    assert_eq!(answers["reader_after_truncate"], serde_json::json!([2 << 20, 100]));
    assert_eq!(answers["reader_after_grow"], serde_json::json!([5 << 20, "0000000067726f77"]));
    assert_eq!(answers["fresh"], serde_json::json!([5 << 20, "MAPD", "mmap"]));
}

/// Times beyond ext4's range (1901–2446) are kept whole, as on btrfs and XFS.
#[test]
fn timestamps_outside_ext4s_range_are_kept() {
    let bench = Bench::new();
    let file = bench.mount.join("old");
    fs::write(&file, b"x").unwrap();
    let script = format!(
        "import os; os.utime({0:?}, ns=(-11676096000000000000, 16725225600123456789)); st=os.lstat({0:?}); print(st.st_atime_ns, st.st_mtime_ns)",
        file.to_str().unwrap()
    );
    let out = run(Command::new("python3").args(["-c", &script]));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "-11676096000000000000 16725225600123456789");
}

/// `Summary: F failed, S skipped, P passed, …` → (failed, passed).
fn pjdfstest_summary(output: &str) -> (u32, u32) {
    let line =
        output.lines().rev().find(|l| l.starts_with("Summary:")).unwrap_or_else(|| {
            panic!("pjdfstest printed no summary:\n{}", &output[output.len().saturating_sub(3000)..])
        });
    let count = |what: &str| -> u32 {
        let before = line.split(what).next().unwrap();
        before.rsplit(|c: char| !c.is_ascii_digit()).find(|s| !s.is_empty()).unwrap().parse().unwrap()
    };
    (count(" failed"), count(" passed"))
}

/// The Rust pjdfstest 0.2.2 (`cargo install pjdfstest --version 0.2.2`; `.ci/run`
/// installs it and its second user, `tests`). Two runs: everything but the read-only
/// cases, then those alone with remounts allowed — run together, an earlier case
/// (`posix_fallocate::affected_only_create_flags`) leaks two descriptors open for
/// writing, so no filesystem could be remounted read-only after it.
#[test]
fn pjdfstest_passes_with_no_failure() {
    let bench = Bench::new();
    let config_dir = scratch();
    let secondary = scratch();
    let configs = [("all.toml", false), ("erofs.toml", true)];
    let mut passed_total = 0;
    for (name, remount) in configs {
        let config = config_dir.path().join(name);
        let base = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/posix/pjdfstest.toml")).unwrap();
        fs::write(&config, base.replace("allow_remount = false", &format!("allow_remount = {remount}"))).unwrap();
        let dir = bench.mount.join(name.trim_end_matches(".toml"));
        fs::create_dir(&dir).unwrap();
        let mut command = Command::new("pjdfstest");
        command.args(["-c", config.to_str().unwrap(), "-p", dir.to_str().unwrap()]);
        command.args(["-s", secondary.path().to_str().unwrap()]).current_dir(&dir);
        if remount {
            command.arg("erofs");
        }
        let out = command.output().unwrap_or_else(|e| {
            panic!("pjdfstest cannot start ({e}); install it: cargo install pjdfstest --version 0.2.2")
        });
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let (failed, passed) = pjdfstest_summary(&text);
        let failures: Vec<&str> = text.lines().filter(|l| l.contains("FAILED")).collect();
        assert_eq!(
            failed,
            0,
            "pjdfstest ({name}) failed:\n{}\n{}",
            failures.join("\n"),
            &text[..text.len().min(20000)]
        );
        passed_total += passed;
    }
    // ext4 on the CI machine passes 385 of the 398 cases (13 need remounts, which a
    // root filesystem cannot do); the mount passes them too, and the remount cases.
    assert!(passed_total >= 385, "only {passed_total} pjdfstest cases passed");
    eprintln!("pjdfstest: {passed_total} passed, 0 failed");
}

fn is_mounted_as_dynamicfs(mountpoint: &Path, pool: &Path) -> bool {
    fs::read_to_string("/proc/self/mounts").unwrap().lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields[1] == mountpoint.to_str().unwrap()
            && fields[2] == "fuse.dynamicfs"
            && fields[0] == fs::canonicalize(pool).unwrap().to_str().unwrap()
    })
}

fn daemon_pid(pool: &Path) -> i32 {
    let out = run(Command::new("pgrep").args(["-f", &format!("mount --pool {}", pool.display())]));
    String::from_utf8_lossy(&out.stdout).lines().next().unwrap().trim().parse().unwrap()
}

/// SIGKILLs the pool's daemon and waits until it is gone and its pool lock with it (a
/// loaded machine can take a while to tear down a dying process).
fn kill_daemon(pool: &Path) {
    let pid = daemon_pid(pool);
    run(Command::new("kill").args(["-9", &pid.to_string()]));
    common::eventually("the killed daemon to exit", || !Path::new(&format!("/proc/{pid}")).exists());
    let lock = pool.join("lock");
    common::eventually("the killed daemon's pool lock to be released", || {
        Command::new("flock").args(["-n", lock.to_str().unwrap(), "true"]).status().unwrap().success()
    });
}

fn is_dead(mountpoint: &Path) -> bool {
    fs::metadata(mountpoint).is_err_and(|e| e.raw_os_error() == Some(libc::ENOTCONN))
}

#[test]
fn an_fstab_line_mounts_umount_unmounts_and_a_dead_mount_recovers() {
    assert_root();
    // The helper mount(8) runs for type fuse.dynamicfs: a link to the dfs under test.
    ok(&["install-mount-helper"]);
    let pool = Pool::new("replicate:2", &[128, 128, 128]);
    let pool_dir = pool.root.path().join("pool");
    let mountpoint = pool.root.path().join("mnt");
    fs::create_dir(&mountpoint).unwrap();
    let fstab = pool.root.path().join("fstab");
    // The README's line, with this test's paths.
    fs::write(
        &fstab,
        format!(
            "{} {} fuse.dynamicfs allow_other,_netdev,nofail,x-systemd.requires-mounts-for={} 0 0\n",
            pool_dir.display(),
            mountpoint.display(),
            pool.disks[0].display()
        ),
    )
    .unwrap();
    let mount = || run(Command::new("mount").args(["-T", fstab.to_str().unwrap(), mountpoint.to_str().unwrap()]));
    mount();
    assert!(is_mounted_as_dynamicfs(&mountpoint, &pool_dir), "mount shows type fuse.dynamicfs, source the pool");
    let data = common::pattern(200_000, 3);
    fs::write(mountpoint.join("kept"), &data).unwrap();
    // Remount read-only and back, as `mount -o remount` does it.
    run(Command::new("mount").args(["-o", "remount,ro", mountpoint.to_str().unwrap()]));
    let error = fs::write(mountpoint.join("refused"), b"x").unwrap_err();
    assert_eq!(error.raw_os_error(), Some(libc::EROFS));
    run(Command::new("mount").args(["-o", "remount,rw", mountpoint.to_str().unwrap()]));
    fs::write(mountpoint.join("after"), b"writable again").unwrap();
    run(Command::new("umount").arg(&mountpoint));
    assert!(!is_mounted_as_dynamicfs(&mountpoint, &pool_dir));
    // umount let the daemon finish: once it has let go, the pool opens here with the files.
    let lock = pool_dir.join("lock");
    common::eventually("the daemon to release the pool", || {
        Command::new("flock").args(["-n", lock.to_str().unwrap(), "true"]).status().unwrap().success()
    });
    let back = pool.local("back");
    ok(&["get", "--pool", pool.path(), "/kept", back.to_str().unwrap()]);
    assert_eq!(fs::read(&back).unwrap(), data);
    // A `mount` right after a plain `umount` waits for the finishing daemon, not EBUSY.
    mount();
    run(Command::new("umount").arg(&mountpoint));

    // A reboot-like sequence: the daemon dies, the mountpoint is dead; one `mount`
    // brings it back.
    mount();
    fs::File::create(mountpoint.join("synced")).unwrap().sync_all().unwrap();
    kill_daemon(&pool_dir);
    assert!(is_dead(&mountpoint), "a killed daemon leaves ENOTCONN");
    mount();
    assert!(mountpoint.join("synced").exists());
    assert_eq!(fs::read(mountpoint.join("kept")).unwrap(), data);
    // The same with `dfs mount`.
    kill_daemon(&pool_dir);
    assert!(is_dead(&mountpoint));
    let out = common::run(&["mount", "--pool", pool.path(), "--mountpoint", mountpoint.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Transport endpoint is not connected"),
        "it says what happened"
    );
    assert_eq!(fs::read(mountpoint.join("after")).unwrap(), b"writable again");
    ok(&["umount", mountpoint.to_str().unwrap()]);
    assert!(!is_mounted_as_dynamicfs(&mountpoint, &pool_dir));
}

#[test]
fn the_mount_helper_refuses_unknown_options_and_changes_nothing() {
    assert_root();
    ok(&["install-mount-helper"]);
    let pool = Pool::new("replicate:1", &[64]);
    let mountpoint = pool.root.path().join("mnt");
    fs::create_dir(&mountpoint).unwrap();
    let out = Command::new("mount")
        .args(["-t", "fuse.dynamicfs", "-o", "frobnicate", pool.path(), mountpoint.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(error.contains("unknown mount option 'frobnicate'"), "{error}");
    assert!(!is_mounted_as_dynamicfs(&mountpoint, &pool.root.path().join("pool")));
}

/// Builds, under `root`, a tree of every kind of file: FIFOs, a socket, device nodes,
/// hard links, symlinks, ACLs (access and default), xattrs (user, trusted, security,
/// a file capability), a sparse file, odd modes and owners.
fn build_tree(root: &Path) {
    let script = r#"
import os, socket, stat, subprocess, sys
r = sys.argv[1]
p = lambda n: os.path.join(r, n)
os.umask(0)
os.makedirs(p("dir/sub"), 0o755)
with open(p("plain"), "wb") as f: f.write(os.urandom(300000))
os.link(p("plain"), p("dir/hardlink"))
os.symlink("../plain", p("dir/symlink"))
os.mkfifo(p("fifo"), 0o640)
os.link(p("fifo"), p("dir/fifo_link"))
os.mknod(p("chr"), 0o600 | stat.S_IFCHR, os.makedev(1, 7))
os.mknod(p("blk"), 0o660 | stat.S_IFBLK, os.makedev(8, 17))
s = socket.socket(socket.AF_UNIX); s.bind(p("sock")); s.close()
with open(p("sparse"), "wb") as f:
    f.truncate(64 << 20); f.seek(7 << 20); f.write(b"island" * 1000); f.seek(40 << 20); f.write(b"far")
os.setxattr(p("plain"), "user.note", b"kept")
os.setxattr(p("plain"), "trusted.t", b"root's")
os.setxattr(p("dir"), "user.dirnote", b"d")
os.setxattr(p("plain"), "security.capability", (0x02000001).to_bytes(4, "little") + (1 << 13).to_bytes(4, "little") + bytes(12))
os.chown(p("dir/sub"), 1234, 5678)
os.chmod(p("dir/sub"), 0o2750)
os.chown(p("chr"), 42, 43)
subprocess.run(["setfacl", "-m", "u:65534:rw,g:65534:r", p("plain")], check=True)
subprocess.run(["setfacl", "-d", "-m", "u:65534:rwx", p("dir")], check=True)
with open(p("dir/inherits"), "w") as f: f.write("x")
os.utime(p("fifo"), ns=(1_500_000_000_000_000_000, 1_500_000_000_000_000_000))
# Every time in an earlier second: rsync leaves a copy's time alone when the seconds
# match, so times of this second would not test that the copy keeps them.
for dirpath, dirs, files in os.walk(r, topdown=False):
    for name in dirs + files:
        if name != "fifo":
            os.utime(os.path.join(dirpath, name), ns=(1_600_000_000_123_456_789, 1_600_000_000_987_654_321), follow_symlinks=False)
"#;
    run(Command::new("python3").args(["-c", script, root.to_str().unwrap()]));
}

/// Everything a faithful copy keeps, per path: type, mode, owner, device number,
/// link count, size, content hash, data map (SEEK_DATA/SEEK_HOLE), symlink target,
/// every xattr (ACLs included) and mtime; hard links as groups of names.
fn describe_tree(root: &Path) -> String {
    let script = r#"
import hashlib, json, os, stat, sys
r = sys.argv[1]
out = {}
inodes = {}
for dirpath, dirs, files in os.walk(r):
    dirs.sort()
    for name in sorted(dirs + files):
        path = os.path.join(dirpath, name)
        rel = os.path.relpath(path, r)
        st = os.lstat(path)
        entry = {"mode": oct(st.st_mode), "uid": st.st_uid, "gid": st.st_gid, "nlink": st.st_nlink,
                 "rdev": [os.major(st.st_rdev), os.minor(st.st_rdev)],
                 "xattrs": {} if stat.S_ISLNK(st.st_mode) else
                     {k: os.getxattr(path, k).hex() for k in sorted(os.listxattr(path))}}
        if not stat.S_ISDIR(st.st_mode):
            entry["mtime_ns"] = st.st_mtime_ns
        if stat.S_ISREG(st.st_mode):
            entry["size"] = st.st_size
            with open(path, "rb") as f:
                entry["sha256"] = hashlib.sha256(f.read()).hexdigest()
            fd = os.open(path, os.O_RDONLY)
            data, offset = [], 0
            while offset < st.st_size:
                try:
                    start = os.lseek(fd, offset, os.SEEK_DATA)
                except OSError:
                    break
                end = os.lseek(fd, start, os.SEEK_HOLE)
                data.append([start >> 20, -(-end >> 20)])
                offset = end
            os.close(fd)
            entry["data_mib"] = data
        if stat.S_ISLNK(st.st_mode):
            entry["target"] = os.readlink(path)
        inodes.setdefault(st.st_ino, []).append(rel)
        out[rel] = entry
out["hardlinks"] = sorted(sorted(v) for v in inodes.values() if len(v) > 1)
print(json.dumps(out, indent=1, sort_keys=True))
"#;
    let out = run(Command::new("python3").args(["-c", script, root.to_str().unwrap()]));
    String::from_utf8(out.stdout).unwrap()
}

fn assert_same_tree(expected: &Path, actual: &Path, what: &str) {
    let parse = |text: String| -> serde_json::Map<String, serde_json::Value> {
        serde_json::from_str::<serde_json::Value>(&text).unwrap().as_object().unwrap().clone()
    };
    let (expected, actual) = (parse(describe_tree(expected)), parse(describe_tree(actual)));
    let differences: Vec<String> = expected
        .keys()
        .chain(actual.keys())
        .filter(|path| expected.get(*path) != actual.get(*path))
        .map(|path| format!("{path}:\n  expected {:?}\n  actual   {:?}", expected.get(path), actual.get(path)))
        .collect();
    assert!(differences.is_empty(), "{what} differs:\n{}", differences.join("\n"));
}

fn tar_copy(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    let flags = "--xattrs --xattrs-include=* --acls --sparse --numeric-owner";
    let command = format!(
        "tar {flags} -C '{}' -cf - . 2>/dev/null | tar {flags} --same-owner -p -C '{}' -xf -",
        from.display(),
        to.display()
    );
    run(Command::new("sh").args(["-c", &command]));
}

fn rsync_copy(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    run(Command::new("rsync").args(["-aHAX", "--sparse", "--numeric-ids"]).arg(format!("{}/", from.display())).arg(to));
}

#[test]
fn tar_and_rsync_round_trip_every_kind_of_file_through_the_mount() {
    let bench = Bench::new();
    let source = bench.host.join("source");
    fs::create_dir(&source).unwrap();
    build_tree(&source);
    // rsync copies everything, sockets included: into the mount and back out, and each
    // copy is the source.
    rsync_copy(&source, &bench.mount.join("rsync"));
    assert_same_tree(&source, &bench.mount.join("rsync"), "rsync -aHAX into the mount");
    rsync_copy(&bench.mount.join("rsync"), &bench.host.join("rsync_back"));
    assert_same_tree(&source, &bench.host.join("rsync_back"), "rsync -aHAX out of the mount");
    // tar leaves sockets out by design: a round trip through the mount must equal the
    // same round trip on ext4 alone.
    tar_copy(&source, &bench.host.join("tar_on_ext4"));
    tar_copy(&source, &bench.mount.join("tar"));
    assert_same_tree(&bench.host.join("tar_on_ext4"), &bench.mount.join("tar"), "tar into the mount");
    tar_copy(&bench.mount.join("tar"), &bench.host.join("tar_back"));
    assert_same_tree(&bench.host.join("tar_on_ext4"), &bench.host.join("tar_back"), "tar out of the mount");
    // The copies survive a remount: they are in the pool, not in a cache.
    ok(&["umount", bench.mount.to_str().unwrap()]);
    ok(&["mount", "--pool", bench.pool.path(), "--mountpoint", bench.mount.to_str().unwrap(), "-o", "allow_other"]);
    assert_same_tree(&source, &bench.mount.join("rsync"), "rsync copy after a remount");
}
