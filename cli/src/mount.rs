//! `dfs mount` and `dfs umount`: the pool daemon's mount side.
//!
//! `dfs mount` re-executes itself with `--foreground` as a detached child (its own
//! session, output to `<pool>/daemon.log`) and returns 0 only once the mount is visible
//! in the mount table. The foreground process owns the pool (its lock), serves FUSE on
//! several threads, and on SIGINT/SIGTERM or an external unmount (`dfs umount`,
//! `umount`, `fusermount3 -u`) unmounts, lets the kernel release every open file (each
//! release commits buffered data), and exits.
//!
//! The mount shows as type `fuse.dynamicfs` with the pool directory as its source (root
//! mounts through the kernel itself, `kernel_mount`; other users through
//! `fusermount3`). Options come as an fstab line gives them (`MountSettings`), which is
//! what the `mount.fuse.dynamicfs` helper passes on. A mountpoint left dead by a killed
//! daemon ("Transport endpoint is not connected") is detached before mounting again.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use dfs_engine::pooldir::PoolDir;
use dfs_fuse::DynamicFs;
use fuser::{Config, MountOption};

use crate::kernel_mount::{self, MountFlags, FS_TYPE};

/// Marks the re-executed daemon child.
const DAEMON_ENV: &str = "DFS_DAEMON_CHILD";
/// How long `dfs mount` waits for the daemon to come up.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// The source prefix of mounts made by earlier builds (type `fuse`).
const OLD_FS_NAME_PREFIX: &str = "dynamicfs:";
/// How long a stopping daemon waits for the kernel to let go of a busy mount.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(10);

/// How a mount behaves: the options of an fstab line (`-o`), or of `dfs mount`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountSettings {
    pub flags: MountFlags,
    /// Serve Prometheus metrics here.
    pub metrics: Option<std::net::SocketAddr>,
    /// Record access times (`relatime`); `noatime` turns it off.
    pub atime: bool,
    /// Mount over a directory that is not empty (its files are hidden meanwhile).
    pub nonempty: bool,
    /// Bytes of decoded extents the daemon keeps in memory for reads (`cache=SIZE`);
    /// the engine's default (256 MiB) when absent. It is most of the daemon's memory.
    pub cache_bytes: Option<u64>,
    /// Threads that take FUSE requests (`threads=N`); `request_threads()` when absent.
    pub threads: Option<usize>,
    /// The kernel's writeback cache (`writeback_cache`): faster small random writes,
    /// dearer file creation.
    pub writeback_cache: bool,
    /// Read-only opens of files of 1 MiB or more, and read-write opens, bypass the page
    /// cache (`direct_reads`, the default; `nodirect_reads` turns it off): faster large
    /// reads and database writes, dearer small reads.
    pub direct_reads: bool,
}

/// The most request threads `threads=N` takes.
const THREADS_MAX: usize = 64;

/// Request threads by default: one per CPU and one more, at least two, at most sixteen.
/// The one more is for the request that arrives while every CPU's thread is still
/// replying or waiting on the pool's lock: with one per CPU it waited for a thread to come
/// back to the device. On two CPUs, three threads against two: 6.6–7.2 µs a `getxattr`
/// round trip (from Python) against 7.4–8.8, and 14,813 / 15,296 small files a second
/// against 13,984 / 13,304 (create+stat+unlink, serial). More than that costs: four and
/// more let the scheduler move a woken thread to the other CPU ever more often, and six
/// or eight took small files back to 12,030–12,603.
pub fn request_threads() -> usize {
    std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get).saturating_add(1).clamp(2, 16)
}

impl Default for MountSettings {
    fn default() -> Self {
        MountSettings {
            flags: MountFlags::default(),
            metrics: None,
            atime: true,
            nonempty: false,
            cache_bytes: None,
            threads: None,
            writeback_cache: false,
            direct_reads: true,
        }
    }
}

/// Options that concern `mount(8)`, systemd or the boot order, not the filesystem.
const IGNORED_OPTIONS: &[&str] =
    &["defaults", "auto", "noauto", "user", "nouser", "users", "owner", "group", "_netdev", "nofail", "async"];
/// The FUSE kernel options the daemon sets itself; `mount -o remount` repeats them from
/// the mount table.
const KERNEL_OPTION_PREFIXES: &[&str] = &["user_id=", "group_id=", "rootmode=", "fd=", "max_read=", "blksize="];

