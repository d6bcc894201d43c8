//! An iteration of several candidates (`[run] candidates` > 1): K plans
//! from the learner's ranking, their jobs run at once, each in a worktree of
//! its own off the same head, each change judged by the whole pipeline; the
//! best by fitness (among equals, the smallest change) is brought onto the
//! agent branch and the others are committed beside it as its siblings,
//! with one experience each. Once the first candidate is judged, the others
//! have `[run] candidate_deadline`; one still running then is cancelled and
//! counts as failed.

use std::pin::Pin;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tracing::Instrument;

use super::iteration::{self, StepError, slow, step};
use super::logic::{self, Situation};
use super::{KIND, PlannerSnapshot};
use crate::actors::Context;
use crate::domain::{
    ActorKind, Advice, Attempt, Capability, Experience, Iteration, JobOutcome, JobStatus, Plan,
    Prepared, Research, Sibling, Usage, Verdict,
};
use crate::messages::{self, ExecutorMsg, ModifierMsg};
use crate::store::now_ms;

/// How long a cancelled candidate is given to come back with what it spent.
const CANCEL_GRACE: Duration = Duration::from_secs(10);

/// One candidate as it ended.
pub(super) struct Candidate {
    plan: Plan,
    job: JobOutcome,
    verdict: Option<Verdict>,
    experience: Experience,
    /// A rate limit or a lost login turned its job away.
    turned_away: Option<StepError>,
}

type Running = Pin<Box<dyn std::future::Future<Output = Candidate> + Send>>;

/// The iteration's candidates, from their plans to the commit of the best.
#[allow(clippy::too_many_arguments)]
pub(super) async fn run(
    ctx: &Context,
    snapshot: PlannerSnapshot,
    iteration: u64,
    prepared: &Prepared,
    advice: &Advice,
    capabilities: &[Capability],
    research: Option<&Research>,
    started: Instant,
) -> Result<Iteration, StepError> {
    let situation = Situation {
        goal: &snapshot.goal,
        iteration,
        fitness: prepared.fitness,
        signals: &prepared.signals,
        prompts: &ctx.prompts,
        budget: ctx.config.learning.context_tokens,
        execution: ctx.config.execution,
    };
    let plans = logic::make_plans(
        &situation,
        advice,
        capabilities,
        research,
        ctx.config.candidates,
    )?;
    let candidates = run_all(ctx, prepared, plans, started).await;
    if let Some(error) = all_turned_away(&candidates) {
        return Err(error);
    }
    let chosen = choose(ctx, &candidates).await;
    let (chosen, others) = split(candidates, chosen);
    step(
        ctx,
        iteration,
        "choose",
        format!(
            "candidate {} ({}): {}; {} other(s) archived beside it",
            chosen.plan.slot,
            chosen.plan.capability,
            chosen.experience.outcome.as_str(),
            others.len()
        ),
    );
    crash_point!("candidates.before_commit");
    let verdict = adopt(ctx, iteration, &chosen).await?;
    finish(ctx, snapshot, (chosen, verdict), others, started).await
}

/// Runs every plan as a candidate at once and collects them, with the
/// deadline once the first is judged.
async fn run_all(
    ctx: &Context,
    prepared: &Prepared,
    plans: Vec<Plan>,
    started: Instant,
) -> Vec<Candidate> {
    let mut waiting: Vec<Plan> = plans.clone();
    let mut running: FuturesUnordered<Running> = plans
        .into_iter()
        .map(|plan| Box::pin(one(ctx.clone(), prepared.clone(), plan, started)) as Running)
        .collect();
    let mut done = Vec::new();
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let next = match deadline {
            None => running.next().await,
            Some(at) => match tokio::time::timeout_at(at, running.next()).await {
                Ok(next) => next,
                Err(_) => break,
            },
        };
        let Some(candidate) = next else {
            return done;
        };
        waiting.retain(|plan| plan.slot != candidate.plan.slot);
        deadline.get_or_insert_with(|| tokio::time::Instant::now() + ctx.config.candidate_deadline);
        done.push(candidate);
    }
    // Past the deadline: each candidate still running is stopped, and
    // given a moment to come back with what its job spent.
    for plan in &waiting {
        let attempt = Attempt::of(plan);
        tracing::warn!(
            iteration = plan.iteration,
            slot = plan.slot,
            "candidate past its deadline: stopped"
        );
        let _ = messages::cast(ActorKind::Executor, ExecutorMsg::Cancel(attempt));
        let _ = messages::cast(ActorKind::Modifier, ModifierMsg::DropLane(plan.slot));
    }
    let grace = tokio::time::Instant::now() + CANCEL_GRACE;
    while let Ok(Some(candidate)) = tokio::time::timeout_at(grace, running.next()).await {
        waiting.retain(|plan| plan.slot != candidate.plan.slot);
        done.push(candidate);
    }
    for plan in waiting {
        done.push(past_deadline(ctx, prepared, plan, started));
    }
    done
}

