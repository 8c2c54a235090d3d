//! The `dfs` subcommands: each opens the pool directory, makes engine calls, prints.
//! This module dispatches (`run` for every command, `execute` for the pool commands,
//! here or through a daemon's control socket) and runs `dfs demo`; the command modules
//! below it (`files`, `admin`, `maintenance`, `observe`, `tiering`) hold the commands,
//! and `context` what they all share.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{anyhow, bail, Context, Result};
use dfs_engine::pooldir::PoolDir;
use dfs_engine::{Pool, PoolOptions};

use crate::args::{Command, ScrubDaemonAction};
use crate::context::{engine, object_stores, pool_options, Ctx};
use dfs_engine::base::units::human;

/// Runs a pool command here, or — when a mounted pool's daemon owns the pool — through
/// the daemon's control socket, with the same output. A pool another process holds
/// without serving it — a daemon finishing its shutdown, a command about to end — is
/// waited for up to `BUSY_WAIT` before the command gives up with EBUSY.
pub(crate) fn pool_command(pool: &Path, command: Command) -> Result<()> {
    let orphan_command =
        matches!(command, Command::DetectOrphans { .. } | Command::CleanupOrphans { .. } | Command::OrphanStats { .. });
    let started = std::time::Instant::now();
    loop {
        let options = PoolOptions { remove_orphans_at_open: !orphan_command, ..pool_options() };
        match PoolDir::open(pool, options) {
            Ok((mut dir, mut engine_pool, report)) => {
                for note in &report.notes {
                    tracing::warn!(%note, "recovery");
                }
                let mut stdout = std::io::stdout().lock();
                let cwd = std::env::current_dir().unwrap_or_default();
                let mut ctx = Ctx { dir: &mut dir, pool: &mut engine_pool, out: &mut stdout, cwd, local: true };
                return execute(command, &mut ctx);
            }
            Err(dfs_engine::Error::PoolBusy(message)) => {
                if crate::control::forward(pool)?.is_some() {
                    return Ok(());
                }
                if started.elapsed() >= BUSY_WAIT {
                    return Err(anyhow!("{message} (EBUSY)"));
                }
                std::thread::sleep(BUSY_POLL);
            }
            Err(e) => return Err(engine(e)),
        }
    }
}

/// How long a command waits for a pool that another process holds without serving it.
const BUSY_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// How often it looks again meanwhile.
const BUSY_POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// Whether a daemon listens on the pool's control socket.
fn daemon_listens(pool: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(pool.join(crate::control::SOCKET_NAME)).is_ok()
}

/// `dfs scrub-daemon ACTION`: `start` starts the pool daemon when none runs; the rest
/// reach the daemon, or the pool itself when there is none.
pub(crate) fn scrub_daemon_command(pool: &Path, action: ScrubDaemonAction, command: Command) -> Result<()> {
    if action == ScrubDaemonAction::Start && !daemon_listens(pool) {
        let pid = crate::mount::spawn_serve(pool)?;
        eprintln!(
            "dfs: started the pool daemon (dfs serve, pid {pid}, log {}); it keeps serving the pool after the \
             pass — `dfs stop --pool {}` ends it, and `dfs mount` takes it over",
            pool.join("daemon.log").display(),
            pool.display()
        );
    }
    pool_command(pool, command)?;
    if action == ScrubDaemonAction::Stop && !crate::mount::pool_is_mounted(pool) {
        if let Some(pid) = std::fs::canonicalize(pool).ok().and_then(|dir| crate::mount::serving_daemon(&dir)) {
            eprintln!(
                "dfs: the pool daemon (dfs serve, pid {pid}) keeps serving the pool; `dfs stop --pool {}` ends it",
                pool.display()
            );
        }
    }
    Ok(())
}

