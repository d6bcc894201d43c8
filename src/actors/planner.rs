//! The planner: drives the iterations. Each iteration runs as a driver task
//! off the mailbox (so status and control stay answerable): governor permit →
//! modifier prepares the worktree and measures fitness → learner advises →
//! researcher, when the backend is a model → a typed [`Plan`] → executor →
//! modifier validates and commits or rolls back → learner records → commit.
//!
//! The commit is the iteration's log entry, its experience and every actor's
//! snapshot written in one store transaction and flushed; only then is the
//! iteration done. Anything that fails before that abandons the attempt: every
//! actor reverts to its committed state and the same iteration runs again.

use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::{Context, load_snapshot, make_snapshot};
use crate::events::Event;
use crate::messages::{
    self, ActorKind, Advice, Capability, Common, ExecutorMsg, Experience, GovernorMsg,
    IterationEnd, JobOutcome, JobStatus, LearnerMsg, ModifierMsg, Outcome, Permit, Plan,
    PlannerMsg, PlannerStatus, Research, ResearcherMsg, RunState, Usage, Verdict, inject,
};
use crate::store::{ExperienceRecord, IterationRecord, now_ms};

const KIND: ActorKind = ActorKind::Planner;
const SCHEMA: u32 = 1;
/// Timeout of quick questions to peers.
const QUICK: Duration = Duration::from_secs(15);
/// Added to the configured timeouts of slow steps.
const MARGIN: Duration = Duration::from_secs(30);
/// Pause before an abandoned iteration is tried again.
const RETRY_ABANDONED: Duration = Duration::from_secs(1);

/// The planner's committed state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannerSnapshot {
    pub goal: String,
    /// Committed iterations.
    pub committed: u64,
    pub last_fitness: Option<f64>,
}

pub struct Planner;

/// A task that is aborted when dropped (when the planner dies).
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct InFlight {
    iteration: u64,
    _task: AbortOnDrop,
}

pub struct PlannerState {
    ctx: Context,
    snapshot: PlannerSnapshot,
    run_state: RunState,
    in_flight: Option<InFlight>,
    /// Operators' requests (ctl spans) the next iteration's trace links to.
    links: Vec<crate::telemetry::SpanLink>,
    drain_waiters: Vec<RpcReplyPort<()>>,
}

