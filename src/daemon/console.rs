//! What the daemon does with its own events: one line per committed
//! iteration on stdout for the person watching, and the metrics kept in step.

use tokio::sync::broadcast::{self, error::RecvError};

use crate::events::Event;
use crate::telemetry;

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

/// One line per committed iteration on stdout, for the person watching.
pub(super) async fn print_iterations(mut events: broadcast::Receiver<Event>) {
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
            Ok(Event::RunPaused { reason, .. }) => println!("agent: {reason}"),
            Ok(Event::ActorRestarted { actor, restarts }) => {
                println!("agent: {actor} restarted (restart {restarts})")
            }
            Ok(_) => {}
            Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => return,
        }
    }
}
