//! What crosses the queue between the agent and its workers, as JSON: a job
//! (what to run, on which commit) and its result (how it ended, what it
//! spent, and the change as a patch). The one serde edge of `workers`.

use serde::{Deserialize, Serialize};

use crate::domain::{ClaudeFacts, JobOutcome, JobStatus, Usage};

/// One job, published on the work queue; its key is also its message id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRequest {
    pub key: String,
    /// The commit the job starts from (its git bundle is in the object
    /// store under this name).
    pub base: String,
    /// What the agent's worktree held beyond the base when the job was
    /// made (a repair turn works on the change it repairs), as a patch.
    pub base_changes: String,
    pub prompt: String,
    pub capability: String,
    pub timeout_ms: u64,
    /// Claude Code's `--permission-mode`, as Claude Code names it.
    pub permission_mode: String,
    pub model: Option<String>,
    pub max_turns: Option<u32>,
    pub max_budget_usd: Option<f64>,
    /// Continue this Claude Code session (a repair turn).
    pub resume: Option<String>,
}

/// How a job ended, written once (first writer wins) under its key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    pub key: String,
    /// `completed`, `failed`, `timeout` or `killed`.
    pub status: String,
    pub output: String,
    pub error: Option<String>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
    pub session_id: Option<String>,
    pub turns: Option<u64>,
    pub permission_denials: u64,
    pub api_error_status: Option<String>,
    pub denied_tools: Vec<String>,
    pub rate_limited_until_ms: Option<u64>,
    /// The change against the base commit (`git diff` format, binary
    /// included); empty when the job changed nothing.
    pub patch: String,
    /// The worker that wrote it, and how many times the job was delivered.
    pub worker: String,
    pub deliveries: i64,
}

impl JobResult {
    /// The result of `outcome` under `key`, with its change.
    pub fn of(
        key: &str,
        outcome: &JobOutcome,
        patch: String,
        worker: &str,
        deliveries: i64,
    ) -> Self {
        JobResult {
            key: key.to_string(),
            status: outcome.status.as_str().to_string(),
            output: outcome.output.clone(),
            error: outcome.error.clone(),
            input_tokens: outcome.usage.input_tokens,
            output_tokens: outcome.usage.output_tokens,
            cost_usd: outcome.usage.cost_usd,
            session_id: outcome.claude.session_id.clone(),
            turns: outcome.claude.turns,
            permission_denials: outcome.claude.permission_denials,
            api_error_status: outcome.claude.api_error_status.clone(),
            denied_tools: outcome.claude.denied_tools.clone(),
            rate_limited_until_ms: outcome.claude.rate_limited_until_ms,
            patch,
            worker: worker.to_string(),
            deliveries,
        }
    }

    /// A job that never ran to its end on any worker (delivered too often,
    /// or its change could not be sent), with why.
    pub fn failed(key: &str, error: String, worker: &str, deliveries: i64) -> Self {
        let outcome = JobOutcome {
            job_id: 0,
            status: JobStatus::Failed,
            output: String::new(),
            error: Some(error),
            usage: Usage::default(),
            claude: ClaudeFacts::default(),
        };
        Self::of(key, &outcome, String::new(), worker, deliveries)
    }

    /// The agent's outcome of job `job_id` (the patch is applied apart).
    pub fn outcome(&self, job_id: u64) -> JobOutcome {
        JobOutcome {
            job_id,
            status: match self.status.parse::<JobStatus>() {
                Ok(status @ (JobStatus::Completed | JobStatus::Timeout | JobStatus::Killed)) => {
                    status
                }
                _ => JobStatus::Failed,
            },
            output: self.output.clone(),
            error: self.error.clone(),
            usage: Usage {
                input_tokens: self.input_tokens,
                output_tokens: self.output_tokens,
                cost_usd: self.cost_usd,
            },
            claude: ClaudeFacts {
                session_id: self.session_id.clone(),
                turns: self.turns,
                permission_denials: self.permission_denials,
                api_error_status: self.api_error_status.clone(),
                denied_tools: self.denied_tools.clone(),
                rate_limited_until_ms: self.rate_limited_until_ms,
            },
        }
    }
}

/// What a worker says of itself on `/status` and in the workers' bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub name: String,
    pub slots: usize,
    pub busy: usize,
    pub done: u64,
    pub failed: u64,
    /// Milliseconds since the epoch when this was said.
    pub at_ms: u64,
}
