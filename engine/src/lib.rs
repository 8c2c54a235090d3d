//! DynamicFS storage engine.
//!
//! Everything that stores data lives here and talks to the outside world only through
//! two seams: `device::BlockDevice` (one disk) and `clock::Clock` (time), plus an
//! injected seeded RNG. Start reading at `pool` (open, commit, recovery), then `files`
//! (the write path), `store` (extents and fragments) and `meta` (state and journal).

mod access_tracker;
pub mod acl;
pub mod background;
mod budget;
mod cache;
pub mod clock;
pub mod codec;
pub mod device;
pub mod dirdisk;
mod durability;
pub mod error;
pub mod fetch;
pub mod file_ranges;
pub mod files;
pub mod fragment;
pub mod frame;
pub mod geometry;
pub mod health;
pub mod hooks;
mod io;
pub mod label;
pub mod meta;
pub mod metrics;
pub mod namespace;
mod op_stats;
mod open_files;
pub mod orphans;
pub mod placement;
pub mod policy;
pub mod pool;
pub mod pooldir;
mod probes;
pub mod reachability;
pub mod reencode;
pub mod report;
pub mod rng;
pub mod scrub;
pub mod store;
pub mod temperature;
pub mod tier_report;
pub mod tiering;
mod undurable;
pub mod units;
pub mod xattr;

pub use error::{Error, Result};
pub use meta::state::{DiskId, Ino, InodeKind};
pub use policy::Policy;
pub use pool::{OpenReport, Pool, PoolOptions};
