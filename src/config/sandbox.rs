//! `[sandbox]`: whether jobs and checks run confined by bubblewrap, what they
//! may reach and write. Checked straight into [`SandboxConfig`], with the
//! bubblewrap program and every writable path made absolute here.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{ConfigError, absolute, program};
use crate::sandbox::{Enabled, SandboxConfig};

/// `[sandbox]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSandbox {
    enabled: Option<RawEnabled>,
    program: Option<PathBuf>,
    job_network: Option<bool>,
    check_network: Option<bool>,
    #[serde(default)]
    writable: Vec<PathBuf>,
}

/// `[sandbox] enabled` as written.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawEnabled {
    Auto,
    On,
    Off,
}

impl From<RawEnabled> for Enabled {
    fn from(raw: RawEnabled) -> Self {
        match raw {
            RawEnabled::Auto => Self::Auto,
            RawEnabled::On => Self::On,
            RawEnabled::Off => Self::Off,
        }
    }
}

impl RawSandbox {
    /// Makes the program and the writable paths absolute: the confined
    /// commands run in the worktree, where a relative path would mean
    /// something else.
    pub(super) fn check(self, file: &Path) -> Result<SandboxConfig, ConfigError> {
        Ok(SandboxConfig {
            enabled: self.enabled.map_or(Enabled::Auto, Into::into),
            program: program(
                file,
                "[sandbox] program",
                &self.program.unwrap_or_else(|| "bwrap".into()),
            )?,
            job_network: self.job_network.unwrap_or(true),
            check_network: self.check_network.unwrap_or(false),
            writable: self
                .writable
                .iter()
                .map(|path| absolute(file, "[sandbox] writable", path))
                .collect::<Result<_, _>>()?,
        })
    }
}
