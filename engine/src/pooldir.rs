//! The pool directory: where a production pool's config and lock live, and the opener
//! that turns it into a `Pool` over `DirDisk`s.
//!
//! `<pool>/pool.ron` names the pool and lists its disks (uuid and canonical path);
//! `<pool>/lock` is held (flock) by the one process that has the pool open. Metadata
//! itself lives on the disks; the config only says where to find them. Config updates
//! are written to a temporary file, fsynced and renamed.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::base::clock::SystemClock;
use crate::base::error::{Error, Result};
use crate::base::policy::Policy;
use crate::media::device::{BlockDevice, BlockKind, BlockName, UnavailableDevice};
use crate::media::dirdisk::DirDisk;
use crate::media::label::{DiskLabel, LabelError};
use crate::meta::state::DiskId;
use crate::pool::{OpenReport, Pool, PoolDevice, PoolOptions};

const CONFIG_FILE: &str = "pool.ron";
const LOCK_FILE: &str = "lock";
/// Smallest capacity a disk may be given: room for a few extents and the journal.
pub const DISK_CAPACITY_MIN: u64 = 16 << 20;

/// One disk as the pool directory knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskEntry {
    pub uuid: Uuid,
    pub path: PathBuf,
}

/// Contents of `pool.ron`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolConfig {
    pub pool_id: Uuid,
    /// The default policy given at `init`; metadata holds the current one.
    pub initial_policy: String,
    /// Whether tiering starts on (`init --no-tiering` says no); metadata holds the
    /// current setting (`dfs tiering`).
    #[serde(default = "tiering_on")]
    pub initial_tiering: bool,
    pub disks: Vec<DiskEntry>,
}

/// An open pool directory: its config and the lock that makes this process its owner.
pub struct PoolDir {
    path: PathBuf,
    config: PoolConfig,
    /// Where each disk lives, shared with the pool's `Reconnector`.
    locations: Locations,
    /// The lock held on each disk's directory (see `lock_disk_dir`).
    disk_locks: DiskLocks,
    _lock: File,
    /// The lock on the pool directory itself.
    _dir_lock: File,
}

/// What `vet_disk` found a disk path to be.
pub enum Vetted {
    /// A disk of this pool that was marked failed: `add_disk` takes it back.
    FailedDisk(PathBuf),
    /// A new disk (or one labelled by an add-disk that crashed): `add_disk` labels it.
    New { canonical: PathBuf, uuid: Uuid },
}

/// Disk uuid → the open, locked handle of its directory.
type DiskLocks = Arc<std::sync::Mutex<BTreeMap<Uuid, File>>>;

/// Why a disk could not be opened.
enum DiskOpenError {
    /// Another process holds its directory: refuse the whole pool.
    Busy(String),
    /// Missing, unreadable, or not this pool's disk: serve without it.
    Unavailable(String),
}

/// Locks the directory of disk `uuid` for this process (an exclusive `flock` on the
/// directory itself), so that no second owner — a copy of the pool directory, another
/// pool naming it — can serve the disk at the same time. A handle this process already
/// holds on the same directory is kept.
fn lock_disk_dir(path: &Path, uuid: Uuid, locks: &DiskLocks) -> std::result::Result<(), DiskOpenError> {
    use std::os::unix::fs::MetadataExt;
    let mut locks = locks.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let current = fs::metadata(path).map_err(|e| DiskOpenError::Unavailable(format!("cannot be opened: {e}")))?;
    if let Some(held) = locks.get(&uuid) {
        if held.metadata().is_ok_and(|m| (m.dev(), m.ino()) == (current.dev(), current.ino())) {
            return Ok(());
        }
    }
    let handle = File::open(path).map_err(|e| DiskOpenError::Unavailable(format!("cannot be opened: {e}")))?;
    match handle.try_lock() {
        Ok(()) => {
            locks.insert(uuid, handle);
            Ok(())
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            Err(DiskOpenError::Busy("its directory is locked by another DynamicFS process".into()))
        }
        Err(std::fs::TryLockError::Error(e)) => Err(DiskOpenError::Unavailable(format!("cannot be locked: {e}"))),
    }
}

/// Disk uuid → its entry in the config, as the pool's reconnector reads it.
type Locations = Arc<std::sync::Mutex<Vec<DiskEntry>>>;

