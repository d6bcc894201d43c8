//! The job table of `agent mcp-serve`: every Claude Code job is written to the
//! server's store before it starts and when it ends, so a restarted server
//! still answers `claude_status` and `claude_result` for finished jobs and
//! reports jobs that were running when it died as failed. Jobs run with a
//! deadline under a global concurrency bound; a kill ends the whole process
//! group (SIGTERM, then SIGKILL for a child that ignores it).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::tools::{RunOutput, RunParams, StatusOutput, UsageOutput};
use crate::claude::{Cli, Invocation, Run};
use crate::domain::{JobStatus, PermissionMode};
use crate::process;
use crate::store::{McpJobRecord, Store, now_ms};

/// Server-wide defaults for jobs.
#[derive(Debug, Clone)]
pub struct Defaults {
    pub permission_mode: PermissionMode,
    pub model: Option<String>,
    pub timeout: Duration,
    pub max_turns: Option<u32>,
    pub max_budget_usd: Option<f64>,
}

/// A request the table refuses, as a message for the tool error.
pub type Refusal = String;

pub struct JobTable {
    store: Store,
    cli: Cli,
    defaults: Defaults,
    slots: Arc<Semaphore>,
    limit: usize,
    /// Handles of running jobs. std Mutex: never held across .await.
    running: Mutex<HashMap<String, Handles>>,
    tracker: TaskTracker,
}

/// What `kill` holds of a running job: `cancel` asks it to end; `ended`
/// fires once its end is recorded (or its task is gone), so a kill waits
/// for that instead of polling the store.
#[derive(Clone, Default)]
struct Handles {
    cancel: CancellationToken,
    ended: CancellationToken,
    /// What the job's events showed so far, for `claude_status`.
    progress: Arc<tokio::sync::watch::Sender<crate::domain::JobProgress>>,
}

impl JobTable {
    /// Opens the table; jobs left running by a server that died are marked
    /// failed and whatever remains of their processes is killed.
    pub async fn open(
        store: Store,
        cli: Cli,
        defaults: Defaults,
        max_concurrent: usize,
    ) -> Result<JobTable, String> {
        let jobs = store.mcp_jobs().map_err(|e| e.to_string())?;
        for mut job in jobs.into_iter().filter(|j| j.status.is_running()) {
            if let Some(group) = job.process_group {
                process::kill_stale_group(group);
            }
            job.status = JobStatus::Failed;
            job.ended_at_ms = Some(now_ms());
            job.error = Some("the MCP server stopped while the job ran".into());
            tracing::warn!(job = %job.id, "marked a job of an earlier server as failed");
            store.put_mcp_job(&job).await.map_err(|e| e.to_string())?;
        }
        Ok(JobTable {
            store,
            cli,
            defaults,
            slots: Arc::new(Semaphore::new(max_concurrent)),
            limit: max_concurrent,
            running: Mutex::new(HashMap::new()),
            tracker: TaskTracker::new(),
        })
    }

    /// The global bound on jobs running at once.
    pub fn max_concurrent(&self) -> usize {
        self.limit
    }

