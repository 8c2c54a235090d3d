//! Redundancy policies: `replicate:N` and `erasure:K+M`, parsed from and printed as
//! exactly those strings.
//!
//! Invariant: a `Policy` value is always within bounds (1 ≤ N ≤ 8; 1 ≤ K ≤ 16, 1 ≤ M ≤ 8);
//! the fields are private and only `parse`/the constructors build one.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Largest replica count.
pub const REPLICAS_MAX: u8 = 8;
/// Largest number of data shards.
pub const DATA_SHARDS_MAX: u8 = 16;
/// Largest number of parity shards.
pub const PARITY_SHARDS_MAX: u8 = 8;

/// How one extent is made redundant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Policy {
    /// `copies` full copies, each on its own disk.
    Replicate { copies: u8 },
    /// Reed–Solomon: `data` shards plus `parity` shards, each on its own disk.
    Erasure { data: u8, parity: u8 },
}

/// Why a policy string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid policy '{input}': {reason} (expected replicate:N with 1<=N<=8, or erasure:K+M with 1<=K<=16 and 1<=M<=8)"
)]
pub struct PolicyParseError {
    input: String,
    reason: &'static str,
}

impl Policy {
    /// `replicate:copies`, if in bounds.
    pub fn replicate(copies: u8) -> Option<Policy> {
        (1..=REPLICAS_MAX).contains(&copies).then_some(Policy::Replicate { copies })
    }

    /// `erasure:data+parity`, if in bounds.
    pub fn erasure(data: u8, parity: u8) -> Option<Policy> {
        ((1..=DATA_SHARDS_MAX).contains(&data) && (1..=PARITY_SHARDS_MAX).contains(&parity))
            .then_some(Policy::Erasure { data, parity })
    }

    /// Number of fragments an extent stored under this policy has: one per disk.
    pub fn width(self) -> usize {
        match self {
            Policy::Replicate { copies } => usize::from(copies),
            Policy::Erasure { data, parity } => usize::from(data) + usize::from(parity),
        }
    }

    /// Number of intact fragments needed to read the extent.
    pub fn needed(self) -> usize {
        match self {
            Policy::Replicate { .. } => 1,
            Policy::Erasure { data, .. } => usize::from(data),
        }
    }

    /// Number of fragments that may be lost without losing data.
    pub fn tolerance(self) -> usize {
        self.width() - self.needed()
    }

    /// Bytes stored per byte of data, ignoring headers and padding.
    pub fn overhead(self) -> f64 {
        self.width() as f64 / self.needed() as f64
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Policy::Replicate { copies } => write!(f, "replicate:{copies}"),
            Policy::Erasure { data, parity } => write!(f, "erasure:{data}+{parity}"),
        }
    }
}

impl FromStr for Policy {
    type Err = PolicyParseError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let fail = |reason| PolicyParseError { input: input.to_string(), reason };
        let number = |s: &str| -> Result<u8, PolicyParseError> {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0')) {
                return Err(fail("counts must be plain decimal numbers"));
            }
            s.parse::<u8>().map_err(|_| fail("count out of range"))
        };
        if let Some(rest) = input.strip_prefix("replicate:") {
            let copies = number(rest)?;
            Policy::replicate(copies).ok_or_else(|| fail("N must be between 1 and 8"))
        } else if let Some(rest) = input.strip_prefix("erasure:") {
            let (data, parity) = rest.split_once('+').ok_or_else(|| fail("missing '+'"))?;
            let (data, parity) = (number(data)?, number(parity)?);
            if !(1..=DATA_SHARDS_MAX).contains(&data) {
                return Err(fail("K must be between 1 and 16"));
            }
            Policy::erasure(data, parity).ok_or_else(|| fail("M must be between 1 and 8"))
        } else {
            Err(fail("unknown scheme"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_the_documented_forms() {
        assert_eq!("replicate:3".parse(), Ok(Policy::Replicate { copies: 3 }));
        assert_eq!("erasure:4+2".parse(), Ok(Policy::Erasure { data: 4, parity: 2 }));
        assert_eq!("erasure:16+8".parse(), Ok(Policy::Erasure { data: 16, parity: 8 }));
    }

    #[test]
    fn refuses_everything_else() {
        for bad in [
            "",
            "foo",
            "replicate:0",
            "replicate:9",
            "replicate:",
            "replicate:-1",
            "replicate:03",
            "erasure:0+2",
            "erasure:4+0",
            "erasure:17+1",
            "erasure:4+9",
            "erasure:4",
            "erasure:4+2+1",
            "erasure: 4+2",
            "Replicate:3",
            "replicate:3 ",
            "erasure:+2",
            "replicate:300",
        ] {
            assert!(bad.parse::<Policy>().is_err(), "{bad:?} was accepted");
        }
    }

    proptest! {
        #[test]
        fn display_and_parse_are_inverse(n in 1u8..=8, k in 1u8..=16, m in 1u8..=8) {
            for policy in [Policy::Replicate { copies: n }, Policy::Erasure { data: k, parity: m }] {
                prop_assert_eq!(policy.to_string().parse::<Policy>(), Ok(policy));
            }
        }
    }
}
