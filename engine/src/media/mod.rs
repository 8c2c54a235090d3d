//! What lies on a disk: the `BlockDevice` seam and its directory implementation, framed
//! and checksummed blocks, fragments, disk labels, owners' claims on shared devices and the
//! erasure/replication codecs, and syncing devices that share a filesystem with one flush.
//! Imports only `base`.

pub mod codec;
pub mod device;
pub mod dirdisk;
pub mod fragment;
pub mod frame;
pub mod group_sync;
pub mod journal_log;
pub mod label;
pub mod landing;
pub mod owner;
pub mod read_buffer;
pub mod segments;