/// Runs one subcommand.
pub fn run(command: Command) -> Result<()> {
    match command {
        Command::Demo { dir } => demo(dir),
        Command::Mount { pool, mountpoint, foreground, allow_other, nonempty, metrics, cache, options } => {
            let mut settings = crate::mount::MountSettings::default();
            settings.apply(&options, false)?;
            settings.flags.allow_other |= allow_other;
            settings.nonempty |= nonempty;
            settings.metrics = metrics.or(settings.metrics);
            settings.cache_bytes = cache.or(settings.cache_bytes);
            if foreground {
                crate::mount::mount_foreground(&pool.pool, &mountpoint, &settings, execute_for_client)
            } else {
                crate::mount::mount(&pool.pool, &mountpoint, &settings)
            }
        }
        Command::InstallMountHelper { dir } => crate::mount_helper::install(&dir),
        Command::Umount { mountpoint } => crate::mount::umount(&mountpoint),
        Command::Stop { pool } => crate::mount::stop(&pool.pool),
        Command::Serve { pool } => crate::mount::serve_unmounted(&pool.pool, None, execute_for_client),
        Command::MetricsServer { pool, listen } => {
            crate::mount::serve_unmounted(&pool.pool, Some(listen), execute_for_client)
        }
        Command::ScrubDaemon { ref pool, action, .. } => {
            let path = pool.pool.clone();
            scrub_daemon_command(&path, action, command)
        }
        Command::Init { pool, policy, no_tiering } => {
            let config = PoolDir::init(&pool.pool, policy, !no_tiering).map_err(engine)?;
            let tiering = if no_tiering { "off" } else { "on" };
            println!(
                "initialised pool {} at {} with default policy {policy}, tiering {tiering}",
                config.pool_id,
                pool.pool.display()
            );
            println!("next: dfs add-disk --pool {} --disk DIR", pool.pool.display());
            Ok(())
        }
        Command::Import { pool, disk } => {
            let location = dfs_engine::pooldir::DiskLocation::parse(&disk);
            let location = match location {
                dfs_engine::pooldir::DiskLocation::Local(path) => {
                    dfs_engine::pooldir::DiskLocation::Local(std::env::current_dir().unwrap_or_default().join(path))
                }
                object => object,
            };
            let stores = object_stores();
            let config = PoolDir::import(&pool.pool, &location, Some(&stores))
                .map_err(engine)
                .with_context(|| format!("importing the pool from {location} (nothing was changed)"))?;
            println!(
                "imported pool {} at {} from {location}: {} disk(s)",
                config.pool_id,
                pool.pool.display(),
                config.disks.len()
            );
            for entry in &config.disks {
                println!("  {} {}", entry.uuid, entry.path);
            }
            println!("next: dfs mount --pool {} MOUNTPOINT", pool.pool.display());
            Ok(())
        }
        Command::AddDisk { ref pool, .. }
        | Command::ListDisks { ref pool, .. }
        | Command::Put { ref pool, .. }
        | Command::Get { ref pool, .. }
        | Command::Ls { ref pool, .. }
        | Command::Rm { ref pool, .. }
        | Command::Mkdir { ref pool, .. }
        | Command::ListExtents { ref pool, .. }
        | Command::ShowRedundancy { ref pool, .. }
        | Command::FailDisk { ref pool, .. }
        | Command::Availability { ref pool, .. }
        | Command::RemoveDisk { ref pool, .. }
        | Command::Rebuild { ref pool, .. }
        | Command::Upgrade { ref pool, .. }
        | Command::Rebalance { ref pool, .. }
        | Command::RebuildStatus { ref pool, .. }
        | Command::ChangePolicy { ref pool, .. }
        | Command::PolicyStatus { ref pool, .. }
        | Command::ListHot(crate::args::ClassListArgs { ref pool, .. })
        | Command::ListCold(crate::args::ClassListArgs { ref pool, .. })
        | Command::ExtentStats { ref pool, .. }
        | Command::Classify { ref pool, .. }
        | Command::Tiering { ref pool, .. }
        | Command::Unpin { ref pool, .. }
        | Command::Scrub { ref pool, .. }
        | Command::ScrubSchedule { ref pool, .. }
        | Command::DetectOrphans { ref pool, .. }
        | Command::CleanupOrphans { ref pool, .. }
        | Command::OrphanStats { ref pool, .. }
        | Command::Status { ref pool, .. }
        | Command::Health { ref pool, .. }
        | Command::Metrics { ref pool, .. } => {
            let path = pool.pool.clone();
            pool_command(&path, command)
        }
    }
}

