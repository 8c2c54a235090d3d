//! Reports for operators: disks, extents with their health, and redundancy totals.
//!
//! Health without `verify` is judged from which fragment blocks exist on reachable disks
//! (plus what reads found since the pool was opened); with `verify` every fragment is
//! read and its checksum checked. Does not change anything.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::media::codec;
use crate::media::device::{BlockKind, BlockName, ExtentId};
use crate::media::fragment;
use crate::meta::state::{ChunkSlot, DiskId, DiskState, ExtentCore, Ino, InodeKind, EXTENT_BYTES_MAX};
use crate::pool::Pool;

/// How well an extent meets its policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Every fragment is present.
    Healthy,
    /// Some fragments are missing, but enough remain to read it.
    Degraded,
    /// Too few fragments remain: the data cannot be read.
    Lost,
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Health::Healthy => "healthy",
            Health::Degraded => "degraded",
            Health::Lost => "lost",
        })
    }
}

/// One disk, for `list-disks`.
#[derive(Clone, Debug, Serialize)]
pub struct DiskInfo {
    pub id: String,
    pub uuid: String,
    pub path: String,
    /// What it may hold: of an active disk, with free space it shares with other disks
    /// of the pool (directories on one filesystem) split among them (`Pool::space_for`).
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    /// `active`, `draining`, `failed`, `removed`, or `offline` (`offline (draining)`).
    pub state: String,
    pub fragments: usize,
    pub journal_replica: bool,
    pub reachable: bool,
    /// When the state last changed (wall seconds), if the change was dated (format 3).
    pub changed_secs: Option<i64>,
    /// Why the disk is offline.
    pub offline_reason: Option<String>,
    /// When an offline disk will be marked failed if it is not back (wall seconds).
    pub fails_at_secs: Option<i64>,
    /// Extents written while it was away, to repair onto it.
    pub owed_extents: usize,
    /// Less room left than one fragment of a full extent: its declared capacity, or the
    /// filesystem it lives on, is exhausted.
    pub full: bool,
    /// The other active disks that are directories of the same filesystem as this one
    /// (active itself): they share its free space, and whatever takes that filesystem
    /// down takes them together, whatever the policy.
    pub shares_filesystem_with: Vec<String>,
}

/// Free space below which a disk counts as full: one fragment of a full extent.
pub const FULL_BELOW_BYTES: u64 = crate::meta::state::EXTENT_BYTES_MAX + crate::media::fragment::HEADER_LEN as u64;

/// One extent, for `list-extents`.
#[derive(Clone, Debug, Serialize)]
pub struct ExtentInfo {
    /// Its name, `INO:INDEX` (see `ChunkSlot`): the same in every command and report.
    pub extent: String,
    /// The internal id its fragments are stored under on the disks (fragment file
    /// names start with it); every re-encode, rebuild or overwrite replaces it.
    pub stored_as: String,
    pub file: String,
    pub offset: u64,
    pub length: u32,
    pub policy: String,
    pub codec: String,
    /// Held inline in the metadata (a small file's bytes): no fragments, and as healthy
    /// as the metadata that holds it.
    pub inline: bool,
    pub health: Health,
    pub fragments_available: usize,
    pub fragments_total: usize,
    pub disks: Vec<String>,
}

/// Extents and bytes in one bucket.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Tally {
    pub extents: u64,
    pub bytes: u64,
}

/// Totals for `show-redundancy`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RedundancySummary {
    pub by_policy: BTreeMap<String, Tally>,
    pub by_health: BTreeMap<Health, Tally>,
    /// File bytes held in extents.
    pub data_bytes: u64,
    /// The part of `data_bytes` held inline in the metadata (small files): in no fragment,
    /// so not in `raw_bytes`.
    pub inline_bytes: u64,
    /// Bytes of fragment blocks on disks (headers and padding included).
    pub raw_bytes: u64,
    /// `raw_bytes / data_bytes`.
    pub overhead_ratio: f64,
}

