//! The FUSE frontend: `DynamicFs` implements `fuser::Filesystem` over the engine's
//! namespace API, nothing else. Each method makes one engine call and maps its error to
//! errno in one place (`errno`); permission checks are the kernel's
//! (`default_permissions`, and POSIX ACLs, which the kernel enforces from what
//! `getxattr` returns once `FUSE_POSIX_ACL` is negotiated). Dropping set-user-ID and
//! set-group-ID bits when a file changes is ours (`FUSE_HANDLE_KILLPRIV_V2`: the kernel
//! then sends direct writes without asking for `security.capability`), by ext4's rules
//! (`dfs_engine::data::namespace::dropped_privileges`). The engine sits behind one
//! mutex: requests from several FUSE threads are served one at a time by the engine,
//! which does its own parallel disk I/O.
//!
//! Not served here, by the kernel's own design: FIFOs, sockets and device nodes are
//! opened by the kernel (their data never reaches the filesystem). `O_TMPFILE` would
//! arrive as `FUSE_TMPFILE`, which `fuser` does not decode: the kernel then answers
//! `EOPNOTSUPP`, as on a filesystem without it.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dfs_engine::base::clock::WallTime;
use dfs_engine::data::file_ranges::Seek;
use dfs_engine::data::namespace::{
    dropped_privileges, Attr, Owner, PrivilegeCaller, PrivilegeChange, RenameMode, SetAttr, BLOCK_BYTES,
};
use dfs_engine::data::xattr::SetMode;
use dfs_engine::{Ino, InodeKind, Pool};
use fuser::{
    CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request,
    TimeOrNow, WriteFlags,
};

/// How long the kernel may cache attributes and entries. Only this process changes the
/// pool while it is mounted, so caching is safe; short keeps `df`/`stat` fresh.
const TTL: Duration = Duration::from_secs(1);
/// The extended attribute holding an inode's redundancy policy (see `dfs_engine::data::xattr`).
pub const POLICY_XATTR: &str = "user.dynamicfs.policy";

/// The mounted filesystem.
pub struct DynamicFs {
    pool: Arc<Mutex<Pool>>,
    /// Record access times on reads and listings (`relatime`); off for `noatime`.
    atime: bool,
    /// Ask the kernel for its writeback cache (`-o writeback_cache`): `write(2)` returns
    /// once the page is cached and pages reach the engine in large batches. Off by
    /// default: each new file then costs two round trips more (see `init`).
    writeback_cache: bool,
    /// Under the writeback cache, below this much free space (under a file's policy), a
    /// file opened for writing bypasses it (see `open_flags`).
    direct_below_free: u64,
    /// The kernel takes `ENOSYS` to `OPENDIR` as "no directory handles" and sends neither
    /// `OPENDIR` nor `RELEASEDIR` again (`FUSE_NO_OPENDIR_SUPPORT`); listings here keep
    /// no per-handle state, so two round trips per `opendir` go.
    no_opendir: bool,
    /// Whether a read-only open of a file of `DIRECT_READ_MIN` or more, and a read-write
    /// open without the writeback cache, bypass the page cache (see `open_flags`): asked
    /// for (`direct_reads`, the default) and the kernel lets such files be mapped shared
    /// (`FUSE_DIRECT_IO_ALLOW_MMAP`, Linux 6.6).
    direct_reads: bool,
    /// The kernel maps files opened for direct I/O shared (`FUSE_DIRECT_IO_ALLOW_MMAP`,
    /// negotiated in `init`); without it a read-write open keeps the page cache.
    direct_mmap: bool,
}

/// The smallest file a read-only open serves past the page cache: one extent. A smaller
/// file is read whole in one request through the page cache anyway.
const DIRECT_READ_MIN: u64 = dfs_engine::meta::state::EXTENT_BYTES_MAX;

/// What the kernel may hold as dirty pages of one FUSE mount before it must write them
/// back: FUSE mounts get 1% of the dirty threshold (`dirty_bytes`, else `dirty_ratio`
/// percent of memory), strictly enforced. The engine buffers up to 16 MiB more.
fn kernel_dirty_allowance() -> u64 {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let number = |text: Option<String>| text.and_then(|t| t.trim().parse::<u64>().ok());
    let memory = read("/proc/meminfo")
        .and_then(|m| m.lines().find(|l| l.starts_with("MemTotal:")).map(str::to_owned))
        .and_then(|line| line.split_whitespace().nth(1).and_then(|kib| kib.parse::<u64>().ok()))
        .map_or(8 << 30, |kib| kib * 1024);
    let threshold = match number(read("/proc/sys/vm/dirty_bytes")) {
        Some(bytes) if bytes > 0 => bytes,
        _ => memory / 100 * number(read("/proc/sys/vm/dirty_ratio")).unwrap_or(20),
    };
    threshold / 100 + (16 << 20)
}

