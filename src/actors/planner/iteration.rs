//! One attempt at an iteration, as the driver task runs it off the planner's
//! mailbox: the steps by name — permit, prepare, advise, research, plan,
//! execute, validate, repair, learn, commit — each a short function that asks one
//! peer. The first step that fails ends the attempt with a typed
//! [`StepError`]; the planner then reverts every actor and runs the same
//! iteration again.

use std::time::{Duration, Instant};

use tracing::Instrument;

use super::logic::{self, PlanError, Situation};
use super::{KIND, PlannerSnapshot, SCHEMA};
use crate::actors::{Context, make_snapshot};
use crate::config::Mode;
use crate::domain::{
    ActorKind, Advice, BackendKind, Capability, Experience, Iteration, JobOutcome, JobStatus,
    Permit, Plan, Prepared, Research, Signals, Usage, Verdict,
};
use crate::events::Event;
use crate::messages::{
    self, ActorError, Common, ExecutorMsg, GovernorMsg, IterationEnd, LearnerMsg, ModifierMsg,
    PeerError, ResearcherMsg,
};
use crate::store::{StoreError, now_ms};
use crate::telemetry::SpanLink;

/// Timeout of quick questions to peers.
pub(crate) const QUICK: Duration = Duration::from_secs(15);
/// Added to the configured timeouts of slow steps.
const MARGIN: Duration = Duration::from_secs(30);

