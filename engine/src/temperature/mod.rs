//! Temperature: how often an extent is accessed, and the class — hot, warm or cold — that
//! decides which policy its data should live under.
//!
//! Three layers, each usable alone: `access` keeps a decayed access rate per extent from
//! the `Clock`; `thresholds` turns a rate and a recency into a class by fixed limits;
//! `hmm` smooths a history of those classes with a hidden Markov model, so an extent read
//! in bursts does not flip class (and policy) on every burst; `tracker` runs the three
//! for one extent, pass after pass; `tiers` maps a class to the policy it calls for;
//! `config` is a pool's tiering configuration. The pool's side — tracking reads,
//! running passes, migrating — is `crate::services::tiering`.

pub mod access;
pub mod config;
pub mod history;
pub mod hmm;
pub mod thresholds;
pub mod tiers;
pub mod tracker;

use serde::{Deserialize, Serialize};

/// An extent's temperature class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Class {
    Hot,
    Warm,
    Cold,
}

impl Class {
    /// Every class, in the order the HMM indexes them.
    pub const ALL: [Class; 3] = [Class::Hot, Class::Warm, Class::Cold];

    /// The class's index in `ALL` (and in the HMM's matrices).
    pub fn index(self) -> usize {
        match self {
            Class::Hot => 0,
            Class::Warm => 1,
            Class::Cold => 2,
        }
    }
}

impl std::fmt::Display for Class {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Class::Hot => "hot",
            Class::Warm => "warm",
            Class::Cold => "cold",
        })
    }
}