/// The errno for an engine error: the single place errors cross the FUSE boundary.
pub fn errno(error: &dfs_engine::Error) -> Errno {
    Errno::from_i32(error.errno())
}

fn reply_entry(reply: ReplyEntry, result: dfs_engine::Result<Attr>) {
    match result {
        Ok(attr) => reply.entry(&TTL, &file_attr(&attr), Generation(0)),
        Err(e) => reply.error(errno(&e)),
    }
}

fn reply_empty(reply: ReplyEmpty, result: dfs_engine::Result<()>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(&e)),
    }
}

fn system_time(time: WallTime) -> SystemTime {
    if time.secs >= 0 {
        UNIX_EPOCH + Duration::new(time.secs as u64, time.nanos)
    } else {
        UNIX_EPOCH - Duration::from_secs(time.secs.unsigned_abs())
    }
}

fn wall_time(time: SystemTime) -> WallTime {
    match time.duration_since(UNIX_EPOCH) {
        Ok(d) => WallTime { secs: d.as_secs() as i64, nanos: d.subsec_nanos() },
        Err(e) => WallTime { secs: -(e.duration().as_secs() as i64), nanos: 0 },
    }
}

fn file_type(kind: InodeKind) -> FileType {
    match kind {
        InodeKind::File => FileType::RegularFile,
        InodeKind::Directory => FileType::Directory,
        InodeKind::Symlink => FileType::Symlink,
        InodeKind::Fifo => FileType::NamedPipe,
        InodeKind::Socket => FileType::Socket,
        InodeKind::CharDevice => FileType::CharDevice,
        InodeKind::BlockDevice => FileType::BlockDevice,
    }
}

fn file_attr(attr: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(attr.ino.0),
        size: attr.size,
        // In 512-byte units, of whole 4 KiB blocks, as ext4 counts them.
        blocks: attr.allocated_bytes.div_ceil(BLOCK_BYTES) * (BLOCK_BYTES / 512),
        atime: system_time(attr.atime),
        mtime: system_time(attr.mtime),
        ctime: system_time(attr.ctime),
        crtime: system_time(attr.ctime),
        kind: file_type(attr.kind),
        perm: (attr.mode & 0o7777) as u16,
        nlink: attr.nlink,
        uid: attr.uid,
        gid: attr.gid,
        // The kernel's `new_encode_dev` form, which fits 32 bits for every device
        // number Linux hands out (12-bit major, 20-bit minor).
        rdev: attr.rdev as u32,
        blksize: BLOCK_BYTES as u32,
        flags: 0,
    }
}

/// The attributes of a negative entry: nodeid 0, which the kernel reads as "no such
/// name" (the rest is not looked at).
fn negative_entry() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: BLOCK_BYTES as u32,
        flags: 0,
    }
}

/// Answers a `getxattr`/`listxattr` whose reply is `value`: its size when asked for the
/// size, `ERANGE` when the caller's buffer is too small.
fn reply_xattr(reply: ReplyXattr, size: u32, value: dfs_engine::Result<Vec<u8>>) {
    match value {
        Ok(value) if size == 0 => reply.size(value.len() as u32),
        Ok(value) if (size as usize) < value.len() => reply.error(Errno::ERANGE),
        Ok(value) => reply.data(&value),
        Err(e) => reply.error(errno(&e)),
    }
}

/// Most directory entries one `readdir` request prepares; a reply holds fewer.
const LISTING_ENTRIES_MAX: usize = 1024;

/// One entry of a listing and the position to resume after it.
struct Listed {
    next: u64,
    ino: Ino,
    kind: InodeKind,
    name: Vec<u8>,
}

