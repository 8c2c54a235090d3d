//! The file commands: `put` and `get` (copies between a local file and the pool, with
//! progress on a terminal), `ls`, `mkdir` and `rm`. Glue over `dfs_engine::data::namespace`
//! and the pool's file handles.

use std::fs::File;
use std::io::{IsTerminal, Read, Write};
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use dfs_engine::base::units::human;
use dfs_engine::data::namespace::Owner;
use dfs_engine::{Ino, InodeKind, Pool};

use crate::context::{engine, errno_name, libc_errno, print_json, print_text, Ctx};
use crate::table;

/// Bytes moved per engine call by `put` and `get`.
const COPY_CHUNK: usize = 1 << 20;

/// A failed operation on a local file, ending with its errno name like every error.
fn local_error(what: &str, path: &Path, error: &std::io::Error) -> anyhow::Error {
    let name = errno_name(error.raw_os_error().unwrap_or(libc_errno::EIO));
    anyhow!("{what} {}: {error} ({name})", path.display())
}

/// The owner of new files: the invoking user, with the usual permission bits.
fn owner(mode: u32) -> Owner {
    let (uid, gid) = current_ids();
    Owner { mode, uid, gid, umask: 0 }
}

fn current_ids() -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    // The process's own /proc entry is owned by its effective uid and gid.
    std::fs::metadata("/proc/self").map(|m| (m.uid(), m.gid())).unwrap_or((0, 0))
}

/// Splits `/a/b/c` into the parent's inode and the last name.
fn parent_and_name<'p>(pool: &Pool, path: &'p str) -> Result<(Ino, &'p str)> {
    let trimmed = path.trim_end_matches('/');
    let (parent, name) = trimmed.rsplit_once('/').unwrap_or(("", trimmed));
    if name.is_empty() || name == "." || name == ".." {
        bail!("'{path}' does not name a file or directory");
    }
    let parent_ino = pool.resolve(parent).map_err(engine)?;
    Ok((parent_ino, name))
}

/// `dfs rm`: removes the file or directory at `pool_path` (a directory's contents too,
/// with `recursive`).
pub(crate) fn rm(pool: &mut Pool, pool_path: &str, recursive: bool) -> Result<()> {
    let (parent, name) = parent_and_name(pool, pool_path)?;
    remove(pool, parent, name.as_bytes(), recursive).with_context(|| format!("removing {pool_path}"))
}

/// `dfs put`: copies the local file `local` (`-`: standard input, only where the pool is
/// not mounted) into the pool at `pool_path`, under `policy` or the directory's.
pub(crate) fn put(ctx: &mut Ctx<'_>, local: &Path, pool_path: &str, policy: Option<dfs_engine::Policy>) -> Result<()> {
    let local = &ctx.local_path(local);
    if local.as_os_str() == "-" && !ctx.local {
        bail!("put from standard input needs the pool unmounted; copy into the mount instead");
    }
    let mut source: Box<dyn Read> = if local.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let file = File::open(local).map_err(|e| local_error("cannot open", local, &e))?;
        if file.metadata().map(|m| m.is_dir()).unwrap_or(false) {
            bail!("{} is a directory; put copies one file (EISDIR)", local.display());
        }
        Box::new(file)
    };
    let total = if local.as_os_str() == "-" { None } else { std::fs::metadata(local).ok().map(|m| m.len()) };
    let pool = &mut *ctx.pool;
    let (parent, name) = match pool.resolve(pool_path) {
        Ok(ino) if pool.getattr(ino).map_err(engine)?.kind == InodeKind::Directory => {
            let name = local
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| anyhow!("{pool_path} is a directory and {} has no file name to use", local.display()))?;
            (ino, name.to_string())
        }
        _ => {
            let (parent, name) = parent_and_name(pool, pool_path)?;
            (parent, name.to_string())
        }
    };
    let parent_attr = pool.getattr(parent).map_err(engine)?;
    if parent_attr.kind != InodeKind::Directory {
        bail!("the parent of {pool_path} is not a directory");
    }
    let effective = policy.unwrap_or(parent_attr.policy);
    pool.check_writable(effective).map_err(engine).with_context(|| format!("putting {pool_path}"))?;
    let explicit = policy.or_else(|| pool.state().inodes.get(&parent).and_then(|i| i.policy));
    let ino = pool.create_unnamed(owner(0o644), explicit).map_err(engine)?;
    let fh = pool.open_file(ino).map_err(engine)?;
    let result = (|| -> Result<u64> {
        let mut buffer = vec![0u8; COPY_CHUNK];
        let mut offset = 0u64;
        let progress = Progress::new("put", total.filter(|_| ctx.local));
        loop {
            let n = read_full(&mut source, &mut buffer).context("reading the local file")?;
            if n == 0 {
                break;
            }
            pool.write(fh, offset, &buffer[..n]).map_err(engine)?;
            offset += n as u64;
            progress.update(offset);
        }
        pool.fsync(fh).map_err(engine)?;
        pool.link_new(ino, parent, name.as_bytes(), true).map_err(engine)?;
        progress.finish(offset);
        Ok(offset)
    })();
    let released = pool.release(fh).map_err(engine);
    let bytes = result.with_context(|| format!("putting {pool_path}"))?;
    released?;
    tracing::info!(bytes, path = pool_path, "put complete");
    Ok(())
}

