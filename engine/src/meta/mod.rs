//! Metadata: the transactional state (`state`), its replicated journal (`journal`), and the
//! paged store the state's large tables move into (`store`).

pub mod chain;
mod class_table;
mod core_table;
pub mod extent_index;
pub mod extents;
pub mod ids;
pub mod journal;
pub mod nested;
pub mod paged;
pub mod record;
pub mod scrub_state;
pub mod state;
pub mod store;
pub mod temperatures;
pub mod tracked;
mod upkeep;
pub mod v1;
pub mod v2;
pub mod v3;