/// The creator of a new inode. The engine applies the umask, unless the directory's
/// default ACL decides the bits instead (the kernel leaves both to a filesystem that
/// supports ACLs).
fn owner(req: &Request, mode: u32, umask: u32) -> Owner {
    Owner { mode: mode & 0o7777, uid: req.uid(), gid: req.gid(), umask: umask & 0o777 }
}

/// What a `setattr` the kernel sends under `FUSE_HANDLE_KILLPRIV_V2` asks of the
/// set-user-ID and set-group-ID bits, which the kernel then leaves to the filesystem:
/// a change of owner (`chown`, whose ids may be unchanged: then, under the writeback
/// cache, ctime alone arrives), a truncation, or nothing at all. Nothing at all is the
/// kernel's own "drop privileges" before a write, an allocation or a copy into a file
/// that has them — which it asks only of an unprivileged caller, for whom a change of
/// contents and of owner drop the same bits — or, without the writeback cache (the
/// kernel then sends no times it keeps), a `chown` to the same ids, which drops them
/// for root too. An explicit mode (`chmod`) is the caller's to set.
fn privilege_change(changes: &SetAttr, writeback_cache: bool) -> Option<PrivilegeChange> {
    let SetAttr { mode, uid, gid, size, atime, mtime, ctime } = changes;
    if mode.is_some() {
        None
    } else if uid.is_some() || gid.is_some() {
        Some(PrivilegeChange::Owner)
    } else if size.is_some() {
        Some(PrivilegeChange::Contents)
    } else if atime.is_some() || mtime.is_some() {
        None
    } else if ctime.is_some() || !writeback_cache {
        Some(PrivilegeChange::Owner)
    } else {
        Some(PrivilegeChange::Contents)
    }
}

/// The mode `ino` keeps once `change` by the caller of `req` has dropped what it drops
/// (see `dropped_privileges`); `None` when nothing is dropped or the inode is gone (the
/// change itself then answers). Root stands for `CAP_FSETID`, as the kernel's requests
/// carry no capabilities.
fn mode_without_privileges(pool: &Pool, req: &Request, ino: Ino, change: PrivilegeChange) -> Option<u32> {
    let attr = pool.getattr(ino).ok()?;
    if attr.mode & (libc::S_ISUID | libc::S_ISGID) == 0 {
        return None;
    }
    let in_group = req.gid() == attr.gid || supplementary_groups(req.pid()).contains(&attr.gid);
    let caller = PrivilegeCaller { privileged: req.uid() == 0, in_group };
    let dropped = dropped_privileges(attr.kind, attr.mode, change, caller);
    (dropped != 0).then_some(attr.mode & 0o7777 & !dropped)
}

/// The supplementary groups of process `pid` (the kernel's request names only its
/// filesystem uid and gid), from `/proc`; none when it cannot be read (the process
/// has gone), which drops a set-group-ID bit rather than keep one wrongly.
fn supplementary_groups(pid: u32) -> Vec<u32> {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return Vec::new();
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("Groups:"))
        .map(|groups| groups.split_whitespace().filter_map(|g| g.parse().ok()).collect())
        .unwrap_or_default()
}

impl DynamicFs {
    /// Serves `pool`.
    pub fn new(pool: Pool) -> Self {
        Self::shared(Arc::new(Mutex::new(pool)))
    }

    /// Serves a pool that others (the daemon's control socket) use too.
    pub fn shared(pool: Arc<Mutex<Pool>>) -> Self {
        Self {
            pool,
            atime: true,
            writeback_cache: false,
            direct_below_free: 4 * kernel_dirty_allowance(),
            no_opendir: false,
            direct_reads: true,
            direct_mmap: false,
        }
    }

