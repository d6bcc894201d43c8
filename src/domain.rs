//! The project's vocabulary: plain values that every layer speaks — the
//! actors and their faults, capabilities and plans, jobs and their statuses,
//! verdicts, outcomes and experiences, permits, approvals and run states,
//! and the absolute paths the configuration hands to everything below it.
//!
//! This module is a leaf: it imports nothing else from the crate, so
//! `config`, `store`, `mcp`, `cognition`, `messages` and the actors can all
//! stand on it without standing on each other. None of these types derive
//! serde: the control socket and the store keep their own versioned records
//! and convert at their edge. Every status that is stored or shown as text
//! has one `as_str` and one `FromStr`, so nothing compares status strings.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// Declares a closed set of named values: the enum, its `ALL`, `as_str`,
/// `Display` and a `FromStr` whose error names what was expected.
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident ($what:literal) {
            $( $(#[$vmeta:meta])* $variant:ident => $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            pub const ALL: [$name; [$(stringify!($variant)),+].len()] = [$($name::$variant),+];

            /// The name it is stored, configured and shown under.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownName;
            fn from_str(text: &str) -> Result<Self, UnknownName> {
                $name::ALL
                    .into_iter()
                    .find(|value| value.as_str() == text)
                    .ok_or_else(|| UnknownName {
                        what: $what,
                        given: text.to_string(),
                        expected: $name::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", "),
                    })
            }
        }
    };
}

/// A name that is not one of a closed set's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} \"{given}\"; expected one of: {expected}")]
pub struct UnknownName {
    pub what: &'static str,
    pub given: String,
    pub expected: String,
}

// ----------------------------------------------------------------- actors --

named_enum! {
    /// The six actors of the tree, in their declared start order.
    pub enum ActorKind ("actor") {
        Governor => "governor",
        Learner => "learner",
        Researcher => "researcher",
        Executor => "executor",
        Modifier => "modifier",
        Planner => "planner",
    }
}

impl ActorKind {
    /// The registered name of the actor, also its name in config and ctl.
    pub fn name(self) -> &'static str {
        self.as_str()
    }
}

named_enum! {
    /// A failure injected on purpose (`agent ctl fault`).
    pub enum FaultKind ("fault") {
        /// The actor panics inside its handler.
        Panic => "panic",
        /// The actor's handler returns an error.
        Error => "error",
        /// The actor's handler never returns: its mailbox stops being served.
        Hang => "hang",
    }
}

impl FaultKind {
    pub fn name(self) -> &'static str {
        self.as_str()
    }
}

// ------------------------------------------------------------- cognition --

named_enum! {
    /// Which cognition backend runs the jobs: its name in config, logs, job
    /// records and telemetry.
    pub enum BackendKind ("backend") {
        /// Local cargo commands, no model.
        Offline => "offline",
        /// `claude -p` run directly.
        ClaudeCli => "claude-cli",
        /// Claude Code reached over MCP.
        Mcp => "mcp",
        /// Claude Code run by `agent worker` processes through NATS.
        Nats => "nats",
    }
}

named_enum! {
    /// What Claude Code's `--permission-mode` accepts: the configured default
    /// and what an MCP client may ask for, refused before a job starts
    /// rather than by Claude Code after it.
    pub enum PermissionMode ("permission mode") {
        Default => "default",
        AcceptEdits => "acceptEdits",
        Plan => "plan",
        BypassPermissions => "bypassPermissions",
        DontAsk => "dontAsk",
    }
}

impl PermissionMode {
    /// The accepted names, for messages that list them.
    pub fn names() -> String {
        PermissionMode::ALL.map(PermissionMode::as_str).join(", ")
    }
}

/// Tokens and money one job spent, as the backend reported them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
}

impl Usage {
    pub fn tokens(&self) -> u64 {
        self.input_tokens + self.output_tokens
    }
}

/// A capability the backend offers the planner.
#[derive(Debug, Clone, PartialEq)]
pub struct Capability {
    pub id: String,
    pub description: String,
}

/// An MCP server whose tools are discovered at start (`[[mcp_servers]]`).
#[derive(Debug, Clone, PartialEq)]
pub struct ToolServer {
    pub name: String,
    /// Program and arguments; it speaks MCP on stdio.
    pub command: Vec<String>,
    /// Per tool, the arguments (a JSON object, as text) of the call that
    /// validates it. A listed tool without one is not registered.
    pub probes: std::collections::BTreeMap<String, String>,
    /// Deadline of starting the server and of each call.
    pub timeout: Duration,
}

