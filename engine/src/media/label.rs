//! The disk label: the block that says which pool a disk belongs to and who it is.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::media::device::{BlockDevice, BlockName, DeviceError};
use crate::media::frame::{self, FrameKind};

/// Identity of a disk, written as `BlockName::Label` on the disk itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskLabel {
    /// The pool this disk belongs to.
    pub pool_id: Uuid,
    /// This disk, unique across pools.
    pub disk_uuid: Uuid,
    /// The capacity given when the disk was added; `None` means "the free space of the
    /// filesystem holding it".
    pub capacity_bytes: Option<u64>,
}

/// Why a label could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    #[error("no disk label")]
    Missing,
    #[error("disk label unreadable: {0}")]
    Device(DeviceError),
    #[error("disk label corrupt: {0}")]
    Corrupt(frame::FrameError),
}

impl DiskLabel {
    /// The label as a framed, checksummed block.
    pub fn encode(&self) -> Vec<u8> {
        frame::encode(FrameKind::Label, self).0
    }

    /// Decodes and verifies a label block.
    pub fn decode(block: &[u8]) -> Result<DiskLabel, LabelError> {
        frame::decode(FrameKind::Label, block).map(|(label, _)| label).map_err(LabelError::Corrupt)
    }

    /// Reads the label of `device`.
    pub fn read(device: &dyn BlockDevice) -> Result<DiskLabel, LabelError> {
        match device.read(BlockName::Label) {
            Ok(block) => DiskLabel::decode(&block),
            Err(DeviceError::NotFound) => Err(LabelError::Missing),
            Err(e) => Err(LabelError::Device(e)),
        }
    }
}
