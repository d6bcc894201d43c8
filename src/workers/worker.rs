//! `agent worker`: pulls jobs from the queue, one message per free slot,
//! and runs each as the agent runs a local one (the same Claude Code
//! invocation, limits, sandbox and process-group handling) in a checkout
//! of the job's base commit made from git objects fetched through NATS.
//! While a job runs its message gets progress acks; its result is written
//! once (first writer wins) and only then is the message acked, so a worker
//! killed mid-job loses nothing: the job is delivered again after the ack
//! wait, and a delivery whose result exists is acked without running.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use futures::StreamExt;
use tokio::io::AsyncReadExt;
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::wire::{JobRequest, JobResult, WorkerStatus};
use super::{Queue, WorkersConfig, git, queue::why};
use crate::cognition::claude_cli::ClaudeCli;
use crate::cognition::{Cognition, Job, StartHook};
use crate::domain::{Execution, JobOutcome, JobStatus, PermissionMode, Program};
use crate::sandbox::{Sandbox, SandboxConfig};

/// How often a worker renews its entry in the workers' bucket.
const REPORT_EVERY: Duration = Duration::from_secs(5);
/// How long one pull request waits for a job before asking again.
const PULL_EXPIRES: Duration = Duration::from_secs(5);
/// How long a result is tried again while NATS is away.
const RESULT_PERSISTENCE: Duration = Duration::from_secs(300);

/// `agent worker`'s settings.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub nats: String,
    pub name: String,
    pub concurrency: usize,
    pub claude_bin: Program,
    pub state: PathBuf,
    pub listen: SocketAddr,
    pub queue: WorkersConfig,
    pub sandbox: SandboxConfig,
    pub policy: crate::claude::Policy,
}

/// What the worker has done, for `/status` and the workers' bucket.
#[derive(Default)]
struct Tally {
    busy: AtomicUsize,
    done: AtomicU64,
    failed: AtomicU64,
}

struct Worker {
    options: WorkerOptions,
    queue: Queue,
    sandbox: Option<Sandbox>,
    cache: PathBuf,
    jobs: PathBuf,
    tally: Tally,
    /// One bundle fetched at a time: two jobs on one base fetch it once.
    fetching: Mutex<()>,
    /// Wakes the report as a job ends, so the bucket is current.
    changed: tokio::sync::Notify,
}

impl Worker {
    fn status(&self) -> WorkerStatus {
        WorkerStatus {
            name: self.options.name.clone(),
            slots: self.options.concurrency,
            busy: self.tally.busy.load(Ordering::Relaxed),
            done: self.tally.done.load(Ordering::Relaxed),
            failed: self.tally.failed.load(Ordering::Relaxed),
            at_ms: crate::store::now_ms(),
        }
    }
}

/// Runs the worker until `stop` resolves, then lets the jobs it holds end
/// (their results written and acked) before it returns.
pub async fn run(
    options: WorkerOptions,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    let queue = Queue::connect(&options.nats, &options.queue, &options.name).await?;
    let jobs = options.state.join("jobs");
    let cache = options.state.join("objects.git");
    std::fs::create_dir_all(&jobs).map_err(|e| format!("cannot create {}: {e}", jobs.display()))?;
    if git2::Repository::open_bare(&cache).is_err() {
        git2::Repository::init_bare(&cache)
            .map_err(|e| format!("cannot create {}: {}", cache.display(), e.message()))?;
    }
    let sandbox = Sandbox::probe(&options.sandbox, &[], &jobs).await?;
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", options.listen))?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    let worker = Arc::new(Worker {
        options,
        queue: queue.clone(),
        sandbox,
        cache,
        jobs,
        tally: Tally::default(),
        fetching: Mutex::new(()),
        changed: tokio::sync::Notify::new(),
    });
    println!(
        "agent worker: {} pulls jobs from NATS at {} (stream {}), {} slot(s), sandbox {}; health at http://{address}/healthz",
        worker.options.name,
        queue.url,
        queue.settings.stream,
        worker.options.concurrency,
        if worker.sandbox.is_some() {
            "on"
        } else {
            "off"
        },
    );
    let http = tokio::spawn(serve(listener, worker.clone()));
    let report = tokio::spawn(report(worker.clone()));
    let exhausted = tokio::spawn(super::queue::fail_exhausted(queue.clone()));
    let slots = Arc::new(Semaphore::new(worker.options.concurrency));
    pull(&worker, &slots, stop).await;
    // What is running ends (each job has its own deadline) before the exit.
    let _all = slots.acquire_many(worker.options.concurrency as u32).await;
    for task in [http, report, exhausted] {
        task.abort();
    }
    let _ = worker.queue.workers.delete(&worker.options.name).await;
    Ok(())
}

