//! What every `dfs` command shares, below the commands themselves: the context a pool
//! command runs in (`Ctx`), how the pool is opened (`pool_options`), how errors name
//! their errno, and how output is printed and formatted.
//!
//! Contract: nothing here runs a command or knows which commands exist; the command
//! modules (`commands`, `admin`, `maintenance`, `observe`, `tiering`) and the daemon's
//! modules (`mount`, `control`) import this, never the other way round.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};
use dfs_engine::pooldir::PoolDir;
use dfs_engine::{Pool, PoolOptions};

/// The name of an errno value, as every error message ends with it.
pub(crate) fn errno_name(errno: i32) -> &'static str {
    match errno {
        libc_errno::ENOENT => "ENOENT",
        libc_errno::EEXIST => "EEXIST",
        libc_errno::ENOTDIR => "ENOTDIR",
        libc_errno::EISDIR => "EISDIR",
        libc_errno::ENOTEMPTY => "ENOTEMPTY",
        libc_errno::EINVAL => "EINVAL",
        libc_errno::ENAMETOOLONG => "ENAMETOOLONG",
        libc_errno::EPERM => "EPERM",
        libc_errno::ENOSPC => "ENOSPC",
        libc_errno::EIO => "EIO",
        libc_errno::EBADF => "EBADF",
        libc_errno::EROFS => "EROFS",
        libc_errno::EBUSY => "EBUSY",
        libc_errno::ENODATA => "ENODATA",
        libc_errno::ERANGE => "ERANGE",
        libc_errno::E2BIG => "E2BIG",
        libc_errno::EOPNOTSUPP => "EOPNOTSUPP",
        libc_errno::EACCES => "EACCES",
        libc_errno::ENXIO => "ENXIO",
        libc_errno::EMLINK => "EMLINK",
        _ => "error",
    }
}

/// errno values as Linux defines them (the engine reports these numbers).
pub(crate) mod libc_errno {
    pub const EPERM: i32 = 1;
    pub const ENOENT: i32 = 2;
    pub const EIO: i32 = 5;
    pub const ENXIO: i32 = 6;
    pub const E2BIG: i32 = 7;
    pub const EACCES: i32 = 13;
    pub const EBADF: i32 = 9;
    pub const EBUSY: i32 = 16;
    pub const EEXIST: i32 = 17;
    pub const ENOTDIR: i32 = 20;
    pub const EISDIR: i32 = 21;
    pub const EINVAL: i32 = 22;
    pub const ENOSPC: i32 = 28;
    pub const EROFS: i32 = 30;
    pub const EMLINK: i32 = 31;
    pub const ERANGE: i32 = 34;
    pub const ENAMETOOLONG: i32 = 36;
    pub const ENOTEMPTY: i32 = 39;
    pub const ENODATA: i32 = 61;
    pub const EOPNOTSUPP: i32 = 95;
}

/// Turns an engine error into a CLI error that names its errno.
pub(crate) fn engine(e: dfs_engine::Error) -> anyhow::Error {
    anyhow!("{e} ({})", errno_name(e.errno()))
}

/// What a pool command runs against: the pool directory and the open pool, the sink for
/// its output, and the directory relative local paths are resolved against (the
/// client's, when a daemon runs the command on its behalf).
pub(crate) struct Ctx<'a> {
    pub dir: &'a mut PoolDir,
    pub pool: &'a mut Pool,
    pub out: &'a mut dyn Write,
    pub cwd: PathBuf,
    /// Whether the command runs in the invoking process (stdin/stdout and progress
    /// are available).
    pub local: bool,
}

impl Ctx<'_> {
    /// `path` as the command's user meant it: relative to their working directory (`-`,
    /// standard input or output, as it is).
    pub(crate) fn local_path(&self, path: &Path) -> PathBuf {
        if path.is_relative() && path.as_os_str() != "-" {
            self.cwd.join(path)
        } else {
            path.to_path_buf()
        }
    }
}

/// The object stores of this process's environment (`AWS_*`), for pools with disks on them.
pub(crate) fn object_stores() -> std::sync::Arc<dyn dfs_engine::media::device::ObjectStores> {
    std::sync::Arc::new(dfs_objectdisk::EnvStores::from_env())
}

/// The options every command and daemon opens a pool with: who this process is (for the
/// owner's claim on shared disks) and the object-store client.
pub(crate) fn pool_options() -> PoolOptions {
    PoolOptions { claimant: claimant(), object_stores: Some(object_stores()), ..PoolOptions::default() }
}

/// `host NAME pid N`: how an owner's claim names this process.
fn claimant() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "an unnamed host".to_string());
    format!("host {host} pid {}", std::process::id())
}

/// A disk's state as the tables show it.
pub(crate) fn disk_state_text(state: &str, reachable: bool, offline: bool, full: bool) -> String {
    if offline {
        return state.to_string();
    }
    match (reachable, full) {
        (false, _) => format!("{state} (unreachable)"),
        (true, true) => format!("{state}, full"),
        (true, false) => state.to_string(),
    }
}

/// A wall time (Unix seconds) as an RFC 3339 UTC time, or `-` when unknown.
pub(crate) fn since_text(secs: Option<i64>) -> String {
    match secs.and_then(|s| u64::try_from(s).ok()) {
        Some(secs) => {
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs)).to_string()
        }
        None => "-".to_string(),
    }
}

/// Prints `value` as pretty JSON and a newline (every `--json` output).
pub(crate) fn print_json<T: serde::Serialize>(out: &mut dyn Write, value: &T) -> Result<()> {
    serde_json::to_writer_pretty(&mut *out, value)?;
    writeln!(out)?;
    Ok(())
}

/// Prints `text` as it is (a table or a report already laid out).
pub(crate) fn print_text(out: &mut dyn Write, text: &str) -> Result<()> {
    out.write_all(text.as_bytes())?;
    Ok(())
}
