//! One extent's temperature over time: its access statistics, the observations made at
//! classification passes, and the class the classifier settles on.
//!
//! A pass is split in two so that replay never recomputes floating point: `observe`
//! (pure) takes the threshold class of the moment, appends it to a copy of the history
//! (the newest `HISTORY_MAX` are kept), decodes the history with Viterbi — with the
//! recency boost when the extent was accessed within the hot window — and returns the
//! final state as the class, with the filtered probability of that state as its
//! confidence. The pool journals that verdict; `apply` (what replay runs) stores it.

use serde::{Deserialize, Serialize};

use super::access::AccessStats;
use super::config::{Classifier, TieringConfig};
use super::history::History;
pub use super::history::Observation;
#[cfg(test)]
use super::hmm::HmmParams;
use super::hmm::HISTORY_MAX;
use super::Class;

/// A pass's verdict on one extent, as the journal records it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// The statistics the pass judged (they are persisted with it).
    pub stats: AccessStats,
    pub observation: Observation,
    pub class: Class,
    pub confidence: f64,
}

/// An extent's temperature state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Temperature {
    pub stats: AccessStats,
    /// Observations at past passes, oldest first; at most `HISTORY_MAX`.
    pub history: History,
    /// The class the last pass settled on (`Warm` before any pass: the pool default).
    pub class: Class,
    /// P(that class | history), from the forward filter (1 for the threshold classifier),
    /// at the last journaled verdict: a pass that implies its verdict keeps it
    /// (`repeat`); `belief` gives it for the current history.
    pub confidence: f64,
    /// `stats.total` at the last pass, to count the accesses between passes.
    pub total_at_last_pass: u64,
}

impl Default for Temperature {
    fn default() -> Self {
        Temperature {
            stats: AccessStats::default(),
            history: History::default(),
            class: Class::Warm,
            confidence: 0.0,
            total_at_last_pass: 0,
        }
    }
}

impl Temperature {
    /// The class a pass settled on, if any pass judged it yet.
    pub fn classified(&self) -> Option<Class> {
        (!self.history.is_empty()).then_some(self.class)
    }

    /// The verdict of a pass at `now_secs` on an extent whose current statistics are
    /// `stats` (the pool's live ones, which may be ahead of `self.stats`).
    pub fn observe(&self, stats: AccessStats, now_secs: i64, config: &TieringConfig) -> Verdict {
        let since = stats.since_last_access(now_secs);
        let observed = config.thresholds.classify(stats.ops_per_day(now_secs), since);
        let accesses = u32::try_from(stats.total.saturating_sub(self.total_at_last_pass)).unwrap_or(u32::MAX);
        let observation = Observation { observed, accesses };
        let (class, confidence) = match config.classifier {
            Classifier::Thresholds => (observed, 1.0),
            Classifier::Hmm => {
                let skip = (self.history.len() + 1).saturating_sub(HISTORY_MAX);
                let history: Vec<Class> = self.history.classes().chain([observed]).skip(skip).collect();
                let recent = since.is_some_and(|s| s <= config.thresholds.hot_within_secs);
                let decoded = config.hmm.viterbi(&history, recent);
                let belief = config.hmm.filter(&history);
                let mut class = decoded.states.last().copied().unwrap_or(observed);
                if !self.history.is_empty() && belief[class.index()] < config.hmm.switch_confidence {
                    class = self.class;
                }
                (class, belief[class.index()])
            }
        };
        Verdict { stats, observation, class, confidence }
    }

    /// Whether `verdict` is what `repeat` would store but for its confidence: the
    /// extent saw no access since the last pass, observes the same threshold class and
    /// keeps its class. A pass journals only the verdicts not implied. (The confidence
    /// is shown, never decided on — a pass weighs the belief it computes afresh — and
    /// reports take it from the history, `belief`.)
    pub fn implies(&self, verdict: &Verdict) -> bool {
        let Some(last) = self.history.back() else { return false };
        verdict.stats == self.stats
            && self.total_at_last_pass == self.stats.total
            && verdict.observation == Observation { observed: last.observed, accesses: 0 }
            && verdict.class == self.class
    }

    /// Stores the verdict a pass implies without journaling it (see `implies`): the
    /// last observation again, with no access; statistics and class kept, and the
    /// confidence of the last journaled verdict.
    pub fn repeat(&mut self) {
        let Some(last) = self.history.back() else { return };
        self.history.push(Observation { observed: last.observed, accesses: 0 });
    }

