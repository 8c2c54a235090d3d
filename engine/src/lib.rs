//! DynamicFS storage engine.
//!
//! Everything that stores data lives here and talks to the outside world only through
//! two seams: `media::device::BlockDevice` (one disk) and `base::clock::Clock` (time),
//! plus an injected seeded RNG. The folders are layers, each importing only those
//! before it: `base`, `media`, `temperature`, `meta`, `pool`, `data`, `services`,
//! `reports`, then `pooldir` (the host side). Start reading at `pool` (open, commit,
//! recovery), then `data::files` (the write path), `data::store` (extents and fragments)
//! and `meta` (state and journal).

pub mod base;
pub mod data;
pub mod media;
pub mod meta;
pub mod pool;
pub mod pooldir;
pub mod reports;
pub mod services;
pub mod temperature;

pub use base::error::{Error, Result};
pub use base::policy::Policy;
pub use meta::state::{DiskId, Ino, InodeKind};
pub use pool::{OpenReport, Pool, PoolOptions};