/// A tool an MCP server listed, and whether it was registered.
#[derive(Debug, Clone, PartialEq)]
pub struct DiscoveredTool {
    pub server: String,
    pub tool: String,
    pub description: String,
    /// Registered: its validation call succeeded.
    pub registered: bool,
    /// What the validation call answered, or why there was none.
    pub detail: String,
    pub checked_at_ms: u64,
}

named_enum! {
    /// How a plan runs on the MCP backend.
    pub enum Execution ("execution") {
        /// `claude_run`: one call that blocks until the job ends.
        Sync => "sync",
        /// `claude_run_async`, then `claude_status` polls and `claude_result`;
        /// the job id is stored first, so a restarted agent re-attaches.
        Async => "async",
    }
}

/// What the planner decided to do in one iteration.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub iteration: u64,
    pub capability: String,
    /// The prompt for a model backend; `None` for local capabilities.
    pub prompt: Option<String>,
    /// The template the prompt was made from.
    pub prompt_name: Option<String>,
    /// The prompt's estimated size in tokens (0 without a prompt).
    pub prompt_tokens: usize,
    /// Why this capability was chosen (learner's scores).
    pub rationale: String,
    /// How a model backend runs it.
    pub execution: Execution,
    /// Continue this Claude Code session instead of starting a new one:
    /// the repair turn of a change validation refused.
    pub resume: Option<String>,
    /// Which candidate of the iteration this is (0 when there is one).
    pub slot: u32,
    /// The candidate's own worktree; `None`: the agent's worktree.
    pub lane: Option<std::path::PathBuf>,
}

/// One candidate change of one iteration, from its job to its verdict:
/// what the tables of changes in flight are keyed by.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Attempt {
    pub iteration: u64,
    pub slot: u32,
}

impl Attempt {
    pub fn of(plan: &Plan) -> Attempt {
        Attempt {
            iteration: plan.iteration,
            slot: plan.slot,
        }
    }
}

named_enum! {
    /// Where a cognition job is: running, or how it ended.
    pub enum JobStatus ("job status") {
        Running => "running",
        Completed => "completed",
        Failed => "failed",
        Timeout => "timeout",
        Killed => "killed",
    }
}

impl JobStatus {
    pub fn is_running(self) -> bool {
        self == JobStatus::Running
    }
}

/// The result of executing a plan.
#[derive(Debug, Clone, PartialEq)]
pub struct JobOutcome {
    pub job_id: u64,
    /// How the job ended (never `Running`).
    pub status: JobStatus,
    /// The backend's result text (or the raw output when it was not understood).
    pub output: String,
    pub error: Option<String>,
    pub usage: Usage,
    /// What Claude Code said of its session (empty for other backends).
    pub claude: ClaudeFacts,
}

/// What a Claude Code job's result says of its session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaudeFacts {
    pub session_id: Option<String>,
    pub turns: Option<u64>,
    /// Tool uses Claude Code was refused.
    pub permission_denials: u64,
    /// The HTTP status of a failed API call.
    pub api_error_status: Option<String>,
    /// The tools of the refused uses, each once, in the order first refused.
    pub denied_tools: Vec<String>,
    /// A rejected rate limit: when it resets (ms since the epoch). The job
    /// did not fail on its own account; the run waits until then.
    pub rate_limited_until_ms: Option<u64>,
}

impl ClaudeFacts {
    /// The API said it is overloaded (HTTP 529): waited out like a rate
    /// limit, not counted as the capability's failure.
    pub fn overloaded(&self) -> bool {
        self.api_error_status.as_deref() == Some("529")
    }
}

/// How far a running Claude Code job has come, from its stream-json events:
/// what `ctl send executor jobs`, `ctl watch`, the dashboard and the MCP
/// tool `claude_status` show of a job that has not ended.
/// On the wire it is `mcp::tools::ProgressOutput`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobProgress {
    pub session_id: Option<String>,
    /// Assistant turns so far.
    pub turns: u64,
    /// The tool the model used last.
    pub last_tool: Option<String>,
    /// Tokens so far, summed over the turns.
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Events read, and the kind of the last one (`assistant`,
    /// `system/api_retry`, `tool_progress`, …).
    pub events: u64,
    pub last_event: Option<String>,
    /// When the last event came (ms since the epoch).
    pub last_event_at_ms: Option<u64>,
    /// What the job is waiting on, when it said so: an API retry, a
    /// compaction.
    pub waiting: Option<String>,
    /// The MCP servers of the session with their status (`name: status`).
    pub mcp_servers: Vec<String>,
}

