//! The governor: grants or denies the permit each iteration starts with
//! (paused by an operator, iteration limit reached, token budget over the
//! last 24 hours spent) and keeps the ledger of tokens and money the backends
//! reported. Spent tokens are a fact whatever becomes of the iteration, so the
//! ledger and the pause flag are written to the store at once. In supervised
//! mode it also holds validated changes until an operator approves or rejects
//! them (`agent ctl approve|reject`); every approval is an audited record.

use std::time::Duration;

use std::collections::HashMap;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use super::{Context, handle_common, load_snapshot, make_snapshot};
use crate::domain::{ActorKind, ApprovalDecision, ApprovalState, GovernorStatus, Permit, Usage};
use crate::events::Event;
use crate::messages::{ActorError, GovernorMsg};
use crate::store::audit::Decision;
use crate::store::{ApprovalRecord, now_ms};

const KIND: ActorKind = ActorKind::Governor;
const SCHEMA: u32 = 1;
const DAY_MS: u64 = 24 * 60 * 60 * 1000;

/// The governor's committed state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GovernorSnapshot {
    pub paused: bool,
    /// (unix ms, tokens) of every job in the last 24 hours.
    pub usage: Vec<(u64, u64)>,
    pub cost_usd_total: f64,
    pub tokens_total: u64,
    pub permits_granted: u64,
}

impl GovernorSnapshot {
    fn tokens_since(&self, since_ms: u64) -> u64 {
        self.usage
            .iter()
            .filter(|(at, _)| *at >= since_ms)
            .map(|(_, tokens)| tokens)
            .sum()
    }

    fn forget_before(&mut self, since_ms: u64) {
        self.usage.retain(|(at, _)| *at >= since_ms);
    }
}

/// The decision for one permit request, as a pure function of the state.
pub fn decide(
    snapshot: &GovernorSnapshot,
    iteration: u64,
    max_iterations: Option<u64>,
    tokens_per_day: u64,
    retry_after: Duration,
    now_ms: u64,
) -> Permit {
    if let Some(max) = max_iterations
        && iteration > max
    {
        return Permit::Finished {
            reason: format!("the iteration limit of {max} is reached"),
        };
    }
    if snapshot.paused {
        return Permit::Paused {
            retry_after,
            reason: None,
        };
    }
    let since = now_ms.saturating_sub(DAY_MS);
    let spent = snapshot.tokens_since(since);
    if spent >= tokens_per_day {
        // Wait until the oldest usage in the window leaves it.
        let oldest = snapshot
            .usage
            .iter()
            .filter(|(at, _)| *at >= since)
            .map(|(at, _)| *at)
            .min()
            .unwrap_or(now_ms);
        let free_at = oldest + DAY_MS;
        return Permit::Wait {
            reason: format!(
                "token budget spent: {spent} of {tokens_per_day} tokens in the last 24h"
            ),
            retry_after: Duration::from_millis(free_at.saturating_sub(now_ms)).max(retry_after),
        };
    }
    Permit::Granted
}

pub struct Governor;

pub struct GovernorState {
    ctx: Context,
    snapshot: GovernorSnapshot,
    /// Why the run is paused, when it was paused for a reason (durable in
    /// the store beside the snapshot's flag).
    pause_reason: Option<String>,
    /// Changes waiting for an operator, with the modifier's reply port.
    waiting: HashMap<String, (ApprovalRecord, RpcReplyPort<ApprovalDecision>)>,
    /// The last denial audited: a waiting planner asks again every few
    /// seconds, and the same denial is one decision, not one a request.
    last_denial: Option<String>,
}

impl GovernorState {
    /// Appends a decision to the audit chain, durably, before it is
    /// acknowledged.
    async fn audit(&self, action: &str, detail: String) -> Result<(), ActorError> {
        self.ctx
            .store
            .audit(Decision::new(KIND.name(), action, detail))
            .await
            .map(|_| ())
            .map_err(|e| ActorError::Store(format!("cannot audit {action}: {e}")))
    }

