//! `[upgrade]`: whether `agent run` is the keeper of its releases (the
//! fixed parent that starts the current release as its child, gates it and
//! falls back to the permanent one), and the keeper's bounds.

use serde::Deserialize;

use super::values::{HumanDuration, Positive};
use crate::upgrade::UpgradeConfig;

/// `[upgrade]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpgrade {
    enabled: Option<bool>,
    ready_within: Option<HumanDuration>,
    max_restarts: Option<Positive>,
    restart_window: Option<HumanDuration>,
    probation: Option<HumanDuration>,
}

impl From<RawUpgrade> for UpgradeConfig {
    fn from(raw: RawUpgrade) -> Self {
        let default = UpgradeConfig::default();
        UpgradeConfig {
            enabled: raw.enabled.unwrap_or(default.enabled),
            ready_within: raw.ready_within.map_or(default.ready_within, |d| d.0),
            max_restarts: raw
                .max_restarts
                .map_or(default.max_restarts, |n| n.get() as u32),
            restart_window: raw.restart_window.map_or(default.restart_window, |d| d.0),
            probation: raw.probation.map_or(default.probation, |d| d.0),
        }
    }
}
