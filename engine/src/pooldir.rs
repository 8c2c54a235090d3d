//! The pool directory: where a production pool's config and lock live, and the opener
//! that turns it into a `Pool` over its disks — `DirDisk`s, and disks on object stores
//! opened through the `ObjectStores` the binary hands in.
//!
//! `<pool>/pool.ron` names the pool and lists its disks (uuid, and canonical path or
//! `s3://bucket/prefix`); `<pool>/lock` is held (flock) by the one process that has the
//! pool open. Metadata itself lives on the disks; the config only says where to find
//! them. Config updates are written to a temporary file, fsynced and renamed, and then
//! copied onto every disk that takes writes (`BlockName::PoolConfig`), so `import` can
//! rebuild the pool directory on another machine from any one disk.

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
use crate::media::device::{
    BlockDevice, BlockKind, BlockName, DeviceError, ObjectDiskOpen, ObjectStores, UnavailableDevice,
};
use crate::media::dirdisk::DirDisk;
use crate::media::frame::{self, FrameKind};
use crate::media::label::{DiskLabel, LabelError};
use crate::meta::state::DiskId;
use crate::pool::{OpenReport, Pool, PoolDevice, PoolOptions};

const CONFIG_FILE: &str = "pool.ron";
const LOCK_FILE: &str = "lock";
/// Smallest capacity a disk may be given: room for a few extents and the journal.
pub const DISK_CAPACITY_MIN: u64 = 16 << 20;

/// How an object-store location starts.
pub const OBJECT_SCHEME: &str = "s3://";

/// Where a disk lives: a local directory (canonical), or a prefix of a bucket on an
/// object store. One string in `pool.ron`: the path, or `s3://bucket/prefix`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum DiskLocation {
    Local(PathBuf),
    Object(String),
}

impl DiskLocation {
    /// `text` as a location: `s3://...` is an object store's, anything else a path.
    pub fn parse(text: &str) -> DiskLocation {
        if text.starts_with(OBJECT_SCHEME) {
            DiskLocation::Object(text.to_string())
        } else {
            DiskLocation::Local(PathBuf::from(text))
        }
    }

    /// The local directory, if this is one.
    pub fn local(&self) -> Option<&Path> {
        match self {
            DiskLocation::Local(path) => Some(path),
            DiskLocation::Object(_) => None,
        }
    }

    /// Whether one of the two lies inside the other (or they are the same): two disks
    /// there would see each other's blocks.
    pub fn overlaps(&self, other: &DiskLocation) -> bool {
        match (self, other) {
            (DiskLocation::Local(a), DiskLocation::Local(b)) => a.starts_with(b) || b.starts_with(a),
            (DiskLocation::Object(a), DiskLocation::Object(b)) => {
                let (a, b) = (format!("{}/", a.trim_end_matches('/')), format!("{}/", b.trim_end_matches('/')));
                a.starts_with(&b) || b.starts_with(&a)
            }
            _ => false,
        }
    }
}

impl From<String> for DiskLocation {
    fn from(text: String) -> Self {
        DiskLocation::parse(&text)
    }
}

impl From<DiskLocation> for String {
    fn from(location: DiskLocation) -> String {
        match location {
            // Paths are checked to be UTF-8 before they enter a config (`vet_disk`).
            DiskLocation::Local(path) => path.to_string_lossy().into_owned(),
            DiskLocation::Object(url) => url,
        }
    }
}

impl std::fmt::Display for DiskLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DiskLocation::Local(path) => write!(f, "{}", path.display()),
            DiskLocation::Object(url) => f.write_str(url),
        }
    }
}

