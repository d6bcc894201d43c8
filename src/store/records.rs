//! The records kept in the store. These are storage types, separate from the
//! domain values and the actors' messages, so the in-memory types can change
//! without breaking what is on disk. A new field goes at the end with
//! `#[serde(default)]` only if the codec tolerates it; otherwise bump the
//! snapshot schema.
//!
//! Statuses are the domain's enums in memory and their names on disk (see
//! [`as_name`]), so records written by earlier builds read back unchanged and
//! no caller compares status strings.

use serde::{Deserialize, Serialize};

use crate::domain::{ApprovalState, BackendKind, JobStatus, Outcome, PermissionMode, RunPhase};

/// The run this state directory belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub goal: String,
    pub created_at_ms: u64,
    #[serde(with = "as_name")]
    pub state: RunPhase,
    /// Set when the tree escalated: why the last `agent run` gave up.
    pub last_escalation: Option<String>,
}

/// One actor's committed state. `body` is the actor's own snapshot struct,
/// encoded with the codec; `schema` says which version of that struct.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub actor: String,
    pub schema: u32,
    /// The iteration this snapshot was committed with (0 before the first).
    pub iteration: u64,
    pub body: Vec<u8>,
}

/// One committed iteration, the event log's entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IterationRecord {
    pub number: u64,
    pub goal: String,
    pub capability: String,
    #[serde(with = "as_name")]
    pub outcome: Outcome,
    pub fitness_before: Option<f64>,
    pub fitness_after: Option<f64>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
    pub duration_ms: u64,
    /// The agent branch's commit, for an accepted change.
    pub commit: Option<String>,
    /// One line: what happened.
    pub summary: String,
    pub finished_at_ms: u64,
}

/// One archived variant: the change an iteration produced, accepted or
/// refused, with what judged it. Its commit is on a variant ref.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VariantRecord {
    pub iteration: u64,
    pub commit: String,
    pub parent: String,
    #[serde(with = "as_name")]
    pub outcome: Outcome,
    pub refused_by: Option<String>,
    pub rules_checked: Vec<String>,
    pub fitness_before: Option<f64>,
    pub fitness_after: Option<f64>,
    pub validation: String,
    pub generated_tests: Vec<String>,
    pub started_from: Option<u64>,
    pub change_id: String,
}

/// What the learner learned from one iteration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExperienceRecord {
    pub iteration: u64,
    pub capability: String,
    #[serde(with = "as_name")]
    pub outcome: Outcome,
    pub fitness_before: Option<f64>,
    pub fitness_after: Option<f64>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
    pub duration_ms: u64,
    pub error_signature: Option<String>,
    /// Added after the first layout (records without them read back
    /// through [`ExperienceRecordV1`]): the prompt template, the situation,
    /// the size of the change.
    pub prompt: Option<String>,
    pub warnings: Vec<(String, u32)>,
    pub failing_tests: Vec<String>,
    pub error: Option<String>,
    pub files_changed: u32,
    /// Added with Claude Code's stream-json (records without them read
    /// back through [`ExperienceRecordV2`]).
    pub denied_tools: Vec<String>,
    pub repaired: bool,
}

/// An experience as the second layout stored it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExperienceRecordV2 {
    pub iteration: u64,
    pub capability: String,
    #[serde(with = "as_name")]
    pub outcome: Outcome,
    pub fitness_before: Option<f64>,
    pub fitness_after: Option<f64>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
    pub duration_ms: u64,
    pub error_signature: Option<String>,
    /// Added after the first layout (records without them read back
    /// through [`ExperienceRecordV1`]): the prompt template, the situation,
    /// the size of the change.
    pub prompt: Option<String>,
    pub warnings: Vec<(String, u32)>,
    pub failing_tests: Vec<String>,
    pub error: Option<String>,
    pub files_changed: u32,
}

impl From<ExperienceRecordV2> for ExperienceRecord {
    fn from(v2: ExperienceRecordV2) -> Self {
        ExperienceRecord {
            iteration: v2.iteration,
            capability: v2.capability,
            outcome: v2.outcome,
            fitness_before: v2.fitness_before,
            fitness_after: v2.fitness_after,
            input_tokens: v2.input_tokens,
            output_tokens: v2.output_tokens,
            cost_usd: v2.cost_usd,
            duration_ms: v2.duration_ms,
            error_signature: v2.error_signature,
            prompt: v2.prompt,
            warnings: v2.warnings,
            failing_tests: v2.failing_tests,
            error: v2.error,
            files_changed: v2.files_changed,
            denied_tools: Vec::new(),
            repaired: false,
        }
    }
}

