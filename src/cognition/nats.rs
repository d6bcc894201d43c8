//! The `nats` backend: each job goes to `agent worker` processes through
//! the NATS JetStream work queue (`crate::workers`). The job's key (its
//! message id) is on record before it is published, so a restarted agent
//! re-attaches to it: it collects the result when there is one, waits when
//! the job is still queued or running, and publishes it again only when it
//! is in neither place. The worker's change comes back as a patch, applied
//! here in the job's worktree, where the pipeline judges it as usual.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use async_nats::jetstream::kv::Operation;
use async_nats::jetstream::message::PublishMessage;
use async_trait::async_trait;
use futures::StreamExt;
use tokio::sync::Mutex;

use super::{Cognition, Job, StartHook, Started};
use crate::domain::{BackendKind, Capability, JobOutcome, JobStatus, PermissionMode, Usage};
use crate::workers::wire::{JobRequest, JobResult};
use crate::workers::{Queue, git, queue::why};

const POLL_FIRST: Duration = Duration::from_millis(20);
const POLL_MAX: Duration = Duration::from_secs(1);
/// How long a killed job's worker is given to say what it spent.
const KILL_GRACE: Duration = Duration::from_secs(10);

/// What every job asks its worker's Claude Code for.
#[derive(Debug, Clone)]
pub struct JobSettings {
    pub permission_mode: PermissionMode,
    pub model: Option<String>,
    pub max_turns: Option<u32>,
    pub max_budget_usd: Option<f64>,
}

/// The queue's client side.
pub struct Nats {
    queue: Queue,
    /// This agent instance's part of every job key, kept in the state
    /// directory (so that a restart finds its jobs again) from the first job.
    instance: std::sync::OnceLock<String>,
    state_dir: std::path::PathBuf,
    settings: JobSettings,
    /// Bases whose bundle this process has put in the object store.
    uploaded: Mutex<HashSet<String>>,
}

impl Nats {
    /// Connects to the queue (failing with the URL when NATS does not
    /// answer, or waiting, as `[workers] on_unreachable` says) and starts
    /// turning jobs delivered too often into failed results.
    pub async fn connect(
        url: &str,
        workers: &crate::workers::WorkersConfig,
        state_dir: &Path,
        settings: JobSettings,
    ) -> Result<Nats, String> {
        let queue = Queue::connect_or_wait(url, workers, "agent").await?;
        tokio::spawn(crate::workers::queue::fail_exhausted(queue.clone()));
        Ok(Nats {
            queue,
            instance: std::sync::OnceLock::new(),
            state_dir: state_dir.to_path_buf(),
            settings,
            uploaded: Mutex::new(HashSet::new()),
        })
    }

    /// The instance id, read or made at the first job.
    fn instance(&self) -> Result<&str, String> {
        if let Some(id) = self.instance.get() {
            return Ok(id);
        }
        let id = instance_id(&self.state_dir)?;
        Ok(self.instance.get_or_init(|| id))
    }

    /// Waits (up to `until`) for the connection to be up.
    async fn connected(&self, until: tokio::time::Instant) -> Result<(), String> {
        let mut delay = POLL_FIRST;
        while self.queue.client.connection_state() != async_nats::connection::State::Connected {
            if tokio::time::Instant::now() >= until {
                return Err(format!("NATS at {} is unreachable", self.queue.url));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(1));
        }
        Ok(())
    }

    /// Puts the bundle of `base` in the object store unless it is there.
    async fn upload(&self, cwd: &Path, base: &str) -> Result<(), String> {
        let mut uploaded = self.uploaded.lock().await;
        if uploaded.contains(base) || self.queue.bundles.info(base).await.is_ok() {
            uploaded.insert(base.to_string());
            return Ok(());
        }
        let bundle = {
            let (cwd, base) = (cwd.to_path_buf(), base.to_string());
            git::off_runtime(move || git::bundle(&cwd, &base)).await?
        };
        let size = bundle.len();
        self.queue
            .bundles
            .put(base, &mut bundle.as_slice())
            .await
            .map_err(|e| {
                format!(
                    "cannot upload the bundle of {base} to NATS at {}: {}",
                    self.queue.url,
                    why(&e)
                )
            })?;
        tracing::info!(
            base,
            bytes = size,
            "uploaded the workspace's objects for workers"
        );
        uploaded.insert(base.to_string());
        Ok(())
    }

