//! The order in which the scrub pass in progress checks extents: never-checked first,
//! then oldest-checked, ties by id.
//!
//! Contract: `front` returns exactly what sorting the pass's remaining extents by
//! (last check, id) and taking the first few would — without sorting at every step.
//! The order is fixed once per pass (and once after an open), then only walked. That is
//! sound because an extent leaves a pass (checked, or freed) but never joins one or
//! moves within it: new extents get ids at or beyond the pass's limit, and a check moves
//! an extent's time to the pass's start or later, which takes it out. Which extents are
//! left is the state's `unscrubbed` index; this component owns only the order.

use crate::media::device::ExtentId;
use crate::meta::state::MetaState;

/// The pass in progress's extents in check order, and how far the scrub has got.
#[derive(Debug, Default)]
pub(crate) struct ScrubOrder {
    /// The pass the order belongs to: its start and extent limit.
    pass: Option<(i64, u64)>,
    order: Vec<ExtentId>,
    /// Every extent before it has been checked or freed.
    next: usize,
}

impl ScrubOrder {
    /// The first `max` extents the pass in progress still has to check, in order.
    pub(crate) fn front(&mut self, state: &MetaState, max: usize) -> Vec<ExtentId> {
        let pass = state.scrub.pass.map(|pass| (pass.started_secs, pass.extent_limit));
        if pass != self.pass {
            self.pass = pass;
            self.order = state.extent_index.unscrubbed().collect();
            self.order.sort_by_key(|id| (state.scrubbed.get(id).copied(), *id));
            self.next = 0;
        }
        let left = |id: &ExtentId| state.extent_index.is_unscrubbed(*id);
        while self.order.get(self.next).is_some_and(|id| !left(id)) {
            self.next += 1;
        }
        let front: Vec<ExtentId> = self.order[self.next..].iter().filter(|id| left(id)).take(max).copied().collect();
        debug_assert!(front.len() == max || front.len() as u64 == state.extent_index.unscrubbed_len());
        front
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::base::clock::WallTime;
    use crate::base::policy::Policy;
    use crate::media::codec::CodecId;
    use crate::meta::scrub_state::{PassStats, ScrubState};
    use crate::meta::state::{ExtentRecord, Ino, Op};

    fn extent(id: u64) -> ExtentRecord {
        ExtentRecord {
            id: ExtentId(id),
            len: 1,
            hash: *blake3::hash(&[0]).as_bytes(),
            policy: Policy::Replicate { copies: 1 },
            codec: CodecId::Inline,
            fragments: Default::default(),
            inline: Some(Box::new([0])),
            history: Default::default(),
        }
    }

    fn start_pass(state: &mut MetaState, started_secs: i64) {
        let pass = PassStats { started_secs, extent_limit: state.next_extent, ..PassStats::default() };
        state.apply(&Op::SetScrub(ScrubState { pass: Some(pass), ..ScrubState::default() }));
    }

    fn ids(front: Vec<ExtentId>) -> Vec<u64> {
        front.into_iter().map(|id| id.0).collect()
    }

    #[test]
    fn never_checked_first_then_oldest_and_what_leaves_the_pass_is_skipped() {
        let mut state = MetaState::new(Uuid::nil(), Policy::Replicate { copies: 1 }, WallTime::default());
        for index in 0..6 {
            state.apply(&Op::SetExtent { ino: Ino(2), index, extent: Some(extent(index + 1)) });
        }
        state.apply(&Op::Scrubbed { at_secs: 100, extents: vec![ExtentId(2), ExtentId(4)] });
        state.apply(&Op::Scrubbed { at_secs: 50, extents: vec![ExtentId(5)] });
        let mut order = ScrubOrder::default();
        assert!(order.front(&state, 10).is_empty(), "no pass, nothing to check");

        start_pass(&mut state, 200);
        assert_eq!(state.extent_index.unscrubbed_len(), 6);
        assert_eq!(ids(order.front(&state, 10)), vec![1, 3, 6, 5, 2, 4]);
        state.apply(&Op::Scrubbed { at_secs: 200, extents: vec![ExtentId(1), ExtentId(6)] });
        assert_eq!(ids(order.front(&state, 2)), vec![3, 5]);
        // Freed: it leaves the pass. New: it is beyond the pass's limit.
        state.apply(&Op::SetExtent { ino: Ino(2), index: 4, extent: None });
        state.apply(&Op::SetExtent { ino: Ino(2), index: 6, extent: Some(extent(7)) });
        assert_eq!(ids(order.front(&state, 10)), vec![3, 2, 4]);
        assert_eq!(state.extent_index.unscrubbed_len(), 3);

        // A new pass orders afresh: 7 was never checked, 1 and 6 were checked last.
        start_pass(&mut state, 300);
        assert_eq!(ids(order.front(&state, 10)), vec![3, 7, 2, 4, 1, 6]);
    }
}
