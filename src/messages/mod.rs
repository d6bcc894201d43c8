//! The typed messages the actors exchange: one closed enum per actor, the
//! domain values they carry, and typed lookup helpers. Actors never import
//! each other; they share this module and reach peers by registered name,
//! because an `ActorRef` held across a restart would go stale.
//!
//! None of these types derive serde: the control socket and the store have
//! their own versioned records, converted at the edge.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use ractor::{ActorRef, RpcReplyPort};

use crate::store::SnapshotRecord;

/// The six actors of the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ActorKind {
    Governor,
    Learner,
    Researcher,
    Executor,
    Modifier,
    Planner,
}

impl ActorKind {
    pub const ALL: [ActorKind; 6] = [
        ActorKind::Governor,
        ActorKind::Learner,
        ActorKind::Researcher,
        ActorKind::Executor,
        ActorKind::Modifier,
        ActorKind::Planner,
    ];

    /// The registered name of the actor, also its name in config and ctl.
    pub fn name(self) -> &'static str {
        match self {
            ActorKind::Governor => "governor",
            ActorKind::Learner => "learner",
            ActorKind::Researcher => "researcher",
            ActorKind::Executor => "executor",
            ActorKind::Modifier => "modifier",
            ActorKind::Planner => "planner",
        }
    }
}

impl fmt::Display for ActorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ActorKind {
    type Err = ();
    fn from_str(name: &str) -> Result<Self, ()> {
        ActorKind::ALL
            .into_iter()
            .find(|kind| kind.name() == name)
            .ok_or(())
    }
}

/// A failure injected on purpose (`agent ctl fault`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// The actor panics inside its handler.
    Panic,
    /// The actor's handler returns an error.
    Error,
    /// The actor's handler never returns: its mailbox stops being served.
    Hang,
}

impl FaultKind {
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Panic => "panic",
            FaultKind::Error => "error",
            FaultKind::Hang => "hang",
        }
    }
}

impl FromStr for FaultKind {
    type Err = ();
    fn from_str(text: &str) -> Result<Self, ()> {
        [FaultKind::Panic, FaultKind::Error, FaultKind::Hang]
            .into_iter()
            .find(|f| f.name() == text)
            .ok_or(())
    }
}

/// Applies an injected fault inside an actor's handler.
pub async fn inject(actor: ActorKind, fault: FaultKind) -> Result<(), ractor::ActorProcessingErr> {
    match fault {
        FaultKind::Panic => panic!("injected panic in {actor}"),
        FaultKind::Error => Err(format!("injected error in {actor}").into()),
        FaultKind::Hang => {
            tracing::warn!(%actor, "injected hang: this actor no longer serves its mailbox");
            std::future::pending::<()>().await;
            Ok(())
        }
    }
}

/// Every actor answers these the same way; each enum wraps them in `Common`.
#[derive(Debug)]
pub enum Common {
    /// The actor's state as the record it would commit now.
    Snapshot(RpcReplyPort<Result<SnapshotRecord, String>>),
    /// Drop uncommitted changes: reload the last committed snapshot.
    Revert(RpcReplyPort<Result<(), String>>),
    /// Fail on purpose.
    Fault(FaultKind),
}

// ----------------------------------------------------------------- values --

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

/// What the planner decided to do in one iteration.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub iteration: u64,
    pub capability: String,
    /// The prompt for a model backend; `None` for local capabilities.
    pub prompt: Option<String>,
    /// Why this capability was chosen (learner's scores).
    pub rationale: String,
    /// How a model backend runs it.
    pub execution: crate::config::Execution,
}

/// How a cognition job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    Completed,
    Failed,
    Timeout,
    Killed,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Timeout => "timeout",
            JobStatus::Killed => "killed",
        }
    }
}

/// The result of executing a plan.
#[derive(Debug, Clone, PartialEq)]
pub struct JobOutcome {
    pub job_id: u64,
    pub status: JobStatus,
    /// The backend's result text (or the raw output when it was not understood).
    pub output: String,
    pub error: Option<String>,
    pub usage: Usage,
    pub session_id: Option<String>,
}

