//! The actor protocol: one closed enum per actor, the [`Common`] messages
//! every actor answers, the typed errors of their replies, and typed lookup
//! and call helpers. Actors never import each other; they share this module
//! and reach peers by registered name, because an `ActorRef` held across a
//! restart would go stale. The values the messages carry live in
//! [`crate::domain`].
//!
//! None of these types derive serde: the control socket and the store have
//! their own versioned records, converted at the edge.

use std::time::Duration;

use ractor::{ActorRef, RpcReplyPort};

use crate::domain::{
    ActorKind, Advice, ApprovalDecision, ApprovalRequest, BudgetRow, Capability, DiscoveredTool,
    Experience, FaultKind, GovernorStatus, Iteration, JobOutcome, LearnedRules, LearnerStats,
    ModifierStatus, Permit, Plan, PlannerStatus, Prepared, Research, ResearcherStatus, Signals,
    Usage, Variant, Verdict,
};
use crate::store::{ApprovalRecord, JobRecord, SnapshotRecord};

/// Why an actor refused or could not serve a request. The kind is what a
/// caller acts on (ctl turns it into its error kind); the text is for people.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ActorError {
    /// Understood and declined: nothing to decide, not running, unknown id.
    #[error("{0}")]
    Refused(String),
    /// The request's arguments do not make sense (an empty goal).
    #[error("{0}")]
    Invalid(String),
    /// The store could not read or write what the request needs.
    #[error("{0}")]
    Store(String),
    /// The worktree, or a command run in it, failed.
    #[error("{0}")]
    Workspace(String),
}

/// Every actor answers these the same way; each enum wraps them in `Common`.
#[derive(Debug)]
pub enum Common {
    /// The actor's state as the record it would commit now.
    Snapshot(RpcReplyPort<Result<SnapshotRecord, ActorError>>),
    /// Drop uncommitted changes: reload the last committed snapshot.
    Revert(RpcReplyPort<Result<(), ActorError>>),
    /// Answer at once: the supervisor's liveness check.
    Ping(RpcReplyPort<()>),
    /// Fail on purpose.
    Fault(FaultKind),
}

/// How an attempt at an iteration ended (the planner's driver tells the
/// planner).
#[derive(Debug, Clone)]
pub enum IterationEnd {
    /// Committed: log entry and every snapshot are durable.
    Committed(Iteration),
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
    /// Validation fails on the base itself, before any change (and the
    /// configuration says to pause then).
    BaseFails { reason: String },
    /// Every capability gained nothing in the workspace's situation: the
    /// run pauses instead of trying them again.
    NothingLeft { reason: String },
    /// Claude Code's login is gone: the run pauses at once with the reason.
    LoginLost { reason: String },
    /// The job was turned away by a rate limit (or an overloaded API):
    /// the run waits until `until_ms` — the limit's reset, or `None` for a
    /// back-off the planner chooses — and then runs the same iteration
    /// again. Not a failure of the run's.
    RateLimited {
        until_ms: Option<u64>,
        reason: String,
    },
    /// Every actor is back at its committed state.
    Reverted,
}

// --------------------------------------------------------------- messages --

pub enum GovernorMsg {
    Common(Common),
    /// Hold a validated change until an operator decides (supervised mode).
    /// Answered with an error when the request cannot be recorded.
    RequestApproval {
        request: ApprovalRequest,
        reply: RpcReplyPort<Result<ApprovalDecision, ActorError>>,
    },
    /// Pending approvals first, then recent decisions.
    Approvals(RpcReplyPort<Result<Vec<ApprovalRecord>, ActorError>>),
    /// Approve or reject a pending change; answers after the decision is durable.
    Decide {
        id: String,
        approve: bool,
        reason: Option<String>,
        reply: RpcReplyPort<Result<ApprovalRecord, ActorError>>,
    },
    RequestPermit {
        iteration: u64,
        reply: RpcReplyPort<Permit>,
    },
    /// Hold every permit until `until_ms` (a rate limit or an overloaded
    /// API): audited, shown in status, and no failure of the run's.
    HoldUntil {
        until_ms: u64,
        reason: String,
        reply: RpcReplyPort<Result<(), ActorError>>,
    },
    /// Spent tokens and money; durable at once, whatever the iteration's fate.
    RecordUsage {
        usage: Usage,
        reply: RpcReplyPort<()>,
    },
    /// Pause (durable, with the reason if any) or resume.
    SetPaused {
        paused: bool,
        reason: Option<String>,
        reply: RpcReplyPort<Result<(), ActorError>>,
    },
    Status(RpcReplyPort<GovernorStatus>),
    /// Every budget with what is spent, left, and when it frees up.
    Budgets(RpcReplyPort<Vec<BudgetRow>>),
    /// Change one budget live (audited, kept across restarts).
    SetBudget {
        name: String,
        value: String,
        reply: RpcReplyPort<Result<BudgetRow, ActorError>>,
    },
}

pub enum LearnerMsg {
    Common(Common),
    Stats(RpcReplyPort<LearnerStats>),
    /// Every rule, holding or not, and how many were dropped.
    Rules(RpcReplyPort<LearnedRules>),
    /// The last `last` experiences, oldest first.
    Experiences {
        last: usize,
        reply: RpcReplyPort<Result<Vec<Experience>, ActorError>>,
    },
    /// Forget what was learned about a capability (durable with the next commit).
    Forget {
        capability: String,
        reply: RpcReplyPort<bool>,
    },
    /// Rank `candidates` for iteration `iteration` in the situation `signals`.
    Advise {
        iteration: u64,
        candidates: Vec<String>,
        signals: Signals,
        reply: RpcReplyPort<Advice>,
    },
    /// Learn from an experience; `after` is what the workspace showed once
    /// its change was kept.
    Record {
        experience: Box<Experience>,
        after: Option<Box<Signals>>,
        reply: RpcReplyPort<()>,
    },
}

