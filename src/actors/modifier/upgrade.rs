//! The pipeline's `modifier.upgrade` step, for a change to the agent's own
//! source with `[upgrade]` on: the change is built as a candidate release
//! and judged as an agent against the running release
//! (`upgrade::candidate`). A candidate that does not build is refused by
//! validation; one that is worse at improving workspaces by the rule
//! `agent-fitness`, with both scores. A kept change's binary is staged as
//! the release named after its commit, which the daemon hands over to once
//! the iteration is committed. Every attempt is recorded
//! (`send modifier upgrades`).

use std::time::Duration;

use super::blocking;
use crate::actors::Context;
use crate::domain::{Judge, RefusedBy};
use crate::upgrade::attempts::{self, KEPT, REFUSED};
use crate::upgrade::candidate::{self, Built, Evaluation};
use crate::upgrade::releases::Releases;

use super::pipeline::Refusal;

/// The rule a candidate worse at its job breaks.
pub const AGENT_FITNESS: &str = "agent-fitness";

/// What the step learned of the candidate.
#[derive(Debug, Clone)]
pub(super) struct Judged {
    built: Option<Built>,
    evaluation: Option<Evaluation>,
}

impl Judged {
    /// The lines the commit message carries.
    pub(super) fn commit_lines(&self) -> String {
        let mut lines = String::new();
        if let Some(built) = &self.built {
            lines.push_str(&format!(
                "Candidate build: {:.1}s\n",
                built.took.as_secs_f64()
            ));
        }
        if let Some(evaluation) = &self.evaluation {
            lines.push_str(&format!("Agent evaluation: {}\n", evaluation.describe()));
        }
        lines
    }

    fn build_ms(&self) -> u64 {
        self.built.as_ref().map_or(0, |b| b.took.as_millis() as u64)
    }
}

/// Builds and judges the worktree's change; the refusal (with what was
/// learned before it) when it is not kept.
pub(super) async fn judge(
    ctx: &Context,
    iteration: u64,
    fitness_after: f64,
) -> Result<Judged, (Option<Judged>, Refusal)> {
    let config = &ctx.config.upgrade;
    let state_dir = ctx.config.state_dir.as_path();
    let built = candidate::build(config, state_dir, &ctx.workspace.path, ctx.sandbox.as_ref())
        .await
        .map_err(|why| {
            let nothing = Judged {
                built: None,
                evaluation: None,
            };
            (
                Some(nothing),
                Refusal::new(Judge::Validation, why, Some(fitness_after)),
            )
        })?;
    tracing::info!(
        iteration,
        took = %humantime::format_duration(round(built.took)),
        "candidate release built"
    );
    let mut judged = Judged {
        built: Some(built.clone()),
        evaluation: None,
    };
    let refused = |judged: &Judged, by: RefusedBy, why: String| {
        (
            Some(judged.clone()),
            Refusal::new(by, why, Some(fitness_after)),
        )
    };
    let running = std::env::current_exe().map_err(|e| {
        refused(
            &judged,
            Judge::Validation.into(),
            format!("cannot find the running release: {e}"),
        )
    })?;
    let suite = candidate::suite(config, &ctx.workspace.path)
        .map_err(|why| refused(&judged, Judge::Validation.into(), why))?;
    let out = Releases::of_state(state_dir)
        .dir
        .join("evaluations")
        .join(iteration.to_string());
    let evaluation = candidate::evaluate(config, &built.binary, &running, &suite, &out)
        .await
        .map_err(|why| {
            refused(
                &judged,
                RefusedBy::Rule(AGENT_FITNESS.into()),
                format!("{AGENT_FITNESS}: the candidate could not be judged: {why}"),
            )
        })?;
    tracing::info!(iteration, "agent evaluation: {}", evaluation.describe());
    judged.evaluation = Some(evaluation.clone());
    if !evaluation.kept {
        return Err(refused(
            &judged,
            RefusedBy::Rule(AGENT_FITNESS.into()),
            format!(
                "{AGENT_FITNESS}: the candidate is worse at improving workspaces: {}",
                evaluation.describe()
            ),
        ));
    }
    Ok(judged)
}

/// The change was committed: its binary becomes the release named after
/// the commit, and the attempt is recorded as kept.
pub(super) async fn kept(
    ctx: &Context,
    iteration: u64,
    commit: &str,
    judged: &Judged,
) -> Result<(), String> {
    let release = attempts::release_name(commit);
    let Some(built) = &judged.built else {
        return Ok(());
    };
    let (releases, staged, binary) = (
        Releases::of_state(&ctx.config.state_dir),
        release.clone(),
        built.binary.clone(),
    );
    blocking(move || releases.stage(&staged, &binary).map_err(|e| e.to_string()))
        .await
        .map_err(|e| format!("cannot stage release {release}: {e}"))?;
    let mut attempt = attempts::record(iteration);
    attempt.commit = commit.to_string();
    attempt.release = release;
    attempt.build_ms = judged.build_ms();
    attempt.evaluation = judged.evaluation.clone();
    attempt.outcome = KEPT.to_string();
    attempt.reason = judged
        .evaluation
        .as_ref()
        .map_or(String::new(), Evaluation::describe);
    put(ctx, &attempt).await
}

/// The change was refused after its candidate was built: recorded with why.
pub(super) async fn refused(
    ctx: &Context,
    iteration: u64,
    variant: &str,
    judged: &Judged,
    reason: &str,
) -> Result<(), String> {
    let mut attempt = attempts::record(iteration);
    attempt.commit = variant.to_string();
    attempt.build_ms = judged.build_ms();
    attempt.evaluation = judged.evaluation.clone();
    attempt.outcome = REFUSED.to_string();
    attempt.reason = reason.to_string();
    put(ctx, &attempt).await
}

async fn put(ctx: &Context, attempt: &crate::store::UpgradeRecord) -> Result<(), String> {
    ctx.store
        .put_upgrade(attempt)
        .await
        .map_err(|e| format!("cannot record the upgrade attempt: {e}"))
}

fn round(took: Duration) -> Duration {
    Duration::from_millis(took.as_millis() as u64)
}
