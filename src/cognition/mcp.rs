//! The `mcp` backend: an rmcp client over stdio to a server with the claude_*
//! tools (by default this binary's own `agent mcp-serve`). The server runs in a
//! process group of its own; a call that fails or outlives its deadline kills
//! that group and the next call starts a fresh server. Async plans store the
//! server's job id before polling, so a restarted agent re-attaches to the job
//! instead of paying for it twice — the server is deliberately not tied to the
//! agent's life: if the agent is killed, it finishes its jobs and exits.

use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use rmcp::ServiceExt;
use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::service::{Peer, RoleClient, RunningService};
use rmcp::transport::{ConfigureCommandExt, TokioChildProcess};
use serde::de::DeserializeOwned;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::{Cognition, Job, StartHook, Started};
use crate::domain::{
    BackendKind, Capability, Execution, JobOutcome, JobStatus, PermissionMode, Usage,
};
use crate::mcp::REQUIRED_TOOLS;
use crate::mcp::tools::{
    BatchOutput, BatchParams, JobIdParams, RunOutput, RunParams, StartedOutput, StatusOutput,
};

/// Extra time a blocking or polling call gets beyond the job's own deadline.
const MARGIN: Duration = Duration::from_secs(60);
const POLL_FIRST: Duration = Duration::from_millis(100);
const POLL_MAX: Duration = Duration::from_secs(2);

/// How to reach the MCP server.
#[derive(Debug, Clone)]
pub struct McpSettings {
    /// Program and arguments of the server.
    pub command: Vec<String>,
    pub call_timeout: Duration,
    pub job_timeout: Duration,
    pub permission_mode: PermissionMode,
    pub model: Option<String>,
}

struct Connection {
    generation: u64,
    service: RunningService<RoleClient, ()>,
    group: Option<i32>,
}

impl Connection {
    fn kill(&self) {
        if let Some(group) = self.group {
            let _ = killpg(Pid::from_raw(group), Signal::SIGKILL);
        }
    }
}

/// The MCP client backend.
pub struct Mcp {
    settings: McpSettings,
    connection: Mutex<Option<Connection>>,
    generations: AtomicU64,
}

/// Why an MCP call gave no usable answer.
#[derive(Debug, Clone)]
enum CallError {
    /// The server refused (a tool error): the server itself is fine.
    Refused(String),
    /// The server died, hung or spoke nonsense; it has been killed.
    Server(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Refused(message) => write!(f, "the MCP server refused: {message}"),
            CallError::Server(message) => write!(f, "the MCP server failed: {message}"),
        }
    }
}

impl Mcp {
    pub fn new(settings: McpSettings) -> Mcp {
        Mcp {
            settings,
            connection: Mutex::new(None),
            generations: AtomicU64::new(0),
        }
    }