impl JobProgress {
    /// Whole seconds since the last event, at `now_ms`.
    pub fn quiet_seconds(&self, now_ms: u64) -> Option<u64> {
        self.last_event_at_ms
            .map(|at| now_ms.saturating_sub(at) / 1000)
    }
}

// ------------------------------------------------------------ the change --

/// The modifier's measurement of the workspace before an iteration.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    pub base_commit: String,
    pub fitness: Option<f64>,
    /// What the measure showed (warning codes, the error that stops it).
    pub signals: Signals,
    /// The earlier variant whose change the worktree starts from.
    pub started_from: Option<u64>,
}

/// What the modifier did with the change an iteration made.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Validation passed and fitness did not get worse: one commit.
    Accepted {
        commit: String,
        fitness_after: f64,
        /// What the fitness measure showed after the change.
        signals_after: Signals,
        files_changed: usize,
        variant: Option<Variant>,
    },
    /// Rolled back to the base commit.
    Rejected {
        reason: String,
        /// The first failing lines of what refused it (a build's errors, a
        /// rule's finding), for a repair turn.
        details: String,
        fitness_after: Option<f64>,
        variant: Option<Variant>,
    },
    /// The job changed nothing.
    NoChange,
}

/// A candidate of an iteration other than the one committed: what the
/// learner took from it and the change it left, archived beside the chosen
/// one (`sibling_of` its iteration).
#[derive(Debug, Clone, PartialEq)]
pub struct Sibling {
    pub slot: u32,
    pub experience: Experience,
    pub variant: Option<Variant>,
}

/// One change an iteration produced, kept whether accepted or refused (the
/// variant archive): its commit stays reachable on a variant ref.
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    pub iteration: u64,
    pub commit: String,
    /// The base commit it was made on.
    pub parent: String,
    pub outcome: Outcome,
    /// What refused it.
    pub refused_by: Option<RefusedBy>,
    /// The rules the change was checked against, in order.
    pub rules_checked: Vec<String>,
    pub fitness_before: Option<f64>,
    pub fitness_after: Option<f64>,
    pub validation: Validation,
    /// Regression tests the modifier generated into the change.
    pub generated_tests: Vec<String>,
    /// The earlier variant this change was built on, when it was.
    pub started_from: Option<u64>,
    /// The change's identity whatever its base (git's patch id): the same
    /// change proposed again has the same one.
    pub change_id: String,
}

impl Verdict {
    /// The variant the change was archived as, when there was a change.
    pub fn variant(&self) -> Option<&Variant> {
        match self {
            Verdict::Accepted { variant, .. } | Verdict::Rejected { variant, .. } => {
                variant.as_ref()
            }
            Verdict::NoChange => None,
        }
    }

    /// The iteration outcome this verdict gives.
    pub fn outcome(&self) -> Outcome {
        match self {
            Verdict::Accepted { .. } => Outcome::Accepted,
            Verdict::Rejected { .. } => Outcome::Rejected,
            Verdict::NoChange => Outcome::NoChange,
        }
    }
}

named_enum! {
    /// A step of the modifier's pipeline that refuses a change on its own
    /// judgement (the safety rules refuse by their names instead).
    pub enum Judge ("refusing step") {
        Validation => "validation",
        Fitness => "fitness",
        Approval => "approval",
    }
}

/// What refused a change, stored and shown as one name: the safety rule's
/// own (`no-new-unsafe`), or the step's (`validation`, `fitness`,
/// `approval`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RefusedBy {
    /// A safety rule, by its name. Any name a record holds is kept, so a
    /// rule renamed or gone since still reads back as itself.
    Rule(String),
    Step(Judge),
}

impl RefusedBy {
    /// The name it is stored and shown under.
    pub fn as_str(&self) -> &str {
        match self {
            RefusedBy::Rule(rule) => rule,
            RefusedBy::Step(step) => step.as_str(),
        }
    }

