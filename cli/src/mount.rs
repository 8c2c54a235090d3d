//! `dfs mount` and `dfs umount`: the pool daemon's mount side.
//!
//! `dfs mount` re-executes itself with `--foreground` as a detached child (its own
//! session, output to `<pool>/daemon.log`) and returns 0 only once the mount is visible
//! in the mount table. The foreground process owns the pool (its lock), serves FUSE on
//! several threads, and on SIGINT/SIGTERM or an external unmount (`dfs umount`,
//! `fusermount3 -u`) unmounts, lets the kernel release every open file (each release
//! commits buffered data), and exits.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use dfs_engine::pooldir::PoolDir;
use dfs_engine::PoolOptions;
use dfs_fuse::DynamicFs;
use fuser::{Config, MountOption};

/// Marks the re-executed daemon child.
const DAEMON_ENV: &str = "DFS_DAEMON_CHILD";
/// How long `dfs mount` waits for the daemon to come up.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const FS_NAME_PREFIX: &str = "dynamicfs:";

/// Where `path` is mounted by DynamicFS, as the mount table says: (source, mountpoint).
fn dynamicfs_mounts() -> Vec<(String, PathBuf)> {
    let table = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    table
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let source = fields.next()?;
            let target = fields.next()?;
            source
                .starts_with(FS_NAME_PREFIX)
                .then(|| (source.to_string(), PathBuf::from(target.replace("\\040", " "))))
        })
        .collect()
}

