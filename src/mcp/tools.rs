//! The MCP tools' parameters and results: serde wire types with JSON Schemas
//! generated from them (the input and output schemas the server advertises).
//! The client backend parses results into the same types.

use rmcp::schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `claude_run` and `claude_run_async`: one Claude Code task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunParams {
    /// The prompt, passed to `claude -p`.
    pub task: String,
    /// Working directory of the run (default: the server's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// `--permission-mode`: default, acceptEdits, plan, bypassPermissions or dontAsk
    /// (default: the server's configured mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permission_mode: Option<String>,
    /// `--model`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// `--max-turns`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_turns: Option<u32>,
    /// `--append-system-prompt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub append_system_prompt: Option<String>,
    /// Continue this session of an earlier job (`--resume`), in the config
    /// directory it was written in: a repair turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_session_id: Option<String>,
    /// The caller's key for this job (`claude_run_async`): a second start
    /// with the same key returns the job already started instead of paying
    /// for it again, so a caller that died before it saw the job id can
    /// find it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// `claude_status`, `claude_result`, `claude_kill_job`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobIdParams {
    pub job_id: String,
}

/// `claude_run_batch`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BatchParams {
    pub tasks: Vec<RunParams>,
    /// How many of these tasks run at once (default and ceiling: the server's limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
}

/// Token counts as Claude Code reported them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(rename_all = "camelCase")]
pub struct UsageOutput {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub cache_read_input_tokens: u64,
}

/// The result of one finished job (`claude_run`, `claude_result`, each item
/// of `claude_run_batch`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(rename_all = "camelCase")]
pub struct RunOutput {
    pub job_id: String,
    /// completed | failed | timeout | killed
    pub status: String,
    /// Claude's result text.
    pub result: Option<String>,
    /// True when the job failed, whatever the CLI's subtype said.
    pub is_error: bool,
    pub subtype: Option<String>,
    pub session_id: Option<String>,
    pub num_turns: Option<u64>,
    pub duration_ms: Option<u64>,
    pub usage: UsageOutput,
    pub total_cost_usd: f64,
    /// Why the job failed.
    pub error: Option<String>,
    /// Tool uses Claude Code was refused.
    #[serde(default)]
    pub permission_denials: u64,
    /// The HTTP status of a failed API call.
    #[serde(default)]
    pub api_error_status: Option<String>,
    /// The tools of the refused uses, each once.
    #[serde(default)]
    pub denied_tools: Vec<String>,
    /// A rejected rate limit: when it resets (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limited_until_ms: Option<u64>,
}

/// `claude_run_async`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(rename_all = "camelCase")]
pub struct StartedOutput {
    pub job_id: String,
}

/// `claude_status`, `claude_kill_job`, and each entry of `claude_list_jobs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(rename_all = "camelCase")]
pub struct StatusOutput {
    pub job_id: String,
    /// running | completed | failed | timeout | killed
    pub status: String,
    /// RFC 3339.
    pub started_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How far a running job has come, from its stream-json events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<ProgressOutput>,
    /// Whole seconds since the running job's last event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds_since_last_event: Option<u64>,
}

/// How far a running job has come (`domain::JobProgress` on the wire):
/// what `claude_status`, `agent ctl send executor jobs` and the dashboard
/// show.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(rename_all = "camelCase")]
pub struct ProgressOutput {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// Assistant turns so far.
    pub turns: u64,
    /// The tool the model used last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_tool: Option<String>,
    /// Tokens so far, summed over the turns.
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Events read, and the kind of the last one (`assistant`,
    /// `system/api_retry`, `tool_progress`, …).
    pub events: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_event: Option<String>,
    /// When the last event came (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_event_at_ms: Option<u64>,
    /// What the job is waiting on, when it said so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
    /// The session's MCP servers with their status (`name: status`).
    #[serde(default)]
    pub mcp_servers: Vec<String>,
}

impl From<crate::domain::JobProgress> for ProgressOutput {
    fn from(p: crate::domain::JobProgress) -> Self {
        ProgressOutput {
            session_id: p.session_id,
            turns: p.turns,
            last_tool: p.last_tool,
            input_tokens: p.input_tokens,
            output_tokens: p.output_tokens,
            events: p.events,
            last_event: p.last_event,
            last_event_at_ms: p.last_event_at_ms,
            waiting: p.waiting,
            mcp_servers: p.mcp_servers,
        }
    }
}

impl From<ProgressOutput> for crate::domain::JobProgress {
    fn from(p: ProgressOutput) -> Self {
        crate::domain::JobProgress {
            session_id: p.session_id,
            turns: p.turns,
            last_tool: p.last_tool,
            input_tokens: p.input_tokens,
            output_tokens: p.output_tokens,
            events: p.events,
            last_event: p.last_event,
            last_event_at_ms: p.last_event_at_ms,
            waiting: p.waiting,
            mcp_servers: p.mcp_servers,
        }
    }
}

/// `claude_run_batch`: every result, in the order of the tasks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(rename_all = "camelCase")]
pub struct BatchOutput {
    pub results: Vec<RunOutput>,
}

/// `claude_list_jobs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(rename_all = "camelCase")]
pub struct JobList {
    pub jobs: Vec<StatusOutput>,
}
