//! The simulated machine: disks (`MemDisk` behind `FaultyDevice`), the clock, the crash
//! switch, and the pool running on them, with crash and recovery.

use std::sync::{Arc, Mutex};

use dfs_engine::base::hooks::{CommitObserver, CommitPhase, Observer};
use dfs_engine::media::device::{BlockDevice, BlockName};
use dfs_engine::media::label::DiskLabel;
use dfs_engine::pool::{PoolDevice, PoolOptions};
use dfs_engine::{OpenReport, Policy, Pool};
use dfs_faults::{CrashSwitch, FaultyDevice, LatencySink};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use uuid::Uuid;

use crate::clock::SimClock;
use crate::memdisk::{Fate, MemDisk, Pending};

/// A simulated disk: an in-memory disk with injectable faults.
pub type SimDisk = FaultyDevice<MemDisk>;

/// Stops the world when a commit reaches an armed phase.
pub struct PhaseTrigger {
    armed: Mutex<Option<(CommitPhase, u32)>>,
    switch: Arc<CrashSwitch>,
    /// A second engine to open when a phase is reached (`Step::SecondWriter`).
    rival_at: Mutex<Option<(CommitPhase, RivalOpener)>>,
    /// The second engine, once opened (or why it could not open).
    pub rival: Mutex<Option<dfs_engine::Result<Pool>>>,
}

/// Opens a second engine over the machine's disks.
pub type RivalOpener = Box<dyn FnOnce() -> dfs_engine::Result<Pool> + Send>;

impl PhaseTrigger {
    /// Crash at the `occurrence`-th time `phase` is reached from now.
    pub fn arm(&self, phase: CommitPhase, occurrence: u32) {
        *self.armed.lock().unwrap_or_else(|p| p.into_inner()) = Some((phase, occurrence));
    }

