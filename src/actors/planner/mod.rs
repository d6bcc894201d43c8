//! The planner: drives the iterations. This file is the actor — run state,
//! ticks, pause and resume, goal changes, drain and abandon on shutdown, and
//! what happens after each attempt. Each iteration runs as a driver task off
//! the mailbox (so status and control stay answerable), step by step in
//! `iteration.rs`; the pure planning and assessment logic is in `logic.rs`.
//!
//! The commit is the iteration's log entry, its experience and every actor's
//! snapshot written in one store transaction and flushed; only then is the
//! iteration done. Anything that fails before that abandons the attempt: every
//! actor reverts to its committed state and the same iteration runs again.

mod iteration;
pub mod logic;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use super::{Context, inject, load_snapshot, make_snapshot};
use crate::domain::{ActorKind, Iteration, OutcomeCounts, PlannerStatus, RunPhase, RunState};
use crate::events::Event;
use crate::messages::{
    self, ActorError, Common, ExecutorMsg, GovernorMsg, IterationEnd, ModifierMsg, PlannerMsg,
};
use iteration::QUICK;

const KIND: ActorKind = ActorKind::Planner;
pub const SCHEMA: u32 = 1;

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
    /// Attempts abandoned in a row since the last commit (or resume).
    failures: u32,
    /// Why the run is paused, while it is.
    pause_reason: Option<String>,
    /// Why the last permit was denied (a budget), until one is granted.
    waiting: Option<String>,
    /// Committed iterations by outcome (counted from the store at start).
    outcomes: OutcomeCounts,
    /// Validation was seen to pass (or to fail, when the run proceeds) on
    /// the base of this run and goal.
    base_checked: bool,
    /// The latest committed iterations, oldest first, as loop detection
    /// needs them (read from the store at start).
    recent: std::collections::VecDeque<Iteration>,
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
        let outcomes = ctx.store.outcome_counts()?;
        let recent = ctx.store.iterations(loop_window(&ctx))?.into();
        let mut snapshot = load_snapshot(&ctx.store, KIND, SCHEMA)?.unwrap_or(PlannerSnapshot {
            goal: ctx.config.goal.clone(),
            committed,
            last_fitness: None,
        });
        // The daemon resolved the goal (resumed, or replaced on request).
        snapshot.goal = ctx.config.goal.clone();
        // Whatever a previous planner left half-done (in this process or one
        // that was killed) is undone before the first iteration.
        let task = tokio::spawn(revert_all(myself.clone(), snapshot.committed + 1, None));
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
            failures: 0,
            pause_reason: None,
            waiting: None,
            base_checked: false,
            outcomes,
            recent,
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
                let check_base = !state.base_checked;
                let task = tokio::spawn(async move {
                    let end = iteration::drive(&ctx, snapshot, iteration, links, check_base).await;
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
                    pause_reason: state.pause_reason.clone(),
                    waiting: state.waiting.clone(),
                    failures: state.failures,
                    outcomes: state.outcomes,
                });
            }
            PlannerMsg::Paused(paused) => {
                state.links.extend(crate::telemetry::current_link());
                match (paused, state.run_state) {
                    (true, RunState::Running) => {
                        state.run_state = RunState::Paused;
                        state.pause_reason = Some("paused by an operator".into());
                    }
                    (false, RunState::Paused) => {
                        state.run_state = RunState::Running;
                        state.pause_reason = None;
                        // A resume is the operator's word that the cause is
                        // fixed: the next failure starts a new count.
                        state.failures = 0;
                    }
                    _ => {}
                }
                let _ = myself.cast(PlannerMsg::Tick);
            }
            PlannerMsg::SetGoal { goal, reply } => {
                state.links.extend(crate::telemetry::current_link());
                let goal = goal.trim().to_string();
                if goal.is_empty() {
                    let _ = reply.send(Err(ActorError::Invalid(
                        "the goal must be a non-empty sentence".into(),
                    )));
                    return Ok(());
                }
                // The run record changes now (durable); the planner's snapshot
                // carries the goal from the next committed iteration on.
                let result = match state.ctx.store.run() {
                    Ok(Some(mut run)) => {
                        run.goal = goal.clone();
                        run.state = RunPhase::Running;
                        state
                            .ctx
                            .store
                            .put_run(&run)
                            .await
                            .map_err(|e| ActorError::Store(e.to_string()))
                    }
                    Ok(None) => Err(ActorError::Store("no run is stored".to_string())),
                    Err(error) => Err(ActorError::Store(error.to_string())),
                };
                if result.is_ok() {
                    // A new goal is judged from its own base check.
                    state.base_checked = false;
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
                Common::Ping(reply) => {
                    let _ = reply.send(());
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
    if !matches!(end, IterationEnd::Wait { paused: false, .. }) {
        state.waiting = None;
    }
    match end {
        IterationEnd::Committed(committed) => {
            state.failures = 0;
            state.base_checked = true;
            state.outcomes.add(committed.outcome);
            state.snapshot.committed = committed.number;
            state.snapshot.last_fitness = committed.head_fitness();
            tracing::info!(
                iteration = committed.number,
                capability = %committed.capability,
                outcome = %committed.outcome,
                "{}",
                committed.summary
            );
            state.recent.push_back(committed.clone());
            while state.recent.len() > loop_window(ctx) {
                state.recent.pop_front();
            }
            ctx.events.emit(Event::IterationCommitted(committed));
            if state.run_state == RunState::Running
                && let Some(why) =
                    logic::loop_detected(state.recent.make_contiguous(), ctx.config.loops)
            {
                let why =
                    format!("{why}; change the goal or the workspace, then `agent ctl resume`");
                tracing::error!(iteration, reason = %why, "pausing the run");
                state.run_state = RunState::Paused;
                state.pause_reason = Some(why.clone());
                ctx.events.emit(Event::RunPaused {
                    rule: "loop",
                    reason: why.clone(),
                });
                // Paused at the governor too (audited), so a restart stays paused.
                tokio::spawn(async move {
                    let paused = messages::call(ActorKind::Governor, QUICK, |reply| {
                        GovernorMsg::SetPaused {
                            paused: true,
                            reason: Some(why),
                            reply,
                        }
                    })
                    .await;
                    if !matches!(paused, Ok(Ok(()))) {
                        tracing::error!(?paused, "the governor did not record the pause");
                    }
                });
            }
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
            if paused {
                state.pause_reason = Some(reason.clone());
            } else {
                state.waiting = Some(reason.clone());
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
            state.failures += 1;
            tracing::warn!(iteration, %reason, failures = state.failures, "iteration abandoned; reverting every actor");
            ctx.events.emit(Event::IterationAbandoned {
                iteration,
                reason: reason.clone(),
            });
            // A failure that does not go away pauses the run, visibly,
            // instead of being retried forever.
            let pause = (state.failures >= ctx.config.pause_after_failures
                && state.run_state == RunState::Running)
                .then(|| logic::pause_reason(state.failures, &reason));
            if let Some(why) = &pause {
                tracing::error!(iteration, reason = %why, "pausing the run");
                state.run_state = RunState::Paused;
                state.pause_reason = Some(why.clone());
                ctx.events.emit(Event::RunPaused {
                    rule: "persistent_failure",
                    reason: why.clone(),
                });
            }
            let task = tokio::spawn(revert_all(myself.clone(), iteration, pause));
            state.in_flight = Some(InFlight {
                iteration,
                _task: AbortOnDrop(task),
            });
        }
        IterationEnd::BaseFails { reason } => {
            let why = format!(
                "{reason}; fix the workspace (or set [validation] failing_base = \"proceed\" when the goal is to make it pass), then `agent ctl resume`"
            );
            pause_at_once(myself, state, iteration, "persistent_failure", why);
        }
        IterationEnd::NothingLeft { reason } => {
            pause_at_once(myself, state, iteration, "loop", reason);
        }
        IterationEnd::Reverted => {
            if state.run_state != RunState::Running {
                return;
            }
            if state.failures == 0 {
                let _ = myself.cast(PlannerMsg::Tick);
            } else {
                let config = &ctx.config;
                let delay =
                    logic::retry_delay(state.failures, config.retry_initial, config.retry_max);
                tracing::info!(failures = state.failures, retry_in = %humantime::format_duration(delay), "next attempt after a back-off");
                myself.send_after(delay, || PlannerMsg::Tick);
            }
        }
    }
}

/// Pauses the run now, with `why` (raised as the alert `rule`): what ended
/// the attempt would end the next one the same way. Every peer drops the
/// attempt's state first.
fn pause_at_once(
    myself: &ActorRef<PlannerMsg>,
    state: &mut PlannerState,
    iteration: u64,
    rule: &'static str,
    why: String,
) {
    tracing::error!(iteration, reason = %why, "pausing the run");
    state.run_state = RunState::Paused;
    state.pause_reason = Some(why.clone());
    state.ctx.events.emit(Event::RunPaused {
        rule,
        reason: why.clone(),
    });
    let task = tokio::spawn(revert_all(myself.clone(), iteration, Some(why)));
    state.in_flight = Some(InFlight {
        iteration,
        _task: AbortOnDrop(task),
    });
}

/// Asks every peer to drop uncommitted state, then reports `Reverted`; with
/// a `pause` reason, first makes the pause durable in the governor.
/// How many committed iterations loop detection looks back on.
fn loop_window(ctx: &Context) -> usize {
    let rules = ctx.config.loops;
    rules
        .same_plan
        .max(rules.same_refused_change * 4)
        .max(rules.no_progress) as usize
}

async fn revert_all(planner: ActorRef<PlannerMsg>, iteration: u64, pause: Option<String>) {
    if let Some(reason) = pause {
        let paused = messages::call(ActorKind::Governor, QUICK, |reply| GovernorMsg::SetPaused {
            paused: true,
            reason: Some(reason),
            reply,
        })
        .await;
        if !matches!(paused, Ok(Ok(()))) {
            tracing::error!(?paused, "the governor did not record the pause");
        }
    }
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
