//! Cognition: what turns a plan into a change in the worktree. One trait,
//! [`Cognition`], with a backend per way of thinking: `offline` (local cargo
//! commands, no model), `claude-cli` (`claude -p` run directly), `mcp`
//! (Claude Code behind an MCP server) and `nats` (Claude Code on `agent
//! worker` processes through NATS JetStream). [`select`] implements
//! `backend = "auto"`.

pub mod claude_cli;
pub mod mcp;
pub mod nats;
pub mod offline;
pub mod prompt;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::oneshot;

use crate::config::{BackendChoice, Config};
use crate::domain::{BackendKind, Capability, Execution, JobOutcome};
use crate::process::find_executable;
use crate::sandbox::Sandbox;

/// One job for a backend.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: u64,
    /// The iteration and candidate the job is for.
    pub attempt: crate::domain::Attempt,
    pub capability: String,
    pub prompt: Option<String>,
    pub cwd: PathBuf,
    pub timeout: Duration,
    pub execution: Execution,
    /// Cancelled when an operator kills the job (`agent ctl send executor kill-job`).
    pub cancel: tokio_util::sync::CancellationToken,
    /// Continue this Claude Code session (a repair turn).
    pub resume: Option<String>,
    /// Where the backend shows how far the job has come.
    pub progress: Arc<tokio::sync::watch::Sender<crate::domain::JobProgress>>,
}

/// A way of executing plans.
#[async_trait]
pub trait Cognition: Send + Sync {
    /// Which backend this is: what code that treats one backend apart asks.
    fn kind(&self) -> BackendKind;

    /// The backend's name in config, logs and records.
    fn name(&self) -> &'static str {
        self.kind().as_str()
    }

    /// What the planner may choose from (for a backend that takes prompts,
    /// the prompt templates are its capabilities instead: see
    /// [`Cognition::takes_prompts`]).
    fn capabilities(&self) -> Vec<Capability>;

    /// Whether a job is a prompt to a model: then each configured prompt
    /// template is a capability (`prompt::Prompts`).
    fn takes_prompts(&self) -> bool {
        false
    }

    /// Runs a job to its end. As soon as the job runs, the backend tells
    /// `started` where, and waits until that is recorded before waiting for
    /// the job (a restart in between must find the record).
    async fn run(&self, job: Job, started: StartHook) -> JobOutcome;

    /// Waits for a job an earlier executor started (`remote_id` as reported
    /// through `Started::Remote`) instead of starting it again; `None` when
    /// this backend cannot re-attach.
    async fn reattach(&self, job: Job, remote_id: String) -> Option<JobOutcome> {
        let _ = (job, remote_id);
        None
    }

    /// Answers research questions without changing anything in `cwd`, one
    /// answer per question; `None` for backends that have no model to ask.
    async fn research(
        &self,
        questions: &[String],
        cwd: &Path,
        timeout: Duration,
    ) -> Option<Vec<JobOutcome>> {
        let _ = (questions, cwd, timeout);
        None
    }

    /// Releases what the backend holds (server processes) at shutdown.
    async fn shutdown(&self) {}
}

/// Tells the executor where a job runs and waits until it has recorded it.
#[derive(Debug)]
pub struct StartHook {
    sender: Option<oneshot::Sender<(Started, oneshot::Sender<()>)>>,
}

impl StartHook {
    /// A hook and the executor's end of it: each report comes with an
    /// acknowledgement to send once it is durable.
    pub fn new() -> (StartHook, oneshot::Receiver<(Started, oneshot::Sender<()>)>) {
        let (sender, receiver) = oneshot::channel();
        (
            StartHook {
                sender: Some(sender),
            },
            receiver,
        )
    }

    /// A hook nobody listens to.
    pub fn ignored() -> StartHook {
        StartHook { sender: None }
    }

    /// Reports where the job runs and waits for the acknowledgement.
    pub async fn started(mut self, place: Started) {
        let Some(sender) = self.sender.take() else {
            return;
        };
        let (ack, acked) = oneshot::channel();
        if sender.send((place, ack)).is_ok() {
            let _ = acked.await;
        }
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
    #[error("the claude binary {0} was not found; install Claude Code or choose --backend offline")]
    ClaudeNotFound(String),
    #[error("cannot find this program's own path to start `agent mcp-serve`: {0}")]
    NoOwnPath(String),
    /// NATS did not answer (with its URL), or its queue could not be made.
    #[error(
        "{0}; start NATS with JetStream (`nats-server -js`), or remove [workers] nats to run jobs here"
    )]
    Workers(String),
}

