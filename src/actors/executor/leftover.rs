//! The jobs an earlier executor left behind (a crash, `kill -9`): a job on
//! the MCP server outlives the agent and is waited for again instead of paid
//! for twice; any other job still marked running has its process group
//! killed and is recorded as failed.

use tokio_util::sync::CancellationToken;

use super::records::is_remote;
use crate::actors::Context;
use crate::cognition::Job;
use crate::domain::{JobOutcome, JobStatus, Plan};
use crate::process;
use crate::store::{Durable, JobRecord, now_ms};

/// A job for `iteration` that an earlier executor started on the MCP server
/// and never saw finish.
pub(super) fn pending_remote_job(ctx: &Context, iteration: u64) -> Option<JobRecord> {
    ctx.store
        .jobs_of(iteration)
        .ok()?
        .into_iter()
        .find(|j| j.status.is_running() && is_remote(j))
}

/// Waits for a pending remote job of this iteration instead of paying for the
/// same work twice.
pub(super) async fn reattach(
    ctx: &Context,
    plan: &Plan,
    cancel: &CancellationToken,
) -> Option<JobOutcome> {
    let mut record = pending_remote_job(ctx, plan.iteration)?;
    // Without the server's id, `job::run` starts the job under its old id;
    // the server recognises the request and returns the running job.
    let remote_id = record.remote_id.clone()?;
    tracing::info!(job = record.id, remote = %remote_id, iteration = plan.iteration, "re-attaching to a job started before a restart");
    let job = Job {
        id: record.id,
        capability: record.capability.clone(),
        prompt: plan.prompt.clone(),
        cwd: ctx.workspace.path.clone(),
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
/// stay: the next `Execute` for their iteration re-attaches to them.
pub(super) async fn abandon_leftover_jobs(ctx: &Context) {
    let Ok(jobs) = ctx.store.jobs() else {
        return;
    };
    for mut job in jobs
        .into_iter()
        .filter(|j| j.status.is_running() && !is_remote(j))
    {
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
