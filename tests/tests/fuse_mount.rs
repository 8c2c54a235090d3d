//! The FUSE frontend on a real mount: the kernel's VFS in front of the engine. Needs
//! /dev/fuse (CI runs as root); fails loudly, never skips, when FUSE is unavailable.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use dfs_engine::pooldir::PoolDir;
use dfs_engine::PoolOptions;
use dfs_fuse::DynamicFs;
use fuser::{BackgroundSession, Config, MountOption};

struct Mounted {
    root: tempfile::TempDir,
    session: Option<BackgroundSession>,
}

impl Mounted {
    fn new(policy: &str, disks: usize) -> Mounted {
        let root = tempfile::tempdir().unwrap();
        drop(pool_on_disks(root.path(), policy, disks));
        let mut mounted = Mounted { root, session: None };
        mounted.mount();
        mounted
    }

    fn mountpoint(&self) -> PathBuf {
        self.root.path().join("mnt")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.mountpoint().join(name)
    }

    fn mount(&mut self) {
        fs::create_dir_all(self.mountpoint()).unwrap();
        // The pool's locks are `flock`s: a child another test forks (`df`, `fusermount3`)
        // holds this test's just-closed lock files until it execs. Wait that out.
        let open = || PoolDir::open(&self.root.path().join("pool"), PoolOptions::default());
        let mut opened = open();
        for _ in 0..100 {
            if !matches!(opened, Err(dfs_engine::Error::PoolBusy(_))) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
            opened = open();
        }
        let (_, pool, _) = opened.unwrap();
        let mut config = Config::default();
        config.mount_options = vec![MountOption::FSName("dynamicfs".into()), MountOption::DefaultPermissions];
        config.n_threads = Some(2);
        let session = fuser::spawn_mount(DynamicFs::new(pool), self.mountpoint(), &config)
            .expect("mounting under FUSE failed: the FUSE tests need /dev/fuse (run as root, or install fuse3)");
        self.session = Some(session);
    }