    /// Reads a stored name back. Total: a name that is not a step's is a
    /// rule's, since the rules' names are not a closed set over time.
    pub fn from_name(name: &str) -> RefusedBy {
        match name.parse() {
            Ok(step) => RefusedBy::Step(step),
            Err(_) => RefusedBy::Rule(name.to_string()),
        }
    }
}

impl From<Judge> for RefusedBy {
    fn from(step: Judge) -> RefusedBy {
        RefusedBy::Step(step)
    }
}

impl fmt::Display for RefusedBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The validation command's result for a change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Validation {
    /// A step before it refused the change (or it made none).
    #[default]
    NotRun,
    Passed,
    /// Failed, with its first error line.
    Failed(String),
}

impl Validation {
    const PASSED: &str = "passed";
    const NOT_RUN: &str = "not run";
    const FAILED: &str = "failed: ";

    /// Reads the stored text back (`passed`, `failed: <line>`, `not run`).
    /// Total, so a record always reads: any other text was never written,
    /// and counts as not run.
    pub fn from_text(text: &str) -> Validation {
        match text {
            Validation::PASSED => Validation::Passed,
            _ => match text.strip_prefix(Validation::FAILED) {
                Some(line) => Validation::Failed(line.to_string()),
                None => Validation::NotRun,
            },
        }
    }
}

impl fmt::Display for Validation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Validation::NotRun => f.write_str(Validation::NOT_RUN),
            Validation::Passed => f.write_str(Validation::PASSED),
            Validation::Failed(line) => write!(f, "{}{line}", Validation::FAILED),
        }
    }
}

named_enum! {
    /// The outcome of an iteration.
    pub enum Outcome ("outcome") {
        Accepted => "accepted",
        Rejected => "rejected",
        NoChange => "no-change",
        JobFailed => "job-failed",
        /// A variant whose release failed on probation (its commit is
        /// reverted on the branch).
        UpgradeFailed => "upgrade-failed",
    }
}

/// What the workspace shows before an iteration: the situation a
/// capability is chosen for, and what past experiences are matched by.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Signals {
    /// Warning codes and how many of each (`unused_imports`,
    /// `clippy::needless_return`); a code whose warnings are all in test
    /// code ends in `@tests`.
    pub warnings: BTreeMap<String, u32>,
    /// Where each code's first warning is (`src/lib.rs:12`), for prompts;
    /// not part of the situation's identity, and not stored.
    pub places: BTreeMap<String, String>,
    /// Tests that fail at the base, by name.
    pub failing_tests: Vec<String>,
    /// What stops the build or the measure: its first line.
    pub error: Option<String>,
}

impl Signals {
    /// The situation as terms, the learner's features: each warning code
    /// (`warn:<code>`), its family (`family:rustc-lib`, `family:clippy-tests`,
    /// …), `build-fails` with the error code when there is one, each failing
    /// test (`test:<name>`) and `tests-fail`.
    pub fn terms(&self) -> Vec<String> {
        let mut terms = Vec::new();
        let mut families = std::collections::BTreeSet::new();
        for code in self.warnings.keys() {
            terms.push(format!("warn:{code}"));
            let (lint, place) = match code.strip_suffix("@tests") {
                Some(lint) => (lint, "tests"),
                None => (code.as_str(), "lib"),
            };
            let tool = if lint.starts_with("clippy::") {
                "clippy"
            } else {
                "rustc"
            };
            families.insert(format!("family:{tool}-{place}"));
        }
        terms.extend(families);
        if let Some(error) = &self.error {
            terms.push("build-fails".into());
            if let Some(code) = error_code(error) {
                terms.push(format!("error:{code}"));
            }
        }
        if !self.failing_tests.is_empty() {
            terms.push("tests-fail".into());
            terms.extend(self.failing_tests.iter().map(|t| format!("test:{t}")));
        }
        terms
    }

    /// How many warnings in all.
    pub fn warning_count(&self) -> u32 {
        self.warnings.values().sum()
    }
}

