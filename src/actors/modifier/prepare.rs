//! `Prepare`: before an iteration, the worktree goes back to the committed
//! head (dropping anything a crashed iteration left) and the head's fitness
//! and signals are measured, or reused when this actor measured them; when
//! the line has stalled, the best earlier variant's change is applied to
//! start from (`explore.rs`). The work runs off the mailbox; the head it
//! found comes back as `Settled`.

use std::sync::{Arc, Mutex};

use ractor::{ActorRef, RpcReplyPort};
use tracing::Instrument;

use super::{Context, KIND, ModifierState, blocking, explore, fitness, reset_to_committed};
use crate::domain::{Prepared, Signals};
use crate::messages::{ActorError, ModifierMsg};
use crate::sandbox::Reach;

impl ModifierState {
    pub(super) fn prepare(
        &mut self,
        myself: ActorRef<ModifierMsg>,
        iteration: u64,
        keep_worktree: bool,
        reply: RpcReplyPort<Result<Prepared, ActorError>>,
    ) {
        let ctx = self.ctx.clone();
        let head = self.snapshot.head.clone();
        // The head's fitness is reused only with its signals.
        let known = self.snapshot.head_fitness.zip(self.head_signals.clone());
        let exploration = self.exploration.clone();
        let failing = self.failing_at(&head);
        let span = tracing::info_span!(
            "modifier.prepare",
            actor = KIND.name(),
            iteration = iteration as i64,
            keep_worktree,
            started_from = tracing::field::Empty,
        );
        self.work.spawn(async move {
            let result = prepare_worktree(&ctx, &head, known, keep_worktree, &exploration)
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

    /// What validation showed failing at `head`, when the base that failed
    /// is still the head.
    fn failing_at(&self, head: &str) -> Option<Signals> {
        self.failing_base
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .filter(|(at, _)| at == head)
            .map(|(_, signals)| signals)
    }
}

/// The worktree at `head` (unless it is kept as it is), the head's fitness
/// and signals, and the variant it starts from, if any.
async fn prepare_worktree(
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