    /// How a file opened with `flags` is served. A read-only open of a file of at least
    /// one extent goes past the kernel's page cache, as mergerfs serves every file with
    /// `cache.files=off`, when the kernel allows shared
    /// mappings of such opens (`FUSE_DIRECT_IO_ALLOW_MMAP`): a cached read copies each
    /// page into the page cache and out again, while a direct one lands in the reader's
    /// buffer, and the engine reads ahead and caches extents itself. A 1 GiB read with
    /// 1 MiB reads, caches dropped, went from 1.6–1.7 to 1.8–2.0 GB/s on one pool (dd's
    /// own CPU 0.20 s to 0.02 s); with 128 KiB reads (`cp`, `cat`) from 1.5 to 2.1. The
    /// cost falls on small reads, each now a round trip: 16 KiB reads 1.4 → 1.0 GB/s,
    /// 4 KiB reads 1.4 → 0.46 (mergerfs 0.50), so `nodirect_reads` keeps the page cache
    /// for them. Before a direct read the kernel writes back the range's dirty pages
    /// (a shared mapping's, or the writeback cache's), so it sees every write. A
    /// writable open pays for the page cache on every write:
    /// - Without the writeback cache every `write(2)` reaches the engine anyway, so a
    ///   write-only open goes direct, as mergerfs serves every file. A cached write
    ///   copies each page into the page cache first, and the kernel's privilege check
    ///   before it asks for `security.capability` whenever the inode's attributes were
    ///   refreshed — once per new file (`HANDLE_KILLPRIV_V2` spares direct writes only).
    ///   Measured on one pool, builds alternating: 1.11× the small files a second (10
    ///   pairs); a 1.5 GiB `dd` as fast (6 pairs), with a third of its own CPU. The
    ///   kernel drops cached pages a direct write overlaps, so readers and mappings of
    ///   the file see it.
    /// - A read-write open goes direct too, whatever the file's size, wherever reads go
    ///   direct at all (`direct_reads`, which holds only where the kernel maps direct-I/O
    ///   files shared: a database maps its files). A cached one also splits a write at
    ///   each page it covers only in part (a rollback journal's 4 KiB pages sit at 516
    ///   bytes past a boundary) and asks for `security.capability` after every
    ///   attribute refresh: a SQLite transaction in the default journal mode took 33
    ///   round trips, direct 27 (its reads, few, each one more). Its median latency,
    ///   two pools mounted side by side and taken in turn 100 transactions at a time:
    ///   2,325–2,596 µs against 2,421–2,749 (6 runs of 7 faster). A small read through
    ///   such a descriptor is a round trip, as through mergerfs.
    /// - Through the writeback cache a `write(2)` returns before the engine sees it, so
    ///   on a nearly full pool a write the pool cannot take would fail only at close,
    ///   after the kernel had already grown the file's size (which, under the writeback
    ///   cache, only the kernel sets). So while free space under the file's policy is
    ///   within a few times what the kernel may cache, a writable open goes direct:
    ///   each `write(2)` reaches the engine, which refuses with `ENOSPC` what it cannot
    ///   store, and the file stays as the last successful write left it. (The kernel
    ///   then leaves the file's mtime and ctime as they were: under the writeback cache
    ///   it keeps a regular file's times itself, ignoring the daemon's, and its direct
    ///   write path never sets them. So only a nearly full pool mixes the two.)
    fn open_flags(&self, pool: &Pool, ino: Ino, flags: i32) -> FopenFlags {
        let access = flags & libc::O_ACCMODE;
        if access == libc::O_RDONLY {
            return if self.direct_reads && pool.current_size(ino) >= DIRECT_READ_MIN {
                FopenFlags::FOPEN_DIRECT_IO
            } else {
                FopenFlags::empty()
            };
        }
        let write_only = access == libc::O_WRONLY;
        if !self.writeback_cache {
            return if write_only || self.direct_reads { FopenFlags::FOPEN_DIRECT_IO } else { FopenFlags::empty() };
        }
        if !(write_only || self.direct_mmap) {
            return FopenFlags::empty();
        }
        let free = pool.space_for(pool.state().effective_policy(ino)).1;
        if free < self.direct_below_free {
            tracing::debug!(free, "nearly full: writes to this file bypass the kernel's cache");
            FopenFlags::FOPEN_DIRECT_IO
        } else {
            FopenFlags::empty()
        }
    }

    /// Whether read-only opens of large files bypass the page cache (`direct_reads`, the
    /// default; `nodirect_reads` keeps it for every read). See `open_flags`.
    pub fn with_direct_reads(mut self, direct_reads: bool) -> Self {
        self.direct_reads = direct_reads;
        self
    }

    /// Whether to ask the kernel for its writeback cache (`-o writeback_cache`; off by
    /// default).
    pub fn with_writeback_cache(mut self, writeback_cache: bool) -> Self {
        self.writeback_cache = writeback_cache;
        self
    }

    /// Whether reads and listings record access times (`relatime`, the default) or not
    /// (`noatime`).
    pub fn with_atime(mut self, atime: bool) -> Self {
        self.atime = atime;
        self
    }