/// The read-only questions a model is asked about a topic (answered as one
/// batch where the backend can).
pub fn research_questions(topic: &str) -> Vec<String> {
    vec![
        format!(
            "Read this repository (do not change anything) and list, in at most ten short bullet \
             points, the facts someone needs to make progress on: {topic}"
        ),
        "Read this repository (do not change anything) and say in at most five bullet points how \
         its changes are validated: build, tests, lints, and anything that must not break."
            .to_string(),
    ]
}

/// The chosen backend and why it was chosen.
pub struct Selection {
    pub backend: Arc<dyn Cognition>,
    pub reason: String,
}

/// The command that starts the MCP server: the configured one, else this
/// binary's own `mcp-serve` with the agent's settings.
pub fn mcp_server_command(
    config: &Config,
    sandbox: Option<&Sandbox>,
) -> Result<Vec<String>, SelectError> {
    if let Some(command) = &config.mcp_command {
        return Ok(command.clone());
    }
    let own = std::env::current_exe().map_err(|e| SelectError::NoOwnPath(e.to_string()))?;
    let mut command = vec![
        own.display().to_string(),
        "mcp-serve".into(),
        "--state".into(),
        config.state_dir.display().to_string(),
        "--claude-bin".into(),
        config.claude_bin.display().to_string(),
        "--permission-mode".into(),
        config.permission_mode.to_string(),
        "--job-timeout".into(),
        humantime::format_duration(config.job_timeout).to_string(),
        "--max-concurrent".into(),
        config.mcp_max_concurrent.to_string(),
    ];
    if let Some(model) = &config.model {
        command.extend(["--model".to_string(), model.clone()]);
    }
    if let Some(turns) = config.max_turns {
        command.extend(["--max-turns".to_string(), turns.to_string()]);
    }
    if let Some(usd) = config.max_budget_usd {
        command.extend(["--max-budget-usd".to_string(), usd.to_string()]);
    }
    command.extend(policy_args(&config.claude_policy));
    if let Some(sandbox) = sandbox {
        command.extend(sandbox.serve_args());
    }
    Ok(command)
}

/// The job policy as `agent mcp-serve` flags.
fn policy_args(policy: &crate::claude::Policy) -> Vec<String> {
    let mut args = vec![
        "--stall-timeout".to_string(),
        humantime::format_duration(policy.stall_timeout).to_string(),
        "--setting-sources".into(),
        policy.setting_sources.clone(),
    ];
    for tool in &policy.allowed_tools {
        args.push(format!("--allowed-tool={tool}"));
    }
    for tool in &policy.disallowed_tools {
        args.push(format!("--disallowed-tool={tool}"));
    }
    if let Some(file) = &policy.mcp_config {
        args.extend(["--mcp-config".to_string(), file.display().to_string()]);
    }
    args
}

fn mcp(config: &Config, sandbox: Option<&Sandbox>) -> Result<Arc<dyn Cognition>, SelectError> {
    Ok(Arc::new(mcp::Mcp::new(mcp::McpSettings {
        command: mcp_server_command(config, sandbox)?,
        call_timeout: config.mcp_call_timeout,
        job_timeout: config.job_timeout,
        permission_mode: config.permission_mode,
        model: config.model.clone(),
    })))
}

