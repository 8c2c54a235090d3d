//! The FUSE frontend: `DynamicFs` implements `fuser::Filesystem` over the engine's
//! namespace API, nothing else. Each method makes one engine call and maps its error to
//! errno in one place (`errno`); permission checks are the kernel's
//! (`default_permissions`). The engine sits behind one mutex: requests from several FUSE
//! threads are served one at a time by the engine, which does its own parallel disk I/O.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dfs_engine::clock::WallTime;
use dfs_engine::namespace::{Attr, Owner, RenameMode, SetAttr};
use dfs_engine::{Ino, InodeKind, Pool};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, KernelConfig, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

/// How long the kernel may cache attributes and entries. Only this process changes the
/// pool while it is mounted, so caching is safe; short keeps `df`/`stat` fresh.
const TTL: Duration = Duration::from_secs(1);
/// The extended attribute holding an inode's redundancy policy (bcachefs's convention).
/// Reading it gives the effective policy; setting it on a directory sets what new
/// children inherit, on a file that holds no data yet its own policy. It is the only
/// attribute stored: others answer ENODATA / ENOTSUP.
pub const POLICY_XATTR: &str = "user.dynamicfs.policy";
/// Block size reported to `stat` and `statfs`.
const BLOCK_BYTES: u32 = 4096;

/// The mounted filesystem.
pub struct DynamicFs {
    pool: Arc<Mutex<Pool>>,
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
    }
}

fn file_attr(attr: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(attr.ino.0),
        size: attr.size,
        blocks: attr.allocated_bytes.div_ceil(512),
        atime: system_time(attr.atime),
        mtime: system_time(attr.mtime),
        ctime: system_time(attr.ctime),
        crtime: system_time(attr.ctime),
        kind: file_type(attr.kind),
        perm: (attr.mode & 0o7777) as u16,
        nlink: attr.nlink,
        uid: attr.uid,
        gid: attr.gid,
        rdev: 0,
        blksize: BLOCK_BYTES,
        flags: 0,
    }
}

/// How long a read waits for another request's fetch of an extent it needs before
/// reading it itself.
const FETCH_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(5);

fn owner(req: &Request, mode: u32, umask: u32) -> Owner {
    Owner { mode: mode & !umask & 0o7777, uid: req.uid(), gid: req.gid() }
}

impl DynamicFs {
    /// Serves `pool`.
    pub fn new(pool: Pool) -> Self {
        Self::shared(Arc::new(Mutex::new(pool)))
    }

    /// Serves a pool that others (the daemon's control socket) use too.
    pub fn shared(pool: Arc<Mutex<Pool>>) -> Self {
        Self { pool }
    }