    fn disarm(&self) {
        *self.armed.lock().unwrap_or_else(|p| p.into_inner()) = None;
        *self.rival_at.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Opens the second engine when `phase` is next reached.
    pub fn arm_rival(&self, phase: CommitPhase, open: RivalOpener) {
        *self.rival_at.lock().unwrap_or_else(|p| p.into_inner()) = Some((phase, open));
    }

    /// Takes the second engine out, if it was opened.
    pub fn take_rival(&self) -> Option<dfs_engine::Result<Pool>> {
        self.rival.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl CommitObserver for PhaseTrigger {
    fn reached(&self, phase: CommitPhase) {
        let mut armed = self.armed.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((target, remaining)) = armed.as_mut() {
            if *target == phase {
                *remaining -= 1;
                if *remaining == 0 {
                    *armed = None;
                    self.switch.crash_now();
                }
            }
        }
        drop(armed);
        let mut rival_at = self.rival_at.lock().unwrap_or_else(|p| p.into_inner());
        if rival_at.as_ref().is_some_and(|(target, _)| *target == phase) {
            if let Some((_, open)) = rival_at.take() {
                drop(rival_at);
                let opened = open();
                *self.rival.lock().unwrap_or_else(|p| p.into_inner()) = Some(opened);
            }
        }
    }
}

/// The machine a scenario runs on.
pub struct World {
    pub clock: Arc<SimClock>,
    pub switch: Arc<CrashSwitch>,
    pub disks: Vec<Arc<SimDisk>>,
    uuids: Vec<Uuid>,
    pool_id: Uuid,
    policy: Policy,
    pub pool: Option<Pool>,
    /// Randomness for fault choices and crash fates (the engine has its own stream).
    pub rng: ChaCha8Rng,
    options: PoolOptions,
    pub trigger: Arc<PhaseTrigger>,
    /// Crashes performed.
    pub crashes: u64,
    /// Degraded reads served by pools that were since closed or crashed.
    degraded_reads_before: u64,
    /// Disks kept away during the next recovery (`Step::AwayAtNextRecovery`).
    pub away_at_recovery: Vec<usize>,
    /// The disks that were away during the last recovery.
    pub away_last_recovery: Vec<usize>,
    /// The disks are on an object store: shared, written whole and durably by each call.
    pub store: bool,
    /// With `store`, how far each disk's listing lags (`MemDisk::lagging`).
    pub listing_lag: u32,
}

fn uuid_from(rng: &mut ChaCha8Rng) -> Uuid {
    uuid::Builder::from_random_bytes(rng.random()).into_uuid()
}

impl World {
    /// A machine with disks of `capacities` and an empty pool with `policy` over them.
    /// With `store`, the disks are on an object store (`MemDisk::shared`), whose listings
    /// lag by `listing_lag` (`MemDisk::lagging`).
    pub fn new(
        capacities: &[u64],
        policy: Policy,
        seed: u64,
        (store, listing_lag): (bool, u32),
        mut options: PoolOptions,
    ) -> Result<World, String> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x005E_ED0F_D15C);
        let clock = SimClock::new();
        let switch = CrashSwitch::new();
        let trigger = Arc::new(PhaseTrigger {
            armed: Mutex::new(None),
            switch: switch.clone(),
            rival_at: Mutex::new(None),
            rival: Mutex::new(None),
        });
        options.seed = seed;
        options.observer = Some(Observer(trigger.clone()));
        options.parallel_io = false;
        options.metadata_store.parallel = false;
        let pool_id = uuid_from(&mut rng);
        let mut world = World {
            clock,
            switch,
            disks: Vec::new(),
            uuids: Vec::new(),
            pool_id,
            policy,
            pool: None,
            rng,
            options,
            store,
            listing_lag,
            trigger,
            crashes: 0,
            degraded_reads_before: 0,
            away_at_recovery: Vec::new(),
            away_last_recovery: Vec::new(),
        };
        world.recover().map_err(|e| format!("opening the empty pool: {e}"))?;
        for capacity in capacities {
            world.add_disk(*capacity)?;
        }
        Ok(world)
    }

    fn latency_sink(&self) -> LatencySink {
        let clock = self.clock.clone();
        Arc::new(move |ticks| clock.advance(ticks * 1_000))
    }

    /// Adds a new, labelled disk of `capacity` bytes to the pool.
    pub fn add_disk(&mut self, capacity: u64) -> Result<(), String> {
        let index = self.disks.len();
        let uuid = uuid_from(&mut self.rng);
        let clock = self.clock.clone();
        let wall_secs: crate::memdisk::WallSecs =
            Arc::new(move || dfs_engine::base::clock::Clock::wall(clock.as_ref()).secs);
        let memdisk = match self.store {
            true => MemDisk::shared_with_clock(format!("sim-store-disk-{index}"), capacity, wall_secs)
                .lagging(self.listing_lag),
            false => MemDisk::with_clock(format!("sim-disk-{index}"), capacity, wall_secs),
        };
        let disk = Arc::new(FaultyDevice::new(memdisk, self.switch.clone(), Some(self.latency_sink())));
        let label = DiskLabel { pool_id: self.pool_id, disk_uuid: uuid, capacity_bytes: Some(capacity) };
        disk.write(BlockName::Label, &label.encode())
            .and_then(|()| disk.sync())
            .map_err(|e| format!("labelling disk {index}: {e}"))?;
        self.disks.push(disk.clone());
        self.uuids.push(uuid);
        let pool = self.pool.as_mut().ok_or("no pool is open")?;
        pool.add_disk(uuid, Some(capacity), disk).map_err(|e| format!("adding disk {index}: {e}"))?;
        Ok(())
    }

    /// The open pool.
    pub fn pool(&mut self) -> &mut Pool {
        match self.pool.as_mut() {
            Some(pool) => pool,
            None => panic!("the simulator always reopens the pool after a crash"),
        }
    }

    /// The simulated disk behind a pool disk id: the one labelled with that disk's uuid
    /// (ids are not positions: a disk that failed to join still took its place here).
    pub fn sim_disk(&self, id: dfs_engine::DiskId) -> Option<&Arc<SimDisk>> {
        let uuid = self.pool.as_ref()?.state().disks.get(&id)?.uuid;
        let index = self.uuids.iter().position(|u| *u == uuid)?;
        self.disks.get(index)
    }

    /// The pending operations of every disk, in disk order.
    pub fn pending(&self) -> Vec<Vec<Pending>> {
        self.disks.iter().map(|d| d.inner().pending()).collect()
    }

    /// Crashes the machine: each unsynced operation independently lands or not, and a
    /// landed write is sometimes torn. Then the world restarts (not yet recovered).
    pub fn crash_randomly(&mut self) {
        let fates: Vec<Vec<Fate>> = self
            .pending()
            .iter()
            .map(|ops| {
                ops.iter()
                    .map(|op| match (self.rng.random_range(0..10u32), op) {
                        (0..=3, _) => Fate::Drop,
                        (4, Pending::Write(_, data)) => Fate::Torn {
                            keep: self.rng.random_range(0..=data.len()),
                            garbage: self.rng.random_range(0..32),
                        },
                        _ => Fate::Land,
                    })
                    .collect()
            })
            .collect();
        self.crash_with(&fates);
    }

    /// Crashes the machine with an explicit fate for every pending operation.
    pub fn crash_with(&mut self, fates: &[Vec<Fate>]) {
        self.retire_pool();
        for (disk, fates) in self.disks.iter().zip(fates) {
            disk.inner().crash(fates);
        }
        self.switch.reset();
        self.trigger.disarm();
        self.crashes += 1;
    }

    /// Opens the pool over the disks, recovering whatever they hold.
    pub fn recover(&mut self) -> dfs_engine::Result<OpenReport> {
        self.retire_pool();
        let away: Vec<usize> =
            std::mem::take(&mut self.away_at_recovery).into_iter().filter(|d| !self.disks[*d].is_down()).collect();
        for disk in &away {
            self.disks[*disk].inject(&dfs_faults::Fault::Vanish);
        }
        let result = self.open_pool();
        for disk in &away {
            self.disks[*disk].inject(&dfs_faults::Fault::Return);
        }
        if result.is_ok() && !away.is_empty() {
            // The daemon's first probe after the open finds them back: they rejoin.
            self.clock.advance(dfs_engine::services::reachability::OFFLINE_PROBE_FIRST_NANOS);
            if let Some(pool) = self.pool.as_mut() {
                let _ = pool.check_disks();
            }
        }
        self.away_last_recovery = away;
        result
    }

    /// A second engine over the same disks, as a process whose lock was forced away
    /// would open them: it recovers what is on the disks now.
    pub fn rival_opener(&self) -> RivalOpener {
        let devices: Vec<PoolDevice> = self
            .disks
            .iter()
            .zip(&self.uuids)
            .map(|(disk, uuid)| PoolDevice { uuid: *uuid, device: disk.clone() as Arc<dyn BlockDevice> })
            .collect();
        let (pool_id, policy, clock) = (self.pool_id, self.policy, self.clock.clone());
        let mut options = self.options.clone();
        options.observer = None;
        options.seed ^= 0x05ee_d0f2;
        Box::new(move || Pool::open(pool_id, policy, devices, clock, options).map(|(pool, _)| pool))
    }

    fn open_pool(&mut self) -> dfs_engine::Result<OpenReport> {
        let devices = self
            .disks
            .iter()
            .zip(&self.uuids)
            .map(|(disk, uuid)| PoolDevice { uuid: *uuid, device: disk.clone() as Arc<dyn BlockDevice> })
            .collect();
        let (pool, report) = Pool::open(self.pool_id, self.policy, devices, self.clock.clone(), self.options.clone())?;
        self.pool = Some(pool);
        Ok(report)
    }

    /// A copy of the machine's disks as they are now (durable and pending), for
    /// exploring crash states without re-running.
    pub fn snapshot_disks(&self) -> Vec<MemDisk> {
        self.disks.iter().map(|d| d.inner().snapshot()).collect()
    }

    fn retire_pool(&mut self) {
        if let Some(pool) = self.pool.take() {
            self.degraded_reads_before += pool.counters().degraded_reads;
        }
    }

    /// Degraded reads served since the world was built, across restarts.
    pub fn degraded_reads(&self) -> u64 {
        self.degraded_reads_before + self.pool.as_ref().map(|p| p.counters().degraded_reads).unwrap_or(0)
    }

    /// A copy of this machine — its disks as they are now, durable and pending — with no
    /// pool open and no faults, to explore a crash state without disturbing this one.
    pub fn fork(&self) -> World {
        let switch = CrashSwitch::new();
        let clock = SimClock::new();
        clock.advance(self.clock.elapsed_nanos());
        let trigger = Arc::new(PhaseTrigger {
            armed: Mutex::new(None),
            switch: switch.clone(),
            rival_at: Mutex::new(None),
            rival: Mutex::new(None),
        });
        let mut options = self.options.clone();
        options.observer = Some(Observer(trigger.clone()));
        let sink_clock = clock.clone();
        let sink: LatencySink = Arc::new(move |ticks| sink_clock.advance(ticks * 1_000));
        World {
            disks: self
                .disks
                .iter()
                .map(|d| Arc::new(FaultyDevice::new(d.inner().snapshot(), switch.clone(), Some(sink.clone()))))
                .collect(),
            clock,
            switch,
            uuids: self.uuids.clone(),
            pool_id: self.pool_id,
            policy: self.policy,
            pool: None,
            rng: ChaCha8Rng::seed_from_u64(self.options.seed),
            options,
            trigger,
            crashes: self.crashes,
            degraded_reads_before: 0,
            away_at_recovery: Vec::new(),
            away_last_recovery: Vec::new(),
            store: self.store,
            listing_lag: self.listing_lag,
        }
    }

    /// Replaces every disk with `disks` (from `snapshot_disks`); injected faults are not
    /// carried over.
    pub fn restore_disks(&mut self, disks: Vec<MemDisk>) {
        self.pool = None;
        self.disks = disks
            .into_iter()
            .map(|memdisk| Arc::new(FaultyDevice::new(memdisk, self.switch.clone(), Some(self.latency_sink()))))
            .collect();
        self.switch.reset();
        self.trigger.disarm();
    }
}