/// The modifier's measurement of the workspace before an iteration.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    pub base_commit: String,
    pub fitness: Option<f64>,
}

/// What the modifier did with the change an iteration made.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Validation passed and fitness did not get worse: one commit.
    Accepted {
        commit: String,
        fitness_after: f64,
        files_changed: usize,
    },
    /// Rolled back to the base commit.
    Rejected {
        reason: String,
        fitness_after: Option<f64>,
    },
    /// The job changed nothing.
    NoChange,
}

/// One finished iteration as the learner keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct Experience {
    pub iteration: u64,
    pub capability: String,
    pub outcome: Outcome,
    pub fitness_before: Option<f64>,
    pub fitness_after: Option<f64>,
    pub usage: Usage,
    pub duration: Duration,
    /// A short, stable description of the failure, if any.
    pub error_signature: Option<String>,
}

/// The outcome of an iteration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    Rejected,
    NoChange,
    JobFailed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Rejected => "rejected",
            Outcome::NoChange => "no-change",
            Outcome::JobFailed => "job-failed",
        }
    }

    pub fn parse(text: &str) -> Option<Outcome> {
        [
            Outcome::Accepted,
            Outcome::Rejected,
            Outcome::NoChange,
            Outcome::JobFailed,
        ]
        .into_iter()
        .find(|o| o.as_str() == text)
    }
}

/// A capability ranked by the learner.
#[derive(Debug, Clone, PartialEq)]
pub struct RankedCapability {
    pub id: String,
    pub score: f64,
    pub attempts: u64,
    pub mean_reward: f64,
}

/// The learner's advice for the next plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Advice {
    /// Best first.
    pub ranked: Vec<RankedCapability>,
    /// The most recent experiences, newest first.
    pub recent: Vec<Experience>,
}

/// Notes the researcher found on a topic.
#[derive(Debug, Clone, PartialEq)]
pub struct Research {
    pub topic: String,
    pub notes: String,
    pub from_cache: bool,
    pub usage: Usage,
}

/// The governor's answer to a permit request.
#[derive(Debug, Clone, PartialEq)]
pub enum Permit {
    Granted,
    /// An operator paused the run: ask again after `retry_after`.
    Paused {
        retry_after: Duration,
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
    pub tokens_last_day: u64,
    pub tokens_per_day: u64,
    pub cost_usd_total: f64,
    pub permits_granted: u64,
}

/// Whether the run goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    Running,
    Paused,
    Stopping,
    Finished,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Paused => "paused",
            RunState::Stopping => "stopping",
            RunState::Finished => "finished",
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
}

// --------------------------------------------------------------- messages --

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

pub enum GovernorMsg {
    Common(Common),
    /// Hold a validated change until an operator decides (supervised mode).
    RequestApproval {
        request: ApprovalRequest,
        reply: RpcReplyPort<ApprovalDecision>,
    },
    /// Pending approvals first, then recent decisions.
    Approvals(RpcReplyPort<Vec<crate::store::ApprovalRecord>>),
    /// Approve or reject a pending change; answers after the decision is durable.
    Decide {
        id: String,
        approve: bool,
        reason: Option<String>,
        reply: RpcReplyPort<Result<crate::store::ApprovalRecord, String>>,
    },
    RequestPermit {
        iteration: u64,
        reply: RpcReplyPort<Permit>,
    },
    /// Spent tokens and money; durable at once, whatever the iteration's fate.
    RecordUsage {
        usage: Usage,
        reply: RpcReplyPort<()>,
    },
    SetPaused {
        paused: bool,
        reply: RpcReplyPort<Result<(), String>>,
    },
    Status(RpcReplyPort<GovernorStatus>),
}

/// The learner's statistics and the ranking they give.
#[derive(Debug, Clone, PartialEq)]
pub struct LearnerStats {
    pub experiences: u64,
    /// (capability, attempts, accepted, mean reward, fitness gain, tokens)
    pub capabilities: Vec<(String, u64, u64, f64, f64, u64)>,
}

