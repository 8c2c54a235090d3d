//! Metadata: the transactional state (`state`) and its replicated journal (`journal`).

pub mod extent_index;
pub mod ids;
pub mod journal;
pub mod scrub_state;
pub mod state;
mod upkeep;
pub mod v1;
pub mod v2;
pub mod v3;
