//! What follows each attempt at an iteration: the driver's `IterationEnd`,
//! one function per way an attempt ends (committed, wait, finished,
//! abandoned, base fails, nothing left, reverted), the pauses they raise, and
//! the revert of every peer after an attempt that did not commit.

use std::time::Duration;

use ractor::ActorRef;

use super::iteration::QUICK;
use super::{InFlight, KIND, PlannerState, logic, loop_window};
use crate::domain::{ActorKind, Iteration, RunState};
use crate::events::Event;
use crate::messages::{
    self, Common, ExecutorMsg, GovernorMsg, IterationEnd, ModifierMsg, PlannerMsg,
};

impl PlannerState {
    /// The driver (or the revert after it) of `iteration` is done; an end
    /// from a task the planner no longer waits for is ignored.
    pub(super) fn iteration_ended(
        &mut self,
        myself: &ActorRef<PlannerMsg>,
        iteration: u64,
        end: IterationEnd,
    ) {
        if self.in_flight.as_ref().map(|f| f.iteration) != Some(iteration) {
            return;
        }
        self.in_flight = None;
        self.on_iteration_end(myself, iteration, end);
        if self.in_flight.is_none() && self.run_state == RunState::Stopping {
            self.answer_drain_waiters();
        }
    }

    fn on_iteration_end(
        &mut self,
        myself: &ActorRef<PlannerMsg>,
        iteration: u64,
        end: IterationEnd,
    ) {
        if !matches!(end, IterationEnd::Wait { paused: false, .. }) {
            self.waiting = None;
        }
        match end {
            IterationEnd::Committed(committed) => self.on_committed(myself, iteration, committed),
            IterationEnd::Wait {
                reason,
                retry_after,
                paused,
            } => self.on_wait(myself, reason, retry_after, paused),
            IterationEnd::Finished { reason } => self.on_finished(reason),
            IterationEnd::Abandoned { reason } => self.on_abandoned(myself, iteration, reason),
            IterationEnd::BaseFails { reason } => self.on_base_fails(myself, iteration, reason),
            IterationEnd::NothingLeft { reason } => {
                self.pause_at_once(myself, iteration, "loop", reason)
            }
            IterationEnd::LoginLost { reason } => {
                self.pause_at_once(myself, iteration, "persistent_failure", reason)
            }
            IterationEnd::RateLimited { until_ms, reason } => {
                self.on_rate_limited(myself, iteration, until_ms, reason)
            }
            IterationEnd::Reverted => self.on_reverted(myself),
        }
    }

