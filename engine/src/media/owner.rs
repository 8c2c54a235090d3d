//! Owners of a pool on shared devices: the claim each opening process writes, and the
//! device wrapper that stops a superseded owner from writing.
//!
//! Why: a local disk's directory is locked by the one process that serves it, but a disk
//! on an object store (`BlockDevice::shared`) can be written by a process on another
//! machine at the same time — the old owner of a pool that a new machine imported while
//! the old one was only paused. The two must never both commit.
//!
//! Protocol (SlateDB's and Delta Lake's, on our block names):
//! - **Claim at open.** Before recovery reads the journal, the opener lists the `Owner`
//!   claims on every reachable shared device, takes `epoch` = the highest + 1, and
//!   creates `Owner { epoch }` on each of them, create-only. A claim that is `Taken` means
//!   another process is opening the pool at this moment: the open is refused. Claims are
//!   never replaced or trimmed, so epochs only grow.
//! - **Create-only writes.** Through `OwnedDevice`, every block that two owners could
//!   both write — journal records, checkpoints, store pages and roots, fragments — is
//!   written create-only. `Taken` means someone wrote that name: if a later claim
//!   exists, this process has been fenced (`DeviceError::Fenced`, nothing written);
//!   otherwise it is the newest owner, the block is an earlier owner's leftover (a crash,
//!   a fenced writer) that nothing it recovered refers to, and it is replaced.
//! - **A journal record counts only if no later claim exists once it has landed.** A
//!   later owner that read the journal before this record landed never recovered it, and
//!   will write its own record under that number: so after a record's create succeeds,
//!   `Owner { epoch + 1 }` is looked up on the same device, and if it is there the write
//!   fails as fenced. A later owner claims before it recovers, so any record it did not
//!   recover is caught this way.
//! - **Fenced is final.** Once any write found a later claim, the shared `Fence` says so
//!   and every `OwnedDevice` of the pool refuses writes and deletes; the pool goes
//!   read-only with the claim's owner named.
//!
//! Devices that are not shared are not wrapped: their lock already keeps one writer.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::base::clock::WallTime;
use crate::media::device::{BlockCheck, BlockDevice, BlockKind, BlockName, Created, DeviceError, SharedFree};
use crate::media::frame::{self, FrameKind};
use crate::media::landing::Landing;
use crate::media::read_buffer::ReadBuffer;

/// How many times an opener takes a fresh epoch after losing a race for one.
const CLAIM_ATTEMPTS: usize = 3;

/// One owner's claim, written as `BlockName::Owner { epoch }`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerClaim {
    pub pool_id: Uuid,
    pub epoch: u64,
    /// Who claimed: host and process, for the message a fenced owner shows.
    pub by: String,
    /// When it claimed (the pool's `Clock`).
    pub at: WallTime,
}

impl OwnerClaim {
    /// The claim as a framed, checksummed block.
    pub fn encode(&self) -> Vec<u8> {
        frame::encode(FrameKind::OwnerClaim, self).0
    }

    /// Decodes and verifies a claim block.
    pub fn decode(block: &[u8]) -> Result<OwnerClaim, frame::FrameError> {
        frame::decode(FrameKind::OwnerClaim, block).map(|(claim, _)| claim)
    }
}

/// Why a claim could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    /// Another process claimed the same epoch on some device first, each time it was tried.
    #[error("another process is opening this pool at the same time (it claimed epoch {epoch} first on {device})")]
    Raced { epoch: u64, device: String },
    /// No shared device could take the claim.
    #[error("no shared disk of the pool took this process's claim: {0}")]
    Unreachable(String),
}

/// The owner's view of the fence, shared by the pool and all its `OwnedDevice`s.
#[derive(Debug)]
pub struct Fence {
    epoch: u64,
    fenced: Mutex<Option<String>>,
}