impl MountSettings {
    /// Applies comma-separated mount options: `allow_other`, `ro`/`rw`, `suid`/`nosuid`,
    /// `dev`/`nodev`, `exec`/`noexec`, `atime`/`relatime`/`noatime`, `writeback_cache`,
    /// `direct_reads`/`nodirect_reads`, `metrics=ADDR`, `cache=SIZE`, `threads=N`;
    /// `default_permissions` (always on) and the options of `mount(8)` and systemd
    /// (`defaults`, `_netdev`, `nofail`, `x-*`, `comment=*`, …) are accepted and ignored.
    /// Another option is an error, unless `sloppy` (`mount -s`).
    pub fn apply(&mut self, options: &str, sloppy: bool) -> Result<()> {
        for option in options.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            match option {
                "allow_other" => self.flags.allow_other = true,
                "ro" => self.flags.read_only = true,
                "rw" => self.flags.read_only = false,
                "suid" => self.flags.suid = true,
                "nosuid" => self.flags.suid = false,
                "dev" => self.flags.dev = true,
                "nodev" => self.flags.dev = false,
                "exec" => self.flags.no_exec = false,
                "noexec" => self.flags.no_exec = true,
                "atime" | "relatime" | "strictatime" => self.atime = true,
                "noatime" => self.atime = false,
                "nonempty" => self.nonempty = true,
                "writeback_cache" => self.writeback_cache = true,
                "direct_reads" => self.direct_reads = true,
                "nodirect_reads" => self.direct_reads = false,
                "default_permissions" => {}
                _ if IGNORED_OPTIONS.contains(&option) => {}
                _ if option.starts_with("x-") || option.starts_with("comment=") => {}
                _ if KERNEL_OPTION_PREFIXES.iter().any(|prefix| option.starts_with(prefix)) => {}
                _ => match option.split_once('=') {
                    Some(("cache", size)) => {
                        self.cache_bytes = Some(
                            dfs_engine::base::units::parse_size(size)
                                .map_err(|e| anyhow!("cache={size}: {e}; e.g. cache=64MiB (EINVAL)"))?,
                        )
                    }
                    Some(("threads", count)) => {
                        self.threads = Some(count.parse().ok().filter(|n| (1..=THREADS_MAX).contains(n)).ok_or_else(
                            || anyhow!("threads={count}: not a number of threads from 1 to {THREADS_MAX} (EINVAL)"),
                        )?)
                    }
                    Some(("metrics", address)) => {
                        self.metrics = Some(address.parse().map_err(|_| {
                            anyhow!("metrics={address}: not an address like 127.0.0.1:9090 (EINVAL)")
                        })?)
                    }
                    _ if sloppy => {}
                    _ => bail!(
                        "unknown mount option '{option}'; known: allow_other, ro, rw, suid, nosuid, dev, nodev, exec, noexec, atime, noatime, nonempty, writeback_cache, direct_reads, nodirect_reads, metrics=ADDR, cache=SIZE, threads=N (EINVAL)"
                    ),
                },
            }
        }
        Ok(())
    }

    /// These settings as mount options again (for the daemon's command line).
    pub fn to_options(&self) -> String {
        let mut options = Vec::new();
        let flags = &self.flags;
        for (on, name) in [
            (flags.allow_other, "allow_other"),
            (flags.read_only, "ro"),
            (flags.suid, "suid"),
            (flags.dev, "dev"),
            (flags.no_exec, "noexec"),
            (!self.atime, "noatime"),
            (self.nonempty, "nonempty"),
            (self.writeback_cache, "writeback_cache"),
            (!self.direct_reads, "nodirect_reads"),
        ] {
            if on {
                options.push(name.to_string());
            }
        }
        if let Some(address) = self.metrics {
            options.push(format!("metrics={address}"));
        }
        if let Some(bytes) = self.cache_bytes {
            options.push(format!("cache={bytes}"));
        }
        if let Some(threads) = self.threads {
            options.push(format!("threads={threads}"));
        }
        options.join(",")
    }
}

/// A DynamicFS mount in the mount table.
struct MountEntry {
    /// The pool directory.
    pool: PathBuf,
    target: PathBuf,
}

/// The octal escapes `/proc/self/mounts` uses for space, tab, newline and backslash.
fn unescape_mount_field(field: &str) -> String {
    field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")
}

/// Every mount in the table: (source, target, type).
fn mount_table() -> Vec<(String, PathBuf, String)> {
    let table = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    table
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let source = unescape_mount_field(fields.next()?);
            let target = PathBuf::from(unescape_mount_field(fields.next()?));
            let fs_type = fields.next()?.to_string();
            Some((source, target, fs_type))
        })
        .collect()
}

/// DynamicFS mounts, as the mount table says.
fn dynamicfs_mounts() -> Vec<MountEntry> {
    mount_table()
        .into_iter()
        .filter_map(|(source, target, fs_type)| {
            if fs_type == FS_TYPE {
                Some(MountEntry { pool: PathBuf::from(source), target })
            } else {
                let pool = source.strip_prefix(OLD_FS_NAME_PREFIX)?;
                Some(MountEntry { pool: PathBuf::from(pool), target })
            }
        })
        .collect()
}

/// The mountpoint of `pool_dir` under which `path` lies, if the pool is mounted and it
/// does. Decided from the path's text and the mount table alone: looking the path up
/// would ask the mount, whose daemon may be the caller (a disk inside its own mount
/// would deadlock it).
pub fn own_mount_containing(pool_dir: &Path, path: &Path) -> Option<PathBuf> {
    let absolute = std::path::absolute(path).ok()?;
    dynamicfs_mounts()
        .into_iter()
        .find(|entry| entry.pool == pool_dir && absolute.starts_with(&entry.target))
        .map(|entry| entry.target)
}