/// Reopens a disk of pool `pool_id` by uuid from its configured path, verified by its
/// label as at open.
fn reconnector(locations: Locations, pool_id: Uuid, locks: DiskLocks) -> crate::services::reachability::Reconnector {
    crate::services::reachability::Reconnector(Arc::new(move |uuid| {
        let entry = locations
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .find(|d| d.uuid == uuid)
            .cloned()
            .ok_or_else(|| format!("disk {uuid} is not in the pool config"))?;
        match open_disk_quietly(&entry, pool_id, &locks) {
            Ok(device) => Ok(device),
            Err(DiskOpenError::Busy(reason) | DiskOpenError::Unavailable(reason)) => {
                Err(format!("{}: {reason}", entry.path.display()))
            }
        }
    }))
}

fn tiering_on() -> bool {
    true
}

/// An I/O error on the pool directory or a disk path, as the error its cause is: a
/// missing path, a path that is not a directory, a permission, a full filesystem — an
/// I/O error only when it is one.
fn io(context: impl std::fmt::Display, e: std::io::Error) -> Error {
    match e.kind() {
        std::io::ErrorKind::NotFound => Error::NotFound(context.to_string()),
        std::io::ErrorKind::NotADirectory => Error::NotDirectory(context.to_string()),
        std::io::ErrorKind::PermissionDenied => Error::AccessDenied(format!(
            "{context}: this user may not use it (owner-only pools and disks belong to whoever created them)"
        )),
        _ if e.raw_os_error() == Some(libc::ENOSPC) => Error::NoSpace(context.to_string()),
        _ => Error::Io(format!("{context}: {e}")),
    }
}

impl PoolDir {
    /// Creates a pool directory at `path` (created if absent, else it must be empty).
    pub fn init(path: &Path, policy: Policy, tiering: bool) -> Result<PoolConfig> {
        if path.exists() {
            let mut entries = fs::read_dir(path).map_err(|e| io(path.display(), e))?;
            if path.join(CONFIG_FILE).exists() {
                return Err(Error::Exists(format!("{} already holds a pool", path.display())));
            }
            if entries.next().is_some() {
                return Err(Error::InvalidArgument(format!(
                    "{} is not empty; a pool directory must be new or empty",
                    path.display()
                )));
            }
        } else {
            fs::create_dir_all(path).map_err(|e| io(path.display(), e))?;
        }
        set_owner_only(path)?;
        let config = PoolConfig {
            pool_id: Uuid::new_v4(),
            initial_policy: policy.to_string(),
            initial_tiering: tiering,
            disks: Vec::new(),
        };
        write_config(path, &config)?;
        Ok(config)
    }

