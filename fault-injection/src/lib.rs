//! `FaultyDevice<D>`: a `BlockDevice` decorator that injects the faults real disks have,
//! around the simulator's in-memory disk and the production `DirDisk` alike.
//!
//! Fault model (the ledger is kept apart from the data, which it never changes):
//! - **bit rot**: reads of a rotted block return it with one bit flipped, until the block
//!   is rewritten or deleted;
//! - **latent read error**: reads of the block fail with `Io` until it is rewritten;
//! - **misdirected write**: the next write of a fragment lands under another block's name
//!   (the intended block is left as it was);
//! - **full**: every write fails with `NoSpace`;
//! - **dead** / **vanished**: every call fails with `Unavailable` (a vanished disk can return);
//! - **latency**: every call reports `ticks` to a latency sink (the simulated clock, or a
//!   real sleep around `DirDisk`);
//! - **crash**: a `CrashSwitch` shared by every device of one machine stops the world after
//!   the n-th write (or on demand): from then on every call on every device fails, so
//!   nothing more reaches the media, and the caller performs the crash on the backends.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use dfs_engine::media::device::{BlockDevice, BlockKind, BlockName, Created, DeviceError, SharedFree};
use serde::{Deserialize, Serialize};

/// Stops every device of one machine at once. Shared by all `FaultyDevice`s of a world.
#[derive(Debug, Default)]
pub struct CrashSwitch {
    writes: AtomicU64,
    crash_after_writes: AtomicU64,
    armed: AtomicBool,
    crashed: AtomicBool,
}

impl CrashSwitch {
    /// A switch that is not armed.
    pub fn new() -> Arc<CrashSwitch> {
        Arc::new(CrashSwitch::default())
    }

    /// Crashes after `writes` more device writes have been issued (they land as unsynced).
    pub fn arm_after_writes(&self, writes: u64) {
        self.crash_after_writes.store(self.writes.load(Ordering::SeqCst) + writes, Ordering::SeqCst);
        self.armed.store(true, Ordering::SeqCst);
    }

    /// Crashes now: every later call fails.
    pub fn crash_now(&self) {
        self.crashed.store(true, Ordering::SeqCst);
    }

    /// Whether the world has stopped.
    pub fn is_crashed(&self) -> bool {
        self.crashed.load(Ordering::SeqCst)
    }

    /// Device writes issued since the switch was made.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }

    /// Restarts the world after the crash was performed: disarmed, not crashed.
    pub fn reset(&self) {
        self.armed.store(false, Ordering::SeqCst);
        self.crashed.store(false, Ordering::SeqCst);
    }

    /// Counts a write; `false` when this write must not happen (the world stopped).
    fn admit_write(&self) -> bool {
        if self.is_crashed() {
            return false;
        }
        let count = self.writes.fetch_add(1, Ordering::SeqCst) + 1;
        if self.armed.load(Ordering::SeqCst) && count > self.crash_after_writes.load(Ordering::SeqCst) {
            self.crash_now();
            return false;
        }
        true
    }
}

/// A fault to inject, as scenario files and test plans name them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Fault {
    /// Every call fails from now on.
    Die,
    /// Every call fails until `Return`.
    Vanish,
    /// A vanished disk comes back with what it held.
    Return,
    /// Every write fails with `NoSpace`.
    Fill,
    /// Writes succeed again.
    Unfill,
    /// Each call costs this many ticks of latency.
    Latency { ticks: u64 },
}

/// A plan of faults to apply to one device before a test runs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultPlan {
    pub faults: Vec<Fault>,
}

/// Receives latency: the simulated clock, or a sleeper.
pub type LatencySink = Arc<dyn Fn(u64) + Send + Sync>;

#[derive(Default)]
struct Ledger {
    rotted: BTreeMap<BlockName, usize>,
    latent: BTreeSet<BlockName>,
    misdirect_next_to: Option<BlockName>,
    dead: bool,
    vanished: bool,
    full: bool,
    latency_ticks: u64,
    injected: u64,
}

/// Counts of what a `FaultyDevice` did, for traces.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultStats {
    pub faults_injected: u64,
}

/// A device with injectable faults around `D`.
pub struct FaultyDevice<D: BlockDevice> {
    inner: D,
    switch: Arc<CrashSwitch>,
    ledger: Mutex<Ledger>,
    latency: Option<LatencySink>,
}

impl<D: BlockDevice> FaultyDevice<D> {
    /// Wraps `inner`; `switch` is shared by every device of the same machine.
    pub fn new(inner: D, switch: Arc<CrashSwitch>, latency: Option<LatencySink>) -> Self {
        Self { inner, switch, ledger: Mutex::new(Ledger::default()), latency }
    }

