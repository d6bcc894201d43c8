//! The replies of `agent ctl send <actor> <message>`: one wire type per
//! catalogue entry. The catalogue's handlers build them and the dashboard
//! reads them back, so the socket and the page cannot drift apart the way
//! hand-built JSON did. They travel inside `Reply::Sent` as JSON (the field
//! names here are the wire's, and must not change); fields are in the order
//! they were first written in, which is also the order `--json` prints them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

// -------------------------------------------------------------- governor --

/// `send governor status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GovernorStatusReply {
    pub paused: bool,
    /// Why the governor holds the run paused when a cause paused it (a
    /// persistent failure, a loop); `null` for an operator's plain pause and
    /// while running. Absent in replies of daemons older than the field.
    #[serde(default)]
    pub pause_reason: Option<String>,
    pub tokens_last_day: u64,
    pub tokens_per_day: u64,
    pub cost_usd_total: f64,
    pub permits_granted: u64,
}

/// `send governor pause` and `send governor resume`: the flag as it is now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PausedReply {
    pub paused: bool,
}

/// One budget of `send governor budgets` and `set-budget`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BudgetInfo {
    pub name: String,
    /// `null`: no limit.
    pub limit: Option<f64>,
    pub spent: f64,
    pub left: Option<f64>,
    pub resets_at_ms: Option<u64>,
    pub set_live: bool,
}

/// `send governor budgets`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BudgetsReply {
    pub budgets: Vec<BudgetInfo>,
}

/// `send governor set-budget`: the budget as it now is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetBudgetReply {
    pub budget: BudgetInfo,
}

// --------------------------------------------------------------- learner --

/// One capability of `send learner stats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapabilityStatsInfo {
    pub capability: String,
    pub attempts: u64,
    pub accepted: u64,
    pub mean_reward: f64,
    pub fitness_gain: f64,
    pub tokens: u64,
    pub mean_seconds: f64,
    pub mean_files_changed: f64,
    /// Attempts that took a repair turn, and those kept after it.
    #[serde(default)]
    pub repairs: u64,
    #[serde(default)]
    pub repairs_kept: u64,
    /// Tool uses Claude Code refused, by tool.
    #[serde(default)]
    pub denied_tools: std::collections::BTreeMap<String, u64>,
}

/// `send learner stats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LearnerStatsReply {
    pub experiences: u64,
    pub capabilities: Vec<CapabilityStatsInfo>,
}

/// One learned rule of `send learner rules`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleInfo {
    pub term: String,
    pub capability: String,
    pub weight: f64,
    pub evidence: f64,
    pub holds: bool,
    /// The rule as a sentence.
    pub rule: String,
}

/// `send learner rules`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RulesReply {
    pub rules: Vec<RuleInfo>,
    pub dropped: u64,
}

/// One experience of `send learner experiences`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExperienceInfo {
    pub iteration: u64,
    pub capability: String,
    pub prompt: Option<String>,
    pub outcome: String,
    pub fitness_before: Option<f64>,
    pub fitness_after: Option<f64>,
    pub warnings: BTreeMap<String, u32>,
    pub failing_tests: Vec<String>,
    pub error: Option<String>,
    pub files_changed: u32,
    pub seconds: f64,
    pub tokens: u64,
    pub cost_usd: f64,
    pub error_signature: Option<String>,
}

/// `send learner experiences`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExperiencesReply {
    pub experiences: Vec<ExperienceInfo>,
}

/// One ranked capability of `send learner advise`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankedInfo {
    pub capability: String,
    pub score: f64,
    pub attempts: u64,
    pub mean_reward: f64,
    pub why: String,
}

/// One relevant past experience of `send learner advise`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RelevantInfo {
    pub iteration: u64,
    pub capability: String,
    pub outcome: String,
}

/// `send learner advise`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdviseReply {
    pub ranked: Vec<RankedInfo>,
    /// The rules that hold, as sentences.
    pub rules: Vec<String>,
    pub relevant: Vec<RelevantInfo>,
}

/// `send learner forget`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForgottenReply {
    pub forgotten: String,
}

// ------------------------------------------------------------ researcher --

/// `send researcher status` and `send researcher cache`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResearcherStatusReply {
    pub hits: u64,
    pub misses: u64,
    pub entries: u64,
    pub bytes: u64,
}

/// `send researcher research`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResearchReply {
    pub topic: String,
    pub from_cache: bool,
    pub notes: String,
    pub sources: Vec<String>,
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// `send researcher invalidate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvalidatedReply {
    pub topic: String,
    pub removed: bool,
}

