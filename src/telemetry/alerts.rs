//! Alerts: rules from `[alerts]` evaluated over the run's events and a
//! periodic measurement of memory, CPU and disk (`crate::resources`); a
//! hard limit (`[limits]`) crossed pauses the run with the reason. An alert
//! goes to the log, to the event bus (so `agent ctl watch` shows it) and, if
//! configured, to a webhook as a JSON POST under a timeout, on a task of its
//! own: a failing webhook never blocks the agent. Each rule fires once when
//! its condition starts to hold and again only after it has cleared.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio_util::bytes::Bytes;

use crate::config::AlertRules;
use crate::domain::{ActorKind, Outcome};
use crate::events::{Event, EventBus};
use crate::messages::{self, GovernorMsg};
use crate::resources;

/// The rules' memory between events, as a pure state machine.
#[derive(Debug)]
pub struct Rules {
    rules: AlertRules,
    restarts: VecDeque<Instant>,
    without_progress: u64,
    firing: std::collections::HashSet<&'static str>,
}

impl Rules {
    pub fn new(rules: AlertRules) -> Rules {
        Rules {
            rules,
            restarts: VecDeque::new(),
            without_progress: 0,
            firing: Default::default(),
        }
    }

    /// Fires `rule` if it is not firing already; clears it when `holds` is false.
    fn edge(
        &mut self,
        rule: &'static str,
        holds: bool,
        message: impl FnOnce() -> String,
    ) -> Option<(&'static str, String)> {
        if holds {
            self.firing.insert(rule).then(|| (rule, message()))
        } else {
            self.firing.remove(rule);
            None
        }
    }

    /// A committed iteration: progress is an accepted change.
    pub fn iteration(&mut self, outcome: Outcome) -> Option<(&'static str, String)> {
        if outcome == Outcome::Accepted {
            self.without_progress = 0;
        } else {
            self.without_progress += 1;
        }
        let limit = self.rules.no_progress_iterations;
        let count = self.without_progress;
        self.edge("no_progress", count >= limit, || {
            format!("{count} iterations in a row without an accepted change")
        })
    }

    /// An actor restarted at `now`.
    pub fn restart(&mut self, now: Instant) -> Option<(&'static str, String)> {
        self.restarts.push_back(now);
        while let Some(&oldest) = self.restarts.front() {
            if now.duration_since(oldest) > self.rules.restart_window {
                self.restarts.pop_front();
            } else {
                break;
            }
        }
        let count = self.restarts.len() as u64;
        let (limit, window) = (self.rules.restart_limit, self.rules.restart_window);
        self.edge("restarts", count > limit, || {
            format!(
                "{count} actor restarts within {} (limit {limit})",
                humantime::format_duration(window)
            )
        })
    }

    /// Tokens spent in the last day against the daily budget.
    pub fn budget(&mut self, spent: u64, budget: u64) -> Option<(&'static str, String)> {
        let fraction = self.rules.budget_warn_fraction;
        let holds = budget > 0 && spent as f64 >= fraction * budget as f64;
        self.edge("budget", holds, || {
            format!(
                "{spent} of {budget} daily tokens spent ({:.0}%, warning at {:.0}%)",
                100.0 * spent as f64 / budget as f64,
                100.0 * fraction
            )
        })
    }

    /// A measurement of memory, CPU and disk against the soft limits.
    pub fn resources(&mut self, sample: &resources::Sample) -> Vec<(&'static str, String)> {
        resources::soft(&self.rules.resources, sample)
            .into_iter()
            .filter_map(|(rule, crossed, message)| self.edge(rule, crossed, || message))
            .collect()
    }
}

/// The alert a hard resource limit raises as it pauses the run.
pub const RESOURCE_LIMIT: &str = "resource_limit";

/// A hard limit crossed: the run pauses with the reason, unless it is
/// paused already (the governor audits the pause).
async fn pause_for(reason: String) -> Option<(&'static str, String)> {
    let status = messages::call(
        ActorKind::Governor,
        Duration::from_secs(5),
        GovernorMsg::Status,
    )
    .await
    .ok()?;
    if status.paused {
        return None;
    }
    let paused = messages::call(ActorKind::Governor, Duration::from_secs(5), |reply| {
        GovernorMsg::SetPaused {
            paused: true,
            reason: Some(reason.clone()),
            reply,
        }
    })
    .await;
    match paused {
        Ok(Ok(())) => Some((RESOURCE_LIMIT, reason)),
        _ => None,
    }
}