/// A rustc error code (`E0554`) in a message, if it names one.
pub fn error_code(text: &str) -> Option<&str> {
    text.match_indices('E').find_map(|(at, _)| {
        let code = text.get(at..at + 5)?;
        let digits = code[1..].bytes().all(|b| b.is_ascii_digit());
        let bounded = text[at + 5..]
            .chars()
            .next()
            .is_none_or(|c| !c.is_ascii_alphanumeric());
        let starts = text[..at]
            .chars()
            .next_back()
            .is_none_or(|c| !c.is_ascii_alphanumeric());
        (digits && bounded && starts).then_some(code)
    })
}

/// One finished iteration as the learner keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct Experience {
    pub iteration: u64,
    pub capability: String,
    /// The prompt template a model capability was asked with.
    pub prompt: Option<String>,
    /// What the workspace showed before the iteration.
    pub signals: Signals,
    pub outcome: Outcome,
    pub fitness_before: Option<f64>,
    pub fitness_after: Option<f64>,
    /// Files the change touched (0 when nothing was kept or changed).
    pub files_changed: u32,
    pub usage: Usage,
    pub duration: Duration,
    /// A short, stable description of the failure, if any.
    pub error_signature: Option<String>,
    /// The tools Claude Code was refused on the way: a capability that
    /// needs a tool is told apart from one that fails.
    pub denied_tools: Vec<String>,
    /// A refused change was sent back to its session once more, and this
    /// is how the repaired one fared.
    pub repaired: bool,
}

/// One committed iteration: the event log's entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Iteration {
    pub number: u64,
    pub goal: String,
    pub capability: String,
    pub outcome: Outcome,
    pub fitness_before: Option<f64>,
    pub fitness_after: Option<f64>,
    pub usage: Usage,
    pub duration: Duration,
    /// The agent branch's commit, for an accepted change.
    pub commit: Option<String>,
    /// One line: what happened.
    pub summary: String,
    pub finished_at_ms: u64,
    /// The change it produced, archived (none when nothing changed); boxed,
    /// as iterations travel in messages and events.
    pub variant: Option<Box<Variant>>,
}

impl Iteration {
    /// The fitness of the agent branch's head after this iteration.
    pub fn head_fitness(&self) -> Option<f64> {
        if self.outcome == Outcome::Accepted {
            self.fitness_after
        } else {
            self.fitness_before
        }
    }
}

// --------------------------------------------------------------- learning --

/// A capability ranked by the learner.
#[derive(Debug, Clone, PartialEq)]
pub struct RankedCapability {
    pub id: String,
    pub score: f64,
    pub attempts: u64,
    pub mean_reward: f64,
    /// Why it ranks where it does, in a few words (the rule that backs it,
    /// or how the bandit scored it).
    pub why: String,
    /// It gained nothing in this very situation before, and being a local
    /// command (no prompt) it would do the same again.
    pub fruitless: bool,
}

/// How the reason of a pause starts when every capability has been tried in
/// the workspace's situation and none gained anything: nothing is left.
pub const NOTHING_LEFT: &str = "nothing left to try";

/// A learned rule: under `term`, `capability` works, with a weight in
/// [0, 1] that evidence raises and lowers.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub term: String,
    pub capability: String,
    pub weight: f64,
    /// Observations behind the weight (decayed).
    pub evidence: f64,
    /// Whether it holds now (enough evidence, weight high enough).
    pub holds: bool,
}

impl Rule {
    /// The rule as a sentence.
    pub fn sentence(&self) -> String {
        format!(
            "when {} is present, {} works (weight {:.2} over {:.1} observation(s))",
            self.term, self.capability, self.weight, self.evidence
        )
    }
}

/// The learner's advice for the next plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Advice {
    /// Best first.
    pub ranked: Vec<RankedCapability>,
    /// Past experiences most relevant to the situation, best first.
    pub relevant: Vec<Experience>,
    /// The rules that hold in the situation, strongest first.
    pub rules: Vec<Rule>,
}

/// What the learner knows of one capability, for status.
#[derive(Debug, Clone, PartialEq)]
pub struct CapabilitySummary {
    pub capability: String,
    pub attempts: u64,
    pub accepted: u64,
    pub mean_reward: f64,
    pub fitness_gain: f64,
    pub tokens: u64,
    /// What it costs: seconds per attempt, files per kept change.
    pub mean_seconds: f64,
    pub mean_files_changed: f64,
    /// Attempts that took a repair turn, and those kept after it.
    pub repairs: u64,
    pub repairs_kept: u64,
    /// Tool uses refused, by tool.
    pub denied_tools: BTreeMap<String, u64>,
}