    /// Starts the server, initializes the session and checks the tools.
    async fn connect(&self) -> Result<Connection, String> {
        let (program, args) = self
            .settings
            .command
            .split_first()
            .ok_or_else(|| "no MCP server command configured".to_string())?;
        let command = crate::process::group_command(program).configure(|command| {
            // Unmarked on purpose: the server outlives a killed agent to
            // finish its jobs, which a restarted agent re-attaches to.
            command.args(args).env_remove(crate::process::MARK_VAR);
        });
        let (transport, _) = TokioChildProcess::builder(command)
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot start the MCP server `{}`: {e}",
                    self.settings.command.join(" ")
                )
            })?;
        let group = transport.id().map(|pid| pid as i32);
        let kill = || {
            if let Some(group) = group {
                let _ = killpg(Pid::from_raw(group), Signal::SIGKILL);
            }
        };
        // A server may wait for its predecessor to finish jobs before it
        // answers; that is bounded by the job deadline.
        let connect_deadline = self.settings.job_timeout + self.settings.call_timeout;
        let service = match tokio::time::timeout(connect_deadline, ().serve(transport)).await {
            Ok(Ok(service)) => service,
            Ok(Err(error)) => {
                kill();
                return Err(format!("MCP initialization failed: {error}"));
            }
            Err(_) => {
                kill();
                return Err(format!(
                    "the MCP server did not initialize within {}",
                    humantime::format_duration(connect_deadline)
                ));
            }
        };
        let tools = match tokio::time::timeout(self.settings.call_timeout, service.list_all_tools())
            .await
        {
            Ok(Ok(tools)) => tools,
            Ok(Err(error)) => {
                kill();
                return Err(format!("cannot list the MCP server's tools: {error}"));
            }
            Err(_) => {
                kill();
                return Err("the MCP server did not list its tools in time".into());
            }
        };
        let missing: Vec<&str> = REQUIRED_TOOLS
            .iter()
            .copied()
            .filter(|name| !tools.iter().any(|t| t.name == *name))
            .collect();
        if !missing.is_empty() {
            kill();
            return Err(format!(
                "the MCP server `{}` lacks the tools: {}",
                self.settings.command.join(" "),
                missing.join(", ")
            ));
        }
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::info!(generation, group = ?group, "connected to the MCP server");
        Ok(Connection {
            generation,
            service,
            group,
        })
    }

    /// A peer of the live connection, connecting first if there is none.
    async fn peer(&self) -> Result<(u64, Peer<RoleClient>), String> {
        let mut connection = self.connection.lock().await;
        if let Some(live) = connection.as_ref()
            && !live.service.is_transport_closed()
        {
            return Ok((live.generation, live.service.peer().clone()));
        }
        if let Some(dead) = connection.take() {
            dead.kill();
        }
        let fresh = self.connect().await?;
        let peer = (fresh.generation, fresh.service.peer().clone());
        *connection = Some(fresh);
        Ok(peer)
    }

    /// Kills the connection of `generation` (if it is still the live one).
    async fn discard(&self, generation: u64, why: &str) {
        let mut connection = self.connection.lock().await;
        if connection
            .as_ref()
            .is_some_and(|c| c.generation == generation)
        {
            tracing::warn!(generation, why, "killing the MCP server's process group");
            if let Some(dead) = connection.take() {
                dead.kill();
            }
        }
    }

    /// Calls a tool under a deadline and parses its structured result.
    async fn call<T: DeserializeOwned>(
        &self,
        tool: &'static str,
        arguments: serde_json::Value,
        deadline: Duration,
    ) -> Result<T, CallError> {
        let (generation, peer) = self.peer().await.map_err(CallError::Server)?;
        let arguments = match arguments {
            serde_json::Value::Object(map) => map,
            _ => serde_json::Map::new(),
        };
        let request = CallToolRequestParams::new(tool).with_arguments(arguments);
        let result: CallToolResult =
            match tokio::time::timeout(deadline, peer.call_tool(request)).await {
                Ok(Ok(result)) => result,
                Ok(Err(error)) => {
                    let why = format!("{tool}: {error}");
                    self.discard(generation, &why).await;
                    return Err(CallError::Server(why));
                }
                Err(_) => {
                    let why = format!(
                        "{tool} did not answer within {}",
                        humantime::format_duration(deadline)
                    );
                    self.discard(generation, &why).await;
                    return Err(CallError::Server(why));
                }
            };
        let text = crate::mcp::result_text(&result);
        match result.structured_content {
            Some(value) => serde_json::from_value(value).map_err(|e| {
                CallError::Server(format!("{tool} returned an unexpected shape: {e}"))
            }),
            None if result.is_error == Some(true) => Err(CallError::Refused(text)),
            None => Err(CallError::Server(format!(
                "{tool} returned no structured content: {text}"
            ))),
        }
    }

    fn run_params(
        &self,
        task: &str,
        cwd: &Path,
        permission_mode: PermissionMode,
        request_id: Option<String>,
        resume: Option<String>,
    ) -> serde_json::Value {
        serde_json::to_value(RunParams {
            task: task.to_string(),
            cwd: Some(cwd.display().to_string()),
            // The wire names the mode as Claude Code does.
            permission_mode: Some(permission_mode.to_string()),
            model: self.settings.model.clone(),
            max_turns: None,
            append_system_prompt: None,
            resume_session_id: resume,
            request_id,
        })
        .unwrap_or_default()
    }

    /// Polls a server job with backoff until it ends, then fetches its result.
    async fn wait_for(
        &self,
        job_id: &str,
        local_id: u64,
        cancel: &CancellationToken,
        progress: &tokio::sync::watch::Sender<crate::domain::JobProgress>,
    ) -> JobOutcome {
        let ids = serde_json::to_value(JobIdParams {
            job_id: job_id.to_string(),
        })
        .unwrap_or_default();
        let give_up = tokio::time::Instant::now() + self.settings.job_timeout + MARGIN;
        let mut delay = POLL_FIRST;
        loop {
            match self
                .call::<StatusOutput>("claude_status", ids.clone(), self.settings.call_timeout)
                .await
            {
                Ok(status) if status.status.parse() == Ok(JobStatus::Running) => {
                    if let Some(shown) = status.progress {
                        progress.send_replace(shown.into());
                    }
                }
                Ok(_) => break,
                Err(error) => return failed(local_id, error.to_string()),
            }
            if cancel.is_cancelled() {
                // Killed on request: the server kills the job's process group.
                let _ = self
                    .call::<StatusOutput>(
                        "claude_kill_job",
                        ids.clone(),
                        self.settings.call_timeout,
                    )
                    .await;
                break;
            }
            if tokio::time::Instant::now() > give_up {
                let _ = self
                    .call::<StatusOutput>(
                        "claude_kill_job",
                        ids.clone(),
                        self.settings.call_timeout,
                    )
                    .await;
                return JobOutcome {
                    status: JobStatus::Timeout,
                    ..failed(
                        local_id,
                        format!("job {job_id} outlived its deadline and was killed"),
                    )
                };
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = cancel.cancelled() => {}
            }
            delay = (delay * 2).min(POLL_MAX);
        }
        match self
            .call::<RunOutput>("claude_result", ids, self.settings.call_timeout)
            .await
        {
            Ok(output) => outcome_of(local_id, output),
            Err(error) => failed(local_id, error.to_string()),
        }
    }
}

