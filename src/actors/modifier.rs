//! The modifier: owns the agent's worktree. Before an iteration it puts the
//! worktree back at the committed head (dropping anything a crashed iteration
//! left) and measures fitness; after execution it validates the change (the
//! validation command, then fitness, which must not get worse) and either
//! commits it as one commit on the agent branch or rolls back to the base
//! commit, leaving `git status` clean. git and commands run off the mailbox.

use std::path::Path;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tracing::Instrument;

use super::{Context, inject, load_snapshot, make_snapshot};
use crate::config::{Fitness, Mode};
use crate::domain::{
    ActorKind, ApprovalDecision, ApprovalRequest, ModifierStatus, Prepared, Verdict,
};
use crate::messages::{self, ActorError, Common, GovernorMsg, ModifierMsg, PeerError};
use crate::process::{self, CommandSpec, Ending};
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
                let known = state.snapshot.head_fitness;
                let span = tracing::info_span!(
                    "modifier.prepare",
                    actor = KIND.name(),
                    iteration = iteration as i64,
                    keep_worktree
                );
                state.work.spawn(async move {
                    let result = prepare(&ctx, &head, known, keep_worktree)
                        .instrument(span)
                        .await
                        .map_err(ActorError::Workspace);
                    if let Ok(prepared) = &result {
                        let _ = myself.cast(ModifierMsg::Settled {
                            head: prepared.base_commit.clone(),
                            fitness: prepared.fitness,
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
                    let result = validate(&ctx, &base, iteration, &summary, fitness_before)
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
                            ..
                        }) => {
                            let _ = myself.cast(ModifierMsg::Settled {
                                head: commit.clone(),
                                fitness: Some(*fitness_after),
                                rolled_back: false,
                            });
                        }
                        Ok(verdict) => {
                            let _ = myself.cast(ModifierMsg::Settled {
                                head: base,
                                fitness: fitness_before,
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
                let span = tracing::info_span!("modifier.baseline", actor = KIND.name());
                state.work.spawn(
                    async move {
                        let _ = reply.send(baseline(&ctx).await.map_err(ActorError::Workspace));
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
            ModifierMsg::Settled {
                head,
                fitness,
                rolled_back,
            } => {
                if head != state.snapshot.head {
                    state.snapshot.accepted += 1;
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
    known: Option<f64>,
    keep_worktree: bool,
) -> Result<Prepared, String> {
    if !keep_worktree {
        let ctx = ctx.clone();
        let base = head.to_string();
        blocking(move || reset_to_committed(&ctx, &base)).await?;
    }
    let fitness = match known {
        Some(fitness) => Some(fitness),
        None => Some(measure_fitness(ctx, &ctx.workspace.path).await?),
    };
    Ok(Prepared {
        base_commit: head.to_string(),
        fitness,
    })
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

async fn validate(
    ctx: &Context,
    base: &str,
    iteration: u64,
    summary: &str,
    fitness_before: Option<f64>,
) -> Result<Verdict, String> {
    let workspace = ctx.workspace.clone();
    let changed = blocking(move || workspace.changed_files().map_err(|e| e.to_string())).await?;
    if changed.is_empty() {
        return Ok(Verdict::NoChange);
    }
    if let Err(violation) = safe(ctx, base, &changed).await? {
        tracing::Span::current().record("rule", violation.rule);
        rollback(&ctx.workspace, base).await?;
        return Ok(Verdict::Rejected {
            reason: violation.to_string(),
            fitness_after: None,
        });
    }
    let checked = match check(ctx, fitness_before).await {
        Ok(fitness_after) if ctx.config.mode == Mode::Supervised => {
            approval(
                ctx,
                iteration,
                summary,
                &changed,
                fitness_before,
                fitness_after,
            )
            .await
        }
        other => other,
    };
    let rejection = match checked {
        Ok(fitness_after) => {
            let workspace = ctx.workspace.clone();
            let parent = base.to_string();
            let message = commit_message(
                iteration,
                summary,
                fitness_before,
                fitness_after,
                changed.len(),
            );
            let commit = blocking(move || {
                workspace
                    .commit_all(&message, &parent)
                    .map_err(|e| e.to_string())
            })
            .await?;
            return Ok(Verdict::Accepted {
                commit,
                fitness_after,
                files_changed: changed.len(),
            });
        }
        Err(rejection) => rejection,
    };
    rollback(&ctx.workspace, base).await?;
    Ok(rejection)
}

/// The safety rules on the change against `base`, before any build runs.
async fn safe(
    ctx: &Context,
    base: &str,
    changed: &[String],
) -> Result<Result<(), crate::safety::Violation>, String> {
    let (ctx, base, changed) = (ctx.clone(), base.to_string(), changed.to_vec());
    blocking(move || {
        let workspace = &ctx.workspace;
        let mut rules = ctx.config.safety.clone();
        if own_source(&workspace.path) {
            rules
                .protected_paths
                .extend(ctx.config.own_source_protected.iter().cloned());
        }
        let changes = changed
            .iter()
            .map(|path| {
                Ok(crate::safety::ChangedFile {
                    path: path.clone(),
                    before: workspace.file_at(&base, path).map_err(|e| e.to_string())?,
                    after: std::fs::read_to_string(workspace.path.join(path)).ok(),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(crate::safety::check(&rules, &changes))
    })
    .await
}

/// Whether the worktree holds this agent's own source (its `Cargo.toml`
/// names this package).
fn own_source(worktree: &Path) -> bool {
    std::fs::read_to_string(worktree.join("Cargo.toml"))
        .ok()
        .and_then(|text| text.parse::<toml::Table>().ok())
        .and_then(|manifest| {
            manifest
                .get("package")?
                .get("name")?
                .as_str()
                .map(|name| name == env!("CARGO_PKG_NAME"))
        })
        .unwrap_or(false)
}

/// Supervised mode: the governor holds the change until an operator decides.
async fn approval(
    ctx: &Context,
    iteration: u64,
    summary: &str,
    changed: &[String],
    fitness_before: Option<f64>,
    fitness_after: f64,
) -> Result<f64, Verdict> {
    let request = ApprovalRequest {
        iteration,
        summary: summary.to_string(),
        files: changed.to_vec(),
        fitness_before,
        fitness_after,
    };
    let decision = messages::call(ActorKind::Governor, ctx.config.approval_timeout, |reply| {
        GovernorMsg::RequestApproval { request, reply }
    })
    .await;
    match decision {
        Ok(ApprovalDecision::Approved) => Ok(fitness_after),
        Ok(ApprovalDecision::Rejected { reason }) => Err(Verdict::Rejected {
            reason: format!("rejected by an operator: {reason}"),
            fitness_after: Some(fitness_after),
        }),
        Err(PeerError::Timeout(..)) => Err(Verdict::Rejected {
            reason: format!(
                "no decision within {}",
                humantime::format_duration(ctx.config.approval_timeout)
            ),
            fitness_after: Some(fitness_after),
        }),
        // The governor restarted: the iteration is abandoned and asks again.
        Err(error) => Err(Verdict::Rejected {
            reason: format!("approval lost: {error}"),
            fitness_after: Some(fitness_after),
        }),
    }
}

/// Replays the branch onto the repository's HEAD, checks it out and runs
/// validation there: kept when it passes (the old head stays on a rescue
/// ref), put back when it fails. Returns what to tell the operator and the
/// new head.
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
    if let Some(fails) = baseline(ctx).await? {
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
async fn baseline(ctx: &Context) -> Result<Option<String>, String> {
    let spec = CommandSpec::shell(
        &ctx.config.validation_command,
        &ctx.workspace.path,
        ctx.config.validation_timeout,
    );
    let finished = process::run(&confine(ctx, spec))
        .await
        .map_err(|e| e.to_string())?;
    Ok((!finished.success()).then(|| {
        format!(
            "validation `{}` fails at the base, before any change: {}",
            ctx.config.validation_command,
            finished.first_error_line()
        )
    }))
}

/// Validation then fitness; `Err` carries the rejection.
async fn check(ctx: &Context, fitness_before: Option<f64>) -> Result<f64, Verdict> {
    let cwd = &ctx.workspace.path;
    let spec = CommandSpec::shell(
        &ctx.config.validation_command,
        cwd,
        ctx.config.validation_timeout,
    );
    let running = process::start(&confine(ctx, spec)).map_err(|e| Verdict::Rejected {
        reason: e.to_string(),
        fitness_after: None,
    })?;
    crash_point!("validation.running");
    let finished = running.wait().await;
    if !finished.success() {
        let why = match finished.ending {
            Ending::TimedOut => "timed out".to_string(),
            Ending::Cancelled => "was cancelled".to_string(),
            Ending::Exited(code) => format!(
                "failed ({})",
                code.map_or("signal".into(), |c| format!("status {c}"))
            ),
        };
        return Err(Verdict::Rejected {
            reason: format!(
                "validation `{}` {why}: {}",
                ctx.config.validation_command,
                finished.first_error_line()
            ),
            fitness_after: None,
        });
    }
    let after = measure_fitness(ctx, cwd)
        .await
        .map_err(|reason| Verdict::Rejected {
            reason,
            fitness_after: None,
        })?;
    if let Some(before) = fitness_before
        && after > before
    {
        return Err(Verdict::Rejected {
            reason: format!("fitness got worse: {before} → {after}"),
            fitness_after: Some(after),
        });
    }
    Ok(after)
}

/// A check as it runs: in the sandbox when there is one.
fn confine(ctx: &Context, spec: CommandSpec) -> CommandSpec {
    crate::sandbox::confine(ctx.sandbox.as_ref(), spec, crate::sandbox::Reach::Check)
}

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

fn commit_message(
    iteration: u64,
    summary: &str,
    before: Option<f64>,
    after: f64,
    files: usize,
) -> String {
    let before = before.map_or("?".to_string(), |b| b.to_string());
    format!(
        "agent: iteration {iteration}: {summary}\n\nFitness: {before} -> {after}\nFiles changed: {files}\nIteration: {iteration}\n"
    )
}

/// Measures the worktree's fitness (lower is better).
pub async fn measure_fitness(ctx: &Context, cwd: &Path) -> Result<f64, String> {
    let timeout = ctx.config.validation_timeout;
    match &ctx.config.fitness {
        Fitness::CargoWarnings => {
            let spec = CommandSpec {
                program: "cargo".into(),
                args: [
                    "clippy",
                    "--all-targets",
                    "--message-format=json",
                    "--quiet",
                ]
                .map(String::from)
                .to_vec(),
                cwd: cwd.to_path_buf(),
                env: Vec::new(),
                timeout,
            };
            let finished = process::run(&confine(ctx, spec))
                .await
                .map_err(|e| e.to_string())?;
            if !finished.success() {
                let why = first_compiler_error(&finished.stdout)
                    .unwrap_or_else(|| finished.first_error_line());
                return Err(format!(
                    "fitness: `cargo clippy` failed, the workspace does not build: {why}"
                ));
            }
            Ok(count_warnings(&finished.stdout) as f64)
        }
        Fitness::Command(command) => {
            let spec = CommandSpec::shell(command, cwd, timeout);
            let finished = process::run(&confine(ctx, spec))
                .await
                .map_err(|e| e.to_string())?;
            if !finished.success() {
                return Err(format!(
                    "fitness command `{command}` failed: {}",
                    finished.first_error_line()
                ));
            }
            let last = finished
                .stdout
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            last.trim().parse::<f64>().map_err(|_| {
                format!("fitness command `{command}` must print a number on its last line, printed {last:?}")
            })
        }
    }
}

/// The first compiler error in `cargo --message-format=json` output, as one
/// line with its code and place: what stops the build, rather than cargo's
/// closing "could not compile".
pub fn first_compiler_error(json_lines: &str) -> Option<String> {
    json_lines.lines().find_map(|line| {
        let value = serde_json::from_str::<serde_json::Value>(line).ok()?;
        let message = &value["message"];
        if value["reason"] != "compiler-message" || message["level"] != "error" {
            return None;
        }
        let code = message["code"]["code"]
            .as_str()
            .map(|c| format!("[{c}]"))
            .unwrap_or_default();
        let place = message["spans"]
            .get(0)
            .map(|span| {
                format!(
                    " ({}:{})",
                    span["file_name"].as_str().unwrap_or("?"),
                    span["line_start"].as_u64().unwrap_or(0)
                )
            })
            .unwrap_or_default();
        Some(format!(
            "error{code}: {}{place}",
            message["message"].as_str().unwrap_or("(no message)")
        ))
    })
}

/// Distinct compiler and clippy warnings in `cargo --message-format=json`
/// output. A lib's warnings appear again when its tests are built, hence the
/// de-duplication by rendered text.
pub fn count_warnings(json_lines: &str) -> usize {
    let mut seen = std::collections::HashSet::new();
    for line in json_lines.lines() {
        let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if value["reason"] != "compiler-message" {
            continue;
        }
        let message = &value["message"];
        let has_spans = message["spans"].as_array().is_some_and(|s| !s.is_empty());
        if message["level"] == "warning" && has_spans {
            seen.insert(message["rendered"].as_str().unwrap_or_default().to_string());
        }
    }
    seen.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_compiler_error_is_named_with_its_code_and_place() {
        let error = r#"{"reason":"compiler-message","message":{"level":"error","message":"`#![feature]` may not be used on the stable release channel","code":{"code":"E0554"},"spans":[{"file_name":"benches/benches.rs","line_start":3}]}}"#;
        let warning = r#"{"reason":"compiler-message","message":{"level":"warning","message":"unused","spans":[]}}"#;
        assert_eq!(
            first_compiler_error(&[warning, error].join("\n")).as_deref(),
            Some(
                "error[E0554]: `#![feature]` may not be used on the stable release channel (benches/benches.rs:3)"
            )
        );
        assert_eq!(first_compiler_error(warning), None);
    }

    #[test]
    fn warnings_are_counted_once_and_summaries_are_ignored() {
        let warning = r#"{"reason":"compiler-message","message":{"level":"warning","rendered":"warning: unused x","spans":[{"file_name":"src/lib.rs"}]}}"#;
        let summary = r#"{"reason":"compiler-message","message":{"level":"warning","rendered":"warning: 1 warning emitted","spans":[]}}"#;
        let other = r#"{"reason":"compiler-artifact"}"#;
        let output = [warning, warning, summary, other, "not json"].join("\n");
        assert_eq!(count_warnings(&output), 1);
    }
}