/// Takes one job per free slot until `stop`.
async fn pull(
    worker: &Arc<Worker>,
    slots: &Arc<Semaphore>,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut consumer = None;
    let mut delay = Duration::from_millis(200);
    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
            () = &mut stop => return,
        };
        let next = tokio::select! {
            next = next_job(&worker.queue, &mut consumer) => next,
            () = &mut stop => return,
        };
        match next {
            Ok(Some(message)) => {
                delay = Duration::from_millis(200);
                tokio::spawn(worker.clone().handle(message, permit));
            }
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(%error, retry_in = ?delay, "cannot pull a job");
                consumer = None;
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = &mut stop => return,
                }
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}

type PullConsumer = jetstream::consumer::Consumer<jetstream::consumer::pull::Config>;

/// One message, if one comes within a pull's expiry. The consumer is
/// found again (made again, when it was deleted) after an error.
async fn next_job(
    queue: &Queue,
    consumer: &mut Option<PullConsumer>,
) -> Result<Option<jetstream::Message>, String> {
    if consumer.is_none() {
        *consumer = Some(queue.consumer().await?);
    }
    let Some(pulling) = consumer.as_ref() else {
        return Ok(None);
    };
    // A batch of one waits for a job up to its expiry (`fetch` would
    // answer at once when none is queued, and the loop would spin). No idle
    // heartbeat: async-nats 0.52's batch stream returns Pending on one
    // without polling on, and stalls with a job in hand until its expiry.
    let mut batch = pulling
        .batch()
        .max_messages(1)
        .expires(PULL_EXPIRES)
        .messages()
        .await
        .map_err(|e| why(&e))?;
    match batch.next().await {
        Some(Ok(message)) => Ok(Some(message)),
        Some(Err(error)) => Err(why(&*error)),
        None => Ok(None),
    }
}