/// How long a new daemon waits for the pool lock of a previous one that is finishing.
const PREVIOUS_DAEMON_WAIT: Duration = Duration::from_secs(15);

/// Whether the pool at `pool` is mounted anywhere.
pub(crate) fn pool_is_mounted(pool: &Path) -> bool {
    let Ok(pool) = std::fs::canonicalize(pool) else { return false };
    dynamicfs_mounts().iter().any(|entry| entry.pool == pool)
}

fn is_mounted(mountpoint: &Path) -> bool {
    dynamicfs_mounts().iter().any(|entry| entry.target == mountpoint)
}

/// Checks a mountpoint and returns its canonical path. A FUSE mount there whose daemon
/// died ("Transport endpoint is not connected") is detached first, and said so.
fn prepare_mountpoint(mountpoint: &Path, nonempty: bool) -> Result<PathBuf> {
    let absolute = std::path::absolute(mountpoint)
        .with_context(|| format!("mountpoint {} cannot be resolved", mountpoint.display()))?;
    if let Err(error) = std::fs::metadata(&absolute) {
        if error.raw_os_error() == Some(libc::ENOTCONN) {
            let fuse_mount =
                mount_table().iter().any(|(_, target, fs_type)| *target == absolute && fs_type.starts_with("fuse"));
            if !fuse_mount {
                bail!("{}: {error}; it is not a FUSE mount DynamicFS can clear (ENOTCONN)", absolute.display());
            }
            detach_dead_mount(&absolute)?;
            crate::logging::announce!(
                "{}: the daemon serving it had died (\"Transport endpoint is not connected\"); detached the dead mount",
                absolute.display()
            );
        }
    }
    let mountpoint = std::fs::canonicalize(&absolute)
        .with_context(|| format!("mountpoint {} does not exist (ENOENT)", mountpoint.display()))?;
    if !mountpoint.is_dir() {
        bail!("mountpoint {} is not a directory (ENOTDIR)", mountpoint.display());
    }
    if is_mounted(&mountpoint) {
        bail!("{} is already a DynamicFS mount (EBUSY)", mountpoint.display());
    }
    let occupied = std::fs::read_dir(&mountpoint)
        .with_context(|| format!("mountpoint {} cannot be listed", mountpoint.display()))?
        .next()
        .is_some();
    if occupied && !nonempty {
        bail!(
            "mountpoint {} is not empty: the mount would hide its files; empty it, choose another, or pass \
             --nonempty (-o nonempty) (ENOTEMPTY)",
            mountpoint.display()
        );
    }
    Ok(mountpoint)
}

/// Refuses a mountpoint (canonical) that is, or holds, the pool directory or one of its
/// disk directories: the mount would cover them, and the daemon, which reaches them
/// through their paths, would wait on itself — every access to the mount would hang. A
/// pool whose configuration cannot be read is left to the open to report.
fn refuse_mountpoint_over_disks(pool: &Path, mountpoint: &Path) -> Result<()> {
    let Ok((pool_dir, config)) = dfs_engine::pooldir::PoolDir::read_config(pool) else { return Ok(()) };
    if pool_dir.starts_with(mountpoint) {
        bail!(
            "mountpoint {} {} the pool directory {}: the mount would hide it from the daemon; choose a \
             mountpoint outside it (EINVAL)",
            mountpoint.display(),
            if pool_dir == mountpoint { "is" } else { "holds" },
            pool_dir.display()
        );
    }
    for disk in config.disks.iter().filter_map(|d| d.path.local()) {
        if disk.starts_with(mountpoint) {
            bail!(
                "mountpoint {} {} disk {} of the pool: the mount would hide it from the daemon, which reaches \
                 its disks through their paths; choose a mountpoint outside the pool's disks (EINVAL)",
                mountpoint.display(),
                if disk == mountpoint { "is" } else { "holds" },
                disk.display()
            );
        }
    }
    Ok(())
}

/// Lazily unmounts a dead FUSE mount, through the kernel as root, else `fusermount3`.
fn detach_dead_mount(target: &Path) -> Result<()> {
    if kernel_mount::is_root() {
        return kernel_mount::unmount(target, true)
            .with_context(|| format!("detaching the dead mount at {}", target.display()));
    }
    let status = Command::new("fusermount3")
        .arg("-u")
        .arg("-z")
        .arg(target)
        .status()
        .context("running fusermount3 to detach the dead mount")?;
    if !status.success() {
        bail!("fusermount3 -u -z {} failed ({status}); as root: umount -l {0}", target.display());
    }
    Ok(())
}

/// The global logging flags this process was started with, for its daemon child.
static LOG_ARGS: std::sync::OnceLock<Vec<std::ffi::OsString>> = std::sync::OnceLock::new();

