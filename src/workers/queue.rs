//! The NATS JetStream side of the work queue, shared by the agent and its
//! workers: connecting (with the URL in every error), and the stream, the
//! durable pull consumer, the results bucket, the bundles' object store and
//! the workers' bucket, each made if missing. Names derive from the
//! configured stream name, so that two queues on one server never mix.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, object_store, stream};

use super::WorkersConfig;

/// The durable pull consumer every worker pulls through.
pub const CONSUMER: &str = "workers";
/// How long a worker's report of itself lives without a renewal.
pub const WORKER_REPORT_TTL: Duration = Duration::from_secs(15);
/// How long a result waits to be collected.
const RESULT_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// A connection to the queue and its parts.
#[derive(Clone)]
pub struct Queue {
    pub url: String,
    pub client: async_nats::Client,
    pub jetstream: jetstream::Context,
    pub stream: stream::Stream,
    pub results: kv::Store,
    pub bundles: object_store::ObjectStore,
    pub workers: kv::Store,
    pub settings: WorkersConfig,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// The first line of an error and of each of its causes, without repeats.
pub fn why(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(error) = next {
        let line = error
            .to_string()
            .lines()
            .next()
            .unwrap_or_default()
            .to_string();
        if !line.is_empty() && !parts.iter().any(|p| p.contains(&line)) {
            parts.push(line);
        }
        next = error.source();
    }
    parts.join(": ")
}

impl Queue {
    /// The subject a job is published on.
    pub fn job_subject(&self, key: &str) -> String {
        format!("{}.{key}", self.settings.stream)
    }

    /// Where a job's cancellation is announced (plain NATS, not stored).
    pub fn cancel_subject(&self, key: &str) -> String {
        format!("{}-cancel.{key}", self.settings.stream)
    }

    /// The advisory the server sends when a job was delivered
    /// `max_deliver` times and will not be again.
    pub fn exhausted_subject(&self) -> String {
        format!(
            "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{}.{CONSUMER}",
            self.settings.stream
        )
    }

    /// Connects to `url` within the configured timeout and makes the queue's
    /// parts; the error names the URL and the first line of the cause.
    pub async fn connect(url: &str, settings: &WorkersConfig, name: &str) -> Result<Queue, String> {
        let unreachable = |cause: String| format!("cannot reach NATS at {url}: {cause}");
        let client = async_nats::ConnectOptions::new()
            .name(name)
            .connection_timeout(settings.connect_timeout)
            .request_timeout(Some(settings.connect_timeout))
            .connect(url)
            .await
            .map_err(|e| unreachable(why(&e)))?;
        let jetstream = jetstream::new(client.clone());
        let made = tokio::time::timeout(
            settings.connect_timeout * 4,
            Self::make_parts(&jetstream, settings),
        )
        .await
        .map_err(|_| {
            unreachable("JetStream did not answer (is the server started with -js?)".into())
        })?
        .map_err(|e| format!("NATS at {url}: {e}"))?;
        let (stream, results, bundles, workers) = made;
        Ok(Queue {
            url: url.to_string(),
            client,
            jetstream,
            stream,
            results,
            bundles,
            workers,
            settings: settings.clone(),
        })
    }

