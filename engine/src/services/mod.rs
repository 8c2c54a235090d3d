//! Background and administrative work on a pool: geometry (add/drain/remove/fail disks
//! and rebuild), re-encoding, scrub, tiering, orphans, disk reachability and the daemon's
//! step. Imports `data` and the layers below it.

pub mod background;
pub mod geometry;
pub mod orphans;
pub mod reachability;
pub mod reencode;
pub mod scrub;
pub mod tiering;