fn is_mounted(mountpoint: &Path) -> bool {
    dynamicfs_mounts().iter().any(|(_, target)| target == mountpoint)
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

/// `dfs mount`.
pub fn mount(
    pool: &Path,
    mountpoint: &Path,
    foreground: bool,
    allow_other: bool,
    metrics: Option<std::net::SocketAddr>,
) -> Result<()> {
    let mountpoint = std::fs::canonicalize(mountpoint)
        .with_context(|| format!("mountpoint {} does not exist", mountpoint.display()))?;
    if !mountpoint.is_dir() {
        bail!("mountpoint {} is not a directory", mountpoint.display());
    }
    if is_mounted(&mountpoint) {
        bail!("{} is already a DynamicFS mount (EBUSY)", mountpoint.display());
    }
    if foreground {
        return serve(pool, &mountpoint, allow_other, metrics);
    }
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    args.push("--foreground".into());
    let (pool_dir, log_path, mut child) = spawn_daemon(pool, args)?;
    let started = Instant::now();
    while started.elapsed() < READY_TIMEOUT {
        if is_mounted(&mountpoint) {
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

/// The daemon's start: the pool opened (and owned) with recovery notes logged, and a flag
/// SIGINT/SIGTERM raise.
fn open_for_daemon(pool: &Path) -> Result<(PoolDir, dfs_engine::Pool, Arc<AtomicBool>)> {
    let (dir, engine_pool, report) = PoolDir::open(pool, PoolOptions::default())
        .map_err(|e| anyhow!("{e} ({})", crate::commands::errno_name(e.errno())))?;
    for note in &report.notes {
        tracing::warn!(%note, "recovery");
    }
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone()).context("installing signal handlers")?;
    }
    Ok((dir, engine_pool, stop))
}

fn serve(pool: &Path, mountpoint: &Path, allow_other: bool, metrics: Option<std::net::SocketAddr>) -> Result<()> {
    if std::env::var_os(DAEMON_ENV).is_some() {
        detach_from_terminal();
    }
    let (dir, engine_pool, stop) = open_for_daemon(pool)?;
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(format!("{FS_NAME_PREFIX}{}", dir.path().display())),
        MountOption::Subtype("dynamicfs".into()),
        MountOption::DefaultPermissions,
    ];
    if allow_other {
        config.acl = fuser::SessionACL::All;
    }
    config.n_threads = Some(4);
    let dir_path = dir.path().to_path_buf();
    let shared = Arc::new(Mutex::new(engine_pool));
    crate::control::listen(&dir_path, Arc::new(Mutex::new(dir)), shared.clone())?;
    if let Some(addr) = metrics {
        crate::exporter::serve(addr, shared.clone())?;
        crate::announce!("metrics on http://{addr}/metrics and /health");
    }
    let session = fuser::spawn_mount(DynamicFs::shared(shared.clone()), mountpoint, &config)
        .with_context(|| format!("mounting {} (is /dev/fuse available?)", mountpoint.display()))?;
    crate::announce!("mounted {} at {}", dir_path.display(), mountpoint.display());
    let mut chores = Chores::new();
    while !stop.load(Ordering::SeqCst) && !session.guard.is_finished() {
        chores.run(&shared);
    }
    if session.guard.is_finished() {
        session.join().context("the FUSE session ended with an error")?;
    } else {
        session.umount_and_join().context("unmounting")?;
    }
    barrier(&shared);
    let _ = std::fs::remove_file(dir_path.join(crate::control::SOCKET_NAME));
    crate::announce!("unmounted {}", mountpoint.display());
    Ok(())
}

/// Makes every commit durable; what a crash can lose is at most this old (as ext4's
/// five-second journal commit).
const BARRIER_INTERVAL: Duration = Duration::from_secs(1);

/// How long the background worker rests after finding nothing it can do.
const IDLE_BACKOFF: Duration = Duration::from_secs(5);

/// How often the daemon collects orphan fragments, and how old they must be.
const ORPHAN_GC_INTERVAL: Duration = Duration::from_secs(3600);

/// The daemon's own work between requests: every second the tiering timers (access
/// statistics persisted, a classification pass when due) and a durability barrier, and
/// background steps (drains, policy transitions, rebuilds, migrations) while any waits.
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
            tiering_timers(pool);
            barrier(pool);
            self.last_barrier = Instant::now();
        }
        let mut worked = false;
        if Instant::now() >= self.idle_until {
            let mut guard = pool.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
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
            let mut guard = pool.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            match guard.cleanup_orphans(ORPHAN_GC_INTERVAL.as_secs()) {
                Ok(cleanup) if cleanup.deleted > 0 => {
                    tracing::info!(deleted = cleanup.deleted, bytes = cleanup.bytes_freed, "orphan fragments collected")
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "orphan collection failed; retrying in an hour"),
            }
        }
        {
            let mut guard = pool.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            match guard.scrub_tick() {
                Ok(tick) => {
                    worked |= tick.extents > 0 && guard.scrub_state().intensity == dfs_engine::scrub::Intensity::High;
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

/// `dfs serve`: the daemon without a mount, in the foreground, until SIGINT/SIGTERM.
pub fn serve_unmounted(pool: &Path, metrics: Option<std::net::SocketAddr>) -> Result<()> {
    if std::env::var_os(DAEMON_ENV).is_some() {
        detach_from_terminal();
    }
    let (dir, engine_pool, stop) = open_for_daemon(pool)?;
    let dir_path = dir.path().to_path_buf();
    let shared = Arc::new(Mutex::new(engine_pool));
    crate::control::listen(&dir_path, Arc::new(Mutex::new(dir)), shared.clone())?;
    if let Some(addr) = metrics {
        crate::exporter::serve(addr, shared.clone())?;
        crate::announce!("metrics on http://{addr}/metrics and /health");
    }
    crate::announce!("serving {} (control socket {})", dir_path.display(), crate::control::SOCKET_NAME);
    let mut chores = Chores::new();
    while !stop.load(Ordering::SeqCst) {
        chores.run(&shared);
    }
    barrier(&shared);
    let _ = std::fs::remove_file(dir_path.join(crate::control::SOCKET_NAME));
    crate::announce!("stopped serving {}", dir_path.display());
    Ok(())
}

fn tiering_timers(pool: &Mutex<dfs_engine::Pool>) {
    let mut pool = pool.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
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

fn barrier(pool: &Mutex<dfs_engine::Pool>) {
    let mut pool = pool.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Err(error) = pool.sync() {
        tracing::error!(%error, "durability barrier failed");
    }
}

/// `dfs umount`: unmounts and waits until the daemon has released the pool.
pub fn umount(mountpoint: &Path) -> Result<()> {
    let mountpoint = std::fs::canonicalize(mountpoint).unwrap_or_else(|_| mountpoint.to_path_buf());
    let Some((source, _)) = dynamicfs_mounts().into_iter().find(|(_, target)| *target == mountpoint) else {
        bail!("{} is not a DynamicFS mount (EINVAL)", mountpoint.display());
    };
    let pool = PathBuf::from(&source[FS_NAME_PREFIX.len()..]);
    let status = if which("fusermount3") {
        Command::new("fusermount3").arg("-u").arg(&mountpoint).status()
    } else {
        Command::new("umount").arg(&mountpoint).status()
    }
    .context("running the unmount helper")?;
    if !status.success() {
        bail!("unmounting {} failed ({status}); is a file still open there? (EBUSY)", mountpoint.display());
    }
    let lock = std::fs::OpenOptions::new().write(true).open(pool.join("lock"));
    let started = Instant::now();
    if let Ok(lock) = lock {
        while started.elapsed() < READY_TIMEOUT {
            if lock.try_lock().is_ok() {
                let _ = lock.unlock();
                println!("unmounted {}", mountpoint.display());
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
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

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}
