//! A pool's tiering configuration: whether temperature drives policies, how classes are
//! decided, what each class maps to, how often passes run and how fast the background
//! may migrate. Kept in metadata (`Op::SetTiering`), so it is journaled like any change.

use serde::{Deserialize, Serialize};

use super::hmm::HmmParams;
use super::thresholds::Thresholds;
use super::tiers::TierPolicies;

/// How a pass turns access statistics into a class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Classifier {
    /// The threshold class of each pass, smoothed over the history by the HMM.
    #[default]
    Hmm,
    /// The threshold class of each pass as it is (oscillates under bursty access; kept
    /// to compare with, and for pools that want the raw rule).
    Thresholds,
}

impl std::fmt::Display for Classifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Classifier::Hmm => "hmm",
            Classifier::Thresholds => "thresholds",
        })
    }
}

/// Everything tiering needs to know.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TieringConfig {
    /// Whether accesses are tracked and extents migrate by class. Off: no statistics
    /// are kept and every extent follows its file's policy.
    pub enabled: bool,
    pub classifier: Classifier,
    pub thresholds: Thresholds,
    pub hmm: HmmParams,
    pub tiers: TierPolicies,
    /// Seconds between classification passes (the HMM's defaults assume six hours).
    pub pass_interval_secs: u64,
    /// Seconds between persisting access statistics: what a crash may lose of them.
    pub stats_flush_secs: u64,
    /// Bytes of extent data per second the background may re-encode for extents whose
    /// class changed while they were not read. Reads' migrations are not throttled.
    pub migrate_bytes_per_sec: u64,
}

impl Default for TieringConfig {
    fn default() -> Self {
        TieringConfig {
            enabled: true,
            classifier: Classifier::Hmm,
            thresholds: Thresholds::default(),
            hmm: HmmParams::default(),
            tiers: TierPolicies::default(),
            pass_interval_secs: 6 * 3600,
            stats_flush_secs: 60,
            migrate_bytes_per_sec: 16 << 20,
        }
    }
}

impl TieringConfig {
    /// Checks that every parameter is usable; the message names the first that is not.
    pub fn validate(&self) -> Result<(), String> {
        self.hmm.validate()?;
        let t = &self.thresholds;
        let finite = |x: f64| x.is_finite() && x >= 0.0;
        if !finite(t.hot_ops_per_day) || !finite(t.warm_ops_per_day) {
            return Err("access-rate thresholds must be finite and not negative".into());
        }
        if t.hot_ops_per_day < t.warm_ops_per_day || t.hot_within_secs > t.warm_within_secs {
            return Err("the hot thresholds must be at least as strict as the warm ones".into());
        }
        if self.pass_interval_secs == 0 || self.stats_flush_secs == 0 {
            return Err("the pass interval and the statistics flush interval must be at least one second".into());
        }
        if self.migrate_bytes_per_sec == 0 {
            return Err("the migration budget must be at least one byte per second".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid_and_bad_values_are_named() {
        assert!(TieringConfig::default().validate().is_ok());
        let mut bad = TieringConfig::default();
        bad.thresholds.hot_ops_per_day = 5.0;
        assert!(bad.validate().unwrap_err().contains("strict"));
        let bad = TieringConfig { pass_interval_secs: 0, ..TieringConfig::default() };
        assert!(bad.validate().unwrap_err().contains("interval"));
        let mut bad = TieringConfig::default();
        bad.thresholds.warm_ops_per_day = f64::NAN;
        assert!(bad.validate().is_err());
    }
}
