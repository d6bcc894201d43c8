//! The modifier: owns the agent's worktree. Before an iteration it puts the
//! worktree back at the committed head (dropping anything a crashed iteration
//! left) and measures fitness; after execution it judges the change
//! (`pipeline.rs`: safety rules, generated tests, validation, fitness,
//! approval) and either commits it as one commit on the agent branch or
//! rolls back to the base commit, leaving `git status` clean; either way the
//! change stays in the variant archive. git and commands run off the mailbox.

use std::sync::{Arc, Mutex};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tracing::Instrument;

mod explore;
mod fitness;
mod pipeline;

pub use fitness::{count_warnings, first_compiler_error, measure_fitness};

use super::{Context, inject, load_snapshot, make_snapshot};
use crate::domain::{ActorKind, ModifierStatus, Prepared, Signals, Verdict};
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
}

impl ModifierState {
    fn restore(&mut self) -> Result<(), ActorError> {
        self.snapshot = match load_snapshot(&self.ctx.store, KIND, SCHEMA)? {
            Some(snapshot) => snapshot,
            None => ModifierSnapshot {
                head: self
                    .ctx
                    .workspace
                    .head()
                    .map_err(|e| ActorError::Workspace(e.to_string()))?,
                ..Default::default()
            },
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
        let mut state = ModifierState {
            ctx,
            snapshot: ModifierSnapshot::default(),
            work: JoinSet::new(),
            exploration: Arc::default(),
            head_signals: None,
            failing_base: Arc::default(),
        };
        state.restore()?;
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: ModifierMsg,
        state: &mut ModifierState,
    ) -> Result<(), ActorProcessingErr> {
        while state.work.try_join_next().is_some() {}
        match message {
            ModifierMsg::Prepare {
                iteration,
                keep_worktree,
                reply,
            } => {
                let ctx = state.ctx.clone();
                let head = state.snapshot.head.clone();
                // The head's fitness is reused only with its signals.
                let known = state.snapshot.head_fitness.zip(state.head_signals.clone());
                let exploration = state.exploration.clone();
                let failing = state
                    .failing_base
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone()
                    .filter(|(at, _)| *at == head)
                    .map(|(_, signals)| signals);
                let span = tracing::info_span!(
                    "modifier.prepare",
                    actor = KIND.name(),
                    iteration = iteration as i64,
                    keep_worktree,
                    started_from = tracing::field::Empty,
                );
                state.work.spawn(async move {
                    let result = prepare(&ctx, &head, known, keep_worktree, &exploration)
                        .instrument(span)
                        .await
                        .map(|mut prepared| {
                            if let Some(failing) = failing {
                                prepared.signals.failing_tests = failing.failing_tests;
                                prepared.signals.error = failing.error;
                            }
                            prepared
                        })
                        .map_err(ActorError::Workspace);
                    if let Ok(prepared) = &result {
                        let _ = myself.cast(ModifierMsg::Settled {
                            head: prepared.base_commit.clone(),
                            fitness: prepared.fitness,
                            signals: Some(prepared.signals.clone()),
                            rolled_back: false,
                        });
                    }
                    tracing::debug!(iteration, "worktree prepared");
                    let _ = reply.send(result);
                });
            }
            ModifierMsg::Validate {
                iteration,
                summary,
                fitness_before,
                started_from,
                reply,
            } => {
                let ctx = state.ctx.clone();
                let base = state.snapshot.head.clone();
                let span = tracing::info_span!(
                    "modifier.validate",
                    actor = KIND.name(),
                    iteration = iteration as i64,
                    files_changed = tracing::field::Empty,
                    validation = tracing::field::Empty,
                    fitness.before = tracing::field::Empty,
                    fitness.after = tracing::field::Empty,
                    verdict = tracing::field::Empty,
                    rule = tracing::field::Empty,
                );
                if let Some(before) = fitness_before {
                    span.record("fitness.before", before);
                }
                state.work.spawn(async move {
                    let judged = pipeline::Judged {
                        iteration,
                        fitness_before,
                        started_from,
                    };
                    let result = pipeline::validate(&ctx, &base, judged, &summary)
                        .instrument(span.clone())
                        .await
                        .map_err(ActorError::Workspace);
                    match &result {
                        Ok(Verdict::Accepted {
                            fitness_after,
                            files_changed,
                            ..
                        }) => {
                            span.record("verdict", "accepted");
                            span.record("validation", "passed");
                            span.record("fitness.after", *fitness_after);
                            span.record("files_changed", *files_changed as i64);
                        }
                        Ok(Verdict::Rejected {
                            reason,
                            fitness_after,
                            ..
                        }) => {
                            span.record("verdict", "rejected");
                            span.record("validation", reason.as_str());
                            if let Some(after) = fitness_after {
                                span.record("fitness.after", *after);
                            }
                        }
                        Ok(Verdict::NoChange) => {
                            span.record("verdict", "no-change");
                            span.record("files_changed", 0i64);
                        }
                        Err(error) => {
                            span.record("verdict", error.to_string().as_str());
                        }
                    }
                    match &result {
                        Ok(Verdict::Accepted {
                            commit,
                            fitness_after,
                            signals_after,
                            ..
                        }) => {
                            let _ = myself.cast(ModifierMsg::Settled {
                                head: commit.clone(),
                                fitness: Some(*fitness_after),
                                signals: Some(signals_after.clone()),
                                rolled_back: false,
                            });
                        }
                        Ok(verdict) => {
                            let _ = myself.cast(ModifierMsg::Settled {
                                head: base,
                                fitness: fitness_before,
                                signals: None,
                                rolled_back: matches!(verdict, Verdict::Rejected { .. }),
                            });
                        }
                        Err(_) => {}
                    }
                    let _ = reply.send(result);
                });
            }
            ModifierMsg::Rebase(reply) => {
                let ctx = state.ctx.clone();
                let head = state.snapshot.head.clone();
                let span = tracing::info_span!("modifier.rebase", actor = KIND.name());
                state.work.spawn(
                    async move {
                        let result = rebase(&ctx, &head).await;
                        if let Ok((_, new_head)) = &result {
                            let _ = myself.cast(ModifierMsg::Moved {
                                head: new_head.clone(),
                            });
                        }
                        let _ =
                            reply.send(result.map(|(said, _)| said).map_err(ActorError::Refused));
                    }
                    .instrument(span),
                );
            }
            ModifierMsg::Moved { head } => {
                state.snapshot.head = head;
                // Measured again on the new base.
                state.snapshot.head_fitness = None;
                let mut record = make_snapshot(KIND, SCHEMA, &state.snapshot)?;
                record.iteration = state.ctx.store.last_iteration()?.map_or(0, |i| i.number);
                state.ctx.store.put_snapshot(&record).await?;
            }
            ModifierMsg::Baseline(reply) => {
                let ctx = state.ctx.clone();
                let head = state.snapshot.head.clone();
                let failing_base = state.failing_base.clone();
                let span = tracing::info_span!("modifier.baseline", actor = KIND.name());
                state.work.spawn(
                    async move {
                        let result = baseline(&ctx).await.map_err(ActorError::Workspace);
                        if let Ok(found) = &result {
                            *failing_base.lock().unwrap_or_else(|p| p.into_inner()) =
                                found.as_ref().map(|(_, signals)| (head, signals.clone()));
                        }
                        let _ = reply.send(result);
                    }
                    .instrument(span),
                );
            }
            ModifierMsg::Reload(reply) => {
                state.work.abort_all();
                let _ = reply.send(state.restore());
            }
            ModifierMsg::Status(reply) => {
                let s = &state.snapshot;
                let _ = reply.send(ModifierStatus {
                    head: s.head.clone(),
                    head_fitness: s.head_fitness,
                    accepted: s.accepted,
                    rolled_back: s.rolled_back,
                    changed: state.ctx.workspace.changed_files().unwrap_or_default(),
                });
            }
            ModifierMsg::Variants { last, reply } => {
                let variants = state
                    .ctx
                    .store
                    .variants(last)
                    .map_err(|e| ActorError::Store(e.to_string()));
                let _ = reply.send(variants);
            }
            ModifierMsg::Settled {
                head,
                fitness,
                signals,
                rolled_back,
            } => {
                if head != state.snapshot.head {
                    state.snapshot.accepted += 1;
                    state.head_signals = None;
                }
                if signals.is_some() {
                    state.head_signals = signals;
                }
                if rolled_back {
                    state.snapshot.rolled_back += 1;
                }
                state.snapshot.head = head;
                state.snapshot.head_fitness = fitness;
            }
            ModifierMsg::Common(common) => match common {
                Common::Snapshot(reply) => {
                    let _span =
                        tracing::info_span!("actor.snapshot", actor = KIND.name()).entered();
                    let _ = reply.send(make_snapshot(KIND, SCHEMA, &state.snapshot));
                }
                Common::Revert(reply) => {
                    // Stop any validation still running, then put the
                    // worktree back at the committed head.
                    state.work.abort_all();
                    let result = state.restore().and_then(|()| {
                        reset_to_committed(&state.ctx, &state.snapshot.head)
                            .map_err(ActorError::Workspace)
                    });
                    let _ = reply.send(result);
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

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| format!("worktree task failed: {e}"))?
}

async fn prepare(
    ctx: &Context,
    head: &str,
    known: Option<(f64, Signals)>,
    keep_worktree: bool,
    exploration: &Arc<Mutex<explore::Exploration>>,
) -> Result<Prepared, String> {
    if !keep_worktree {
        let ctx = ctx.clone();
        let base = head.to_string();
        blocking(move || reset_to_committed(&ctx, &base)).await?;
    }
    // Measured at the head, before any earlier change is applied.
    let (fitness, signals) = match known {
        Some(known) => known,
        None => {
            let measured = fitness::measure(ctx, &ctx.workspace.path, Reach::Baseline).await?;
            (measured.fitness, measured.signals)
        }
    };
    let started_from = if keep_worktree {
        None
    } else {
        let (ctx, exploration) = (ctx.clone(), exploration.clone());
        blocking(move || Ok(start_from_variant(&ctx, &exploration))).await?
    };
    if let Some(variant) = started_from {
        tracing::Span::current().record("started_from", variant as i64);
    }
    Ok(Prepared {
        base_commit: head.to_string(),
        fitness: Some(fitness),
        signals,
        started_from,
    })
}

/// Applies the best earlier variant's change when the line has stalled
/// (see `explore.rs`); returns its iteration. A variant that does not apply
/// is said and skipped from then on.
fn start_from_variant(ctx: &Context, exploration: &Mutex<explore::Exploration>) -> Option<u64> {
    let after = ctx.config.start_from_variant_after;
    if after == 0 {
        return None;
    }
    let recent = ctx.store.iterations(after as usize).ok()?;
    if !explore::stalled(after, &recent) {
        return None;
    }
    let mut exploration = exploration.lock().unwrap_or_else(|p| p.into_inner());
    exploration.refresh(&ctx.store).ok()?;
    let variant = exploration.best()?.clone();
    match ctx.workspace.apply_change(&variant.commit) {
        Ok(()) => {
            tracing::info!(
                variant = variant.iteration,
                fitness = variant.fitness_after,
                "no fitness improvement in {after} iterations: starting from the variant of iteration {}",
                variant.iteration
            );
            Some(variant.iteration)
        }
        Err(error) => {
            tracing::warn!(variant = variant.iteration, %error, "the variant's change does not apply to the head; not trying it again");
            exploration.unappliable.insert(variant.iteration);
            None
        }
    }
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

/// Replays the branch onto the repository's HEAD, checks it out and runs
/// validation there: kept when it passes (the old head stays on a rescue
/// ref), put back when it fails. Returns what to tell the operator and the
/// new head.
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

async fn rebase(ctx: &Context, head: &str) -> Result<(String, String), String> {
    let workspace = ctx.workspace.clone();
    let replayed =
        blocking(move || workspace.replay_onto_base().map_err(|e| e.to_string())).await?;
    let Some(replayed) = replayed else {
        return Err("the agent branch is not behind the repository's HEAD; nothing to do".into());
    };
    if replayed.old_head != head {
        return Err("the worktree is not at the committed head; let the run settle first".into());
    }
    let (workspace, new_head) = (ctx.workspace.clone(), replayed.new_head.clone());
    blocking(move || workspace.reset_to(&new_head).map_err(|e| e.to_string())).await?;
    if let Some((fails, _)) = baseline(ctx).await? {
        let (workspace, old) = (ctx.workspace.clone(), replayed.old_head.clone());
        blocking(move || workspace.reset_to(&old).map_err(|e| e.to_string())).await?;
        return Err(format!(
            "{fails}; on the repository's HEAD {} the branch stays where it was",
            &replayed.base[..10]
        ));
    }
    let (workspace, old) = (ctx.workspace.clone(), replayed.old_head.clone());
    let kept = blocking(move || {
        workspace
            .keep(&old, "agent: branch before a rebase")
            .map_err(|e| e.to_string())
    })
    .await?;
    Ok((
        format!(
            "rebased {} commit(s) onto the repository's HEAD {}; validation passes there; the old branch is kept on {kept}",
            replayed.replayed,
            &replayed.base[..10]
        ),
        replayed.new_head,
    ))
}

/// The validation command on the worktree as prepared (the base): `Some`
/// with what failed, in one line.
/// Validation on the head: why it fails, if it does, and what the failure
/// shows as signals (the failing tests; the compiler's error line when the
/// tests do not build).
async fn baseline(ctx: &Context) -> Result<Option<(String, Signals)>, String> {
    if let Some(checks) = &ctx.checks {
        let failed = checks.validate(&ctx.workspace.path).await.err();
        return Ok(failed.map(|why| {
            (
                format!("validation fails at the base: {why}"),
                Signals::default(),
            )
        }));
    }
    let spec = CommandSpec::shell(
        &ctx.config.validation_command,
        &ctx.workspace.path,
        ctx.config.validation_timeout,
    );
    let finished = run_confined(ctx, spec, Reach::Baseline).await?;
    if finished.success() {
        return Ok(None);
    }
    let first = finished.first_error_line();
    let output = format!("{}\n{}", finished.stdout, finished.stderr);
    let signals = Signals {
        failing_tests: fitness::failing_tests(&output),
        error: first.starts_with("error").then(|| first.clone()),
        ..Signals::default()
    };
    Ok(Some((
        format!(
            "validation `{}` fails at the base, before any change: {first}",
            ctx.config.validation_command
        ),
        signals,
    )))
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
