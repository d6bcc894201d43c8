//! `[validation]`: the command a change must pass to be kept, how fitness is
//! measured, and what a run does when its base already fails. Checked into
//! [`ValidationConfig`].

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;
use super::values::HumanDuration;

/// `[validation]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawValidation {
    command: Option<String>,
    fitness: Option<String>,
    timeout: HumanDuration,
    failing_base: Option<FailingBase>,
}

/// How the fitness of the workspace is measured.
#[derive(Debug, Clone, PartialEq)]
pub enum Fitness {
    /// Count of distinct compiler and clippy warnings (`cargo clippy --all-targets`).
    CargoWarnings,
    /// A shell command that prints a number; lower is better.
    Command(String),
}

/// What a run does when validation already fails on its base, before any
/// change (`[validation] failing_base`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailingBase {
    /// Pause with the error line until an operator fixes it and resumes.
    Pause,
    /// Go on: the goal is to make validation pass (changes are still kept
    /// only when validation passes).
    Proceed,
}

/// `[validation]` checked; `command` and `timeout` are the
/// [`Config`](super::Config) fields `validation_command` and
/// `validation_timeout`, the others have their names there.
pub(super) struct ValidationConfig {
    pub command: String,
    pub fitness: Fitness,
    pub timeout: Duration,
    pub failing_base: FailingBase,
}

impl RawValidation {
    /// Reads `fitness` as the built-in measure or a command, and fills in
    /// the defaults.
    pub(super) fn check(self, file: &Path) -> Result<ValidationConfig, ConfigError> {
        let fitness = match self.fitness.as_deref().map(str::trim) {
            None | Some("cargo-warnings") => Fitness::CargoWarnings,
            Some("") => {
                return Err(ConfigError::whole_file(
                    file,
                    "[validation] fitness must be \"cargo-warnings\" or a command that prints a number",
                ));
            }
            Some(command) => Fitness::Command(command.to_string()),
        };
        Ok(ValidationConfig {
            command: self.command.unwrap_or_else(|| "cargo test".to_string()),
            fitness,
            timeout: self.timeout.0,
            failing_base: self.failing_base.unwrap_or(FailingBase::Pause),
        })
    }
}
