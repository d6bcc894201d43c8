//! The modifier: owns the agent's worktree. Before an iteration it puts the
//! worktree back at the committed head (dropping anything a crashed iteration
//! left) and measures fitness; after execution it judges the change
//! (`pipeline.rs`: safety rules, generated tests, validation, fitness,
//! approval) and either commits it as one commit on the agent branch or
//! rolls back to the base commit, leaving `git status` clean; either way the
//! change stays in the variant archive. git and commands run off the mailbox.
//!
//! This file holds the state, `handle` (which only dispatches: each message
//! has its own method, in `prepare.rs`, `validate.rs`, `baseline.rs`,
//! `rebase.rs`, or here for the short ones) and the worktree helpers they
//! share.

use std::sync::{Arc, Mutex};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

mod baseline;
mod explore;
mod fitness;
mod lanes;
mod pipeline;
mod prepare;
mod rebase;
mod upgrade;
mod validate;

pub use fitness::{count_warnings, first_compiler_error, measure_fitness};

use super::{Context, inject, load_snapshot, make_snapshot};
use crate::domain::{ActorKind, ModifierStatus, Signals, Variant};
use crate::messages::{ActorError, Common, ModifierMsg};
use crate::process::{self, CommandSpec, Finished};
use crate::sandbox::Reach;
use crate::workspace::Workspace;

const KIND: ActorKind = ActorKind::Modifier;
pub const SCHEMA: u32 = 1;

/// The modifier's committed state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModifierSnapshot {
    /// The agent branch's head as of the last committed iteration.
    pub head: String,
    /// Fitness measured at `head`, when known.
    pub head_fitness: Option<f64>,
    pub accepted: u64,
    pub rolled_back: u64,
}

pub struct Modifier;

pub struct ModifierState {
    ctx: Context,
    snapshot: ModifierSnapshot,
    work: JoinSet<()>,
    /// Variants whose change did not apply to the head (not tried again
    /// while this actor lives). std Mutex: never held across an await.
    /// The variant archive as a stalled line reads it.
    exploration: Arc<Mutex<explore::Exploration>>,
    /// What the measure showed at the head, when this actor measured it
    /// (not persisted: after a restart the head is measured again).
    head_signals: Option<Signals>,
    /// What validation showed failing at the base (head, failing tests and
    /// error) while it is the head: part of the signals until a change is
    /// kept (which validation must pass). std Mutex: never held across an
    /// await.
    failing_base: Arc<Mutex<Option<(String, Signals)>>>,
    /// Candidates' checks that may run at once (`[run] max_parallel_checks`).
    checks: Arc<tokio::sync::Semaphore>,
    /// The candidates being judged, by slot.
    judging: std::collections::HashMap<u32, tokio::task::AbortHandle>,
}

impl ModifierState {
    /// Loads the committed snapshot; without one, the head is read from git
    /// on the blocking pool (a handler must not hold a worker thread).
    async fn restore(&mut self) -> Result<(), ActorError> {
        self.snapshot = match load_snapshot(&self.ctx.store, KIND, SCHEMA)? {
            Some(snapshot) => snapshot,
            None => {
                let workspace = self.ctx.workspace.clone();
                let head = blocking(move || workspace.head().map_err(|e| e.to_string()))
                    .await
                    .map_err(ActorError::Workspace)?;
                ModifierSnapshot {
                    head,
                    ..Default::default()
                }
            }
        };
        Ok(())
    }
}