/// Every rule the learner keeps, and how many it dropped.
#[derive(Debug, Clone, PartialEq)]
pub struct LearnedRules {
    pub rules: Vec<Rule>,
    pub dropped: u64,
}

/// The learner's statistics and the ranking they give.
#[derive(Debug, Clone, PartialEq)]
pub struct LearnerStats {
    pub experiences: u64,
    pub capabilities: Vec<CapabilitySummary>,
}

/// Notes the researcher found on a topic.
#[derive(Debug, Clone, PartialEq)]
pub struct Research {
    pub topic: String,
    pub notes: String,
    /// Where the notes came from: files, `rustc --explain E…`, the model.
    pub sources: Vec<String>,
    pub from_cache: bool,
    pub usage: Usage,
}

/// The researcher's counters, for status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResearcherStatus {
    pub hits: u64,
    pub misses: u64,
    /// Answers in the cache, and their size in bytes.
    pub entries: u64,
    pub bytes: u64,
}

// ------------------------------------------------------------------ paths --

/// A path that is absolute: made so once, where the configuration is
/// checked, against the directory the agent was started in. Everything
/// below the configuration holds these, never a relative path, because the
/// commands they reach run elsewhere — bubblewrap's `--chdir` into the
/// worktree, validation in the worktree, `agent mcp-serve` in its own
/// process — where a relative path names another file or none.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AbsolutePath(PathBuf);

impl AbsolutePath {
    /// `path` made absolute against the current directory (lexically:
    /// symbolic links are kept, so the path need not exist yet).
    pub fn resolve(path: &Path) -> std::io::Result<AbsolutePath> {
        if path.as_os_str().is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the path is empty",
            ));
        }
        let absolute = std::path::absolute(path)?;
        // `absolute` keeps `..`; the sandbox compares prefixes, so fold them.
        let mut folded = PathBuf::new();
        for component in absolute.components() {
            match component {
                std::path::Component::ParentDir => {
                    folded.pop();
                }
                std::path::Component::CurDir => {}
                other => folded.push(other),
            }
        }
        Ok(AbsolutePath(folded))
    }

    /// `path` if it is absolute already.
    pub fn given(path: PathBuf) -> Option<AbsolutePath> {
        path.is_absolute().then_some(AbsolutePath(path))
    }

    pub fn as_path(&self) -> &Path {
        &self.0
    }

    /// The path below this one (`join` of an absolute path stays absolute).
    pub fn child(&self, name: impl AsRef<Path>) -> AbsolutePath {
        let name = name.as_ref();
        debug_assert!(
            name.is_relative(),
            "child of {self:?}: {name:?} is absolute"
        );
        AbsolutePath(self.0.join(name))
    }
}

impl std::ops::Deref for AbsolutePath {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for AbsolutePath {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl From<AbsolutePath> for PathBuf {
    fn from(path: AbsolutePath) -> PathBuf {
        path.0
    }
}

/// A program to run: a bare name is looked up on `PATH` when it runs (which
/// does not depend on the working directory); anything with a `/` in it is
/// a path, made absolute like every other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program(PathBuf);

impl Program {
    pub fn resolve(program: &Path) -> std::io::Result<Program> {
        if program.components().count() == 1 && !program.is_absolute() {
            let name = program.as_os_str();
            if name.is_empty() || name == "." || name == ".." {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "expected a program name or a path to one",
                ));
            }
            return Ok(Program(program.to_path_buf()));
        }
        AbsolutePath::resolve(program).map(|path| Program(path.into()))
    }

    pub fn as_path(&self) -> &Path {
        &self.0
    }
}