    /// Stores `verdict` in place of the repeat the same pass implied (`repeat`): a
    /// verdict of a pass journaled after the record that began it (`Op::ClassifyMore`).
    /// An extent with no history had no repeat to replace.
    pub fn replace_repeat(&mut self, verdict: &Verdict) {
        if !self.history.is_empty() {
            self.history.pop_back();
        }
        self.apply(verdict);
    }

    /// P(class | history) under `config`'s classifier, as the last pass computed it
    /// (1 for the threshold classifier; 0 before any pass).
    pub fn belief(&self, config: &TieringConfig) -> f64 {
        if self.history.is_empty() {
            return 0.0;
        }
        match config.classifier {
            Classifier::Thresholds => 1.0,
            Classifier::Hmm => {
                let history: Vec<Class> = self.history.classes().collect();
                config.hmm.filter(&history)[self.class.index()]
            }
        }
    }

    /// Stores a pass's verdict.
    pub fn apply(&mut self, verdict: &Verdict) {
        self.stats = verdict.stats;
        self.total_at_last_pass = verdict.stats.total;
        self.history.push(verdict.observation);
        self.class = verdict.class;
        self.confidence = verdict.confidence;
    }

    /// The classifier's state at each observation of the history, oldest first: the
    /// HMM's most likely path (without the recency boost, which only weighs the present),
    /// or the observations themselves for the threshold classifier.
    pub fn decoded_states(&self, config: &TieringConfig) -> Vec<Class> {
        let history: Vec<Class> = self.history.classes().collect();
        match config.classifier {
            Classifier::Thresholds => history,
            Classifier::Hmm => config.hmm.viterbi(&history, false).states,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn belief_is_the_confidence_of_the_verdict_just_stored_and_repeats_keep_the_class() {
        for classifier in [Classifier::Hmm, Classifier::Thresholds] {
            let config = TieringConfig { classifier, ..TieringConfig::default() };
            let mut temperature = Temperature::default();
            assert_eq!(temperature.belief(&config), 0.0);
            let mut repeated = 0;
            for step in 0..12 {
                let now = step * 6 * HOUR;
                if step % 5 == 0 {
                    temperature.stats.record(now);
                }
                let verdict = temperature.observe(temperature.stats, now, &config);
                if temperature.implies(&verdict) {
                    let (class, length) = (temperature.class, temperature.history.len());
                    temperature.repeat();
                    repeated += 1;
                    assert_eq!((temperature.class, temperature.history.len()), (class, length + 1));
                    assert_eq!(temperature.history.back(), Some(verdict.observation));
                } else {
                    temperature.apply(&verdict);
                    assert!((temperature.belief(&config) - verdict.confidence).abs() < 1e-12, "{classifier:?}");
                }
            }
            assert!(repeated > 0, "{classifier:?}: no pass was implied");
        }
    }

    const HOUR: i64 = 3600;
    const DAY: i64 = 86_400;

    fn pass(temperature: &mut Temperature, now: i64, config: &TieringConfig) -> Class {
        let verdict = temperature.observe(temperature.stats, now, config);
        temperature.apply(&verdict);
        temperature.class
    }

    /// Class changes over `days` of classification passes every six hours, for an extent
    /// read `reads` times at the start of every `every_days`-th day, under `classifier`.
    fn flips(days: i64, every_days: i64, reads: i64, classifier: Classifier) -> usize {
        let config = TieringConfig { classifier, ..TieringConfig::default() };
        let mut temperature = Temperature::default();
        let (mut flips, mut last) = (0, None);
        for step in 0..days * 4 {
            let now = step * 6 * HOUR;
            if now % (every_days * DAY) == 0 {
                for i in 0..reads {
                    temperature.stats.record(now + i);
                }
            }
            let class = pass(&mut temperature, now + reads, &config);
            flips += usize::from(last.is_some_and(|c| c != class));
            last = Some(class);
        }
        flips
    }

    #[test]
    fn bursts_every_few_days_flip_the_thresholds_but_not_the_hmm() {
        let thresholds = flips(60, 3, 20, Classifier::Thresholds);
        let hmm = flips(60, 3, 20, Classifier::Hmm);
        assert!(thresholds >= 20, "the threshold classifier alone should oscillate: {thresholds} flips");
        assert!(hmm <= 2, "the HMM flipped {hmm} times, the thresholds {thresholds}");
    }

    #[test]
    fn a_file_read_a_thousand_times_a_day_becomes_hot() {
        let config = TieringConfig::default();
        let mut temperature = Temperature::default();
        for minute in 0..7 * 24 * 60 {
            let now = minute * 60;
            if minute % 360 == 0 {
                pass(&mut temperature, now, &config);
            }
            if minute % 3 != 0 {
                temperature.stats.record(now);
            }
        }
        assert_eq!(pass(&mut temperature, 7 * DAY, &config), Class::Hot);
        assert!(temperature.confidence > 0.9, "{}", temperature.confidence);
        let last = temperature.history.back().unwrap();
        assert_eq!(last, Observation { observed: Class::Hot, accesses: 240 });
    }

    #[test]
    fn a_file_untouched_for_a_month_becomes_cold() {
        let config = TieringConfig::default();
        let mut temperature = Temperature::default();
        temperature.stats.record(0);
        for step in 0..30 * 4 {
            pass(&mut temperature, step * 6 * HOUR, &config);
        }
        assert_eq!(temperature.class, Class::Cold);
        assert_eq!(temperature.history.len(), HISTORY_MAX);
        assert_eq!(temperature.history.iter().map(|o| o.accesses).sum::<u32>(), 0, "oldest passes dropped");
    }

    #[test]
    fn a_new_extent_needs_four_hot_passes_to_leave_warm() {
        let config = TieringConfig::default();
        let mut temperature = Temperature::default();
        let expected = [Class::Warm, Class::Warm, Class::Warm, Class::Hot];
        for (i, expected) in expected.into_iter().enumerate() {
            let now = i as i64 * 100;
            temperature.stats.record(now);
            assert_eq!(pass(&mut temperature, now + 60, &config), expected, "pass {i}");
        }
    }

    /// Class changes in 60 days of passes every six hours, for bursts of `reads` reads
    /// (30 s apart) every `every_days` days, starting `phase_secs` into the first day.
    fn burst_flips(config: &TieringConfig, every_days: i64, reads: i64, phase_secs: i64) -> usize {
        let mut temperature = Temperature::default();
        let (mut flips, mut last) = (0, None);
        for step in 0..60 * 4 {
            let now = step * 6 * HOUR;
            for k in 0..=60 / every_days {
                let burst = k * every_days * DAY + phase_secs;
                if burst > now - 6 * HOUR && burst <= now {
                    for i in 0..reads {
                        temperature.stats.record(burst + i * 30);
                    }
                }
            }
            let class = pass(&mut temperature, now, config);
            flips += usize::from(last.is_some_and(|c| c != class));
            last = Some(class);
        }
        flips
    }

    #[test]
    fn no_burst_pattern_makes_the_hmm_oscillate() {
        // Every period from 2 to 7 days, burst sizes from 3 to 50 reads, passes at every
        // phase of the burst. Measured: the HMM at most 5 flips in 60 days (mean 1.0),
        // the thresholds alone up to 90 (mean 36).
        let hmm = TieringConfig::default();
        let thresholds = TieringConfig { classifier: Classifier::Thresholds, ..TieringConfig::default() };
        let (mut hmm_total, mut threshold_total, mut cases) = (0, 0, 0);
        for every_days in 2..=7 {
            for reads in [3, 20, 50] {
                for phase_secs in (0..6 * HOUR).step_by(2 * HOUR as usize) {
                    let flips = burst_flips(&hmm, every_days, reads, phase_secs);
                    assert!(flips <= 6, "{flips} flips: bursts of {reads} every {every_days} days at +{phase_secs}s");
                    hmm_total += flips;
                    threshold_total += burst_flips(&thresholds, every_days, reads, phase_secs);
                    cases += 1;
                }
            }
        }
        assert!(hmm_total * 10 < threshold_total, "HMM {hmm_total} vs thresholds {threshold_total} over {cases}");
    }

    #[test]
    fn hysteresis_keeps_the_class_until_the_filter_is_confident() {
        let loose = TieringConfig {
            hmm: HmmParams { switch_confidence: 0.0, ..HmmParams::default() },
            ..TieringConfig::default()
        };
        let strict = TieringConfig::default();
        let loose_flips = burst_flips(&loose, 2, 3, 0);
        let strict_flips = burst_flips(&strict, 2, 3, 0);
        assert!(loose_flips >= 20 && strict_flips <= 5, "without {loose_flips}, with {strict_flips}");
    }
}