impl Actor for Planner {
    type Msg = PlannerMsg;
    type State = PlannerState;
    type Arguments = Context;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        ctx: Context,
    ) -> Result<Self::State, ActorProcessingErr> {
        let committed = ctx.store.last_iteration()?.map_or(0, |r| r.number);
        let mut snapshot = load_snapshot(&ctx.store, KIND, SCHEMA)?.unwrap_or(PlannerSnapshot {
            goal: ctx.config.goal.clone(),
            committed,
            last_fitness: None,
        });
        // The daemon resolved the goal (resumed, or replaced on request).
        snapshot.goal = ctx.config.goal.clone();
        // Whatever a previous planner left half-done (in this process or one
        // that was killed) is undone before the first iteration.
        let task = tokio::spawn(revert_all(myself.clone(), snapshot.committed + 1));
        Ok(PlannerState {
            in_flight: Some(InFlight {
                iteration: snapshot.committed + 1,
                _task: AbortOnDrop(task),
            }),
            ctx,
            snapshot,
            run_state: RunState::Running,
            drain_waiters: Vec::new(),
            links: Vec::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: PlannerMsg,
        state: &mut PlannerState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            PlannerMsg::Tick => {
                if state.in_flight.is_some() || state.run_state != RunState::Running {
                    return Ok(());
                }
                let iteration = state.snapshot.committed + 1;
                let ctx = state.ctx.clone();
                let snapshot = state.snapshot.clone();
                let me = myself.clone();
                let links = std::mem::take(&mut state.links);
                let task = tokio::spawn(async move {
                    let end = drive(&ctx, snapshot, iteration, links).await;
                    let _ = me.cast(PlannerMsg::IterationEnded { iteration, end });
                });
                state.in_flight = Some(InFlight {
                    iteration,
                    _task: AbortOnDrop(task),
                });
            }
            PlannerMsg::IterationEnded { iteration, end } => {
                if state.in_flight.as_ref().map(|f| f.iteration) != Some(iteration) {
                    return Ok(());
                }
                state.in_flight = None;
                on_iteration_end(&myself, state, iteration, end);
                if state.in_flight.is_none() && state.run_state == RunState::Stopping {
                    for waiter in state.drain_waiters.drain(..) {
                        let _ = waiter.send(());
                    }
                }
            }
            PlannerMsg::Status(reply) => {
                let _ = reply.send(PlannerStatus {
                    goal: state.snapshot.goal.clone(),
                    run_state: state.run_state,
                    iteration: state.snapshot.committed,
                    in_flight: state.in_flight.as_ref().map(|f| f.iteration),
                    last_fitness: state.snapshot.last_fitness,
                });
            }
            PlannerMsg::Paused(paused) => {
                state.links.extend(crate::telemetry::current_link());
                match (paused, state.run_state) {
                    (true, RunState::Running) => state.run_state = RunState::Paused,
                    (false, RunState::Paused) => state.run_state = RunState::Running,
                    _ => {}
                }
                let _ = myself.cast(PlannerMsg::Tick);
            }
            PlannerMsg::SetGoal { goal, reply } => {
                state.links.extend(crate::telemetry::current_link());
                let goal = goal.trim().to_string();
                if goal.is_empty() {
                    let _ = reply.send(Err("the goal must be a non-empty sentence".into()));
                    return Ok(());
                }
                // The run record changes now (durable); the planner's snapshot
                // carries the goal from the next committed iteration on.
                let result = match state.ctx.store.run() {
                    Ok(Some(mut run)) => {
                        run.goal = goal.clone();
                        run.state = "running".into();
                        state
                            .ctx
                            .store
                            .put_run(&run)
                            .await
                            .map_err(|e| e.to_string())
                    }
                    Ok(None) => Err("no run is stored".to_string()),
                    Err(error) => Err(error.to_string()),
                };
                if result.is_ok() {
                    tracing::info!(%goal, "goal changed by an operator");
                    state.snapshot.goal = goal.clone();
                    state.ctx.events.emit(Event::GoalChanged { goal });
                }
                let _ = reply.send(result);
            }
            PlannerMsg::Drain(reply) => {
                if state.run_state != RunState::Finished {
                    state.run_state = RunState::Stopping;
                }
                if state.in_flight.is_none() {
                    let _ = reply.send(());
                } else {
                    state.drain_waiters.push(reply);
                }
            }
            PlannerMsg::Abandon(reply) => {
                if let Some(in_flight) = state.in_flight.take() {
                    drop(in_flight);
                    tracing::warn!("shutdown deadline passed: abandoning the in-flight iteration");
                    revert_peers(false).await;
                }
                for waiter in state.drain_waiters.drain(..) {
                    let _ = waiter.send(());
                }
                let _ = reply.send(());
            }
            PlannerMsg::Common(common) => match common {
                Common::Snapshot(reply) => {
                    let _ = reply.send(make_snapshot(KIND, SCHEMA, &state.snapshot));
                }
                Common::Revert(reply) => {
                    let loaded = load_snapshot::<PlannerSnapshot>(&state.ctx.store, KIND, SCHEMA);
                    let _ = reply.send(loaded.map(|s| {
                        if let Some(s) = s {
                            state.snapshot = s;
                        }
                    }));
                }
                Common::Fault(fault) => inject(KIND, fault).await?,
            },
        }
        Ok(())
    }
}

fn on_iteration_end(
    myself: &ActorRef<PlannerMsg>,
    state: &mut PlannerState,
    iteration: u64,
    end: IterationEnd,
) {
    let ctx = &state.ctx;
    match end {
        IterationEnd::Committed(record) => {
            state.snapshot.committed = record.number;
            state.snapshot.last_fitness = head_fitness(&record);
            tracing::info!(
                iteration = record.number,
                capability = %record.capability,
                outcome = %record.outcome,
                "{}",
                record.summary
            );
            ctx.events.emit(Event::IterationCommitted(record));
            let _ = myself.cast(PlannerMsg::Tick);
        }
        IterationEnd::Wait {
            reason,
            retry_after,
            paused,
        } => {
            // The pause may predate this planner (a restart): show it.
            if paused && state.run_state == RunState::Running {
                state.run_state = RunState::Paused;
            }
            tracing::debug!(%reason, retry_after = %humantime::format_duration(retry_after), "permit denied; waiting");
            ctx.events.emit(Event::PermitWaiting { reason });
            myself.send_after(retry_after, || PlannerMsg::Tick);
        }
        IterationEnd::Finished { reason } => {
            state.run_state = RunState::Finished;
            tracing::info!(%reason, committed = state.snapshot.committed, "run finished");
            ctx.events.emit(Event::RunFinished { reason });
        }
        IterationEnd::Abandoned { reason } => {
            tracing::warn!(iteration, %reason, "iteration abandoned; reverting every actor and trying again");
            ctx.events
                .emit(Event::IterationAbandoned { iteration, reason });
            let task = tokio::spawn(revert_all(myself.clone(), iteration));
            state.in_flight = Some(InFlight {
                iteration,
                _task: AbortOnDrop(task),
            });
        }
        IterationEnd::Reverted => {
            if state.run_state == RunState::Paused {
                return;
            }
            myself.send_after(RETRY_ABANDONED, || PlannerMsg::Tick);
        }
    }
}