impl std::ops::Deref for Program {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for Program {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl From<Program> for PathBuf {
    fn from(program: Program) -> PathBuf {
        program.0
    }
}

// ------------------------------------------------------------- governance --

/// The governor's answer to a permit request.
#[derive(Debug, Clone, PartialEq)]
pub enum Permit {
    Granted,
    /// The run is paused (by an operator, or by the planner after failures
    /// that did not go away): ask again after `retry_after`.
    Paused {
        retry_after: Duration,
        /// Why, when the pause was not an operator's plain `pause`.
        reason: Option<String>,
    },
    /// Not now (budget): ask again after `retry_after`.
    Wait {
        reason: String,
        retry_after: Duration,
    },
    /// Never for this run (limit reached).
    Finished {
        reason: String,
    },
}

/// The governor's view, for status.
#[derive(Debug, Clone, PartialEq)]
pub struct GovernorStatus {
    pub paused: bool,
    pub pause_reason: Option<String>,
    pub tokens_last_day: u64,
    pub tokens_per_day: u64,
    pub cost_usd_total: f64,
    pub permits_granted: u64,
}

/// What loop detection looks at (`[run] loop_*`; 0 turns a check off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoopRules {
    /// The same plan this many times in a row, none of them kept.
    pub same_plan: u32,
    /// The same refused change (by its patch id) this many times.
    pub same_refused_change: u32,
    /// This many committed iterations with no progress (no change kept,
    /// no fitness gained).
    pub no_progress: u32,
}

/// The budgets a permit is checked against (`[governor]`, or set live).
#[derive(Debug, Clone, PartialEq)]
pub struct Budgets {
    /// Tokens over a rolling 24 hours.
    pub tokens_per_day: u64,
    /// Dollars over a rolling 24 hours.
    pub usd_per_day: Option<f64>,
    /// Iterations started over a rolling hour.
    pub iterations_per_hour: Option<u64>,
    /// Wall-clock time from the run's start.
    pub deadline: Option<Duration>,
    /// The rolling "day" of the per-day budgets (24h; shorter for trials).
    pub day_window: Duration,
    /// The rolling "hour" of the per-hour budget (1h; shorter for trials).
    pub hour_window: Duration,
}

/// One budget as `send governor budgets` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetRow {
    pub name: &'static str,
    /// `None`: no limit.
    pub limit: Option<f64>,
    pub spent: f64,
    pub left: Option<f64>,
    /// When what is spent starts to free up (the oldest spend leaves the
    /// window), or the deadline.
    pub resets_at_ms: Option<u64>,
    /// Set live (`set-budget`) rather than from the configuration.
    pub set_live: bool,
}

/// A change waiting for an operator (supervised mode).
#[derive(Debug, Clone, PartialEq)]
pub struct ApprovalRequest {
    pub iteration: u64,
    pub summary: String,
    pub files: Vec<String>,
    pub fitness_before: Option<f64>,
    pub fitness_after: f64,
}

/// An operator's decision on a change.
#[derive(Debug, Clone, PartialEq)]
pub enum ApprovalDecision {
    Approved,
    Rejected { reason: String },
}

named_enum! {
    /// Where an approval stands.
    pub enum ApprovalState ("approval state") {
        Pending => "pending",
        Approved => "approved",
        Rejected => "rejected",
        /// The governor restarted while it waited; the iteration asks again.
        Expired => "expired",
    }
}

// ------------------------------------------------------------------- run --

named_enum! {
    /// Whether the live run goes on (the planner's view).
    pub enum RunState ("run state") {
        Running => "running",
        Paused => "paused",
        Stopping => "stopping",
        Finished => "finished",
    }
}

named_enum! {
    /// Whether a stored run is still to be pursued.
    pub enum RunPhase ("run phase") {
        Running => "running",
        /// The run reached its end (a limit); a new `agent run` resumes it.
        Finished => "finished",
    }
}

/// Committed iterations by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutcomeCounts {
    /// Accepted: changes kept.
    pub kept: u64,
    pub no_change: u64,
    pub rejected: u64,
    pub failed: u64,
}

impl OutcomeCounts {
    pub fn add(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Accepted => self.kept += 1,
            Outcome::NoChange => self.no_change += 1,
            Outcome::Rejected | Outcome::UpgradeFailed => self.rejected += 1,
            Outcome::JobFailed => self.failed += 1,
        }
    }
}

/// The planner's view, for status.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannerStatus {
    pub goal: String,
    pub run_state: RunState,
    /// Committed iterations.
    pub iteration: u64,
    pub in_flight: Option<u64>,
    pub last_fitness: Option<f64>,
    /// Why the run is paused, while it is.
    pub pause_reason: Option<String>,
    /// Why the last permit was denied by a budget, until one is granted.
    pub waiting: Option<String>,
    /// Attempts abandoned in a row since the last commit.
    pub failures: u32,
    pub outcomes: OutcomeCounts,
}

