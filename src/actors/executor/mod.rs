//! The executor: runs plans through the cognition backend, off its mailbox,
//! at most `concurrency` at a time (from `actors.toml`). Every job is written
//! to the store before it starts and when it ends, with its process group, so
//! that after a crash or `kill -9` the next executor kills what was left
//! running and records those jobs as failed instead of losing them.
//!
//! This file is the actor and its handlers, one per message. One job's life
//! is in `job.rs`, what an earlier executor left behind in `leftover.rs`,
//! and what goes on a job's record (pure) in `records.rs`.

mod job;
mod leftover;
mod records;

use std::collections::HashMap;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{Context, handle_common, load_snapshot};
use crate::domain::{
    ActorKind, Attempt, Capability, DiscoveredTool, JobOutcome, JobProgress, JobStatus, Plan,
};
use crate::messages::{ActorError, ExecutorMsg};
use crate::store::JobRecord;

const KIND: ActorKind = ActorKind::Executor;
pub(crate) const SCHEMA: u32 = 1;

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
    /// Cancel handles of running jobs, by attempt.
    cancels: HashMap<Attempt, CancellationToken>,
    /// What each running job's events showed, by attempt.
    progress: HashMap<Attempt, Arc<tokio::sync::watch::Sender<JobProgress>>>,
    /// The job each running attempt has on record, once it has one.
    attempts: HashMap<u64, Attempt>,
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
        leftover::abandon_leftover_jobs(&ctx).await;
        Ok(ExecutorState {
            // An iteration's candidates run at once, whatever the tree says.
            slots: Arc::new(Semaphore::new(
                ctx.tree
                    .executor_concurrency
                    .max(ctx.config.candidates as usize),
            )),
            ctx,
            snapshot,
            jobs: JoinSet::new(),
            cancels: HashMap::new(),
            progress: HashMap::new(),
            attempts: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: ExecutorMsg,
        state: &mut ExecutorState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ExecutorMsg::Tools(reply) => state.tools(reply),
            ExecutorMsg::Capabilities(reply) => state.capabilities(reply),
            ExecutorMsg::PendingJob { iteration, reply } => state.pending_job(iteration, reply),
            ExecutorMsg::Execute { plan, reply } => state.execute(&myself, plan, reply),
            ExecutorMsg::Jobs { last, reply } => state.jobs(last, reply),
            ExecutorMsg::KillJob { job, reply } => state.kill_job(job, reply),
            ExecutorMsg::Cancel(attempt) => state.cancel(attempt),
            ExecutorMsg::JobStarted { attempt, job } => {
                state.attempts.insert(job, attempt);
            }
            ExecutorMsg::JobDone {
                attempt,
                outcome,
                reply,
            } => state.job_done(attempt, outcome, reply),
            ExecutorMsg::Common(common) => {
                handle_common(KIND, SCHEMA, &state.ctx.store, &mut state.snapshot, common).await?
            }
        }
        Ok(())
    }
}

impl ExecutorState {
    fn tools(&self, reply: RpcReplyPort<Result<Vec<DiscoveredTool>, ActorError>>) {
        let tools = self
            .ctx
            .store
            .tools()
            .map_err(|e| ActorError::Store(e.to_string()));
        let _ = reply.send(tools);
    }

    /// A backend that takes prompts offers the prompt templates as its
    /// capabilities; any other offers its own.
    fn capabilities(&self, reply: RpcReplyPort<Vec<Capability>>) {
        let backend = &self.ctx.backend;
        let _ = reply.send(if backend.takes_prompts() {
            self.ctx.prompts.capabilities()
        } else {
            backend.capabilities()
        });
    }

    fn pending_job(&self, iteration: u64, reply: RpcReplyPort<Option<String>>) {
        let pending = leftover::editing_in_place(&self.ctx, iteration);
        let _ = reply
            .send(pending.map(|job| job.remote_id.unwrap_or_else(|| format!("job {}", job.id))));
    }