/// One candidate: its worktree, its job, its verdict, in a span of its own
/// under the iteration's.
async fn one(ctx: Context, prepared: Prepared, mut plan: Plan, started: Instant) -> Candidate {
    let span = tracing::info_span!(
        "candidate",
        actor = KIND.name(),
        iteration = plan.iteration as i64,
        candidate.slot = plan.slot as i64,
        capability = %plan.capability,
        verdict = tracing::field::Empty,
    );
    async move {
        let (job, verdict, turned_away) = match attempt(&ctx, &prepared, &mut plan).await {
            Ok(ended) => ended,
            Err(error) => (failed(&plan, error.to_string()), None, None),
        };
        let experience =
            logic::experience_of(&plan, &prepared, &job, verdict.as_ref(), started.elapsed());
        tracing::Span::current().record("verdict", experience.outcome.as_str());
        step(
            &ctx,
            plan.iteration,
            "candidate",
            format!(
                "candidate {} ({}): job {} {}, {}",
                plan.slot,
                plan.capability,
                job.job_id,
                job.status.as_str(),
                experience.outcome.as_str()
            ),
        );
        Candidate {
            plan,
            job,
            verdict,
            experience,
            turned_away,
        }
    }
    .instrument(span)
    .await
}

/// The worktree, the job and (when it completed) the verdict of one
/// candidate; an error is the candidate's failure, not the iteration's.
async fn attempt(
    ctx: &Context,
    prepared: &Prepared,
    plan: &mut Plan,
) -> Result<(JobOutcome, Option<Verdict>, Option<StepError>), StepError> {
    let (slot, started_from) = (plan.slot, prepared.started_from);
    let lane = messages::call(ActorKind::Modifier, slow(ctx), |reply| {
        ModifierMsg::OpenLane {
            slot,
            started_from,
            reply,
        }
    })
    .await??;
    plan.lane = Some(lane.clone());
    step(
        ctx,
        plan.iteration,
        "candidate",
        format!("candidate {slot} ({}): running its job", plan.capability),
    );
    let job = iteration::execute(ctx, plan).await?;
    if let Err(turned) = iteration::turned_away(&job) {
        return Ok((job, None, Some(turned)));
    }
    if job.status != JobStatus::Completed {
        return Ok((job, None, None));
    }
    let (attempt, summary) = (Attempt::of(plan), plan.capability.clone());
    let fitness_before = prepared.fitness;
    let verdict = messages::call(ActorKind::Modifier, slow(ctx), |reply| ModifierMsg::Judge {
        attempt,
        lane,
        summary,
        fitness_before,
        reply,
    })
    .await??;
    Ok((job, Some(verdict), None))
}

/// A failed job's outcome for a candidate that never got one.
fn failed(plan: &Plan, error: String) -> JobOutcome {
    tracing::warn!(iteration = plan.iteration, slot = plan.slot, %error, "candidate failed");
    JobOutcome {
        job_id: 0,
        status: JobStatus::Failed,
        output: String::new(),
        error: Some(error),
        usage: Usage::default(),
        claude: Default::default(),
    }
}