pub enum LearnerMsg {
    Common(Common),
    Stats(RpcReplyPort<LearnerStats>),
    /// Forget what was learned about a capability (durable with the next commit).
    Forget {
        capability: String,
        reply: RpcReplyPort<bool>,
    },
    Advise {
        candidates: Vec<String>,
        reply: RpcReplyPort<Advice>,
    },
    Record {
        experience: Experience,
        reply: RpcReplyPort<()>,
    },
}

pub enum ResearcherMsg {
    Common(Common),
    /// (cache hits, misses filled)
    Status(RpcReplyPort<(u64, u64)>),
    /// Drop a cached answer so the next request fills it again.
    Invalidate {
        topic: String,
        reply: RpcReplyPort<Result<bool, String>>,
    },
    Research {
        topic: String,
        reply: RpcReplyPort<Research>,
    },
    /// A miss was filled off the mailbox; update counters, then answer.
    Filled {
        research: Research,
        reply: RpcReplyPort<Research>,
    },
}

pub enum ExecutorMsg {
    Common(Common),
    /// The latest job records, newest last.
    Jobs {
        last: usize,
        reply: RpcReplyPort<Vec<crate::store::JobRecord>>,
    },
    /// Kill a running job (its process group, or the job on the MCP server).
    KillJob {
        job: u64,
        reply: RpcReplyPort<Result<(), String>>,
    },
    Capabilities(RpcReplyPort<Vec<Capability>>),
    /// The remote id of a job for `iteration` that an earlier executor left
    /// running, which `Execute` will re-attach to.
    PendingJob {
        iteration: u64,
        reply: RpcReplyPort<Option<String>>,
    },
    Execute {
        plan: Plan,
        reply: RpcReplyPort<JobOutcome>,
    },
    /// A job finished off the mailbox.
    JobDone {
        outcome: JobOutcome,
        reply: RpcReplyPort<JobOutcome>,
    },
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

pub enum ModifierMsg {
    Common(Common),
    /// Reset the worktree to the committed head and measure fitness; with
    /// `keep_worktree`, leave the worktree as it is (a re-attached job's
    /// edits are in it) and use the committed head's known fitness.
    Prepare {
        iteration: u64,
        keep_worktree: bool,
        reply: RpcReplyPort<Result<Prepared, String>>,
    },
    /// Reload the committed snapshot without touching the worktree.
    Reload(RpcReplyPort<Result<(), String>>),
    Status(RpcReplyPort<ModifierStatus>),
    /// Validate the worktree's change and commit or roll back.
    Validate {
        iteration: u64,
        summary: String,
        fitness_before: Option<f64>,
        reply: RpcReplyPort<Result<Verdict, String>>,
    },
    /// Work finished off the mailbox: the new head and fitness to remember.
    Settled {
        head: String,
        fitness: Option<f64>,
        rolled_back: bool,
    },
}

pub enum PlannerMsg {
    Common(Common),
    /// Start the next iteration if allowed.
    Tick,
    Status(RpcReplyPort<PlannerStatus>),
    /// An operator paused (`true`) or resumed (`false`) the run.
    Paused(bool),
    /// Replace the goal; the next iteration pursues it.
    SetGoal {
        goal: String,
        reply: RpcReplyPort<Result<(), String>>,
    },
    /// Start no new iteration; answer once none is in flight.
    Drain(RpcReplyPort<()>),
    /// Give up the in-flight iteration now (shutdown deadline passed).
    Abandon(RpcReplyPort<()>),
    /// The iteration driver finished (committed or failed before commit).
    IterationEnded {
        iteration: u64,
        end: IterationEnd,
    },
}

/// How an attempt at an iteration ended.
#[derive(Debug, Clone)]
pub enum IterationEnd {
    /// Committed: log entry and every snapshot are durable.
    Committed(crate::store::IterationRecord),
    /// The governor said not now; `paused` when an operator paused the run.
    Wait {
        reason: String,
        retry_after: Duration,
        paused: bool,
    },
    /// The governor said the run is over.
    Finished { reason: String },
    /// Something failed before the commit; the iteration will run again.
    Abandoned { reason: String },
    /// Every actor is back at its committed state.
    Reverted,
}

impl From<Common> for GovernorMsg {
    fn from(c: Common) -> Self {
        GovernorMsg::Common(c)
    }
}
impl From<Common> for LearnerMsg {
    fn from(c: Common) -> Self {
        LearnerMsg::Common(c)
    }
}
impl From<Common> for ResearcherMsg {
    fn from(c: Common) -> Self {
        ResearcherMsg::Common(c)
    }
}
impl From<Common> for ExecutorMsg {
    fn from(c: Common) -> Self {
        ExecutorMsg::Common(c)
    }
}
impl From<Common> for ModifierMsg {
    fn from(c: Common) -> Self {
        ModifierMsg::Common(c)
    }
}
impl From<Common> for PlannerMsg {
    fn from(c: Common) -> Self {
        PlannerMsg::Common(c)
    }
}

// ---------------------------------------------------------------- lookups --

/// Why a peer could not be reached.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PeerError {
    #[error("{0} is not running (restarting?)")]
    NotRunning(ActorKind),
    #[error("{0} did not answer within {1:?}")]
    Timeout(ActorKind, Duration),
    #[error("{0} went away before answering")]
    Gone(ActorKind),
}

