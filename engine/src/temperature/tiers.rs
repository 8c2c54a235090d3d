//! The tier → policy map: which policy each temperature class calls for, clamped to
//! what the pool's active disks can place.
//!
//! Defaults: hot → `replicate:3` (any copy serves a read), warm → the pool default,
//! cold → `erasure:4+2` (1.5× raw instead of 3×). Clamping keeps the failure tolerance
//! when it can: a policy wider than the active disks first gives up data shards
//! (`erasure:4+2` on 5 disks → `erasure:3+2`), then falls back to as many copies as fit
//! (`replicate:3` on 2 disks → `replicate:2`).

use serde::{Deserialize, Serialize};

use super::Class;
use crate::base::policy::Policy;

/// The policy each class calls for; `warm: None` means the pool default.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierPolicies {
    pub hot: Policy,
    pub warm: Option<Policy>,
    pub cold: Policy,
}

impl Default for TierPolicies {
    fn default() -> Self {
        TierPolicies { hot: Policy::Replicate { copies: 3 }, warm: None, cold: Policy::Erasure { data: 4, parity: 2 } }
    }
}

impl TierPolicies {
    /// The policy for `class` in a pool whose default is `default` and that has
    /// `active_disks` disks taking new fragments; `None` when no disk can take any.
    pub fn policy_for(&self, class: Class, default: Policy, active_disks: usize) -> Option<Policy> {
        let wanted = match class {
            Class::Hot => self.hot,
            Class::Warm => self.warm.unwrap_or(default),
            Class::Cold => self.cold,
        };
        clamp(wanted, active_disks)
    }
}

/// `policy`, or the closest policy `disks` distinct disks can place.
pub fn clamp(policy: Policy, disks: usize) -> Option<Policy> {
    if disks == 0 {
        return None;
    }
    if policy.width() <= disks {
        return Some(policy);
    }
    let disks = u8::try_from(disks).unwrap_or(u8::MAX);
    match policy {
        Policy::Replicate { .. } => Policy::replicate(disks),
        Policy::Erasure { parity, .. } => match disks.checked_sub(parity) {
            Some(data) if data >= 1 => Policy::erasure(data, parity),
            _ => Policy::replicate(disks),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Policy {
        text.parse().unwrap()
    }

    #[test]
    fn defaults_map_hot_warm_cold() {
        let tiers = TierPolicies::default();
        assert_eq!(tiers.policy_for(Class::Hot, p("erasure:3+2"), 8), Some(p("replicate:3")));
        assert_eq!(tiers.policy_for(Class::Warm, p("erasure:3+2"), 8), Some(p("erasure:3+2")));
        assert_eq!(tiers.policy_for(Class::Cold, p("erasure:3+2"), 8), Some(p("erasure:4+2")));
    }

    #[test]
    fn clamping_keeps_the_tolerance_while_it_can() {
        assert_eq!(clamp(p("erasure:4+2"), 6), Some(p("erasure:4+2")));
        assert_eq!(clamp(p("erasure:4+2"), 5), Some(p("erasure:3+2")));
        assert_eq!(clamp(p("erasure:4+2"), 3), Some(p("erasure:1+2")));
        assert_eq!(clamp(p("erasure:4+2"), 2), Some(p("replicate:2")));
        assert_eq!(clamp(p("replicate:3"), 2), Some(p("replicate:2")));
        assert_eq!(clamp(p("replicate:3"), 1), Some(p("replicate:1")));
        assert_eq!(clamp(p("replicate:3"), 0), None);
    }
}
