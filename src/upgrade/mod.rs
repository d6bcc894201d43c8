//! Self-upgrade, modelled on Erlang/OTP's release handler: releases kept at
//! versioned paths with a `current` and a `permanent` pointer
//! ([`releases`]); the keeper — the binary the operator installed — that
//! runs the current release as its child, gates it, restarts it when it
//! crashes and falls back to the permanent release ([`keeper`]); the
//! candidate release built from an accepted change to the agent's own
//! source and judged as an agent against the running one ([`candidate`]);
//! and the record of every attempt, with what a rollback leaves behind
//! ([`attempts`]).

use std::path::PathBuf;
use std::time::Duration;

pub mod attempts;
pub mod candidate;
pub mod keeper;
pub mod releases;

/// `[upgrade]`, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct UpgradeConfig {
    /// `agent run` becomes the keeper of its releases.
    pub enabled: bool,
    /// How long a started release has to answer `ctl status`.
    pub ready_within: Duration,
    /// Crashes within `restart_window` after which the keeper stops
    /// restarting and exits with the last cause.
    pub max_restarts: u32,
    pub restart_window: Duration,
    /// How long a release handed over to is on probation before it is
    /// made permanent.
    pub probation: Duration,
    /// And how many iterations it must commit first (0: the time alone).
    pub probation_iterations: u64,
    /// The cargo profile candidates are built with.
    pub profile: String,
    /// Where candidates are built (shared, so that a build after the first
    /// is incremental); `None`: `<state>/releases/target`.
    pub target_dir: Option<PathBuf>,
    pub build_timeout: Duration,
    /// The held-out workspaces a candidate is judged on; empty: the
    /// crates under the source's `examples/`.
    pub suite: Vec<PathBuf>,
    /// Paired seeds per workspace, and iterations per run.
    pub seeds: u64,
    pub iterations: u64,
    /// What a candidate must do to be kept.
    pub keep_if: KeepIf,
}

/// The rule a candidate's evaluation is judged by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepIf {
    /// Its total best fitness is no higher than the running release's, and
    /// at equal fitness it reaches it in no more iterations.
    NotWorse,
    /// Lower total best fitness, or equal in fewer iterations.
    Better,
}

impl KeepIf {
    pub const NAMES: [&'static str; 2] = ["not-worse", "better"];

    pub fn parse(text: &str) -> Option<KeepIf> {
        match text {
            "not-worse" => Some(KeepIf::NotWorse),
            "better" => Some(KeepIf::Better),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            KeepIf::NotWorse => "not-worse",
            KeepIf::Better => "better",
        }
    }
}

impl Default for UpgradeConfig {
    fn default() -> Self {
        UpgradeConfig {
            enabled: false,
            ready_within: Duration::from_secs(60),
            max_restarts: 5,
            restart_window: Duration::from_secs(600),
            probation: Duration::from_secs(600),
            probation_iterations: 3,
            profile: "release".into(),
            target_dir: None,
            build_timeout: Duration::from_secs(30 * 60),
            suite: Vec::new(),
            seeds: 1,
            iterations: 4,
            keep_if: KeepIf::NotWorse,
        }
    }
}
