//! The executor: runs plans through the cognition backend, off its mailbox,
//! at most `concurrency` at a time (from `actors.toml`). Every job is written
//! to the store before it starts and when it ends, with its process group, so
//! that after a crash or `kill -9` the next executor kills what was left
//! running and records those jobs as failed instead of losing them.

use std::collections::HashMap;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{Context, handle_common, load_snapshot};
use crate::cognition::{Job, StartHook, Started};
use crate::domain::{ActorKind, JobOutcome, JobStatus, Plan, Usage};
use crate::messages::{ActorError, ExecutorMsg};
use crate::process;
use crate::store::{Durable, JobRecord, JobSession, now_ms};

const KIND: ActorKind = ActorKind::Executor;
const SCHEMA: u32 = 1;

/// The executor's committed state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExecutorSnapshot {
    pub jobs_completed: u64,
    pub jobs_failed: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
}

pub struct Executor;

pub struct ExecutorState {
    ctx: Context,
    snapshot: ExecutorSnapshot,
    slots: Arc<Semaphore>,
    /// Running jobs; dropping the set (the actor died) aborts them, and the
    /// process runner kills their process groups.
    jobs: JoinSet<()>,
    /// Cancel handles of running jobs, by iteration.
    cancels: HashMap<u64, CancellationToken>,
}