    /// The wrapped device, without faults.
    pub fn inner(&self) -> &D {
        &self.inner
    }

    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies a plan's faults.
    pub fn apply(&self, plan: &FaultPlan) {
        for fault in &plan.faults {
            self.inject(fault);
        }
    }

    /// Injects one device-wide fault.
    pub fn inject(&self, fault: &Fault) {
        let mut ledger = self.ledger();
        ledger.injected += 1;
        match fault {
            Fault::Die => ledger.dead = true,
            Fault::Vanish => ledger.vanished = true,
            Fault::Return => ledger.vanished = false,
            Fault::Fill => ledger.full = true,
            Fault::Unfill => ledger.full = false,
            Fault::Latency { ticks } => ledger.latency_ticks = *ticks,
        }
    }

    /// Rots `name`: reads flip bit `bit` (modulo its length) until it is rewritten.
    pub fn rot(&self, name: BlockName, bit: usize) {
        let mut ledger = self.ledger();
        ledger.injected += 1;
        ledger.rotted.insert(name, bit);
    }

    /// Gives `name` a latent read error until it is rewritten.
    pub fn latent(&self, name: BlockName) {
        let mut ledger = self.ledger();
        ledger.injected += 1;
        ledger.latent.insert(name);
    }

    /// Sends the next fragment write to `target` instead of its own name.
    pub fn misdirect_next_write(&self, target: BlockName) {
        let mut ledger = self.ledger();
        ledger.injected += 1;
        ledger.misdirect_next_to = Some(target);
    }

    /// Whether the disk is dead or vanished.
    pub fn is_down(&self) -> bool {
        let ledger = self.ledger();
        ledger.dead || ledger.vanished
    }

    /// Whether reads of `name` are currently faulted (rot or latent error).
    pub fn is_faulted(&self, name: BlockName) -> bool {
        let ledger = self.ledger();
        ledger.dead || ledger.vanished || ledger.rotted.contains_key(&name) || ledger.latent.contains(&name)
    }

    /// What was injected so far.
    pub fn stats(&self) -> FaultStats {
        FaultStats { faults_injected: self.ledger().injected }
    }

    fn gate(&self) -> Result<(), DeviceError> {
        let ledger = self.ledger();
        let ticks = ledger.latency_ticks;
        let down = ledger.dead || ledger.vanished;
        drop(ledger);
        if ticks > 0 {
            if let Some(sink) = &self.latency {
                sink(ticks);
            }
        }
        if self.switch.is_crashed() {
            return Err(DeviceError::Unavailable("simulated crash: the machine has stopped".into()));
        }
        if down {
            return Err(DeviceError::Unavailable("disk failed".into()));
        }
        Ok(())
    }
}

impl<D: BlockDevice> BlockDevice for FaultyDevice<D> {
    fn read(&self, name: BlockName) -> Result<Vec<u8>, DeviceError> {
        self.gate()?;
        let (rot, latent) = {
            let ledger = self.ledger();
            (ledger.rotted.get(&name).copied(), ledger.latent.contains(&name))
        };
        if latent {
            return Err(DeviceError::Io(format!("latent read error on {name}")));
        }
        let mut data = self.inner.read(name)?;
        if let Some(bit) = rot {
            if !data.is_empty() {
                let bit = bit % (data.len() * 8);
                data[bit / 8] ^= 1 << (bit % 8);
            }
        }
        Ok(data)
    }

    fn write(&self, name: BlockName, data: &[u8]) -> Result<(), DeviceError> {
        self.gate()?;
        let target = {
            let mut ledger = self.ledger();
            if ledger.full {
                return Err(DeviceError::NoSpace);
            }
            match (name.kind(), ledger.misdirect_next_to) {
                (BlockKind::Fragment, Some(target)) => {
                    ledger.misdirect_next_to = None;
                    target
                }
                _ => name,
            }
        };
        if !self.switch.admit_write() {
            return Err(DeviceError::Unavailable("simulated crash: the machine has stopped".into()));
        }
        self.inner.write(target, data)?;
        let mut ledger = self.ledger();
        ledger.rotted.remove(&target);
        ledger.latent.remove(&target);
        Ok(())
    }

    fn create(&self, name: BlockName, data: &[u8]) -> Result<Created, DeviceError> {
        self.gate()?;
        if self.ledger().full {
            return Err(DeviceError::NoSpace);
        }
        if !self.switch.admit_write() {
            return Err(DeviceError::Unavailable("simulated crash: the machine has stopped".into()));
        }
        let created = self.inner.create(name, data)?;
        if created == Created::Written {
            let mut ledger = self.ledger();
            ledger.rotted.remove(&name);
            ledger.latent.remove(&name);
        }
        Ok(created)
    }

    fn shared(&self) -> bool {
        self.inner.shared()
    }