    /// Starts the plan's job off the mailbox; `JobDone` answers the caller
    /// when it ends.
    fn execute(
        &mut self,
        myself: &ActorRef<ExecutorMsg>,
        plan: Plan,
        reply: RpcReplyPort<JobOutcome>,
    ) {
        // Jobs that ended leave the set before another joins it.
        while self.jobs.try_join_next().is_some() {}
        let ctx = self.ctx.clone();
        let slots = self.slots.clone();
        let cancel = CancellationToken::new();
        let attempt = Attempt::of(&plan);
        self.cancels.insert(attempt, cancel.clone());
        let progress = Arc::new(tokio::sync::watch::Sender::new(JobProgress::default()));
        self.progress.insert(attempt, progress.clone());
        // Off the mailbox, in a span of its own under the caller's.
        let span = tracing::info_span!(
            "executor.job",
            actor = KIND.name(),
            iteration = plan.iteration as i64,
            capability = %plan.capability,
            job.id = tracing::field::Empty,
            job.status = tracing::field::Empty,
        );
        let myself = myself.clone();
        self.jobs.spawn(
            async move {
                let recorded = {
                    let myself = myself.clone();
                    move |job: u64| {
                        let _ = myself.cast(ExecutorMsg::JobStarted { attempt, job });
                    }
                };
                let outcome = job::run(&ctx, slots, plan, cancel, progress, recorded).await;
                let span = tracing::Span::current();
                span.record("job.id", outcome.job_id as i64);
                span.record("job.status", outcome.status.as_str());
                let _ = myself.cast(ExecutorMsg::JobDone {
                    attempt,
                    outcome,
                    reply,
                });
            }
            .instrument(span),
        );
    }

    fn jobs(&self, last: usize, reply: RpcReplyPort<Vec<(JobRecord, Option<JobProgress>)>>) {
        let jobs = self.ctx.store.last_jobs(last).unwrap_or_default();
        let _ = reply.send(
            jobs.into_iter()
                .map(|job| {
                    let progress = self
                        .attempts
                        .get(&job.id)
                        .and_then(|attempt| self.progress.get(attempt))
                        .filter(|_| job.status.is_running())
                        .map(|sender| sender.borrow().clone());
                    (job, progress)
                })
                .collect(),
        );
    }

    /// Cancels a running job of this executor; refuses any other.
    fn kill_job(&self, job: u64, reply: RpcReplyPort<Result<(), ActorError>>) {
        let record = self.ctx.store.job(job).ok().flatten();
        let result = match record {
            None => Err(ActorError::Refused(format!("there is no job {job}"))),
            Some(record) if !record.status.is_running() => Err(ActorError::Refused(format!(
                "job {job} is not running (it is {})",
                record.status
            ))),
            Some(record) => match self
                .attempts
                .get(&record.id)
                .and_then(|attempt| self.cancels.get(attempt))
            {
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

    /// Cancels the job of `attempt` (a candidate past its deadline), if it
    /// still runs; its `Execute` is answered as the job ends.
    fn cancel(&mut self, attempt: Attempt) {
        if let Some(cancel) = self.cancels.get(&attempt) {
            cancel.cancel();
        }
    }

    /// A job ended off the mailbox: it is counted, then answered.
    fn job_done(&mut self, attempt: Attempt, outcome: JobOutcome, reply: RpcReplyPort<JobOutcome>) {
        self.cancels.remove(&attempt);
        self.progress.remove(&attempt);
        self.attempts.remove(&outcome.job_id);
        let s = &mut self.snapshot;
        match outcome.status {
            JobStatus::Completed => s.jobs_completed += 1,
            _ => s.jobs_failed += 1,
        }
        s.input_tokens += outcome.usage.input_tokens;
        s.output_tokens += outcome.usage.output_tokens;
        s.cost_usd += outcome.usage.cost_usd;
        let _ = reply.send(outcome);
    }
}