/// A candidate that did not come back after its deadline and the grace.
fn past_deadline(ctx: &Context, prepared: &Prepared, plan: Plan, started: Instant) -> Candidate {
    let job = JobOutcome {
        status: JobStatus::Killed,
        ..failed(
            &plan,
            format!(
                "killed at the candidate deadline ({} after the first candidate was judged)",
                humantime::format_duration(ctx.config.candidate_deadline)
            ),
        )
    };
    let experience = logic::experience_of(&plan, prepared, &job, None, started.elapsed());
    step(
        ctx,
        plan.iteration,
        "candidate",
        format!(
            "candidate {} ({}): killed at the deadline",
            plan.slot, plan.capability
        ),
    );
    Candidate {
        plan,
        job,
        verdict: None,
        experience,
        turned_away: None,
    }
}

/// When every candidate was turned away (a rate limit, a lost login), the
/// iteration is too, as a single job's would be.
fn all_turned_away(candidates: &[Candidate]) -> Option<StepError> {
    if candidates.is_empty() || candidates.iter().any(|c| c.turned_away.is_none()) {
        return None;
    }
    candidates.iter().find_map(|c| match &c.turned_away {
        Some(StepError::LoginLost(reason)) => Some(StepError::LoginLost(reason.clone())),
        Some(StepError::RateLimited { until_ms, reason }) => Some(StepError::RateLimited {
            until_ms: *until_ms,
            reason: reason.clone(),
        }),
        _ => None,
    })
}

/// Which candidate the iteration keeps (see [`rank`]); the size of each
/// accepted change is read from its commit.
async fn choose(ctx: &Context, candidates: &[Candidate]) -> usize {
    let mut sizes = Vec::with_capacity(candidates.len());
    for candidate in candidates {
        let size = match &candidate.verdict {
            Some(Verdict::Accepted { commit, .. }) => {
                let (workspace, commit) = (ctx.workspace.clone(), commit.clone());
                tokio::task::spawn_blocking(move || workspace.commit_stat(&commit).ok())
                    .await
                    .ok()
                    .flatten()
                    .map_or(usize::MAX, |(_, added, removed)| added + removed)
            }
            _ => usize::MAX,
        };
        sizes.push(size);
    }
    let ranks: Vec<Rank> = candidates
        .iter()
        .zip(&sizes)
        .map(|(c, size)| Rank::of(c.verdict.as_ref(), *size, c.plan.slot))
        .collect();
    best(&ranks)
}

/// What a candidate is compared by.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Rank {
    /// Accepted, refused, no change, failed: the first is best.
    standing: u8,
    /// Lower is better; a change refused before fitness was measured has
    /// none.
    fitness: Option<f64>,
    /// Lines added and removed.
    size: usize,
    slot: u32,
}

impl Rank {
    fn of(verdict: Option<&Verdict>, size: usize, slot: u32) -> Rank {
        let (standing, fitness) = match verdict {
            Some(Verdict::Accepted { fitness_after, .. }) => (0, Some(*fitness_after)),
            Some(Verdict::Rejected { fitness_after, .. }) => (1, *fitness_after),
            Some(Verdict::NoChange) => (2, None),
            None => (3, None),
        };
        Rank {
            standing,
            fitness,
            size,
            slot,
        }
    }

    fn key(&self) -> (u8, f64, usize, u32) {
        (
            self.standing,
            self.fitness.unwrap_or(f64::INFINITY),
            self.size,
            self.slot,
        )
    }
}

/// The index of the best candidate: accepted before refused before no
/// change before failed; then the lowest fitness; among equals the smallest
/// change, then the lowest slot.
pub(super) fn best(ranks: &[Rank]) -> usize {
    ranks
        .iter()
        .enumerate()
        .min_by(|(_, a), (_, b)| {
            let (a, b) = (a.key(), b.key());
            a.0.cmp(&b.0)
                .then(a.1.total_cmp(&b.1))
                .then(a.2.cmp(&b.2))
                .then(a.3.cmp(&b.3))
        })
        .map_or(0, |(index, _)| index)
}

/// The chosen candidate and the others, in slot order.
fn split(mut candidates: Vec<Candidate>, chosen: usize) -> (Candidate, Vec<Candidate>) {
    let chosen = candidates.remove(chosen);
    candidates.sort_by_key(|c| c.plan.slot);
    (chosen, candidates)
}

