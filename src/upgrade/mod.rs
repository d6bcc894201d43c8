//! Self-upgrade, modelled on Erlang/OTP's release handler: releases kept at
//! versioned paths with a `current` and a `permanent` pointer
//! ([`releases`]), and the keeper — the binary the operator installed — that
//! runs the current release as its child, gates it, restarts it when it
//! crashes and falls back to the permanent release ([`keeper`]).

use std::time::Duration;

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
}

impl Default for UpgradeConfig {
    fn default() -> Self {
        UpgradeConfig {
            enabled: false,
            ready_within: Duration::from_secs(60),
            max_restarts: 5,
            restart_window: Duration::from_secs(600),
            probation: Duration::from_secs(600),
        }
    }
}
