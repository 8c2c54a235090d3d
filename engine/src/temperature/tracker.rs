//! One extent's temperature over time: its access statistics, the history of threshold
//! classes seen at classification passes, and the class the HMM settles on.
//!
//! A pass appends the threshold class of the moment to the history (the newest
//! `HISTORY_MAX` are kept), decodes the history with Viterbi — with the recency boost
//! when the extent was accessed within the hot window — and takes the final state as the
//! class, with the filtered probability of that state as its confidence.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::access::AccessStats;
use super::hmm::{HmmParams, HISTORY_MAX};
use super::thresholds::Thresholds;
use super::Class;

/// An extent's temperature state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Temperature {
    pub stats: AccessStats,
    /// Threshold classes at past passes, oldest first.
    pub history: VecDeque<Class>,
    /// The class the last pass settled on.
    pub class: Class,
    /// P(that class | history), from the forward filter.
    pub confidence: f64,
}

impl Default for Temperature {
    fn default() -> Self {
        Temperature { stats: AccessStats::default(), history: VecDeque::new(), class: Class::Warm, confidence: 0.0 }
    }
}

impl Temperature {
    /// Records one access at `now_secs`.
    pub fn accessed(&mut self, now_secs: i64) {
        self.stats.record(now_secs);
    }

    /// A classification pass at `now_secs`; returns the class.
    pub fn classify(&mut self, now_secs: i64, thresholds: &Thresholds, params: &HmmParams) -> Class {
        let since = self.stats.since_last_access(now_secs);
        let observed = thresholds.classify(self.stats.ops_per_day(now_secs), since);
        self.history.push_back(observed);
        while self.history.len() > HISTORY_MAX {
            self.history.pop_front();
        }
        let history: Vec<Class> = self.history.iter().copied().collect();
        let recent = since.is_some_and(|s| s <= thresholds.hot_within_secs);
        let decoded = params.viterbi(&history, recent);
        self.class = decoded.states.last().copied().unwrap_or(observed);
        self.confidence = params.filter(&history)[self.class.index()];
        self.class
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3600;
    const DAY: i64 = 86_400;

    /// Class changes over `days` of classification passes every six hours, for an extent
    /// read `reads` times at the start of every `every_days`-th day; by the HMM and by the
    /// thresholds alone.
    fn flips(days: i64, every_days: i64, reads: i64) -> (usize, usize, Class) {
        let (thresholds, params) = (Thresholds::default(), HmmParams::default());
        let mut temperature = Temperature::default();
        let (mut hmm_flips, mut threshold_flips) = (0, 0);
        let (mut last_hmm, mut last_threshold) = (None, None);
        for pass in 0..days * 4 {
            let now = pass * 6 * HOUR;
            if now % (every_days * DAY) == 0 {
                for i in 0..reads {
                    temperature.accessed(now + i);
                }
            }
            let raw = thresholds
                .classify(temperature.stats.ops_per_day(now + reads), temperature.stats.since_last_access(now + reads));
            let smoothed = temperature.classify(now + reads, &thresholds, &params);
            threshold_flips += usize::from(last_threshold.is_some_and(|c| c != raw));
            hmm_flips += usize::from(last_hmm.is_some_and(|c| c != smoothed));
            (last_threshold, last_hmm) = (Some(raw), Some(smoothed));
        }
        (hmm_flips, threshold_flips, temperature.class)
    }

    #[test]
    fn bursts_every_few_days_flip_the_thresholds_but_not_the_hmm() {
        let (hmm, thresholds, _) = flips(60, 3, 20);
        assert!(thresholds >= 20, "the threshold classifier alone should oscillate: {thresholds} flips");
        // Measured: 2 against 59 (settling from the initial class, then nothing).
        assert!(hmm <= 3, "the HMM flipped {hmm} times, the thresholds {thresholds}");
    }

    #[test]
    fn a_file_read_a_thousand_times_a_day_becomes_hot() {
        let (thresholds, params) = (Thresholds::default(), HmmParams::default());
        let mut temperature = Temperature::default();
        for minute in 0..7 * 24 * 60 {
            let now = minute * 60;
            temperature.accessed(now);
            if minute % 360 == 0 {
                temperature.classify(now, &thresholds, &params);
            }
        }
        assert_eq!(temperature.classify(7 * DAY, &thresholds, &params), Class::Hot);
        assert!(temperature.confidence > 0.9, "{}", temperature.confidence);
    }

    #[test]
    fn a_file_untouched_for_a_month_becomes_cold() {
        let (thresholds, params) = (Thresholds::default(), HmmParams::default());
        let mut temperature = Temperature::default();
        temperature.accessed(0);
        for pass in 0..30 * 4 {
            temperature.classify(pass * 6 * HOUR, &thresholds, &params);
        }
        assert_eq!(temperature.class, Class::Cold);
        assert!(temperature.history.len() <= HISTORY_MAX);
    }
}
