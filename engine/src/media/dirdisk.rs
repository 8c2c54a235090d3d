//! `DirDisk`: the production `BlockDevice`, a directory on a mounted filesystem.
//!
//! Layout: `<root>/<namespace>/<leaf>` per block (see `BlockName`). A new block is
//! written in place (a crash may tear it, as the `BlockDevice` contract allows); a block
//! that replaces another, and the label, go to `<namespace>/.tmp-<leaf>` and are renamed
//! into place. `sync` fsyncs every file written since the last sync, then every
//! directory touched (and the root, when it gained a namespace directory) — or, past a
//! few files, syncs the whole filesystem at once. Capacity is the one in the disk label,
//! or the free space of the underlying filesystem when the label gives none, and never more than
//! that filesystem can still take; a write that would exceed it fails with `NoSpace` and
//! leaves nothing behind.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use crate::base::io::run_all;
use crate::media::device::{BlockDevice, BlockKind, BlockName, DeviceError};
use crate::media::label::DiskLabel;

const TMP_PREFIX: &str = ".tmp-";

/// A disk backed by a directory.
pub struct DirDisk {
    root: PathBuf,
    /// The root directory's (device, inode) when opened: a directory moved away and
    /// replaced by another at the same path (an unmounted disk's empty mountpoint, a
    /// recreated directory) is not this disk, and is never written.
    root_identity: (u64, u64),
    capacity_bytes: Option<u64>,
    state: Mutex<DirState>,
}

#[derive(Default)]
struct DirState {
    sizes: BTreeMap<BlockName, u64>,
    used_bytes: u64,
    unsynced_files: BTreeSet<BlockName>,
    unsynced_dirs: BTreeSet<BlockKind>,
    /// A namespace directory was created since the last sync: the root's entry for it
    /// must be synced too.
    created_dirs: bool,
}

impl DirDisk {
    /// Opens the directory `root` (which must exist) as a disk. Its capacity comes from
    /// its label when it has one. Leftover temporary files of an interrupted write are
    /// removed.
    pub fn open(root: &Path) -> Result<DirDisk, DeviceError> {
        let meta = fs::metadata(root).map_err(|e| io_error(root, e))?;
        if !meta.is_dir() {
            return Err(DeviceError::Unavailable(format!("{} is not a directory", root.display())));
        }
        let mut state = DirState::default();
        for kind in BlockKind::ALL {
            let dir = root.join(kind.namespace());
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(io_error(&dir, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| io_error(&dir, e))?;
                let file_name = entry.file_name();
                let Some(leaf) = file_name.to_str() else {
                    continue;
                };
                if leaf.starts_with(TMP_PREFIX) {
                    let _ = fs::remove_file(entry.path());
                    continue;
                }
                if let Some(name) = BlockName::parse(kind, leaf) {
                    let size = entry.metadata().map_err(|e| io_error(&entry.path(), e))?.len();
                    state.used_bytes += size;
                    state.sizes.insert(name, size);
                }
            }
        }
        let root_identity = (meta.dev(), meta.ino());
        let mut disk =
            DirDisk { root: root.to_path_buf(), root_identity, capacity_bytes: None, state: Mutex::new(state) };
        if let Ok(label) = DiskLabel::read(&disk) {
            disk.capacity_bytes = label.capacity_bytes;
        }
        Ok(disk)
    }

    /// Sets the capacity this disk enforces (used when a disk is first labelled).
    pub fn set_capacity(&mut self, capacity_bytes: Option<u64>) {
        self.capacity_bytes = capacity_bytes;
    }

    /// The directory this disk lives in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, name: BlockName) -> PathBuf {
        self.root.join(name.kind().namespace()).join(name.leaf())
    }

    fn lock(&self) -> MutexGuard<'_, DirState> {
        // A panic while holding this lock leaves only size bookkeeping behind, which stays
        // consistent per operation; recover the guard instead of poisoning every caller.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Fails unless the root directory is still the one this disk was opened on.
    fn check_identity(&self) -> Result<(), DeviceError> {
        match fs::metadata(&self.root) {
            Ok(meta) if (meta.dev(), meta.ino()) == self.root_identity => Ok(()),
            Ok(_) => Err(DeviceError::Unavailable(format!(
                "{} is no longer the directory this disk was opened on (replaced or remounted)",
                self.root.display()
            ))),
            Err(e) => Err(DeviceError::Unavailable(format!("{}: {e}", self.root.display()))),
        }
    }

    fn filesystem_free_bytes(&self) -> u64 {
        statvfs_free_bytes(&self.root).unwrap_or(0)
    }
}

