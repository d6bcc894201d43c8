//! Prometheus metrics through the `metrics` facade. Every name is declared
//! here, described once at start, and listed in `docs/telemetry.md` (a test
//! keeps the two in sync). Most values follow from the run's events, so they
//! are recorded in one place ([`record_event`]); the few gauges that belong
//! to one actor are set by it.

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::events::Event;

pub const ITERATIONS_TOTAL: &str = "agent_iterations_total";
pub const ITERATIONS_COMMITTED: &str = "agent_iterations_committed";
pub const ITERATION_DURATION: &str = "agent_iteration_duration_seconds";
pub const TOKENS_TOTAL: &str = "agent_tokens_total";
pub const COST_USD: &str = "agent_cost_usd";
pub const ACTOR_RESTARTS_TOTAL: &str = "agent_actor_restarts_total";
pub const ACTOR_FAILURES_TOTAL: &str = "agent_actor_failures_total";
pub const JOBS_IN_FLIGHT: &str = "agent_cognition_jobs_in_flight";
pub const APPROVALS_PENDING: &str = "agent_approvals_pending";
pub const BUDGET_TOKENS_REMAINING: &str = "agent_budget_tokens_remaining";
pub const RESIDENT_MEMORY: &str = "agent_process_resident_memory_bytes";
pub const ALERTS_TOTAL: &str = "agent_alerts_total";

/// Every metric this program emits.
pub const ALL: [&str; 12] = [
    ITERATIONS_TOTAL,
    ITERATIONS_COMMITTED,
    ITERATION_DURATION,
    TOKENS_TOTAL,
    COST_USD,
    ACTOR_RESTARTS_TOTAL,
    ACTOR_FAILURES_TOTAL,
    JOBS_IN_FLIGHT,
    APPROVALS_PENDING,
    BUDGET_TOKENS_REMAINING,
    RESIDENT_MEMORY,
    ALERTS_TOTAL,
];

/// Installs the global recorder; `None` if one is installed already (a
/// second daemon in one process, as in tests).
pub fn install() -> Option<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(ITERATION_DURATION.into()),
            &[1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0],
        )
        .ok()?
        .install_recorder()
        .ok()?;
    describe_counter!(
        ITERATIONS_TOTAL,
        "Committed iterations by outcome (this process)."
    );
    describe_gauge!(
        ITERATIONS_COMMITTED,
        "Iterations committed in the run (as `agent ctl status`)."
    );
    describe_histogram!(
        ITERATION_DURATION,
        metrics::Unit::Seconds,
        "Duration of committed iterations."
    );
    describe_counter!(
        TOKENS_TOTAL,
        "Tokens reported by the cognition backend, by backend and direction."
    );
    describe_gauge!(
        COST_USD,
        "Cost in USD reported by the cognition backend since start, by backend."
    );
    describe_counter!(
        ACTOR_RESTARTS_TOTAL,
        "Actor restarts by actor (this process)."
    );
    describe_counter!(
        ACTOR_FAILURES_TOTAL,
        "Actor failures (panics, errors, failed starts) by actor."
    );
    describe_gauge!(JOBS_IN_FLIGHT, "Cognition jobs running now.");
    describe_gauge!(
        APPROVALS_PENDING,
        "Changes waiting for an operator's decision."
    );
    describe_gauge!(
        BUDGET_TOKENS_REMAINING,
        "Tokens left in the rolling 24-hour budget."
    );
    describe_gauge!(
        RESIDENT_MEMORY,
        metrics::Unit::Bytes,
        "Resident set size of the agent process."
    );
    describe_counter!(ALERTS_TOTAL, "Alerts raised, by rule.");
    Some(handle)
}

/// Records what an event means for the metrics.
pub fn record_event(event: &Event, backend: &str) {
    match event {
        Event::IterationCommitted(committed) => {
            counter!(ITERATIONS_TOTAL, "outcome" => committed.outcome.as_str()).increment(1);
            gauge!(ITERATIONS_COMMITTED).set(committed.number as f64);
            histogram!(ITERATION_DURATION).record(committed.duration.as_secs_f64());
            let backend = backend.to_string();
            counter!(TOKENS_TOTAL, "backend" => backend.clone(), "direction" => "input")
                .increment(committed.usage.input_tokens);
            counter!(TOKENS_TOTAL, "backend" => backend.clone(), "direction" => "output")
                .increment(committed.usage.output_tokens);
            // `metrics` counters are integers; a dollar amount is a float,
            // so its running total is a gauge that only goes up.
            gauge!(COST_USD, "backend" => backend).increment(committed.usage.cost_usd);
        }
        Event::ActorRestarted { actor, .. } => {
            counter!(ACTOR_RESTARTS_TOTAL, "actor" => actor.name()).increment(1);
        }
        Event::ActorFailed { actor, .. } => {
            counter!(ACTOR_FAILURES_TOTAL, "actor" => actor.name()).increment(1);
        }
        Event::Alert { rule, .. } => {
            counter!(ALERTS_TOTAL, "rule" => *rule).increment(1);
        }
        _ => {}
    }
}

/// Sets the committed-iterations gauge at start (a resumed run).
pub fn committed(iterations: u64) {
    gauge!(ITERATIONS_COMMITTED).set(iterations as f64);
}

/// A cognition job started (`+1`) or ended (`-1`).
pub fn job_in_flight(delta: f64) {
    gauge!(JOBS_IN_FLIGHT).increment(delta);
}

pub fn approvals_pending(count: usize) {
    gauge!(APPROVALS_PENDING).set(count as f64);
}

pub fn budget_remaining(tokens: u64) {
    gauge!(BUDGET_TOKENS_REMAINING).set(tokens as f64);
}

/// The process's resident set size, from `/proc/self/statm`.
pub fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok()??;
    Some(pages * page as u64)
}

/// Renders the Prometheus text, sampling the memory gauge first.
pub fn render(handle: &PrometheusHandle) -> String {
    if let Some(rss) = resident_memory_bytes() {
        gauge!(RESIDENT_MEMORY).set(rss as f64);
    }
    handle.render()
}
