//! One function per operator action that changes the run: pause, resume,
//! a new goal, a decision on an approval. `agent ctl pause` and `agent ctl
//! send governor pause` (and so on) both call these, so an action has one
//! path and one behaviour whichever way it is asked for. Also the one place
//! where the actors' typed errors become the wire's error kinds.

use std::time::Duration;

use super::protocol::{ErrorKind, WireError};
use crate::domain::ActorKind;
use crate::messages::{self, ActorError, GovernorMsg, ModifierMsg, PeerError, PlannerMsg};
use crate::store::ApprovalRecord;

const QUICK: Duration = Duration::from_secs(10);

/// Pauses (`true`) or resumes (`false`) the run: the governor's flag is made
/// durable first, then the planner is told, so that it stops starting
/// iterations — or starts again at once instead of waiting for a permit it
/// no longer asks for.
pub async fn set_paused(paused: bool) -> Result<(), WireError> {
    messages::call(ActorKind::Governor, QUICK, |reply| GovernorMsg::SetPaused {
        paused,
        reason: None,
        reply,
    })
    .await
    .map_err(peer_error)?
    .map_err(actor_error)?;
    messages::lookup::<PlannerMsg>(ActorKind::Planner)
        .and_then(|planner| {
            planner
                .cast(PlannerMsg::Paused(paused))
                .map_err(|_| PeerError::Gone(ActorKind::Planner))
        })
        .map_err(peer_error)
}

/// Replaces the goal from the next iteration on.
pub async fn set_goal(goal: String) -> Result<(), WireError> {
    messages::call(ActorKind::Planner, QUICK, |reply| PlannerMsg::SetGoal {
        goal,
        reply,
    })
    .await
    .map_err(peer_error)?
    .map_err(actor_error)
}

/// Approves or rejects a change waiting in supervised mode; answers after
/// the decision is durable.
pub async fn decide(
    id: String,
    approve: bool,
    reason: Option<String>,
) -> Result<ApprovalRecord, WireError> {
    messages::call(ActorKind::Governor, QUICK, |reply| GovernorMsg::Decide {
        id,
        approve,
        reason,
        reply,
    })
    .await
    .map_err(peer_error)?
    .map_err(actor_error)
}

/// Moves the agent branch onto the repository's HEAD when validation passes
/// there. Only a paused, idle run: an iteration must not see its base move.
pub async fn rebase() -> Result<String, WireError> {
    let planner = messages::call(ActorKind::Planner, QUICK, PlannerMsg::Status)
        .await
        .map_err(peer_error)?;
    if planner.run_state != crate::domain::RunState::Paused || planner.in_flight.is_some() {
        return Err(WireError::new(
            ErrorKind::Refused,
            "pause the run first (`agent ctl pause`) and wait until no iteration is in flight",
        ));
    }
    messages::call(
        ActorKind::Modifier,
        Duration::from_secs(600),
        ModifierMsg::Rebase,
    )
    .await
    .map_err(peer_error)?
    .map_err(actor_error)
}

/// A peer that could not be reached, as a wire error (restarting actors get
/// a retry hint).
pub fn peer_error(error: PeerError) -> WireError {
    match error {
        PeerError::NotRunning(_) | PeerError::Gone(_) => WireError {
            kind: ErrorKind::ActorRestarting,
            message: format!("{error}; retry shortly"),
            retry_after_ms: Some(500),
        },
        PeerError::Timeout(..) => WireError::new(ErrorKind::Timeout, error.to_string()),
    }
}

/// An actor's refusal or failure, as a wire error of the same kind.
pub fn actor_error(error: ActorError) -> WireError {
    let kind = match &error {
        ActorError::Refused(_) => ErrorKind::Refused,
        ActorError::Invalid(_) => ErrorKind::BadArguments,
        ActorError::Store(_) | ActorError::Workspace(_) => ErrorKind::Internal,
    };
    WireError::new(kind, error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_kinds_come_from_the_type_not_the_text() {
        let refused = actor_error(ActorError::Refused("internal".into()));
        assert_eq!(refused.kind, ErrorKind::Refused);
        assert_eq!(refused.message, "internal");
        assert_eq!(
            actor_error(ActorError::Invalid("x".into())).kind,
            ErrorKind::BadArguments
        );
        assert_eq!(
            actor_error(ActorError::Store("refused".into())).kind,
            ErrorKind::Internal
        );
        let gone = peer_error(PeerError::NotRunning(ActorKind::Learner));
        assert_eq!(gone.kind, ErrorKind::ActorRestarting);
        assert_eq!(gone.retry_after_ms, Some(500));
        assert_eq!(
            peer_error(PeerError::Timeout(ActorKind::Learner, QUICK)).kind,
            ErrorKind::Timeout
        );
    }
}
