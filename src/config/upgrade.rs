//! `[upgrade]`: whether `agent run` is the keeper of its releases (the
//! fixed parent that starts the current release as its child, gates it and
//! falls back to the permanent one), the keeper's bounds, and how a
//! candidate built from the agent's own source is built and judged.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ConfigError;
use super::values::{HumanDuration, Positive};
use crate::upgrade::{KeepIf, UpgradeConfig};

/// `[upgrade]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpgrade {
    enabled: Option<bool>,
    ready_within: Option<HumanDuration>,
    max_restarts: Option<Positive>,
    restart_window: Option<HumanDuration>,
    probation: Option<HumanDuration>,
    probation_iterations: Option<u64>,
    profile: Option<String>,
    target_dir: Option<PathBuf>,
    build_timeout: Option<HumanDuration>,
    suite: Option<Vec<PathBuf>>,
    seeds: Option<Positive>,
    iterations: Option<Positive>,
    keep_if: Option<String>,
}

impl RawUpgrade {
    /// Checked, its paths made absolute; `file` names the configuration
    /// in errors.
    pub(super) fn check(self, file: &Path) -> Result<UpgradeConfig, ConfigError> {
        let default = UpgradeConfig::default();
        let keep_if = match self.keep_if {
            None => default.keep_if,
            Some(text) => KeepIf::parse(&text).ok_or_else(|| {
                ConfigError::whole_file(
                    file,
                    format!(
                        "[upgrade] keep_if \"{text}\": expected one of {}",
                        KeepIf::NAMES.join(", ")
                    ),
                )
            })?,
        };
        let profile = self.profile.unwrap_or(default.profile);
        if profile.is_empty() || profile.contains(char::is_whitespace) {
            return Err(ConfigError::whole_file(
                file,
                format!(
                    "[upgrade] profile \"{profile}\": expected a cargo profile name such as \"release\""
                ),
            ));
        }
        let absolute = |key: &str, path: &Path| {
            super::absolute(file, key, path).map(|p| p.as_path().to_path_buf())
        };
        let target_dir = self
            .target_dir
            .map(|dir| absolute("[upgrade] target_dir", &dir))
            .transpose()?;
        let suite = self
            .suite
            .unwrap_or_default()
            .iter()
            .map(|dir| absolute("[upgrade] suite", dir))
            .collect::<Result<_, _>>()?;
        Ok(UpgradeConfig {
            enabled: self.enabled.unwrap_or(default.enabled),
            ready_within: self.ready_within.map_or(default.ready_within, |d| d.0),
            max_restarts: self
                .max_restarts
                .map_or(default.max_restarts, |n| n.get() as u32),
            restart_window: self.restart_window.map_or(default.restart_window, |d| d.0),
            probation: self.probation.map_or(default.probation, |d| d.0),
            probation_iterations: self
                .probation_iterations
                .unwrap_or(default.probation_iterations),
            profile,
            target_dir,
            build_timeout: self.build_timeout.map_or(default.build_timeout, |d| d.0),
            suite,
            seeds: self.seeds.map_or(default.seeds, |n| n.get()),
            iterations: self.iterations.map_or(default.iterations, |n| n.get()),
            keep_if,
        })
    }
}