/// Records the logging flags the daemon child is to be started with.
pub fn set_daemon_log_args(args: Vec<std::ffi::OsString>) {
    let _ = LOG_ARGS.set(args);
}

#[allow(unsafe_code)]
fn detach_from_terminal() {
    // SAFETY: setsid takes no pointers; it fails harmlessly if we already lead a session.
    unsafe {
        libc::setsid();
    }
}

/// Starts this binary with `args` as a detached daemon of `pool`, its output appended
/// to `POOL/daemon.log`; returns the pool directory, the log and the child.
fn spawn_daemon(pool: &Path, args: Vec<std::ffi::OsString>) -> Result<(PathBuf, PathBuf, std::process::Child)> {
    let pool_dir =
        std::fs::canonicalize(pool).map_err(|_| anyhow!("{}: no such pool directory (ENOENT)", pool.display()))?;
    let log_path = pool_dir.join("daemon.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let child = Command::new(std::env::current_exe().context("locating the dfs binary")?)
        .args(args)
        .env(DAEMON_ENV, "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting the pool daemon")?;
    Ok((pool_dir, log_path, child))
}

/// Fails with the log's last line when the daemon already exited before `what`.
fn exited_early(child: &mut std::process::Child, log_path: &Path, what: &str) -> Result<()> {
    if let Some(status) = child.try_wait()? {
        let tail = std::fs::read_to_string(log_path).unwrap_or_default();
        let last = tail.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no message");
        bail!("the pool daemon exited ({status}) before {what}: {last}");
    }
    Ok(())
}

/// `dfs mount --foreground`: mounts and serves in this process until unmounted, the
/// control socket's commands run by `execute`.
pub fn mount_foreground(
    pool: &Path,
    mountpoint: &Path,
    settings: &MountSettings,
    execute: crate::control::Execute,
) -> Result<()> {
    let mountpoint = prepare_mountpoint(mountpoint, settings.nonempty)?;
    refuse_mountpoint_over_disks(pool, &mountpoint)?;
    take_over(pool)?;
    serve(pool, &mountpoint, settings, execute)
}

/// `dfs mount` (and the `mount.fuse.dynamicfs` helper): starts the daemon — this program
/// again, mounting in the foreground — and returns once it has mounted.
pub fn mount(pool: &Path, mountpoint: &Path, settings: &MountSettings) -> Result<()> {
    let mountpoint = prepare_mountpoint(mountpoint, settings.nonempty)?;
    refuse_mountpoint_over_disks(pool, &mountpoint)?;
    take_over(pool)?;
    let mut args: Vec<std::ffi::OsString> = LOG_ARGS.get().cloned().unwrap_or_default();
    args.extend(["mount".into(), "--pool".into(), pool.into(), "--mountpoint".into(), mountpoint.clone().into()]);
    let options = settings.to_options();
    if !options.is_empty() {
        args.extend(["--options".into(), options.into()]);
    }
    args.push("--foreground".into());
    let (pool_dir, log_path, mut child) = spawn_daemon(pool, args)?;
    let socket = pool_dir.join(crate::control::SOCKET_NAME);
    let started = Instant::now();
    while started.elapsed() < READY_TIMEOUT {
        if is_mounted(&mountpoint) && std::os::unix::net::UnixStream::connect(&socket).is_ok() {
            println!(
                "mounted {} at {} (daemon pid {}, log {})",
                pool_dir.display(),
                mountpoint.display(),
                child.id(),
                log_path.display()
            );
            return Ok(());
        }
        exited_early(&mut child, &log_path, "mounting")?;
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    bail!(
        "the pool daemon did not mount {} within {}s; see {}",
        mountpoint.display(),
        READY_TIMEOUT.as_secs(),
        log_path.display()
    )
}

/// A pool served by an unmounted daemon (`dfs serve`, or the one `scrub-daemon start`
/// started) is taken over: that daemon is stopped, and the mount's daemon does all it
/// did. A pool mounted elsewhere is left alone (opening it then fails with EBUSY).
fn take_over(pool: &Path) -> Result<()> {
    let Ok(pool_dir) = std::fs::canonicalize(pool) else { return Ok(()) };
    if pool_is_mounted(&pool_dir) {
        return Ok(());
    }
    if let Some(pid) = serving_daemon(&pool_dir) {
        end_daemon(&pool_dir, pid)?;
        eprintln!("dfs: took over {} from its pool daemon (dfs serve, pid {pid})", pool_dir.display());
    }
    Ok(())
}

/// The daemon's start: the pool opened (and owned) with recovery notes logged, and a flag
/// SIGINT/SIGTERM raise.
fn open_for_daemon(pool: &Path, cache_bytes: Option<u64>) -> Result<(PoolDir, dfs_engine::Pool, Arc<AtomicBool>)> {
    let started = Instant::now();
    let mut options = crate::context::pool_options();
    if let Some(bytes) = cache_bytes {
        options.extent_cache_bytes = usize::try_from(bytes).unwrap_or(usize::MAX);
    }
    let (dir, engine_pool, report) = loop {
        match PoolDir::open(pool, options.clone()) {
            Ok(opened) => break opened,
            // An unmounted pool still locked is a daemon finishing its last barrier after
            // a plain `umount` (which, unlike `dfs umount`, does not wait for it).
            Err(dfs_engine::Error::PoolBusy(_))
                if !pool_is_mounted(pool) && started.elapsed() < PREVIOUS_DAEMON_WAIT =>
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(anyhow!("{e} ({})", crate::context::errno_name(e.errno()))),
        }
    };
    for note in &report.notes {
        tracing::warn!(%note, "recovery");
    }
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone()).context("installing signal handlers")?;
    }
    Ok((dir, engine_pool, stop))
}

