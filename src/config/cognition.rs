//! `[cognition]`: which backend executes plans and how its Claude Code jobs
//! and MCP calls are bounded. Checked into [`CognitionConfig`], with the
//! Claude Code program and the MCP server's program made absolute here.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::values::{HumanDuration, Positive};
use super::{ConfigError, command_line, program};
use crate::domain::{Execution, PermissionMode, Program};

/// Which cognition backend executes plans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum BackendChoice {
    /// Claude Code when it is installed and usable, else offline.
    Auto,
    /// Local cargo commands, no model.
    Offline,
    /// `claude -p` run directly.
    ClaudeCli,
    /// Claude Code reached over MCP.
    Mcp,
    /// Jobs run by `agent worker` processes through NATS JetStream
    /// (`[workers]`).
    Nats,
}

/// `[cognition]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCognition {
    backend: BackendChoice,
    claude_bin: PathBuf,
    permission_mode: String,
    model: Option<String>,
    job_timeout: HumanDuration,
    execution: RawExecution,
    mcp_command: Option<Vec<String>>,
    mcp_call_timeout: HumanDuration,
    mcp_max_concurrent: Positive,
    max_turns: Option<Positive>,
    max_budget_usd: Option<f64>,
    prompts: Vec<String>,
    stall_timeout: HumanDuration,
    allowed_tools: Vec<String>,
    disallowed_tools: Vec<String>,
    setting_sources: Vec<String>,
    mcp_config: Option<PathBuf>,
    repair_turns: u32,
}

/// `[cognition] execution` as written; checked into [`Execution`].
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RawExecution {
    Sync,
    Async,
}

impl From<RawExecution> for Execution {
    fn from(raw: RawExecution) -> Execution {
        match raw {
            RawExecution::Sync => Execution::Sync,
            RawExecution::Async => Execution::Async,
        }
    }
}

/// `[cognition]` checked; each field is the [`Config`](super::Config) field
/// of the same name.
pub(super) struct CognitionConfig {
    pub backend: BackendChoice,
    pub claude_bin: Program,
    pub permission_mode: PermissionMode,
    pub model: Option<String>,
    pub job_timeout: Duration,
    pub execution: Execution,
    pub mcp_command: Option<Vec<String>>,
    pub mcp_call_timeout: Duration,
    pub mcp_max_concurrent: usize,
    pub prompts: Vec<String>,
    pub max_turns: Option<u32>,
    pub max_budget_usd: Option<f64>,
    pub policy: crate::claude::Policy,
    pub repair_turns: u32,
}

impl RawCognition {
    /// Refuses what Claude Code or the MCP server could not start with and
    /// makes their programs absolute.
    pub(super) fn check(self, file: &Path) -> Result<CognitionConfig, ConfigError> {
        let permission_mode = self.permission_mode.parse().map_err(|_| {
            ConfigError::whole_file(
                file,
                format!(
                    "[cognition] permission_mode \"{}\" is not one of: {}",
                    self.permission_mode,
                    PermissionMode::names()
                ),
            )
        })?;
        if self
            .mcp_command
            .as_ref()
            .is_some_and(|c| c.is_empty() || c[0].trim().is_empty())
        {
            return Err(ConfigError::whole_file(
                file,
                "[cognition] mcp_command must name a program, e.g. [\"agent\", \"mcp-serve\"]",
            ));
        }
        if self
            .max_budget_usd
            .is_some_and(|usd| !(usd > 0.0 && usd.is_finite()))
        {
            return Err(ConfigError::whole_file(
                file,
                "[cognition] max_budget_usd must be a positive number of dollars, e.g. 2.5",
            ));
        }
        let policy = self.policy(file)?;
        Ok(CognitionConfig {
            backend: self.backend,
            claude_bin: program(file, "[cognition] claude_bin", &self.claude_bin)?,
            permission_mode,
            model: self.model.filter(|m| !m.is_empty()),
            job_timeout: self.job_timeout.0,
            execution: self.execution.into(),
            mcp_command: self
                .mcp_command
                .map(|command| command_line(file, "[cognition] mcp_command", command))
                .transpose()?,
            mcp_call_timeout: self.mcp_call_timeout.0,
            mcp_max_concurrent: self.mcp_max_concurrent.get() as usize,
            prompts: self.prompts,
            max_turns: self
                .max_turns
                .map(|n| n.get().min(u64::from(u32::MAX)) as u32),
            max_budget_usd: self.max_budget_usd,
            policy,
            repair_turns: self.repair_turns,
        })
    }

    /// What every Claude Code job may do: the tools, the setting sources
    /// (each one Claude Code knows), the MCP config file (made absolute) and
    /// a stall clock inside the job's deadline.
    fn policy(&self, file: &Path) -> Result<crate::claude::Policy, ConfigError> {
        if let Some(unknown) = self
            .setting_sources
            .iter()
            .find(|source| !SETTING_SOURCES.contains(&source.as_str()))
        {
            return Err(ConfigError::whole_file(
                file,
                format!(
                    "[cognition] setting_sources: \"{unknown}\" is not one of: {}",
                    SETTING_SOURCES.join(", ")
                ),
            ));
        }
        if let Some(empty) = self
            .allowed_tools
            .iter()
            .chain(&self.disallowed_tools)
            .find(|tool| tool.trim().is_empty() || tool.starts_with('-'))
        {
            return Err(ConfigError::whole_file(
                file,
                format!(
                    "[cognition] allowed_tools and disallowed_tools: \"{empty}\" is not a tool rule (e.g. \"Read\" or \"Bash(cargo test:*)\")"
                ),
            ));
        }
        Ok(crate::claude::Policy {
            allowed_tools: self.allowed_tools.clone(),
            disallowed_tools: self.disallowed_tools.clone(),
            setting_sources: self.setting_sources.join(","),
            mcp_config: self
                .mcp_config
                .as_deref()
                .map(|path| super::absolute(file, "[cognition] mcp_config", path))
                .transpose()?
                .map(PathBuf::from),
            stall_timeout: self.stall_timeout.0,
        })
    }
}

/// The setting sources Claude Code's `--setting-sources` knows.
const SETTING_SOURCES: [&str; 3] = ["user", "project", "local"];
