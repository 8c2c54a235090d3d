//! `ExtentRecord`: one immutable extent as the metadata knows it — its length, checksum,
//! policy, codec, where each fragment lives, an inline extent's data and the policy
//! changes its data went through — with the limits on inline data and on the history.
//! Plain values: the state (`meta::state`) holds them in its extent table
//! (`meta::extents`), ops carry them whole.

use std::fmt;

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use thin_vec::ThinVec;

use crate::base::clock::WallTime;
use crate::base::policy::Policy;
use crate::media::codec::CodecId;
use crate::media::device::ExtentId;
use crate::meta::ids::DiskId;
use crate::temperature::Class;

/// One immutable extent: up to `EXTENT_BYTES_MAX` bytes of one file, stored as
/// `policy.width()` fragments, fragment `i` on disk `fragments[i]` — or, when at most
/// `INLINE_BYTES_MAX` long, inline in this record (no fragments), where the metadata
/// journal's replicas and checksums protect it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtentRecord {
    pub id: ExtentId,
    /// Bytes of file data in this extent.
    pub len: u32,
    /// BLAKE3 of the extent's data.
    pub hash: [u8; 32],
    pub policy: Policy,
    pub codec: CodecId,
    /// Where each fragment lives; index = fragment index. Empty for inline extents.
    pub fragments: Fragments,
    /// The data itself, for an inline extent (`codec` is `CodecId::Inline`), when memory
    /// holds it: a record read from the metadata store is held without it, and
    /// `Pool::inline_data` reads it there. A record in an op always carries it.
    /// Encoded as one byte string, which postcard lays out exactly as the sequence of
    /// bytes it was declared as (the layout test below holds it to that), copied whole
    /// rather than a byte at a time.
    #[serde(with = "serde_bytes")]
    pub inline: Option<Box<[u8]>>,
    /// The policy changes this extent's data went through, oldest first (a re-encoded
    /// extent carries the history of the one it replaced): at most
    /// `POLICY_HISTORY_MAX`, the oldest folded into one `ChangeCause::Earlier` entry
    /// (format 9), so an extent tiering moves back and forth stays the same size.
    pub history: ThinVec<PolicyChange>,
}

/// Where an extent's fragments live: held in the record itself up to 6 of them (every
/// policy up to `erasure:4+2`), so a record of ten million costs no allocation of its
/// own. Encoded as the `Vec` it replaced.
pub type Fragments = SmallVec<[DiskId; 6]>;

/// The most policy changes an extent's history lists (`ExtentRecord::history`).
pub const POLICY_HISTORY_MAX: usize = 8;

impl PolicyChange {
    /// How many re-encodings this entry stands for.
    pub fn changes(&self) -> u64 {
        match self.cause {
            ChangeCause::Earlier(count) => count,
            _ => 1,
        }
    }
}

/// Appends `change` to an extent's `history`, folding the two oldest entries into one
/// `ChangeCause::Earlier` while it is longer than `POLICY_HISTORY_MAX`: the folded entry
/// goes from the first one's policy to the second one's, at the second one's time.
pub fn push_policy_change(history: &mut ThinVec<PolicyChange>, change: PolicyChange) {
    let before: u64 = history.iter().map(PolicyChange::changes).sum();
    history.push(change);
    while history.len() > POLICY_HISTORY_MAX {
        let second = history.remove(1);
        let first = &mut history[0];
        *first = PolicyChange {
            at: second.at,
            from: first.from,
            to: second.to,
            cause: ChangeCause::Earlier(first.changes() + second.changes()),
        };
    }
    debug_assert!(history.len() <= POLICY_HISTORY_MAX);
    debug_assert_eq!(history.iter().map(PolicyChange::changes).sum::<u64>(), before + 1);
}

/// One re-encoding of an extent's data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyChange {
    pub at: WallTime,
    pub from: Policy,
    pub to: Policy,
    /// What asked for it.
    pub cause: ChangeCause,
}

/// Why an extent was re-encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangeCause {
    /// A policy transition (`dfs change-policy`), by id.
    Transition(u64),
    /// Tiering: the extent's temperature class called for another policy.
    Temperature(Class),
    /// This many older changes, folded into one entry to bound the history (format 9):
    /// from the policy before the first of them to the one after the last.
    Earlier(u64),
}

impl fmt::Display for ChangeCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChangeCause::Transition(id) => write!(f, "transition {id}"),
            ChangeCause::Temperature(class) => write!(f, "tiering ({class})"),
            ChangeCause::Earlier(1) => f.write_str("1 earlier change"),
            ChangeCause::Earlier(count) => write!(f, "{count} earlier changes"),
        }
    }
}