/// Asks every peer to drop uncommitted state, then reports `Reverted`.
async fn revert_all(planner: ActorRef<PlannerMsg>, iteration: u64) {
    // A job of this iteration still on the MCP server (the agent was killed
    // while it ran) has edited, or will edit, the worktree: keep it.
    let pending = messages::call(ActorKind::Executor, QUICK, |reply| {
        ExecutorMsg::PendingJob { iteration, reply }
    })
    .await
    .ok()
    .flatten();
    revert_peers(pending.is_some()).await;
    let _ = planner.cast(PlannerMsg::IterationEnded {
        iteration,
        end: IterationEnd::Reverted,
    });
}

/// Every peer drops uncommitted state; the modifier also resets the worktree
/// unless `keep_worktree`.
async fn revert_peers(keep_worktree: bool) {
    for kind in ActorKind::ALL.into_iter().filter(|k| *k != KIND) {
        // An actor that is restarting reloads its snapshot in pre_start anyway.
        let reverted = if kind == ActorKind::Modifier && keep_worktree {
            messages::call(kind, QUICK, ModifierMsg::Reload).await
        } else {
            messages::call_common(kind, QUICK, Common::Revert).await
        };
        if let Ok(Err(error)) = reverted {
            tracing::warn!(actor = %kind, %error, "revert failed");
        }
    }
}