    /// Records and starts a job. `batch` is an extra bound for one batch.
    /// The returned handle yields the job's result when it ends.
    pub async fn start(
        self: &Arc<Self>,
        params: RunParams,
        batch: Option<Arc<Semaphore>>,
    ) -> Result<(String, tokio::task::JoinHandle<RunOutput>), Refusal> {
        let mut invocation = self.invocation(&params)?;
        let id = format!(
            "job-{:06}",
            self.store.next_job_id().map_err(|e| e.to_string())?
        );
        invocation.label = id.clone();
        let record = McpJobRecord {
            id: id.clone(),
            task: params.task.clone(),
            cwd: invocation.cwd.display().to_string(),
            permission_mode: invocation.permission_mode,
            model: invocation.model.clone(),
            status: JobStatus::Running,
            started_at_ms: now_ms(),
            ended_at_ms: None,
            error: None,
            output_json: None,
            process_group: None,
            request_id: params.request_id.clone(),
        };
        self.store
            .put_mcp_job(&record)
            .await
            .map_err(|e| e.to_string())?;
        let handles = Handles::default();
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), handles.clone());
        let table = self.clone();
        let handle = self
            .tracker
            .spawn(async move { table.run(record, invocation, handles, batch).await });
        Ok((id, handle))
    }

    async fn run(
        self: Arc<Self>,
        mut record: McpJobRecord,
        invocation: Invocation,
        handles: Handles,
        batch: Option<Arc<Semaphore>>,
    ) -> RunOutput {
        // Dropped last, after the end is recorded; also when the task
        // panics or is aborted, so a kill never waits for a job that is gone.
        let _ended = handles.ended.drop_guard();
        let cancel = handles.cancel.clone();
        // Waiting for a slot counts as running; a kill while waiting ends it.
        let _batch_slot = match &batch {
            Some(batch) => tokio::select! {
                slot = batch.clone().acquire_owned() => slot.ok(),
                () = cancel.cancelled() => None,
            },
            None => None,
        };
        let _slot = tokio::select! {
            slot = self.slots.clone().acquire_owned() => slot.ok(),
            () = cancel.cancelled() => None,
        };
        let run = if cancel.is_cancelled() {
            Run::killed_before_start()
        } else {
            let store = self.store.clone();
            let mut running = record.clone();
            self.cli
                .run(
                    &invocation,
                    move |group| {
                        // Recorded so a restarted server can kill what is left.
                        running.process_group = Some(group);
                        Box::pin(async move {
                            let _ = store.put_mcp_job(&running).await;
                        })
                    },
                    cancel.cancelled(),
                    &handles.progress,
                )
                .await
        };
        let output = output_of(&record.id, &run);
        record.status = run.status;
        record.ended_at_ms = Some(now_ms());
        record.error = output.error.clone();
        record.output_json = serde_json::to_string(&output).ok();
        if let Err(error) = self.store.put_mcp_job(&record).await {
            tracing::error!(job = %record.id, %error, "cannot record the end of a job");
        }
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&record.id);
        tracing::info!(job = %record.id, status = %record.status, "job finished");
        output
    }

    fn invocation(&self, params: &RunParams) -> Result<Invocation, Refusal> {
        if params.task.trim().is_empty() {
            return Err("`task` must not be empty".into());
        }
        // The client's name is checked here, at the edge, so a job never
        // starts with a mode Claude Code would refuse.
        let permission_mode = match &params.permission_mode {
            None => self.defaults.permission_mode,
            Some(name) => name.parse().map_err(|_| {
                format!(
                    "`permissionMode` \"{name}\" is not one of: {}",
                    PermissionMode::names()
                )
            })?,
        };
        // A client's relative `cwd` is read against the server's directory,
        // here at the edge: the job itself runs elsewhere (in its sandbox).
        let cwd = match &params.cwd {
            Some(cwd) => std::path::absolute(cwd).map_err(|e| format!("`cwd` {cwd}: {e}"))?,
            None => std::env::current_dir().map_err(|e| e.to_string())?,
        };
        if !cwd.is_dir() {
            return Err(format!("`cwd` {} is not a directory", cwd.display()));
        }
        Ok(Invocation {
            task: params.task.clone(),
            cwd,
            permission_mode,
            model: params.model.clone().or_else(|| self.defaults.model.clone()),
            max_turns: params.max_turns.or(self.defaults.max_turns),
            max_budget_usd: self.defaults.max_budget_usd,
            append_system_prompt: params.append_system_prompt.clone(),
            resume: params.resume_session_id.clone(),
            timeout: self.defaults.timeout,
            label: String::new(),
        })
    }

    /// The job started earlier under the caller's key `request_id`.
    pub fn find_request(&self, request_id: &str) -> Result<Option<String>, Refusal> {
        Ok(self
            .store
            .mcp_jobs()
            .map_err(|e| e.to_string())?
            .into_iter()
            .find(|job| job.request_id.as_deref() == Some(request_id))
            .map(|job| job.id))
    }

    fn record(&self, id: &str) -> Result<McpJobRecord, Refusal> {
        self.store
            .mcp_job(id)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("unknown job id \"{id}\""))
    }

    /// A job's status; a running one's with its progress.
    pub fn status(&self, id: &str) -> Result<StatusOutput, Refusal> {
        let mut status = status_of(&self.record(id)?);
        let progress = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .map(|handles| handles.progress.borrow().clone());
        if let Some(progress) = progress.filter(|_| status.status == "running") {
            status.seconds_since_last_event = progress.quiet_seconds(now_ms());
            status.progress = Some(progress.into());
        }
        Ok(status)
    }

    /// The result of a finished job; a refusal for unknown or running jobs.
    pub fn result(&self, id: &str) -> Result<RunOutput, Refusal> {
        let record = self.record(id)?;
        if record.status.is_running() {
            return Err(format!("job \"{id}\" is still running; poll claude_status"));
        }
        match record
            .output_json
            .as_deref()
            .map(serde_json::from_str::<RunOutput>)
        {
            Some(Ok(output)) => Ok(output),
            _ => Ok(RunOutput {
                job_id: record.id.clone(),
                status: record.status.as_str().to_string(),
                result: None,
                is_error: true,
                error: record.error.clone(),
                ..Default::default()
            }),
        }
    }

    /// Kills a running job's process group and waits until it is recorded.
    pub async fn kill(&self, id: &str) -> Result<StatusOutput, Refusal> {
        let record = self.record(id)?;
        let handles = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned();
        let Some(handles) = handles else {
            return Err(format!(
                "job \"{id}\" is not running (status {})",
                record.status
            ));
        };
        handles.cancel.cancel();
        // The job task records the end and then fires `ended`; wait for it
        // (bounded by the grace period between SIGTERM and SIGKILL). After
        // the bound the record is answered as it is, as before.
        let _ = tokio::time::timeout(Duration::from_secs(10), handles.ended.cancelled()).await;
        Ok(status_of(&self.record(id)?))
    }

    pub fn list(&self) -> Result<Vec<StatusOutput>, Refusal> {
        Ok(self
            .store
            .mcp_jobs()
            .map_err(|e| e.to_string())?
            .iter()
            .map(status_of)
            .collect())
    }

    /// Waits for every job that is still running (they end by their deadline).
    pub async fn finish_running(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn status_of(record: &McpJobRecord) -> StatusOutput {
    StatusOutput {
        job_id: record.id.clone(),
        status: record.status.as_str().to_string(),
        started_at: rfc3339(record.started_at_ms),
        ended_at: record.ended_at_ms.map(rfc3339),
        error: record.error.clone(),
        progress: None,
        seconds_since_last_event: None,
    }
}

/// The tool output of a finished run.
pub fn output_of(id: &str, run: &Run) -> RunOutput {
    let result = run.result.clone().unwrap_or_default();
    let facts = run.facts();
    RunOutput {
        job_id: id.to_string(),
        status: run.status.as_str().to_string(),
        result: result
            .result
            .or_else(|| (!run.raw_output.is_empty()).then(|| run.raw_output.clone())),
        is_error: run.status != JobStatus::Completed,
        subtype: result.subtype,
        session_id: result.session_id,
        num_turns: result.num_turns,
        duration_ms: result.duration_ms,
        usage: UsageOutput {
            input_tokens: result.usage.input_tokens,
            output_tokens: result.usage.output_tokens,
            cache_creation_input_tokens: result.usage.cache_creation_input_tokens,
            cache_read_input_tokens: result.usage.cache_read_input_tokens,
        },
        total_cost_usd: result.total_cost_usd.unwrap_or(0.0),
        error: run.error.clone(),
        permission_denials: facts.permission_denials,
        api_error_status: facts.api_error_status,
        denied_tools: facts.denied_tools,
        rate_limited_until_ms: run.rate_limited_until_ms,
    }
}