    /// A rate limit (or an overloaded API) turned the job away: every peer
    /// reverts, the governor holds permits until the limit resets — or for
    /// a back-off that grows with overloads in a row, up to
    /// [`OVERLOAD_BACKOFF_MAX`] — and the same iteration runs again then.
    /// No failure is counted: nothing is wrong with the change or the run.
    fn on_rate_limited(
        &mut self,
        myself: &ActorRef<PlannerMsg>,
        iteration: u64,
        until_ms: Option<u64>,
        reason: String,
    ) {
        let until_ms = until_ms.unwrap_or_else(|| {
            self.overloads += 1;
            let delay =
                logic::retry_delay(self.overloads, OVERLOAD_BACKOFF_FIRST, OVERLOAD_BACKOFF_MAX);
            crate::store::now_ms() + delay.as_millis() as u64
        });
        let reason = format!(
            "{reason} until {}",
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + Duration::from_millis(until_ms)
            )
        );
        tracing::warn!(iteration, %reason, "the job was turned away; waiting, not failing");
        self.ctx.events.emit(Event::PermitWaiting {
            reason: reason.clone(),
        });
        self.waiting = Some(reason.clone());
        let planner = myself.clone();
        self.in_flight = Some(InFlight::spawn(iteration, async move {
            hold_at_the_governor(until_ms, reason).await;
            revert_all(planner, iteration, None).await;
        }));
    }

    /// The iteration is done: counted, remembered for loop detection, and
    /// the next one starts, unless the run is caught in a loop.
    fn on_committed(
        &mut self,
        myself: &ActorRef<PlannerMsg>,
        iteration: u64,
        committed: Iteration,
    ) {
        self.failures = 0;
        self.overloads = 0;
        self.base_checked = true;
        self.outcomes.add(committed.outcome);
        self.snapshot.committed = committed.number;
        self.snapshot.last_fitness = committed.head_fitness();
        tracing::info!(
            iteration = committed.number,
            capability = %committed.capability,
            outcome = %committed.outcome,
            "{}",
            committed.summary
        );
        self.recent.push_back(committed.clone());
        while self.recent.len() > loop_window(&self.ctx) {
            self.recent.pop_front();
        }
        self.ctx.events.emit(Event::IterationCommitted(committed));
        if self.run_state == RunState::Running
            && let Some(why) =
                logic::loop_detected(self.recent.make_contiguous(), self.ctx.config.loops)
        {
            let why = format!("{why}; change the goal or the workspace, then `agent ctl resume`");
            self.pause_run(iteration, "loop", &why);
            // Paused at the governor too (audited), so a restart stays paused.
            tokio::spawn(pause_at_the_governor(why));
        }
        let _ = myself.cast(PlannerMsg::Tick);
    }

    /// The governor said not now: ask again after `retry_after`.
    fn on_wait(
        &mut self,
        myself: &ActorRef<PlannerMsg>,
        reason: String,
        retry_after: Duration,
        paused: bool,
    ) {
        // The pause may predate this planner (a restart): show it.
        if paused && self.run_state == RunState::Running {
            self.run_state = RunState::Paused;
        }
        if paused {
            self.pause_reason = Some(reason.clone());
        } else {
            self.waiting = Some(reason.clone());
        }
        tracing::debug!(%reason, retry_after = %humantime::format_duration(retry_after), "permit denied; waiting");
        self.ctx.events.emit(Event::PermitWaiting { reason });
        myself.send_after(retry_after, || PlannerMsg::Tick);
    }

    fn on_finished(&mut self, reason: String) {
        self.run_state = RunState::Finished;
        tracing::info!(%reason, committed = self.snapshot.committed, "run finished");
        self.ctx.events.emit(Event::RunFinished { reason });
    }

    /// Something failed before the commit: every peer reverts, and the same
    /// iteration runs again.
    fn on_abandoned(&mut self, myself: &ActorRef<PlannerMsg>, iteration: u64, reason: String) {
        self.failures += 1;
        tracing::warn!(iteration, %reason, failures = self.failures, "iteration abandoned; reverting every actor");
        self.ctx.events.emit(Event::IterationAbandoned {
            iteration,
            reason: reason.clone(),
        });
        // A failure that does not go away pauses the run, visibly,
        // instead of being retried forever.
        let pause = (self.failures >= self.ctx.config.pause_after_failures
            && self.run_state == RunState::Running)
            .then(|| logic::pause_reason(self.failures, &reason));
        if let Some(why) = &pause {
            self.pause_run(iteration, "persistent_failure", why);
        }
        self.in_flight = Some(InFlight::spawn(
            iteration,
            revert_all(myself.clone(), iteration, pause),
        ));
    }

    fn on_base_fails(&mut self, myself: &ActorRef<PlannerMsg>, iteration: u64, reason: String) {
        let why = format!(
            "{reason}; fix the workspace (or set [validation] failing_base = \"proceed\" when the goal is to make it pass), then `agent ctl resume`"
        );
        self.pause_at_once(myself, iteration, "persistent_failure", why);
    }

    /// Every peer is back at its committed state: the next attempt starts,
    /// at once after a clean end, else after a back-off.
    fn on_reverted(&mut self, myself: &ActorRef<PlannerMsg>) {
        if self.run_state != RunState::Running {
            return;
        }
        if self.failures == 0 {
            let _ = myself.cast(PlannerMsg::Tick);
        } else {
            let config = &self.ctx.config;
            let delay = logic::retry_delay(self.failures, config.retry_initial, config.retry_max);
            tracing::info!(failures = self.failures, retry_in = %humantime::format_duration(delay), "next attempt after a back-off");
            myself.send_after(delay, || PlannerMsg::Tick);
        }
    }

    /// Pauses the run now, with `why` (raised as the alert `rule`): what ended
    /// the attempt would end the next one the same way. Every peer drops the
    /// attempt's state first.
    fn pause_at_once(
        &mut self,
        myself: &ActorRef<PlannerMsg>,
        iteration: u64,
        rule: &'static str,
        why: String,
    ) {
        self.pause_run(iteration, rule, &why);
        self.in_flight = Some(InFlight::spawn(
            iteration,
            revert_all(myself.clone(), iteration, Some(why)),
        ));
    }

    /// Pauses the run here, says why in the log and raises the alert `rule`;
    /// the governor is told by the caller.
    fn pause_run(&mut self, iteration: u64, rule: &'static str, why: &str) {
        tracing::error!(iteration, reason = %why, "pausing the run");
        self.run_state = RunState::Paused;
        self.pause_reason = Some(why.to_string());
        self.ctx.events.emit(Event::RunPaused {
            rule,
            reason: why.to_string(),
        });
    }
}