/// Runs a pool command against `ctx` and makes what it changed durable before it
/// answers, so a command that succeeded survives a crash right after it (the access
/// statistics it gathered, say by `get`, included).
pub(crate) fn execute(command: Command, ctx: &mut Ctx<'_>) -> Result<()> {
    let result = execute_command(command, ctx);
    if let Err(error) = ctx.pool.flush_access_stats() {
        tracing::warn!(%error, "access statistics not persisted");
    }
    let synced = ctx.pool.sync().map_err(engine).context("making the changes durable");
    result.and(synced)
}

/// Runs a command a client sent through the daemon's control socket (see
/// `control::Execute`). A scrub may take long: it locks the pool per step
/// (`maintenance::scrub_in_daemon`), so FUSE requests are served between steps; any other
/// command holds the pool for its run, as a command holding the pool directory would.
fn execute_for_client(
    command: Command,
    dir: &Mutex<PoolDir>,
    pool: &Mutex<Pool>,
    cwd: PathBuf,
    out: &mut Vec<u8>,
) -> Result<()> {
    if matches!(command, Command::Scrub { .. }) {
        return crate::maintenance::scrub_in_daemon(command, pool, out);
    }
    let mut dir = dir.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut pool = dfs_engine::pool::lock(pool);
    let mut ctx = Ctx { dir: &mut dir, pool: &mut pool, out, cwd, local: false };
    execute(command, &mut ctx)
}

fn execute_command(command: Command, ctx: &mut Ctx<'_>) -> Result<()> {
    match command {
        Command::FailDisk { pool: _, disk } => crate::admin::fail_disk(ctx, &disk),
        Command::Availability { pool: _, grace, replica_quorum, json } => {
            crate::admin::availability(ctx, grace, replica_quorum, json.json)
        }
        Command::RemoveDisk { pool: _, disk } => crate::admin::remove_disk(ctx, &disk),
        Command::Rebuild { pool: _ } => crate::admin::rebuild(ctx),
        Command::Upgrade { pool: _ } => crate::admin::upgrade(ctx),
        Command::Rebalance { pool: _, max_bytes } => crate::admin::rebalance(ctx, max_bytes),
        Command::RebuildStatus { pool: _, json } => crate::admin::rebuild_status(ctx, json.json),
        Command::ChangePolicy { pool: _, policy, path, extent, recursive } => {
            crate::admin::change_policy(ctx, policy, path, extent, recursive)
        }
        Command::PolicyStatus { pool: _, json } => crate::admin::policy_status(ctx, json.json),
        Command::ListHot(args) => crate::tiering::list_class(ctx, dfs_engine::temperature::Class::Hot, &args),
        Command::ListCold(args) => crate::tiering::list_class(ctx, dfs_engine::temperature::Class::Cold, &args),
        Command::ExtentStats { pool: _, extent, json } => crate::tiering::extent_stats(ctx, &extent, json.json),
        Command::Classify { pool: _, migrate, json } => crate::tiering::classify(ctx, migrate, json.json),
        Command::Tiering { pool: _, settings, json } => crate::tiering::tiering(ctx, &settings, json.json),
        Command::Unpin { pool: _, path, recursive } => crate::tiering::unpin(ctx, &path, recursive),
        Command::Scrub { pool: _, repair, path, json } => crate::maintenance::scrub(ctx, repair, path, json.json),
        Command::ScrubDaemon { pool: _, action, intensity, json } => {
            crate::maintenance::scrub_daemon(ctx, action, intensity, json.json)
        }
        Command::ScrubSchedule { pool: _, frequency, intensity } => {
            crate::maintenance::scrub_schedule(ctx, frequency, intensity)
        }
        Command::DetectOrphans { pool: _, json } => crate::maintenance::detect_orphans(ctx, json.json),
        Command::CleanupOrphans { pool: _, older_than, json } => {
            crate::maintenance::cleanup_orphans(ctx, older_than, json.json)
        }
        Command::OrphanStats { pool: _, json } => crate::maintenance::orphan_stats(ctx, json.json),
        Command::Status { pool: _, json } => crate::observe::status(ctx, json.json),
        Command::Health { pool: _, json } => crate::observe::health(ctx, json.json),
        Command::Metrics { pool: _, json } => crate::observe::metrics(ctx, json.json),
        Command::Demo { .. }
        | Command::Mount { .. }
        | Command::InstallMountHelper { .. }
        | Command::Serve { .. }
        | Command::MetricsServer { .. }
        | Command::Umount { .. }
        | Command::Stop { .. }
        | Command::Init { .. }
        | Command::Import { .. } => {
            bail!("this command does not run against an open pool")
        }
        Command::AddDisk { pool: _, disks, capacity } => crate::admin::add_disks(ctx, disks, capacity),
        Command::ListDisks { pool: _, json } => crate::admin::list_disks(ctx, json.json),
        Command::Put { pool: _, local, pool_path, policy } => crate::files::put(ctx, &local, &pool_path, policy),
        Command::Get { pool: _, pool_path, local } => crate::files::get(ctx, &pool_path, &local),
        Command::Ls { pool: _, pool_path, json } => crate::files::ls(ctx, &pool_path, json.json),
        Command::Rm { pool: _, pool_path, recursive } => crate::files::rm(ctx.pool, &pool_path, recursive),
        Command::Mkdir { pool: _, pool_path, parents, policy } => {
            crate::files::mkdir(ctx.pool, &pool_path, parents, policy)
        }
        Command::ListExtents { pool: _, pool_path, verify, json } => {
            crate::observe::list_extents(ctx, pool_path, verify, json.json)
        }
        Command::ShowRedundancy { pool: _, verify, json } => crate::observe::show_redundancy(ctx, verify, json.json),
    }
}

