//! Candidates' worktrees ("lanes"): `<state>/candidates/<slot>`, each a
//! linked worktree on a branch of its own. `OpenLane` puts one at the
//! committed head; `Judge` runs the whole pipeline on a candidate's change
//! there (no approval, the agent branch untouched), at most
//! `[run] max_parallel_checks` at once; `DropLane` stops a candidate past its
//! deadline; `Adopt` brings the chosen candidate's commit onto the agent
//! branch, after approval in supervised mode. A revert puts every lane back
//! at the committed head with the agent's worktree.

use std::path::{Path, PathBuf};

use ractor::RpcReplyPort;
use tracing::Instrument;

use super::pipeline::{self, Judged};
use super::{KIND, ModifierState, blocking};
use crate::actors::Context;
use crate::domain::{Attempt, Verdict};
use crate::messages::ActorError;
use crate::workspace::Workspace;

/// Where the candidates' worktrees live.
pub(super) fn lanes_dir(ctx: &Context) -> PathBuf {
    ctx.config.state_dir.join("candidates")
}

impl ModifierState {
    /// Candidate `slot`'s worktree at the committed head, with the change of
    /// the variant the iteration starts from applied when there is one.
    pub(super) fn open_lane(
        &mut self,
        slot: u32,
        started_from: Option<u64>,
        reply: RpcReplyPort<Result<PathBuf, ActorError>>,
    ) {
        let (ctx, head) = (self.ctx.clone(), self.snapshot.head.clone());
        self.work.spawn(async move {
            let opened = blocking(move || open(&ctx, slot, &head, started_from))
                .await
                .map_err(ActorError::Workspace);
            let _ = reply.send(opened);
        });
    }

    /// Judges the change in `lane`; the verdict is the candidate's alone:
    /// the head the modifier knows does not move.
    pub(super) fn judge(
        &mut self,
        attempt: Attempt,
        lane: PathBuf,
        summary: String,
        fitness_before: Option<f64>,
        reply: RpcReplyPort<Result<Verdict, ActorError>>,
    ) {
        let ctx = crate::actors::in_lane(&self.ctx, &lane);
        let (base, checks) = (self.snapshot.head.clone(), self.checks.clone());
        let span = tracing::info_span!(
            "modifier.judge",
            actor = KIND.name(),
            iteration = attempt.iteration as i64,
            candidate.slot = attempt.slot as i64,
        );
        let task = self.work.spawn(
            async move {
                // Builds do not scale past the cores: a few at a time.
                let Ok(_permit) = checks.acquire_owned().await else {
                    return;
                };
                let judged = Judged {
                    iteration: attempt.iteration,
                    fitness_before,
                    started_from: None,
                    candidate: true,
                };
                let verdict = pipeline::validate(&ctx, &base, judged, &summary)
                    .await
                    .map_err(ActorError::Workspace);
                let _ = reply.send(verdict);
            }
            .instrument(span),
        );
        self.judging.insert(attempt.slot, task);
    }

    /// Stops judging candidate `slot` (its iteration went on without it).
    pub(super) fn drop_lane(&mut self, slot: u32) {
        if let Some(task) = self.judging.remove(&slot) {
            task.abort();
        }
    }

    /// The chosen candidate's accepted change onto the agent branch: asked
    /// for approval first in supervised mode (a refusal is the verdict that
    /// stands), then the branch moves from the committed head to its commit.
    pub(super) fn adopt(
        &mut self,
        myself: ractor::ActorRef<crate::messages::ModifierMsg>,
        iteration: u64,
        summary: String,
        verdict: Verdict,
        reply: RpcReplyPort<Result<Verdict, ActorError>>,
    ) {
        let (ctx, base) = (self.ctx.clone(), self.snapshot.head.clone());
        let at = base.clone();
        let span = tracing::info_span!(
            "modifier.adopt",
            actor = KIND.name(),
            iteration = iteration as i64,
            verdict = tracing::field::Empty,
        );
        self.work.spawn(
            async move {
                let adopted = pipeline::adopt(&ctx, &at, iteration, &summary, verdict)
                    .await
                    .map_err(ActorError::Workspace);
                if let Ok(verdict) = &adopted {
                    let outcome = verdict.outcome();
                    tracing::Span::current().record("verdict", outcome.as_str());
                    let fitness_before = verdict.variant().and_then(|v| v.fitness_before);
                    let _ = myself.cast(super::validate::settled(verdict, base, fitness_before));
                }
                let _ = reply.send(adopted);
            }
            .instrument(span),
        );
    }
}

/// Opens (or makes) candidate `slot`'s worktree and puts it at `head`.
fn open(
    ctx: &Context,
    slot: u32,
    head: &str,
    started_from: Option<u64>,
) -> Result<PathBuf, String> {
    let lane = ctx
        .workspace
        .lane(&lanes_dir(ctx), slot)
        .map_err(|e| format!("cannot open the worktree of candidate {slot}: {e}"))?;
    lane.reset_to(head)
        .map_err(|e| format!("cannot reset the worktree of candidate {slot}: {e}"))?;
    if let Some(variant) = started_from
        && let Ok(Some(commit)) = ctx.workspace.variant_commit(variant)
        && let Err(error) = lane.apply_change(&commit)
    {
        tracing::warn!(slot, variant, %error, "the variant's change does not apply to the candidate's worktree; starting from the head");
    }
    Ok(lane.path)
}

/// Puts every candidate worktree there is back at `head`, dropping any
/// half-made change a crashed or abandoned iteration left.
pub(super) fn reset_lanes(ctx: &Context, head: &str) -> Result<(), String> {
    let dir = lanes_dir(ctx);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if !is_lane(&path) {
            continue;
        }
        Workspace { path: path.clone() }
            .reset_to(head)
            .map_err(|e| format!("cannot reset {}: {e}", path.display()))?;
    }
    Ok(())
}

/// A lane directory: named by its slot and holding a worktree.
fn is_lane(path: &Path) -> bool {
    path.file_name()
        .and_then(|name| name.to_str())
        .is_some_and(|name| name.parse::<u32>().is_ok())
        && path.join(".git").exists()
}