/// One attempt at iteration `iteration`.
async fn drive(
    ctx: &Context,
    snapshot: PlannerSnapshot,
    iteration: u64,
    links: Vec<crate::telemetry::SpanLink>,
) -> IterationEnd {
    let permit = messages::call(ActorKind::Governor, QUICK, |reply| {
        GovernorMsg::RequestPermit { iteration, reply }
    })
    .await;
    match permit {
        Ok(Permit::Granted) => {}
        Ok(Permit::Paused { retry_after }) => {
            return IterationEnd::Wait {
                reason: "paused by an operator".into(),
                retry_after,
                paused: true,
            };
        }
        Ok(Permit::Wait {
            reason,
            retry_after,
        }) => {
            return IterationEnd::Wait {
                reason,
                retry_after,
                paused: false,
            };
        }
        Ok(Permit::Finished { reason }) => return IterationEnd::Finished { reason },
        Err(error) => {
            return IterationEnd::Wait {
                reason: error.to_string(),
                retry_after: ctx.config.permit_retry_after,
                paused: false,
            };
        }
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
    match run_steps(ctx, snapshot, iteration)
        .instrument(root.clone())
        .await
    {
        Ok(record) => {
            root.record("outcome", record.outcome.as_str());
            root.record("capability", record.capability.as_str());
            if let Some(before) = record.fitness_before {
                root.record("fitness.before", before);
            }
            if let Some(after) = record.fitness_after {
                root.record("fitness.after", after);
            }
            IterationEnd::Committed(record)
        }
        Err(reason) => {
            root.record("outcome", "abandoned");
            root.record("otel.status_code", "ERROR");
            root.in_scope(|| tracing::error!(%reason, "iteration abandoned before its commit"));
            IterationEnd::Abandoned { reason }
        }
    }
}

async fn run_steps(
    ctx: &Context,
    mut snapshot: PlannerSnapshot,
    iteration: u64,
) -> Result<IterationRecord, String> {
    let started = Instant::now();
    let slow = ctx.config.validation_timeout * 2 + MARGIN;
    let pending = messages::call(ActorKind::Executor, QUICK, |reply| {
        ExecutorMsg::PendingJob { iteration, reply }
    })
    .await
    .map_err(|e| e.to_string())?;
    if let Some(remote) = &pending {
        tracing::info!(iteration, %remote, "a job of this iteration is still on the MCP server; keeping its worktree");
    }
    let keep_worktree = pending.is_some();
    let prepared = messages::call(ActorKind::Modifier, slow, |reply| ModifierMsg::Prepare {
        iteration,
        keep_worktree,
        reply,
    })
    .await
    .map_err(|e| e.to_string())??;
    step(
        ctx,
        iteration,
        "prepare",
        format!(
            "base {}, fitness {}",
            &prepared.base_commit[..prepared.base_commit.len().min(10)],
            prepared.fitness.map_or("unknown".into(), |f| f.to_string())
        ),
    );
    let capabilities: Vec<Capability> =
        messages::call(ActorKind::Executor, QUICK, ExecutorMsg::Capabilities)
            .await
            .map_err(|e| e.to_string())?;
    let candidates: Vec<String> = capabilities.iter().map(|c| c.id.clone()).collect();
    let advice = messages::call(ActorKind::Learner, QUICK, |reply| LearnerMsg::Advise {
        candidates,
        reply,
    })
    .await
    .map_err(|e| e.to_string())?;
    let research = if ctx.backend.name() == "offline" {
        None
    } else {
        let topic = snapshot.goal.clone();
        let research = messages::call(
            ActorKind::Researcher,
            ctx.config.job_timeout + MARGIN,
            |reply| ResearcherMsg::Research { topic, reply },
        )
        .await
        .map_err(|e| e.to_string())?;
        record_usage(research.usage).await?;
        Some(research)
    };
    let situation = Situation {
        goal: &snapshot.goal,
        iteration,
        fitness: prepared.fitness,
        template: &ctx.prompt_template,
        execution: ctx.config.execution,
    };
    let plan = tracing::info_span!(
        "planner.plan",
        actor = KIND.name(),
        iteration = iteration as i64
    )
    .in_scope(|| make_plan(&situation, &advice, &capabilities, research.as_ref()))?;
    step(
        ctx,
        iteration,
        "plan",
        format!("{} ({})", plan.capability, plan.rationale),
    );
    tracing::debug!(iteration, capability = %plan.capability, rationale = %plan.rationale, "plan");
    let job_timeout = ctx.config.job_timeout + MARGIN;
    let plan_for_executor = plan.clone();
    let job: JobOutcome = messages::call(ActorKind::Executor, job_timeout, |reply| {
        ExecutorMsg::Execute {
            plan: plan_for_executor,
            reply,
        }
    })
    .await
    .map_err(|e| e.to_string())?;
    let usage = job.usage;
    record_usage(usage).await?;
    step(
        ctx,
        iteration,
        "execute",
        format!(
            "job {} {} ({} input / {} output tokens)",
            job.job_id,
            job.status.as_str(),
            usage.input_tokens,
            usage.output_tokens
        ),
    );

    let validate_deadline = if ctx.config.mode == crate::config::Mode::Supervised {
        slow + ctx.config.approval_timeout
    } else {
        slow
    };
    let (outcome, verdict) = if job.status == JobStatus::Completed {
        let summary = plan.capability.clone();
        let fitness_before = prepared.fitness;
        let verdict = messages::call(ActorKind::Modifier, validate_deadline, |reply| {
            ModifierMsg::Validate {
                iteration,
                summary,
                fitness_before,
                reply,
            }
        })
        .await
        .map_err(|e| e.to_string())??;
        let outcome = match verdict {
            Verdict::Accepted { .. } => Outcome::Accepted,
            Verdict::Rejected { .. } => Outcome::Rejected,
            Verdict::NoChange => Outcome::NoChange,
        };
        (outcome, Some(verdict))
    } else {
        // A failed job may have edited half a change: put the worktree back.
        messages::call_common(ActorKind::Modifier, slow, Common::Revert)
            .await
            .map_err(|e| e.to_string())??;
        (Outcome::JobFailed, None)
    };

    let fitness_after = match &verdict {
        Some(Verdict::Accepted { fitness_after, .. }) => Some(*fitness_after),
        Some(Verdict::Rejected { fitness_after, .. }) => *fitness_after,
        _ => prepared.fitness,
    };
    let error_signature = match (&verdict, &job.error) {
        (Some(Verdict::Rejected { reason, .. }), _) => Some(signature(reason)),
        (None, Some(error)) => Some(signature(error)),
        _ => None,
    };
    let experience = Experience {
        iteration,
        capability: plan.capability.clone(),
        outcome,
        fitness_before: prepared.fitness,
        fitness_after,
        usage,
        duration: started.elapsed(),
        error_signature,
    };
    step(ctx, iteration, "validate", outcome.as_str().to_string());
    let recorded = experience.clone();
    messages::call(ActorKind::Learner, QUICK, |reply| LearnerMsg::Record {
        experience: recorded,
        reply,
    })
    .await
    .map_err(|e| e.to_string())?;
    step(
        ctx,
        iteration,
        "learn",
        format!("{} → {}", experience.capability, outcome.as_str()),
    );

    // The commit: every actor's snapshot, the log entry and the experience.
    let commit = match &verdict {
        Some(Verdict::Accepted { commit, .. }) => Some(commit.clone()),
        _ => None,
    };
    let summary = summarize(&experience, verdict.as_ref(), &job);
    let record = IterationRecord {
        number: iteration,
        goal: snapshot.goal.clone(),
        capability: plan.capability.clone(),
        outcome: outcome.as_str().to_string(),
        fitness_before: prepared.fitness,
        fitness_after,
        input_tokens: usage.input_tokens,
        output_tokens: usage.output_tokens,
        cost_usd: usage.cost_usd,
        duration_ms: experience.duration.as_millis() as u64,
        commit,
        summary,
        finished_at_ms: now_ms(),
    };
    snapshot.committed = iteration;
    snapshot.last_fitness = head_fitness(&record);
    let mut snapshots = vec![make_snapshot(KIND, SCHEMA, &snapshot)?];
    for kind in ActorKind::ALL.into_iter().filter(|k| *k != KIND) {
        snapshots.push(
            messages::call_common(kind, QUICK, Common::Snapshot)
                .await
                .map_err(|e| e.to_string())??,
        );
    }
    for snapshot in &mut snapshots {
        snapshot.iteration = iteration;
    }
    ctx.store
        .commit_iteration(&record, Some(&experience_record(&experience)), &snapshots)
        .await
        .map_err(|e| format!("commit failed: {e}"))?;
    step(ctx, iteration, "commit", record.summary.clone());
    Ok(record)
}

/// Announces one step of an iteration (for `agent ctl watch` and the log).
fn step(ctx: &Context, iteration: u64, step: &'static str, detail: String) {
    tracing::debug!(iteration, step, %detail, "iteration step");
    ctx.events.emit(Event::Step {
        iteration,
        step,
        detail,
    });
}

/// The fitness of the agent branch's head after an iteration.
fn head_fitness(record: &IterationRecord) -> Option<f64> {
    if record.outcome == Outcome::Accepted.as_str() {
        record.fitness_after
    } else {
        record.fitness_before
    }
}

async fn record_usage(usage: Usage) -> Result<(), String> {
    if usage == Usage::default() {
        return Ok(());
    }
    messages::call(ActorKind::Governor, QUICK, |reply| {
        GovernorMsg::RecordUsage { usage, reply }
    })
    .await
    .map_err(|e| e.to_string())
}

/// Turns the goal, the fitness, the learner's advice and any research into a
/// plan: the best-ranked capability, with a prompt for model backends.
/// What the planner knows when it plans an iteration.
#[derive(Debug, Clone, Copy)]
pub struct Situation<'a> {
    pub goal: &'a str,
    pub iteration: u64,
    pub fitness: Option<f64>,
    /// The prompt template for model backends.
    pub template: &'a str,
    pub execution: crate::config::Execution,
}

