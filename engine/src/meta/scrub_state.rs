//! The background scrub as metadata keeps it: how hard and how often it runs, the pass
//! in progress and the last finished one. Persisted in `MetaState`, so a pass resumes
//! where it stopped after a restart; the scrub itself is `crate::services::scrub`.

use serde::{Deserialize, Serialize};

/// How hard the background scrub may push: a byte budget and a yield to foreground I/O.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Intensity {
    /// 8 MiB/s, one extent at a time, idle for 500 ms after any foreground request.
    #[default]
    Low,
    /// 32 MiB/s, two extents at a time, idle for 100 ms after foreground requests.
    Medium,
    /// As fast as the disks go, eight extents at a time, no yield.
    High,
}

impl Intensity {
    /// Bytes of extent data verified per second at most (`None`: unlimited).
    pub fn bytes_per_sec(self) -> Option<u64> {
        match self {
            Intensity::Low => Some(8 << 20),
            Intensity::Medium => Some(32 << 20),
            Intensity::High => None,
        }
    }

    /// How long after a foreground request the scrub waits before its next step.
    pub fn yield_millis(self) -> u64 {
        match self {
            Intensity::Low => 500,
            Intensity::Medium => 100,
            Intensity::High => 0,
        }
    }

    /// Extents one step checks (and holds the pool for) at most.
    pub fn extents_per_step(self) -> usize {
        match self {
            Intensity::Low => 1,
            Intensity::Medium => 2,
            Intensity::High => 8,
        }
    }
}

impl std::fmt::Display for Intensity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Intensity::Low => "low",
            Intensity::Medium => "medium",
            Intensity::High => "high",
        })
    }
}

impl std::str::FromStr for Intensity {
    type Err = String;
    fn from_str(text: &str) -> std::result::Result<Self, String> {
        match text {
            "low" => Ok(Intensity::Low),
            "medium" => Ok(Intensity::Medium),
            "high" => Ok(Intensity::High),
            other => Err(format!("'{other}' is not an intensity (low, medium or high)")),
        }
    }
}

/// When the daemon starts a background pass by itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frequency {
    /// Never: only `scrub-daemon start` starts one.
    #[default]
    Off,
    /// When the last pass began 24 hours ago or more.
    Nightly,
    /// When the last pass began 7 days ago or more.
    Weekly,
    /// A new pass as soon as one finishes.
    Continuous,
}

impl Frequency {
    /// Seconds between pass starts (`None`: no schedule).
    pub fn interval_secs(self) -> Option<i64> {
        match self {
            Frequency::Off => None,
            Frequency::Nightly => Some(86_400),
            Frequency::Weekly => Some(7 * 86_400),
            Frequency::Continuous => Some(0),
        }
    }
}

impl std::fmt::Display for Frequency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Frequency::Off => "off",
            Frequency::Nightly => "nightly",
            Frequency::Weekly => "weekly",
            Frequency::Continuous => "continuous",
        })
    }
}

impl std::str::FromStr for Frequency {
    type Err = String;
    fn from_str(text: &str) -> std::result::Result<Self, String> {
        match text {
            "off" => Ok(Frequency::Off),
            "nightly" => Ok(Frequency::Nightly),
            "weekly" => Ok(Frequency::Weekly),
            "continuous" => Ok(Frequency::Continuous),
            other => Err(format!("'{other}' is not a frequency (nightly, weekly, continuous or off)")),
        }
    }
}

/// What a pass has done so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PassStats {
    /// When the pass began (wall seconds); extents checked since then are done.
    pub started_secs: i64,
    /// Extents with a smaller id existed when the pass began: the pass covers those.
    pub extent_limit: u64,
    pub extents: u64,
    /// Fragment bytes read and verified.
    pub bytes: u64,
    pub fragments: u64,
    pub corrupt: u64,
    pub missing: u64,
    /// Extents repaired.
    pub repaired: u64,
    pub unrecoverable: u64,
}

/// A pass that ran to the end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinishedPass {
    pub stats: PassStats,
    pub finished_secs: i64,
}

/// The background scrub as metadata keeps it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScrubState {
    /// The pass in progress, if any.
    pub pass: Option<PassStats>,
    /// Whether the pass waits for `resume`.
    pub paused: bool,
    pub intensity: Intensity,
    pub frequency: Frequency,
    pub last_full_pass: Option<FinishedPass>,
    pub passes_completed: u64,
}