impl Actor for Modifier {
    type Msg = ModifierMsg;
    type State = ModifierState;
    type Arguments = Context;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        ctx: Context,
    ) -> Result<Self::State, ActorProcessingErr> {
        let ctx_checks = ctx.config.max_parallel_checks.max(1);
        let mut state = ModifierState {
            ctx,
            snapshot: ModifierSnapshot::default(),
            work: JoinSet::new(),
            exploration: Arc::default(),
            head_signals: None,
            failing_base: Arc::default(),
            checks: Arc::new(tokio::sync::Semaphore::new(ctx_checks)),
            judging: std::collections::HashMap::new(),
        };
        state.restore().await?;
        Ok(state)
    }

    /// One message, one method; the long work those methods start runs off
    /// the mailbox, in `work`.
    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: ModifierMsg,
        state: &mut ModifierState,
    ) -> Result<(), ActorProcessingErr> {
        // Reaps the tasks that have finished, so `work` holds only live ones.
        while state.work.try_join_next().is_some() {}
        state.judging.retain(|_, task| !task.is_finished());
        match message {
            ModifierMsg::Prepare {
                iteration,
                keep_worktree,
                reply,
            } => state.prepare(myself, iteration, keep_worktree, reply),
            ModifierMsg::Validate {
                iteration,
                summary,
                fitness_before,
                started_from,
                reply,
            } => state.validate(
                myself,
                iteration,
                summary,
                fitness_before,
                started_from,
                reply,
            ),
            ModifierMsg::OpenLane {
                slot,
                started_from,
                reply,
            } => state.open_lane(slot, started_from, reply),
            ModifierMsg::Judge {
                attempt,
                lane,
                summary,
                fitness_before,
                reply,
            } => state.judge(attempt, lane, summary, fitness_before, reply),
            ModifierMsg::DropLane(slot) => state.drop_lane(slot),
            ModifierMsg::Adopt {
                iteration,
                summary,
                verdict,
                reply,
            } => state.adopt(myself, iteration, summary, *verdict, reply),
            ModifierMsg::Rebase(reply) => state.rebase(myself, reply),
            ModifierMsg::Moved { head, said, reply } => state.head_moved(head, said, reply).await,
            ModifierMsg::Baseline(reply) => state.baseline(reply),
            ModifierMsg::Reload(reply) => state.reload(reply).await,
            ModifierMsg::Reopen { iteration, reply } => state.reopen(iteration, reply),
            ModifierMsg::Status(reply) => state.status(reply),
            ModifierMsg::Variants { last, reply } => state.variants(last, reply),
            ModifierMsg::Upgrades(reply) => state.upgrades(reply),
            ModifierMsg::Settled {
                head,
                fitness,
                signals,
                rolled_back,
            } => state.settle(head, fitness, signals, rolled_back),
            ModifierMsg::Common(common) => state.common(common).await?,
        }
        Ok(())
    }
}

impl ModifierState {
    /// The refused change back in the worktree, off the mailbox (in `work`,
    /// so a revert aborts it).
    fn reopen(&mut self, iteration: u64, reply: RpcReplyPort<Result<String, ActorError>>) {
        let workspace = self.ctx.workspace.clone();
        self.work.spawn(async move {
            let reopened = blocking(move || {
                workspace
                    .reopen_refused(iteration)
                    .map_err(|e| format!("cannot reopen the refused change: {e}"))
            })
            .await
            .map_err(ActorError::Workspace);
            let _ = reply.send(reopened);
        });
    }

    /// Stops the work in flight and reloads the committed snapshot, leaving
    /// the worktree as it is.
    async fn reload(&mut self, reply: RpcReplyPort<Result<(), ActorError>>) {
        self.work.abort_all();
        let _ = reply.send(self.restore().await);
    }

    /// Answers from the snapshot at once; `git status` for the changed files
    /// runs on the blocking pool in a task of its own (not in `work`, which a
    /// revert aborts: a status asked for is always answered).
    fn status(&self, reply: RpcReplyPort<ModifierStatus>) {
        let s = &self.snapshot;
        let mut status = ModifierStatus {
            head: s.head.clone(),
            head_fitness: s.head_fitness,
            accepted: s.accepted,
            rolled_back: s.rolled_back,
            changed: Vec::new(),
        };
        let workspace = self.ctx.workspace.clone();
        tokio::spawn(async move {
            status.changed = blocking(move || workspace.changed_files().map_err(|e| e.to_string()))
                .await
                .unwrap_or_default();
            let _ = reply.send(status);
        });
    }

    fn variants(&self, last: usize, reply: RpcReplyPort<Result<Vec<Variant>, ActorError>>) {
        let variants = self
            .ctx
            .store
            .variants(last)
            .map_err(|e| ActorError::Store(e.to_string()));
        let _ = reply.send(variants);
    }

    fn upgrades(&self, reply: RpcReplyPort<Result<serde_json::Value, ActorError>>) {
        let releases = crate::upgrade::releases::Releases::of_state(&self.ctx.config.state_dir);
        let listing = crate::upgrade::attempts::listing(&self.ctx.store, &releases)
            .map_err(ActorError::Store);
        let _ = reply.send(listing);
    }

    /// Remembers what work off the mailbox left: a head other than the
    /// known one is an accepted change, whose old signals no longer hold.
    fn settle(
        &mut self,
        head: String,
        fitness: Option<f64>,
        signals: Option<Signals>,
        rolled_back: bool,
    ) {
        if head != self.snapshot.head {
            self.snapshot.accepted += 1;
            self.head_signals = None;
        }
        if signals.is_some() {
            self.head_signals = signals;
        }
        if rolled_back {
            self.snapshot.rolled_back += 1;
        }
        self.snapshot.head = head;
        self.snapshot.head_fitness = fitness;
    }

