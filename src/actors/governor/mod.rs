//! The governor: grants or denies the permit each iteration starts with
//! (paused by an operator, iteration limit reached, a budget that the next
//! job could cross: see `budget.rs`) and keeps the ledger of tokens and
//! money the backends reported; every decision goes on the audit chain
//! before it is answered. Spent tokens are a fact whatever becomes of the iteration, so the
//! ledger and the pause flag are written to the store at once. In supervised
//! mode it also holds validated changes until an operator approves or rejects
//! them (`agent ctl approve|reject`); every approval is an audited record.

mod budget;

use std::collections::HashMap;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use super::{Context, handle_common, load_snapshot, make_snapshot};
use crate::domain::{
    ActorKind, ApprovalDecision, ApprovalState, BudgetRow, Budgets, GovernorStatus, Permit, Usage,
};
use crate::events::Event;
use crate::messages::{self, ActorError, GovernorMsg, PlannerMsg};
use crate::store::audit::Decision;
use crate::store::{ApprovalRecord, Durable, now_ms};
use budget::{Asked, Ledger, Permits, Spend};

const KIND: ActorKind = ActorKind::Governor;
const SCHEMA: u32 = 3;
/// The longest a denied planner waits before it asks again.
const LONGEST_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// The governor's committed state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GovernorSnapshot {
    pub paused: bool,
    /// Spends of the day window, by slice (see `budget::note_spend`).
    pub spend: Vec<Spend>,
    /// Permits of the hour window, by slice.
    pub permits: Vec<Permits>,
    pub cost_usd_total: f64,
    pub tokens_total: u64,
    pub permits_granted: u64,
    /// Budgets set live (`set-budget`), by name, as given.
    pub live_budgets: Vec<(String, String)>,
}

/// The snapshot as schema 2 wrote it (one entry per spend and per permit).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GovernorSnapshotV2 {
    pub paused: bool,
    pub spend: Vec<Spend>,
    pub permits: Vec<u64>,
    pub cost_usd_total: f64,
    pub tokens_total: u64,
    pub permits_granted: u64,
    pub live_budgets: Vec<(String, String)>,
}

impl From<GovernorSnapshotV2> for GovernorSnapshot {
    fn from(old: GovernorSnapshotV2) -> Self {
        GovernorSnapshot {
            paused: old.paused,
            spend: old.spend,
            permits: old
                .permits
                .into_iter()
                .map(|at_ms| Permits { at_ms, count: 1 })
                .collect(),
            cost_usd_total: old.cost_usd_total,
            tokens_total: old.tokens_total,
            permits_granted: old.permits_granted,
            live_budgets: old.live_budgets,
        }
    }
}

/// The snapshot as schema 1 wrote it (tokens only, no live budgets).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GovernorSnapshotV1 {
    pub paused: bool,
    pub usage: Vec<(u64, u64)>,
    pub cost_usd_total: f64,
    pub tokens_total: u64,
    pub permits_granted: u64,
}

impl From<GovernorSnapshotV1> for GovernorSnapshot {
    fn from(old: GovernorSnapshotV1) -> Self {
        GovernorSnapshot {
            paused: old.paused,
            spend: old
                .usage
                .into_iter()
                .map(|(at_ms, tokens)| Spend {
                    at_ms,
                    tokens,
                    usd: 0.0,
                })
                .collect(),
            permits: Vec::new(),
            cost_usd_total: old.cost_usd_total,
            tokens_total: old.tokens_total,
            permits_granted: old.permits_granted,
            live_budgets: Vec::new(),
        }
    }
}

/// The stored snapshot, read in the schema it was written in.
fn load(store: &crate::store::Store) -> Result<Option<GovernorSnapshot>, ActorError> {
    let record = store
        .snapshot(KIND.name())
        .map_err(|e| ActorError::Store(e.to_string()))?;
    match record {
        Some(record) if record.schema == 1 => {
            crate::store::codec::decode::<GovernorSnapshotV1>(&record.body)
                .map(|old| Some(old.into()))
                .map_err(|e| ActorError::Store(format!("cannot read the governor snapshot: {e}")))
        }
        Some(record) if record.schema == 2 => {
            crate::store::codec::decode::<GovernorSnapshotV2>(&record.body)
                .map(|old| Some(old.into()))
                .map_err(|e| ActorError::Store(format!("cannot read the governor snapshot: {e}")))
        }
        _ => load_snapshot(store, KIND, SCHEMA),
    }
}

pub struct Governor;

