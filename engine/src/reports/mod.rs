//! What the pool tells the outside: status and disk reports, health and its advice, tier
//! reports and the metrics snapshot. Read-only over every layer below.

pub mod health;
pub mod metrics;
pub mod report;
pub mod tier_report;