    fn pool(&self) -> MutexGuard<'_, Pool> {
        // A panic in one request must not take every later request down with it.
        self.pool.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
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
        // Whole extents per request, and the kernel's page cache in front of the engine:
        // writes return once cached and reach the engine in large batches, several in
        // flight, and close and fsync write them back first.
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        if let Err(missing) = config.add_capabilities(fuser::InitFlags::FUSE_WRITEBACK_CACHE) {
            tracing::info!(?missing, "the kernel offers no writeback cache; writes go through one by one");
        }
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _span = request_span("lookup", req);
        reply_entry(reply, self.pool().lookup(Ino(parent.0), name.as_bytes()))
    }

    fn getattr(&self, req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _span = request_span("getattr", req);
        match self.pool().getattr(Ino(ino.0)) {
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
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let _span = request_span("setattr", req);
        let mut pool = self.pool();
        let changes = SetAttr { mode, uid, gid, size, atime: self.time(&pool, atime), mtime: self.time(&pool, mtime) };
        match pool.setattr(Ino(ino.0), &changes) {
            Ok(attr) => reply.attr(&TTL, &file_attr(&attr)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        let _span = request_span("readlink", req);
        match self.pool().readlink(Ino(ino.0)) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        let _span = request_span("mknod", req);
        reply_entry(reply, self.pool().mknod(Ino(parent.0), name.as_bytes(), mode, owner(req, mode, umask)))
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let _span = request_span("mkdir", req);
        reply_entry(reply, self.pool().mkdir(Ino(parent.0), name.as_bytes(), owner(req, mode, umask)))
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _span = request_span("unlink", req);
        reply_empty(reply, self.pool().unlink(Ino(parent.0), name.as_bytes()))
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _span = request_span("rmdir", req);
        reply_empty(reply, self.pool().rmdir(Ino(parent.0), name.as_bytes()))
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let _span = request_span("symlink", req);
        let owner = owner(req, 0o777, 0);
        reply_entry(
            reply,
            self.pool().symlink(Ino(parent.0), link_name.as_bytes(), target.as_os_str().as_bytes(), owner),
        )
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
        reply_empty(
            reply,
            self.pool().rename(Ino(parent.0), name.as_bytes(), Ino(newparent.0), newname.as_bytes(), mode),
        )
    }

    fn link(&self, req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let _span = request_span("link", req);
        reply_entry(reply, self.pool().link(Ino(ino.0), Ino(newparent.0), newname.as_bytes()))
    }

    fn open(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _span = request_span("open", req);
        match self.pool().open_file(Ino(ino.0)) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn read(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let _span = request_span("read", req);
        // Fetch what the read needs with the engine unlocked, so other requests (and
        // other fetches) proceed meanwhile; the read itself then copies from the cache.
        // (Bound first: a guard in the match scrutinee would live through the arms.)
        let plan = self.pool().plan_read(fh.0, offset, size as usize);
        match plan {
            Ok(plan) => {
                if let Some(ahead) = plan.ahead {
                    let pool = self.pool.clone();
                    // The read-ahead belongs to this request: its log lines carry its id.
                    let span = tracing::Span::current();
                    std::thread::spawn(move || {
                        let _span = span.enter();
                        let fetched = ahead.run();
                        pool.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).book_fetched(fetched);
                    });
                }
                if let Some(fetch) = plan.fetch {
                    let fetched = fetch.run();
                    self.pool().book_fetched(fetched);
                }
                let started = std::time::Instant::now();
                while self.pool().fetching_any(&plan.wait_for) && started.elapsed() < FETCH_WAIT_MAX {
                    std::thread::sleep(std::time::Duration::from_micros(200));
                }
            }
            Err(e) => return reply.error(errno(&e)),
        }
        match self.pool().read(fh.0, offset, size as usize) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn write(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let _span = request_span("write", req);
        match self.pool().write(fh.0, offset, data) {
            Ok(written) => reply.written(written as u32),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn flush(&self, req: &Request, _ino: INodeNo, fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        let _span = request_span("flush", req);
        reply_empty(reply, self.pool().flush(fh.0))
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
        reply_empty(reply, self.pool().release(fh.0))
    }

    fn destroy(&mut self) {
        let mut pool = self.pool();
        if let Err(error) = pool.flush_all().and_then(|()| pool.sync()) {
            tracing::error!(%error, "flushing at unmount failed");
        }
    }

    fn fsyncdir(&self, req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let _span = request_span("fsyncdir", req);
        reply_empty(reply, self.pool().sync())
    }

    fn fsync(&self, req: &Request, _ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let _span = request_span("fsync", req);
        reply_empty(reply, self.pool().fsync(fh.0))
    }

    fn readdir(&self, req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let _span = request_span("readdir", req);
        let pool = self.pool();
        let entries = match pool.readdir(Ino(ino.0)) {
            Ok(entries) => entries,
            Err(e) => return reply.error(errno(&e)),
        };
        let parent = pool.parent_of(Ino(ino.0)).unwrap_or(Ino::ROOT);
        let dots =
            [(ino, FileType::Directory, b".".to_vec()), (INodeNo(parent.0), FileType::Directory, b"..".to_vec())];
        let all = dots.into_iter().chain(entries.into_iter().map(|e| (INodeNo(e.ino.0), file_type(e.kind), e.name)));
        for (i, (child, kind, name)) in all.enumerate().skip(offset as usize) {
            if reply.add(child, i as u64 + 1, kind, OsStr::from_bytes(&name)) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let _span = request_span("statfs", req);
        let stat = self.pool().statfs();
        let block = u64::from(BLOCK_BYTES);
        reply.statfs(
            stat.total_bytes / block,
            stat.free_bytes / block,
            stat.free_bytes / block,
            stat.files,
            u64::from(u32::MAX),
            BLOCK_BYTES,
            dfs_engine::namespace::NAME_BYTES_MAX as u32,
            BLOCK_BYTES,
        );
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: fuser::ReplyXattr) {
        let _span = request_span("getxattr", req);
        if name.as_bytes() != POLICY_XATTR.as_bytes() {
            return reply.error(Errno::ENODATA);
        }
        let value = match self.pool().getattr(Ino(ino.0)) {
            Ok(attr) => attr.policy.to_string().into_bytes(),
            Err(e) => return reply.error(errno(&e)),
        };
        match size {
            0 => reply.size(value.len() as u32),
            n if (n as usize) < value.len() => reply.error(Errno::ERANGE),
            _ => reply.data(&value),
        }
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let _span = request_span("setxattr", req);
        if name.as_bytes() != POLICY_XATTR.as_bytes() {
            return reply.error(Errno::ENOTSUP); // only the policy attribute is stored
        }
        let Some(policy) = std::str::from_utf8(value).ok().and_then(|v| v.trim().parse().ok()) else {
            return reply.error(Errno::EINVAL);
        };
        reply_empty(reply, self.pool().set_policy(Ino(ino.0), Some(policy)))
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: fuser::ReplyXattr) {
        let _span = request_span("listxattr", req);
        if let Err(e) = self.pool().getattr(Ino(ino.0)) {
            return reply.error(errno(&e));
        }
        let list = format!("{POLICY_XATTR}\0").into_bytes();
        match size {
            0 => reply.size(list.len() as u32),
            n if (n as usize) < list.len() => reply.error(Errno::ERANGE),
            _ => reply.data(&list),
        }
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _span = request_span("removexattr", req);
        if name.as_bytes() != POLICY_XATTR.as_bytes() {
            return reply.error(Errno::ENODATA);
        }
        reply_empty(reply, self.pool().set_policy(Ino(ino.0), None))
    }

    fn fallocate(
        &self,
        req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        let _span = request_span("fallocate", req);
        // Extents are copy-on-write: space cannot be reserved for later writes, so, like
        // ZFS, refuse; posix_fallocate then falls back to writing zeros (stored as holes).
        reply.error(Errno::EOPNOTSUPP);
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
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let _span = request_span("create", req);
        let mut pool = self.pool();
        let attr = match pool.create(Ino(parent.0), name.as_bytes(), owner(req, mode, umask)) {
            Ok(attr) => attr,
            Err(e) => return reply.error(errno(&e)),
        };
        match pool.open_file(attr.ino) {
            Ok(fh) => reply.created(&TTL, &file_attr(&attr), Generation(0), FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno(&e)),
        }
    }
}