    async fn persist(&self) -> Result<(), ActorError> {
        let record = make_snapshot(KIND, SCHEMA, &self.snapshot)?;
        self.ctx
            .store
            .put_snapshot(&record)
            .await
            .map_err(|e| ActorError::Store(e.to_string()))
    }
}

impl Actor for Governor {
    type Msg = GovernorMsg;
    type State = GovernorState;
    type Arguments = Context;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        ctx: Context,
    ) -> Result<Self::State, ActorProcessingErr> {
        let snapshot = load_snapshot(&ctx.store, KIND, SCHEMA)?.unwrap_or_default();
        // Approvals that were waiting when a governor stopped lost their
        // iteration with it; the iteration asks again when it re-runs.
        for mut approval in ctx
            .store
            .approvals()?
            .into_iter()
            .filter(|a| a.state == ApprovalState::Pending)
        {
            approval.state = ApprovalState::Expired;
            approval.decided_at_ms = Some(now_ms());
            approval.reason = Some("the governor restarted; the iteration will ask again".into());
            ctx.store.put_approval(&approval).await?;
        }
        let pause_reason = ctx.store.pause_reason()?;
        Ok(GovernorState {
            ctx,
            snapshot,
            pause_reason,
            waiting: HashMap::new(),
            last_denial: None,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: GovernorMsg,
        state: &mut GovernorState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            GovernorMsg::RequestPermit { iteration, reply } => {
                // Debug level: permits are asked for outside any iteration's
                // trace (a paused run asks every few seconds).
                let span = tracing::debug_span!("governor.permit", actor = KIND.name(), iteration);
                let config = &state.ctx.config;
                let permit = decide(
                    &state.snapshot,
                    iteration,
                    config.max_iterations,
                    config.tokens_per_day,
                    config.permit_retry_after,
                    now_ms(),
                );
                let permit = match permit {
                    Permit::Granted => {
                        state.snapshot.permits_granted += 1;
                        Permit::Granted
                    }
                    Permit::Paused { retry_after, .. } => Permit::Paused {
                        retry_after,
                        reason: state.pause_reason.clone(),
                    },
                    other => other,
                };
                let (action, detail) = match &permit {
                    Permit::Granted => ("permit.granted", format!("iteration {iteration}")),
                    Permit::Paused { reason, .. } => (
                        "permit.denied",
                        format!(
                            "iteration {iteration}: paused{}",
                            reason
                                .as_ref()
                                .map(|r| format!(": {r}"))
                                .unwrap_or_default()
                        ),
                    ),
                    Permit::Wait { reason, .. } => {
                        ("permit.denied", format!("iteration {iteration}: {reason}"))
                    }
                    Permit::Finished { reason } => (
                        "permit.finished",
                        format!("iteration {iteration}: {reason}"),
                    ),
                };
                let repeated = action != "permit.granted"
                    && state.last_denial.as_deref() == Some(detail.as_str());
                if !repeated {
                    let audited = state
                        .audit(action, detail.clone())
                        .instrument(span.clone())
                        .await;
                    if let Err(error) = audited {
                        // Not audited, not granted: the planner waits and asks again.
                        tracing::error!(%error, "cannot audit a permit");
                        let _ = reply.send(Permit::Wait {
                            reason: error.to_string(),
                            retry_after: state.ctx.config.permit_retry_after,
                        });
                        return Ok(());
                    }
                    state.last_denial = (action != "permit.granted").then_some(detail);
                }
                let _ = reply.send(permit);
            }
            GovernorMsg::RecordUsage { usage, reply } => {
                tracing::info_span!(
                    "governor.usage",
                    actor = KIND.name(),
                    gen_ai.usage.input_tokens = usage.input_tokens as i64,
                    gen_ai.usage.output_tokens = usage.output_tokens as i64,
                    gen_ai.usage.cost_usd = usage.cost_usd,
                )
                .in_scope(|| record_usage(&mut state.snapshot, usage, now_ms()));
                let spent = state.snapshot.tokens_since(now_ms().saturating_sub(DAY_MS));
                crate::telemetry::metrics::budget_remaining(
                    state.ctx.config.tokens_per_day.saturating_sub(spent),
                );
                if let Err(error) = state.persist().await {
                    tracing::error!(%error, "cannot persist the token ledger");
                }
                let _ = reply.send(());
            }
            GovernorMsg::SetPaused {
                paused,
                reason,
                reply,
            } => {
                state.snapshot.paused = paused;
                let reason = reason.filter(|_| paused);
                let (action, detail) = match (&reason, paused) {
                    (Some(reason), _) => ("run.paused", reason.clone()),
                    (None, true) => ("run.paused", "by an operator".to_string()),
                    (None, false) => ("run.resumed", "by an operator".to_string()),
                };
                let result = match state.ctx.store.put_pause_reason(reason.as_deref()).await {
                    Ok(()) => match state.persist().await {
                        Ok(()) => state.audit(action, detail).await,
                        Err(error) => Err(error),
                    },
                    Err(error) => Err(ActorError::Store(error.to_string())),
                };
                state.pause_reason = reason;
                let _ = reply.send(result);
            }
            GovernorMsg::RequestApproval { request, reply } => {
                let attempt = state
                    .ctx
                    .store
                    .approvals()?
                    .iter()
                    .filter(|a| a.iteration == request.iteration)
                    .count();
                let approval = ApprovalRecord {
                    id: format!("{:06}-{}", request.iteration, attempt + 1),
                    iteration: request.iteration,
                    summary: request.summary,
                    files: request.files,
                    fitness_before: request.fitness_before,
                    fitness_after: request.fitness_after,
                    state: ApprovalState::Pending,
                    reason: None,
                    requested_at_ms: now_ms(),
                    decided_at_ms: None,
                };
                state.ctx.store.put_approval(&approval).await?;
                state
                    .audit(
                        "approval.requested",
                        format!(
                            "{}: iteration {}: {}",
                            approval.id, approval.iteration, approval.summary
                        ),
                    )
                    .await?;
                crash_point!("approval.pending");
                tracing::info!(id = %approval.id, iteration = approval.iteration, "change waiting for approval: agent ctl approve {}", approval.id);
                state.ctx.events.emit(Event::ApprovalRequested {
                    id: approval.id.clone(),
                    iteration: approval.iteration,
                    summary: approval.summary.clone(),
                });
                state.waiting.insert(approval.id.clone(), (approval, reply));
                crate::telemetry::metrics::approvals_pending(state.waiting.len());
            }
            GovernorMsg::Approvals(reply) => {
                let mut all = state.ctx.store.approvals()?;
                // Pending first, then the latest decisions.
                all.sort_by_key(|a| {
                    (
                        a.state != ApprovalState::Pending,
                        std::cmp::Reverse(a.requested_at_ms),
                    )
                });
                all.truncate(50);
                let _ = reply.send(all);
            }
            GovernorMsg::Decide {
                id,
                approve,
                reason,
                reply,
            } => {
                let Some((mut approval, waiting)) = state.waiting.remove(&id) else {
                    let known = state
                        .ctx
                        .store
                        .approvals()?
                        .into_iter()
                        .find(|a| a.id == id);
                    let _ = reply.send(Err(ActorError::Refused(match known {
                        Some(a) => format!("approval {id} is not waiting (it is {})", a.state),
                        None => format!("there is no approval {id}; see `agent ctl approvals`"),
                    })));
                    return Ok(());
                };
                approval.state = if approve {
                    ApprovalState::Approved
                } else {
                    ApprovalState::Rejected
                };
                approval.reason = reason.clone();
                approval.decided_at_ms = Some(now_ms());
                let recorded = match state.ctx.store.put_approval(&approval).await {
                    Ok(()) => {
                        state
                            .audit(
                                if approve {
                                    "approval.approved"
                                } else {
                                    "approval.rejected"
                                },
                                format!(
                                    "{id}: iteration {}{}",
                                    approval.iteration,
                                    reason
                                        .as_ref()
                                        .map(|r| format!(": {r}"))
                                        .unwrap_or_default()
                                ),
                            )
                            .await
                    }
                    Err(error) => Err(ActorError::Store(format!(
                        "cannot record the decision: {error}"
                    ))),
                };
                if let Err(error) = recorded {
                    state.waiting.insert(id, (approval, waiting));
                    let _ = reply.send(Err(error));
                    return Ok(());
                }
                let decision = if approve {
                    ApprovalDecision::Approved
                } else {
                    ApprovalDecision::Rejected {
                        reason: reason.unwrap_or_else(|| "rejected by an operator".into()),
                    }
                };
                let _ = waiting.send(decision);
                crate::telemetry::metrics::approvals_pending(state.waiting.len());
                let _ = reply.send(Ok(approval));
            }
            GovernorMsg::Status(reply) => {
                let since = now_ms().saturating_sub(DAY_MS);
                let _ = reply.send(GovernorStatus {
                    paused: state.snapshot.paused,
                    pause_reason: state.pause_reason.clone(),
                    tokens_last_day: state.snapshot.tokens_since(since),
                    tokens_per_day: state.ctx.config.tokens_per_day,
                    cost_usd_total: state.snapshot.cost_usd_total,
                    permits_granted: state.snapshot.permits_granted,
                });
            }
            // Usage and pause are durable as they happen, so reverting to
            // the stored snapshot loses nothing that was spent.
            GovernorMsg::Common(common) => {
                handle_common(KIND, SCHEMA, &state.ctx.store, &mut state.snapshot, common).await?
            }
        }
        Ok(())
    }
}