fn io_error(path: &Path, e: std::io::Error) -> DeviceError {
    if e.raw_os_error() == Some(libc::ENOSPC) {
        return DeviceError::NoSpace;
    }
    if e.kind() == ErrorKind::NotFound {
        return DeviceError::NotFound;
    }
    if e.kind() == ErrorKind::PermissionDenied {
        // Not a failing sector: this process may not use the directory (its mode or
        // owner changed). The disk is unreachable until that is put right.
        return DeviceError::Unavailable(format!(
            "{}: permission denied (EACCES): this user may not use it; check its owner and mode",
            path.display()
        ));
    }
    DeviceError::Io(format!("{}: {e}", path.display()))
}

/// Unsynced files beyond which `sync` flushes the whole filesystem at once.
const SYNCFS_AFTER_FILES: usize = 16;

#[allow(unsafe_code)]
fn syncfs(dir: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let handle = File::open(dir)?;
    // SAFETY: the descriptor is open for the duration of the call; syncfs reads nothing
    // from user memory.
    let rc = unsafe { libc::syncfs(handle.as_raw_fd()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Bytes an unprivileged writer may still store on the filesystem holding `path`.
pub fn filesystem_free_bytes(path: &Path) -> Option<u64> {
    statvfs_free_bytes(path)
}

#[allow(unsafe_code)]
fn statvfs_free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stats = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c_path` is a valid NUL-terminated string and `stats` points to writable
    // memory of the right type for the duration of the call.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), stats.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it initialised `stats`.
    let stats = unsafe { stats.assume_init() };
    #[allow(clippy::useless_conversion)] // the field types differ between targets
    Some(u64::from(stats.f_bavail).saturating_mul(u64::from(stats.f_frsize)))
}

impl BlockDevice for DirDisk {
    fn modified_secs(&self, name: BlockName) -> Result<Option<i64>, DeviceError> {
        let path = self.path(name);
        let metadata = fs::metadata(&path).map_err(|e| io_error(&path, e))?;
        Ok(metadata
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .and_then(|d| i64::try_from(d.as_secs()).ok()))
    }

    fn read(&self, name: BlockName) -> Result<Vec<u8>, DeviceError> {
        let path = self.path(name);
        fs::read(&path).map_err(|e| io_error(&path, e))
    }

    fn write(&self, name: BlockName, data: &[u8]) -> Result<(), DeviceError> {
        let mut state = self.lock();
        let old = state.sizes.get(&name).copied().unwrap_or(0);
        let new_used = state.used_bytes - old + data.len() as u64;
        let available = state.used_bytes + self.filesystem_free_bytes();
        let capacity = self.capacity_bytes.map_or(available, |c| c.min(available));
        if new_used > capacity && data.len() as u64 > old {
            return Err(DeviceError::NoSpace);
        }
        // Never write into a directory that is not this disk, and never create the disk's
        // directory: a vanished disk is unavailable, not a new empty one on `/`.
        self.check_identity()?;
        let dir = self.root.join(name.kind().namespace());
        if !state.unsynced_dirs.contains(&name.kind()) && !dir.exists() {
            match fs::create_dir(&dir) {
                Ok(()) => state.created_dirs = true,
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_error(&dir, e)),
            }
        }
        let final_path = dir.join(name.leaf());
        if state.sizes.contains_key(&name) || name == BlockName::Label {
            // Replacing a block, or the label that identifies the disk: the old one (or
            // none) stays until the new one is complete.
            let tmp_path = dir.join(format!("{TMP_PREFIX}{}", name.leaf()));
            let result = File::create(&tmp_path)
                .and_then(|mut file| file.write_all(data))
                .and_then(|()| fs::rename(&tmp_path, &final_path));
            if let Err(e) = result {
                let _ = fs::remove_file(&tmp_path);
                return Err(io_error(&tmp_path, e));
            }
        } else {
            // A new name: a crash may tear it, as the contract allows, and every block
            // carries its own checksum.
            let result = File::create(&final_path).and_then(|mut file| file.write_all(data));
            if let Err(e) = result {
                let _ = fs::remove_file(&final_path);
                return Err(io_error(&final_path, e));
            }
        }
        state.sizes.insert(name, data.len() as u64);
        state.used_bytes = new_used;
        state.unsynced_files.insert(name);
        state.unsynced_dirs.insert(name.kind());
        Ok(())
    }

    fn delete(&self, name: BlockName) -> Result<(), DeviceError> {
        let mut state = self.lock();
        let path = self.path(name);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(&path, e)),
        }
        if let Some(size) = state.sizes.remove(&name) {
            state.used_bytes -= size;
        }
        state.unsynced_files.remove(&name);
        state.unsynced_dirs.insert(name.kind());
        Ok(())
    }

    fn list(&self, kind: BlockKind) -> Result<Vec<BlockName>, DeviceError> {
        let state = self.lock();
        Ok(state.sizes.keys().filter(|n| n.kind() == kind).copied().collect())
    }

    fn sync(&self) -> Result<(), DeviceError> {
        let (files, dirs, root) = {
            let mut state = self.lock();
            if state.unsynced_files.len() > SYNCFS_AFTER_FILES {
                // One syncfs flushes every file and directory of the filesystem: far
                // cheaper than hundreds of fsyncs, each of which commits its journal.
                syncfs(&self.root).map_err(|e| io_error(&self.root, e))?;
                state.unsynced_files.clear();
                state.unsynced_dirs.clear();
                state.created_dirs = false;
                return Ok(());
            }
            let root = std::mem::take(&mut state.created_dirs);
            (std::mem::take(&mut state.unsynced_files), std::mem::take(&mut state.unsynced_dirs), root)
        };
        // Every fsync of one sync runs at once, outside the lock (writes go on meanwhile
        // and wait for the next sync): the filesystem commits them together, so a sync
        // costs one journal commit of the filesystem instead of one per file and folder.
        let mut paths: Vec<(PathBuf, bool)> = files.iter().map(|name| (self.path(*name), false)).collect();
        paths.extend(dirs.iter().map(|kind| (self.root.join(kind.namespace()), true)));
        if root {
            paths.push((self.root.clone(), true));
        }
        let failed: Vec<DeviceError> = run_all(true, paths, |(path, is_dir)| {
            match File::open(&path).and_then(|file| file.sync_all()) {
                Ok(()) => None,
                // A file deleted since it was written needs no sync.
                Err(e) if e.kind() == ErrorKind::NotFound && !is_dir => None,
                Err(e) => Some(io_error(&path, e)),
            }
        })
        .into_iter()
        .flatten()
        .collect();
        let Some(error) = failed.into_iter().next() else {
            return Ok(());
        };
        let mut state = self.lock();
        state.unsynced_files.extend(files);
        state.unsynced_dirs.extend(dirs);
        state.created_dirs |= root;
        Err(error)
    }

    /// The declared capacity — or less, when the filesystem underneath has filled up
    /// first: a disk is full when either is exhausted, never a stream of ENOSPC behind
    /// a capacity that cannot be had.
    /// 0 (unknown, as for an unreachable disk) when the directory cannot be examined.
    fn capacity_bytes(&self) -> u64 {
        let Some(free) = statvfs_free_bytes(&self.root) else {
            return 0;
        };
        let available = self.lock().used_bytes + free;
        match self.capacity_bytes {
            Some(c) => c.min(available),
            None => available,
        }
    }

    fn used_bytes(&self) -> u64 {
        self.lock().used_bytes
    }

    fn describe(&self) -> String {
        self.root.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_survive_reopen_and_deletes_are_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let disk = DirDisk::open(dir.path()).unwrap();
        let name = BlockName::Journal { seq: 5 };
        disk.write(name, b"hello").unwrap();
        disk.sync().unwrap();
        let disk = DirDisk::open(dir.path()).unwrap();
        assert_eq!(disk.read(name).unwrap(), b"hello");
        assert_eq!(disk.used_bytes(), 5);
        assert_eq!(disk.list(BlockKind::Journal).unwrap(), vec![name]);
        disk.delete(name).unwrap();
        disk.delete(name).unwrap();
        assert_eq!(disk.read(name), Err(DeviceError::NotFound));
        assert_eq!(disk.used_bytes(), 0);
    }

    #[test]
    fn a_full_disk_refuses_the_write_and_keeps_the_old_block() {
        let dir = tempfile::tempdir().unwrap();
        let mut disk = DirDisk::open(dir.path()).unwrap();
        disk.set_capacity(Some(10));
        let name = BlockName::Checkpoint { seq: 1 };
        disk.write(name, b"12345678").unwrap();
        assert_eq!(disk.write(BlockName::Checkpoint { seq: 2 }, b"abc"), Err(DeviceError::NoSpace));
        assert_eq!(disk.write(name, b"12345678901"), Err(DeviceError::NoSpace));
        assert_eq!(disk.read(name).unwrap(), b"12345678");
        assert_eq!(disk.list(BlockKind::Checkpoint).unwrap(), vec![name]);
        assert_eq!(disk.used_bytes(), 8);
    }

    #[test]
    fn stray_temporary_files_are_removed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("journal")).unwrap();
        fs::write(dir.path().join("journal/.tmp-00000000000000000001"), b"torn").unwrap();
        let disk = DirDisk::open(dir.path()).unwrap();
        assert!(disk.list(BlockKind::Journal).unwrap().is_empty());
        assert!(!dir.path().join("journal/.tmp-00000000000000000001").exists());
    }
}
