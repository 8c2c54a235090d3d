//! Model-based property test: random operation sequences with random crash points run
//! against the reference model; proptest shrinks any failure to a minimal sequence.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use dfs_engine::base::hooks::CommitPhase;
use dfs_sim::runner::{self, RunOptions};
use dfs_sim::scenario::{Expect, Scenario, Setup, Step};
use proptest::prelude::*;

const PATHS: [&str; 5] = ["/a", "/b", "/d/a", "/d/b", "/d"];

fn path() -> impl Strategy<Value = String> {
    prop::sample::select(&PATHS[..]).prop_map(str::to_string)
}

fn step() -> impl Strategy<Value = Step> {
    let len = prop_oneof![0u64..5000, 1_000_000u64..1_200_000];
    prop_oneof![
        4 => (path(), 0u64..70_000, len.clone(), any::<u64>())
            .prop_map(|(path, offset, len, seed)| Step::Write { path, offset, len, seed }),
        2 => (path(), 0u64..9000, any::<u64>()).prop_map(|(path, len, seed)| Step::Append { path, len, seed }),
        2 => (path(), 0u64..1_100_000).prop_map(|(path, size)| Step::Truncate { path, size }),
        2 => (path(), path()).prop_map(|(from, to)| Step::Rename { from, to }),
        1 => path().prop_map(|path| Step::Unlink { path }),
        1 => path().prop_map(|path| Step::Mkdir { path }),
        1 => path().prop_map(|path| Step::Rmdir { path }),
        1 => path().prop_map(|path| Step::Open { path }),
        2 => (path(), 0u64..70_000, 0u64..5000, any::<u64>())
            .prop_map(|(path, offset, len, seed)| Step::WriteOpen { path, offset, len, seed }),
        1 => path().prop_map(|path| Step::Fsync { path }),
        1 => path().prop_map(|path| Step::Close { path }),
        2 => path().prop_map(|path| Step::Read { path }),
        1 => Just(Step::Crash),
        1 => (1u64..30).prop_map(|writes| Step::CrashAfterWrites { writes }),
        1 => (prop::sample::select(&CommitPhase::ALL[..]), 1u32..3)
            .prop_map(|(phase, occurrence)| Step::CrashAtPhase { phase, occurrence }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn random_operations_and_crashes_agree_with_the_model(
        steps in prop::collection::vec(step(), 1..40),
        seed in any::<u64>(),
        policy in prop::sample::select(&["replicate:2", "erasure:2+1", "erasure:3+2"][..]),
    ) {
        let scenario = Scenario {
            name: "proptest".into(),
            description: String::new(),
            seed,
            setup: Setup {
                disks: vec!["64MiB".into(); 5],
                policy: policy.into(),
                checkpoint_every: Some(7),
                tiering: None,
                store: false,
                listing_lag: 0,
            },
            steps,
            expect: Expect::default(),
        };
        let outcome = runner::run(&scenario, &RunOptions { seed, ..RunOptions::default() });
        prop_assert!(outcome.passed(), "{}\n{}", outcome.line(), scenario.to_ron());
    }
}