pub struct GovernorState {
    ctx: Context,
    snapshot: GovernorSnapshot,
    /// The configured budgets with the live changes applied.
    budgets: Budgets,
    /// When the run started, for the deadline.
    run_started_ms: Option<u64>,
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
    fn ledger(&self) -> Ledger<'_> {
        Ledger {
            spend: &self.snapshot.spend,
            permits: &self.snapshot.permits,
            run_started_ms: self.run_started_ms,
        }
    }

    fn rows(&self) -> Vec<BudgetRow> {
        let live: Vec<String> = self
            .snapshot
            .live_budgets
            .iter()
            .map(|(name, _)| name.clone())
            .collect();
        budget::rows(&self.ledger(), &self.budgets, &live, now_ms())
    }

    /// Appends a decision to the audit chain, durably, before it is
    /// acknowledged.
    async fn audit(&self, action: &str, detail: String) -> Result<(), ActorError> {
        self.audit_with(action, detail, Durable::Now).await
    }

    async fn audit_with(
        &self,
        action: &str,
        detail: String,
        durable: Durable,
    ) -> Result<(), ActorError> {
        self.ctx
            .store
            .audit_with(Decision::new(KIND.name(), action, detail), durable)
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
        let snapshot = load(&ctx.store)?.unwrap_or_default();
        let mut budgets = ctx.config.budgets.clone();
        for (name, value) in &snapshot.live_budgets {
            if let Err(error) = budget::set(&mut budgets, name, value) {
                tracing::warn!(%error, "a budget set live no longer applies");
            }
        }
        let run_started_ms = ctx.store.run()?.map(|run| run.created_at_ms);
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
        let state = GovernorState {
            ctx,
            snapshot,
            budgets,
            run_started_ms,
            pause_reason,
            waiting: HashMap::new(),
            last_denial: None,
        };
        // A snapshot of an older schema is written back in this one.
        state.persist().await?;
        Ok(state)
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
                let now = now_ms();
                let permit = budget::decide(
                    &state.ledger(),
                    &Asked {
                        iteration,
                        max_iterations: config.max_iterations,
                        paused: state.snapshot.paused,
                        budgets: &state.budgets,
                        job_worst_usd: iteration_worst_usd(&state.ctx),
                        retry_after: config.permit_retry_after,
                        now_ms: now,
                    },
                );
                let permit = match permit {
                    Permit::Granted => {
                        state.snapshot.permits_granted += 1;
                        budget::note_permit(&mut state.snapshot.permits, &state.budgets, now);
                        Permit::Granted
                    }
                    // Asked again at least every minute: a budget raised
                    // live (or a clock that moved) is seen soon.
                    Permit::Wait {
                        reason,
                        retry_after,
                    } => Permit::Wait {
                        reason,
                        retry_after: retry_after.min(LONGEST_WAIT),
                    },
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
                    // A grant starts an iteration and is durable with its
                    // commit; a crash before that asks for the permit again.
                    let durable = if action == "permit.granted" {
                        Durable::AtCommit
                    } else {
                        Durable::Now
                    };
                    let audited = state
                        .audit_with(action, detail.clone(), durable)
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
                .in_scope(|| record_usage(&mut state.snapshot, &state.budgets, usage, now_ms()));
                let spent = state.ledger().tokens_in_day(&state.budgets, now_ms());
                crate::telemetry::metrics::budget_remaining(
                    state.budgets.tokens_per_day.saturating_sub(spent),
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
            GovernorMsg::Budgets(reply) => {
                let _ = reply.send(state.rows());
            }
            GovernorMsg::SetBudget { name, value, reply } => {
                let mut budgets = state.budgets.clone();
                let result = match budget::set(&mut budgets, &name, &value) {
                    Err(why) => Err(ActorError::Invalid(why)),
                    Ok(()) => {
                        let audited = state.audit("budget.set", format!("{name} = {value}")).await;
                        match audited {
                            Err(error) => Err(error),
                            Ok(()) => {
                                state.budgets = budgets;
                                state.snapshot.live_budgets.retain(|(n, _)| *n != name);
                                state.snapshot.live_budgets.push((name.clone(), value));
                                // A waiting planner looks again now.
                                if let Ok(planner) =
                                    messages::lookup::<PlannerMsg>(ActorKind::Planner)
                                {
                                    let _ = planner.cast(PlannerMsg::Tick);
                                }
                                state.persist().await.map(|()| {
                                    state
                                        .rows()
                                        .into_iter()
                                        .find(|row| row.name == name)
                                        .expect("a budget that was set has a row")
                                })
                            }
                        }
                    }
                };
                let _ = reply.send(result);
            }
            GovernorMsg::Status(reply) => {
                let _ = reply.send(GovernorStatus {
                    paused: state.snapshot.paused,
                    pause_reason: state.pause_reason.clone(),
                    tokens_last_day: state.ledger().tokens_in_day(&state.budgets, now_ms()),
                    tokens_per_day: state.budgets.tokens_per_day,
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

/// The most one iteration may spend in dollars: every Claude Code call it
/// may make (the research questions, then the job) at `--max-budget-usd`
/// each. The offline backend spends nothing.
fn iteration_worst_usd(ctx: &Context) -> Option<f64> {
    if ctx.backend.name() == "offline" {
        return Some(0.0);
    }
    let calls = 1 + crate::cognition::research_questions("").len();
    ctx.config.max_budget_usd.map(|usd| usd * calls as f64)
}

fn record_usage(snapshot: &mut GovernorSnapshot, budgets: &Budgets, usage: Usage, now_ms: u64) {
    if usage.tokens() > 0 || usage.cost_usd > 0.0 {
        budget::note_spend(
            &mut snapshot.spend,
            budgets,
            now_ms,
            usage.tokens(),
            usage.cost_usd,
        );
    }
    snapshot.tokens_total += usage.tokens();
    snapshot.cost_usd_total += usage.cost_usd;
}