fn record_usage(snapshot: &mut GovernorSnapshot, usage: Usage, now_ms: u64) {
    snapshot.forget_before(now_ms.saturating_sub(DAY_MS));
    if usage.tokens() > 0 {
        snapshot.usage.push((now_ms, usage.tokens()));
    }
    snapshot.tokens_total += usage.tokens();
    snapshot.cost_usd_total += usage.cost_usd;
}

#[cfg(test)]
mod tests {
    use super::*;

    const RETRY: Duration = Duration::from_secs(2);

    #[test]
    fn grants_until_the_iteration_limit() {
        let s = GovernorSnapshot::default();
        assert_eq!(decide(&s, 3, Some(3), 100, RETRY, 0), Permit::Granted);
        assert!(matches!(
            decide(&s, 4, Some(3), 100, RETRY, 0),
            Permit::Finished { .. }
        ));
    }

    #[test]
    fn a_pause_makes_the_planner_wait() {
        let s = GovernorSnapshot {
            paused: true,
            ..Default::default()
        };
        assert!(
            matches!(decide(&s, 1, None, 100, RETRY, 0), Permit::Paused { retry_after, .. } if retry_after == RETRY)
        );
    }

    #[test]
    fn the_token_budget_is_a_rolling_day() {
        let mut s = GovernorSnapshot::default();
        let now = 10 * DAY_MS;
        record_usage(
            &mut s,
            Usage {
                input_tokens: 60,
                output_tokens: 50,
                cost_usd: 0.1,
            },
            now - 1000,
        );
        let denied = decide(&s, 1, None, 100, RETRY, now);
        let Permit::Wait {
            retry_after,
            reason,
        } = denied
        else {
            panic!("expected a wait, got {denied:?}");
        };
        assert!(reason.contains("110 of 100"), "{reason}");
        assert_eq!(retry_after, Duration::from_millis(DAY_MS - 1000));
        // A day later the usage has left the window.
        assert_eq!(
            decide(&s, 1, None, 100, RETRY, now + DAY_MS),
            Permit::Granted
        );
    }
}