/// Finds a running actor by its registered name, typed.
pub fn lookup<M: ractor::Message>(kind: ActorKind) -> Result<ActorRef<M>, PeerError> {
    ActorRef::<M>::where_is(kind.name()).ok_or(PeerError::NotRunning(kind))
}

/// Calls a peer by name and waits at most `timeout` for its answer.
pub async fn call<M, T>(
    kind: ActorKind,
    timeout: Duration,
    build: impl FnOnce(RpcReplyPort<T>) -> M,
) -> Result<T, PeerError>
where
    M: ractor::Message,
    T: Send + 'static,
{
    let actor = lookup::<M>(kind)?;
    match actor.call(build, Some(timeout)).await {
        Ok(ractor::rpc::CallResult::Success(value)) => Ok(value),
        Ok(ractor::rpc::CallResult::Timeout) => Err(PeerError::Timeout(kind, timeout)),
        Ok(ractor::rpc::CallResult::SenderError) | Err(_) => Err(PeerError::Gone(kind)),
    }
}

/// Sends a `Common` message to any actor by kind.
pub fn send_common(kind: ActorKind, message: Common) -> Result<(), PeerError> {
    fn send<M: ractor::Message + From<Common>>(
        kind: ActorKind,
        message: Common,
    ) -> Result<(), PeerError> {
        lookup::<M>(kind)?
            .cast(M::from(message))
            .map_err(|_| PeerError::Gone(kind))
    }
    match kind {
        ActorKind::Governor => send::<GovernorMsg>(kind, message),
        ActorKind::Learner => send::<LearnerMsg>(kind, message),
        ActorKind::Researcher => send::<ResearcherMsg>(kind, message),
        ActorKind::Executor => send::<ExecutorMsg>(kind, message),
        ActorKind::Modifier => send::<ModifierMsg>(kind, message),
        ActorKind::Planner => send::<PlannerMsg>(kind, message),
    }
}

/// Calls `Common` request on any actor by kind, with a timeout.
pub async fn call_common<T: Send + 'static>(
    kind: ActorKind,
    timeout: Duration,
    build: impl FnOnce(RpcReplyPort<T>) -> Common,
) -> Result<T, PeerError> {
    match kind {
        ActorKind::Governor => call(kind, timeout, |r| GovernorMsg::Common(build(r))).await,
        ActorKind::Learner => call(kind, timeout, |r| LearnerMsg::Common(build(r))).await,
        ActorKind::Researcher => call(kind, timeout, |r| ResearcherMsg::Common(build(r))).await,
        ActorKind::Executor => call(kind, timeout, |r| ExecutorMsg::Common(build(r))).await,
        ActorKind::Modifier => call(kind, timeout, |r| ModifierMsg::Common(build(r))).await,
        ActorKind::Planner => call(kind, timeout, |r| PlannerMsg::Common(build(r))).await,
    }
}
