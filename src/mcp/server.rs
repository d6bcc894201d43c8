//! The rmcp server of `agent mcp-serve`: seven tools over the job table, served
//! on stdio. When the client goes away (stdin closes) the server finishes the
//! jobs still running — their results stay in the store for whoever asks next
//! — and exits, releasing the store.

use std::sync::Arc;
use std::time::Duration;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::schema_for_output;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, Implementation, ServerCapabilities, ServerConfig};
use rmcp::{ErrorData, ServerHandler, ServiceExt, tool, tool_handler, tool_router};
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::jobs::{Defaults, JobTable};
use super::tools::{
    BatchOutput, BatchParams, JobIdParams, JobList, RunOutput, RunParams, StartedOutput,
    StatusOutput,
};
use crate::claude::{Cli, ConfigDirs};
use crate::store::{Store, StoreError};

/// How `agent mcp-serve` was asked to run.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The agent's state directory; the server's store is `<state>/mcp`.
    pub state_dir: crate::domain::AbsolutePath,
    pub claude_bin: crate::domain::Program,
    pub job_timeout: Duration,
    pub max_concurrent: usize,
    pub permission_mode: crate::domain::PermissionMode,
    pub model: Option<String>,
    pub max_turns: Option<u32>,
    pub max_budget_usd: Option<f64>,
    /// The sandbox the agent probed and handed down; `None` runs unconfined.
    pub sandbox: Option<crate::sandbox::Sandbox>,
    /// Tools, setting sources, MCP servers and the stall clock of every job.
    pub policy: crate::claude::Policy,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Failed(String),
}

#[derive(Clone)]
pub struct ClaudeServer {
    jobs: Arc<JobTable>,
    tool_router: ToolRouter<Self>,
}

/// A tool result: the typed value as `structuredContent` plus a short text.
fn structured<T: Serialize>(
    value: &T,
    text: String,
    is_error: bool,
) -> Result<CallToolResult, ErrorData> {
    let json =
        serde_json::to_value(value).map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
    let mut result = if is_error {
        CallToolResult::structured_error(json)
    } else {
        CallToolResult::structured(json)
    };
    result.content = vec![ContentBlock::text(text)];
    Ok(result)
}

/// A refused request: a tool error the caller can read.
fn refused(message: String) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(message)])
}

fn run_text(output: &RunOutput) -> String {
    match &output.error {
        Some(error) => format!("{} {}: {error}", output.job_id, output.status),
        None => format!(
            "{} completed: {}",
            output.job_id,
            output
                .result
                .as_deref()
                .unwrap_or("")
                .chars()
                .take(200)
                .collect::<String>()
        ),
    }
}

fn run_result(output: &RunOutput) -> Result<CallToolResult, ErrorData> {
    structured(output, run_text(output), output.is_error)
}

#[tool_router]
impl ClaudeServer {
    pub fn new(jobs: Arc<JobTable>) -> Self {
        ClaudeServer {
            jobs,
            tool_router: Self::tool_router(),
        }
    }