/// The chosen candidate's change onto the agent branch, when it was
/// accepted (approval first in supervised mode); the verdict that stands.
async fn adopt(
    ctx: &Context,
    iteration: u64,
    chosen: &Candidate,
) -> Result<Option<Verdict>, StepError> {
    let Some(verdict) = chosen.verdict.clone() else {
        return Ok(None);
    };
    if !matches!(verdict, Verdict::Accepted { .. }) {
        return Ok(Some(verdict));
    }
    let summary = chosen.plan.capability.clone();
    let deadline = slow(ctx) + ctx.config.approval_timeout;
    let verdict = Box::new(verdict);
    let adopted = messages::call(ActorKind::Modifier, deadline, |reply| ModifierMsg::Adopt {
        iteration,
        summary,
        verdict,
        reply,
    })
    .await??;
    Ok(Some(adopted))
}

/// Learns from every candidate and commits the iteration with its
/// siblings, what all of them spent counted as the iteration's.
async fn finish(
    ctx: &Context,
    snapshot: PlannerSnapshot,
    (chosen, verdict): (Candidate, Option<Verdict>),
    others: Vec<Candidate>,
    started: Instant,
) -> Result<Iteration, StepError> {
    let mut experience = chosen.experience.clone();
    if let Some(verdict) = &verdict {
        experience.outcome = verdict.outcome();
    }
    let after = match &verdict {
        Some(Verdict::Accepted { signals_after, .. }) => Some(signals_after.clone()),
        _ => None,
    };
    iteration::learn(ctx, &experience, after).await?;
    for other in &others {
        iteration::learn(ctx, &other.experience, None).await?;
    }
    let mut committed = logic::committed_iteration(
        &snapshot.goal,
        &experience,
        verdict.as_ref(),
        &chosen.job,
        now_ms(),
    );
    committed.usage = others.iter().fold(committed.usage, |total, other| Usage {
        input_tokens: total.input_tokens + other.job.usage.input_tokens,
        output_tokens: total.output_tokens + other.job.usage.output_tokens,
        cost_usd: total.cost_usd + other.job.usage.cost_usd,
    });
    // The iteration took as long as all its candidates and the adoption;
    // each experience keeps its own candidate's time.
    committed.duration = started.elapsed();
    let siblings: Vec<Sibling> = others
        .into_iter()
        .map(|other| Sibling {
            slot: other.plan.slot,
            variant: other.verdict.as_ref().and_then(Verdict::variant).cloned(),
            experience: other.experience,
        })
        .collect();
    iteration::commit(ctx, snapshot, &committed, &experience, &siblings).await?;
    Ok(committed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rank(standing: u8, fitness: Option<f64>, size: usize, slot: u32) -> Rank {
        Rank {
            standing,
            fitness,
            size,
            slot,
        }
    }

    #[test]
    fn the_best_is_accepted_then_lowest_fitness_then_smallest_change() {
        // Four accepted changes: fitness 9, 6, 6 (a larger change), 7.
        let ranks = [
            rank(0, Some(9.0), 1, 0),
            rank(0, Some(6.0), 4, 1),
            rank(0, Some(6.0), 2, 2),
            rank(0, Some(7.0), 1, 3),
        ];
        assert_eq!(best(&ranks), 2, "lowest fitness, and of those the smaller");
        // A refused change with a lower fitness never beats an accepted one.
        let ranks = [rank(1, Some(1.0), 1, 0), rank(0, Some(5.0), 9, 1)];
        assert_eq!(best(&ranks), 1);
        // Nothing accepted: a refusal is the iteration's outcome before no
        // change, before a failed job.
        let ranks = [
            rank(3, None, 0, 0),
            rank(2, None, 0, 1),
            rank(1, None, 0, 2),
        ];
        assert_eq!(best(&ranks), 2);
        let ranks = [rank(3, None, 0, 0), rank(3, None, 0, 1)];
        assert_eq!(best(&ranks), 0, "all equal: the lowest slot");
    }
}