    /// Publishes the job under `key` and waits for the stream's ack.
    async fn submit(&self, job: &Job, key: &str) -> Result<(), String> {
        self.connected(tokio::time::Instant::now() + job.timeout)
            .await?;
        let cwd = job.cwd.clone();
        let (base, base_changes) =
            git::off_runtime(move || Ok((git::head_commit(&cwd)?, git::changes(&cwd, true)?)))
                .await?;
        self.upload(&job.cwd, &base).await?;
        let request = JobRequest {
            key: key.to_string(),
            base,
            base_changes,
            prompt: job.prompt.clone().unwrap_or_default(),
            capability: job.capability.clone(),
            timeout_ms: job.timeout.as_millis() as u64,
            permission_mode: self.settings.permission_mode.to_string(),
            model: self.settings.model.clone(),
            max_turns: self.settings.max_turns,
            max_budget_usd: self.settings.max_budget_usd,
            resume: job.resume.clone(),
        };
        let payload = serde_json::to_vec(&request).map_err(|e| e.to_string())?;
        let mut publish = PublishMessage::build()
            .message_id(key)
            .payload(payload.into());
        // The worker's span continues this one's trace.
        if let Some(traceparent) = crate::telemetry::current_traceparent() {
            publish = publish.header("traceparent", traceparent.as_str());
        }
        let subject = self.queue.job_subject(key);
        let ack = self
            .queue
            .jetstream
            .send_publish(subject, publish)
            .await
            .map_err(|e| {
                format!(
                    "cannot publish job {key} to NATS at {}: {}",
                    self.queue.url,
                    why(&e)
                )
            })?
            .await
            .map_err(|e| {
                format!(
                    "job {key} was not stored by NATS at {}: {}",
                    self.queue.url,
                    why(&e)
                )
            })?;
        tracing::info!(
            key,
            sequence = ack.sequence,
            duplicate = ack.duplicate,
            "job queued for workers"
        );
        Ok(())
    }

    /// The job's result once a worker wrote it (its change applied in the
    /// job's worktree), or how waiting for it ended.
    async fn collect(&self, job: &Job, key: &str) -> JobOutcome {
        let give_up = tokio::time::Instant::now() + collect_deadline(job.timeout, &self.queue);
        let mut killed_at: Option<tokio::time::Instant> = None;
        // The result is announced as it is written; reads at a falling rate
        // are the net below it (a watch lost with the connection).
        let mut watch = self.queue.results.watch(key).await.ok();
        let mut delay = POLL_FIRST;
        loop {
            let last_error = match self.queue.results.get(key).await {
                Ok(Some(bytes)) => return self.land(job, key, &bytes).await,
                Ok(None) => None,
                Err(error) => Some(why(&error)),
            };
            let now = tokio::time::Instant::now();
            if killed_at.is_none() && job.cancel.is_cancelled() {
                self.cancel(key).await;
                killed_at = Some(now);
            }
            if killed_at.is_some_and(|at| now > at + KILL_GRACE) {
                return outcome(
                    job.id,
                    JobStatus::Killed,
                    "the job was killed on request".into(),
                );
            }
            if now > give_up {
                self.cancel(key).await;
                let cause = last_error.map_or_else(
                    || "no worker wrote it".to_string(),
                    |e| format!("NATS at {}: {e}", self.queue.url),
                );
                return outcome(
                    job.id,
                    JobStatus::Timeout,
                    format!(
                        "no result for job {key} within {} ({cause})",
                        humantime::format_duration(collect_deadline(job.timeout, &self.queue))
                    ),
                );
            }
            let announced = async {
                match watch.as_mut() {
                    Some(entries) => entries.next().await,
                    None => std::future::pending().await,
                }
            };
            let heard = tokio::select! {
                () = tokio::time::sleep(delay) => None,
                () = job.cancel.cancelled(), if killed_at.is_none() => None,
                entry = announced => Some(entry),
            };
            match heard {
                Some(Some(Ok(entry))) if entry.operation == Operation::Put => {
                    return self.land(job, key, &entry.value).await;
                }
                Some(Some(Ok(_))) | None => {}
                Some(_) => watch = None,
            }
            delay = (delay * 2).min(POLL_MAX);
        }
    }

