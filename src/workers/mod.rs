//! Jobs beyond one machine: the agent publishes its Claude Code jobs on a
//! NATS JetStream work queue, and `agent worker` processes anywhere pull
//! them, run them as a local job runs, and write each result once.
//!
//! - [`queue`]: the connection and the queue's parts (stream, durable pull
//!   consumer, results bucket, bundles' object store, workers' bucket);
//! - [`wire`]: the job and the result as they travel;
//! - [`git`]: a commit as a git bundle, a change as a patch;
//! - [`worker`]: `agent worker`.
//!
//! The agent's side is the `nats` cognition backend
//! (`crate::cognition::nats`). Delivery is at least once; a result is
//! written with a key-value `create`, which only the first writer wins, so
//! a job run twice (a worker killed mid-job) is counted once.

pub mod git;
pub mod queue;
pub mod wire;
pub mod worker;

use std::time::Duration;

pub use queue::Queue;

use crate::domain::Attempt;

/// What the agent does when NATS does not answer at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnUnreachable {
    /// Refuse to start (exit status 2), naming the URL.
    Exit,
    /// Wait, trying again with backoff.
    Wait,
}

/// `[workers]` checked.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkersConfig {
    /// The NATS server; set, it sends jobs to workers.
    pub nats: Option<String>,
    /// The JetStream stream of jobs; the other parts' names derive from it.
    pub stream: String,
    /// How long a delivered job may go without an ack or a progress ack
    /// before it is delivered again.
    pub ack_wait: Duration,
    /// Deliveries after which a job is failed instead of delivered again.
    pub max_deliver: i64,
    /// All workers' slots together: the consumer's `max_ack_pending`.
    pub slots: i64,
    pub on_unreachable: OnUnreachable,
    /// How long a connection attempt or a request to NATS may take.
    pub connect_timeout: Duration,
}

impl Default for WorkersConfig {
    fn default() -> Self {
        WorkersConfig {
            nats: None,
            stream: "AGENT_JOBS".into(),
            ack_wait: Duration::from_secs(30),
            max_deliver: 3,
            slots: 256,
            on_unreachable: OnUnreachable::Exit,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// The default server when `backend = "nats"` names none.
pub const DEFAULT_URL: &str = "nats://127.0.0.1:4222";

/// Refuses what the NATS client could never dial.
pub fn check_url(url: &str) -> Result<(), String> {
    url.parse::<async_nats::ServerAddr>()
        .map(|_| ())
        .map_err(|e| format!("not a NATS server address ({e}); e.g. \"nats://127.0.0.1:4222\""))
}

/// The key of job `id` of `attempt` from instance `instance`: its message
/// id, its subject's last tokens and its result's key. It names the
/// attempt, so that a restarted agent finds the job of each candidate.
pub fn job_key(instance: &str, attempt: Attempt, id: u64) -> String {
    format!("{instance}.i{}.s{}.j{id}", attempt.iteration, attempt.slot)
}

/// The attempt a job key names.
pub fn attempt_of(key: &str) -> Option<Attempt> {
    let mut tokens = key.rsplit('.');
    let _job = tokens.next()?.strip_prefix('j')?;
    let slot = tokens.next()?.strip_prefix('s')?.parse().ok()?;
    let iteration = tokens.next()?.strip_prefix('i')?.parse().ok()?;
    Some(Attempt { iteration, slot })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_key_names_its_attempt() {
        let attempt = Attempt {
            iteration: 12,
            slot: 3,
        };
        let key = job_key("a1b2", attempt, 40);
        assert_eq!(key, "a1b2.i12.s3.j40");
        assert_eq!(attempt_of(&key), Some(attempt));
        assert_eq!(attempt_of("mcp-job-7"), None);
    }

    #[test]
    fn an_address_nats_cannot_dial_is_refused() {
        assert!(check_url("nats://127.0.0.1:4222").is_ok());
        assert!(check_url("localhost:4222").is_ok());
        assert!(check_url("nats://[::1").is_err());
    }
}
