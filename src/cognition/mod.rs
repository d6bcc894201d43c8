//! Cognition: what turns a plan into a change in the worktree. One trait,
//! [`Cognition`], with a backend per way of thinking: `offline` (local cargo
//! commands, no model) and `claude-cli` (`claude -p`). The MCP backend plugs
//! into the same trait. [`select`] implements `backend = "auto"`.

pub mod claude_cli;
pub mod offline;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::oneshot;

use crate::config::{BackendChoice, Config};
use crate::messages::{Capability, JobOutcome};

/// One job for a backend.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: u64,
    pub capability: String,
    pub prompt: Option<String>,
    pub cwd: PathBuf,
    pub timeout: Duration,
    pub execution: crate::config::Execution,
}

/// A way of executing plans.
#[async_trait]
pub trait Cognition: Send + Sync {
    /// The backend's name in config, logs and records.
    fn name(&self) -> &'static str;

    /// What the planner may choose from.
    fn capabilities(&self) -> Vec<Capability>;

    /// Runs a job to its end. `started` learns where the job runs as soon
    /// as it does, so the executor can record it before waiting.
    async fn run(&self, job: Job, started: oneshot::Sender<Started>) -> JobOutcome;

    /// Waits for a job an earlier executor started (`remote_id` as reported
    /// through `Started::Remote`) instead of starting it again; `None` when
    /// this backend cannot re-attach.
    async fn reattach(&self, job: Job, remote_id: String) -> Option<JobOutcome> {
        let _ = (job, remote_id);
        None
    }

    /// Answers research questions without changing anything in `cwd`, one
    /// answer per question; `None` for backends that have no model to ask.
    async fn research(&self, questions: &[String], cwd: &Path, timeout: Duration) -> Option<Vec<JobOutcome>> {
        let _ = (questions, cwd, timeout);
        None
    }
}

/// Where a started job runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Started {
    /// A local process group, killed if the job is abandoned.
    Process(i32),
    /// A job id on the MCP server, re-attached to after a restart.
    Remote(String),
}

/// Why a backend could not be chosen.
#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    #[error(
        "the mcp backend is not available in this build yet; use --backend claude-cli (Claude Code's CLI) or --backend offline"
    )]
    McpNotAvailable,
    #[error("the claude binary {0} was not found; install Claude Code or choose --backend offline")]
    ClaudeNotFound(String),
}

/// The chosen backend and why it was chosen.
pub struct Selection {
    pub backend: Arc<dyn Cognition>,
    pub reason: String,
}

/// Picks the backend `config.backend` asks for; `auto` uses Claude Code when
/// it is installed and usable, else the offline backend.
pub async fn select(config: &Config) -> Result<Selection, SelectError> {
    let claude = || -> Arc<dyn Cognition> {
        Arc::new(claude_cli::ClaudeCli::new(
            config.claude_bin.clone(),
            config.permission_mode.clone(),
            config.model.clone(),
        ))
    };
    match config.backend {
        BackendChoice::Mcp => Err(SelectError::McpNotAvailable),
        BackendChoice::Offline => Ok(Selection {
            backend: Arc::new(offline::Offline),
            reason: "offline backend chosen in configuration".into(),
        }),
        BackendChoice::ClaudeCli => {
            if find_executable(&config.claude_bin).is_none() {
                return Err(SelectError::ClaudeNotFound(
                    config.claude_bin.display().to_string(),
                ));
            }
            Ok(Selection {
                backend: claude(),
                reason: "claude-cli backend chosen in configuration".into(),
            })
        }
        BackendChoice::Auto => {
            let Some(path) = find_executable(&config.claude_bin) else {
                return Ok(Selection {
                    backend: Arc::new(offline::Offline),
                    reason: format!(
                        "Claude Code not found (no executable `{}`): using the offline backend",
                        config.claude_bin.display()
                    ),
                });
            };
            if std::env::var_os("ANTHROPIC_API_KEY").is_some_and(|k| !k.is_empty()) {
                return Ok(Selection {
                    backend: claude(),
                    reason: format!(
                        "Claude Code found at {} and ANTHROPIC_API_KEY is set: using the claude-cli backend",
                        path.display()
                    ),
                });
            }
            match crate::claude::logged_in(&path).await {
                Ok(true) => Ok(Selection {
                    backend: claude(),
                    reason: format!(
                        "Claude Code found at {} and logged in: using the claude-cli backend",
                        path.display()
                    ),
                }),
                Ok(false) => Ok(Selection {
                    backend: Arc::new(offline::Offline),
                    reason: format!(
                        "Claude Code found at {} but not logged in: using the offline backend",
                        path.display()
                    ),
                }),
                Err(why) => Ok(Selection {
                    backend: Arc::new(offline::Offline),
                    reason: format!(
                        "Claude Code found at {} but `claude auth status` failed ({why}): using the offline backend",
                        path.display()
                    ),
                }),
            }
        }
    }
}

/// Resolves a program name on `PATH` (or checks a path that has a slash).
pub fn find_executable(program: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let is_executable = |path: &Path| {
        path.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.components().count() > 1 {
        return is_executable(program).then(|| program.to_path_buf());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|candidate| is_executable(candidate))
    })
}