    fn unmount(&mut self) {
        if let Some(session) = self.session.take() {
            session.umount_and_join().unwrap();
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        self.unmount();
    }
}

/// A new pool at `root/pool` on `disks` directory disks of 256 MiB, opened.
fn pool_on_disks(root: &Path, policy: &str, disks: usize) -> dfs_engine::Pool {
    let pool_path = root.join("pool");
    PoolDir::init(&pool_path, policy.parse().unwrap(), true).unwrap();
    let (mut dir, mut pool, _) = PoolDir::open(&pool_path, PoolOptions::default()).unwrap();
    for i in 0..disks {
        let disk = root.join(format!("disk{i}"));
        fs::create_dir(&disk).unwrap();
        dir.add_disk(&mut pool, &disk, Some(256 << 20)).unwrap();
    }
    pool
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

fn errno_of(result: std::io::Result<impl Sized>) -> i32 {
    result.err().and_then(|e| e.raw_os_error()).unwrap_or(0)
}

#[test]
fn posix_basics_through_the_kernel() {
    let mut m = Mounted::new("erasure:2+1", 4);
    let a = m.path("a");
    let data = pattern(3 * (1 << 20) + 123, 1);
    fs::write(&a, &data).unwrap();
    assert_eq!(fs::read(&a).unwrap(), data);

    // Overwrite in the middle, append, truncate up and down.
    let mut f = fs::OpenOptions::new().read(true).write(true).open(&a).unwrap();
    f.seek(SeekFrom::Start(1_000_000)).unwrap();
    f.write_all(b"MIDDLE").unwrap();
    f.sync_all().unwrap();
    drop(f);
    let mut expected = data.clone();
    expected[1_000_000..1_000_006].copy_from_slice(b"MIDDLE");
    assert_eq!(fs::read(&a).unwrap(), expected);
    let mut f = fs::OpenOptions::new().append(true).open(&a).unwrap();
    f.write_all(b"tail").unwrap();
    drop(f);
    expected.extend_from_slice(b"tail");
    assert_eq!(fs::read(&a).unwrap(), expected);
    let f = fs::OpenOptions::new().write(true).open(&a).unwrap();
    f.set_len(10).unwrap();
    f.set_len(5000).unwrap();
    drop(f);
    let read = fs::read(&a).unwrap();
    assert_eq!(&read[..10], &expected[..10]);
    assert!(read[10..].iter().all(|b| *b == 0));

    // Sparse file.
    let mut f = fs::File::create(m.path("sparse")).unwrap();
    f.seek(SeekFrom::Start(5 << 20)).unwrap();
    f.write_all(b"x").unwrap();
    drop(f);
    let meta = fs::metadata(m.path("sparse")).unwrap();
    assert_eq!(meta.len(), (5 << 20) + 1);
    assert!(meta.blocks() * 512 < 2 << 20, "holes must not be stored");

    // Rename over an existing file, hard links, symlinks.
    fs::write(m.path("b"), b"b").unwrap();
    fs::rename(m.path("b"), &a).unwrap();
    assert_eq!(fs::read(&a).unwrap(), b"b");
    assert_eq!(errno_of(fs::metadata(m.path("b"))), libc::ENOENT);
    fs::hard_link(&a, m.path("a2")).unwrap();
    assert_eq!(fs::metadata(&a).unwrap().nlink(), 2);
    std::os::unix::fs::symlink("a", m.path("s")).unwrap();
    assert_eq!(fs::read_link(m.path("s")).unwrap(), Path::new("a"));
    assert_eq!(fs::read(m.path("s")).unwrap(), b"b");

    // chmod, utimens.
    fs::set_permissions(&a, fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(fs::metadata(&a).unwrap().mode() & 0o7777, 0o600);
    let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
    fs::File::options().write(true).open(&a).unwrap().set_modified(when).unwrap();
    assert_eq!(fs::metadata(&a).unwrap().modified().unwrap(), when);

    // Directories: ENOTEMPTY, readdir.
    fs::create_dir(m.path("d")).unwrap();
    fs::write(m.path("d/x"), b"x").unwrap();
    assert_eq!(errno_of(fs::remove_dir(m.path("d"))), libc::ENOTEMPTY);
    let mut names: Vec<String> =
        fs::read_dir(m.mountpoint()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["a", "a2", "d", "s", "sparse"]);

    // Unlinked while open stays readable.
    let mut open = fs::File::open(m.path("d/x")).unwrap();
    fs::remove_file(m.path("d/x")).unwrap();
    let mut buf = Vec::new();
    open.read_to_end(&mut buf).unwrap();
    assert_eq!(buf, b"x");
    drop(open);
    fs::remove_dir(m.path("d")).unwrap();

    // Remount: everything is still there.
    m.unmount();
    m.mount();
    assert_eq!(fs::read(m.path("a")).unwrap(), b"b");
    assert_eq!(fs::metadata(m.path("sparse")).unwrap().len(), (5 << 20) + 1);
    assert_eq!(fs::read_link(m.path("s")).unwrap(), Path::new("a"));
}

#[test]
fn names_found_missing_are_made_at_once_through_the_mount() {
    let m = Mounted::new("replicate:2", 3);
    let names = ["file", "dir", "link", "hard", "renamed", "fifo"];
    for name in names {
        assert_eq!(errno_of(fs::metadata(m.path(name))), libc::ENOENT, "{name}");
    }
    // Each name the kernel now holds as missing is made through the mount and seen at once.
    fs::write(m.path("file"), b"x").unwrap();
    assert_eq!(fs::read(m.path("file")).unwrap(), b"x");
    fs::create_dir(m.path("dir")).unwrap();
    assert!(m.path("dir").is_dir());
    std::os::unix::fs::symlink("file", m.path("link")).unwrap();
    assert_eq!(fs::read(m.path("link")).unwrap(), b"x");
    fs::hard_link(m.path("file"), m.path("hard")).unwrap();
    assert_eq!(fs::metadata(m.path("hard")).unwrap().nlink(), 2);
    fs::write(m.path("tmp"), b"y").unwrap();
    fs::rename(m.path("tmp"), m.path("renamed")).unwrap();
    assert_eq!(fs::read(m.path("renamed")).unwrap(), b"y");
    assert_eq!(errno_of(fs::metadata(m.path("tmp"))), libc::ENOENT);
    assert!(std::process::Command::new("mkfifo").arg(m.path("fifo")).status().unwrap().success());
    assert!(fs::metadata(m.path("fifo")).is_ok());
    // And missing again at once once removed, then made again.
    fs::remove_file(m.path("file")).unwrap();
    assert_eq!(errno_of(fs::metadata(m.path("file"))), libc::ENOENT);
    fs::write(m.path("file"), b"z").unwrap();
    assert_eq!(fs::read(m.path("file")).unwrap(), b"z");
}

#[test]
fn a_missing_name_is_cached_like_a_present_one() {
    let root = tempfile::tempdir().unwrap();
    let pool = std::sync::Arc::new(std::sync::Mutex::new(pool_on_disks(root.path(), "replicate:2", 3)));
    let mountpoint = root.path().join("mnt");
    fs::create_dir(&mountpoint).unwrap();
    let mut config = Config::default();
    config.mount_options = vec![MountOption::FSName("dynamicfs".into()), MountOption::DefaultPermissions];
    let session = fuser::spawn_mount(DynamicFs::shared(pool.clone()), &mountpoint, &config).unwrap();
    let behind = mountpoint.join("behind");
    assert_eq!(errno_of(fs::metadata(&behind)), libc::ENOENT);
    // Made behind the kernel's back (as a `dfs` command served by the daemon does): the
    // kernel keeps the name as missing for the entry TTL, then asks again.
    let owner = dfs_engine::data::namespace::Owner { mode: 0o644, uid: 0, gid: 0, umask: 0 };
    pool.lock().unwrap().create(dfs_engine::Ino::ROOT, b"behind", owner).unwrap();
    assert_eq!(errno_of(fs::metadata(&behind)), libc::ENOENT, "the negative entry was not cached");
    std::thread::sleep(std::time::Duration::from_millis(1200));
    assert!(fs::metadata(&behind).is_ok(), "the negative entry outlived its TTL");
    session.umount_and_join().unwrap();
}

#[test]
fn df_reports_usable_space_under_the_default_policy() {
    let m = Mounted::new("replicate:2", 4);
    let output = std::process::Command::new("df").arg("-B1").arg(m.mountpoint()).output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text.lines().last().unwrap();
    let total: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    // Four disks of 256 MiB under replicate:2 hold 512 MiB.
    assert_eq!(total, 512 << 20, "{text}");
}

#[test]
fn two_writers_on_different_files_at_once() {
    let m = Mounted::new("erasure:2+1", 4);
    let writers: Vec<_> = (0..2u8)
        .map(|i| {
            let path = m.path(&format!("w{i}"));
            std::thread::spawn(move || {
                let mut f = fs::File::create(&path).unwrap();
                for chunk in 0..40u8 {
                    f.write_all(&pattern(64 * 1024, chunk.wrapping_add(i * 100))).unwrap();
                }
                f.sync_all().unwrap();
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
    for i in 0..2u8 {
        let expected: Vec<u8> = (0..40u8).flat_map(|chunk| pattern(64 * 1024, chunk.wrapping_add(i * 100))).collect();
        assert_eq!(fs::read(m.path(&format!("w{i}"))).unwrap(), expected, "writer {i}");
    }
}

#[test]
fn chown_mmap_and_fallocate_work() {
    let m = Mounted::new("replicate:2", 3);
    let f = m.path("f");
    fs::write(&f, pattern(100_000, 3)).unwrap();
    std::os::unix::fs::chown(&f, Some(1234), Some(5678)).unwrap();
    let meta = fs::metadata(&f).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (1234, 5678));
    // mmap reads see the file's bytes.
    let script = format!(
        "import mmap; f=open({:?},'rb'); m=mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ); print(m[99990:100000].hex())",
        f.to_str().unwrap()
    );
    let out = std::process::Command::new("python3").args(["-c", &script]).output().unwrap();
    let expected: String = pattern(100_000, 3)[99_990..].iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), expected, "{out:?}");
    // fallocate mode 0 extends the file; the new range reads as zeros.
    let out = std::process::Command::new("fallocate").args(["-l", "1M", f.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let mut expected = pattern(100_000, 3);
    expected.resize(1 << 20, 0);
    assert_eq!(fs::read(&f).unwrap(), expected);
}