impl Pool {
    /// Every disk with its usage.
    pub fn disk_infos(&self) -> Vec<DiskInfo> {
        let journal: BTreeSet<DiskId> = self.journal_disks().into_iter().collect();
        let spaces = self.disk_spaces();
        let capacities = crate::pool::shared_space::share_free_space(&spaces);
        let sources: BTreeMap<DiskId, u64> = spaces.iter().filter_map(|d| Some((d.id, d.shared?.source))).collect();
        let sharing = |id: DiskId| -> Vec<String> {
            let Some(source) = sources.get(&id) else { return Vec::new() };
            sources
                .iter()
                .filter(|(other, s)| **other != id && *s == source)
                .map(|(other, _)| other.to_string())
                .collect()
        };
        self.state
            .disks
            .values()
            .map(|disk| {
                let device = self.devices.get(&disk.id);
                let offline = self.state.offline.get(&disk.id).filter(|_| disk.state.readable());
                let state = match (offline, disk.state) {
                    (Some(_), DiskState::Draining) => "offline (draining)".to_string(),
                    (Some(_), _) => "offline".to_string(),
                    (None, state) => state.to_string(),
                };
                let grace = i64::try_from(self.state.availability.grace_secs).unwrap_or(i64::MAX);
                let capacity_bytes = match capacities.get(&disk.id) {
                    Some(capacity) => *capacity,
                    None => device.map(|d| d.capacity_bytes()).unwrap_or(0),
                };
                let used_bytes = device.map(|d| d.used_bytes()).unwrap_or(0);
                DiskInfo {
                    id: disk.id.to_string(),
                    uuid: disk.uuid.to_string(),
                    path: device.map(|d| d.describe()).unwrap_or_default(),
                    capacity_bytes,
                    used_bytes,
                    state,
                    fragments: self.count_on(disk.id),
                    journal_replica: journal.contains(&disk.id),
                    reachable: offline.is_none() && device.is_some_and(|d| d.list(BlockKind::Label).is_ok()),
                    changed_secs: self.state.disk_changed.get(&disk.id).map(|t| t.secs),
                    offline_reason: offline.map(|o| o.reason.clone()),
                    fails_at_secs: offline.map(|o| o.since.secs.saturating_add(grace)),
                    owed_extents: self.state.owed.get(&disk.id).map_or(0, BTreeSet::len),
                    full: disk.state == DiskState::Active
                        && offline.is_none()
                        && capacity_bytes.saturating_sub(used_bytes) < FULL_BELOW_BYTES,
                    shares_filesystem_with: sharing(disk.id),
                }
            })
            .collect()
    }

    /// The path of every reachable inode.
    pub fn paths(&self) -> BTreeMap<Ino, String> {
        let mut paths = BTreeMap::new();
        paths.insert(Ino::ROOT, "/".to_string());
        let mut stack = vec![(Ino::ROOT, String::new())];
        while let Some((dir, prefix)) = stack.pop() {
            for (name, child) in self.state.dirs.get(&dir).into_iter().flatten() {
                let path = format!("{prefix}/{}", String::from_utf8_lossy(name));
                paths.entry(*child).or_insert_with(|| path.clone());
                if self.state.inodes.get(child).is_some_and(|i| i.kind == InodeKind::Directory) {
                    stack.push((*child, path));
                }
            }
        }
        paths
    }

    /// The fragments each disk holds; none for an offline disk (reads go around it, so
    /// what only it holds is unreadable until it rejoins).
    fn present_fragments(&self) -> BTreeMap<DiskId, BTreeSet<BlockName>> {
        self.read_devices()
            .iter()
            .filter_map(|(id, d)| d.list(BlockKind::Fragment).ok().map(|names| (*id, names.into_iter().collect())))
            .collect()
    }

    fn fragment_ok(
        &self,
        id: ExtentId,
        record: &ExtentCore,
        index: usize,
        present: &BTreeMap<DiskId, BTreeSet<BlockName>>,
        verify: bool,
    ) -> bool {
        let disk = record.fragments[index];
        let name = BlockName::Fragment { extent: id, index: index as u8 };
        if !present.get(&disk).is_some_and(|names| names.contains(&name)) {
            // A store's listing may not show a new block yet: asked for by name, it answers.
            let unlisted = self.devices.get(&disk).is_some_and(|d| d.shared() && d.modified_secs(name).is_ok());
            if !unlisted {
                return false;
            }
        }
        if !verify {
            return true;
        }
        let shard_len = codec::shard_len(record.policy, record.len as usize);
        self.devices
            .get(&disk)
            .and_then(|d| d.read(name).ok())
            .is_some_and(|block| fragment::verify(&block, id, index as u8, shard_len).is_ok())
    }

    fn health(
        &self,
        id: ExtentId,
        record: &ExtentCore,
        present: &BTreeMap<DiskId, BTreeSet<BlockName>>,
        verify: bool,
    ) -> (Health, usize) {
        if record.is_inline() {
            // Inline data is as healthy as the metadata that holds it, which is open.
            return (Health::Healthy, 0);
        }
        let available =
            (0..record.fragments.len()).filter(|i| self.fragment_ok(id, record, *i, present, verify)).count();
        (health_of(record, available, !verify && self.degraded.contains(&id)), available)
    }

