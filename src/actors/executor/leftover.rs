//! The jobs an earlier executor left behind (a crash, `kill -9`): a job on
//! the MCP server or on the workers' queue outlives the agent and is waited
//! for again instead of paid for twice; any other job still marked running
//! has its process group killed and is recorded as failed.

use tokio_util::sync::CancellationToken;

use super::records::is_remote;
use crate::actors::Context;
use crate::cognition::Job;
use crate::domain::{Attempt, BackendKind, JobOutcome, JobStatus, Plan};
use crate::process;
use crate::store::{Durable, JobRecord, now_ms};

/// A job for `plan`'s attempt that an earlier executor started remotely and
/// never saw finish. A job on the workers' queue names its attempt in its
/// key, so each candidate finds its own; an MCP job is found by iteration,
/// for the agent's own worktree only (a candidate's lane is reset before
/// its iteration is redone, and an MCP job edits the lane in place).
pub(super) fn pending_remote_job(ctx: &Context, plan: &Plan) -> Option<JobRecord> {
    let attempt = Attempt::of(plan);
    ctx.store
        .jobs_of(plan.iteration)
        .ok()?
        .into_iter()
        .find(|j| {
            j.status.is_running()
                && is_remote(j)
                && match j.remote_id.as_deref().and_then(crate::workers::attempt_of) {
                    Some(named) => named == attempt,
                    None => plan.lane.is_none(),
                }
        })
}

/// A job of `iteration` still on the MCP server: it edits the agent's
/// worktree in place, so the worktree is kept for it (a job on the queue
/// sends its change back as a patch instead).
pub(super) fn editing_in_place(ctx: &Context, iteration: u64) -> Option<JobRecord> {
    ctx.store
        .jobs_of(iteration)
        .ok()?
        .into_iter()
        .find(|j| j.status.is_running() && is_remote(j) && j.backend != BackendKind::Nats)
}

/// Waits for a pending remote job of this iteration instead of paying for the
/// same work twice.
pub(super) async fn reattach(
    ctx: &Context,
    plan: &Plan,
    cancel: &CancellationToken,
) -> Option<JobOutcome> {
    let mut record = pending_remote_job(ctx, plan)?;
    // Without the server's id, `job::run` starts the job under its old id;
    // the server recognises the request and returns the running job.
    let remote_id = record.remote_id.clone()?;
    tracing::info!(job = record.id, remote = %remote_id, iteration = plan.iteration, "re-attaching to a job started before a restart");
    let job = Job {
        id: record.id,
        attempt: Attempt::of(plan),
        capability: record.capability.clone(),
        prompt: plan.prompt.clone(),
        cwd: plan
            .lane
            .clone()
            .unwrap_or_else(|| ctx.workspace.path.clone()),
        timeout: ctx.config.job_timeout,
        execution: plan.execution,
        cancel: cancel.clone(),
        resume: plan.resume.clone(),
        progress: Default::default(),
    };
    let outcome = ctx.backend.reattach(job, remote_id.clone()).await;
    record.ended_at_ms = Some(now_ms());
    match &outcome {
        Some(outcome) => {
            record.status = outcome.status;
            record.error = outcome.error.clone();
        }
        None => {
            record.status = JobStatus::Failed;
            record.error = Some(format!("cannot re-attach to remote job {remote_id}"));
        }
    }
    let _ = ctx.store.put_job(&record, Durable::Now).await;
    outcome
}

/// Jobs still marked running belong to an executor that died: kill what is
/// left of their processes and record them as failed. Jobs on the MCP server
/// or the queue stay: the next `Execute` for their attempt re-attaches to
/// them. A queue job without its key on record was never published (the
/// key is durable before the publish).
pub(super) async fn abandon_leftover_jobs(ctx: &Context) {
    let Ok(jobs) = ctx.store.jobs() else {
        return;
    };
    for mut job in jobs.into_iter().filter(|j| {
        j.status.is_running()
            && (!is_remote(j) || (j.backend == BackendKind::Nats && j.remote_id.is_none()))
    }) {
        if let Some(group) = job.process_group {
            process::kill_stale_group(group);
        }
        job.status = JobStatus::Failed;
        job.ended_at_ms = Some(now_ms());
        job.error = Some("abandoned: the executor stopped while the job ran".into());
        tracing::warn!(
            job = job.id,
            "abandoned a job left running by an earlier executor"
        );
        let _ = ctx.store.put_job(&job, Durable::Now).await;
    }
}
