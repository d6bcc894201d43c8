//! `Validate`: judges the worktree's change off the mailbox (`pipeline.rs`),
//! records the verdict on the `modifier.validate` span, and tells the actor
//! what the head became (`Settled`): the new commit when the change was
//! kept, the base otherwise.

use ractor::{ActorRef, RpcReplyPort};
use tracing::Instrument;

use super::pipeline::{self, Judged};
use super::{KIND, ModifierState};
use crate::domain::Verdict;
use crate::messages::{ActorError, ModifierMsg};

impl ModifierState {
    pub(super) fn validate(
        &mut self,
        myself: ActorRef<ModifierMsg>,
        iteration: u64,
        summary: String,
        fitness_before: Option<f64>,
        started_from: Option<u64>,
        reply: RpcReplyPort<Result<Verdict, ActorError>>,
    ) {
        let ctx = self.ctx.clone();
        let base = self.snapshot.head.clone();
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
        self.work.spawn(async move {
            let judged = Judged {
                iteration,
                fitness_before,
                started_from,
                candidate: false,
            };
            let result = pipeline::validate(&ctx, &base, judged, &summary)
                .instrument(span.clone())
                .await
                .map_err(ActorError::Workspace);
            record_verdict(&span, &result);
            if let Ok(verdict) = &result {
                let _ = myself.cast(settled(verdict, base, fitness_before));
            }
            let _ = reply.send(result);
        });
    }
}

/// The verdict's fields on the `modifier.validate` span.
fn record_verdict(span: &tracing::Span, result: &Result<Verdict, ActorError>) {
    match result {
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
}

/// What the head is after `verdict`: the kept change's commit with what was
/// measured there, or still `base`, rolled back when the change was refused.
pub(super) fn settled(verdict: &Verdict, base: String, fitness_before: Option<f64>) -> ModifierMsg {
    match verdict {
        Verdict::Accepted {
            commit,
            fitness_after,
            signals_after,
            ..
        } => ModifierMsg::Settled {
            head: commit.clone(),
            fitness: Some(*fitness_after),
            signals: Some(signals_after.clone()),
            rolled_back: false,
        },
        verdict => ModifierMsg::Settled {
            head: base,
            fitness: fitness_before,
            signals: None,
            rolled_back: matches!(verdict, Verdict::Rejected { .. }),
        },
    }
}