/// The modifier's view, for `send modifier status`.
#[derive(Debug, Clone, PartialEq)]
pub struct ModifierStatus {
    pub head: String,
    pub head_fitness: Option<f64>,
    pub accepted: u64,
    pub rolled_back: u64,
    /// Files changed in the worktree now.
    pub changed: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relative_path_is_read_against_the_current_directory_and_folded() {
        let here = std::env::current_dir().unwrap();
        let path = AbsolutePath::resolve(Path::new("state/../state/./worktree")).unwrap();
        assert_eq!(path.as_path(), here.join("state/worktree"));
        assert_eq!(
            AbsolutePath::resolve(Path::new("/srv/agent/../state"))
                .unwrap()
                .as_path(),
            Path::new("/srv/state")
        );
        assert!(AbsolutePath::resolve(Path::new("")).is_err());
        assert_eq!(AbsolutePath::given("relative".into()), None);
    }

    #[test]
    fn a_program_name_stays_a_name_and_a_program_path_is_made_absolute() {
        let here = std::env::current_dir().unwrap();
        assert_eq!(
            Program::resolve(Path::new("bwrap")).unwrap().as_path(),
            Path::new("bwrap")
        );
        assert_eq!(
            Program::resolve(Path::new("./bin/claude"))
                .unwrap()
                .as_path(),
            here.join("bin/claude")
        );
        assert!(Program::resolve(Path::new("..")).is_err());
    }

    #[test]
    fn every_name_parses_back_to_its_value() {
        for kind in ActorKind::ALL {
            assert_eq!(kind.as_str().parse::<ActorKind>(), Ok(kind));
        }
        for status in JobStatus::ALL {
            assert_eq!(status.as_str().parse::<JobStatus>(), Ok(status));
        }
        for outcome in Outcome::ALL {
            assert_eq!(outcome.as_str().parse::<Outcome>(), Ok(outcome));
        }
        for state in ApprovalState::ALL {
            assert_eq!(state.as_str().parse::<ApprovalState>(), Ok(state));
        }
        for kind in BackendKind::ALL {
            assert_eq!(kind.as_str().parse::<BackendKind>(), Ok(kind));
        }
        for mode in PermissionMode::ALL {
            assert_eq!(mode.as_str().parse::<PermissionMode>(), Ok(mode));
        }
    }

    /// Records written before these were typed hold exactly these texts.
    #[test]
    fn what_refused_a_change_and_its_validation_read_back_as_written() {
        for name in [
            "no-new-unsafe",
            "no_secrets",
            "validation",
            "fitness",
            "approval",
        ] {
            assert_eq!(RefusedBy::from_name(name).as_str(), name);
        }
        assert_eq!(
            RefusedBy::from_name("fitness"),
            RefusedBy::Step(Judge::Fitness)
        );
        assert_eq!(
            RefusedBy::from_name("no-new-unsafe"),
            RefusedBy::Rule("no-new-unsafe".into())
        );
        for text in [
            "passed",
            "not run",
            "failed: validation `x` failed (status 1): e",
        ] {
            assert_eq!(Validation::from_text(text).to_string(), text);
        }
        assert_eq!(
            Validation::from_text("failed: e"),
            Validation::Failed("e".into())
        );
        assert_eq!(
            PermissionMode::names(),
            "default, acceptEdits, plan, bypassPermissions, dontAsk"
        );
    }

    #[test]
    fn an_unknown_name_says_what_was_expected() {
        let error = "dance".parse::<FaultKind>().unwrap_err();
        assert_eq!(
            error.to_string(),
            "unknown fault \"dance\"; expected one of: panic, error, hang"
        );
    }

    #[test]
    fn the_head_fitness_follows_the_outcome() {
        let mut iteration = Iteration {
            number: 1,
            goal: "g".into(),
            capability: "fmt".into(),
            outcome: Outcome::Accepted,
            fitness_before: Some(3.0),
            fitness_after: Some(2.0),
            usage: Usage::default(),
            duration: Duration::ZERO,
            commit: None,
            summary: String::new(),
            finished_at_ms: 0,
            variant: None,
        };
        assert_eq!(iteration.head_fitness(), Some(2.0));
        iteration.outcome = Outcome::Rejected;
        assert_eq!(iteration.head_fitness(), Some(3.0));
    }
}
