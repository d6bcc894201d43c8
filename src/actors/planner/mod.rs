//! The planner: drives the iterations. This file is the actor — run state,
//! ticks, status and the snapshot — and its `handle`, one line per message.
//! What operators and the shutdown ask of the run (pause, goal, drain,
//! abandon) is in `control.rs`; what follows each attempt in `ending.rs`.
//! Each iteration runs as a driver task off the mailbox (so status and
//! control stay answerable), step by step in `iteration.rs`; the pure
//! planning and assessment logic is in `logic.rs`.
//!
//! The commit is the iteration's log entry, its experience and every actor's
//! snapshot written in one store transaction and flushed; only then is the
//! iteration done. Anything that fails before that abandons the attempt: every
//! actor reverts to its committed state and the same iteration runs again.

mod candidates;
mod control;
mod ending;
mod iteration;
pub mod logic;

use std::future::Future;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use super::{Context, inject, load_snapshot, make_snapshot};
use crate::domain::{ActorKind, Iteration, OutcomeCounts, PlannerStatus, RunState};
use crate::messages::{Common, PlannerMsg};
use ending::revert_all;

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

/// The task working on `iteration`: its driver, or the revert after it.
struct InFlight {
    iteration: u64,
    _task: AbortOnDrop,
}

impl InFlight {
    /// Runs `work` for `iteration` as a task that dies with the planner.
    fn spawn(iteration: u64, work: impl Future<Output = ()> + Send + 'static) -> InFlight {
        InFlight {
            iteration,
            _task: AbortOnDrop(tokio::spawn(work)),
        }
    }
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
    /// Jobs turned away by an overloaded API in a row: the back-off grows
    /// with them. Not failures.
    overloads: u32,
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
        let next = snapshot.committed + 1;
        Ok(PlannerState {
            in_flight: Some(InFlight::spawn(
                next,
                revert_all(myself.clone(), next, None),
            )),
            ctx,
            snapshot,
            run_state: RunState::Running,
            drain_waiters: Vec::new(),
            links: Vec::new(),
            failures: 0,
            overloads: 0,
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
            PlannerMsg::Tick => state.tick(&myself),
            PlannerMsg::IterationEnded { iteration, end } => {
                state.iteration_ended(&myself, iteration, end)
            }
            PlannerMsg::Status(reply) => state.status(reply),
            PlannerMsg::Paused(paused) => state.set_paused(&myself, paused),
            PlannerMsg::SetGoal { goal, reply } => state.set_goal(goal, reply).await,
            PlannerMsg::Drain(reply) => state.drain(reply),
            PlannerMsg::Abandon(reply) => state.abandon(reply).await,
            PlannerMsg::Common(common) => state.common(common).await?,
        }
        Ok(())
    }
}

impl PlannerState {
    /// Starts the next iteration's driver, unless an attempt (or its revert)
    /// is in flight or the run is not running.
    fn tick(&mut self, myself: &ActorRef<PlannerMsg>) {
        if self.in_flight.is_some() || self.run_state != RunState::Running {
            return;
        }
        let iteration = self.snapshot.committed + 1;
        let ctx = self.ctx.clone();
        let snapshot = self.snapshot.clone();
        let me = myself.clone();
        let links = std::mem::take(&mut self.links);
        let check_base = !self.base_checked;
        self.in_flight = Some(InFlight::spawn(iteration, async move {
            let end = iteration::drive(&ctx, snapshot, iteration, links, check_base).await;
            let _ = me.cast(PlannerMsg::IterationEnded { iteration, end });
        }));
    }

    fn status(&self, reply: RpcReplyPort<PlannerStatus>) {
        let _ = reply.send(PlannerStatus {
            goal: self.snapshot.goal.clone(),
            run_state: self.run_state,
            iteration: self.snapshot.committed,
            in_flight: self.in_flight.as_ref().map(|f| f.iteration),
            last_fitness: self.snapshot.last_fitness,
            pause_reason: self.pause_reason.clone(),
            waiting: self.waiting.clone(),
            failures: self.failures,
            outcomes: self.outcomes,
        });
    }

    /// The `Common` messages. Unlike `super::handle_common`, a revert with
    /// nothing stored keeps the snapshot: the planner's is built from the
    /// configuration and the iteration log in `pre_start`, not a default.
    async fn common(&mut self, common: Common) -> Result<(), ActorProcessingErr> {
        match common {
            Common::Snapshot(reply) => {
                let _ = reply.send(make_snapshot(KIND, SCHEMA, &self.snapshot));
            }
            Common::Revert(reply) => {
                let loaded = load_snapshot::<PlannerSnapshot>(&self.ctx.store, KIND, SCHEMA);
                let _ = reply.send(loaded.map(|stored| {
                    if let Some(stored) = stored {
                        self.snapshot = stored;
                    }
                }));
            }
            Common::Ping(reply) => {
                let _ = reply.send(());
            }
            Common::Fault(fault) => inject(KIND, fault).await?,
        }
        Ok(())
    }
}

/// How many committed iterations loop detection looks back on.
fn loop_window(ctx: &Context) -> usize {
    let rules = ctx.config.loops;
    rules
        .same_plan
        .max(rules.same_refused_change * 4)
        .max(rules.no_progress) as usize
}