/// One disk as the pool directory knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskEntry {
    pub uuid: Uuid,
    /// Where it lives (called `path` in `pool.ron`, which once held only paths).
    pub path: DiskLocation,
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
    /// Opens the disks on object stores.
    stores: Option<Arc<dyn ObjectStores>>,
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
fn reconnector(
    locations: Locations,
    pool_id: Uuid,
    locks: DiskLocks,
    stores: Option<Arc<dyn ObjectStores>>,
) -> crate::services::reachability::Reconnector {
    crate::services::reachability::Reconnector(Arc::new(move |uuid| {
        let entry = locations
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .find(|d| d.uuid == uuid)
            .cloned()
            .ok_or_else(|| format!("disk {uuid} is not in the pool config"))?;
        match open_disk_quietly(&entry, pool_id, &locks, stores.as_ref()) {
            Ok(device) => Ok(device),
            Err(DiskOpenError::Busy(reason) | DiskOpenError::Unavailable(reason)) => {
                Err(format!("{}: {reason}", entry.path))
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
        prepare_new_dir(path)?;
        let config = PoolConfig {
            pool_id: Uuid::new_v4(),
            initial_policy: policy.to_string(),
            initial_tiering: tiering,
            disks: Vec::new(),
        };
        write_config(path, &config)?;
        Ok(config)
    }

    /// Rebuilds a pool directory at `path` (new or empty) from the copy of the pool's
    /// configuration that `disk` keeps (`BlockName::PoolConfig`): how a pool moves to a
    /// new machine. Checks everything before it creates anything. The pool then opens
    /// there; its first open claims it, so a process still serving it elsewhere from
    /// shared disks is fenced (`media::owner`).
    pub fn import(path: &Path, disk: &DiskLocation, stores: Option<&Arc<dyn ObjectStores>>) -> Result<PoolConfig> {
        check_new_dir(path)?;
        let device: Arc<dyn BlockDevice> = match disk {
            DiskLocation::Local(dir) => {
                let canonical = fs::canonicalize(dir).map_err(|e| io(format!("disk path {}", dir.display()), e))?;
                Arc::new(DirDisk::open(&canonical).map_err(|e| Error::Io(format!("{}: {e}", canonical.display())))?)
            }
            DiskLocation::Object(url) => {
                let canonical = stores.ok_or_else(|| no_client(url))?.canonical(url).map_err(Error::InvalidArgument)?;
                open_object(stores, &canonical, ObjectDiskOpen::Existing)?
            }
        };
        let label = match DiskLabel::read(device.as_ref()) {
            Ok(label) => label,
            Err(LabelError::Missing) => {
                return Err(Error::NotAPool(format!("{disk} holds no DynamicFS disk label: it is no pool's disk")))
            }
            Err(e) => return Err(Error::MetadataCorrupt(format!("{disk}: {e}"))),
        };
        let config = match device.read(BlockName::PoolConfig) {
            Ok(block) => decode_copy(&block).map_err(|e| Error::MetadataCorrupt(format!("{disk}: {e}")))?,
            Err(DeviceError::NotFound) => {
                return Err(Error::NotAPool(format!(
                    "{disk} is a disk of pool {} but holds no copy of its configuration (each open of the pool \
                     writes one): open the pool once where it is now, or import from another of its disks",
                    label.pool_id
                )))
            }
            Err(e) => return Err(Error::Io(format!("{disk}: reading its copy of the pool configuration: {e}"))),
        };
        if config.pool_id != label.pool_id || !config.disks.iter().any(|d| d.uuid == label.disk_uuid) {
            return Err(Error::MetadataCorrupt(format!(
                "{disk}: its copy of the configuration is of pool {}, and the label says disk {} of pool {}",
                config.pool_id, label.disk_uuid, label.pool_id
            )));
        }
        prepare_new_dir(path)?;
        write_config(path, &config)?;
        Ok(config)
    }
}

/// Makes `path` a new or empty directory only its owner may use; refuses one that holds
/// anything.
fn prepare_new_dir(path: &Path) -> Result<()> {
    check_new_dir(path)?;
    if !path.exists() {
        fs::create_dir_all(path).map_err(|e| io(path.display(), e))?;
    }
    set_owner_only(path)
}

/// Refuses, changing nothing, a `path` that exists and holds anything.
fn check_new_dir(path: &Path) -> Result<()> {
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
    }
    Ok(())
}

impl PoolDir {
    /// The configuration of the pool at `path` (canonical), read without taking the
    /// pool's lock or opening anything: what may be checked before an open.
    pub fn read_config(path: &Path) -> Result<(PathBuf, PoolConfig)> {
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
        Ok((path, config))
    }

    /// Opens the pool at `path`: takes the lock, opens every disk, recovers metadata.
    pub fn open(path: &Path, mut options: PoolOptions) -> Result<(PoolDir, Pool, OpenReport)> {
        let (path, config) = PoolDir::read_config(path)?;
        let config_path = path.join(CONFIG_FILE);
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
        let stores = options.object_stores.clone();
        for entry in &config.disks {
            let (device, reason) = match open_disk_quietly(entry, config.pool_id, &disk_locks, stores.as_ref()) {
                Ok(device) => (device, None),
                Err(DiskOpenError::Busy(reason)) => {
                    // Another process serves this disk: a copy of this pool's directory, or
                    // a second pool naming it. Two owners would lose data: refuse.
                    return Err(Error::PoolBusy(format!(
                        "disk {} of pool {} is in use by another process ({reason}); nothing was opened",
                        entry.path,
                        path.display()
                    )));
                }
                Err(DiskOpenError::Unavailable(reason)) => {
                    let location = entry.path.to_string();
                    tracing::warn!(disk = %location, %reason, "serving the pool without this disk");
                    (Arc::new(UnavailableDevice::new(location, reason.clone())) as Arc<dyn BlockDevice>, Some(reason))
                }
            };
            if let Some(reason) = reason {
                unavailable.push(format!("{}: {reason}", entry.path));
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
        options.reconnect = Some(reconnector(locations.clone(), config.pool_id, disk_locks.clone(), stores.clone()));
        let (mut pool, report) =
            Pool::open(config.pool_id, initial_policy, devices, Arc::new(SystemClock::new()), options)?;
        let mut dir = PoolDir { path, config, locations, disk_locks, stores, _lock: lock, _dir_lock: dir_lock };
        if !report.unregistered.is_empty() {
            // A crash during add-disk: the label was written, the metadata never knew it.
            let mut config = dir.config.clone();
            config.disks.retain(|d| !report.unregistered.contains(&d.uuid));
            dir.save(&mut pool, config)?;
        } else {
            dir.copy_config(&mut pool);
        }
        Ok((dir, pool, report))
    }

    /// When `device` (at `location`) is a failed disk of this pool (by its label), takes
    /// it back — reusing what it holds that is still referenced — and records where it
    /// is now.
    fn readmit_if_failed(
        &mut self,
        pool: &mut Pool,
        location: DiskLocation,
        device: Arc<dyn BlockDevice>,
    ) -> Result<Option<crate::services::reachability::Readmitted>> {
        let Ok(label) = DiskLabel::read(device.as_ref()) else { return Ok(None) };
        if label.pool_id != self.config.pool_id {
            return Ok(None);
        }
        let Some(record) = pool.state().disks.values().find(|d| d.uuid == label.disk_uuid).cloned() else {
            return Ok(None);
        };
        if record.state != crate::meta::state::DiskState::Failed {
            return Ok(None);
        }
        if let Some(dir) = location.local() {
            if let Err(DiskOpenError::Busy(reason) | DiskOpenError::Unavailable(reason)) =
                lock_disk_dir(dir, label.disk_uuid, &self.disk_locks)
            {
                return Err(Error::PoolBusy(format!("{location}: {reason}")));
            }
        }
        let readmitted = pool.readmit_disk(record.id, device)?;
        let mut config = self.config.clone();
        config.disks.retain(|d| d.uuid != label.disk_uuid);
        config.disks.push(DiskEntry { uuid: label.disk_uuid, path: location });
        self.save(pool, config)?;
        Ok(Some(readmitted))
    }

    /// Lets the pool's reconnector see the config's disks as they are now.
    fn publish_locations(&self) {
        *self.locations.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = self.config.disks.clone();
    }

    /// Makes `config` the pool's: written to `pool.ron`, seen by the reconnector, and
    /// copied onto the disks.
    fn save(&mut self, pool: &mut Pool, config: PoolConfig) -> Result<()> {
        write_config(&self.path, &config)?;
        self.config = config;
        self.publish_locations();
        self.copy_config(pool);
        Ok(())
    }

    /// Puts the config on every disk that takes writes, where its copy differs (see
    /// `import`). A disk that cannot take it is only logged: the copy is a convenience
    /// for moving the pool, and the next change or open writes it again.
    fn copy_config(&self, pool: &mut Pool) {
        if pool.read_only.is_some() {
            return;
        }
        for failure in pool.copy_to_disks(BlockName::PoolConfig, &encode_copy(&self.config)) {
            tracing::warn!(%failure, "the copy of the pool configuration was not written");
        }
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
        if canonical.to_str().is_none() {
            return Err(Error::InvalidArgument(format!(
                "disk path {} is not UTF-8: the pool's config cannot name it",
                canonical.display()
            )));
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
        let location = DiskLocation::Local(canonical.clone());
        let uuid = match self.vet_label(pool, &location, &disk, capacity_bytes)? {
            VettedLabel::Failed => return Ok(Vetted::FailedDisk(canonical)),
            VettedLabel::New(uuid) => uuid,
        };
        Ok(Vetted::New { canonical, uuid })
    }

    /// What `vet_disk` and `vet_object_disk` check of any disk: not one of the pool's
    /// (or overlapping one), a capacity not below the minimum, and a label that is this
    /// pool's failed disk's, a crashed add-disk's, or none on a disk that holds no blocks.
    fn vet_label(
        &self,
        pool: &Pool,
        location: &DiskLocation,
        disk: &dyn BlockDevice,
        capacity_bytes: Option<u64>,
    ) -> Result<VettedLabel> {
        let label = DiskLabel::read(disk);
        if let Ok(label) = &label {
            let failed = pool
                .state()
                .disks
                .values()
                .any(|d| d.uuid == label.disk_uuid && d.state == crate::meta::state::DiskState::Failed);
            if label.pool_id == self.config.pool_id && failed {
                return Ok(VettedLabel::Failed);
            }
        }
        if let Some(other) = self.config.disks.iter().find(|d| d.path.overlaps(location)) {
            return Err(Error::Exists(format!(
                "{location} is already a disk of this pool (or overlaps disk {})",
                other.path
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
                    "{location} is a disk of another pool ({}); remove it from that pool first",
                    label.pool_id
                )))
            }
            Ok(label) if pool.state().disks.values().any(|d| d.uuid == label.disk_uuid) => {
                return Err(Error::Exists(format!("{location} is already a disk of this pool")))
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
                        "{location} holds DynamicFS blocks but no label; refusing to overwrite them"
                    )));
                }
                Uuid::new_v4()
            }
            Err(e) => return Err(Error::InvalidArgument(format!("{location}: {e}; refusing to reuse it"))),
        };
        Ok(VettedLabel::New(uuid))
    }

    /// Adds the directory `disk_path` as a disk of `capacity_bytes` (or the free space of
    /// its filesystem). Refuses a path that does not exist, is not a directory, is already
    /// a disk of this or another pool, or holds DynamicFS blocks without a label. A disk
    /// of this pool that was marked failed is taken back instead (`Pool::readmit_disk`):
    /// what it holds that is still referenced is used again, and it keeps its id.
    pub fn add_disk(&mut self, pool: &mut Pool, disk_path: &Path, capacity_bytes: Option<u64>) -> Result<DiskId> {
        let (canonical, uuid) = match self.vet_disk(pool, disk_path, capacity_bytes)? {
            Vetted::FailedDisk(canonical) => {
                let disk = DirDisk::open(&canonical).map_err(|e| Error::Io(format!("{}: {e}", canonical.display())))?;
                return match self.readmit_if_failed(pool, DiskLocation::Local(canonical.clone()), Arc::new(disk))? {
                    Some(readmitted) => Ok(readmitted.disk),
                    None => Err(Error::Io(format!("{}: the failed disk there changed", canonical.display()))),
                };
            }
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
        self.register(pool, DiskEntry { uuid, path: DiskLocation::Local(canonical) }, capacity_bytes, Arc::new(disk))
    }

    /// Checks, changing nothing, that the object-store location `url` can be added as a
    /// disk of `capacity_bytes` (which it needs: a store has no size to ask): it parses,
    /// the store answers with these credentials, has the bucket, honours create-only
    /// writes, and the prefix holds no other pool's disk. Returns the disk, opened.
    pub fn vet_object_disk(&self, pool: &Pool, url: &str, capacity_bytes: Option<u64>) -> Result<VettedObject> {
        let Some(capacity) = capacity_bytes else {
            return Err(Error::InvalidArgument(format!(
                "{url}: a disk on an object store needs --capacity (a store has no size of its own to ask)"
            )));
        };
        let stores = self.stores.as_ref().ok_or_else(|| no_client(url))?;
        let url = stores.canonical(url).map_err(Error::InvalidArgument)?;
        let location = DiskLocation::Object(url.clone());
        if let Some(other) = self.config.disks.iter().find(|d| d.path.overlaps(&location)) {
            return Err(Error::Exists(format!(
                "{location} is already a disk of this pool (or overlaps disk {})",
                other.path
            )));
        }
        let device = open_object(self.stores.as_ref(), &url, ObjectDiskOpen::New { capacity_bytes: capacity })?;
        let failed = match self.vet_label(pool, &location, device.as_ref(), capacity_bytes)? {
            VettedLabel::Failed => None,
            VettedLabel::New(uuid) => Some(uuid),
        };
        Ok(VettedObject { location, device, new_uuid: failed })
    }

    /// Adds the disk `vet_object_disk` found, of `capacity_bytes` (the capacity it was
    /// vetted with), without opening or probing the store again. A failed disk of this
    /// pool there is taken back instead.
    pub fn add_object_disk(
        &mut self,
        pool: &mut Pool,
        vetted: VettedObject,
        capacity_bytes: Option<u64>,
    ) -> Result<DiskId> {
        let VettedObject { location, device, new_uuid } = vetted;
        let Some(uuid) = new_uuid else {
            return match self.readmit_if_failed(pool, location.clone(), device)? {
                Some(readmitted) => Ok(readmitted.disk),
                None => Err(Error::Io(format!("{location}: the failed disk there changed"))),
            };
        };
        let label = DiskLabel { pool_id: self.config.pool_id, disk_uuid: uuid, capacity_bytes };
        device
            .write(BlockName::Label, &label.encode())
            .and_then(|()| device.sync())
            .map_err(|e| Error::Io(format!("writing the label on {location}: {e}")))?;
        self.register(pool, DiskEntry { uuid, path: location }, capacity_bytes, device)
    }

    /// The last step of adding a labelled disk: the config names it, then the pool takes
    /// it; if the pool refuses, the config is put back.
    fn register(
        &mut self,
        pool: &mut Pool,
        entry: DiskEntry,
        capacity_bytes: Option<u64>,
        device: Arc<dyn BlockDevice>,
    ) -> Result<DiskId> {
        let previous = self.config.clone();
        let uuid = entry.uuid;
        self.config.disks.push(entry);
        write_config(&self.path, &self.config)?;
        self.publish_locations();
        match pool.add_disk(uuid, capacity_bytes, device) {
            Ok(id) => {
                self.copy_config(pool);
                Ok(id)
            }
            Err(e) => {
                self.config = previous;
                let _ = write_config(&self.path, &self.config);
                self.publish_locations();
                Err(e)
            }
        }
    }
}

/// What `vet_label` found.
enum VettedLabel {
    /// A failed disk of this pool: taken back.
    Failed,
    /// A disk to add under this uuid.
    New(Uuid),
}

/// A disk on an object store that `vet_object_disk` found can be added.
pub struct VettedObject {
    /// Where it is, as the config will name it.
    pub location: DiskLocation,
    /// The disk, opened.
    pub device: Arc<dyn BlockDevice>,
    /// The uuid it is added under; `None`: a failed disk of this pool, taken back.
    pub new_uuid: Option<Uuid>,
}

fn no_client(url: &str) -> Error {
    Error::NotSupported(format!("{url}: this program was built without an object store client"))
}

/// Opens the disk at `url` through the binary's object-store client.
fn open_object(stores: Option<&Arc<dyn ObjectStores>>, url: &str, how: ObjectDiskOpen) -> Result<Arc<dyn BlockDevice>> {
    let stores = stores.ok_or_else(|| no_client(url))?;
    stores.open(url, how).map_err(|e| match e {
        DeviceError::Unavailable(reason) => Error::Io(reason),
        DeviceError::NoSpace => Error::NoSpace(url.to_string()),
        e => Error::Io(format!("{url}: {e}")),
    })
}

/// Opens one disk of the pool. A disk is only ever what its label says: a directory that
/// cannot be opened, or whose label is missing, unreadable, or names another pool or
/// disk, is unavailable (read around, never written); one whose directory another
/// process holds is busy. A local disk's directory is locked for this process; a disk on
/// an object store cannot be locked, and is fenced by owners' claims instead
/// (`media::owner`).
fn open_disk_quietly(
    entry: &DiskEntry,
    pool_id: Uuid,
    locks: &DiskLocks,
    stores: Option<&Arc<dyn ObjectStores>>,
) -> std::result::Result<Arc<dyn BlockDevice>, DiskOpenError> {
    let unavailable = DiskOpenError::Unavailable;
    let disk: Arc<dyn BlockDevice> = match &entry.path {
        DiskLocation::Local(dir) => {
            Arc::new(DirDisk::open(dir).map_err(|e| unavailable(format!("cannot be opened: {e}")))?)
        }
        DiskLocation::Object(url) => open_object(stores, url, ObjectDiskOpen::Existing)
            .map_err(|e| unavailable(format!("cannot be opened: {e}")))?,
    };
    match DiskLabel::read(disk.as_ref()) {
        Ok(label) if label.pool_id == pool_id && label.disk_uuid == entry.uuid => {
            if let Some(dir) = entry.path.local() {
                lock_disk_dir(dir, entry.uuid, locks)?;
            }
            Ok(disk)
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
    /// DynamicFS blocks and label, so the directory (or prefix) can be reused or deleted.
    pub fn forget_disk(&mut self, pool: &mut Pool, disk: DiskId) -> Result<()> {
        let Some(uuid) = pool.state().disks.get(&disk).map(|d| d.uuid) else {
            return Err(Error::NotFound(format!("disk {disk}")));
        };
        let Some(entry) = self.config.disks.iter().find(|d| d.uuid == uuid).cloned() else {
            return Ok(());
        };
        // Best effort: the disk has already left the pool; what stays is only litter.
        match &entry.path {
            DiskLocation::Local(dir) => {
                if let Ok(device) = DirDisk::open(dir) {
                    let _ = device.wipe();
                }
            }
            DiskLocation::Object(url) => {
                if let Ok(device) = open_object(self.stores.as_ref(), url, ObjectDiskOpen::Existing) {
                    for kind in BlockKind::ALL.into_iter().rev() {
                        for name in device.list(kind).unwrap_or_default() {
                            let _ = device.delete(name);
                        }
                    }
                }
            }
        }
        let mut config = self.config.clone();
        config.disks.retain(|d| d.uuid != uuid);
        self.disk_locks.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&uuid);
        self.save(pool, config)
    }
}

/// The config as the block each disk keeps a copy of (`BlockName::PoolConfig`).
fn encode_copy(config: &PoolConfig) -> Vec<u8> {
    frame::encode(FrameKind::PoolConfig, config).0
}

fn decode_copy(block: &[u8]) -> std::result::Result<PoolConfig, frame::FrameError> {
    frame::decode(FrameKind::PoolConfig, block).map(|(config, _)| config)
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