/// Mounts `fs` on `mountpoint` with `pool_dir` as the source: through the kernel as
/// root, through `fusermount3` otherwise. Returns the running session and whether this
/// process unmounts it itself (a kernel mount) or the session does (`fusermount3`).
fn mount_session(
    fs: DynamicFs,
    pool_dir: &Path,
    mountpoint: &Path,
    settings: &MountSettings,
) -> Result<(fuser::BackgroundSession, bool)> {
    let mut config = Config::default();
    config.n_threads = Some(settings.threads.unwrap_or_else(request_threads));
    if settings.flags.allow_other {
        config.acl = fuser::SessionACL::All;
    }
    if kernel_mount::is_root() {
        let device = kernel_mount::mount_fuse(pool_dir, mountpoint, &settings.flags)
            .with_context(|| format!("mounting {} (is /dev/fuse available?)", mountpoint.display()))?;
        let acl = config.acl;
        let session = fuser::Session::from_fd(fs, device, acl, config).and_then(fuser::Session::spawn);
        return match session {
            Ok(session) => Ok((session, true)),
            Err(error) => {
                let _ = kernel_mount::unmount(mountpoint, true);
                Err(anyhow!(error).context("starting the FUSE session"))
            }
        };
    }
    let flags = &settings.flags;
    config.mount_options = vec![
        MountOption::FSName(pool_dir.display().to_string()),
        MountOption::Subtype("dynamicfs".into()),
        MountOption::DefaultPermissions,
        if flags.read_only { MountOption::RO } else { MountOption::RW },
        if flags.no_exec { MountOption::NoExec } else { MountOption::Exec },
    ];
    if flags.suid {
        config.mount_options.push(MountOption::Suid);
    }
    if flags.dev {
        config.mount_options.push(MountOption::Dev);
    }
    let session = fuser::spawn_mount(fs, mountpoint, &config)
        .with_context(|| format!("mounting {} (is /dev/fuse available?)", mountpoint.display()))?;
    Ok((session, false))
}

/// The kernel read-ahead of a mount, in KiB: a sequential reader's requests then reach
/// the daemon a whole extent at a time, ahead of the reader.
const READ_AHEAD_KIB: u32 = 1024;

/// Raises the mount's kernel read-ahead to `READ_AHEAD_KIB`. The FUSE handshake can only
/// lower it from the kernel's default of 128 KiB; root raises it through the mount's
/// `/sys/class/bdi` entry, as `blockdev --setra` does for a block device. Best effort: a
/// mount without it is slower on long sequential reads, nothing else.
fn raise_read_ahead(mountpoint: &Path) {
    use std::os::unix::fs::MetadataExt;
    // The mount's root answers only once the handshake is done, which would undo it.
    let device = match std::fs::metadata(mountpoint) {
        Ok(metadata) => metadata.dev(),
        Err(error) => {
            tracing::debug!(%error, "no read-ahead setting: the mount's root did not answer");
            return;
        }
    };
    let path = format!("/sys/class/bdi/{}:{}/read_ahead_kb", libc::major(device), libc::minor(device));
    if let Err(error) = std::fs::write(&path, READ_AHEAD_KIB.to_string()) {
        tracing::debug!(%error, %path, "kernel read-ahead left as it is");
    }
}

/// Ends a session this process mounted through the kernel: unmounts (lazily when files
/// are still open, so the tree is never left with a dead mount) and waits for the
/// kernel to let go.
fn end_kernel_session(session: fuser::BackgroundSession, mountpoint: &Path) -> Result<()> {
    if let Err(error) = kernel_mount::unmount(mountpoint, false) {
        if error.raw_os_error() != Some(libc::EBUSY) {
            return Err(anyhow!(error).context(format!("unmounting {}", mountpoint.display())));
        }
        tracing::warn!("files are still open on {}; detaching the mount", mountpoint.display());
        kernel_mount::unmount(mountpoint, true).with_context(|| format!("detaching {}", mountpoint.display()))?;
    }
    let started = Instant::now();
    while !session.guard.is_finished() && started.elapsed() < RELEASE_TIMEOUT {
        std::thread::sleep(Duration::from_millis(20));
    }
    if session.guard.is_finished() {
        session.join().context("the FUSE session ended with an error")?;
    } else {
        tracing::warn!("the kernel still holds open files after {}s; stopping anyway", RELEASE_TIMEOUT.as_secs());
    }
    Ok(())
}