impl Fence {
    /// The epoch this process claimed.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Why this process was fenced, once it has been.
    pub fn fenced(&self) -> Option<String> {
        self.fenced.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    fn fence(&self, reason: String) -> DeviceError {
        let mut fenced = self.fenced.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if fenced.is_none() {
            tracing::error!(%reason, epoch = self.epoch, "fenced");
            *fenced = Some(reason.clone());
        }
        DeviceError::Fenced(fenced.clone().unwrap_or(reason))
    }

    /// `Err(Fenced)` when `device` holds a claim later than this owner's (or this process
    /// was fenced before).
    fn check(&self, device: &dyn BlockDevice) -> Result<(), DeviceError> {
        if let Some(reason) = self.fenced() {
            return Err(DeviceError::Fenced(reason));
        }
        let later = BlockName::Owner { epoch: self.epoch + 1 };
        match device.read(later) {
            Err(DeviceError::NotFound) => Ok(()),
            Err(e) => Err(e),
            Ok(block) => {
                let by = match OwnerClaim::decode(&block) {
                    Ok(claim) => format!("{} (epoch {}, at {})", claim.by, claim.epoch, claim.at),
                    Err(_) => format!("an owner of epoch {}", self.epoch + 1),
                };
                Err(self.fence(format!(
                    "fenced: {by} opened this pool after this process (epoch {}) and owns it now, as {} shows; \
                     this process stopped writing. Unmount it here, and open the pool here again only once the \
                     other machine has stopped serving it",
                    self.epoch,
                    device.describe()
                )))
            }
        }
    }
}

/// Claims the pool on every shared device of `devices` that answers: the next epoch
/// after every claim found, created on each. `Ok(None)` when no device is shared.
pub fn claim(
    devices: &[&dyn BlockDevice],
    pool_id: Uuid,
    by: &str,
    at: WallTime,
) -> Result<Option<Arc<Fence>>, ClaimError> {
    let shared: Vec<&dyn BlockDevice> = devices.iter().copied().filter(|d| d.shared()).collect();
    if shared.is_empty() {
        return Ok(None);
    }
    let mut raced = None;
    for _ in 0..CLAIM_ATTEMPTS {
        let mut errors = Vec::new();
        let mut highest = 0;
        let mut reachable = Vec::new();
        for device in &shared {
            match device.list(BlockKind::Owner) {
                Ok(names) => {
                    let listed = names
                        .iter()
                        .filter_map(|n| if let BlockName::Owner { epoch } = n { Some(*epoch) } else { None })
                        .fold(highest, u64::max);
                    // Claims the listing does not show yet.
                    let past = crate::media::device::held_past(*device, listed, |epoch| BlockName::Owner { epoch });
                    highest = listed + past.len() as u64;
                    reachable.push(*device);
                }
                Err(e) => errors.push(format!("{}: {e}", device.describe())),
            }
        }
        if reachable.is_empty() {
            return Err(ClaimError::Unreachable(errors.join("; ")));
        }
        let epoch = highest + 1;
        let block = OwnerClaim { pool_id, epoch, by: by.to_string(), at }.encode();
        let mut placed = 0;
        let mut lost = None;
        for device in &reachable {
            match device.create(BlockName::Owner { epoch }, &block).and_then(|c| device.sync().map(|()| c)) {
                Ok(Created::Written) => placed += 1,
                Ok(Created::Taken) => {
                    lost = Some(device.describe());
                    break;
                }
                Err(e) => errors.push(format!("{}: {e}", device.describe())),
            }
        }
        if let Some(device) = lost {
            raced = Some(ClaimError::Raced { epoch, device });
            continue;
        }
        if placed == 0 {
            return Err(ClaimError::Unreachable(errors.join("; ")));
        }
        debug_assert!(placed <= reachable.len());
        return Ok(Some(Arc::new(Fence { epoch, fenced: Mutex::new(None) })));
    }
    Err(raced.unwrap_or_else(|| ClaimError::Unreachable("no attempt was made".into())))
}

/// Whether writes of `name` must be create-only on a shared device: every block two
/// owners could both write. Labels, claims and the config copy are written by one owner
/// at a time through the pool directory.
fn contested(name: BlockName) -> bool {
    matches!(
        name.kind(),
        BlockKind::Journal | BlockKind::Checkpoint | BlockKind::StoreRoot | BlockKind::StorePage | BlockKind::Fragment
    )
}

/// A shared device as one owner of the pool writes it (see the module header).
pub struct OwnedDevice {
    inner: Arc<dyn BlockDevice>,
    fence: Arc<Fence>,
}

impl OwnedDevice {
    /// `device` written under `fence`; a device that is not shared is returned as it is.
    pub fn wrap(device: Arc<dyn BlockDevice>, fence: Option<&Arc<Fence>>) -> Arc<dyn BlockDevice> {
        match fence {
            Some(fence) if device.shared() => Arc::new(OwnedDevice { inner: device, fence: fence.clone() }),
            _ => device,
        }
    }
}

impl BlockDevice for OwnedDevice {
    fn read(&self, name: BlockName) -> Result<Vec<u8>, DeviceError> {
        self.inner.read(name)
    }

    fn read_with(&self, name: BlockName, visit: &mut dyn FnMut(&[u8])) -> Result<(), DeviceError> {
        self.inner.read_with(name, visit)
    }

    fn read_appending(
        &self,
        name: BlockName,
        skip: usize,
        out: &mut Landing,
        check: BlockCheck<'_>,
    ) -> Result<bool, DeviceError> {
        self.inner.read_appending(name, skip, out, check)
    }

    fn read_into(&self, names: &[BlockName], out: &mut ReadBuffer) -> Vec<Option<std::ops::Range<usize>>> {
        self.inner.read_into(names, out)
    }

    fn write(&self, name: BlockName, data: &[u8]) -> Result<(), DeviceError> {
        if let Some(reason) = self.fence.fenced() {
            return Err(DeviceError::Fenced(reason));
        }
        if !contested(name) {
            return self.inner.write(name, data);
        }
        match self.inner.create(name, data)? {
            Created::Written => {}
            Created::Taken => {
                self.fence.check(self.inner.as_ref())?;
                self.inner.write(name, data)?;
            }
        }
        if name.kind() == BlockKind::Journal {
            self.fence.check(self.inner.as_ref())?;
        }
        Ok(())
    }

    fn create(&self, name: BlockName, data: &[u8]) -> Result<Created, DeviceError> {
        if let Some(reason) = self.fence.fenced() {
            return Err(DeviceError::Fenced(reason));
        }
        self.inner.create(name, data)
    }

    fn shared(&self) -> bool {
        true
    }

    fn delete(&self, name: BlockName) -> Result<(), DeviceError> {
        if let Some(reason) = self.fence.fenced() {
            return Err(DeviceError::Fenced(reason));
        }
        self.inner.delete(name)
    }

    fn list(&self, kind: BlockKind) -> Result<Vec<BlockName>, DeviceError> {
        self.inner.list(kind)
    }

    fn sync(&self) -> Result<(), DeviceError> {
        self.inner.sync()
    }

    fn capacity_bytes(&self) -> u64 {
        self.inner.capacity_bytes()
    }

    fn used_bytes(&self) -> u64 {
        self.inner.used_bytes()
    }

    fn shared_free(&self) -> Option<SharedFree> {
        self.inner.shared_free()
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn modified_secs(&self, name: BlockName) -> Result<Option<i64>, DeviceError> {
        self.inner.modified_secs(name)
    }
}
