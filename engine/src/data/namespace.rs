//! The namespace API: POSIX-shaped operations on inodes and directory entries. The FUSE
//! frontend calls these one to one; the CLI resolves paths with `resolve`.
//!
//! Each operation validates against the committed state, then commits one transaction,
//! so it happens entirely or not at all. Permission checks are the kernel's
//! (`default_permissions`, and POSIX ACLs from `xattr`); the engine checks structure
//! (types, emptiness, cycles) and does what ext4 does on creation: a new inode takes its
//! directory's default ACL (or else the umask), and a setgid directory's group (and, for
//! a subdirectory, its setgid bit); `dropped_privileges` states which set-user-ID and
//! set-group-ID bits a change drops, as ext4 drops them. Special files (FIFOs, sockets, device nodes) are
//! names and attributes only: they hold no extents.

use std::collections::BTreeMap;

use crate::base::clock::WallTime;
use crate::base::error::{Error, Result};
use crate::base::policy::Policy;
use crate::meta::state::{Ino, Inode, InodeKind, MetaState, Op, Transaction};
use crate::pool::Pool;

/// Longest file name, in bytes.
pub const NAME_BYTES_MAX: usize = 255;
/// Most hard links to one file (ext4's `EXT4_LINK_MAX`); one more is `EMLINK`.
pub const LINKS_MAX: u32 = 65_000;

/// Attributes as a caller sees them (buffered writes included).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attr {
    pub ino: Ino,
    pub kind: InodeKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub size: u64,
    /// Bytes of data stored (before redundancy), for `st_blocks`.
    pub allocated_bytes: u64,
    pub atime: WallTime,
    pub mtime: WallTime,
    pub ctime: WallTime,
    /// The policy new data of this inode gets.
    pub policy: Policy,
    /// The device number of a device node; 0 otherwise.
    pub rdev: u64,
}

/// Attribute changes for `setattr`; `None` leaves a field alone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<WallTime>,
    pub mtime: Option<WallTime>,
    /// A ctime the kernel kept itself (its writeback cache times writes); otherwise any
    /// change sets ctime to now.
    pub ctime: Option<WallTime>,
}

/// One directory entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub ino: Ino,
    pub kind: InodeKind,
}

/// `rename` variants (Linux `renameat2` flags).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RenameMode {
    /// Replace the target if it exists.
    #[default]
    Replace,
    /// Fail with `Exists` if the target exists.
    NoReplace,
    /// Swap source and target atomically; both must exist.
    Exchange,
}

/// Filesystem-wide figures for `statfs`, under the pool default policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatFs {
    pub total_bytes: u64,
    pub free_bytes: u64,
    /// Inodes in use.
    pub files: u64,
    /// Inodes that could still be made. There is no inode table: an inode costs only
    /// metadata, so this is how many more files of one block each would fit.
    pub files_free: u64,
}

/// The block size `statfs` and `stat` report, and the unit of `StatFs::files_free`.
pub const BLOCK_BYTES: u64 = 4096;

/// Who creates an inode, and with which permission bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    /// The mode the caller asked for (`0o7777` bits), before the umask.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// The caller's umask: applied unless the directory has a default ACL, which then
    /// decides the bits instead (POSIX.1e).
    pub umask: u32,
}

/// What a change is, for which set-user-ID and set-group-ID bits it drops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrivilegeChange {
    /// `chown`, even to the ids the file already has.
    Owner,
    /// The data changes: a write, a truncation, an allocation, a copy into the file.
    Contents,
}

/// The caller of a change, as far as privilege dropping asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrivilegeCaller {
    /// Holds `CAP_FSETID` (root).
    pub privileged: bool,
    /// Belongs to the file's group (its own group or a supplementary one).
    pub in_group: bool,
}

