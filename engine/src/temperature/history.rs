//! One extent's observation window: the threshold classes (and accesses) its last
//! `HISTORY_MAX` classification passes saw, oldest first.
//!
//! Contract: behaves as a `VecDeque<Observation>` capped at `HISTORY_MAX` — `push` appends
//! and drops the oldest beyond the cap, `pop_back` takes the newest — and encodes exactly as one (a sequence of
//! observations), so the metadata format is the one a deque wrote. In memory it is a fixed
//! 32 bytes of classes, two bits each, plus the passes that saw accesses: an extent nobody
//! reads keeps 100 observations without a heap allocation, where a deque of them took
//! a kilobyte.

use serde::de::{Deserialize, Deserializer};
use serde::ser::{Serialize, SerializeSeq, Serializer};

use super::hmm::HISTORY_MAX;
use super::Class;

/// What one pass saw of one extent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Observation {
    /// The threshold class at the pass.
    pub observed: Class,
    /// Accesses since the previous pass.
    pub accesses: u32,
}

const WORDS: usize = 4;
const _: () = assert!(HISTORY_MAX <= WORDS * 32, "two bits a class must fit the words");

/// The last `HISTORY_MAX` observations, oldest first (see the module header).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct History {
    /// Observation `i`'s class index in bits `2i % 64 ..` of word `2i / 64`; bits at and
    /// past `len` are zero, so equal windows compare equal.
    classes: [u64; WORDS],
    len: u8,
    /// `(position, accesses)` of the observations that saw accesses, positions ascending.
    accesses: Vec<(u8, u32)>,
}

impl History {
    /// Observations held.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Whether no pass has observed the extent yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The class observation `i` saw (0 is the oldest; `i < len`).
    fn class_at(&self, i: usize) -> Class {
        debug_assert!(i < self.len());
        Class::ALL[((self.classes[i / 32] >> (2 * (i % 32))) & 0b11) as usize]
    }

    /// The newest observation.
    pub fn back(&self) -> Option<Observation> {
        let i = self.len().checked_sub(1)?;
        let accesses = self.accesses.last().filter(|(at, _)| usize::from(*at) == i).map_or(0, |(_, n)| *n);
        Some(Observation { observed: self.class_at(i), accesses })
    }

    /// Every observation, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = Observation> + '_ {
        let mut accesses = self.accesses.iter().peekable();
        (0..self.len()).map(move |i| {
            let seen = accesses.next_if(|(at, _)| usize::from(*at) == i).map_or(0, |(_, n)| *n);
            Observation { observed: self.class_at(i), accesses: seen }
        })
    }

    /// The class every observation saw, oldest first: what the classifier decodes.
    pub fn classes(&self) -> impl Iterator<Item = Class> + '_ {
        (0..self.len()).map(|i| self.class_at(i))
    }

    /// Appends `observation`; the oldest goes when `HISTORY_MAX` are held.
    pub fn push(&mut self, observation: Observation) {
        if self.len() == HISTORY_MAX {
            self.drop_oldest();
        }
        let i = self.len();
        self.classes[i / 32] |= (observation.observed.index() as u64) << (2 * (i % 32));
        if observation.accesses > 0 {
            self.accesses.push((self.len, observation.accesses));
        }
        self.len += 1;
        debug_assert!(self.len() <= HISTORY_MAX);
        debug_assert_eq!(self.back(), Some(observation));
    }

    /// Removes the newest observation.
    pub fn pop_back(&mut self) -> Option<Observation> {
        let last = self.back()?;
        let i = self.len() - 1;
        self.classes[i / 32] &= !(0b11 << (2 * (i % 32)));
        if self.accesses.last().is_some_and(|(at, _)| usize::from(*at) == i) {
            self.accesses.pop();
        }
        self.len -= 1;
        debug_assert!(self.classes.iter().enumerate().all(|(w, bits)| {
            let held = self.len().saturating_sub(w * 32).min(32);
            held == 32 || bits >> (2 * held) == 0
        }));
        Some(last)
    }

    fn drop_oldest(&mut self) {
        assert!(self.len > 0);
        for word in 0..WORDS {
            let carried = self.classes.get(word + 1).map_or(0, |next| next << 62);
            self.classes[word] = (self.classes[word] >> 2) | carried;
        }
        self.accesses.retain(|(at, _)| *at > 0);
        for (at, _) in &mut self.accesses {
            *at -= 1;
        }
        self.len -= 1;
    }
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl FromIterator<Observation> for History {
    fn from_iter<I: IntoIterator<Item = Observation>>(observations: I) -> History {
        let mut history = History::default();
        for observation in observations {
            history.push(observation);
        }
        history
    }
}

impl Serialize for History {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.len()))?;
        for observation in self.iter() {
            seq.serialize_element(&observation)?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for History {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<History, D::Error> {
        Ok(Vec::<Observation>::deserialize(deserializer)?.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use proptest::prelude::*;

    use super::*;

    fn observation() -> impl Strategy<Value = Observation> {
        (0..3usize, prop_oneof![Just(0u32), 1..5u32, Just(u32::MAX)])
            .prop_map(|(class, accesses)| Observation { observed: Class::ALL[class], accesses })
    }

    proptest! {
        /// Any sequence of pushes and pops of the newest leaves what a capped deque
        /// holds, and both encode to the same bytes and decode to the same window.
        #[test]
        fn a_window_holds_and_encodes_what_a_capped_deque_does(
            steps in prop::collection::vec(prop::option::weighted(0.8, observation()), 0..260)
        ) {
            let mut window = History::default();
            let mut deque = VecDeque::new();
            for step in steps {
                match step {
                    Some(observation) => {
                        window.push(observation);
                        deque.push_back(observation);
                        if deque.len() > HISTORY_MAX {
                            deque.pop_front();
                        }
                    }
                    None => prop_assert_eq!(window.pop_back(), deque.pop_back()),
                }
                prop_assert_eq!(window.iter().collect::<Vec<_>>(), deque.iter().copied().collect::<Vec<_>>());
                prop_assert_eq!(window.back(), deque.back().copied());
                prop_assert_eq!(window.classes().collect::<Vec<_>>(), deque.iter().map(|o| o.observed).collect::<Vec<_>>());
            }
            let bytes = postcard::to_stdvec(&window).unwrap();
            prop_assert_eq!(&bytes, &postcard::to_stdvec(&deque).unwrap());
            let decoded: History = postcard::from_bytes(&bytes).unwrap();
            prop_assert_eq!(decoded, window);
        }
    }

    #[test]
    fn an_untouched_window_keeps_no_accesses_on_the_heap() {
        let cold = Observation { observed: Class::Cold, accesses: 0 };
        let window: History = std::iter::repeat_n(cold, 3 * HISTORY_MAX).collect();
        assert_eq!(window.len(), HISTORY_MAX);
        assert_eq!(window.accesses.capacity(), 0);
    }
}