/// Evaluates the rules until the bus closes.
pub async fn run(
    rules: AlertRules,
    events: EventBus,
    service: String,
    state_dir: std::path::PathBuf,
) {
    let webhook = rules.webhook.clone();
    let timeout = rules.webhook_timeout;
    let mut state = Rules::new(rules);
    let mut received = events.subscribe();
    let limits = state.rules.resources.clone();
    let mut measure = tokio::time::interval(limits.every);
    let mut sampler = resources::Sampler::default();
    loop {
        let fired = tokio::select! {
            event = received.recv() => match event {
                Ok(Event::IterationCommitted(record)) => {
                    let progress = state.iteration(record.outcome);
                    let budget = match messages::call(ActorKind::Governor, Duration::from_secs(5), GovernorMsg::Status).await {
                        Ok(status) => state.budget(status.tokens_last_day, status.tokens_per_day),
                        Err(_) => None,
                    };
                    progress.into_iter().chain(budget).collect::<Vec<_>>()
                }
                Ok(Event::ActorRestarted { .. }) => state.restart(Instant::now()).into_iter().collect(),
                // Always raised: the run stopped on its own and waits for an operator.
                Ok(Event::RunPaused { rule, reason }) => vec![(rule, reason)],
                Ok(_) => Vec::new(),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => Vec::new(),
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
            _ = measure.tick() => {
                let sample = sampler.sample(&state_dir);
                let mut fired = state.resources(&sample);
                if let Some(reason) = resources::hard(&limits, &sample) {
                    fired.extend(pause_for(reason).await);
                }
                fired
            }
        };
        for (rule, message) in fired {
            tracing::warn!(rule, %message, "alert");
            events.emit(Event::Alert {
                rule,
                message: message.clone(),
            });
            if let Some(url) = webhook.clone() {
                let body = serde_json::json!({
                    "rule": rule,
                    "message": message,
                    "service": service,
                    "at_ms": crate::store::now_ms(),
                });
                tokio::spawn(post(url, body, timeout));
            }
        }
    }
}

/// POSTs an alert; failures are logged, never retried or waited on.
async fn post(url: String, body: serde_json::Value, timeout: Duration) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let request = match hyper::Request::post(&url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
    {
        Ok(request) => request,
        Err(error) => {
            tracing::warn!(%url, %error, "alert webhook URL is unusable");
            return;
        }
    };
    match tokio::time::timeout(timeout, client.request(request)).await {
        Ok(Ok(response)) if response.status().is_success() => {}
        Ok(Ok(response)) => {
            tracing::warn!(%url, status = %response.status(), "alert webhook refused the alert")
        }
        Ok(Err(error)) => tracing::warn!(%url, %error, "alert webhook failed"),
        Err(_) => {
            tracing::warn!(%url, timeout = %humantime::format_duration(timeout), "alert webhook timed out")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        Rules::new(AlertRules {
            webhook: None,
            webhook_timeout: Duration::from_secs(1),
            budget_warn_fraction: 0.8,
            restart_limit: 2,
            restart_window: Duration::from_secs(60),
            no_progress_iterations: 3,
            resources: resources::Limits {
                soft_rss_bytes: 100,
                hard_rss_bytes: None,
                soft_cpu_percent: None,
                soft_free_disk_bytes: None,
                hard_free_disk_bytes: None,
                every: Duration::from_secs(1),
            },
        })
    }

    #[test]
    fn no_progress_fires_once_and_clears_on_an_accepted_change() {
        let mut r = rules();
        assert!(r.iteration(Outcome::Rejected).is_none());
        assert!(r.iteration(Outcome::NoChange).is_none());
        assert_eq!(r.iteration(Outcome::JobFailed).unwrap().0, "no_progress");
        assert!(r.iteration(Outcome::Rejected).is_none(), "fires once");
        assert!(r.iteration(Outcome::Accepted).is_none());
        r.iteration(Outcome::Rejected);
        r.iteration(Outcome::Rejected);
        assert!(
            r.iteration(Outcome::Rejected).is_some(),
            "fires again after clearing"
        );
    }

    #[test]
    fn restarts_count_within_the_window() {
        let mut r = rules();
        let start = Instant::now();
        assert!(r.restart(start).is_none());
        assert!(r.restart(start + Duration::from_secs(1)).is_none());
        let (rule, message) = r.restart(start + Duration::from_secs(2)).unwrap();
        assert_eq!(rule, "restarts");
        assert!(message.contains("3 actor restarts within 1m"), "{message}");
        // Long after, the window holds one restart again: cleared.
        assert!(r.restart(start + Duration::from_secs(300)).is_none());
    }

    #[test]
    fn budget_and_memory_fire_at_their_thresholds() {
        let mut r = rules();
        assert!(r.budget(79, 100).is_none());
        assert!(r.budget(80, 100).unwrap().1.contains("80 of 100"));
        let sample = |rss_bytes| resources::Sample {
            rss_bytes,
            cpu_percent: 0.0,
            free_disk_bytes: None,
        };
        assert!(r.resources(&sample(100)).is_empty());
        assert_eq!(r.resources(&sample(101))[0].0, "memory");
        assert!(r.resources(&sample(101)).is_empty(), "fires once");
    }
}
