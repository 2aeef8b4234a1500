//! Warm starts: a run handed to a prepared sandbox behaves as a cold one and shares nothing with the run
//! before it. The isolation tests of `hostile` run in both modes too.

use automa_runner::{Profile, RunSpec};
use tokio::sync::watch;

use crate::support::{self, Harness, Mode, run, run_with, spec};

async fn warm(profile: Profile) -> Harness {
    support::harness(profile, &[], Mode::Warm).await
}

#[tokio::test]
async fn a_warm_run_starts_warm_and_runs_its_script() {
    for profile in [Profile::Strict, Profile::None] {
        let h = warm(profile).await;
        let out = run(&h, spec("print('hello')")).await;
        assert_eq!(out.ok(), "hello\n");
        assert!(out.report.warm_start && out.report.setup.is_none(), "{:#?}", out.report);
    }
}