/// Why a step of an iteration failed; its text is the abandoned iteration's
/// reason.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// A peer could not be reached or did not answer in time.
    #[error(transparent)]
    Peer(#[from] PeerError),
    /// A peer answered with a refusal or a failure.
    #[error(transparent)]
    Actor(#[from] ActorError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("commit failed: {0}")]
    Commit(#[from] StoreError),
    /// Validation fails on the base: no change can be judged.
    #[error("{0}")]
    BaseFails(String),
    /// Every capability gained nothing in this situation before.
    #[error("{0}")]
    NothingLeft(String),
    /// The job's login is gone: no retry mends it.
    #[error("{0}")]
    LoginLost(String),
    /// A rate limit (resetting at `until_ms`) or an overloaded API turned
    /// the job away.
    #[error("{reason}")]
    RateLimited {
        until_ms: Option<u64>,
        reason: String,
    },
}

/// One attempt at iteration `iteration`, from the permit to the commit.
pub(super) async fn drive(
    ctx: &Context,
    snapshot: PlannerSnapshot,
    iteration: u64,
    links: Vec<SpanLink>,
    check_base: bool,
) -> IterationEnd {
    if let Err(end) = permit(ctx, iteration).await {
        return end;
    }
    // One trace per iteration: a root span, whatever span was current.
    let root = tracing::info_span!(
        parent: None,
        "iteration",
        actor = KIND.name(),
        iteration = iteration as i64,
        goal = %snapshot.goal,
        outcome = tracing::field::Empty,
        capability = tracing::field::Empty,
        fitness.before = tracing::field::Empty,
        fitness.after = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    crate::telemetry::link_pending(&root, links);
    ctx.events.emit(Event::IterationStarted { iteration });
    root.in_scope(|| step(ctx, iteration, "permit", "granted".into()));
    match run_steps(ctx, snapshot, iteration, check_base)
        .instrument(root.clone())
        .await
    {
        Ok(committed) => {
            root.record("outcome", committed.outcome.as_str());
            root.record("capability", committed.capability.as_str());
            if let Some(before) = committed.fitness_before {
                root.record("fitness.before", before);
            }
            if let Some(after) = committed.fitness_after {
                root.record("fitness.after", after);
            }
            IterationEnd::Committed(committed)
        }
        Err(StepError::BaseFails(reason)) => {
            root.record("outcome", "base-fails");
            IterationEnd::BaseFails { reason }
        }
        Err(StepError::NothingLeft(reason)) => {
            root.record("outcome", "nothing-left");
            IterationEnd::NothingLeft { reason }
        }
        Err(StepError::LoginLost(reason)) => {
            root.record("outcome", "login-lost");
            root.record("otel.status_code", "ERROR");
            IterationEnd::LoginLost { reason }
        }
        Err(StepError::RateLimited { until_ms, reason }) => {
            root.record("outcome", "rate-limited");
            IterationEnd::RateLimited { until_ms, reason }
        }
        Err(error) => {
            let reason = error.to_string();
            root.record("outcome", "abandoned");
            root.record("otel.status_code", "ERROR");
            root.in_scope(|| tracing::error!(%reason, "iteration abandoned before its commit"));
            IterationEnd::Abandoned { reason }
        }
    }
}

/// The steps after the permit, in order.
async fn run_steps(
    ctx: &Context,
    snapshot: PlannerSnapshot,
    iteration: u64,
    check_base: bool,
) -> Result<Iteration, StepError> {
    let started = Instant::now();
    let mut prepared = prepare(ctx, iteration).await?;
    if check_base && let Some(failing) = baseline(ctx, iteration).await? {
        // What fails at the base is part of the situation.
        prepared.signals.failing_tests = failing.failing_tests;
        prepared.signals.error = failing.error;
    }
    let (capabilities, advice) = advise(iteration, &prepared.signals).await?;
    if let Some(reason) = logic::nothing_left(&advice, &prepared.signals) {
        return Err(StepError::NothingLeft(reason));
    }
    let research = research(ctx, &research_topic(&snapshot.goal, &prepared.signals)).await?;
    if ctx.config.candidates > 1 {
        return super::candidates::run(
            ctx,
            snapshot,
            iteration,
            &prepared,
            &advice,
            &capabilities,
            research.as_ref(),
            started,
        )
        .await;
    }
    let plan = plan(
        ctx,
        &snapshot.goal,
        iteration,
        &prepared,
        &advice,
        &capabilities,
        research.as_ref(),
    )?;
    let job = execute(ctx, &plan).await?;
    turned_away(&job)?;
    let verdict = validate(ctx, &plan, &prepared, &job).await?;
    let (job, verdict, repaired) = repair(ctx, &plan, &prepared, job, verdict).await?;
    let mut experience =
        logic::experience_of(&plan, &prepared, &job, verdict.as_ref(), started.elapsed());
    experience.repaired = repaired;
    step(
        ctx,
        iteration,
        "validate",
        experience.outcome.as_str().into(),
    );
    let after = match &verdict {
        Some(Verdict::Accepted { signals_after, .. }) => Some(signals_after.clone()),
        _ => None,
    };
    learn(ctx, &experience, after).await?;
    let committed = logic::committed_iteration(
        &snapshot.goal,
        &experience,
        verdict.as_ref(),
        &job,
        now_ms(),
    );
    commit(ctx, snapshot, &committed, &experience, &[]).await?;
    Ok(committed)
}

/// Asks the governor whether an iteration may start; a denial is the end of
/// this attempt (wait, or the run is finished).
async fn permit(ctx: &Context, iteration: u64) -> Result<(), IterationEnd> {
    let permit = messages::call(ActorKind::Governor, QUICK, |reply| {
        GovernorMsg::RequestPermit { iteration, reply }
    })
    .await;
    match permit {
        Ok(Permit::Granted) => Ok(()),
        Ok(Permit::Paused {
            retry_after,
            reason,
        }) => Err(IterationEnd::Wait {
            reason: reason.unwrap_or_else(|| "paused by an operator".into()),
            retry_after,
            paused: true,
        }),
        Ok(Permit::Wait {
            reason,
            retry_after,
        }) => Err(IterationEnd::Wait {
            reason,
            retry_after,
            paused: false,
        }),
        Ok(Permit::Finished { reason }) => Err(IterationEnd::Finished { reason }),
        Err(error) => Err(IterationEnd::Wait {
            reason: error.to_string(),
            retry_after: ctx.config.permit_retry_after,
            paused: false,
        }),
    }
}

/// The modifier resets the worktree to the committed head (unless a job of
/// this iteration is still on the MCP server: its edits are kept) and
/// measures fitness.
async fn prepare(ctx: &Context, iteration: u64) -> Result<Prepared, StepError> {
    let pending = messages::call(ActorKind::Executor, QUICK, |reply| {
        ExecutorMsg::PendingJob { iteration, reply }
    })
    .await?;
    if let Some(remote) = &pending {
        tracing::info!(iteration, %remote, "a job of this iteration is still on the MCP server; keeping its worktree");
    }
    let keep_worktree = pending.is_some();
    let prepared = messages::call(ActorKind::Modifier, slow(ctx), |reply| {
        ModifierMsg::Prepare {
            iteration,
            keep_worktree,
            reply,
        }
    })
    .await??;
    step(
        ctx,
        iteration,
        "prepare",
        format!(
            "base {}, fitness {}{}",
            &prepared.base_commit[..prepared.base_commit.len().min(10)],
            prepared.fitness.map_or("unknown".into(), |f| f.to_string()),
            prepared
                .started_from
                .map(|n| format!(", starting from the variant of iteration {n}"))
                .unwrap_or_default()
        ),
    );
    Ok(prepared)
}

/// Validation on the base, once per run (and goal): a base that already
/// fails cannot judge a change. With `failing_base = "pause"` the attempt
/// ends there; with `"proceed"` it is said and the run goes on.
/// Returns what the failure shows (failing tests, the compiler's error).
async fn baseline(ctx: &Context, iteration: u64) -> Result<Option<Signals>, StepError> {
    let fails = messages::call(ActorKind::Modifier, slow(ctx), ModifierMsg::Baseline).await??;
    let Some((reason, signals)) = fails else {
        step(
            ctx,
            iteration,
            "baseline",
            "validation passes at the base".into(),
        );
        return Ok(None);
    };
    step(ctx, iteration, "baseline", reason.clone());
    match ctx.config.failing_base {
        crate::config::FailingBase::Pause => Err(StepError::BaseFails(reason)),
        crate::config::FailingBase::Proceed => {
            tracing::warn!(%reason, "proceeding: the goal is to make validation pass");
            Ok(Some(signals))
        }
    }
}

/// The backend's capabilities, ranked by the learner for the situation
/// the workspace is in.
async fn advise(iteration: u64, signals: &Signals) -> Result<(Vec<Capability>, Advice), StepError> {
    let capabilities: Vec<Capability> =
        messages::call(ActorKind::Executor, QUICK, ExecutorMsg::Capabilities).await?;
    let candidates: Vec<String> = capabilities.iter().map(|c| c.id.clone()).collect();
    let signals = signals.clone();
    let advice = messages::call(ActorKind::Learner, QUICK, |reply| LearnerMsg::Advise {
        iteration,
        candidates,
        signals,
        reply,
    })
    .await?;
    Ok((capabilities, advice))
}

/// What the researcher is asked: the goal, and what stops the build when
/// something does (its error code brings `rustc --explain` in).
fn research_topic(goal: &str, signals: &Signals) -> String {
    match &signals.error {
        Some(error) => format!("{goal}; the build fails: {error}"),
        None => goal.to_string(),
    }
}

/// Notes on the goal from the researcher, for model backends only: the
/// offline backend's capabilities do not read them.
async fn research(ctx: &Context, goal: &str) -> Result<Option<Research>, StepError> {
    if ctx.backend.kind() == BackendKind::Offline {
        return Ok(None);
    }
    let topic = goal.to_string();
    let research = messages::call(
        ActorKind::Researcher,
        ctx.config.job_timeout + MARGIN,
        |reply| ResearcherMsg::Research { topic, reply },
    )
    .await?;
    record_usage(research.usage).await?;
    Ok(Some(research))
}

/// The typed plan of this iteration (pure: see `logic`).
fn plan(
    ctx: &Context,
    goal: &str,
    iteration: u64,
    prepared: &Prepared,
    advice: &Advice,
    capabilities: &[Capability],
    research: Option<&Research>,
) -> Result<Plan, StepError> {
    let situation = Situation {
        goal,
        iteration,
        fitness: prepared.fitness,
        signals: &prepared.signals,
        prompts: &ctx.prompts,
        budget: ctx.config.learning.context_tokens,
        execution: ctx.config.execution,
    };
    let span = tracing::info_span!(
        "planner.plan",
        actor = KIND.name(),
        iteration = iteration as i64,
        capability = tracing::field::Empty,
        prompt.template = tracing::field::Empty,
        prompt.tokens = tracing::field::Empty,
        prompt.budget = situation.budget as i64,
        rules = advice.rules.len() as i64,
        relevant = advice.relevant.len() as i64,
    );
    let plan = span.in_scope(|| logic::make_plan(&situation, advice, capabilities, research))?;
    span.record("capability", plan.capability.as_str());
    if let Some(name) = &plan.prompt_name {
        span.record("prompt.template", name.as_str());
        span.record("prompt.tokens", plan.prompt_tokens as i64);
    }
    step(
        ctx,
        iteration,
        "plan",
        format!("{} ({})", plan.capability, plan.rationale),
    );
    tracing::debug!(iteration, capability = %plan.capability, rationale = %plan.rationale, "plan");
    Ok(plan)
}

/// The executor runs the plan; what it spent is recorded at once.
pub(super) async fn execute(ctx: &Context, plan: &Plan) -> Result<JobOutcome, StepError> {
    let for_executor = plan.clone();
    let job: JobOutcome = messages::call(
        ActorKind::Executor,
        ctx.config.job_timeout + MARGIN,
        |reply| ExecutorMsg::Execute {
            plan: for_executor,
            reply,
        },
    )
    .await?;
    record_usage(job.usage).await?;
    step(
        ctx,
        plan.iteration,
        "execute",
        format!(
            "job {} {} ({} input / {} output tokens)",
            job.job_id,
            job.status.as_str(),
            job.usage.input_tokens,
            job.usage.output_tokens
        ),
    );
    Ok(job)
}

/// A job a rate limit or an overloaded API turned away ends the attempt
/// as a wait, not as the capability's failure; one whose login is gone
/// pauses the run.
pub(super) fn turned_away(job: &JobOutcome) -> Result<(), StepError> {
    if job.status == JobStatus::Completed {
        return Ok(());
    }
    if let Some(reason) = logic::login_lost(job) {
        return Err(StepError::LoginLost(reason));
    }
    if let Some(until) = job.claude.rate_limited_until_ms {
        return Err(StepError::RateLimited {
            until_ms: Some(until),
            reason: "rate limit".into(),
        });
    }
    if job.claude.overloaded() {
        return Err(StepError::RateLimited {
            until_ms: None,
            reason: "the API is overloaded (529); backing off".into(),
        });
    }
    Ok(())
}

/// The modifier validates a completed job's change and commits or rolls it
/// back; after a failed job it only puts the worktree back. `None` is the
/// failed job's missing verdict.
async fn validate(
    ctx: &Context,
    plan: &Plan,
    prepared: &Prepared,
    job: &JobOutcome,
) -> Result<Option<Verdict>, StepError> {
    if job.status != JobStatus::Completed {
        // A failed job may have edited half a change: put the worktree back.
        messages::call_common(ActorKind::Modifier, slow(ctx), Common::Revert).await??;
        return Ok(None);
    }
    let deadline = if ctx.config.mode == Mode::Supervised {
        slow(ctx) + ctx.config.approval_timeout
    } else {
        slow(ctx)
    };
    let iteration = plan.iteration;
    let summary = plan.capability.clone();
    let fitness_before = prepared.fitness;
    let started_from = prepared.started_from;
    let verdict = messages::call(ActorKind::Modifier, deadline, |reply| {
        ModifierMsg::Validate {
            iteration,
            summary,
            fitness_before,
            started_from,
            reply,
        }
    })
    .await??;
    Ok(Some(verdict))
}

/// Repair turns: a change refused by validation or a safety rule goes back
/// into the worktree and to the same Claude Code session (`--resume`) with
/// the failing lines, up to `[cognition] repair_turns` times. The iteration
/// is judged by the last verdict, with what every turn spent; `true` when a
/// turn was taken. A repair job that fails puts the worktree back and the
/// refusal stands.
async fn repair(
    ctx: &Context,
    plan: &Plan,
    prepared: &Prepared,
    mut job: JobOutcome,
    mut verdict: Option<Verdict>,
) -> Result<(JobOutcome, Option<Verdict>, bool), StepError> {
    let mut repaired = false;
    for turn in 1..=ctx.config.repair_turns {
        let (Some(session), Some(prompt)) = (
            job.claude.session_id.clone(),
            logic::repair_prompt(verdict.as_ref()),
        ) else {
            break;
        };
        let iteration = plan.iteration;
        let refused = messages::call(ActorKind::Modifier, slow(ctx), |reply| {
            ModifierMsg::Reopen { iteration, reply }
        })
        .await??;
        step(
            ctx,
            iteration,
            "repair",
            format!(
                "turn {turn}: resuming session {session} on the refused change {}",
                &refused[..refused.len().min(10)]
            ),
        );
        let again = execute(ctx, &logic::repair_plan(plan, session, prompt)).await?;
        turned_away(&again)?;
        let completed = again.status == JobStatus::Completed;
        job = logic::after_repair(job, again);
        repaired = true;
        if !completed {
            messages::call_common(ActorKind::Modifier, slow(ctx), Common::Revert).await??;
            break;
        }
        verdict = validate(ctx, plan, prepared, &job).await?;
    }
    Ok((job, verdict, repaired))
}

/// The learner records the experience; `after` is what the workspace
/// showed once its change was kept.
pub(super) async fn learn(
    ctx: &Context,
    experience: &Experience,
    after: Option<Signals>,
) -> Result<(), StepError> {
    let recorded = Box::new(experience.clone());
    let after = after.map(Box::new);
    messages::call(ActorKind::Learner, QUICK, |reply| LearnerMsg::Record {
        experience: recorded,
        after,
        reply,
    })
    .await?;
    step(
        ctx,
        experience.iteration,
        "learn",
        format!(
            "{} → {}",
            experience.capability,
            experience.outcome.as_str()
        ),
    );
    Ok(())
}

/// The commit: the log entry, the experience and every actor's snapshot in
/// one store transaction, flushed. Only then is the iteration done.
pub(super) async fn commit(
    ctx: &Context,
    mut snapshot: PlannerSnapshot,
    committed: &Iteration,
    experience: &Experience,
    siblings: &[crate::domain::Sibling],
) -> Result<(), StepError> {
    snapshot.committed = committed.number;
    snapshot.last_fitness = committed.head_fitness();
    let mut snapshots = vec![make_snapshot(KIND, SCHEMA, &snapshot)?];
    for kind in ActorKind::ALL.into_iter().filter(|k| *k != KIND) {
        snapshots.push(messages::call_common(kind, QUICK, Common::Snapshot).await??);
    }
    for snapshot in &mut snapshots {
        snapshot.iteration = committed.number;
    }
    crash_point!("iteration.before_store_commit");
    ctx.store
        .commit_iteration(committed, Some(experience), siblings, &snapshots)
        .await?;
    step(ctx, committed.number, "commit", committed.summary.clone());
    forget_old(ctx, committed.number);
    Ok(())
}

/// What the retention no longer keeps goes after each commit: a few records
/// a time, so the store's size is bounded by the retention, not the run's
/// length. A failure is said and tried again at the next commit.
fn forget_old(ctx: &Context, committed: u64) {
    match ctx.store.prune(ctx.config.retention, committed) {
        Ok(pruned) if !pruned.variants.is_empty() => {
            // The candidates' lanes archive their changes on refs of their own.
            let lanes = (0..ctx.config.candidates).filter_map(|slot| {
                let lane = ctx
                    .config
                    .state_dir
                    .join("candidates")
                    .join(slot.to_string());
                lane.exists()
                    .then_some(crate::workspace::Workspace { path: lane })
            });
            for workspace in std::iter::once(ctx.workspace.clone()).chain(lanes) {
                if let Err(error) = workspace.forget_variants(&pruned.variants) {
                    tracing::warn!(%error, "cannot delete the variant refs beyond the retention");
                }
            }
        }
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "cannot prune records beyond the retention"),
    }
}

/// Announces one step of an iteration (for `agent ctl watch` and the log).
pub(super) fn step(ctx: &Context, iteration: u64, step: &'static str, detail: String) {
    tracing::debug!(iteration, step, %detail, "iteration step");
    ctx.events.emit(Event::Step {
        iteration,
        step,
        detail,
    });
}

/// The deadline of the modifier's slow steps (validation and fitness).
pub(super) fn slow(ctx: &Context) -> Duration {
    ctx.config.validation_timeout * 2 + MARGIN
}

/// Tells the governor what a job spent; durable at once.
async fn record_usage(usage: Usage) -> Result<(), PeerError> {
    if usage == Usage::default() {
        return Ok(());
    }
    messages::call(ActorKind::Governor, QUICK, |reply| {
        GovernorMsg::RecordUsage { usage, reply }
    })
    .await
}
