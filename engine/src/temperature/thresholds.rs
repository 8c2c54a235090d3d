//! The threshold classifier: a class from an access rate and the time since the last
//! access, by fixed, configurable limits.
//!
//! Defaults: hot = more than 100 ops/day, or accessed within the last hour; warm = more
//! than 10 ops/day, or accessed within the last 24 hours; cold = otherwise. "More than" is
//! strict; "within" includes the limit itself (accessed exactly an hour ago is hot).

use serde::{Deserialize, Serialize};

use super::Class;

/// The limits of the threshold classifier.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    /// Hot above this many accesses per day.
    pub hot_ops_per_day: f64,
    /// Hot when accessed at most this many seconds ago.
    pub hot_within_secs: u64,
    /// Warm above this many accesses per day.
    pub warm_ops_per_day: f64,
    /// Warm when accessed at most this many seconds ago.
    pub warm_within_secs: u64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds { hot_ops_per_day: 100.0, hot_within_secs: 3600, warm_ops_per_day: 10.0, warm_within_secs: 86_400 }
    }
}

impl Thresholds {
    /// The class of an extent accessed `ops_per_day` times a day, last `since_secs`
    /// seconds ago (`None`: never).
    pub fn classify(&self, ops_per_day: f64, since_secs: Option<u64>) -> Class {
        let within = |limit: u64| since_secs.is_some_and(|s| s <= limit);
        if ops_per_day > self.hot_ops_per_day || within(self.hot_within_secs) {
            Class::Hot
        } else if ops_per_day > self.warm_ops_per_day || within(self.warm_within_secs) {
            Class::Warm
        } else {
            Class::Cold
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG_AGO: Option<u64> = Some(30 * 86_400);

    #[test]
    fn rates_are_judged_strictly_above_their_limits() {
        let t = Thresholds::default();
        assert_eq!(t.classify(100.0, LONG_AGO), Class::Warm);
        assert_eq!(t.classify(100.000_001, LONG_AGO), Class::Hot);
        assert_eq!(t.classify(10.0, LONG_AGO), Class::Cold);
        assert_eq!(t.classify(10.000_001, LONG_AGO), Class::Warm);
        assert_eq!(t.classify(0.0, None), Class::Cold);
    }

    #[test]
    fn recency_is_judged_including_its_limit() {
        let t = Thresholds::default();
        assert_eq!(t.classify(0.0, Some(3600)), Class::Hot);
        assert_eq!(t.classify(0.0, Some(3601)), Class::Warm);
        assert_eq!(t.classify(0.0, Some(86_400)), Class::Warm);
        assert_eq!(t.classify(0.0, Some(86_401)), Class::Cold);
        assert_eq!(t.classify(0.0, Some(0)), Class::Hot);
    }

    #[test]
    fn either_rule_is_enough_for_the_hotter_class() {
        let t = Thresholds::default();
        assert_eq!(t.classify(500.0, None), Class::Hot);
        assert_eq!(t.classify(50.0, Some(60)), Class::Hot);
        assert_eq!(t.classify(50.0, LONG_AGO), Class::Warm);
    }
}