fn serve(pool: &Path, mountpoint: &Path, settings: &MountSettings, execute: crate::control::Execute) -> Result<()> {
    if std::env::var_os(DAEMON_ENV).is_some() {
        detach_from_terminal();
    }
    let (dir, engine_pool, stop) = open_for_daemon(pool, settings.cache_bytes)?;
    let dir_path = dir.path().to_path_buf();
    let shared = Arc::new(Mutex::new(engine_pool));
    let barriers = start_barrier_thread(&shared);
    if let Some(addr) = settings.metrics {
        crate::exporter::serve(addr, shared.clone(), dir_path.clone())?;
        crate::logging::announce!("metrics on http://{addr}/metrics and /health");
    }
    let fs = DynamicFs::shared(shared.clone())
        .with_atime(settings.atime)
        .with_writeback_cache(settings.writeback_cache)
        .with_direct_reads(settings.direct_reads);
    let (session, kernel_mounted) = mount_session(fs, &dir_path, mountpoint, settings)?;
    if kernel_mounted {
        raise_read_ahead(mountpoint);
    }
    // The control socket answers last: `dfs mount` returns once it does, so nothing this
    // daemon does to start up (the read-ahead's `stat` of the mountpoint) can still hold
    // the mount when the caller's next `umount` comes.
    if let Err(error) = crate::control::listen(&dir_path, Arc::new(Mutex::new(dir)), shared.clone(), execute) {
        let _ = if kernel_mounted {
            end_kernel_session(session, mountpoint)
        } else {
            session.umount_and_join().map_err(Into::into)
        };
        return Err(error);
    }
    crate::logging::announce!("mounted {} at {}", dir_path.display(), mountpoint.display());
    let mut chores = Chores::new();
    while !stop.load(Ordering::SeqCst) && !session.guard.is_finished() {
        chores.run(&shared);
    }
    if session.guard.is_finished() {
        session.join().context("the FUSE session ended with an error")?;
    } else if kernel_mounted {
        end_kernel_session(session, mountpoint)?;
    } else {
        session.umount_and_join().context("unmounting")?;
    }
    drop(barriers);
    barrier(&shared);
    let _ = std::fs::remove_file(dir_path.join(crate::control::SOCKET_NAME));
    crate::logging::announce!("unmounted {}", mountpoint.display());
    Ok(())
}

/// Makes every commit durable; what a crash can lose is at most this old (as ext4's
/// five-second journal commit).
const BARRIER_INTERVAL: Duration = Duration::from_secs(1);

/// How long the background worker rests after finding nothing it can do.
const IDLE_BACKOFF: Duration = Duration::from_secs(5);

/// How often the daemon collects orphan fragments, and how old they must be.
const ORPHAN_GC_INTERVAL: Duration = Duration::from_secs(3600);

/// The daemon's own work between requests: every second the disk checks (offline disks
/// retried, returning ones rejoined, the grace period enforced), the tiering timers
/// (access statistics persisted, a classification pass when due) and a durability
/// barrier, and background steps (drains, policy transitions, rebuilds, migrations)
/// while any waits.
struct Chores {
    last_barrier: Instant,
    idle_until: Instant,
    last_orphan_gc: Instant,
}

impl Chores {
    fn new() -> Self {
        Chores { last_barrier: Instant::now(), idle_until: Instant::now(), last_orphan_gc: Instant::now() }
    }

