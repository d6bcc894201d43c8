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
    /// Holds a validated change until an operator decides. When it cannot
    /// be recorded, the modifier hears why (and refuses the change; the
    /// iteration asks again) while the governor, and every approval already
    /// waiting, carry on.
    pub(super) async fn request_approval(
        &mut self,
        request: ApprovalRequest,
        reply: RpcReplyPort<Result<ApprovalDecision, ActorError>>,
    ) {
        match self.record_request(request).await {
            Ok(approval) => {
                self.waiting.insert(approval.id.clone(), (approval, reply));
                crate::telemetry::metrics::approvals_pending(self.waiting.len());
            }
            Err(error) => {
                tracing::error!(%error, "cannot hold a change for approval");
                let _ = reply.send(Err(error));
            }
        }
    }

    /// Writes and audits a new pending approval; returns it.
    async fn record_request(&self, request: ApprovalRequest) -> Result<ApprovalRecord, ActorError> {
        let attempt = self
            .stored_approvals()?
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
        self.ctx
            .store
            .put_approval(&approval)
            .await
            .map_err(|error| {
                ActorError::Store(format!("cannot record the approval request: {error}"))
            })?;
        let detail = format!(
            "{}: iteration {}: {}",
            approval.id, approval.iteration, approval.summary
        );
        if let Err(error) = self.audit("approval.requested", detail).await {
            self.expire_unaudited(approval).await;
            return Err(error);
        }
        crash_point!("approval.pending");
        tracing::info!(id = %approval.id, iteration = approval.iteration, "change waiting for approval: agent ctl approve {}", approval.id);
        self.ctx.events.emit(Event::ApprovalRequested {
            id: approval.id.clone(),
            iteration: approval.iteration,
            summary: approval.summary.clone(),
        });
        Ok(approval)
    }

    /// A request that was written but not audited waits for no one: it is
    /// expired at once rather than listed as pending until the next restart.
    async fn expire_unaudited(&self, mut approval: ApprovalRecord) {
        approval.state = ApprovalState::Expired;
        approval.decided_at_ms = Some(now_ms());
        approval.reason = Some("the request could not be audited".into());
        if let Err(error) = self.ctx.store.put_approval(&approval).await {
            tracing::error!(%error, id = %approval.id, "cannot expire an unaudited approval; the next start expires it");
        }
    }

    /// Every stored approval, or the store's failure as the actor's error.
    fn stored_approvals(&self) -> Result<Vec<ApprovalRecord>, ActorError> {
        self.ctx
            .store
            .approvals()
            .map_err(|error| ActorError::Store(format!("cannot read the approvals: {error}")))
    }

    pub(super) fn approvals(&self, reply: RpcReplyPort<Result<Vec<ApprovalRecord>, ActorError>>) {
        let listed = self.stored_approvals().map(|mut all| {
            // Pending first, then the latest decisions.
            all.sort_by_key(|a| {
                (
                    a.state != ApprovalState::Pending,
                    std::cmp::Reverse(a.requested_at_ms),
                )
            });
            all.truncate(LISTED);
            all
        });
        let _ = reply.send(listed);
    }

    /// Approves or rejects the waiting approval `id`. The decision is
    /// recorded and audited before anyone hears of it; when it cannot be,
    /// the operator hears why and the approval keeps waiting (the governor
    /// does not stop: a restart would expire every waiting approval).
    pub(super) async fn decide(
        &mut self,
        id: String,
        approve: bool,
        reason: Option<String>,
        reply: RpcReplyPort<Result<ApprovalRecord, ActorError>>,
    ) {
        let Some((mut approval, waiting)) = self.waiting.remove(&id) else {
            let _ = reply.send(Err(self.not_waiting(&id)));
            return;
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
            return;
        }
        let decision = if approve {
            ApprovalDecision::Approved
        } else {
            ApprovalDecision::Rejected {
                reason: reason.unwrap_or_else(|| "rejected by an operator".into()),
            }
        };
        let _ = waiting.send(Ok(decision));
        crate::telemetry::metrics::approvals_pending(self.waiting.len());
        let _ = reply.send(Ok(approval));
    }

    /// Why `id` cannot be decided: it is decided already, or unknown (or
    /// the store cannot say which).
    fn not_waiting(&self, id: &str) -> ActorError {
        let known = match self.stored_approvals() {
            Ok(all) => all.into_iter().find(|a| a.id == id),
            Err(error) => return error,
        };
        ActorError::Refused(match known {
            Some(a) => format!("approval {id} is not waiting (it is {})", a.state),
            None => format!("there is no approval {id}; see `agent ctl approvals`"),
        })
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