    /// Opens the pool at `path`: takes the lock, opens every disk, recovers metadata.
    pub fn open(path: &Path, mut options: PoolOptions) -> Result<(PoolDir, Pool, OpenReport)> {
        let path = fs::canonicalize(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::PermissionDenied => io(path.display(), e),
            _ => Error::NotAPool(format!("{}: no such pool directory", path.display())),
        })?;
        let config_path = path.join(CONFIG_FILE);
        let text = fs::read_to_string(&config_path).map_err(|e| match e.kind() {
            std::io::ErrorKind::PermissionDenied => io(config_path.display(), e),
            _ => Error::NotAPool(format!(
                "{} is not a pool (no {CONFIG_FILE}); create one with `dfs init`",
                path.display()
            )),
        })?;
        let config: PoolConfig =
            ron::from_str(&text).map_err(|e| Error::MetadataCorrupt(format!("{}: {e}", config_path.display())))?;
        let initial_policy: Policy = config
            .initial_policy
            .parse()
            .map_err(|e| Error::MetadataCorrupt(format!("{}: {e}", config_path.display())))?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path.join(LOCK_FILE))
            .map_err(|e| io(path.join(LOCK_FILE).display(), e))?;
        let busy = || {
            Error::PoolBusy(format!(
                "pool {} is in use by another process (mounted, or another command is running); unmount it first",
                path.display()
            ))
        };
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(busy()),
            Err(std::fs::TryLockError::Error(e)) => return Err(io("locking the pool", e)),
        }
        // The lock file can be unlinked under its owner; the directory itself cannot be
        // replaced under an open handle. Both are held: the file for tools that wait on
        // it, the directory for the rule.
        let dir_lock = File::open(&path).map_err(|e| io(path.display(), e))?;
        match dir_lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(busy()),
            Err(std::fs::TryLockError::Error(e)) => return Err(io("locking the pool directory", e)),
        }
        let disk_locks: DiskLocks = Arc::new(std::sync::Mutex::new(BTreeMap::new()));
        let mut devices = Vec::new();
        let mut unavailable = Vec::new();
        for entry in &config.disks {
            let (device, reason) = match open_disk_quietly(entry, config.pool_id, &disk_locks) {
                Ok(device) => (device, None),
                Err(DiskOpenError::Busy(reason)) => {
                    // Another process serves this disk: a copy of this pool's directory, or
                    // a second pool naming it. Two owners would lose data: refuse.
                    return Err(Error::PoolBusy(format!(
                        "disk {} of pool {} is in use by another process ({reason}); nothing was opened",
                        entry.path.display(),
                        path.display()
                    )));
                }
                Err(DiskOpenError::Unavailable(reason)) => {
                    let location = entry.path.display().to_string();
                    tracing::warn!(disk = %location, %reason, "serving the pool without this disk");
                    (Arc::new(UnavailableDevice::new(location, reason.clone())) as Arc<dyn BlockDevice>, Some(reason))
                }
            };
            if let Some(reason) = reason {
                unavailable.push(format!("{}: {reason}", entry.path.display()));
            }
            devices.push(PoolDevice { uuid: entry.uuid, device });
        }
        if !config.disks.is_empty() && unavailable.len() == config.disks.len() {
            // Serving would show an empty pool over disks that hold data, or ones that
            // belong to another pool: refuse, and change nothing.
            return Err(Error::MetadataCorrupt(
                format!(
                    "none of the {} disks of pool {} ({}) is this pool's: {}",
                    config.disks.len(),
                    config.pool_id,
                    path.display(),
                    unavailable.join("; ")
                ) + "; nothing was changed",
            ));
        }
        if options.seed == 0 {
            options.seed = Uuid::new_v4().as_u64_pair().0;
        }
        options.tiering.enabled = config.initial_tiering;
        let locations: Locations = Arc::new(std::sync::Mutex::new(config.disks.clone()));
        options.reconnect = Some(reconnector(locations.clone(), config.pool_id, disk_locks.clone()));
        let (pool, report) =
            Pool::open(config.pool_id, initial_policy, devices, Arc::new(SystemClock::new()), options)?;
        let mut dir = PoolDir { path, config, locations, disk_locks, _lock: lock, _dir_lock: dir_lock };
        if !report.unregistered.is_empty() {
            // A crash during add-disk: the label was written, the metadata never knew it.
            dir.config.disks.retain(|d| !report.unregistered.contains(&d.uuid));
            write_config(&dir.path, &dir.config)?;
            dir.publish_locations();
        }
        Ok((dir, pool, report))
    }

    /// When `canonical` holds a failed disk of this pool (by its label), takes it back —
    /// reusing what it holds that is still referenced — and records where it is now.
    fn readmit_if_failed(
        &mut self,
        pool: &mut Pool,
        canonical: &Path,
    ) -> Result<Option<crate::services::reachability::Readmitted>> {
        let Ok(disk) = DirDisk::open(canonical) else { return Ok(None) };
        let Ok(label) = DiskLabel::read(&disk) else { return Ok(None) };
        if label.pool_id != self.config.pool_id {
            return Ok(None);
        }
        let Some(record) = pool.state().disks.values().find(|d| d.uuid == label.disk_uuid).cloned() else {
            return Ok(None);
        };
        if record.state != crate::meta::state::DiskState::Failed {
            return Ok(None);
        }
        if let Err(DiskOpenError::Busy(reason) | DiskOpenError::Unavailable(reason)) =
            lock_disk_dir(canonical, label.disk_uuid, &self.disk_locks)
        {
            return Err(Error::PoolBusy(format!("{}: {reason}", canonical.display())));
        }
        let readmitted = pool.readmit_disk(record.id, Arc::new(disk))?;
        let mut config = self.config.clone();
        config.disks.retain(|d| d.uuid != label.disk_uuid);
        config.disks.push(DiskEntry { uuid: label.disk_uuid, path: canonical.to_path_buf() });
        write_config(&self.path, &config)?;
        self.config = config;
        self.publish_locations();
        Ok(Some(readmitted))
    }

    /// Lets the pool's reconnector see the config's disks as they are now.
    fn publish_locations(&self) {
        *self.locations.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = self.config.disks.clone();
    }

    /// The pool directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The config as last written.
    pub fn config(&self) -> &PoolConfig {
        &self.config
    }

    /// Checks, changing nothing, that `disk_path` can be added as a disk of
    /// `capacity_bytes`: what `add_disk` would refuse is refused here, so a command adding
    /// several disks checks them all before it adds any.
    pub fn vet_disk(&self, pool: &Pool, disk_path: &Path, capacity_bytes: Option<u64>) -> Result<Vetted> {
        let canonical = fs::canonicalize(disk_path).map_err(|e| io(format!("disk path {}", disk_path.display()), e))?;
        if !canonical.is_dir() {
            return Err(Error::NotDirectory(format!("disk path {}", canonical.display())));
        }
        if canonical.starts_with(&self.path) || self.path.starts_with(&canonical) {
            return Err(Error::InvalidArgument(format!(
                "{} overlaps the pool directory {}",
                canonical.display(),
                self.path.display()
            )));
        }
        fs::read_dir(&canonical).map_err(|e| io(format!("disk path {}", canonical.display()), e))?;
        let disk = DirDisk::open(&canonical).map_err(|e| Error::Io(format!("{}: {e}", canonical.display())))?;
        let label = DiskLabel::read(&disk);
        if let Ok(label) = &label {
            let failed = pool
                .state()
                .disks
                .values()
                .any(|d| d.uuid == label.disk_uuid && d.state == crate::meta::state::DiskState::Failed);
            if label.pool_id == self.config.pool_id && failed {
                return Ok(Vetted::FailedDisk(canonical));
            }
        }
        if let Some(other) =
            self.config.disks.iter().find(|d| d.path.starts_with(&canonical) || canonical.starts_with(&d.path))
        {
            return Err(Error::Exists(format!(
                "{} is already a disk of this pool (or overlaps disk {})",
                canonical.display(),
                other.path.display()
            )));
        }
        if let Some(capacity) = capacity_bytes {
            if capacity < DISK_CAPACITY_MIN {
                return Err(Error::InvalidArgument(format!(
                    "capacity {capacity} bytes is below the minimum of {DISK_CAPACITY_MIN} bytes (16 MiB)"
                )));
            }
        }
        let uuid = match label {
            Ok(label) if label.pool_id != self.config.pool_id => {
                return Err(Error::Exists(format!(
                    "{} is a disk of another pool ({}); remove it from that pool first",
                    canonical.display(),
                    label.pool_id
                )))
            }
            Ok(label) if pool.state().disks.values().any(|d| d.uuid == label.disk_uuid) => {
                return Err(Error::Exists(format!("{} is already a disk of this pool", canonical.display())))
            }
            // Labelled for this pool by an add-disk that crashed before committing: reuse.
            Ok(label) => label.disk_uuid,
            Err(LabelError::Missing) => {
                let holds_blocks = BlockKind::ALL
                    .into_iter()
                    .filter(|kind| *kind != BlockKind::Label)
                    .any(|kind| disk.list(kind).map(|names| !names.is_empty()).unwrap_or(true));
                if holds_blocks {
                    return Err(Error::InvalidArgument(format!(
                        "{} holds DynamicFS blocks but no label; refusing to overwrite them",
                        canonical.display()
                    )));
                }
                Uuid::new_v4()
            }
            Err(e) => {
                return Err(Error::InvalidArgument(format!("{}: {e}; refusing to reuse it", canonical.display())))
            }
        };
        Ok(Vetted::New { canonical, uuid })
    }

    /// Adds the directory `disk_path` as a disk of `capacity_bytes` (or the free space of
    /// its filesystem). Refuses a path that does not exist, is not a directory, is already
    /// a disk of this or another pool, or holds DynamicFS blocks without a label. A disk
    /// of this pool that was marked failed is taken back instead (`Pool::readmit_disk`):
    /// what it holds that is still referenced is used again, and it keeps its id.
    pub fn add_disk(&mut self, pool: &mut Pool, disk_path: &Path, capacity_bytes: Option<u64>) -> Result<DiskId> {
        let (canonical, uuid) = match self.vet_disk(pool, disk_path, capacity_bytes)? {
            Vetted::FailedDisk(canonical) => match self.readmit_if_failed(pool, &canonical)? {
                Some(readmitted) => return Ok(readmitted.disk),
                None => return Err(Error::Io(format!("{}: the failed disk there changed", canonical.display()))),
            },
            Vetted::New { canonical, uuid } => (canonical, uuid),
        };
        let mut disk = DirDisk::open(&canonical).map_err(|e| Error::Io(format!("{}: {e}", canonical.display())))?;
        let label = DiskLabel { pool_id: self.config.pool_id, disk_uuid: uuid, capacity_bytes };
        disk.set_capacity(capacity_bytes);
        disk.write(BlockName::Label, &label.encode())
            .and_then(|()| disk.sync())
            .map_err(|e| Error::Io(format!("writing the label on {}: {e}", canonical.display())))?;
        let busy = |reason: String| Error::PoolBusy(format!("{}: {reason}", canonical.display()));
        match lock_disk_dir(&canonical, uuid, &self.disk_locks) {
            Ok(()) => {}
            Err(DiskOpenError::Busy(reason) | DiskOpenError::Unavailable(reason)) => return Err(busy(reason)),
        }
        let previous = self.config.clone();
        self.config.disks.push(DiskEntry { uuid, path: canonical.clone() });
        write_config(&self.path, &self.config)?;
        self.publish_locations();
        match pool.add_disk(uuid, capacity_bytes, Arc::new(disk)) {
            Ok(id) => Ok(id),
            Err(e) => {
                self.config = previous;
                let _ = write_config(&self.path, &self.config);
                self.publish_locations();
                Err(e)
            }
        }
    }
}