    /// The `Common` messages; unlike other actors', a revert also puts the
    /// worktree back.
    async fn common(&mut self, common: Common) -> Result<(), ActorProcessingErr> {
        match common {
            Common::Snapshot(reply) => {
                let _span = tracing::info_span!("actor.snapshot", actor = KIND.name()).entered();
                let _ = reply.send(make_snapshot(KIND, SCHEMA, &self.snapshot));
            }
            Common::Revert(reply) => {
                // Stop any validation still running, then put the
                // worktree back at the committed head.
                self.work.abort_all();
                let result = match self.restore().await {
                    // Awaited here, so no later message sees the worktree
                    // before it is back; the reset itself runs on the
                    // blocking pool.
                    Ok(()) => {
                        let (ctx, head) = (self.ctx.clone(), self.snapshot.head.clone());
                        blocking(move || {
                            reset_to_committed(&ctx, &head)?;
                            lanes::reset_lanes(&ctx, &head)
                        })
                        .await
                        .map_err(ActorError::Workspace)
                    }
                    Err(error) => Err(error),
                };
                let _ = reply.send(result);
            }
            Common::Ping(reply) => {
                let _ = reply.send(());
            }
            Common::Fault(fault) => inject(KIND, fault).await?,
        }
        Ok(())
    }
}

/// Runs git and file work on the blocking pool: synchronous, it would
/// otherwise hold one of the runtime's worker threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| format!("worktree task failed: {e}"))?
}

/// Puts the worktree back at the committed head `head`. The only agent
/// commit this may drop is the one of the iteration after the last committed
/// one (a crash came between its git commit and its store commit); a reset
/// past the commit of any other iteration would lose work the store does not
/// know of, so it is refused.
fn reset_to_committed(ctx: &Context, head: &str) -> Result<(), String> {
    let committed = ctx
        .store
        .last_iteration()
        .map_err(|e| e.to_string())?
        .map_or(0, |i| i.number);
    let dropped = ctx
        .workspace
        .iterations_since(head)
        .map_err(|e| format!("cannot read the agent branch: {e}"))?;
    let unknown: Vec<String> = dropped
        .iter()
        .filter(|iteration| **iteration != committed + 1)
        .map(u64::to_string)
        .collect();
    if !unknown.is_empty() {
        return Err(format!(
            "the agent branch holds the commits of iteration(s) {} past the committed head; refusing to reset past them (see `agent run --recover-from-git`)",
            unknown.join(", ")
        ));
    }
    if let Some(iteration) = dropped.first() {
        tracing::warn!(
            iteration,
            "dropping the git commit of an iteration whose store commit never happened"
        );
    }
    ctx.workspace
        .reset_to(head)
        .map_err(|e| format!("cannot reset the worktree: {e}"))
}

/// Puts the worktree back at the base commit `base` after a refused change.
async fn rollback(workspace: &Workspace, base: &str) -> Result<(), String> {
    let workspace = workspace.clone();
    let base = base.to_string();
    blocking(move || {
        workspace
            .reset_to(&base)
            .map_err(|e| format!("rollback failed: {e}"))
    })
    .await
}

/// A check as it runs: in the sandbox when there is one.
fn confine(ctx: &Context, spec: CommandSpec, reach: Reach) -> CommandSpec {
    crate::sandbox::confine(ctx.sandbox.as_ref(), spec, reach)
}

/// Runs a check confined, to its end. A sandbox that could not start it is
/// the error (`sandbox: …`), so that it is never read as the check failing
/// on the workspace.
async fn run_confined(ctx: &Context, spec: CommandSpec, reach: Reach) -> Result<Finished, String> {
    let confined = confine(ctx, spec, reach);
    let finished = process::run(&confined).await.map_err(|e| e.to_string())?;
    sandbox_started(ctx, &confined, &finished)?;
    Ok(finished)
}

/// `Err` with the sandbox's own failure when it could not start `confined`.
fn sandbox_started(
    ctx: &Context,
    confined: &CommandSpec,
    finished: &Finished,
) -> Result<(), String> {
    match crate::sandbox::start_failure(ctx.sandbox.as_ref(), confined, finished) {
        Some(failure) => Err(failure.to_string()),
        None => Ok(()),
    }
}