    /// Records an access of `ino` in its atime, as `relatime` does, unless `noatime`.
    fn accessed(&self, pool: &mut Pool, ino: Ino) {
        if self.atime {
            if let Err(error) = pool.touch_atime(ino) {
                tracing::debug!(%error, "access time not recorded");
            }
        }
    }

    /// Locks the pool. A handler takes its result out and drops the guard before it
    /// answers: the answer is a system call, and the requester's next request (a small
    /// file's create, stat and unlink come one after another) lands meanwhile on another
    /// request thread, which would wait for the lock and be woken again.
    fn pool(&self) -> MutexGuard<'_, Pool> {
        dfs_engine::pool::lock(&self.pool)
    }

    /// The entries of directory `ino` from position `offset` on (0 is `.`, 1 is `..`,
    /// then the names in order), each with the position to resume after it; at most
    /// `LISTING_ENTRIES_MAX`, more than one reply holds. A listing from the start is a
    /// read of the directory (its access time, as `relatime` keeps it).
    fn listing(&self, pool: &mut Pool, ino: Ino, offset: u64) -> dfs_engine::Result<Vec<Listed>> {
        let skip = usize::try_from(offset.saturating_sub(2)).unwrap_or(usize::MAX);
        let names = pool.readdir_window(ino, skip, LISTING_ENTRIES_MAX)?;
        let mut out = Vec::with_capacity(names.len() + 2);
        if offset == 0 {
            out.push(Listed { next: 1, ino, kind: InodeKind::Directory, name: b".".to_vec() });
            self.accessed(pool, ino);
        }
        if offset <= 1 {
            let parent = pool.parent_of(ino).unwrap_or(Ino::ROOT);
            out.push(Listed { next: 2, ino: parent, kind: InodeKind::Directory, name: b"..".to_vec() });
        }
        for (position, entry) in (skip..).zip(names) {
            out.push(Listed { next: position as u64 + 3, ino: entry.ino, kind: entry.kind, name: entry.name });
        }
        Ok(out)
    }

    fn time(&self, pool: &Pool, time: Option<TimeOrNow>) -> Option<WallTime> {
        time.map(|t| match t {
            TimeOrNow::SpecificTime(t) => wall_time(t),
            TimeOrNow::Now => pool.now(),
        })
    }
}

/// The span of one FUSE request: every log line the request causes, in the engine too,
/// carries the kernel's request id (`--log-format json` puts it on each line).
fn request_span(op: &'static str, req: &Request) -> tracing::span::EnteredSpan {
    let span = tracing::info_span!("fuse", op, request_id = req.unique().0, uid = req.uid(), pid = req.pid());
    let entered = span.entered();
    tracing::debug!("request");
    entered
}

