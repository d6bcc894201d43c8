//! `SetPaused`: an operator's pause or resume, or the planner's pause with
//! its reason. The flag and the reason are written to the store at once and
//! audited before the answer, so a restarted governor is still paused.

use ractor::RpcReplyPort;

use super::GovernorState;
use crate::messages::ActorError;

impl GovernorState {
    pub(super) async fn set_paused(
        &mut self,
        paused: bool,
        reason: Option<String>,
        reply: RpcReplyPort<Result<(), ActorError>>,
    ) {
        self.snapshot.paused = paused;
        let reason = reason.filter(|_| paused);
        let result = self.record_pause(paused, reason.as_deref()).await;
        self.pause_reason = reason;
        let _ = reply.send(result);
    }

    /// Writes the pause reason and the flag, then audits the change.
    async fn record_pause(&self, paused: bool, reason: Option<&str>) -> Result<(), ActorError> {
        let (action, detail) = match (reason, paused) {
            (Some(reason), _) => ("run.paused", reason.to_string()),
            (None, true) => ("run.paused", "by an operator".to_string()),
            (None, false) => ("run.resumed", "by an operator".to_string()),
        };
        self.ctx
            .store
            .put_pause_reason(reason)
            .await
            .map_err(|error| ActorError::Store(error.to_string()))?;
        self.persist().await?;
        self.audit(action, detail).await
    }
}