/// Asks every peer to drop uncommitted state, then reports `Reverted`; with
/// a `pause` reason, first makes the pause durable in the governor.
pub(super) async fn revert_all(
    planner: ActorRef<PlannerMsg>,
    iteration: u64,
    pause: Option<String>,
) {
    if let Some(reason) = pause {
        pause_at_the_governor(reason).await;
    }
    // A job of this iteration still on the MCP server (the agent was killed
    // while it ran) has edited, or will edit, the worktree: keep it.
    let pending = messages::call(ActorKind::Executor, QUICK, |reply| {
        ExecutorMsg::PendingJob { iteration, reply }
    })
    .await
    .ok()
    .flatten();
    revert_peers(pending.is_some()).await;
    let _ = planner.cast(PlannerMsg::IterationEnded {
        iteration,
        end: IterationEnd::Reverted,
    });
}

/// The first back-off after an overloaded API, and the longest.
const OVERLOAD_BACKOFF_FIRST: Duration = Duration::from_secs(30);
const OVERLOAD_BACKOFF_MAX: Duration = Duration::from_secs(600);

/// The governor holds permits until `until_ms` (audited, shown in status).
async fn hold_at_the_governor(until_ms: u64, reason: String) {
    let held = messages::call(ActorKind::Governor, QUICK, |reply| GovernorMsg::HoldUntil {
        until_ms,
        reason,
        reply,
    })
    .await;
    if !matches!(held, Ok(Ok(()))) {
        tracing::error!(?held, "the governor did not record the hold");
    }
}

/// The governor records the pause (audited, durable), so that a restart
/// stays paused.
async fn pause_at_the_governor(reason: String) {
    let paused = messages::call(ActorKind::Governor, QUICK, |reply| GovernorMsg::SetPaused {
        paused: true,
        reason: Some(reason),
        reply,
    })
    .await;
    if !matches!(paused, Ok(Ok(()))) {
        tracing::error!(?paused, "the governor did not record the pause");
    }
}

/// Every peer drops uncommitted state; the modifier also resets the worktree
/// unless `keep_worktree`.
pub(super) async fn revert_peers(keep_worktree: bool) {
    for kind in ActorKind::ALL.into_iter().filter(|k| *k != KIND) {
        // An actor that is restarting reloads its snapshot in pre_start anyway.
        let reverted = if kind == ActorKind::Modifier && keep_worktree {
            messages::call(kind, QUICK, ModifierMsg::Reload).await
        } else {
            messages::call_common(kind, QUICK, Common::Revert).await
        };
        if let Ok(Err(error)) = reverted {
            tracing::warn!(actor = %kind, %error, "revert failed");
        }
    }
}