/// Files the demo stores: (pool path, size in bytes, policy).
const DEMO_FILES: [(&str, usize, &str); 4] = [
    ("/photos/beach.raw", 6 << 20, "erasure:4+2"),
    ("/docs/notes.txt", 4095, "replicate:3"),
    ("/docs/report.pdf", (2 << 20) + 1, "replicate:2"),
    ("/archive/backup.tar", 12 << 20, "erasure:3+2"),
];

fn demo(dir: Option<std::path::PathBuf>) -> Result<()> {
    let root = match dir {
        Some(dir) => {
            if dir.exists() {
                bail!("{} already exists; pass a new directory to --dir", dir.display());
            }
            dir
        }
        None => {
            let base = std::env::temp_dir();
            (0..1000)
                .map(|i| base.join(format!("dfs-demo-{}-{i}", std::process::id())))
                .find(|p| !p.exists())
                .ok_or_else(|| anyhow!("no free demo directory name under {}", base.display()))?
        }
    };
    let pool_path = root.join("pool");
    let pool_arg = pool_path.display().to_string();
    println!("== building a demo pool in {}", root.display());
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    run(Command::Init {
        pool: crate::args::PoolArg { pool: pool_path.clone() },
        policy: "erasure:4+2".parse().map_err(|e| anyhow!("{e}"))?,
        no_tiering: false,
    })?;
    for (i, mib) in [64u64, 64, 128, 128, 256, 512].iter().enumerate() {
        let disk = root.join(format!("disk{i}"));
        std::fs::create_dir(&disk)?;
        run(Command::AddDisk {
            pool: crate::args::PoolArg { pool: pool_path.clone() },
            disks: vec![disk],
            capacity: Some(mib << 20),
        })?;
    }
    println!("\n== storing files under different policies");
    let scratch = root.join("scratch");
    std::fs::create_dir(&scratch)?;
    let mut stored = Vec::new();
    for (i, (path, size, policy)) in DEMO_FILES.iter().enumerate() {
        let (parent, _) = path.rsplit_once('/').unwrap_or(("", path));
        if !parent.is_empty() {
            run(Command::Mkdir {
                pool: crate::args::PoolArg { pool: pool_path.clone() },
                pool_path: parent.to_string(),
                parents: true,
                policy: None,
            })?;
        }
        let local = scratch.join(format!("in-{i}"));
        let mut x = 0x2545_F491_4F6C_DD1Du64 ^ i as u64;
        let data: Vec<u8> = (0..*size)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        std::fs::write(&local, &data)?;
        let parsed = Some(policy.parse().map_err(|e| anyhow!("{e}"))?);
        run(Command::Put {
            pool: crate::args::PoolArg { pool: pool_path.clone() },
            local,
            pool_path: path.to_string(),
            policy: parsed,
        })?;
        let back = scratch.join(format!("out-{i}"));
        run(Command::Get {
            pool: crate::args::PoolArg { pool: pool_path.clone() },
            pool_path: path.to_string(),
            local: back.clone(),
        })?;
        if std::fs::read(&back)? != data {
            bail!("demo: {path} read back different bytes");
        }
        println!("stored {path} ({}, {policy}) and read it back byte-for-byte", human(*size as u64));
        stored.push((path.to_string(), blake3::hash(&data)));
    }
    let read_all_back = |stage: &str| -> Result<()> {
        for (path, hash) in &stored {
            let back = scratch.join("check");
            run(Command::Get {
                pool: crate::args::PoolArg { pool: pool_path.clone() },
                pool_path: path.clone(),
                local: back.clone(),
            })?;
            if blake3::hash(&std::fs::read(&back)?) != *hash {
                bail!("demo: {path} read back different bytes {stage}");
            }
        }
        println!("every file read back byte-for-byte {stage}");
        Ok(())
    };
    println!("\n== a disk fails: dfs fail-disk --pool {pool_arg} --disk d3");
    run(Command::FailDisk { pool: crate::args::PoolArg { pool: pool_path.clone() }, disk: "d3".into() })?;
    read_all_back("with d3 failed (degraded reads)")?;
    let spare = root.join("spare");
    std::fs::create_dir(&spare)?;
    println!("\n== a spare joins and the pool rebuilds: dfs add-disk …, dfs rebuild --pool {pool_arg}");
    run(Command::AddDisk {
        pool: crate::args::PoolArg { pool: pool_path.clone() },
        disks: vec![spare],
        capacity: Some(256 << 20),
    })?;
    run(Command::Rebuild { pool: crate::args::PoolArg { pool: pool_path.clone() } })?;
    read_all_back("after the rebuild")?;
    std::fs::remove_dir_all(&scratch)?;
    println!("\n== dfs list-disks --pool {pool_arg}");
    run(Command::ListDisks {
        pool: crate::args::PoolArg { pool: pool_path.clone() },
        json: crate::args::JsonArg { json: false },
    })?;
    println!("\n== dfs show-redundancy --pool {pool_arg}");
    run(Command::ShowRedundancy {
        pool: crate::args::PoolArg { pool: pool_path.clone() },
        verify: true,
        json: crate::args::JsonArg { json: false },
    })?;
    println!("\n== temperature: dfs classify --pool {pool_arg} (new data starts warm; a pass every 6h decides)");
    run(Command::Classify {
        pool: crate::args::PoolArg { pool: pool_path.clone() },
        migrate: false,
        json: crate::args::JsonArg { json: false },
    })?;
    println!("\nThe pool stays in {}. Explore it with, for example:", root.display());
    println!("  dfs ls --pool {pool_arg} /docs");
    println!("  dfs list-extents --pool {pool_arg} /photos");
    println!("  dfs get --pool {pool_arg} /docs/notes.txt notes.txt");
    println!("  dfs tiering --pool {pool_arg}");
    Ok(())
}