    fn delete(&self, name: BlockName) -> Result<(), DeviceError> {
        self.gate()?;
        self.inner.delete(name)?;
        let mut ledger = self.ledger();
        ledger.rotted.remove(&name);
        ledger.latent.remove(&name);
        Ok(())
    }

    fn list(&self, kind: BlockKind) -> Result<Vec<BlockName>, DeviceError> {
        self.gate()?;
        self.inner.list(kind)
    }

    fn sync(&self) -> Result<(), DeviceError> {
        self.gate()?;
        self.inner.sync()
    }

    fn capacity_bytes(&self) -> u64 {
        if self.is_down() {
            return 0;
        }
        self.inner.capacity_bytes()
    }

    fn used_bytes(&self) -> u64 {
        if self.ledger().full {
            return self.inner.capacity_bytes();
        }
        self.inner.used_bytes()
    }

    fn shared_free(&self) -> Option<SharedFree> {
        if self.is_down() {
            return None;
        }
        self.inner.shared_free()
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn modified_secs(&self, name: BlockName) -> Result<Option<i64>, DeviceError> {
        self.gate()?;
        self.inner.modified_secs(name)
    }

    fn legacy_blocks(&self) -> u64 {
        self.inner.legacy_blocks()
    }

    fn upgrade_layout(&self, progress: &mut dyn FnMut(u64, u64)) -> Result<u64, DeviceError> {
        self.gate()?;
        self.inner.upgrade_layout(progress)
    }

    fn wants_compaction(&self) -> bool {
        self.inner.wants_compaction()
    }

    fn compact(&self, budget_bytes: u64) -> Result<u64, DeviceError> {
        self.gate()?;
        self.inner.compact(budget_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dfs_engine::media::device::ExtentId;
    use dfs_engine::media::dirdisk::DirDisk;

    fn disk() -> (tempfile::TempDir, FaultyDevice<DirDisk>, Arc<CrashSwitch>) {
        let dir = tempfile::tempdir().unwrap();
        let switch = CrashSwitch::new();
        let device = FaultyDevice::new(DirDisk::open(dir.path()).unwrap(), switch.clone(), None);
        (dir, device, switch)
    }

    #[test]
    fn rot_and_latent_errors_last_until_a_rewrite() {
        let (_dir, device, _) = disk();
        let name = BlockName::Journal { seq: 1 };
        device.write(name, b"abcd").unwrap();
        device.rot(name, 9);
        assert_eq!(device.read(name).unwrap(), b"a`cd");
        device.write(name, b"abcd").unwrap();
        assert_eq!(device.read(name).unwrap(), b"abcd");
        device.latent(name);
        assert!(matches!(device.read(name), Err(DeviceError::Io(_))));
        device.write(name, b"wxyz").unwrap();
        assert_eq!(device.read(name).unwrap(), b"wxyz");
    }

    #[test]
    fn a_misdirected_write_lands_under_another_name() {
        let (_dir, device, _) = disk();
        let intended = BlockName::Fragment { extent: ExtentId(1), index: 0 };
        let victim = BlockName::Fragment { extent: ExtentId(2), index: 0 };
        device.write(victim, b"victim").unwrap();
        device.misdirect_next_write(victim);
        device.write(intended, b"payload").unwrap();
        assert_eq!(device.read(intended), Err(DeviceError::NotFound));
        assert_eq!(device.read(victim).unwrap(), b"payload");
    }

    #[test]
    fn the_crash_switch_stops_every_call_after_the_nth_write() {
        let (_dir, device, switch) = disk();
        switch.arm_after_writes(2);
        device.write(BlockName::Journal { seq: 1 }, b"1").unwrap();
        device.write(BlockName::Journal { seq: 2 }, b"2").unwrap();
        assert!(device.write(BlockName::Journal { seq: 3 }, b"3").is_err());
        assert!(device.read(BlockName::Journal { seq: 1 }).is_err());
        switch.reset();
        assert_eq!(device.list(BlockKind::Journal).unwrap().len(), 2);
    }

    #[test]
    fn dead_full_and_vanished_disks_answer_distinct_errors() {
        let (_dir, device, _) = disk();
        device.inject(&Fault::Fill);
        assert_eq!(device.write(BlockName::Label, b"x"), Err(DeviceError::NoSpace));
        device.inject(&Fault::Unfill);
        device.write(BlockName::Label, b"x").unwrap();
        device.inject(&Fault::Vanish);
        assert!(matches!(device.read(BlockName::Label), Err(DeviceError::Unavailable(_))));
        device.inject(&Fault::Return);
        assert_eq!(device.read(BlockName::Label).unwrap(), b"x");
        device.inject(&Fault::Die);
        assert!(matches!(device.sync(), Err(DeviceError::Unavailable(_))));
    }
}
