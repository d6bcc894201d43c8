//! What operators and the shutdown ask of the run, one handler per message:
//! pause and resume, a new goal (durable in the run record at once), drain
//! (start nothing new, answer once idle) and abandon (give up the attempt
//! in flight when the shutdown deadline passed).

use ractor::{ActorRef, RpcReplyPort};

use super::PlannerState;
use super::ending::revert_peers;
use crate::domain::{RunPhase, RunState};
use crate::events::Event;
use crate::messages::{ActorError, PlannerMsg};

impl PlannerState {
    pub(super) fn set_paused(&mut self, myself: &ActorRef<PlannerMsg>, paused: bool) {
        self.links.extend(crate::telemetry::current_link());
        match (paused, self.run_state) {
            (true, RunState::Running) => {
                self.run_state = RunState::Paused;
                self.pause_reason = Some("paused by an operator".into());
            }
            (false, RunState::Paused) => {
                self.run_state = RunState::Running;
                self.pause_reason = None;
                // A resume is the operator's word that the cause is
                // fixed: the next failure starts a new count.
                self.failures = 0;
            }
            _ => {}
        }
        let _ = myself.cast(PlannerMsg::Tick);
    }

    pub(super) async fn set_goal(
        &mut self,
        goal: String,
        reply: RpcReplyPort<Result<(), ActorError>>,
    ) {
        self.links.extend(crate::telemetry::current_link());
        let goal = goal.trim().to_string();
        if goal.is_empty() {
            let _ = reply.send(Err(ActorError::Invalid(
                "the goal must be a non-empty sentence".into(),
            )));
            return;
        }
        let result = self.store_goal(&goal).await;
        if result.is_ok() {
            // A new goal is judged from its own base check.
            self.base_checked = false;
            tracing::info!(%goal, "goal changed by an operator");
            self.snapshot.goal = goal.clone();
            self.ctx.events.emit(Event::GoalChanged { goal });
        }
        let _ = reply.send(result);
    }

    /// The run record changes now (durable); the planner's snapshot carries
    /// the goal from the next committed iteration on.
    async fn store_goal(&self, goal: &str) -> Result<(), ActorError> {
        match self.ctx.store.run() {
            Ok(Some(mut run)) => {
                run.goal = goal.to_string();
                run.state = RunPhase::Running;
                self.ctx
                    .store
                    .put_run(&run)
                    .await
                    .map_err(|e| ActorError::Store(e.to_string()))
            }
            Ok(None) => Err(ActorError::Store("no run is stored".to_string())),
            Err(error) => Err(ActorError::Store(error.to_string())),
        }
    }

    pub(super) fn drain(&mut self, reply: RpcReplyPort<()>) {
        if self.run_state != RunState::Finished {
            self.run_state = RunState::Stopping;
        }
        if self.in_flight.is_none() {
            let _ = reply.send(());
        } else {
            self.drain_waiters.push(reply);
        }
    }

    pub(super) async fn abandon(&mut self, reply: RpcReplyPort<()>) {
        if let Some(in_flight) = self.in_flight.take() {
            drop(in_flight);
            tracing::warn!("shutdown deadline passed: abandoning the in-flight iteration");
            revert_peers(false).await;
        }
        self.answer_drain_waiters();
        let _ = reply.send(());
    }

    /// Tells everyone waiting for the drain that nothing is in flight.
    pub(super) fn answer_drain_waiters(&mut self) {
        for waiter in self.drain_waiters.drain(..) {
            let _ = waiter.send(());
        }
    }
}