    /// One round; sleeps briefly unless background work is in full swing.
    fn run(&mut self, pool: &Mutex<dfs_engine::Pool>) {
        if self.last_barrier.elapsed() >= BARRIER_INTERVAL {
            if check_disks(pool) {
                // A disk came back or was failed: its repair may start at once.
                self.idle_until = Instant::now();
            }
            tiering_timers(pool);
            barrier(pool);
            self.last_barrier = Instant::now();
        }
        let mut worked = false;
        if Instant::now() >= self.idle_until {
            let mut guard = dfs_engine::pool::lock(pool);
            match guard.background_step() {
                Ok(0) => self.idle_until = Instant::now() + IDLE_BACKOFF,
                Ok(extents) => {
                    worked = true;
                    tracing::debug!(extents, "background step");
                }
                Err(error) => {
                    tracing::error!(%error, "background work failed; retrying later");
                    self.idle_until = Instant::now() + IDLE_BACKOFF;
                }
            }
        }
        if self.last_orphan_gc.elapsed() >= ORPHAN_GC_INTERVAL {
            self.last_orphan_gc = Instant::now();
            let mut guard = dfs_engine::pool::lock(pool);
            match guard.cleanup_orphans(ORPHAN_GC_INTERVAL.as_secs()) {
                Ok(cleanup) if cleanup.deleted > 0 => {
                    tracing::info!(deleted = cleanup.deleted, bytes = cleanup.bytes_freed, "orphan fragments collected")
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "orphan collection failed; retrying in an hour"),
            }
        }
        {
            let mut guard = dfs_engine::pool::lock(pool);
            match guard.scrub_tick() {
                Ok(tick) => {
                    worked |= tick.extents > 0
                        && guard.scrub_state().intensity == dfs_engine::services::scrub::Intensity::High;
                    if tick.pass_started {
                        tracing::info!("background scrub pass started");
                    }
                    if tick.pass_finished {
                        let last = guard.scrub_state().last_full_pass;
                        tracing::info!(pass = ?last, "background scrub pass finished");
                    }
                }
                Err(error) => tracing::error!(%error, "background scrub failed; retrying"),
            }
        }
        if !worked {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Starts `dfs serve --pool POOL` as a detached daemon (logging to `POOL/daemon.log`)
/// and returns its pid once its control socket answers.
pub fn spawn_serve(pool: &Path) -> Result<u32> {
    let (pool_dir, log_path, mut child) = spawn_daemon(pool, vec!["serve".into(), "--pool".into(), pool.into()])?;
    let socket = pool_dir.join(crate::control::SOCKET_NAME);
    let started = Instant::now();
    while started.elapsed() < READY_TIMEOUT {
        if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
            return Ok(child.id());
        }
        exited_early(&mut child, &log_path, "serving")?;
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    bail!("the pool daemon did not answer within {}s; see {}", READY_TIMEOUT.as_secs(), log_path.display())
}

/// `dfs serve`: the daemon without a mount, in the foreground, until SIGINT/SIGTERM; the
/// control socket's commands run by `execute`.
pub fn serve_unmounted(
    pool: &Path,
    metrics: Option<std::net::SocketAddr>,
    execute: crate::control::Execute,
) -> Result<()> {
    if std::env::var_os(DAEMON_ENV).is_some() {
        detach_from_terminal();
    }
    let (dir, engine_pool, stop) = open_for_daemon(pool, None)?;
    let dir_path = dir.path().to_path_buf();
    let shared = Arc::new(Mutex::new(engine_pool));
    let barriers = start_barrier_thread(&shared);
    crate::control::listen(&dir_path, Arc::new(Mutex::new(dir)), shared.clone(), execute)?;
    if let Some(addr) = metrics {
        crate::exporter::serve(addr, shared.clone(), dir_path.clone())?;
        crate::logging::announce!("metrics on http://{addr}/metrics and /health");
    }
    crate::logging::announce!("serving {} (control socket {})", dir_path.display(), crate::control::SOCKET_NAME);
    let mut chores = Chores::new();
    while !stop.load(Ordering::SeqCst) {
        chores.run(&shared);
    }
    drop(barriers);
    barrier(&shared);
    let _ = std::fs::remove_file(dir_path.join(crate::control::SOCKET_NAME));
    crate::logging::announce!("stopped serving {}", dir_path.display());
    Ok(())
}

/// Probes the disks (see `dfs_engine::services::reachability`); whether a disk rejoined or failed.
fn check_disks(pool: &Mutex<dfs_engine::Pool>) -> bool {
    let mut pool = dfs_engine::pool::lock(pool);
    match pool.check_disks() {
        Ok(check) => !check.rejoined.is_empty() || !check.failed.is_empty(),
        Err(error) => {
            tracing::error!(%error, "checking the disks failed; retrying");
            false
        }
    }
}

fn tiering_timers(pool: &Mutex<dfs_engine::Pool>) {
    let mut pool = dfs_engine::pool::lock(pool);
    match pool.tiering_tick() {
        Ok(report) => {
            if let Some(pass) = report.pass {
                tracing::info!(
                    extents = pass.extents,
                    hot = pass.hot,
                    warm = pass.warm,
                    cold = pass.cold,
                    changed = pass.changed,
                    migrations_pending = pass.migrations_pending,
                    "classification pass"
                );
            }
        }
        Err(error) => tracing::error!(%error, "tiering timers failed; retrying"),
    }
}

/// The thread that writes the durability barriers commits ask for, with the pool's lock
/// released; without one (no thread to be had), commits run them themselves.
fn start_barrier_thread(
    pool: &Arc<Mutex<dfs_engine::Pool>>,
) -> Option<dfs_engine::data::shared_barrier::BarrierThread> {
    match dfs_engine::data::shared_barrier::BarrierThread::start(pool) {
        Ok(thread) => Some(thread),
        Err(error) => {
            tracing::warn!(%error, "no barrier thread; requests run the barriers their commits need themselves");
            None
        }
    }
}

fn barrier(pool: &Mutex<dfs_engine::Pool>) {
    if let Err(error) = dfs_engine::data::shared_barrier::sync_shared(pool) {
        tracing::error!(%error, "durability barrier failed");
    }
}

/// `dfs umount`: unmounts and waits until the daemon has released the pool. A mount
/// whose daemon died is detached.
/// The pid of the daemon answering on `pool_dir`'s control socket (from the socket's
/// peer credentials), if one does.
pub(crate) fn serving_daemon(pool_dir: &Path) -> Option<i32> {
    use std::os::fd::AsRawFd;
    let stream = std::os::unix::net::UnixStream::connect(pool_dir.join(crate::control::SOCKET_NAME)).ok()?;
    let mut credentials = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: the descriptor is open for the duration of the call and `credentials` is
    // writable memory of the size passed.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut credentials).cast::<libc::c_void>(),
            &raw mut len,
        )
    };
    (rc == 0 && credentials.pid > 0).then_some(credentials.pid)
}

/// Waits until whoever holds `pool_dir` locked (a daemon that is finishing) lets go.
fn wait_released(pool_dir: &Path) -> bool {
    let Ok(lock) = std::fs::File::open(pool_dir) else { return true };
    let started = Instant::now();
    while started.elapsed() < READY_TIMEOUT {
        if lock.try_lock().is_ok() {
            let _ = lock.unlock();
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Ends the unmounted daemon `pid` of `pool_dir` (SIGTERM: it makes what it committed
/// durable and releases the pool) and waits until it has.
fn end_daemon(pool_dir: &Path, pid: i32) -> Result<()> {
    // SAFETY: kill only sends a signal.
    #[allow(unsafe_code)]
    if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
        let error = std::io::Error::last_os_error();
        bail!("cannot stop the pool daemon (pid {pid}): {error} (EPERM: only its owner can)");
    }
    if !wait_released(pool_dir) {
        bail!("the pool daemon (pid {pid}) still holds {} after {}s", pool_dir.display(), READY_TIMEOUT.as_secs());
    }
    Ok(())
}

/// `dfs stop`.
pub fn stop(pool: &Path) -> Result<()> {
    let pool_dir =
        std::fs::canonicalize(pool).map_err(|_| anyhow!("{}: no such pool directory (ENOENT)", pool.display()))?;
    let mounts: Vec<MountEntry> = dynamicfs_mounts().into_iter().filter(|entry| entry.pool == pool_dir).collect();
    for entry in &mounts {
        umount(&entry.target)?;
    }
    if !mounts.is_empty() {
        return Ok(());
    }
    match serving_daemon(&pool_dir) {
        Some(pid) => {
            end_daemon(&pool_dir, pid)?;
            println!("stopped the pool daemon of {} (dfs serve, pid {pid})", pool_dir.display());
        }
        None => println!("no daemon serves {}", pool_dir.display()),
    }
    Ok(())
}

pub fn umount(mountpoint: &Path) -> Result<()> {
    let mountpoint = std::fs::canonicalize(mountpoint)
        .or_else(|_| std::path::absolute(mountpoint))
        .unwrap_or_else(|_| mountpoint.to_path_buf());
    let Some(entry) = dynamicfs_mounts().into_iter().find(|entry| entry.target == mountpoint) else {
        bail!("{} is not a DynamicFS mount (EINVAL)", mountpoint.display());
    };
    let pool = entry.pool;
    if std::fs::metadata(&mountpoint).is_err_and(|e| e.raw_os_error() == Some(libc::ENOTCONN)) {
        detach_dead_mount(&mountpoint)?;
        println!("detached {} (its daemon had died; nothing was serving it)", mountpoint.display());
        return Ok(());
    }
    if kernel_mount::is_root() {
        kernel_mount::unmount(&mountpoint, false).map_err(|error| {
            anyhow!("unmounting {}: {error}; is a file still open there? (EBUSY)", mountpoint.display())
        })?;
    } else {
        use std::os::unix::fs::MetadataExt;
        // SAFETY: geteuid only reads this process's credentials.
        #[allow(unsafe_code)]
        let me = unsafe { libc::geteuid() };
        match std::fs::metadata(&pool) {
            Ok(meta) if meta.uid() != me => bail!(
                "{} is the mount of user {}'s pool; only that user or root may unmount it (EACCES)",
                mountpoint.display(),
                meta.uid()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => bail!(
                "{} is the mount of a pool this user may not use; only its owner or root may unmount it (EACCES)",
                mountpoint.display()
            ),
            _ => {}
        }
        let out = Command::new("fusermount3")
            .arg("-u")
            .arg(&mountpoint)
            .output()
            .context("running fusermount3 -u (from the fuse3 package)")?;
        if !out.status.success() {
            let said = String::from_utf8_lossy(&out.stderr).trim().to_string();
            if said.contains("busy") {
                bail!("unmounting {}: {said}; is a file still open there? (EBUSY)", mountpoint.display());
            }
            bail!("unmounting {} failed: {said} (EPERM)", mountpoint.display());
        }
    }
    // The daemon holds the pool directory itself locked until it has let go of the pool.
    if !wait_released(&pool) {
        bail!(
            "unmounted {}, but the daemon still holds {} after {}s",
            mountpoint.display(),
            pool.display(),
            READY_TIMEOUT.as_secs()
        );
    }
    println!("unmounted {}", mountpoint.display());
    Ok(())
}