/// Opens one disk of the pool. A disk is only ever what its label says: a directory that
/// cannot be opened, or whose label is missing, unreadable, or names another pool or
/// disk, is unavailable (read around, never written); one whose directory another
/// process holds is busy. The disk's directory is locked for this process.
fn open_disk_quietly(
    entry: &DiskEntry,
    pool_id: Uuid,
    locks: &DiskLocks,
) -> std::result::Result<Arc<dyn BlockDevice>, DiskOpenError> {
    let unavailable = DiskOpenError::Unavailable;
    let disk = DirDisk::open(&entry.path).map_err(|e| unavailable(format!("cannot be opened: {e}")))?;
    match DiskLabel::read(&disk) {
        Ok(label) if label.pool_id == pool_id && label.disk_uuid == entry.uuid => {
            lock_disk_dir(&entry.path, entry.uuid, locks)?;
            Ok(Arc::new(disk))
        }
        Ok(label) if label.pool_id != pool_id => {
            Err(unavailable(format!("its label names pool {}, not this pool ({pool_id})", label.pool_id)))
        }
        Ok(label) => Err(unavailable(format!("a different disk ({}) is at this path", label.disk_uuid))),
        Err(e) => Err(unavailable(format!("{e}; is the disk mounted?"))),
    }
}