/// Extents up to this long are stored inline in metadata (as btrfs's `max_inline`):
/// a small file then costs no fragment at all, and a barrier whose new data is all this
/// small — a database's page overwrites and its rollback journal — writes only its
/// journal record, one round instead of fragments then record. 16 KiB holds SQLite's
/// rollback journal of a one-row transaction (a 4 KiB header and two 4 KiB pages with
/// their frames, 12.3 KiB), which at 8 KiB went to fragments: +40% transactions per
/// second on the mount (2048 before that: its 4 KiB pages missed it).
pub const INLINE_BYTES_MAX: usize = 16384;

/// Inline extents longer than this are young: once no one holds their file open, the
/// background stores them as fragments (`Pool::merge_step`), so the metadata — held in
/// memory and written whole by every checkpoint — keeps only small files' data for long.
pub const INLINE_KEPT_BYTES_MAX: usize = 2048;

impl ExtentRecord {
    /// Whether the data lives in this record rather than in fragments (in `inline`, or
    /// only in the metadata store).
    pub fn is_inline(&self) -> bool {
        self.codec == CodecId::Inline
    }

    /// Whether this is an inline extent too long to stay inline once its file is closed
    /// (the background stores it as fragments then: `Pool::merge_step`).
    pub fn is_young_inline(&self) -> bool {
        self.is_inline() && self.len as usize > INLINE_KEPT_BYTES_MAX
    }
}

#[cfg(test)]
mod record_layout {
    use super::*;

    /// `ExtentRecord` as formats up to 9 declared it: what every stored record and
    /// journaled op was encoded from.
    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Declared {
        id: ExtentId,
        len: u32,
        hash: [u8; 32],
        policy: Policy,
        codec: CodecId,
        fragments: Vec<DiskId>,
        inline: Option<Vec<u8>>,
        history: Vec<PolicyChange>,
    }

    fn declared(record: &ExtentRecord) -> Declared {
        Declared {
            id: record.id,
            len: record.len,
            hash: record.hash,
            policy: record.policy,
            codec: record.codec,
            fragments: record.fragments.to_vec(),
            inline: record.inline.as_ref().map(|data| data.to_vec()),
            history: record.history.to_vec(),
        }
    }

    fn record(width: u32, inline: Option<Vec<u8>>, changes: u64) -> ExtentRecord {
        let policy = Policy::Erasure { data: 4, parity: 2 };
        let mut history = ThinVec::new();
        for i in 0..changes {
            let to = Policy::Replicate { copies: 2 };
            let change = PolicyChange {
                at: WallTime { secs: i as i64, nanos: 0 },
                from: policy,
                to,
                cause: ChangeCause::Transition(i),
            };
            push_policy_change(&mut history, change);
        }
        ExtentRecord {
            id: ExtentId(77),
            len: 1 << 20,
            hash: [9; 32],
            policy,
            codec: CodecId::for_policy(policy),
            fragments: (0..width).map(|i| DiskId(i + 1)).collect(),
            inline: inline.map(Vec::into_boxed_slice),
            history,
        }
    }

    /// The compact in-memory record encodes, and decodes, exactly as declared before:
    /// no format change, whatever its fragments (held in place or spilled), inline data
    /// and history.
    #[test]
    fn a_record_encodes_as_it_was_declared() {
        let records = [
            record(6, None, 0),
            record(12, None, 3),
            record(0, Some(vec![1, 2, 3]), 0),
            record(0, Some((0..INLINE_BYTES_MAX).map(|i| i as u8).collect()), 0),
            record(1, None, 20),
        ];
        for record in records {
            let bytes = postcard::to_allocvec(&record).unwrap();
            assert_eq!(bytes, postcard::to_allocvec(&declared(&record)).unwrap());
            let back: ExtentRecord = postcard::from_bytes(&bytes).unwrap();
            assert_eq!(back, record);
        }
    }

    /// Ten million records are held at open: a record with up to six fragments and no
    /// history allocates nothing of its own, and stays within 104 bytes.
    #[test]
    fn a_record_is_compact() {
        assert!(std::mem::size_of::<ExtentRecord>() <= 104, "{}", std::mem::size_of::<ExtentRecord>());
        let record = record(6, None, 0);
        assert!(!record.fragments.spilled());
        assert!(record.history.is_empty());
    }
}
