//! Things that happen in a run, published on one broadcast bus: the daemon
//! prints iteration lines from it and watches for the end of the run, and
//! `agent ctl watch` (a later addition) will stream it.

use tokio::sync::broadcast;

use crate::domain::{ActorKind, Iteration};

#[derive(Debug, Clone)]
pub enum Event {
    IterationStarted {
        iteration: u64,
    },
    /// One step of an iteration: permit, prepare, plan, execute, validate, learn, commit.
    Step {
        iteration: u64,
        step: &'static str,
        detail: String,
    },
    ApprovalRequested {
        id: String,
        iteration: u64,
        summary: String,
    },
    GoalChanged {
        goal: String,
    },
    /// An alert rule fired (see `[alerts]`).
    Alert {
        rule: &'static str,
        message: String,
    },
    IterationCommitted(Iteration),
    IterationAbandoned {
        iteration: u64,
        reason: String,
    },
    PermitWaiting {
        reason: String,
    },
    RunFinished {
        reason: String,
    },
    /// The planner paused the run by itself; `rule` is the alert it raises:
    /// `persistent_failure` (attempts kept failing, or the base fails) or
    /// `loop` (loop detection).
    RunPaused {
        rule: &'static str,
        reason: String,
    },
    ActorFailed {
        actor: ActorKind,
        error: String,
    },
    ActorRestarted {
        actor: ActorKind,
        restarts: u32,
    },
    Escalated {
        reason: String,
    },
}

/// The sending side of the bus; cheap to clone.
#[derive(Debug, Clone)]
pub struct EventBus {
    sender: broadcast::Sender<Event>,
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus {
            sender: broadcast::channel(1024).0,
        }
    }
}

impl EventBus {
    /// Publishes an event; having no listener is fine.
    pub fn emit(&self, event: Event) {
        let _ = self.sender.send(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.sender.subscribe()
    }
}