impl Filesystem for DynamicFs {
    fn init(&mut self, req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _span = request_span("init", req);
        // Whole extents per request. The kernel's page cache serves reads (read-only
        // opens of large files bypass it, and read-write opens: see `open_flags`);
        // writes go through it to the engine (write-only and read-write opens bypass
        // it), each `write(2)` answered once the engine holds it, unless the mount asked
        // for the writeback cache. Under it writes return once cached and reach the
        // engine in large batches (random 4 KiB writes ran 2.8× mergerfs against 0.9×
        // without), but each new file costs two round trips more: a `GETXATTR` of `security.capability` on its first cached write, and a
        // `SETATTR` of the times the kernel then keeps, sent again at unlink (small
        // files ran 0.8× mergerfs against 1.0× without).
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        if self.writeback_cache {
            if let Err(missing) = config.add_capabilities(fuser::InitFlags::FUSE_WRITEBACK_CACHE) {
                tracing::info!(?missing, "the kernel offers no writeback cache; writes go through one by one");
                self.writeback_cache = false;
            }
        }
        // ACLs checked by the kernel from our xattrs; listings that always carry
        // attributes (not `READDIRPLUS_AUTO`, under which the kernel asks for them only
        // in a directory's first reply), so `ls -l`, `find` and `du` need no lookup per
        // entry.
        // DONT_MASK: the umask arrives with each create and the engine applies it (or,
        // under a default ACL, not), as an ACL-capable filesystem must.
        // HANDLE_KILLPRIV_V2: this filesystem drops set-user-ID and set-group-ID bits
        // itself (see `privilege_change`), so the kernel need not ask for
        // `security.capability` before every write to learn whether to.
        let wanted = fuser::InitFlags::FUSE_POSIX_ACL
            | fuser::InitFlags::FUSE_DONT_MASK
            | fuser::InitFlags::FUSE_DO_READDIRPLUS
            | fuser::InitFlags::FUSE_HANDLE_KILLPRIV_V2;
        if let Err(missing) = config.add_capabilities(wanted) {
            tracing::info!(?missing, "the kernel lacks some capabilities; ACLs or readdirplus stay off");
            let _ = config.add_capabilities(wanted & !missing);
        }
        self.no_opendir = config.add_capabilities(fuser::InitFlags::FUSE_NO_OPENDIR_SUPPORT).is_ok();
        // Direct I/O serves large read-only opens, read-write ones and, under the
        // writeback cache, writable opens on a nearly full pool; each must still map shared.
        let direct_mmap = (self.direct_reads || self.writeback_cache)
            && config.add_capabilities(fuser::InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP).is_ok();
        if self.direct_reads && !direct_mmap {
            tracing::info!("the kernel cannot map files opened for direct I/O; reads keep the page cache");
            self.direct_reads = false;
        }
        self.direct_mmap = direct_mmap;
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _span = request_span("lookup", req);
        let result = self.pool().lookup(Ino(parent.0), name.as_bytes());
        match result {
            // A name that is not there is cached as such for `TTL`, as names that are:
            // nodeid 0 is the kernel's negative entry. A program that looks for the same
            // missing file again and again (a database's journal before each transaction,
            // a compiler's include path) asks the daemon once a second, not each time;
            // a create, link or rename through this mount replaces the negative entry.
            Err(e) if errno(&e) == Errno::ENOENT => reply.entry(&TTL, &negative_entry(), Generation(0)),
            result => reply_entry(reply, result),
        }
    }

