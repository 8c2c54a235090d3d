//! A hidden Markov model over the temperature classes, smoothing the threshold
//! classifier's verdicts.
//!
//! Hidden states: the extent's true temperature {hot, warm, cold}. Observations: the
//! threshold class at each classification pass (the last `HISTORY_MAX` are kept). The
//! default transition matrix puts 0.99 on staying and little on moving — inertia, so a single
//! burst (one hot observation among cold ones) is read as noise, while a sustained change
//! moves the state after a few passes. The emission matrix says how often the threshold
//! classifier reports each class in each true state. `viterbi` decodes the most likely
//! state sequence (log space); `filter` gives the probability of each state now, the
//! confidence of a verdict. A recency boost multiplies the hot state's final score when
//! the extent was just accessed, so fresh interest is not held back by the history.
//! Viterbi's final state alone still flips when the evidence is balanced (bursts every
//! two days: half the passes warm, half cold), so the tracker adds hysteresis: the class
//! moves to the decoded state only when the filter gives it `switch_confidence`.

use serde::{Deserialize, Serialize};

use super::Class;

/// Observations kept per extent.
pub const HISTORY_MAX: usize = 100;

/// The model's parameters; rows of `transition` and `emission` sum to 1.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct HmmParams {
    /// P(first state).
    pub initial: [f64; 3],
    /// `transition[i][j]` = P(next state j | state i).
    pub transition: [[f64; 3]; 3],
    /// `emission[i][k]` = P(threshold class k | state i).
    pub emission: [[f64; 3]; 3],
    /// Factor on the hot state's final score when the extent was just accessed.
    pub recency_boost: f64,
    /// Hysteresis: the class changes to the decoded state only when the forward filter
    /// gives that state at least this probability; otherwise it stays.
    pub switch_confidence: f64,
}

impl Default for HmmParams {
    fn default() -> Self {
        HmmParams {
            // A new extent starts warm, under the pool default it was written with.
            initial: [0.1, 0.8, 0.1],
            // Leaving a class costs more evidence than one burst provides. A burst of
            // reads makes the thresholds say warm for up to 24 hours — five passes at
            // one every six hours, one of them hot — and against P(cold -> warm) = 0.002
            // that is not enough: warming up from cold takes six warm passes in a row
            // (36 hours of daily use), cooling from warm four cold ones, and a steady hot
            // rate gets from warm to hot in four. With the hysteresis below (a change
            // needs P >= 0.9 by the forward filter): measured, a new extent goes hot after
            // four hot passes, one read then silence goes cold after eight, daily reads
            // warm a cold extent after four.
            transition: [[0.990, 0.008, 0.002], [0.005, 0.990, 0.005], [0.001, 0.002, 0.997]],
            // The 24-hour recency window makes an occasionally read cold extent look
            // warm a quarter of the time, while warm data rarely looks cold.
            emission: [[0.75, 0.20, 0.05], [0.20, 0.70, 0.10], [0.05, 0.25, 0.70]],
            recency_boost: 1.5,
            switch_confidence: 0.9,
        }
    }
}

/// The most likely state sequence and its log-probability (joint with the observations,
/// recency boost included).
#[derive(Clone, Debug, PartialEq)]
pub struct Decoded {
    /// One state per observation, oldest first.
    pub states: Vec<Class>,
    /// ln P(states, observations), the boost included.
    pub log_prob: f64,
}