    /// Every extent of the files under `under` (all files when `None`), in file order.
    pub fn list_extents(&self, under: Option<Ino>, verify: bool) -> Vec<ExtentInfo> {
        let paths = self.paths();
        let present = self.present_fragments();
        let prefix = under.and_then(|ino| paths.get(&ino)).cloned();
        let mut out = Vec::new();
        for ino in self.state.file_extents.keys() {
            let path = paths.get(ino).cloned().unwrap_or_else(|| format!("<unlinked inode {}>", ino.0));
            if let (Some(prefix), Some(under)) = (&prefix, under) {
                let inside = *ino == under || prefix == "/" || path.starts_with(&format!("{prefix}/"));
                if !inside {
                    continue;
                }
            }
            // A chunk's layers follow its extent, under the same chunk name.
            for (index, id) in self.state.file_extent_ids(*ino) {
                let Some(record) = self.state.extents.get(&id) else {
                    continue;
                };
                let (health, available) = self.health(id, record, &present, verify);
                out.push(ExtentInfo {
                    extent: ChunkSlot { ino: *ino, index }.to_string(),
                    stored_as: id.to_string(),
                    file: path.clone(),
                    offset: index * EXTENT_BYTES_MAX,
                    length: record.len,
                    policy: record.policy.to_string(),
                    codec: format!("{:?}", record.codec),
                    inline: record.is_inline(),
                    health,
                    fragments_available: available,
                    fragments_total: record.fragments.len(),
                    disks: record.fragments.iter().map(ToString::to_string).collect(),
                });
            }
        }
        out
    }

    /// Totals per policy and per health, raw bytes and the overhead ratio.
    pub fn redundancy_summary(&self, verify: bool) -> RedundancySummary {
        let present = self.present_fragments();
        let mut summary = RedundancySummary::default();
        for (id, record) in self.state.extents.iter() {
            let bytes = u64::from(record.len);
            let (health, _) = self.health(id, record, &present, verify);
            let tally = summary.by_policy.entry(record.policy.to_string()).or_default();
            tally.extents += 1;
            tally.bytes += bytes;
            let tally = summary.by_health.entry(health).or_default();
            tally.extents += 1;
            tally.bytes += bytes;
            summary.data_bytes += bytes;
            if record.is_inline() {
                summary.inline_bytes += bytes;
            }
            let block = (fragment::HEADER_LEN + codec::shard_len(record.policy, record.len as usize)) as u64;
            summary.raw_bytes += block * record.fragments.len() as u64;
        }
        summary.overhead_ratio =
            if summary.data_bytes == 0 { 0.0 } else { summary.raw_bytes as f64 / summary.data_bytes as f64 };
        summary
    }

    /// An extent's health from what the pool knows without listing a disk: a fragment
    /// is available when its disk can be read and is not owed it (written while the disk
    /// was offline); an extent a read or scrub found damaged is degraded. What nobody has
    /// read since it went bad shows only once a read or the scrubber finds it.
    pub fn known_health(&self, id: ExtentId, record: &ExtentCore) -> (Health, usize) {
        if record.is_inline() {
            return (Health::Healthy, 0);
        }
        let owed = |disk: &DiskId| self.state.owed.get(disk).is_some_and(|owed| owed.contains(&id));
        let available = record.fragments.iter().filter(|disk| self.state.disk_readable(**disk) && !owed(disk)).count();
        (health_of(record, available, self.degraded.contains(&id)), available)
    }

    /// The extents whose known health may be short of healthy — those with a fragment on
    /// a disk that cannot be read, owed to a disk, or found damaged — from the indexes,
    /// without visiting the others. Ascending.
    pub fn suspect_extents(&self) -> Vec<ExtentId> {
        let mut suspects: BTreeSet<ExtentId> = self.degraded.iter().copied().collect();
        suspects.extend(self.state.owed.values().flatten());
        for disk in self.state.extent_index.disks().filter(|d| !self.state.disk_readable(*d)) {
            suspects.extend(self.state.extent_index.on_disk(disk));
        }
        suspects.into_iter().filter(|id| self.state.extents.contains_key(id)).collect()
    }

    /// The ids of extents that cannot be read by what the pool knows (`known_health`).
    pub fn known_lost_extents(&self) -> Vec<ExtentId> {
        let lost =
            |id: &ExtentId| self.state.extents.get(id).is_some_and(|r| self.known_health(*id, r).0 == Health::Lost);
        self.suspect_extents().into_iter().filter(lost).collect()
    }

    /// The ids of extents whose data can no longer be read, by presence of fragments.
    pub fn lost_extents(&self) -> Vec<ExtentId> {
        let present = self.present_fragments();
        self.state
            .extents
            .iter()
            .filter(|(id, r)| self.health(*id, r, &present, false).0 == Health::Lost)
            .map(|(id, _)| id)
            .collect()
    }
}

/// The health of a stored extent with `available` usable fragments; `damaged` when a read
/// or scrub found it so.
fn health_of(record: &ExtentCore, available: usize, damaged: bool) -> Health {
    if available < record.policy.needed() {
        Health::Lost
    } else if available < record.fragments.len() || damaged {
        Health::Degraded
    } else {
        Health::Healthy
    }
}