/// The bits of `S_ISUID | S_ISGID` that `change` by `caller` drops from a file of `kind`
/// with `mode`, as Linux drops them on ext4: set-user-ID on every owner change and on a
/// contents change by an unprivileged caller; set-group-ID the same way when group
/// execute is set, and otherwise (the old mandatory-locking mark) only when an
/// unprivileged caller outside the file's group changes it. Directories keep both.
pub fn dropped_privileges(kind: InodeKind, mode: u32, change: PrivilegeChange, caller: PrivilegeCaller) -> u32 {
    if kind == InodeKind::Directory {
        return 0;
    }
    let applies = change == PrivilegeChange::Owner || !caller.privileged;
    let mut dropped = 0;
    if mode & libc::S_ISUID != 0 && applies {
        dropped |= libc::S_ISUID;
    }
    if mode & libc::S_ISGID != 0 {
        let marks_locking = mode & libc::S_IXGRP == 0;
        if if marks_locking { !caller.privileged && !caller.in_group } else { applies } {
            dropped |= libc::S_ISGID;
        }
    }
    debug_assert_eq!(dropped & !mode, 0, "only bits the mode has are dropped");
    dropped
}

fn display(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

fn check_name(name: &[u8]) -> Result<()> {
    if name.len() > NAME_BYTES_MAX {
        return Err(Error::NameTooLong(name.len()));
    }
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0) {
        return Err(Error::InvalidArgument(format!("'{}' is not a valid file name", display(name))));
    }
    Ok(())
}

/// Collects the inode changes of one operation and turns them into a transaction.
struct Change<'a> {
    state: &'a MetaState,
    inodes: BTreeMap<Ino, Inode>,
    removed: Vec<Ino>,
    entries: Vec<Op>,
}

impl<'a> Change<'a> {
    fn new(state: &'a MetaState) -> Self {
        Self { state, inodes: BTreeMap::new(), removed: Vec::new(), entries: Vec::new() }
    }

    fn inode(&mut self, ino: Ino) -> Result<&mut Inode> {
        if !self.inodes.contains_key(&ino) {
            let inode = self.state.inodes.get(&ino).ok_or_else(|| Error::NotFound(format!("inode {}", ino.0)))?;
            self.inodes.insert(ino, inode.clone());
        }
        self.inodes.get_mut(&ino).ok_or_else(|| Error::NotFound(format!("inode {}", ino.0)))
    }

    fn into_transaction(self) -> Transaction {
        let mut ops = self.entries;
        for (ino, inode) in self.inodes {
            if !self.removed.contains(&ino) {
                ops.push(Op::PutInode(inode));
            }
        }
        ops.extend(self.removed.into_iter().map(Op::RemoveInode));
        Transaction { ops }
    }
}

impl Pool {
    pub(crate) fn inode(&self, ino: Ino) -> Result<&Inode> {
        self.state.inodes.get(&ino).ok_or_else(|| Error::NotFound(format!("inode {}", ino.0)))
    }

    fn directory(&self, ino: Ino) -> Result<&BTreeMap<Vec<u8>, Ino>> {
        let inode = self.inode(ino)?;
        if inode.kind != InodeKind::Directory {
            return Err(Error::NotDirectory(format!("inode {}", ino.0)));
        }
        self.state.dirs.get(&ino).ok_or_else(|| Error::NotFound(format!("directory {}", ino.0)))
    }

    fn child(&self, parent: Ino, name: &[u8]) -> Result<Option<Ino>> {
        Ok(self.directory(parent)?.get(name).copied())
    }

    /// Attributes of `ino`, including writes still buffered.
    pub fn getattr(&self, ino: Ino) -> Result<Attr> {
        let inode = self.inode(ino)?;
        let mut attr = Attr {
            ino,
            kind: inode.kind,
            mode: inode.mode,
            uid: inode.uid,
            gid: inode.gid,
            nlink: inode.nlink,
            size: inode.size,
            allocated_bytes: self.state.allocated_bytes(ino),
            atime: inode.atime,
            mtime: inode.mtime,
            ctime: inode.ctime,
            policy: self.state.effective_policy(ino),
            rdev: inode.rdev,
        };
        if let Some(file) = self.files.get(ino) {
            attr.size = file.size;
            if let Some(mtime) = file.mtime {
                attr.mtime = mtime;
                attr.ctime = mtime;
            }
        }
        Ok(attr)
    }

    /// Looks `name` up in `parent`.
    pub fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Attr> {
        if name.len() > NAME_BYTES_MAX {
            return Err(Error::NameTooLong(name.len()));
        }
        match self.child(parent, name)? {
            Some(ino) => self.getattr(ino),
            None => Err(Error::NotFound(display(name))),
        }
    }