impl Worker {
    /// One delivered job, in a `worker.job` span under the span that
    /// published it.
    async fn handle(self: Arc<Self>, message: jetstream::Message, _slot: OwnedSemaphorePermit) {
        let deliveries = message.info().map_or(1, |info| info.delivered);
        let request: JobRequest = match serde_json::from_slice(&message.payload) {
            Ok(request) => request,
            Err(error) => {
                tracing::error!(%error, "a message on the job queue is not a job; dropping it");
                let _ = message.ack_with(AckKind::Term).await;
                return;
            }
        };
        let span = tracing::info_span!(
            "worker.job",
            job.key = %request.key,
            worker = %self.options.name,
            deliveries,
            job.status = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        if let Some(traceparent) = message.headers.as_ref().and_then(|h| h.get("traceparent")) {
            crate::telemetry::set_remote_parent(&span, traceparent.as_str());
        }
        self.clone()
            .handle_request(Arc::new(message), request, deliveries)
            .instrument(span)
            .await;
    }

    async fn handle_request(
        self: Arc<Self>,
        message: Arc<jetstream::Message>,
        request: JobRequest,
        deliveries: i64,
    ) {
        let key = request.key.clone();
        if deliveries > 1 && matches!(self.queue.results.get(&key).await, Ok(Some(_))) {
            tracing::info!(
                key,
                deliveries,
                "delivered again, and its result is already written: acked without running"
            );
            let _ = message.double_ack().await;
            return;
        }
        let progress = tokio::spawn(keep_alive(message.clone(), self.queue.settings.ack_wait));
        let cancel = CancellationToken::new();
        let listening = tokio::spawn(listen_for_cancel(
            self.queue.clone(),
            key.clone(),
            cancel.clone(),
        ));
        self.tally.busy.fetch_add(1, Ordering::Relaxed);
        let (outcome, patch) = self.run_job(&request, cancel).await;
        self.tally.busy.fetch_sub(1, Ordering::Relaxed);
        listening.abort();
        let counter = if outcome.status == JobStatus::Completed {
            &self.tally.done
        } else {
            &self.tally.failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.changed.notify_one();
        let span = tracing::Span::current();
        span.record("job.status", outcome.status.as_str());
        if outcome.status != JobStatus::Completed {
            span.record("otel.status_code", "ERROR");
        }
        let result = JobResult::of(&key, &outcome, patch, &self.options.name, deliveries);
        let written = self.write(&result).await;
        progress.abort();
        // Between the stored result and the ack: the job is delivered again
        // and acked without running (tests/it/workers.rs).
        crash_point!("worker.before_ack");
        if written {
            if let Err(error) = message.double_ack().await {
                // The result is stored: a redelivery acks without running.
                tracing::warn!(key, error = %why(&*error), "cannot ack a finished job");
            }
        } else {
            tracing::error!(
                key,
                "the result could not be written; the job will be delivered again"
            );
        }
    }

    /// Writes the result unless another delivery's was first; tries again
    /// while NATS is away. `false` when it never could.
    async fn write(&self, result: &JobResult) -> bool {
        let give_up = tokio::time::Instant::now() + RESULT_PERSISTENCE;
        let mut delay = Duration::from_millis(100);
        let mut result = result.clone();
        loop {
            let Ok(bytes) = serde_json::to_vec(&result) else {
                return false;
            };
            let size = bytes.len();
            match self.queue.results.create(&result.key, bytes.into()).await {
                Ok(_) => return true,
                Err(error) if error.kind() == jetstream::kv::CreateErrorKind::AlreadyExists => {
                    tracing::info!(key = %result.key, "another delivery's result was written first; this one is dropped");
                    return true;
                }
                Err(error) if size as u64 >= self.queue.client.server_info().max_payload as u64 => {
                    tracing::warn!(key = %result.key, size, error = %why(&error), "the result is too large for NATS");
                    result = JobResult::failed(
                        &result.key,
                        format!(
                            "the change is {size} bytes, more than the NATS server's max_payload ({} bytes)",
                            self.queue.client.server_info().max_payload
                        ),
                        &self.options.name,
                        result.deliveries,
                    );
                }
                Err(error) if tokio::time::Instant::now() < give_up => {
                    tracing::warn!(key = %result.key, error = %why(&error), retry_in = ?delay, "cannot write a result yet");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
                Err(_) => return false,
            }
        }
    }

    /// Runs the job in a fresh checkout; answers its outcome and its change.
    async fn run_job(
        &self,
        request: &JobRequest,
        cancel: CancellationToken,
    ) -> (JobOutcome, String) {
        let dir = self.jobs.join(&request.key);
        let ran = async {
            let base = self.base(&request.base).await?;
            let cache = self.cache.clone();
            let (checkout, base_changes) = (dir.clone(), request.base_changes.clone());
            let _ = std::fs::remove_dir_all(&checkout);
            git::off_runtime(move || git::check_out(&cache, base, &checkout, &base_changes))
                .await?;
            let outcome = self
                .backend(request)?
                .run(self.job(request, &dir, cancel), StartHook::ignored())
                .await;
            let changed = dir.clone();
            let patch = git::off_runtime(move || git::changes(&changed, false)).await?;
            Ok::<_, String>((outcome, patch))
        }
        .await;
        let _ = std::fs::remove_dir_all(&dir);
        ran.unwrap_or_else(|error| {
            (
                JobOutcome {
                    job_id: 0,
                    status: JobStatus::Failed,
                    output: String::new(),
                    error: Some(format!("on worker {}: {error}", self.options.name)),
                    usage: Default::default(),
                    claude: Default::default(),
                },
                String::new(),
            )
        })
    }

    /// Claude Code as the job asks for it, confined as a local job is.
    fn backend(&self, request: &JobRequest) -> Result<ClaudeCli, String> {
        let mode: PermissionMode = request
            .permission_mode
            .parse()
            .map_err(|_| format!("unknown permission mode {}", request.permission_mode))?;
        Ok(
            ClaudeCli::new(self.options.claude_bin.clone(), mode, request.model.clone())
                .with_limits(request.max_turns, request.max_budget_usd)
                .with_policy(self.options.policy.clone())
                .confined(
                    self.sandbox.clone(),
                    crate::claude::ConfigDirs {
                        base: self.options.state.join("claude"),
                    },
                ),
        )
    }

    fn job(&self, request: &JobRequest, dir: &std::path::Path, cancel: CancellationToken) -> Job {
        Job {
            id: 0,
            attempt: super::attempt_of(&request.key).unwrap_or_default(),
            capability: request.capability.clone(),
            prompt: Some(request.prompt.clone()),
            cwd: dir.to_path_buf(),
            timeout: Duration::from_millis(request.timeout_ms),
            execution: Execution::Sync,
            cancel,
            resume: request.resume.clone(),
            progress: Default::default(),
        }
    }

    /// The base commit, from the cache, else from its bundle in the object
    /// store (fetched once per base).
    async fn base(&self, base: &str) -> Result<git2::Oid, String> {
        let oid = git2::Oid::from_str(base).map_err(|e| e.message().to_string())?;
        let _one_at_a_time = self.fetching.lock().await;
        let open = || git2::Repository::open_bare(&self.cache).map_err(|e| e.message().to_string());
        if git::has_commit(&open()?, oid) {
            return Ok(oid);
        }
        let mut object = self
            .queue
            .bundles
            .get(base)
            .await
            .map_err(|e| format!("cannot fetch the bundle of {base}: {}", why(&e)))?;
        let mut bundle = Vec::new();
        object
            .read_to_end(&mut bundle)
            .await
            .map_err(|e| format!("cannot read the bundle of {base}: {e}"))?;
        let (cache, bytes) = (self.cache.clone(), bundle.len());
        let imported = git::off_runtime(move || {
            let repo = git2::Repository::open_bare(&cache).map_err(|e| e.message().to_string())?;
            git::import(&repo, &bundle)
        })
        .await?;
        tracing::info!(base, bytes, "fetched the objects of a base commit");
        if imported == oid {
            Ok(oid)
        } else {
            Err(format!("the bundle of {base} holds {imported} instead"))
        }
    }
}

/// Progress acks about every third of the ack wait: only they extend it
/// (idle heartbeats do not).
async fn keep_alive(message: Arc<jetstream::Message>, ack_wait: Duration) {
    let every = (ack_wait / 3).max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(every).await;
        if let Err(error) = message.ack_with(AckKind::Progress).await {
            tracing::debug!(error = %why(&*error), "a progress ack failed");
        }
    }
}

/// Cancels the job when the agent asks (it was killed, or gave up on it).
async fn listen_for_cancel(queue: Queue, key: String, cancel: CancellationToken) {
    if let Ok(mut asked) = queue.client.subscribe(queue.cancel_subject(&key)).await
        && asked.next().await.is_some()
    {
        tracing::info!(key, "the agent asked for the job to be killed");
        cancel.cancel();
    }
}

/// Renews the worker's entry in the workers' bucket as each job ends and
/// every few seconds (it lapses on its own when the worker dies).
async fn report(worker: Arc<Worker>) {
    loop {
        if let Ok(bytes) = serde_json::to_vec(&worker.status()) {
            let _ = worker
                .queue
                .workers
                .put(&worker.options.name, bytes.into())
                .await;
        }
        tokio::select! {
            () = tokio::time::sleep(REPORT_EVERY) => {}
            () = worker.changed.notified() => {}
        }
    }
}

/// `/healthz` and `/status`.
async fn serve(listener: tokio::net::TcpListener, worker: Arc<Worker>) {
    use axum::routing::get;
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/status",
            get(move || {
                let status = worker.status();
                async move { axum::Json(status) }
            }),
        );
    if let Err(error) = axum::serve(listener, app).await {
        tracing::error!(%error, "the worker's HTTP listener stopped");
    }
}
