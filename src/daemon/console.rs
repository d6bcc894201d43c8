//! What the daemon does with its own events: one line per committed
//! iteration on stdout for the person watching, a pause said as what that
//! person can do about it, and the metrics kept in step.

use tokio::sync::broadcast::{self, error::RecvError};

use crate::events::Event;
use crate::telemetry::{self, alerts::RESOURCE_LIMIT};

/// Keeps the metrics in step with the run's events.
pub(super) async fn record_metrics(mut events: broadcast::Receiver<Event>, backend: String) {
    loop {
        match events.recv().await {
            Ok(event) => telemetry::metrics::record_event(&event, &backend),
            Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => return,
        }
    }
}

/// What a paused run tells the person at its terminal.
#[derive(Debug, Clone)]
pub(super) struct PauseHint {
    /// The `--state` that `agent ctl` needs to reach this run.
    state_dir: String,
    /// The run exits on a pause instead of waiting (`--exit-on-pause`).
    exits: bool,
}

impl PauseHint {
    pub(super) fn of(config: &crate::config::Config) -> PauseHint {
        PauseHint {
            state_dir: config.state_dir.display().to_string(),
            exits: config.exit_on_pause,
        }
    }

    /// One line: the pause's reason, and how to go on from this terminal.
    /// A reason ends with its remedy, "then `agent ctl resume`" (as
    /// `agent ctl status` shows it); here that becomes the whole command.
    pub(super) fn line(&self, reason: &str) -> String {
        let reason = reason.strip_prefix("paused ").unwrap_or(reason);
        let then = if self.exits {
            "run `agent run` again to resume (--exit-on-pause: exiting now, state checkpointed)"
                .to_string()
        } else {
            format!(
                "run `agent ctl --state {} resume` from another terminal, or press Ctrl-C to stop",
                self.state_dir
            )
        };
        match reason.strip_suffix("`agent ctl resume`") {
            Some(cause_and_fix) => format!("agent: paused: {cause_and_fix}{then}"),
            None => format!("agent: paused: {reason}; fix the cause, then {then}"),
        }
    }
}

/// One line per committed iteration on stdout, for the person watching.
pub(super) async fn print_iterations(mut events: broadcast::Receiver<Event>, pause: PauseHint) {
    loop {
        match events.recv().await {
            Ok(Event::IterationCommitted(iteration)) => println!(
                "iteration {:>3}  {:<24} {:<10} {} ({:.1}s)",
                iteration.number,
                iteration.capability,
                iteration.outcome.as_str(),
                iteration.summary,
                iteration.duration.as_millis() as f64 / 1000.0
            ),
            Ok(Event::IterationAbandoned { iteration, reason }) => {
                println!(
                    "iteration {iteration:>3}  abandoned before its commit: {reason}; it will run again"
                )
            }
            // A run that exits on its pause says it once, with its exit.
            Ok(Event::RunPaused { reason, .. }) if !pause.exits => {
                println!("{}", pause.line(&reason))
            }
            Ok(Event::Alert {
                rule: RESOURCE_LIMIT,
                message,
            }) if !pause.exits => println!("{}", pause.line(&message)),
            Ok(Event::ActorRestarted { actor, restarts }) => {
                println!("agent: {actor} restarted (restart {restarts})")
            }
            Ok(_) => {}
            Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::PauseHint;

    fn hint(exits: bool) -> PauseHint {
        PauseHint {
            state_dir: "/srv/agent/state".into(),
            exits,
        }
    }

    #[test]
    fn a_pause_says_how_to_resume_from_another_terminal() {
        let reason = "paused after 5 failed attempts in a row: fitness: boom; fix the cause, then `agent ctl resume`";
        assert_eq!(
            hint(false).line(reason),
            "agent: paused: after 5 failed attempts in a row: fitness: boom; fix the cause, then \
             run `agent ctl --state /srv/agent/state resume` from another terminal, or press Ctrl-C to stop"
        );
    }

    #[test]
    fn a_reason_without_its_remedy_gets_one_and_an_exiting_run_says_it_exits() {
        let line = hint(true).line("memory 900 MB is over [limits] max_memory_mb 800");
        assert_eq!(
            line,
            "agent: paused: memory 900 MB is over [limits] max_memory_mb 800; fix the cause, then \
             run `agent run` again to resume (--exit-on-pause: exiting now, state checkpointed)"
        );
    }
}