/// Picks the backend `config.backend` asks for; `auto` uses Claude Code over
/// MCP when it is installed and usable, else the offline backend.
/// `sandbox` confines every job of the chosen backend.
pub async fn select(config: &Config, sandbox: Option<&Sandbox>) -> Result<Selection, SelectError> {
    if sends_to_workers(config) {
        return workers(config).await;
    }
    match config.backend {
        BackendChoice::Nats => workers(config).await,
        BackendChoice::Offline => Ok(offline_selection(
            sandbox,
            "offline backend chosen in configuration".into(),
        )),
        BackendChoice::ClaudeCli => {
            if find_executable(&config.claude_bin).is_none() {
                return Err(SelectError::ClaudeNotFound(
                    config.claude_bin.display().to_string(),
                ));
            }
            Ok(Selection {
                backend: claude_cli_backend(config, sandbox),
                reason: "claude-cli backend chosen in configuration".into(),
            })
        }
        BackendChoice::Mcp => {
            // Another MCP server may bring its own Claude Code.
            if config.mcp_command.is_none() && find_executable(&config.claude_bin).is_none() {
                return Err(SelectError::ClaudeNotFound(
                    config.claude_bin.display().to_string(),
                ));
            }
            Ok(Selection {
                backend: mcp(config, sandbox)?,
                reason: format!(
                    "mcp backend chosen in configuration (server: {})",
                    mcp_server_command(config, sandbox)?.join(" ")
                ),
            })
        }
        BackendChoice::Auto => select_auto(config, sandbox).await,
    }
}

/// Whether jobs go to `agent worker` processes: a server named in
/// `[workers]` sends them there whatever the backend, and `backend = "nats"`
/// sends them to the default server.
pub fn sends_to_workers(config: &Config) -> bool {
    config.workers.nats.is_some() || config.backend == BackendChoice::Nats
}

/// Jobs on `agent worker` processes: `[workers] nats` (or the default
/// server with `backend = "nats"`).
async fn workers(config: &Config) -> Result<Selection, SelectError> {
    let url = config
        .workers
        .nats
        .clone()
        .unwrap_or_else(|| crate::workers::DEFAULT_URL.to_string());
    let backend = nats::Nats::connect(
        &url,
        &config.workers,
        &config.state_dir,
        nats::JobSettings {
            permission_mode: config.permission_mode,
            model: config.model.clone(),
            max_turns: config.max_turns,
            max_budget_usd: config.max_budget_usd,
        },
    )
    .await
    .map_err(SelectError::Workers)?;
    Ok(Selection {
        backend: Arc::new(backend),
        reason: format!(
            "Claude Code jobs go to workers through NATS at {url} (stream {})",
            config.workers.stream
        ),
    })
}

/// `backend = "auto"`: Claude Code over MCP when it is installed and
/// usable (an API key, or logged in), else the offline backend, with why.
async fn select_auto(config: &Config, sandbox: Option<&Sandbox>) -> Result<Selection, SelectError> {
    let Some(path) = find_executable(&config.claude_bin) else {
        return Ok(offline_selection(
            sandbox,
            format!(
                "Claude Code not found (no executable `{}`): using the offline backend",
                config.claude_bin.display()
            ),
        ));
    };
    let usable = if std::env::var_os("ANTHROPIC_API_KEY").is_some_and(|k| !k.is_empty()) {
        Ok("ANTHROPIC_API_KEY is set")
    } else {
        match crate::claude::logged_in(&path).await {
            Ok(true) => Ok("logged in"),
            Ok(false) => Err("not logged in".to_string()),
            Err(why) => Err(format!("`claude auth status` failed ({why})")),
        }
    };
    match usable {
        Ok(why) => Ok(Selection {
            backend: mcp(config, sandbox)?,
            reason: format!(
                "Claude Code found at {} and {why}: using the mcp backend",
                path.display()
            ),
        }),
        Err(why) => Ok(offline_selection(
            sandbox,
            format!(
                "Claude Code found at {} but {why}: using the offline backend",
                path.display()
            ),
        )),
    }
}

/// The offline backend, confined like every other, and why it was chosen.
fn offline_selection(sandbox: Option<&Sandbox>, reason: String) -> Selection {
    Selection {
        backend: Arc::new(offline::Offline {
            sandbox: sandbox.cloned(),
        }),
        reason,
    }
}

/// `claude -p` run directly, each job with its own config directory.
fn claude_cli_backend(config: &Config, sandbox: Option<&Sandbox>) -> Arc<dyn Cognition> {
    Arc::new(
        claude_cli::ClaudeCli::new(
            config.claude_bin.clone(),
            config.permission_mode,
            config.model.clone(),
        )
        .with_limits(config.max_turns, config.max_budget_usd)
        .with_policy(config.claude_policy.clone())
        .confined(
            sandbox.cloned(),
            crate::claude::ConfigDirs {
                base: config.state_dir.join("claude"),
            },
        ),
    )
}
