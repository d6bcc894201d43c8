//! The governor: grants or denies the permit each iteration starts with
//! (paused by an operator, iteration limit reached, a budget that the next
//! job could cross: see `budget.rs`) and keeps the ledger of tokens and
//! money the backends reported; every decision goes on the audit chain
//! before it is answered. Spent tokens are a fact whatever becomes of the iteration, so the
//! ledger and the pause flag are written to the store at once. In supervised
//! mode it also holds validated changes until an operator approves or rejects
//! them (`agent ctl approve|reject`); every approval is an audited record.
//!
//! This file holds the state, its snapshot in each schema it was written in,
//! and `handle`, which only dispatches: each message has its own method, in
//! `permits.rs`, `spending.rs` (usage and budgets), `pause.rs` and
//! `approvals.rs`, or here for `Status`.

mod approvals;
mod budget;
mod pause;
mod permits;
mod spending;

pub use permits::{worst_case_calls, worst_case_usd};

use std::collections::HashMap;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};

use super::{Context, handle_common, load_snapshot, make_snapshot};
use crate::domain::{ActorKind, ApprovalDecision, BudgetRow, Budgets, GovernorStatus};
use crate::messages::{ActorError, GovernorMsg};
use crate::store::audit::Decision;
use crate::store::{ApprovalRecord, Durable, now_ms};
use budget::{Ledger, Permits, Spend};

const KIND: ActorKind = ActorKind::Governor;
pub(crate) const SCHEMA: u32 = 3;

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
    waiting: HashMap<
        String,
        (
            ApprovalRecord,
            RpcReplyPort<Result<ApprovalDecision, ActorError>>,
        ),
    >,
    /// The last denial audited: a waiting planner asks again every few
    /// seconds, and the same denial is one decision, not one a request.
    last_denial: Option<String>,
    /// Permits wait until then (ms since the epoch), for this reason: a
    /// rate limit's reset. In memory: after a restart the next job meets
    /// the limit again and says when it resets.
    hold: Option<(u64, String)>,
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

    fn status(&self, reply: RpcReplyPort<GovernorStatus>) {
        let _ = reply.send(GovernorStatus {
            paused: self.snapshot.paused,
            pause_reason: self.pause_reason.clone(),
            tokens_last_day: self.ledger().tokens_in_day(&self.budgets, now_ms()),
            tokens_per_day: self.budgets.tokens_per_day,
            cost_usd_total: self.snapshot.cost_usd_total,
            permits_granted: self.snapshot.permits_granted,
        });
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
        approvals::expire_waiting(&ctx).await?;
        let pause_reason = ctx.store.pause_reason()?;
        let state = GovernorState {
            ctx,
            snapshot,
            budgets,
            run_started_ms,
            pause_reason,
            waiting: HashMap::new(),
            last_denial: None,
            hold: None,
        };
        // A snapshot of an older schema is written back in this one.
        state.persist().await?;
        Ok(state)
    }

    /// One message, one method: each handler owns its span, its audit
    /// entry and its reply. A request's store failure is answered on its
    /// reply port, never returned here: an error out of `handle` restarts
    /// the governor, and a restart expires every waiting approval.
    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: GovernorMsg,
        state: &mut GovernorState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            GovernorMsg::RequestPermit { iteration, reply } => {
                state.request_permit(iteration, reply).await
            }
            GovernorMsg::RecordUsage { usage, reply } => state.record_usage(usage, reply).await,
            GovernorMsg::SetPaused {
                paused,
                reason,
                reply,
            } => state.set_paused(paused, reason, reply).await,
            GovernorMsg::RequestApproval { request, reply } => {
                state.request_approval(request, reply).await
            }
            GovernorMsg::Approvals(reply) => state.approvals(reply),
            GovernorMsg::Decide {
                id,
                approve,
                reason,
                reply,
            } => state.decide(id, approve, reason, reply).await,
            GovernorMsg::Budgets(reply) => state.budgets(reply),
            GovernorMsg::SetBudget { name, value, reply } => {
                state.set_budget(name, value, reply).await
            }
            GovernorMsg::Status(reply) => state.status(reply),
            GovernorMsg::HoldUntil {
                until_ms,
                reason,
                reply,
            } => state.hold_until(until_ms, reason, reply).await,
            // Usage and pause are durable as they happen, so reverting to
            // the stored snapshot loses nothing that was spent.
            GovernorMsg::Common(common) => {
                handle_common(KIND, SCHEMA, &state.ctx.store, &mut state.snapshot, common).await?
            }
        }
        Ok(())
    }
}