/// An experience as the first layout stored it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExperienceRecordV1 {
    pub iteration: u64,
    pub capability: String,
    #[serde(with = "as_name")]
    pub outcome: Outcome,
    pub fitness_before: Option<f64>,
    pub fitness_after: Option<f64>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
    pub duration_ms: u64,
    pub error_signature: Option<String>,
}

impl From<ExperienceRecordV1> for ExperienceRecordV2 {
    fn from(v1: ExperienceRecordV1) -> Self {
        ExperienceRecordV2 {
            iteration: v1.iteration,
            capability: v1.capability,
            outcome: v1.outcome,
            fitness_before: v1.fitness_before,
            fitness_after: v1.fitness_after,
            input_tokens: v1.input_tokens,
            output_tokens: v1.output_tokens,
            cost_usd: v1.cost_usd,
            duration_ms: v1.duration_ms,
            error_signature: v1.error_signature,
            prompt: None,
            warnings: Vec::new(),
            failing_tests: Vec::new(),
            error: None,
            files_changed: 0,
        }
    }
}

/// A cognition job, written before it starts and when it ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: u64,
    pub iteration: u64,
    #[serde(with = "as_name")]
    pub backend: BackendKind,
    pub capability: String,
    #[serde(with = "as_name")]
    pub status: JobStatus,
    /// Process group of the job's process while it runs.
    pub process_group: Option<i32>,
    /// The job's id on the MCP server, for re-attaching after a restart.
    pub remote_id: Option<String>,
    pub started_at_ms: u64,
    pub ended_at_ms: Option<u64>,
    pub error: Option<String>,
    /// What Claude Code said of the job's session (added after the first
    /// layout: records without it read back through [`JobRecordV1`]).
    pub session: JobSession,
}

/// Claude Code's session facts of one job.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobSession {
    pub session_id: Option<String>,
    pub turns: Option<u64>,
    pub permission_denials: u64,
    pub api_error_status: Option<String>,
}

/// A job record as written before [`JobSession`] was kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecordV1 {
    pub id: u64,
    pub iteration: u64,
    #[serde(with = "as_name")]
    pub backend: BackendKind,
    pub capability: String,
    #[serde(with = "as_name")]
    pub status: JobStatus,
    pub process_group: Option<i32>,
    pub remote_id: Option<String>,
    pub started_at_ms: u64,
    pub ended_at_ms: Option<u64>,
    pub error: Option<String>,
}

impl From<JobRecordV1> for JobRecord {
    fn from(old: JobRecordV1) -> JobRecord {
        JobRecord {
            id: old.id,
            iteration: old.iteration,
            backend: old.backend,
            capability: old.capability,
            status: old.status,
            process_group: old.process_group,
            remote_id: old.remote_id,
            started_at_ms: old.started_at_ms,
            ended_at_ms: old.ended_at_ms,
            error: old.error,
            session: JobSession::default(),
        }
    }
}

/// A cached research answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResearchRecord {
    pub topic: String,
    pub notes: String,
    pub fetched_at_ms: u64,
    /// Where the notes came from (added after the first layout: records
    /// without it read back through [`ResearchRecordV1`]).
    pub sources: Vec<String>,
}

/// A cached research answer as the first layout stored it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResearchRecordV1 {
    pub topic: String,
    pub notes: String,
    pub fetched_at_ms: u64,
}

impl From<ResearchRecordV1> for ResearchRecord {
    fn from(v1: ResearchRecordV1) -> Self {
        ResearchRecord {
            topic: v1.topic,
            notes: v1.notes,
            fetched_at_ms: v1.fetched_at_ms,
            sources: Vec::new(),
        }
    }
}

/// A job of `agent mcp-serve`, kept in its own store so a restarted server
/// still answers for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct McpJobRecord {
    pub id: String,
    pub task: String,
    pub cwd: String,
    #[serde(with = "as_name")]
    pub permission_mode: PermissionMode,
    pub model: Option<String>,
    #[serde(with = "as_name")]
    pub status: JobStatus,
    pub started_at_ms: u64,
    pub ended_at_ms: Option<u64>,
    pub error: Option<String>,
    /// The tool result (the `claude_run` output) as JSON, once finished.
    pub output_json: Option<String>,
    pub process_group: Option<i32>,
    /// The caller's idempotency key, if it gave one.
    pub request_id: Option<String>,
}