// -------------------------------------------------------------- executor --

/// One capability of `send executor capabilities`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapabilityInfo {
    pub id: String,
    pub description: String,
}

/// One tool an MCP server listed, of `send executor capabilities`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolInfo {
    pub server: String,
    pub tool: String,
    pub registered: bool,
    pub description: String,
    pub detail: String,
    pub checked_at_ms: u64,
}

/// `send executor capabilities`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapabilitiesReply {
    pub capabilities: Vec<CapabilityInfo>,
    pub discovered: Vec<ToolInfo>,
}

/// One job of `send executor jobs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobInfo {
    pub job: u64,
    pub iteration: u64,
    pub backend: String,
    pub capability: String,
    pub status: String,
    pub remote_id: Option<String>,
    pub error: Option<String>,
    pub session_id: Option<String>,
    pub turns: Option<u64>,
    pub permission_denials: u64,
    pub api_error_status: Option<String>,
    /// A running job's turn, last tool and tokens so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<crate::mcp::tools::ProgressOutput>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds_since_last_event: Option<u64>,
}

/// `send executor jobs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobsReply {
    pub jobs: Vec<JobInfo>,
}

/// `send executor kill-job`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KilledReply {
    pub killed: u64,
}

// -------------------------------------------------------------- modifier --

/// `send modifier status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModifierStatusReply {
    pub head: String,
    pub head_fitness: Option<f64>,
    pub accepted: u64,
    pub rolled_back: u64,
    pub changed_files: Vec<String>,
}

/// One archived change of `send modifier variants`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VariantInfo {
    pub iteration: u64,
    pub outcome: String,
    pub commit: String,
    pub parent: String,
    pub refused_by: Option<String>,
    pub fitness_before: Option<f64>,
    pub fitness_after: Option<f64>,
    pub validation: String,
    pub rules_checked: Vec<String>,
    pub generated_tests: Vec<String>,
    pub started_from: Option<u64>,
}

/// `send modifier variants`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VariantsReply {
    pub variants: Vec<VariantInfo>,
}

/// `send modifier rollback`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolledBackReply {
    pub rolled_back: bool,
}

// --------------------------------------------------------------- planner --

/// `send planner status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannerStatusReply {
    pub goal: String,
    pub run_state: String,
    pub iteration: u64,
    pub in_flight: Option<u64>,
    pub fitness: Option<f64>,
}

/// `send planner tick`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TickedReply {
    pub ticked: bool,
}

/// `send planner goal`: the goal from the next iteration on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GoalReply {
    pub goal: String,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The replies read as the JSON the handlers built by hand before they
    /// were typed: same names, same values (and `pause_reason` added).
    #[test]
    fn replies_keep_their_hand_built_shapes() {
        let governor = GovernorStatusReply {
            paused: true,
            pause_reason: None,
            tokens_last_day: 165,
            tokens_per_day: 1000,
            cost_usd_total: 0.5,
            permits_granted: 3,
        };
        assert_eq!(
            serde_json::to_value(&governor).unwrap(),
            json!({"paused": true, "pause_reason": null, "tokens_last_day": 165,
                   "tokens_per_day": 1000, "cost_usd_total": 0.5, "permits_granted": 3})
        );
        // A reply of a daemon from before the field still reads.
        let old = json!({"paused": false, "tokens_last_day": 0, "tokens_per_day": 1,
                         "cost_usd_total": 0.0, "permits_granted": 0});
        let read: GovernorStatusReply = serde_json::from_value(old).unwrap();
        assert_eq!(read.pause_reason, None);
        let variant = VariantInfo {
            iteration: 2,
            outcome: "rejected".into(),
            commit: "abc".into(),
            parent: "def".into(),
            refused_by: Some("fitness".into()),
            fitness_before: Some(1.0),
            fitness_after: None,
            validation: "passed".into(),
            rules_checked: vec!["no-secrets".into()],
            generated_tests: vec![],
            started_from: None,
        };
        assert_eq!(
            serde_json::to_value(&variant).unwrap(),
            json!({"iteration": 2, "outcome": "rejected", "commit": "abc", "parent": "def",
                   "refused_by": "fitness", "fitness_before": 1.0, "fitness_after": null,
                   "validation": "passed", "rules_checked": ["no-secrets"],
                   "generated_tests": [], "started_from": null})
        );
    }
}