impl Actor for Executor {
    type Msg = ExecutorMsg;
    type State = ExecutorState;
    type Arguments = Context;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        ctx: Context,
    ) -> Result<Self::State, ActorProcessingErr> {
        let snapshot = load_snapshot(&ctx.store, KIND, SCHEMA)?.unwrap_or_default();
        abandon_leftover_jobs(&ctx).await;
        Ok(ExecutorState {
            slots: Arc::new(Semaphore::new(ctx.tree.executor_concurrency)),
            ctx,
            snapshot,
            jobs: JoinSet::new(),
            cancels: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: ExecutorMsg,
        state: &mut ExecutorState,
    ) -> Result<(), ActorProcessingErr> {
        while state.jobs.try_join_next().is_some() {}
        match message {
            ExecutorMsg::Tools(reply) => {
                let tools = state
                    .ctx
                    .store
                    .tools()
                    .map_err(|e| ActorError::Store(e.to_string()));
                let _ = reply.send(tools);
            }
            ExecutorMsg::Capabilities(reply) => {
                let backend = &state.ctx.backend;
                let _ = reply.send(if backend.takes_prompts() {
                    state.ctx.prompts.capabilities()
                } else {
                    backend.capabilities()
                });
            }
            ExecutorMsg::PendingJob { iteration, reply } => {
                let pending = pending_remote_job(&state.ctx, iteration);
                let _ = reply.send(
                    pending.map(|job| job.remote_id.unwrap_or_else(|| format!("job {}", job.id))),
                );
            }
            ExecutorMsg::Execute { plan, reply } => {
                let ctx = state.ctx.clone();
                let slots = state.slots.clone();
                let cancel = CancellationToken::new();
                state.cancels.insert(plan.iteration, cancel.clone());
                // Off the mailbox, in a span of its own under the caller's.
                let span = tracing::info_span!(
                    "executor.job",
                    actor = KIND.name(),
                    iteration = plan.iteration as i64,
                    capability = %plan.capability,
                    job.id = tracing::field::Empty,
                    job.status = tracing::field::Empty,
                );
                let iteration = plan.iteration;
                state.jobs.spawn(
                    async move {
                        let outcome = execute(&ctx, slots, plan, cancel).await;
                        let span = tracing::Span::current();
                        span.record("job.id", outcome.job_id as i64);
                        span.record("job.status", outcome.status.as_str());
                        let _ = myself.cast(ExecutorMsg::JobDone {
                            iteration,
                            outcome,
                            reply,
                        });
                    }
                    .instrument(span),
                );
            }
            ExecutorMsg::Jobs { last, reply } => {
                let _ = reply.send(state.ctx.store.last_jobs(last).unwrap_or_default());
            }
            ExecutorMsg::KillJob { job, reply } => {
                let record = state.ctx.store.job(job).ok().flatten();
                let result = match record {
                    None => Err(ActorError::Refused(format!("there is no job {job}"))),
                    Some(record) if !record.status.is_running() => Err(ActorError::Refused(
                        format!("job {job} is not running (it is {})", record.status),
                    )),
                    Some(record) => match state.cancels.get(&record.iteration) {
                        Some(cancel) => {
                            cancel.cancel();
                            Ok(())
                        }
                        None => Err(ActorError::Refused(format!(
                            "job {job} is not run by this executor"
                        ))),
                    },
                };
                let _ = reply.send(result);
            }
            ExecutorMsg::JobDone {
                iteration,
                outcome,
                reply,
            } => {
                state.cancels.remove(&iteration);
                let s = &mut state.snapshot;
                match outcome.status {
                    JobStatus::Completed => s.jobs_completed += 1,
                    _ => s.jobs_failed += 1,
                }
                s.input_tokens += outcome.usage.input_tokens;
                s.output_tokens += outcome.usage.output_tokens;
                s.cost_usd += outcome.usage.cost_usd;
                let _ = reply.send(outcome);
            }
            ExecutorMsg::Common(common) => {
                handle_common(KIND, SCHEMA, &state.ctx.store, &mut state.snapshot, common).await?
            }
        }
        Ok(())
    }
}

/// Runs one plan: waits for a slot, records the job, runs it, records the end.
async fn execute(
    ctx: &Context,
    slots: Arc<Semaphore>,
    plan: Plan,
    cancel: CancellationToken,
) -> JobOutcome {
    let failed = |job_id: u64, error: String| JobOutcome {
        job_id,
        status: JobStatus::Failed,
        output: String::new(),
        error: Some(error),
        usage: Usage::default(),
        claude: Default::default(),
    };
    let Ok(_slot) = slots.acquire_owned().await else {
        return failed(0, "the executor is shutting down".into());
    };
    if let Some(outcome) = reattach(ctx, &plan, &cancel).await {
        return outcome;
    }
    // A remote job recorded before the agent died but never seen started
    // keeps its id: the backend asks the server for it under the same key.
    let unseen = pending_remote_job(ctx, plan.iteration).filter(|j| j.remote_id.is_none());
    if let Some(job) = &unseen {
        tracing::info!(
            job = job.id,
            iteration = plan.iteration,
            "re-attaching to a job started before a restart, by its request key"
        );
    }
    let id = match unseen.as_ref().map(|j| j.id) {
        Some(id) => id,
        None => match ctx.store.next_job_id() {
            Ok(id) => id,
            Err(error) => return failed(0, format!("cannot record the job: {error}")),
        },
    };
    let mut record = JobRecord {
        id,
        iteration: plan.iteration,
        backend: ctx.backend.name().to_string(),
        capability: plan.capability.clone(),
        status: JobStatus::Running,
        process_group: None,
        remote_id: None,
        started_at_ms: now_ms(),
        ended_at_ms: None,
        error: None,
        session: JobSession::default(),
    };
    // A job on the MCP server must be on record before it is asked for: a
    // restart finds it by that record instead of paying for it twice.
    let durable = if is_remote(&record) {
        Durable::Now
    } else {
        Durable::AtCommit
    };
    if let Err(error) = ctx.store.put_job(&record, durable).await {
        return failed(id, format!("cannot record the job: {error}"));
    }
    let job = Job {
        id,
        capability: plan.capability.clone(),
        prompt: plan.prompt.clone(),
        cwd: ctx.workspace.path.clone(),
        timeout: ctx.config.job_timeout,
        execution: plan.execution,
        cancel,
    };
    let (hook, place) = StartHook::new();
    crate::telemetry::metrics::job_in_flight(1.0);
    // The model call, with the GenAI semantic-convention attributes.
    let cognition = tracing::info_span!(
        "cognition.run",
        backend = ctx.backend.name(),
        gen_ai.system = if ctx.backend.name() == "offline" {
            "local"
        } else {
            "anthropic"
        },
        gen_ai.operation.name = "execute",
        gen_ai.request.model = ctx.config.model.as_deref().unwrap_or("default"),
        gen_ai.usage.input_tokens = tracing::field::Empty,
        gen_ai.usage.output_tokens = tracing::field::Empty,
        gen_ai.usage.cost_usd = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    let run = ctx.backend.run(job, hook).instrument(cognition.clone());
    let note_place = async {
        let (place, ack) = place.await.ok()?;
        let mut running = record.clone();
        match &place {
            Started::Process(group) => running.process_group = Some(*group),
            Started::Remote(id) => running.remote_id = Some(id.clone()),
        }
        // Where it runs is durable before the job goes on: a process group
        // must be found and killed after a crash, a remote id re-attached to.
        if let Err(error) = ctx.store.put_job(&running, Durable::Now).await {
            tracing::warn!(job = running.id, %error, "cannot record where a job runs");
        }
        let _ = ack.send(());
        Some(running)
    };
    let (outcome, running) = tokio::join!(run, note_place);
    crate::telemetry::metrics::job_in_flight(-1.0);
    // Signed on purpose: the OTLP layer exports u64 values as strings.
    cognition.record(
        "gen_ai.usage.input_tokens",
        outcome.usage.input_tokens as i64,
    );
    cognition.record(
        "gen_ai.usage.output_tokens",
        outcome.usage.output_tokens as i64,
    );
    cognition.record("gen_ai.usage.cost_usd", outcome.usage.cost_usd);
    if outcome.status != JobStatus::Completed {
        cognition.record("otel.status_code", "ERROR");
        cognition.in_scope(|| {
            tracing::warn!(
                status = outcome.status.as_str(),
                error = outcome.error.as_deref().unwrap_or(""),
                "cognition job failed"
            );
        });
    }
    if let Some(running) = running {
        record = running;
    }
    record.status = outcome.status;
    record.ended_at_ms = Some(now_ms());
    record.error = outcome.error.clone();
    record.session = JobSession {
        session_id: outcome.claude.session_id.clone(),
        turns: outcome.claude.turns,
        permission_denials: outcome.claude.permission_denials,
        api_error_status: outcome.claude.api_error_status.clone(),
    };
    // Durable with the iteration's commit: a crash before it leaves the job
    // marked running, and the next executor records it as abandoned.
    if let Err(error) = ctx.store.put_job(&record, Durable::AtCommit).await {
        tracing::warn!(job = id, %error, "cannot record the end of a job");
    }
    tracing::info!(
        job = id,
        capability = %plan.capability,
        status = outcome.status.as_str(),
        input_tokens = outcome.usage.input_tokens,
        output_tokens = outcome.usage.output_tokens,
        "job finished"
    );
    outcome
}

/// A job for `iteration` that an earlier executor started on the MCP server
/// and never saw finish.
fn pending_remote_job(ctx: &Context, iteration: u64) -> Option<JobRecord> {
    ctx.store
        .jobs_of(iteration)
        .ok()?
        .into_iter()
        .find(|j| j.status.is_running() && is_remote(j))
}

/// A job on the MCP server: it outlives the agent and can be found again,
/// by its id or, if the agent died before it saw the id, by its request key.
fn is_remote(job: &JobRecord) -> bool {
    job.remote_id.is_some() || job.backend == "mcp"
}

/// Waits for a pending remote job of this iteration instead of paying for the
/// same work twice.
async fn reattach(ctx: &Context, plan: &Plan, cancel: &CancellationToken) -> Option<JobOutcome> {
    let mut record = pending_remote_job(ctx, plan.iteration)?;
    // Without the server's id, `execute` starts the job under its old id;
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
async fn abandon_leftover_jobs(ctx: &Context) {
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