pub fn make_plan(
    situation: &Situation<'_>,
    advice: &Advice,
    capabilities: &[Capability],
    research: Option<&Research>,
) -> Result<Plan, String> {
    let Situation {
        goal,
        iteration,
        fitness,
        template,
        execution,
    } = *situation;
    let best = advice
        .ranked
        .first()
        .ok_or_else(|| "the backend offers no capability to plan with".to_string())?;
    let rationale = if best.attempts == 0 {
        "not tried yet".to_string()
    } else {
        format!(
            "score {:.2}: mean reward {:.2} over {} attempt(s)",
            best.score, best.mean_reward, best.attempts
        )
    };
    let is_model = capabilities
        .iter()
        .any(|c| c.id == best.id && c.id == crate::cognition::claude_cli::CAPABILITY);
    let prompt = is_model.then(|| {
        let recent = if advice.recent.is_empty() {
            "(none yet)".to_string()
        } else {
            advice
                .recent
                .iter()
                .map(|e| {
                    format!(
                        "- iteration {}: {} → {}{}",
                        e.iteration,
                        e.capability,
                        e.outcome.as_str(),
                        e.error_signature
                            .as_ref()
                            .map(|s| format!(" ({s})"))
                            .unwrap_or_default()
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        };
        template
            .replace("{goal}", goal)
            .replace(
                "{fitness}",
                &fitness.map_or("unknown".into(), |f| f.to_string()),
            )
            .replace(
                "{research}",
                research.map_or("(no notes)", |r| {
                    if r.notes.is_empty() {
                        "(no notes)"
                    } else {
                        &r.notes
                    }
                }),
            )
            .replace("{recent}", &recent)
    });
    Ok(Plan {
        iteration,
        capability: best.id.clone(),
        prompt,
        rationale,
        execution,
    })
}

/// A short, stable form of an error: its first line, numbers removed.
fn signature(error: &str) -> String {
    let first = error.lines().next().unwrap_or_default();
    first
        .chars()
        .map(|c| if c.is_ascii_digit() { '#' } else { c })
        .take(120)
        .collect()
}

fn summarize(experience: &Experience, verdict: Option<&Verdict>, job: &JobOutcome) -> String {
    let fitness = |f: Option<f64>| f.map_or("?".to_string(), |f| f.to_string());
    let before = fitness(experience.fitness_before);
    match verdict {
        Some(Verdict::Accepted {
            commit,
            fitness_after,
            files_changed,
        }) => format!(
            "{} accepted: {} file(s), fitness {} → {}, commit {}",
            experience.capability,
            files_changed,
            before,
            fitness_after,
            &commit[..commit.len().min(10)]
        ),
        Some(Verdict::Rejected { reason, .. }) => {
            format!(
                "{} rejected and rolled back: {}",
                experience.capability,
                first_line(reason)
            )
        }
        Some(Verdict::NoChange) => format!(
            "{} changed nothing (fitness {before})",
            experience.capability
        ),
        None => format!(
            "{} job {}: {}",
            experience.capability,
            job.status.as_str(),
            first_line(job.error.as_deref().unwrap_or("no error text"))
        ),
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

fn experience_record(e: &Experience) -> ExperienceRecord {
    ExperienceRecord {
        iteration: e.iteration,
        capability: e.capability.clone(),
        outcome: e.outcome.as_str().to_string(),
        fitness_before: e.fitness_before,
        fitness_after: e.fitness_after,
        input_tokens: e.usage.input_tokens,
        output_tokens: e.usage.output_tokens,
        cost_usd: e.usage.cost_usd,
        duration_ms: e.duration.as_millis() as u64,
        error_signature: e.error_signature.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Execution;
    use crate::messages::RankedCapability;

    fn situation<'a>(
        goal: &'a str,
        iteration: u64,
        fitness: Option<f64>,
        template: &'a str,
    ) -> Situation<'a> {
        Situation {
            goal,
            iteration,
            fitness,
            template,
            execution: Execution::Async,
        }
    }

    fn advice(best: &str, attempts: u64) -> Advice {
        Advice {
            ranked: vec![RankedCapability {
                id: best.into(),
                score: 0.9,
                attempts,
                mean_reward: 0.7,
            }],
            recent: Vec::new(),
        }
    }

    #[test]
    fn a_local_capability_has_no_prompt() {
        let caps = vec![Capability {
            id: "fmt".into(),
            description: String::new(),
        }];
        let plan = make_plan(
            &situation("g", 3, Some(4.0), "{goal}"),
            &advice("fmt", 2),
            &caps,
            None,
        )
        .unwrap();
        assert_eq!(plan.capability, "fmt");
        assert_eq!(plan.iteration, 3);
        assert!(plan.prompt.is_none());
        assert!(plan.rationale.contains("2 attempt"));
    }

    #[test]
    fn a_model_capability_gets_the_rendered_prompt() {
        let caps = vec![Capability {
            id: crate::cognition::claude_cli::CAPABILITY.into(),
            description: String::new(),
        }];
        let research = Research {
            topic: "g".into(),
            notes: "uses median".into(),
            from_cache: true,
            usage: Usage::default(),
        };
        let plan = make_plan(
            &situation(
                "fewer warnings",
                1,
                Some(7.0),
                "G={goal} F={fitness} R={research}",
            ),
            &advice(crate::cognition::claude_cli::CAPABILITY, 0),
            &caps,
            Some(&research),
        )
        .unwrap();
        assert_eq!(
            plan.prompt.as_deref(),
            Some("G=fewer warnings F=7 R=uses median")
        );
    }

    #[test]
    fn no_capability_is_an_error() {
        let empty = Advice {
            ranked: vec![],
            recent: vec![],
        };
        assert!(make_plan(&situation("g", 1, None, ""), &empty, &[], None).is_err());
    }
}