    /// Resolves an absolute pool path (`/a/b`) to an inode; `/` and `` are the root.
    pub fn resolve(&self, path: &str) -> Result<Ino> {
        let mut ino = Ino::ROOT;
        for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
            ino = match self.child(ino, part.as_bytes()) {
                Ok(Some(child)) => child,
                Ok(None) => return Err(Error::NotFound(path.to_string())),
                Err(Error::NotDirectory(_)) => return Err(Error::NotDirectory(path.to_string())),
                Err(e) => return Err(e),
            };
        }
        Ok(ino)
    }

    /// Changes attributes; a new size truncates or extends the file.
    pub fn setattr(&mut self, ino: Ino, changes: &SetAttr) -> Result<Attr> {
        let kind = self.inode(ino)?.kind;
        if let Some(size) = changes.size {
            if kind != InodeKind::File {
                return Err(match kind {
                    InodeKind::Directory => Error::IsDirectory(format!("inode {}", ino.0)),
                    _ => Error::InvalidArgument("only regular files have a settable size".into()),
                });
            }
            self.truncate_ino(ino, size)?;
        }
        let now = self.clock.wall();
        let mut inode = self.inode(ino)?.clone();
        let before = inode.clone();
        let mut ops = Vec::new();
        if let Some(mode) = changes.mode {
            inode.mode = mode & 0o7777;
            if let Some(acl) = self.access_acl(ino) {
                let value = Some(acl.chmod(inode.mode).to_xattr());
                ops.push(Op::SetXattr { ino, name: crate::data::acl::ACCESS_XATTR.to_vec(), value });
            }
        }
        if let Some(uid) = changes.uid {
            inode.uid = uid;
        }
        if let Some(gid) = changes.gid {
            inode.gid = gid;
        }
        if let Some(atime) = changes.atime {
            inode.atime = atime;
        }
        if let Some(mtime) = changes.mtime {
            inode.mtime = mtime;
            if let Some(file) = self.files.files_mut(ino) {
                file.mtime = None;
            }
        }
        if inode != before || changes.ctime.is_some() {
            inode.ctime = changes.ctime.unwrap_or(now);
            ops.insert(0, Op::PutInode(inode));
            self.commit(Transaction { ops })?;
        }
        self.getattr(ino)
    }

    fn new_inode(&self, kind: InodeKind, owner: Owner, policy: Option<Policy>) -> Inode {
        let now = self.clock.wall();
        Inode {
            ino: Ino(self.state.next_ino),
            kind,
            mode: owner.mode & 0o7777,
            uid: owner.uid,
            gid: owner.gid,
            nlink: if kind == InodeKind::Directory { 2 } else { 1 },
            size: 0,
            atime: now,
            mtime: now,
            ctime: now,
            policy,
            symlink_target: Vec::new(),
            rdev: 0,
        }
    }

    /// Links the new `inode` as `parent/name`, after giving it what it inherits from
    /// `parent`: the policy, the default ACL (or else `umask` applies), and the group of
    /// a setgid directory.
    fn create_child(&mut self, parent: Ino, name: &[u8], mut inode: Inode, umask: u32) -> Result<Attr> {
        check_name(name)?;
        if self.child(parent, name)?.is_some() {
            return Err(Error::Exists(display(name)));
        }
        let ino = inode.ino;
        let now = inode.ctime;
        let dir = self.inode(parent)?;
        if inode.policy.is_none() {
            inode.policy = dir.policy;
        }
        let mut attributes = Vec::new();
        if inode.kind != InodeKind::Symlink {
            match self.default_acl(parent) {
                Some(default) => {
                    let (mode, access) = default.inherit(inode.mode);
                    inode.mode = mode;
                    if let Some(access) = access {
                        let value = Some(access.to_xattr());
                        attributes.push(Op::SetXattr { ino, name: crate::data::acl::ACCESS_XATTR.to_vec(), value });
                    }
                    if inode.kind == InodeKind::Directory {
                        let value = Some(default.to_xattr());
                        attributes.push(Op::SetXattr { ino, name: crate::data::acl::DEFAULT_XATTR.to_vec(), value });
                    }
                }
                None => inode.mode &= !umask,
            }
        }
        if dir.mode & libc::S_ISGID != 0 {
            inode.gid = dir.gid;
            if inode.kind == InodeKind::Directory {
                inode.mode |= libc::S_ISGID;
            }
        }
        let mut change = Change::new(&self.state);
        let dir = change.inode(parent)?;
        dir.mtime = now;
        dir.ctime = now;
        if inode.kind == InodeKind::Directory {
            dir.nlink += 1;
        }
        change.inodes.insert(ino, inode);
        change.entries.push(Op::Link { parent, name: name.to_vec(), ino });
        let mut txn = change.into_transaction();
        txn.ops.extend(attributes);
        self.commit(txn)?;
        self.getattr(ino)
    }

    /// Creates an empty regular file. Its policy is the parent directory's, if set.
    pub fn create(&mut self, parent: Ino, name: &[u8], owner: Owner) -> Result<Attr> {
        let inode = self.new_inode(InodeKind::File, owner, None);
        self.create_child(parent, name, inode, owner.umask)
    }

    /// `mknod(2)`: a regular file, FIFO, socket, or character or block device node (of
    /// device number `rdev`), by the type bits of `mode`. Directories are `mkdir`'s and
    /// symlinks `symlink`'s (`EPERM` and `EINVAL`, as Linux answers).
    pub fn mknod(&mut self, parent: Ino, name: &[u8], mode: u32, rdev: u64, owner: Owner) -> Result<Attr> {
        let kind = match InodeKind::from_mode(mode) {
            Some(InodeKind::Directory) => return Err(Error::NotPermitted("mknod cannot make a directory".into())),
            Some(InodeKind::Symlink) | None => {
                return Err(Error::InvalidArgument(format!("mknod cannot make file type {:#o}", mode & libc::S_IFMT)))
            }
            Some(kind) => kind,
        };
        let mut inode = self.new_inode(kind, owner, None);
        if matches!(kind, InodeKind::CharDevice | InodeKind::BlockDevice) {
            inode.rdev = rdev;
        }
        self.create_child(parent, name, inode, owner.umask)
    }

    /// Creates a directory.
    pub fn mkdir(&mut self, parent: Ino, name: &[u8], owner: Owner) -> Result<Attr> {
        let inode = self.new_inode(InodeKind::Directory, owner, None);
        self.create_child(parent, name, inode, owner.umask)
    }

    /// Creates a symbolic link to `target`.
    pub fn symlink(&mut self, parent: Ino, name: &[u8], target: &[u8], owner: Owner) -> Result<Attr> {
        if target.is_empty() || target.len() > 4095 || target.contains(&0) {
            return Err(Error::InvalidArgument("symlink target must be 1 to 4095 bytes without NUL".into()));
        }
        let mut inode = self.new_inode(InodeKind::Symlink, Owner { mode: 0o777, ..owner }, None);
        inode.size = target.len() as u64;
        inode.symlink_target = target.to_vec();
        self.create_child(parent, name, inode, 0)
    }

    /// The target of a symbolic link.
    pub fn readlink(&self, ino: Ino) -> Result<Vec<u8>> {
        let inode = self.inode(ino)?;
        if inode.kind != InodeKind::Symlink {
            return Err(Error::InvalidArgument(format!("inode {} is not a symlink", ino.0)));
        }
        Ok(inode.symlink_target.clone())
    }

    /// Creates a regular file with no name (`O_TMPFILE`); give it one with `link_new`.
    /// If the pool restarts first, the file is removed with its data.
    pub fn create_unnamed(&mut self, owner: Owner, policy: Option<Policy>) -> Result<Ino> {
        let mut inode = self.new_inode(InodeKind::File, owner, policy);
        inode.nlink = 0;
        let ino = inode.ino;
        self.commit(Transaction { ops: vec![Op::PutInode(inode)] })?;
        Ok(ino)
    }

    /// Links `ino` (a file) as `parent/name`, atomically replacing an existing file
    /// there when `replace`.
    pub fn link_new(&mut self, ino: Ino, parent: Ino, name: &[u8], replace: bool) -> Result<Attr> {
        check_name(name)?;
        if let (true, Some(existing)) = (replace, self.child(parent, name)?) {
            if self.inode(existing)?.kind == InodeKind::Directory {
                return Err(Error::IsDirectory(display(name)));
            }
            return self.rename_into(ino, parent, name);
        }
        self.link(ino, parent, name)
    }

    fn rename_into(&mut self, ino: Ino, parent: Ino, name: &[u8]) -> Result<Attr> {
        let now = self.clock.wall();
        let target = self.child(parent, name)?;
        let mut change = Change::new(&self.state);
        let node = change.inode(ino)?;
        node.nlink += 1;
        node.ctime = now;
        let dir = change.inode(parent)?;
        dir.mtime = now;
        dir.ctime = now;
        if let Some(old) = target {
            self.drop_link(&mut change, old, now)?;
        }
        change.entries.push(Op::Link { parent, name: name.to_vec(), ino });
        let txn = change.into_transaction();
        let freed = self.commit(txn)?;
        self.free_extents(&freed);
        self.getattr(ino)
    }

    /// Adds a hard link to a file.
    pub fn link(&mut self, ino: Ino, parent: Ino, name: &[u8]) -> Result<Attr> {
        check_name(name)?;
        if self.inode(ino)?.kind == InodeKind::Directory {
            return Err(Error::NotPermitted("hard links to directories are not allowed".into()));
        }
        if self.child(parent, name)?.is_some() {
            return Err(Error::Exists(display(name)));
        }
        if self.inode(ino)?.nlink >= LINKS_MAX {
            return Err(Error::TooManyLinks(LINKS_MAX));
        }
        self.rename_into(ino, parent, name)
    }

    /// Takes one link away from `ino`, removing it when no link and no handle remain.
    fn drop_link(&self, change: &mut Change<'_>, ino: Ino, now: WallTime) -> Result<()> {
        let open = self.files.is_open(ino);
        let node = change.inode(ino)?;
        node.ctime = now;
        if node.kind == InodeKind::Directory {
            node.nlink = 0;
            change.removed.push(ino);
            return Ok(());
        }
        node.nlink = node.nlink.saturating_sub(1);
        if node.nlink == 0 && !open {
            change.removed.push(ino);
        }
        Ok(())
    }

    /// Removes a non-directory entry.
    pub fn unlink(&mut self, parent: Ino, name: &[u8]) -> Result<()> {
        let ino = self.child(parent, name)?.ok_or_else(|| Error::NotFound(display(name)))?;
        if self.inode(ino)?.kind == InodeKind::Directory {
            return Err(Error::IsDirectory(display(name)));
        }
        self.remove_entry(parent, name, ino)
    }

    /// Removes an empty directory.
    pub fn rmdir(&mut self, parent: Ino, name: &[u8]) -> Result<()> {
        if name == b"." {
            return Err(Error::InvalidArgument("cannot remove '.'".into()));
        }
        let ino = self.child(parent, name)?.ok_or_else(|| Error::NotFound(display(name)))?;
        if self.inode(ino)?.kind != InodeKind::Directory {
            return Err(Error::NotDirectory(display(name)));
        }
        if !self.directory(ino)?.is_empty() {
            return Err(Error::NotEmpty(display(name)));
        }
        self.remove_entry(parent, name, ino)
    }

    fn remove_entry(&mut self, parent: Ino, name: &[u8], ino: Ino) -> Result<()> {
        let now = self.clock.wall();
        let is_dir = self.inode(ino)?.kind == InodeKind::Directory;
        let mut change = Change::new(&self.state);
        let dir = change.inode(parent)?;
        dir.mtime = now;
        dir.ctime = now;
        if is_dir {
            dir.nlink -= 1;
        }
        self.drop_link(&mut change, ino, now)?;
        change.entries.push(Op::Unlink { parent, name: name.to_vec() });
        let txn = change.into_transaction();
        let freed = self.commit(txn)?;
        self.free_extents(&freed);
        Ok(())
    }

    /// Whether `ancestor` is `ino` or one of its ancestors (directories only).
    fn is_ancestor(&self, ancestor: Ino, mut ino: Ino) -> bool {
        loop {
            if ino == ancestor {
                return true;
            }
            match self.state.dir_parents.get(&ino) {
                Some(parent) if *parent != ino => ino = *parent,
                _ => return false,
            }
        }
    }

    /// Renames `parent/name` to `new_parent/new_name`, atomically.
    pub fn rename(
        &mut self,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        mode: RenameMode,
    ) -> Result<()> {
        check_name(new_name)?;
        let source = self.child(parent, name)?.ok_or_else(|| Error::NotFound(display(name)))?;
        let target = self.child(new_parent, new_name)?;
        let source_kind = self.inode(source)?.kind;
        if source_kind == InodeKind::Directory && self.is_ancestor(source, new_parent) {
            return Err(Error::InvalidArgument("cannot move a directory into itself".into()));
        }
        if target == Some(source) {
            return Ok(());
        }
        let now = self.clock.wall();
        let mut change = Change::new(&self.state);
        for dir in [parent, new_parent] {
            let dir = change.inode(dir)?;
            dir.mtime = now;
            dir.ctime = now;
        }
        change.inode(source)?.ctime = now;
        match (mode, target) {
            (RenameMode::Exchange, None) => return Err(Error::NotFound(display(new_name))),
            (RenameMode::Exchange, Some(target)) => {
                let target_kind = self.inode(target)?.kind;
                if target_kind == InodeKind::Directory && self.is_ancestor(target, parent) {
                    return Err(Error::InvalidArgument("cannot move a directory into itself".into()));
                }
                change.inode(target)?.ctime = now;
                if parent != new_parent {
                    let moved = |kind| i64::from(kind == InodeKind::Directory);
                    let delta = moved(target_kind) - moved(source_kind);
                    let p = change.inode(parent)?;
                    p.nlink = p.nlink.saturating_add_signed(delta as i32);
                    let q = change.inode(new_parent)?;
                    q.nlink = q.nlink.saturating_add_signed(-delta as i32);
                }
                change.entries.push(Op::Link { parent, name: name.to_vec(), ino: target });
                change.entries.push(Op::Link { parent: new_parent, name: new_name.to_vec(), ino: source });
            }
            (RenameMode::NoReplace, Some(_)) => return Err(Error::Exists(display(new_name))),
            (_, target) => {
                if let Some(target) = target {
                    let target_kind = self.inode(target)?.kind;
                    match (source_kind == InodeKind::Directory, target_kind == InodeKind::Directory) {
                        (true, false) => return Err(Error::NotDirectory(display(new_name))),
                        (false, true) => return Err(Error::IsDirectory(display(new_name))),
                        (true, true) if !self.directory(target)?.is_empty() => {
                            return Err(Error::NotEmpty(display(new_name)))
                        }
                        _ => {}
                    }
                    if target_kind == InodeKind::Directory {
                        change.inode(new_parent)?.nlink -= 1;
                    }
                    self.drop_link(&mut change, target, now)?;
                }
                if source_kind == InodeKind::Directory && parent != new_parent {
                    change.inode(parent)?.nlink -= 1;
                    change.inode(new_parent)?.nlink += 1;
                }
                change.entries.push(Op::Unlink { parent, name: name.to_vec() });
                change.entries.push(Op::Link { parent: new_parent, name: new_name.to_vec(), ino: source });
            }
        }
        let txn = change.into_transaction();
        let freed = self.commit(txn)?;
        self.free_extents(&freed);
        Ok(())
    }

    /// The entries of a directory, in name order (without `.` and `..`).
    pub fn readdir(&self, ino: Ino) -> Result<Vec<DirEntry>> {
        self.readdir_window(ino, 0, usize::MAX)
    }

    /// `readdir` from the entry at position `skip` on, at most `max` entries: a listing
    /// read a reply at a time costs what each reply holds, not the whole directory.
    pub fn readdir_window(&self, ino: Ino, skip: usize, max: usize) -> Result<Vec<DirEntry>> {
        let entries = self.directory(ino)?;
        entries
            .iter()
            .skip(skip)
            .take(max)
            .map(|(name, child)| Ok(DirEntry { name: name.clone(), ino: *child, kind: self.inode(*child)?.kind }))
            .collect()
    }

    /// The parent of a directory (the root is its own parent).
    pub fn parent_of(&self, ino: Ino) -> Option<Ino> {
        if ino == Ino::ROOT {
            return Some(Ino::ROOT);
        }
        self.state.dir_parents.get(&ino).copied()
    }

    /// Sets the policy of a directory (inherited by new children) or of a file, whose
    /// existing data is re-encoded under it before this returns.
    pub fn set_policy(&mut self, ino: Ino, policy: Option<Policy>) -> Result<()> {
        let inode = self.inode(ino)?;
        if let (InodeKind::File, Some(policy)) = (inode.kind, policy) {
            self.flush_ino(ino, false)?;
            let path = self.paths().get(&ino).cloned().unwrap_or_default();
            self.change_policy(crate::meta::state::PolicyScope::Path { ino, path, recursive: false }, policy)?;
            return Ok(());
        }
        if let Some(policy) = policy {
            self.check_placeable(policy)?;
        }
        let mut inode = inode.clone();
        inode.policy = policy;
        inode.ctime = self.clock.wall();
        self.commit(Transaction { ops: vec![Op::PutInode(inode)] })?;
        Ok(())
    }

    /// Space and file counts, under the default policy.
    pub fn statfs(&self) -> StatFs {
        let (total_bytes, free_bytes) = self.space();
        StatFs { total_bytes, free_bytes, files: self.state.inodes.len() as u64, files_free: free_bytes / BLOCK_BYTES }
    }
}

