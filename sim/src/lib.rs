//! The DynamicFS simulator: the engine on simulated disks and a simulated clock,
//! driven by seeded scenarios and checked by an oracle after every step.
//!
//! Start at `runner` (how a scenario runs and what is checked), then `model` (the
//! reference namespace), `oracle` (the invariants), `world` (disks, crashes, recovery).

pub mod clock;
pub mod crashpoints;
pub mod memdisk;
pub mod model;
pub mod oracle;
pub mod runner;
pub mod scenario;
pub mod shrink;
pub mod swarm;
pub mod world;
