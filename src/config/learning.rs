//! `[learning]`: how capabilities are chosen and how much of what was learned
//! the planner is told. Checked straight into [`Settings`], whose defaults
//! fill in the keys a file leaves out.

use std::path::Path;

use serde::Deserialize;

use super::ConfigError;
use super::values::Positive;
use crate::learning::Settings;

/// `[learning]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLearning {
    enabled: Option<bool>,
    seed: Option<u64>,
    exploration: Option<f64>,
    relevant: Option<Positive>,
    context_tokens: Option<Positive>,
}

impl RawLearning {
    /// Refuses a negative or infinite exploration weight, which the bandit
    /// could not rank with.
    pub(super) fn check(self, file: &Path) -> Result<Settings, ConfigError> {
        let default = Settings::default();
        let exploration = self.exploration.unwrap_or(default.exploration);
        if !(exploration >= 0.0 && exploration.is_finite()) {
            return Err(ConfigError::whole_file(
                file,
                format!(
                    "[learning] exploration must be a number of 0 or more, e.g. 0.5, found {exploration}"
                ),
            ));
        }
        Ok(Settings {
            enabled: self.enabled.unwrap_or(default.enabled),
            seed: self.seed.unwrap_or(default.seed),
            exploration,
            relevant: self.relevant.map_or(default.relevant, |n| n.get() as usize),
            context_tokens: self
                .context_tokens
                .map_or(default.context_tokens, |n| n.get() as usize),
        })
    }
}