fn read_full(source: &mut dyn Read, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match source.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// `dfs get`: copies the pool's file at `pool_path` to `local` (`-`: standard output,
/// only where the pool is not mounted).
pub(crate) fn get(ctx: &mut Ctx<'_>, pool_path: &str, local: &Path) -> Result<()> {
    let local = &ctx.local_path(local);
    if local.as_os_str() == "-" && !ctx.local {
        bail!("get to standard output needs the pool unmounted; read from the mount instead");
    }
    let is_local = ctx.local;
    let pool = &mut *ctx.pool;
    let ino = pool.resolve(pool_path).map_err(engine)?;
    let attr = pool.getattr(ino).map_err(engine)?;
    if attr.kind != InodeKind::File {
        bail!("{pool_path} is not a regular file");
    }
    let to_stdout = local.as_os_str() == "-";
    let mut sink: Box<dyn Write> = if to_stdout {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(File::create(local).map_err(|e| local_error("cannot create", local, &e))?)
    };
    let fh = pool.open_file(ino).map_err(engine)?;
    let result = (|| -> Result<()> {
        let progress = Progress::new("get", Some(attr.size).filter(|_| is_local));
        let mut offset = 0u64;
        while offset < attr.size {
            let data = pool
                .read(fh, offset, COPY_CHUNK)
                .map_err(engine)
                .with_context(|| format!("reading {pool_path} at offset {offset}"))?;
            if data.is_empty() {
                break;
            }
            sink.write_all(&data).context("writing the local file")?;
            offset += data.len() as u64;
            progress.update(offset);
        }
        sink.flush()?;
        progress.finish(offset);
        Ok(())
    })();
    let _ = pool.release(fh);
    if result.is_err() && !to_stdout {
        drop(sink);
        let _ = std::fs::remove_file(local);
    }
    result
}

#[derive(serde::Serialize)]
struct LsEntry {
    name: String,
    kind: &'static str,
    size: u64,
    mode: String,
    policy: String,
    mtime: i64,
}

fn kind_name(kind: InodeKind) -> &'static str {
    match kind {
        InodeKind::File => "file",
        InodeKind::Directory => "dir",
        InodeKind::Symlink => "symlink",
        InodeKind::Fifo => "fifo",
        InodeKind::Socket => "socket",
        InodeKind::CharDevice => "char-device",
        InodeKind::BlockDevice => "block-device",
    }
}

