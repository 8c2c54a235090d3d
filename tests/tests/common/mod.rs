//! What the engine's integration tests share: a `MemDisk` with a tap on its reads and
//! writes, for tests that count them or hold them back.
#![allow(dead_code)]

use std::sync::Arc;

use dfs_engine::media::device::{BlockDevice, BlockKind, BlockName, DeviceError, SharedFree};
use dfs_sim::memdisk::MemDisk;

/// Called with a block's name before the disk reads or writes it.
pub type Tap = Box<dyn Fn(BlockName) + Send + Sync>;

/// `disk`, with `before_read` called before each read and `before_write` before each
/// write; otherwise the disk itself.
pub struct Tapped {
    pub disk: Arc<MemDisk>,
    pub before_read: Tap,
    pub before_write: Tap,
}

impl Tapped {
    /// `disk` with no taps.
    pub fn new(disk: Arc<MemDisk>) -> Tapped {
        Tapped { disk, before_read: Box::new(|_| {}), before_write: Box::new(|_| {}) }
    }
}

impl BlockDevice for Tapped {
    fn read(&self, name: BlockName) -> Result<Vec<u8>, DeviceError> {
        (self.before_read)(name);
        self.disk.read(name)
    }
    fn read_with(&self, name: BlockName, visit: &mut dyn FnMut(&[u8])) -> Result<(), DeviceError> {
        (self.before_read)(name);
        self.disk.read_with(name, visit)
    }
    fn write(&self, name: BlockName, data: &[u8]) -> Result<(), DeviceError> {
        (self.before_write)(name);
        self.disk.write(name, data)
    }
    fn delete(&self, name: BlockName) -> Result<(), DeviceError> {
        self.disk.delete(name)
    }
    fn list(&self, kind: BlockKind) -> Result<Vec<BlockName>, DeviceError> {
        self.disk.list(kind)
    }
    fn sync(&self) -> Result<(), DeviceError> {
        self.disk.sync()
    }
    fn capacity_bytes(&self) -> u64 {
        self.disk.capacity_bytes()
    }
    fn used_bytes(&self) -> u64 {
        self.disk.used_bytes()
    }
    fn shared_free(&self) -> Option<SharedFree> {
        self.disk.shared_free()
    }
    fn describe(&self) -> String {
        self.disk.describe()
    }
    fn modified_secs(&self, name: BlockName) -> Result<Option<i64>, DeviceError> {
        self.disk.modified_secs(name)
    }
}