fn failed(job_id: u64, error: String) -> JobOutcome {
    JobOutcome {
        job_id,
        status: JobStatus::Failed,
        output: String::new(),
        error: Some(error),
        usage: Usage::default(),
        claude: Default::default(),
    }
}

/// A server result as the executor's outcome; usage and cost as reported.
pub fn outcome_of(job_id: u64, output: RunOutput) -> JobOutcome {
    JobOutcome {
        job_id,
        status: match output.status.parse::<JobStatus>() {
            Ok(JobStatus::Completed) if !output.is_error => JobStatus::Completed,
            Ok(status @ (JobStatus::Timeout | JobStatus::Killed)) => status,
            _ => JobStatus::Failed,
        },
        output: output.result.unwrap_or_default(),
        error: output
            .error
            .or_else(|| output.is_error.then(|| "the job failed".to_string())),
        usage: Usage {
            input_tokens: output.usage.input_tokens,
            output_tokens: output.usage.output_tokens,
            cost_usd: output.total_cost_usd,
        },
        claude: crate::domain::ClaudeFacts {
            session_id: output.session_id,
            turns: output.num_turns,
            permission_denials: output.permission_denials,
            api_error_status: output.api_error_status,
            denied_tools: output.denied_tools,
            rate_limited_until_ms: output.rate_limited_until_ms,
        },
    }
}

#[async_trait]
impl Cognition for Mcp {
    fn kind(&self) -> BackendKind {
        BackendKind::Mcp
    }

    fn capabilities(&self) -> Vec<Capability> {
        vec![Capability {
            id: super::claude_cli::CAPABILITY.into(),
            description: "ask Claude Code (over MCP) for one focused change toward the goal".into(),
        }]
    }

    fn takes_prompts(&self) -> bool {
        true
    }

    async fn run(&self, job: Job, started: StartHook) -> JobOutcome {
        let task = job.prompt.clone().unwrap_or_default();
        // Stable for this job of this agent: a restarted agent that never saw
        // the server's job id starts "again" with the same key and gets the
        // job that is already running.
        let request_id = format!("{}#{}", job.cwd.display(), job.id);
        let params = self.run_params(
            &task,
            &job.cwd,
            self.settings.permission_mode,
            Some(request_id),
            job.resume.clone(),
        );
        match job.execution {
            Execution::Sync => {
                // Dropping the call on cancel sends `notifications/cancelled`;
                // `agent mcp-serve` kills the job's process group for it.
                let call = self.call::<RunOutput>("claude_run", params, job.timeout + MARGIN);
                tokio::select! {
                    result = call => match result {
                        Ok(output) => outcome_of(job.id, output),
                        Err(error) => failed(job.id, error.to_string()),
                    },
                    () = job.cancel.cancelled() => JobOutcome {
                        status: JobStatus::Killed,
                        ..failed(job.id, "the job was killed on request".into())
                    },
                }
            }
            Execution::Async => {
                let started_job = match self
                    .call::<StartedOutput>("claude_run_async", params, self.settings.call_timeout)
                    .await
                {
                    Ok(started_job) => started_job,
                    Err(error) => return failed(job.id, error.to_string()),
                };
                // Recorded before polling starts: a restarted agent re-attaches.
                started
                    .started(Started::Remote(started_job.job_id.clone()))
                    .await;
                self.wait_for(&started_job.job_id, job.id, &job.cancel, &job.progress)
                    .await
            }
        }
    }

    async fn reattach(&self, job: Job, remote_id: String) -> Option<JobOutcome> {
        Some(
            self.wait_for(&remote_id, job.id, &job.cancel, &job.progress)
                .await,
        )
    }

    async fn research(
        &self,
        questions: &[String],
        cwd: &Path,
        timeout: Duration,
    ) -> Option<Vec<JobOutcome>> {
        // Read-only questions in plan mode, answered as one batch.
        let tasks = questions
            .iter()
            .filter_map(|q| {
                serde_json::from_value::<RunParams>(self.run_params(
                    q,
                    cwd,
                    PermissionMode::Plan,
                    None,
                    None,
                ))
                .ok()
            })
            .collect();
        let params = serde_json::to_value(BatchParams {
            tasks,
            max_concurrent: Some(2),
        })
        .unwrap_or_default();
        Some(
            match self
                .call::<BatchOutput>("claude_run_batch", params, timeout + MARGIN)
                .await
            {
                Ok(batch) => batch
                    .results
                    .into_iter()
                    .map(|r| outcome_of(0, r))
                    .collect(),
                Err(error) => questions
                    .iter()
                    .map(|_| failed(0, error.to_string()))
                    .collect(),
            },
        )
    }

    async fn shutdown(&self) {
        if let Some(connection) = self.connection.lock().await.take() {
            connection.kill();
            let _ = connection.service.cancel().await;
        }
    }
}