/// `dfs ls`: a directory's entries (or one file's), as a table or JSON.
pub(crate) fn ls(ctx: &mut Ctx<'_>, pool_path: &str, json: bool) -> Result<()> {
    let pool = &*ctx.pool;
    let ino = pool.resolve(pool_path).map_err(engine)?;
    let attr = pool.getattr(ino).map_err(engine)?;
    let entry = |name: String, attr: &dfs_engine::data::namespace::Attr| LsEntry {
        name,
        kind: kind_name(attr.kind),
        size: attr.size,
        mode: format!("{:04o}", attr.mode),
        policy: attr.policy.to_string(),
        mtime: attr.mtime.secs,
    };
    let entries: Vec<LsEntry> = if attr.kind == InodeKind::Directory {
        pool.readdir(ino)
            .map_err(engine)?
            .into_iter()
            .map(|e| {
                let child = pool.getattr(e.ino).map_err(engine)?;
                Ok(entry(String::from_utf8_lossy(&e.name).into_owned(), &child))
            })
            .collect::<Result<_>>()?
    } else {
        vec![entry(pool_path.to_string(), &attr)]
    };
    if json {
        return print_json(ctx.out, &entries);
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| vec![e.kind.to_string(), e.mode.clone(), e.size.to_string(), e.policy.clone(), e.name.clone()])
        .collect();
    print_text(ctx.out, &table::render(&["TYPE", "MODE", "SIZE", "POLICY", "NAME"], &rows))
}

fn remove(pool: &mut Pool, parent: Ino, name: &[u8], recursive: bool) -> Result<()> {
    let attr = pool.lookup(parent, name).map_err(engine)?;
    if attr.kind == InodeKind::Directory {
        if recursive {
            for child in pool.readdir(attr.ino).map_err(engine)? {
                remove(pool, attr.ino, &child.name, true)?;
            }
        }
        return pool.rmdir(parent, name).map_err(engine);
    }
    pool.unlink(parent, name).map_err(engine)
}

/// `dfs mkdir`: creates the directory at `pool_path` (its missing parents too, with
/// `parents`), the new directory under `policy` if given.
pub(crate) fn mkdir(pool: &mut Pool, pool_path: &str, parents: bool, policy: Option<dfs_engine::Policy>) -> Result<()> {
    let parts: Vec<&str> = pool_path.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
    if parts.is_empty() {
        bail!("'{pool_path}' names the root directory, which always exists (EEXIST)");
    }
    let mut ino = Ino::ROOT;
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        match pool.lookup(ino, part.as_bytes()) {
            Ok(attr) if attr.kind == InodeKind::Directory && (parents || !last) => ino = attr.ino,
            Ok(_) if !last => bail!("{}: not a directory (ENOTDIR)", parts[..=i].join("/")),
            Ok(_) => return Err(engine(dfs_engine::Error::Exists(pool_path.to_string()))),
            Err(dfs_engine::Error::NotFound(_)) if parents || last => {
                ino = pool.mkdir(ino, part.as_bytes(), owner(0o755)).map_err(engine)?.ino;
                if last && policy.is_some() {
                    pool.set_policy(ino, policy).map_err(engine)?;
                }
            }
            Err(e) => return Err(engine(e)).with_context(|| format!("creating {pool_path}")),
        }
    }
    Ok(())
}

/// Progress of a long copy on stderr, when stderr is a terminal.
struct Progress {
    label: &'static str,
    total: Option<u64>,
    enabled: bool,
}

impl Progress {
    fn new(label: &'static str, total: Option<u64>) -> Self {
        let enabled = std::io::stderr().is_terminal() && total.is_none_or(|t| t >= 64 << 20);
        Self { label, total, enabled }
    }

    fn update(&self, done: u64) {
        if self.enabled && done.is_multiple_of(16 << 20) {
            match self.total {
                Some(total) if total > 0 => {
                    eprint!("\r{}: {} of {} ({}%)", self.label, human(done), human(total), done * 100 / total)
                }
                _ => eprint!("\r{}: {}", self.label, human(done)),
            }
        }
    }

    fn finish(&self, done: u64) {
        if self.enabled {
            eprintln!("\r{}: {} done{:20}", self.label, human(done), "");
        }
    }
}