impl PoolDir {
    /// After `disk` was removed from `pool`: drops it from the config and wipes its
    /// DynamicFS blocks and label, so the directory can be reused or deleted.
    pub fn forget_disk(&mut self, pool: &Pool, disk: DiskId) -> Result<()> {
        let Some(uuid) = pool.state().disks.get(&disk).map(|d| d.uuid) else {
            return Err(Error::NotFound(format!("disk {disk}")));
        };
        let Some(entry) = self.config.disks.iter().find(|d| d.uuid == uuid).cloned() else {
            return Ok(());
        };
        if let Ok(device) = DirDisk::open(&entry.path) {
            // Best effort: the disk has already left the pool; what stays is only litter.
            let _ = device.wipe();
        }
        let mut config = self.config.clone();
        config.disks.retain(|d| d.uuid != uuid);
        write_config(&self.path, &config)?;
        self.disk_locks.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&uuid);
        self.config = config;
        self.publish_locations();
        Ok(())
    }
}

fn write_config(dir: &Path, config: &PoolConfig) -> Result<()> {
    let text = ron::ser::to_string_pretty(config, ron::ser::PrettyConfig::default())
        .map_err(|e| Error::Io(format!("encoding the pool config: {e}")))?;
    let tmp = dir.join(format!("{CONFIG_FILE}.tmp"));
    let target = dir.join(CONFIG_FILE);
    let result = File::create(&tmp)
        .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|()| f.sync_all()))
        .and_then(|()| fs::rename(&tmp, &target))
        .and_then(|()| File::open(dir).and_then(|d| d.sync_all()));
    result.map_err(|e| io(target.display(), e))
}

fn set_owner_only(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o700)).map_err(|e| io(path.display(), e))
}