    /// Connects, and while `settings` say to wait, tries again with backoff
    /// until NATS answers (logging each failure).
    pub async fn connect_or_wait(
        url: &str,
        settings: &WorkersConfig,
        name: &str,
    ) -> Result<Queue, String> {
        let mut delay = Duration::from_millis(500);
        loop {
            match Self::connect(url, settings, name).await {
                Ok(queue) => return Ok(queue),
                Err(error) if settings.on_unreachable == super::OnUnreachable::Wait => {
                    tracing::warn!(%error, retry_in = ?delay, "waiting for NATS ([workers] on_unreachable = \"wait\")");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
                Err(error) => return Err(error),
            }
        }
    }

    async fn make_parts(
        jetstream: &jetstream::Context,
        settings: &WorkersConfig,
    ) -> Result<
        (
            stream::Stream,
            kv::Store,
            object_store::ObjectStore,
            kv::Store,
        ),
        String,
    > {
        let name = &settings.stream;
        let stream = jetstream
            .get_or_create_stream(stream::Config {
                name: name.clone(),
                subjects: vec![format!("{name}.>")],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("cannot make the stream {name}: {}", why(&e)))?;
        stream
            .get_or_create_consumer(
                CONSUMER,
                consumer::pull::Config {
                    durable_name: Some(CONSUMER.to_string()),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: settings.ack_wait,
                    max_deliver: settings.max_deliver,
                    max_ack_pending: settings.slots,
                    filter_subject: format!("{name}.>"),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| format!("cannot make the consumer {CONSUMER}: {}", why(&e)))?;
        let results = bucket(jetstream, &format!("{name}_results"), RESULT_TTL).await?;
        let workers = bucket(jetstream, &format!("{name}_workers"), WORKER_REPORT_TTL).await?;
        let bundles_name = format!("{name}_bundles");
        let bundles = match jetstream.get_object_store(&bundles_name).await {
            Ok(store) => store,
            Err(_) => jetstream
                .create_object_store(object_store::Config {
                    bucket: bundles_name.clone(),
                    ..Default::default()
                })
                .await
                .map_err(|e| format!("cannot make the object store {bundles_name}: {}", why(&e)))?,
        };
        Ok((stream, results, bundles, workers))
    }

    /// The pull consumer workers take jobs from.
    pub async fn consumer(&self) -> Result<consumer::Consumer<consumer::pull::Config>, String> {
        self.stream
            .get_consumer(CONSUMER)
            .await
            .map_err(|e| format!("cannot find the consumer {CONSUMER}: {}", why(&*e)))
    }
}

/// A key-value bucket, made when missing, whose entries live `ttl`.
async fn bucket(
    jetstream: &jetstream::Context,
    name: &str,
    ttl: Duration,
) -> Result<kv::Store, String> {
    match jetstream.get_key_value(name).await {
        Ok(store) => Ok(store),
        Err(_) => jetstream
            .create_key_value(kv::Config {
                bucket: name.to_string(),
                history: 1,
                max_age: ttl,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("cannot make the bucket {name}: {}", why(&e))),
    }
}

/// Turns every job the server gives up on (delivered `max_deliver` times,
/// announced by an advisory) into a failed result, first writer wins, and
/// removes it from the stream: a job is never lost in silence. Runs until
/// the connection is dropped; the agent and every worker run it.
pub async fn fail_exhausted(queue: Queue) {
    use futures::StreamExt;
    let Ok(mut advisories) = queue.client.subscribe(queue.exhausted_subject()).await else {
        tracing::warn!("cannot listen for jobs delivered too often");
        return;
    };
    while let Some(advisory) = advisories.next().await {
        let Ok(advisory) = serde_json::from_slice::<serde_json::Value>(&advisory.payload) else {
            continue;
        };
        let (Some(sequence), deliveries) = (
            advisory["stream_seq"].as_u64(),
            advisory["deliveries"].as_i64().unwrap_or_default(),
        ) else {
            continue;
        };
        let Ok(message) = queue.stream.get_raw_message(sequence).await else {
            continue;
        };
        let Ok(job) = serde_json::from_slice::<super::wire::JobRequest>(&message.payload) else {
            continue;
        };
        let failed = super::wire::JobResult::failed(
            &job.key,
            format!(
                "job {} was delivered {deliveries} times ([workers] max_deliver) without a result: every worker that took it stopped before it ended",
                job.key
            ),
            "",
            deliveries,
        );
        if let Ok(bytes) = serde_json::to_vec(&failed) {
            let _ = queue.results.create(&job.key, bytes.into()).await;
        }
        let _ = queue.stream.delete_message(sequence).await;
        tracing::warn!(key = %job.key, deliveries, "a job delivered too often was failed");
    }
}