    /// A result as the job's outcome, its change applied in the worktree.
    async fn land(&self, job: &Job, key: &str, bytes: &[u8]) -> JobOutcome {
        let result: JobResult = match serde_json::from_slice(bytes) {
            Ok(result) => result,
            Err(error) => {
                return outcome(
                    job.id,
                    JobStatus::Failed,
                    format!("the result of job {key} is unreadable: {error}"),
                );
            }
        };
        tracing::info!(key, worker = %result.worker, deliveries = result.deliveries, status = %result.status, "job result collected");
        let mut collected = result.outcome(job.id);
        let (cwd, patch) = (job.cwd.clone(), result.patch.clone());
        if let Err(error) = git::off_runtime(move || git::apply(&cwd, &patch)).await {
            collected.status = JobStatus::Failed;
            collected.error = Some(error);
        }
        collected
    }

    /// Asks the job's worker to kill it (plain NATS: nobody listening is fine).
    async fn cancel(&self, key: &str) {
        let _ = self
            .queue
            .client
            .publish(self.queue.cancel_subject(key), "kill".into())
            .await;
    }

    /// Whether the job is still in the stream (queued, or running unacked).
    async fn queued(&self, key: &str) -> Result<bool, String> {
        match self
            .queue
            .stream
            .get_last_raw_message_by_subject(&self.queue.job_subject(key))
            .await
        {
            Ok(_) => Ok(true),
            Err(error)
                if error.kind()
                    == async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
            {
                Ok(false)
            }
            Err(error) => Err(why(&error)),
        }
    }
}

/// How long a job's result is waited for: the job's own deadline, as long
/// again for waiting in the queue behind others, and one ack wait for a
/// worker that died to have it delivered again.
fn collect_deadline(timeout: Duration, queue: &Queue) -> Duration {
    timeout * 2 + queue.settings.ack_wait
}

fn outcome(job_id: u64, status: JobStatus, error: String) -> JobOutcome {
    JobOutcome {
        job_id,
        status,
        output: String::new(),
        error: Some(error),
        usage: Usage::default(),
        claude: Default::default(),
    }
}

/// This instance's id: made once, kept in the state directory.
fn instance_id(state_dir: &Path) -> Result<String, String> {
    let file = state_dir.join("instance-id");
    if let Ok(id) = std::fs::read_to_string(&file)
        && !id.trim().is_empty()
    {
        return Ok(id.trim().to_string());
    }
    let id = format!("{:016x}", rand::random::<u64>());
    std::fs::create_dir_all(state_dir)
        .and_then(|()| std::fs::write(&file, format!("{id}\n")))
        .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    Ok(id)
}

#[async_trait]
impl Cognition for Nats {
    fn kind(&self) -> BackendKind {
        BackendKind::Nats
    }

    fn capabilities(&self) -> Vec<Capability> {
        vec![Capability {
            id: super::claude_cli::CAPABILITY.into(),
            description: "ask Claude Code (on a worker) for one focused change toward the goal"
                .into(),
        }]
    }

    fn takes_prompts(&self) -> bool {
        true
    }

    async fn run(&self, job: Job, started: StartHook) -> JobOutcome {
        let instance = match self.instance() {
            Ok(instance) => instance,
            Err(error) => return outcome(job.id, JobStatus::Failed, error),
        };
        let key = crate::workers::job_key(instance, job.attempt, job.id);
        // On record before it is published: a restart finds it by this key.
        started.started(Started::Remote(key.clone())).await;
        if let Err(error) = self.submit(&job, &key).await {
            return outcome(job.id, JobStatus::Failed, error);
        }
        self.collect(&job, &key).await
    }

    async fn reattach(&self, job: Job, key: String) -> Option<JobOutcome> {
        // Result first, then the stream, then the result again: a worker
        // acks only after its result is stored, so a job in neither place
        // was never published.
        let written = self.queue.results.get(&key).await.ok().flatten().is_some();
        let waiting = written || self.queued(&key).await.unwrap_or(true);
        let written = written || self.queue.results.get(&key).await.ok().flatten().is_some();
        if !written && !waiting {
            tracing::info!(key, "the job was never published; publishing it now");
            if let Err(error) = self.submit(&job, &key).await {
                return Some(outcome(job.id, JobStatus::Failed, error));
            }
        } else {
            tracing::info!(key, "collecting a job published before a restart");
        }
        Some(self.collect(&job, &key).await)
    }
}