pub enum ResearcherMsg {
    Common(Common),
    Status(RpcReplyPort<ResearcherStatus>),
    /// Drop a cached answer so the next request fills it again.
    Invalidate {
        topic: String,
        reply: RpcReplyPort<Result<bool, ActorError>>,
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
    /// The registry of tools discovered on MCP servers.
    Tools(RpcReplyPort<Result<Vec<DiscoveredTool>, ActorError>>),
    /// The latest job records, newest last; a running job's with how far
    /// it has come.
    Jobs {
        last: usize,
        reply: RpcReplyPort<Vec<(JobRecord, Option<crate::domain::JobProgress>)>>,
    },
    /// Kill a running job (its process group, or the job on the MCP server).
    KillJob {
        job: u64,
        reply: RpcReplyPort<Result<(), ActorError>>,
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
    /// Cancel the job of a candidate that is past its deadline.
    Cancel(crate::domain::Attempt),
    /// A job went on record (off the mailbox): `KillJob` finds it by id.
    JobStarted {
        attempt: crate::domain::Attempt,
        job: u64,
    },
    /// A job finished off the mailbox.
    JobDone {
        attempt: crate::domain::Attempt,
        outcome: JobOutcome,
        reply: RpcReplyPort<JobOutcome>,
    },
}

pub enum ModifierMsg {
    Common(Common),
    /// Reset the worktree to the committed head and measure fitness; with
    /// `keep_worktree`, leave the worktree as it is (a re-attached job's
    /// edits are in it) and use the committed head's known fitness.
    Prepare {
        iteration: u64,
        keep_worktree: bool,
        reply: RpcReplyPort<Result<Prepared, ActorError>>,
    },
    /// Run validation on the prepared base, before any change: `Some` with
    /// the first error line when it fails there.
    /// Validation at the head: why it fails and what that shows, if it does.
    Baseline(RpcReplyPort<Result<Option<(String, Signals)>, ActorError>>),
    /// Move the branch onto the repository's HEAD when validation passes
    /// there (the run must be paused and idle); answers what was done.
    Rebase(RpcReplyPort<Result<String, ActorError>>),
    /// The branch moved on purpose (a rebase): the new committed head,
    /// written at once; then the operator's `reply` hears `said`, or why
    /// the head could not be written.
    Moved {
        head: String,
        said: String,
        reply: RpcReplyPort<Result<String, ActorError>>,
    },
    /// Reload the committed snapshot without touching the worktree.
    Reload(RpcReplyPort<Result<(), ActorError>>),
    /// Put the refused change of `iteration` back in the worktree for a
    /// repair turn (it stays archived); answers its commit.
    Reopen {
        iteration: u64,
        reply: RpcReplyPort<Result<String, ActorError>>,
    },
    Status(RpcReplyPort<ModifierStatus>),
    /// Every self-upgrade attempt with its figures and outcome (JSON).
    Upgrades(RpcReplyPort<Result<serde_json::Value, ActorError>>),
    /// The latest `last` archived variants, oldest first.
    Variants {
        last: usize,
        reply: RpcReplyPort<Result<Vec<Variant>, ActorError>>,
    },
    /// Put candidate `slot`'s worktree at the committed head (with the
    /// change of the variant the iteration starts from); answers its path.
    OpenLane {
        slot: u32,
        started_from: Option<u64>,
        reply: RpcReplyPort<Result<std::path::PathBuf, ActorError>>,
    },
    /// Judge a candidate's change in its worktree through the pipeline
    /// (without approval); the agent branch does not move.
    Judge {
        attempt: crate::domain::Attempt,
        lane: std::path::PathBuf,
        summary: String,
        fitness_before: Option<f64>,
        reply: RpcReplyPort<Result<Verdict, ActorError>>,
    },
    /// Stop judging candidate `slot`: it is past its deadline.
    DropLane(u32),
    /// Bring the chosen candidate's accepted change onto the agent branch
    /// (approved first in supervised mode); answers the verdict that stands.
    Adopt {
        iteration: u64,
        summary: String,
        verdict: Box<Verdict>,
        reply: RpcReplyPort<Result<Verdict, ActorError>>,
    },
    /// Validate the worktree's change and commit or roll back.
    Validate {
        iteration: u64,
        summary: String,
        fitness_before: Option<f64>,
        /// The earlier variant the worktree started from.
        started_from: Option<u64>,
        reply: RpcReplyPort<Result<Verdict, ActorError>>,
    },
    /// Work finished off the mailbox: the new head and fitness to remember.
    Settled {
        head: String,
        fitness: Option<f64>,
        /// What the measure showed at `head`, when it was measured.
        signals: Option<Signals>,
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
        reply: RpcReplyPort<Result<(), ActorError>>,
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

/// Sends a peer a message that has no answer.
pub fn cast<M: ractor::Message>(kind: ActorKind, message: M) -> Result<(), PeerError> {
    lookup::<M>(kind)?
        .cast(message)
        .map_err(|_| PeerError::Gone(kind))
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