/// A change held for an operator's decision (supervised mode).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalRecord {
    pub id: String,
    pub iteration: u64,
    pub summary: String,
    pub files: Vec<String>,
    pub fitness_before: Option<f64>,
    pub fitness_after: f64,
    #[serde(with = "as_name")]
    pub state: ApprovalState,
    pub reason: Option<String>,
    pub requested_at_ms: u64,
    pub decided_at_ms: Option<u64>,
}

/// A consistent copy of a store (`agent backup`): every tree's raw pairs,
/// the witness and how many iterations it holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackupRecord {
    pub created_at_ms: u64,
    pub iterations: u64,
    pub witnessed: Option<u64>,
    pub trees: Vec<TreeCopy>,
}

/// One tree of a backup: its name and its raw (key, value) pairs.
pub type TreeCopy = (String, Vec<(Vec<u8>, Vec<u8>)>);

/// A domain value that is stored as its name.
pub trait Named: Copy + std::str::FromStr<Err = crate::domain::UnknownName> {
    fn name(self) -> &'static str;
}

macro_rules! named {
    ($($t:ty),+) => {$(
        impl Named for $t {
            fn name(self) -> &'static str {
                self.as_str()
            }
        }
    )+};
}
named!(
    ApprovalState,
    BackendKind,
    JobStatus,
    Outcome,
    PermissionMode,
    RunPhase
);

/// Serde through the value's name: the one place statuses become text on
/// disk and text becomes statuses again (an unknown name is a decode error).
pub mod as_name {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    use super::Named;

    pub fn serialize<T: Named, S: Serializer>(value: &T, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(value.name())
    }

    pub fn deserialize<'de, T: Named, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<T, D::Error> {
        let name = String::deserialize(deserializer)?;
        name.parse().map_err(D::Error::custom)
    }
}

/// Committed iterations by outcome, updated in each iteration's commit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomesRecord {
    pub kept: u64,
    pub no_change: u64,
    pub rejected: u64,
    pub failed: u64,
}

impl From<OutcomesRecord> for crate::domain::OutcomeCounts {
    fn from(r: OutcomesRecord) -> Self {
        crate::domain::OutcomeCounts {
            kept: r.kept,
            no_change: r.no_change,
            rejected: r.rejected,
            failed: r.failed,
        }
    }
}

impl From<crate::domain::OutcomeCounts> for OutcomesRecord {
    fn from(c: crate::domain::OutcomeCounts) -> Self {
        OutcomesRecord {
            kept: c.kept,
            no_change: c.no_change,
            rejected: c.rejected,
            failed: c.failed,
        }
    }
}

/// A tool discovered on an MCP server (`agent ctl send executor
/// capabilities`), kept across restarts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolRecord {
    pub server: String,
    pub tool: String,
    pub description: String,
    pub registered: bool,
    pub detail: String,
    pub checked_at_ms: u64,
}

impl From<&crate::domain::DiscoveredTool> for ToolRecord {
    fn from(t: &crate::domain::DiscoveredTool) -> Self {
        ToolRecord {
            server: t.server.clone(),
            tool: t.tool.clone(),
            description: t.description.clone(),
            registered: t.registered,
            detail: t.detail.clone(),
            checked_at_ms: t.checked_at_ms,
        }
    }
}

impl From<ToolRecord> for crate::domain::DiscoveredTool {
    fn from(r: ToolRecord) -> Self {
        crate::domain::DiscoveredTool {
            server: r.server,
            tool: r.tool,
            description: r.description,
            registered: r.registered,
            detail: r.detail,
            checked_at_ms: r.checked_at_ms,
        }
    }
}

/// One self-upgrade attempt: a change to the agent's own source that
/// passed the pipeline's checks, built as a candidate and judged as an
/// agent; what became of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpgradeRecord {
    pub iteration: u64,
    /// The commit on the branch when kept; the variant's commit otherwise.
    pub commit: String,
    /// The release it was staged as; empty when none was.
    pub release: String,
    pub build_ms: u64,
    /// The evaluation's figures, when it ran.
    pub evaluation: Option<crate::upgrade::candidate::Evaluation>,
    /// `refused` (did not build, worse, or refused after), `kept`, `upgrade-failed`.
    pub outcome: String,
    pub reason: String,
    pub at_ms: u64,
}