impl Pool {
    /// Checks that an extent under `policy` can be placed now: enough active disks with
    /// room for one fragment of a full extent.
    pub fn check_placeable(&self, policy: Policy) -> Result<()> {
        let block = (crate::media::fragment::HEADER_LEN
            + crate::media::codec::shard_len(policy, crate::meta::state::EXTENT_BYTES_MAX as usize))
            as u64;
        let available = self
            .state
            .disks
            .values()
            .filter(|d| d.state == crate::meta::state::DiskState::Active)
            .filter_map(|d| self.devices.get(&d.id))
            .filter(|d| d.capacity_bytes().saturating_sub(d.used_bytes()) >= block)
            .count();
        if self.state.disks.is_empty() {
            return Err(Error::NoDisks);
        }
        if available < policy.width() {
            return Err(Error::Unplaceable { policy, needed: policy.width(), available });
        }
        Ok(())
    }

    /// Checks that new data under `policy` can be written now, at reduced width if need
    /// be: the pool has as many disks as the policy is wide, and at least its write
    /// quorum of them take writes, with room for a fragment of a full extent.
    /// `Unplaceable` when the pool is too narrow or too few disks have room,
    /// `Unavailable` when too few are reachable.
    pub fn check_writable(&self, policy: Policy) -> Result<()> {
        if self.state.disks.is_empty() {
            return Err(Error::NoDisks);
        }
        let block = (crate::media::fragment::HEADER_LEN
            + crate::media::codec::shard_len(policy, crate::meta::state::EXTENT_BYTES_MAX as usize))
            as u64;
        let writable: Vec<&std::sync::Arc<dyn crate::media::device::BlockDevice>> = self
            .state
            .disks
            .keys()
            .filter(|d| self.state.disk_writable(**d))
            .filter_map(|d| self.devices.get(d))
            .collect();
        let with_room = writable.iter().filter(|d| d.capacity_bytes().saturating_sub(d.used_bytes()) >= block).count();
        let members = self.state.disks.values().filter(|d| d.state != crate::meta::state::DiskState::Removed).count();
        if members < policy.width() {
            // Not a matter of disks being away: the pool is narrower than the policy.
            return Err(Error::Unplaceable { policy, needed: policy.width(), available: members });
        }
        let quorum = self.state.availability.write_quorum(policy);
        if writable.len() < quorum {
            return Err(Error::Unavailable(format!(
                "{policy} needs at least {quorum} disks to write to (its write quorum), but only {} can take writes now",
                writable.len()
            )));
        }
        if with_room < quorum {
            return Err(Error::Unplaceable { policy, needed: quorum, available: with_room });
        }
        Ok(())
    }
}