    fn getattr(&self, req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _span = request_span("getattr", req);
        let result = self.pool().getattr(Ino(ino.0));
        match result {
            Ok(attr) => reply.attr(&TTL, &file_attr(&attr)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let _span = request_span("setattr", req);
        let mut pool = self.pool();
        let mut changes = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: self.time(&pool, atime),
            mtime: self.time(&pool, mtime),
            ctime: ctime.map(wall_time),
        };
        if let Some(change) = privilege_change(&changes, self.writeback_cache) {
            changes.mode = mode_without_privileges(&pool, req, Ino(ino.0), change);
        }
        let result = pool.setattr(Ino(ino.0), &changes);
        drop(pool);
        match result {
            Ok(attr) => reply.attr(&TTL, &file_attr(&attr)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        let _span = request_span("readlink", req);
        let result = self.pool().readlink(Ino(ino.0));
        match result {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn mknod(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, rdev: u32, reply: ReplyEntry) {
        let _span = request_span("mknod", req);
        let owner = owner(req, mode, umask);
        let result = self.pool().mknod(Ino(parent.0), name.as_bytes(), mode, u64::from(rdev), owner);
        reply_entry(reply, result)
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let _span = request_span("mkdir", req);
        let result = self.pool().mkdir(Ino(parent.0), name.as_bytes(), owner(req, mode, umask));
        reply_entry(reply, result)
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _span = request_span("unlink", req);
        let result = self.pool().unlink(Ino(parent.0), name.as_bytes());
        reply_empty(reply, result)
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _span = request_span("rmdir", req);
        let result = self.pool().rmdir(Ino(parent.0), name.as_bytes());
        reply_empty(reply, result)
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let _span = request_span("symlink", req);
        let owner = owner(req, 0o777, 0);
        let result = self.pool().symlink(Ino(parent.0), link_name.as_bytes(), target.as_os_str().as_bytes(), owner);
        reply_entry(reply, result)
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let _span = request_span("rename", req);
        let mode = if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            RenameMode::Exchange
        } else if flags.contains(RenameFlags::RENAME_NOREPLACE) {
            RenameMode::NoReplace
        } else if flags.is_empty() {
            RenameMode::Replace
        } else {
            return reply.error(Errno::EINVAL); // RENAME_WHITEOUT: overlay filesystems only
        };
        let result = self.pool().rename(Ino(parent.0), name.as_bytes(), Ino(newparent.0), newname.as_bytes(), mode);
        reply_empty(reply, result)
    }

    fn link(&self, req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let _span = request_span("link", req);
        let result = self.pool().link(Ino(ino.0), Ino(newparent.0), newname.as_bytes());
        reply_entry(reply, result)
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _span = request_span("open", req);
        let mut pool = self.pool();
        let opened = pool.open_file(Ino(ino.0)).map(|fh| (fh, self.open_flags(&pool, Ino(ino.0), flags.0)));
        drop(pool);
        match opened {
            Ok((fh, open)) => reply.opened(FileHandle(fh), open),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let _span = request_span("read", req);
        let read = dfs_engine::data::fetch::read_shared(&self.pool, fh.0, offset, size as usize);
        match read {
            Ok(data) => {
                // A read on a write-only descriptor is the kernel filling a page it
                // is about to write into: not an access (ext4 does not count it).
                if !matches!(flags.acc_mode(), fuser::OpenAccMode::O_WRONLY) {
                    self.accessed(&mut self.pool(), Ino(ino.0));
                }
                reply.data(&data)
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let _span = request_span("write", req);
        if write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID) {
            let mut pool = self.pool();
            if let Some(mode) = mode_without_privileges(&pool, req, Ino(ino.0), PrivilegeChange::Contents) {
                let changes = SetAttr { mode: Some(mode), ..SetAttr::default() };
                if let Err(e) = pool.setattr(Ino(ino.0), &changes) {
                    return reply.error(errno(&e));
                }
            }
        }
        match dfs_engine::data::files::write_shared(&self.pool, fh.0, offset, data) {
            Ok(wrote) => {
                reply.written(wrote.bytes as u32);
                if wrote.flush_due {
                    // Answered: the writer goes on while this thread stores what is due.
                    dfs_engine::data::files::flush_behind(&self.pool, fh.0);
                }
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn flush(&self, req: &Request, _ino: INodeNo, fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        let _span = request_span("flush", req);
        reply_empty(reply, dfs_engine::data::files::flush_shared(&self.pool, fh.0))
    }

    fn release(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _span = request_span("release", req);
        let released = dfs_engine::data::files::settled(&self.pool, fh.0).release(fh.0);
        reply_empty(reply, released)
    }

    fn destroy(&mut self) {
        let mut pool = self.pool();
        if let Err(error) = pool.flush_all().and_then(|()| pool.sync()) {
            tracing::error!(%error, "flushing at unmount failed");
        }
    }

    fn fsyncdir(&self, req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let _span = request_span("fsyncdir", req);
        reply_empty(reply, dfs_engine::data::shared_barrier::sync_shared(&self.pool))
    }

    fn fsync(&self, req: &Request, _ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let _span = request_span("fsync", req);
        reply_empty(reply, dfs_engine::data::files::fsync_shared(&self.pool, fh.0))
    }

    fn opendir(&self, req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _span = request_span("opendir", req);
        if self.no_opendir {
            reply.error(Errno::ENOSYS);
        } else {
            reply.opened(FileHandle(0), FopenFlags::empty());
        }
    }

    fn readdir(&self, req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let _span = request_span("readdir", req);
        let entries = match self.listing(&mut self.pool(), Ino(ino.0), offset) {
            Ok(entries) => entries,
            Err(e) => return reply.error(errno(&e)),
        };
        for entry in entries {
            if reply.add(INodeNo(entry.ino.0), entry.next, file_type(entry.kind), OsStr::from_bytes(&entry.name)) {
                break;
            }
        }
        reply.ok();
    }

    /// Every listing carries attributes (the kernel is not offered `READDIRPLUS_AUTO`):
    /// `find`, `du` and `ls -l` then need no lookup per entry. Attributes are read only
    /// for the entries the reply holds.
    fn readdirplus(&self, req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        let _span = request_span("readdirplus", req);
        let mut pool = self.pool();
        let entries = match self.listing(&mut pool, Ino(ino.0), offset) {
            Ok(entries) => entries,
            Err(e) => return reply.error(errno(&e)),
        };
        for entry in entries {
            let attr = match pool.getattr(entry.ino) {
                Ok(attr) => file_attr(&attr),
                Err(e) => return reply.error(errno(&e)),
            };
            if reply.add(attr.ino, entry.next, OsStr::from_bytes(&entry.name), &TTL, &attr, Generation(0)) {
                break;
            }
        }
        drop(pool);
        reply.ok();
    }

    fn statfs(&self, req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let _span = request_span("statfs", req);
        let stat = self.pool().statfs();
        reply.statfs(
            stat.total_bytes / BLOCK_BYTES,
            stat.free_bytes / BLOCK_BYTES,
            stat.free_bytes / BLOCK_BYTES,
            stat.files.saturating_add(stat.files_free),
            stat.files_free,
            BLOCK_BYTES as u32,
            dfs_engine::data::namespace::NAME_BYTES_MAX as u32,
            BLOCK_BYTES as u32,
        );
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let _span = request_span("getxattr", req);
        let result = self.pool().getxattr(Ino(ino.0), name.as_bytes());
        reply_xattr(reply, size, result)
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        position: u32,
        reply: ReplyEmpty,
    ) {
        let _span = request_span("setxattr", req);
        let Some(mode) = SetMode::from_flags(flags).filter(|_| position == 0) else {
            return reply.error(Errno::EINVAL);
        };
        let result = self.pool().setxattr(Ino(ino.0), name.as_bytes(), value, mode);
        reply_empty(reply, result)
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _span = request_span("listxattr", req);
        // trusted.* is listed to the superuser only, as Linux lists it to CAP_SYS_ADMIN.
        let names = self.pool().listxattr(Ino(ino.0), req.uid() == 0);
        let list = names.map(|names| {
            names.into_iter().flat_map(|mut name| {
                name.push(0);
                name
            })
        });
        reply_xattr(reply, size, list.map(Iterator::collect))
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _span = request_span("removexattr", req);
        let result = self.pool().removexattr(Ino(ino.0), name.as_bytes());
        reply_empty(reply, result)
    }

    fn fallocate(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let _span = request_span("fallocate", req);
        let result = self.pool().fallocate(fh.0, offset, length, mode);
        reply_empty(reply, result)
    }

    fn lseek(&self, req: &Request, _ino: INodeNo, fh: FileHandle, offset: i64, whence: i32, reply: ReplyLseek) {
        let _span = request_span("lseek", req);
        let seek = match whence {
            libc::SEEK_DATA => Seek::Data,
            libc::SEEK_HOLE => Seek::Hole,
            // SEEK_SET/CUR/END never reach a filesystem: the kernel keeps file offsets.
            _ => return reply.error(Errno::EINVAL),
        };
        let Ok(offset) = u64::try_from(offset) else {
            return reply.error(Errno::ENXIO);
        };
        let result = self.pool().seek_data_hole(fh.0, offset, seek);
        match result {
            Ok(position) => reply.offset(position as i64),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn copy_file_range(
        &self,
        req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        let _span = request_span("copy_file_range", req);
        if !flags.is_empty() {
            return reply.error(Errno::EINVAL);
        }
        let result = self.pool().copy_range(fh_in.0, offset_in, fh_out.0, offset_out, len);
        match result {
            // At most COPY_BYTES_MAX (16 MiB) per call: fits the reply's 32 bits.
            Ok(copied) => reply.written(copied as u32),
            Err(e) => reply.error(errno(&e)),
        }
    }

    /// No ioctl is served (FS_IOC_GETFLAGS, FIEMAP…): `ENOTTY`, as a filesystem answers
    /// one it does not know, so tools fall back quietly — and so does the log.
    #[allow(clippy::too_many_arguments)]
    fn ioctl(
        &self,
        req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        let _span = request_span("ioctl", req);
        tracing::debug!(cmd = format_args!("{cmd:#x}"), "ioctl not served: ENOTTY");
        reply.error(Errno::ENOTTY);
    }

    fn access(&self, req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        let _span = request_span("access", req);
        reply.ok(); // `default_permissions`: the kernel has already checked
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let _span = request_span("create", req);
        let mut pool = self.pool();
        let attr = match pool.create(Ino(parent.0), name.as_bytes(), owner(req, mode, umask)) {
            Ok(attr) => attr,
            Err(e) => return reply.error(errno(&e)),
        };
        let opened = pool.open_file(attr.ino).map(|fh| (fh, self.open_flags(&pool, attr.ino, flags)));
        drop(pool);
        match opened {
            Ok((fh, open)) => reply.created(&TTL, &file_attr(&attr), Generation(0), FileHandle(fh), open),
            Err(e) => reply.error(errno(&e)),
        }
    }
}
