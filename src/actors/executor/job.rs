//! One job, as it runs off the executor's mailbox: a slot, then either the
//! job an earlier executor left on the MCP server or a new record, the run
//! through the backend in its `cognition.run` span, where it runs made
//! durable as soon as the backend says, and how it ended.

use std::sync::Arc;

use tokio::sync::{Semaphore, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{leftover, records};
use crate::actors::Context;
use crate::cognition::{Job, StartHook, Started};
use crate::domain::{BackendKind, JobOutcome, JobProgress, JobStatus, Plan};
use crate::store::{Durable, JobRecord, now_ms};

/// What the backend sends once it knows where the job runs, with the
/// acknowledgement it waits for.
type PlaceReport = oneshot::Receiver<(Started, oneshot::Sender<()>)>;

/// Runs one plan: waits for a slot, records the job, runs it, records the end.
pub(super) async fn run(
    ctx: &Context,
    slots: Arc<Semaphore>,
    plan: Plan,
    cancel: CancellationToken,
    progress: Arc<watch::Sender<JobProgress>>,
    recorded: impl FnOnce(u64),
) -> JobOutcome {
    let Ok(_slot) = slots.acquire_owned().await else {
        return records::failed(0, "the executor is shutting down".into());
    };
    // A candidate's job is re-attached only where its key names its
    // attempt (the workers' queue): see `leftover::pending_remote_job`.
    if let Some(outcome) = leftover::reattach(ctx, &plan, &cancel).await {
        return outcome;
    }
    let record = match open(ctx, &plan).await {
        Ok(record) => record,
        Err(not_recorded) => return not_recorded,
    };
    let id = record.id;
    recorded(id);
    let (outcome, running) = run_recorded(ctx, &plan, &record, cancel, progress).await;
    close(ctx, running.unwrap_or(record), &outcome).await;
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

/// The job's record, written before it starts; the failed outcome when it
/// cannot be.
async fn open(ctx: &Context, plan: &Plan) -> Result<JobRecord, JobOutcome> {
    // A remote job recorded before the agent died but never seen started
    // keeps its id: the backend asks the server for it under the same key.
    let unseen = leftover::pending_remote_job(ctx, plan)
        .filter(|j| j.remote_id.is_none() && plan.lane.is_none());
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
            Err(error) => {
                return Err(records::failed(
                    0,
                    format!("cannot record the job: {error}"),
                ));
            }
        },
    };
    let record = records::started(id, plan, ctx.backend.kind(), now_ms());
    // A job on the MCP server must be on record before it is asked for: a
    // restart finds it by that record instead of paying for it twice.
    let durable = if records::is_remote(&record) {
        Durable::Now
    } else {
        Durable::AtCommit
    };
    match ctx.store.put_job(&record, durable).await {
        Ok(()) => Ok(record),
        Err(error) => Err(records::failed(
            id,
            format!("cannot record the job: {error}"),
        )),
    }
}

/// Runs the recorded job through the backend while noting where it runs;
/// answers its outcome and the record with that place, once known.
async fn run_recorded(
    ctx: &Context,
    plan: &Plan,
    record: &JobRecord,
    cancel: CancellationToken,
    progress: Arc<watch::Sender<JobProgress>>,
) -> (JobOutcome, Option<JobRecord>) {
    let announcing = tokio::spawn(announce(
        ctx.events.clone(),
        plan.iteration,
        progress.subscribe(),
    ));
    let job = Job {
        id: record.id,
        attempt: crate::domain::Attempt::of(plan),
        capability: plan.capability.clone(),
        prompt: plan.prompt.clone(),
        cwd: plan
            .lane
            .clone()
            .unwrap_or_else(|| ctx.workspace.path.clone()),
        timeout: ctx.config.job_timeout,
        execution: plan.execution,
        cancel,
        resume: plan.resume.clone(),
        progress,
    };
    let (hook, place) = StartHook::new();
    crate::telemetry::metrics::job_in_flight(1.0);
    let cognition = cognition_span(ctx);
    let run = ctx.backend.run(job, hook).instrument(cognition.clone());
    let (outcome, running) = tokio::join!(run, note_place(ctx, record, place));
    announcing.abort();
    crate::telemetry::metrics::job_in_flight(-1.0);
    record_on_span(&cognition, &outcome);
    (outcome, running)
}

/// A step line (`ctl watch`, the console) each time a running job starts a
/// new turn or uses another tool, with its tokens so far; heartbeats alone
/// are not news.
async fn announce(
    events: crate::events::EventBus,
    iteration: u64,
    mut progress: watch::Receiver<JobProgress>,
) {
    let mut shown = (0, None);
    while progress.changed().await.is_ok() {
        let now = progress.borrow_and_update().clone();
        let seen = (now.turns, now.last_tool.clone());
        if seen == shown || now.turns == 0 {
            continue;
        }
        shown = seen;
        events.emit(crate::events::Event::Step {
            iteration,
            step: "progress",
            detail: format!(
                "turn {}{}, {} input / {} output tokens",
                now.turns,
                now.last_tool
                    .as_ref()
                    .map(|tool| format!(", last tool {tool}"))
                    .unwrap_or_default(),
                now.input_tokens,
                now.output_tokens
            ),
        });
    }
}

/// The model call, with the GenAI semantic-convention attributes.
fn cognition_span(ctx: &Context) -> tracing::Span {
    tracing::info_span!(
        "cognition.run",
        backend = ctx.backend.name(),
        gen_ai.system = if ctx.backend.kind() == BackendKind::Offline {
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
    )
}

/// What the model call spent, and whether it failed, on its span.
fn record_on_span(cognition: &tracing::Span, outcome: &JobOutcome) {
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
}

/// Records where the job runs once the backend reports it, then lets the
/// backend go on; `None` when it never reports.
async fn note_place(ctx: &Context, record: &JobRecord, place: PlaceReport) -> Option<JobRecord> {
    let (place, ack) = place.await.ok()?;
    let running = records::running_at(record, &place);
    // Where it runs is durable before the job goes on: a process group
    // must be found and killed after a crash, a remote id re-attached to.
    if let Err(error) = ctx.store.put_job(&running, Durable::Now).await {
        tracing::warn!(job = running.id, %error, "cannot record where a job runs");
    }
    let _ = ack.send(());
    Some(running)
}

/// Records how the job ended.
async fn close(ctx: &Context, record: JobRecord, outcome: &JobOutcome) {
    let record = records::ended(record, outcome, now_ms());
    // Durable with the iteration's commit: a crash before it leaves the job
    // marked running, and the next executor records it as abandoned.
    if let Err(error) = ctx.store.put_job(&record, Durable::AtCommit).await {
        tracing::warn!(job = record.id, %error, "cannot record the end of a job");
    }
}
