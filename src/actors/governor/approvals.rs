//! Supervised mode's approvals: `RequestApproval` records a validated change
//! and holds the modifier's reply port until an operator decides; `Decide`
//! records the decision durably, then answers both the operator and the
//! waiting modifier; `Approvals` lists them. Every step is an audited record.
//! A reply port does not survive a restart, so approvals still waiting when
//! a governor starts are expired (`expire_waiting`).

use ractor::{ActorProcessingErr, RpcReplyPort};

use super::GovernorState;
use crate::actors::Context;
use crate::domain::{ApprovalDecision, ApprovalRequest, ApprovalState};
use crate::events::Event;
use crate::messages::ActorError;
use crate::store::{ApprovalRecord, now_ms};

/// The approvals `Approvals` lists at most.
const LISTED: usize = 50;

impl GovernorState {
    pub(super) async fn request_approval(
        &mut self,
        request: ApprovalRequest,
        reply: RpcReplyPort<ApprovalDecision>,
    ) -> Result<(), ActorProcessingErr> {
        let attempt = self
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
        self.ctx.store.put_approval(&approval).await?;
        self.audit(
            "approval.requested",
            format!(
                "{}: iteration {}: {}",
                approval.id, approval.iteration, approval.summary
            ),
        )
        .await?;
        crash_point!("approval.pending");
        tracing::info!(id = %approval.id, iteration = approval.iteration, "change waiting for approval: agent ctl approve {}", approval.id);
        self.ctx.events.emit(Event::ApprovalRequested {
            id: approval.id.clone(),
            iteration: approval.iteration,
            summary: approval.summary.clone(),
        });
        self.waiting.insert(approval.id.clone(), (approval, reply));
        crate::telemetry::metrics::approvals_pending(self.waiting.len());
        Ok(())
    }

    pub(super) fn approvals(
        &self,
        reply: RpcReplyPort<Vec<ApprovalRecord>>,
    ) -> Result<(), ActorProcessingErr> {
        let mut all = self.ctx.store.approvals()?;
        // Pending first, then the latest decisions.
        all.sort_by_key(|a| {
            (
                a.state != ApprovalState::Pending,
                std::cmp::Reverse(a.requested_at_ms),
            )
        });
        all.truncate(LISTED);
        let _ = reply.send(all);
        Ok(())
    }

    /// Approves or rejects the waiting approval `id`. The decision is
    /// recorded and audited before anyone hears of it; when it cannot be,
    /// the approval keeps waiting.
    pub(super) async fn decide(
        &mut self,
        id: String,
        approve: bool,
        reason: Option<String>,
        reply: RpcReplyPort<Result<ApprovalRecord, ActorError>>,
    ) -> Result<(), ActorProcessingErr> {
        let Some((mut approval, waiting)) = self.waiting.remove(&id) else {
            let _ = reply.send(Err(self.not_waiting(&id)?));
            return Ok(());
        };
        approval.state = if approve {
            ApprovalState::Approved
        } else {
            ApprovalState::Rejected
        };
        approval.reason = reason.clone();
        approval.decided_at_ms = Some(now_ms());
        if let Err(error) = self.record_decision(&approval).await {
            self.waiting.insert(id, (approval, waiting));
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
        crate::telemetry::metrics::approvals_pending(self.waiting.len());
        let _ = reply.send(Ok(approval));
        Ok(())
    }

    /// Why `id` cannot be decided: it is decided already, or unknown.
    fn not_waiting(&self, id: &str) -> Result<ActorError, ActorProcessingErr> {
        let known = self.ctx.store.approvals()?.into_iter().find(|a| a.id == id);
        Ok(ActorError::Refused(match known {
            Some(a) => format!("approval {id} is not waiting (it is {})", a.state),
            None => format!("there is no approval {id}; see `agent ctl approvals`"),
        }))
    }

    /// Writes a decided approval and audits the decision.
    async fn record_decision(&self, approval: &ApprovalRecord) -> Result<(), ActorError> {
        self.ctx
            .store
            .put_approval(approval)
            .await
            .map_err(|error| ActorError::Store(format!("cannot record the decision: {error}")))?;
        let action = if approval.state == ApprovalState::Approved {
            "approval.approved"
        } else {
            "approval.rejected"
        };
        let detail = format!(
            "{}: iteration {}{}",
            approval.id,
            approval.iteration,
            approval
                .reason
                .as_ref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        );
        self.audit(action, detail).await
    }
}

/// Expires the approvals that were waiting when a governor stopped: they
/// lost their iteration with it, and the iteration asks again when it
/// re-runs (under a new id, so a decision never applies to a diff the
/// operator did not see).
pub(super) async fn expire_waiting(ctx: &Context) -> Result<(), ActorProcessingErr> {
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
    Ok(())
}