    #[tool(
        description = "Run one Claude Code task and wait for it. Returns the parsed result (text, usage, cost).",
        output_schema = schema_for_output::<RunOutput>()
    )]
    async fn claude_run(
        &self,
        Parameters(params): Parameters<RunParams>,
        cancelled: CancellationToken,
    ) -> Result<CallToolResult, ErrorData> {
        let (job_id, mut handle) = match self.jobs.start(params, None).await {
            Err(refusal) => return Ok(refused(refusal)),
            Ok(started) => started,
        };
        // A client that gives up on the call (timeout, cancel) takes the job
        // down with it rather than leaving it running unobserved.
        let joined = tokio::select! {
            joined = &mut handle => joined,
            () = cancelled.cancelled() => {
                let _ = self.jobs.kill(&job_id).await;
                handle.await
            }
        };
        match joined {
            Ok(output) => run_result(&output),
            Err(error) => Err(ErrorData::internal_error(
                format!("job task failed: {error}"),
                None,
            )),
        }
    }

    #[tool(
        description = "Start one Claude Code task and return its job id at once; poll claude_status, then claude_result.",
        output_schema = schema_for_output::<StartedOutput>()
    )]
    async fn claude_run_async(
        &self,
        Parameters(params): Parameters<RunParams>,
    ) -> Result<CallToolResult, ErrorData> {
        if let Some(key) = &params.request_id {
            match self.jobs.find_request(key) {
                Err(refusal) => return Ok(refused(refusal)),
                Ok(Some(job_id)) => {
                    let text = format!("{job_id} was started earlier for request {key}");
                    return structured(&StartedOutput { job_id }, text, false);
                }
                Ok(None) => {}
            }
        }
        match self.jobs.start(params, None).await {
            Err(refusal) => Ok(refused(refusal)),
            Ok((job_id, _)) => {
                let text = format!("started {job_id}");
                structured(&StartedOutput { job_id }, text, false)
            }
        }
    }

    #[tool(
        description = "The status of a job: running, completed, failed, timeout or killed.",
        output_schema = schema_for_output::<StatusOutput>()
    )]
    async fn claude_status(
        &self,
        Parameters(params): Parameters<JobIdParams>,
    ) -> Result<CallToolResult, ErrorData> {
        match self.jobs.status(&params.job_id) {
            Err(refusal) => Ok(refused(refusal)),
            Ok(status) => {
                let text = format!("{} {}", status.job_id, status.status);
                structured(&status, text, false)
            }
        }
    }

    #[tool(
        description = "The result of a finished job (an error for unknown or still running jobs).",
        output_schema = schema_for_output::<RunOutput>()
    )]
    async fn claude_result(
        &self,
        Parameters(params): Parameters<JobIdParams>,
    ) -> Result<CallToolResult, ErrorData> {
        match self.jobs.result(&params.job_id) {
            Err(refusal) => Ok(refused(refusal)),
            Ok(output) => run_result(&output),
        }
    }

    #[tool(
        description = "Run several Claude Code tasks, at most maxConcurrent at once; every result in task order.",
        output_schema = schema_for_output::<BatchOutput>()
    )]
    async fn claude_run_batch(
        &self,
        Parameters(params): Parameters<BatchParams>,
    ) -> Result<CallToolResult, ErrorData> {
        if params.tasks.is_empty() {
            return Ok(refused("`tasks` must not be empty".into()));
        }
        let limit = params
            .max_concurrent
            .map_or(self.jobs.max_concurrent(), |n| {
                (n as usize).clamp(1, self.jobs.max_concurrent())
            });
        let batch = Arc::new(Semaphore::new(limit));
        let mut handles = Vec::with_capacity(params.tasks.len());
        for task in params.tasks {
            handles.push(self.jobs.start(task, Some(batch.clone())).await);
        }
        let mut results = Vec::with_capacity(handles.len());
        for handle in handles {
            results.push(match handle {
                Ok((_, handle)) => handle.await.map_err(|e| {
                    ErrorData::internal_error(format!("job task failed: {e}"), None)
                })?,
                Err(refusal) => RunOutput {
                    job_id: String::new(),
                    status: "failed".into(),
                    result: None,
                    is_error: true,
                    error: Some(refusal),
                    ..Default::default()
                },
            });
        }
        let failed = results.iter().filter(|r| r.is_error).count();
        let text = format!("{} task(s), {failed} failed", results.len());
        structured(&BatchOutput { results }, text, false)
    }

    #[tool(
        description = "Kill a running job's whole process group; its status becomes killed.",
        output_schema = schema_for_output::<StatusOutput>()
    )]
    async fn claude_kill_job(
        &self,
        Parameters(params): Parameters<JobIdParams>,
    ) -> Result<CallToolResult, ErrorData> {
        match self.jobs.kill(&params.job_id).await {
            Err(refusal) => Ok(refused(refusal)),
            Ok(status) => {
                let text = format!("{} {}", status.job_id, status.status);
                structured(&status, text, false)
            }
        }
    }

    #[tool(
        description = "Every job this server knows, oldest first.",
        output_schema = schema_for_output::<JobList>()
    )]
    async fn claude_list_jobs(&self) -> Result<CallToolResult, ErrorData> {
        match self.jobs.list() {
            Err(refusal) => Ok(refused(refusal)),
            Ok(jobs) => {
                let text = format!("{} job(s)", jobs.len());
                structured(&JobList { jobs }, text, false)
            }
        }
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for ClaudeServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("agent-mcp-serve", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Claude Code as tools: run tasks synchronously, asynchronously (poll and fetch) or in batches; \
                 jobs survive a restart of this server.",
            )
    }
}

/// Opens the server's store, waiting while a predecessor (whose client went
/// away) finishes its jobs and releases it.
async fn open_store(options: &ServeOptions) -> Result<Store, ServeError> {
    let dir = options.state_dir.join("mcp");
    std::fs::create_dir_all(&dir)
        .map_err(|e| ServeError::Failed(format!("cannot create {}: {e}", dir.display())))?;
    let deadline = tokio::time::Instant::now() + options.job_timeout + Duration::from_secs(30);
    let mut told = false;
    loop {
        match Store::open(&dir) {
            Err(StoreError::InUse(_)) if tokio::time::Instant::now() < deadline => {
                if !told {
                    tracing::info!(store = %dir.display(), "waiting for the previous mcp-serve to finish its jobs");
                    told = true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return Ok(other?),
        }
    }
}

/// Serves MCP on stdin/stdout until the client goes away, then finishes the
/// running jobs and returns.
pub async fn serve_stdio(options: ServeOptions) -> Result<(), ServeError> {
    let store = open_store(&options).await?;
    let jobs = JobTable::open(
        store.clone(),
        Cli::new(options.claude_bin.clone()).for_jobs(
            ConfigDirs {
                base: options.state_dir.join("claude"),
            },
            options.sandbox.clone(),
            options.policy.clone(),
        ),
        Defaults {
            permission_mode: options.permission_mode,
            model: options.model.clone(),
            timeout: options.job_timeout,
            max_turns: options.max_turns,
            max_budget_usd: options.max_budget_usd,
        },
        options.max_concurrent,
    )
    .await
    .map_err(ServeError::Failed)?;
    let jobs = Arc::new(jobs);
    let service = ClaudeServer::new(jobs.clone())
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| ServeError::Failed(format!("MCP initialization failed: {e}")))?;
    tracing::info!("mcp-serve ready");
    let reason = service.waiting().await;
    tracing::info!(?reason, "client gone; finishing running jobs");
    jobs.finish_running().await;
    store.flush().await?;
    Ok(())
}