impl HmmParams {
    /// Checks that every distribution is one.
    pub fn validate(&self) -> Result<(), String> {
        let is_distribution = |row: &[f64; 3]| {
            row.iter().all(|p| (0.0..=1.0).contains(p)) && (row.iter().sum::<f64>() - 1.0).abs() < 1e-9
        };
        if !is_distribution(&self.initial) {
            return Err("initial probabilities must be in [0, 1] and sum to 1".into());
        }
        for (name, matrix) in [("transition", &self.transition), ("emission", &self.emission)] {
            if !matrix.iter().all(is_distribution) {
                return Err(format!("every {name} row must be in [0, 1] and sum to 1"));
            }
        }
        if !(self.recency_boost.is_finite() && self.recency_boost >= 1.0) {
            return Err("the recency boost must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.switch_confidence) {
            return Err("the switch confidence must be in [0, 1]".into());
        }
        Ok(())
    }

    /// Viterbi decoding of `observations` (oldest first). With `recent`, the hot state's
    /// final score is multiplied by `recency_boost`. Ties go to the hotter state.
    pub fn viterbi(&self, observations: &[Class], recent: bool) -> Decoded {
        let Some((first, rest)) = observations.split_first() else {
            return Decoded { states: Vec::new(), log_prob: 0.0 };
        };
        let ln = |p: f64| if p > 0.0 { p.ln() } else { f64::NEG_INFINITY };
        let mut score: [f64; 3] = std::array::from_fn(|s| ln(self.initial[s]) + ln(self.emission[s][first.index()]));
        let mut back: Vec<[usize; 3]> = Vec::with_capacity(rest.len());
        for observation in rest {
            let mut next = [f64::NEG_INFINITY; 3];
            let mut from = [0usize; 3];
            for (to, slot) in next.iter_mut().enumerate() {
                for (prev, prev_score) in score.iter().enumerate() {
                    let candidate = prev_score + ln(self.transition[prev][to]);
                    if candidate > *slot {
                        *slot = candidate;
                        from[to] = prev;
                    }
                }
                *slot += ln(self.emission[to][observation.index()]);
            }
            score = next;
            back.push(from);
        }
        if recent {
            score[Class::Hot.index()] += ln(self.recency_boost);
        }
        let mut last = 0;
        for s in 1..3 {
            if score[s] > score[last] {
                last = s;
            }
        }
        let log_prob = score[last];
        let mut path = vec![last];
        for from in back.iter().rev() {
            let previous = from[*path.last().unwrap_or(&0)];
            path.push(previous);
        }
        path.reverse();
        Decoded { states: path.into_iter().map(|s| Class::ALL[s]).collect(), log_prob }
    }

    /// P(state now | observations), by the forward algorithm, normalised at every step.
    pub fn filter(&self, observations: &[Class]) -> [f64; 3] {
        let mut belief = self.initial;
        for (t, observation) in observations.iter().enumerate() {
            let mut next = [0.0; 3];
            for (to, slot) in next.iter_mut().enumerate() {
                let prior =
                    if t == 0 { belief[to] } else { (0..3).map(|from| belief[from] * self.transition[from][to]).sum() };
                *slot = prior * self.emission[to][observation.index()];
            }
            let total: f64 = next.iter().sum();
            belief = if total > 0.0 { next.map(|p| p / total) } else { self.initial };
        }
        belief
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Class::{Cold, Hot, Warm};

    /// Round numbers for the hand-computed cases, independent of the tuned defaults.
    fn textbook() -> HmmParams {
        HmmParams {
            initial: [1.0 / 3.0; 3],
            transition: [[0.90, 0.08, 0.02], [0.05, 0.90, 0.05], [0.02, 0.08, 0.90]],
            emission: [[0.75, 0.20, 0.05], [0.15, 0.70, 0.15], [0.05, 0.20, 0.75]],
            recency_boost: 2.0,
            switch_confidence: 0.0,
        }
    }

    /// Every path's joint log-probability, the slow way: the decoder must find the best.
    fn brute_force_best(params: &HmmParams, observations: &[Class], recent: bool) -> (Vec<Class>, f64) {
        let n = observations.len();
        let mut best = (Vec::new(), f64::NEG_INFINITY);
        for code in 0..3usize.pow(n as u32) {
            let path: Vec<usize> = (0..n).map(|t| code / 3usize.pow(t as u32) % 3).collect();
            let mut p = params.initial[path[0]] * params.emission[path[0]][observations[0].index()];
            for t in 1..n {
                p *= params.transition[path[t - 1]][path[t]] * params.emission[path[t]][observations[t].index()];
            }
            if recent && path[n - 1] == 0 {
                p *= params.recency_boost;
            }
            if p.ln() > best.1 {
                best = (path.iter().map(|s| Class::ALL[*s]).collect(), p.ln());
            }
        }
        best
    }

    #[test]
    fn one_observation_decodes_to_the_state_most_likely_to_emit_it() {
        let params = textbook();
        let decoded = params.viterbi(&[Hot], false);
        assert_eq!(decoded.states, vec![Hot]);
        assert!((decoded.log_prob - (0.75f64 / 3.0).ln()).abs() < 1e-12);
        let belief = params.filter(&[Hot]);
        assert!((belief[0] - 0.75 / 0.95).abs() < 1e-12, "{belief:?}");
        assert!((belief.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn a_single_burst_among_cold_passes_is_noise() {
        // All cold: (1/3)·0.75⁴·0.05·0.9⁴; the best alternative, cold-cold-warm-cold-cold:
        // (1/3)·0.75⁴·0.20·0.08·0.05·0.9² — forty times less likely.
        let params = textbook();
        let observations = [Cold, Cold, Hot, Cold, Cold];
        let decoded = params.viterbi(&observations, false);
        assert_eq!(decoded.states, vec![Cold; 5]);
        let expected = (1.0f64 / 3.0 * 0.75f64.powi(4) * 0.05 * 0.9f64.powi(4)).ln();
        assert!((decoded.log_prob - expected).abs() < 1e-12);
    }

    #[test]
    fn a_sustained_change_moves_the_state() {
        let params = textbook();
        let observations = [Cold, Cold, Cold, Hot, Hot, Hot, Hot];
        let decoded = params.viterbi(&observations, false);
        assert_eq!(decoded.states.last(), Some(&Hot));
        assert_eq!(decoded.states[0], Cold);
    }

    #[test]
    fn the_decoder_agrees_with_brute_force_on_every_short_history() {
        let params = textbook();
        for n in 1..=5usize {
            for code in 0..3usize.pow(n as u32) {
                let observations: Vec<Class> = (0..n).map(|t| Class::ALL[code / 3usize.pow(t as u32) % 3]).collect();
                for recent in [false, true] {
                    let decoded = params.viterbi(&observations, recent);
                    let (_, best) = brute_force_best(&params, &observations, recent);
                    assert!((decoded.log_prob - best).abs() < 1e-9, "{observations:?} recent={recent}");
                }
            }
        }
    }

    #[test]
    fn the_recency_boost_tips_a_close_call_toward_hot() {
        // Ending warm: 0.7·0.9·0.7·0.9·0.15 = 0.0595; ending hot: 0.7·0.9·0.7·0.05·0.75
        // = 0.0165, which a boost of 4 lifts to 0.066.
        let params = HmmParams { recency_boost: 4.0, ..textbook() };
        let observations = [Warm, Warm, Hot];
        assert_eq!(params.viterbi(&observations, false).states.last(), Some(&Warm));
        assert_eq!(params.viterbi(&observations, true).states.last(), Some(&Hot));
    }

    #[test]
    fn parameters_that_are_not_distributions_are_refused() {
        assert!(HmmParams::default().validate().is_ok());
        assert!(textbook().validate().is_ok());
        let mut bad = HmmParams::default();
        bad.transition[1] = [0.5, 0.5, 0.5];
        assert!(bad.validate().unwrap_err().contains("transition"));
        let bad = HmmParams { recency_boost: 0.5, ..HmmParams::default() };
        assert!(bad.validate().is_err());
    }
}
