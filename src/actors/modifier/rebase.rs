//! `Rebase` and `Moved`: moving the agent branch onto the repository's HEAD
//! on an operator's request (the run paused and idle). The replay and its
//! validation run off the mailbox; the new head comes back as `Moved` and
//! is written to the store at once (a rebase is no iteration's, so no
//! iteration commit would write it).

use ractor::{ActorRef, RpcReplyPort};
use tracing::Instrument;

use super::baseline::baseline;
use super::{Context, KIND, ModifierState, SCHEMA, blocking};
use crate::actors::make_snapshot;
use crate::messages::{ActorError, ModifierMsg};

impl ModifierState {
    pub(super) fn rebase(
        &mut self,
        myself: ActorRef<ModifierMsg>,
        reply: RpcReplyPort<Result<String, ActorError>>,
    ) {
        let ctx = self.ctx.clone();
        let head = self.snapshot.head.clone();
        let span = tracing::info_span!("modifier.rebase", actor = KIND.name());
        self.work.spawn(
            async move {
                match rebase(&ctx, &head).await {
                    // The operator hears of it once the new head is written.
                    Ok((said, new_head)) => {
                        let _ = myself.cast(ModifierMsg::Moved {
                            head: new_head,
                            said,
                            reply,
                        });
                    }
                    Err(refusal) => {
                        let _ = reply.send(Err(ActorError::Refused(refusal)));
                    }
                }
            }
            .instrument(span),
        );
    }

    /// The new committed head after a rebase, written at once; the
    /// operator hears `said`, or why the head could not be written (the
    /// branch has moved all the same, so it is the head held here either
    /// way, and the next iteration's commit writes it).
    pub(super) async fn head_moved(
        &mut self,
        head: String,
        said: String,
        reply: RpcReplyPort<Result<String, ActorError>>,
    ) {
        self.snapshot.head = head;
        // Measured again on the new base.
        self.snapshot.head_fitness = None;
        let written = self.write_head().await.map(|()| said);
        let _ = reply.send(written);
    }

    /// Writes the snapshot with the new head, under the last committed
    /// iteration.
    async fn write_head(&self) -> Result<(), ActorError> {
        let mut record = make_snapshot(KIND, SCHEMA, &self.snapshot)?;
        let store_error = |error: crate::store::StoreError| {
            ActorError::Store(format!(
                "the branch moved but its new head is not recorded: {error}"
            ))
        };
        record.iteration = self
            .ctx
            .store
            .last_iteration()
            .map_err(store_error)?
            .map_or(0, |i| i.number);
        self.ctx
            .store
            .put_snapshot(&record)
            .await
            .map_err(store_error)
    }
}

/// Replays the branch onto the repository's HEAD, checks it out and runs
/// validation there: kept when it passes (the old head stays on a rescue
/// ref), put back when it fails. Returns what to tell the operator and the
/// new head.
async fn rebase(ctx: &Context, head: &str) -> Result<(String, String), String> {
    let workspace = ctx.workspace.clone();
    let replayed =
        blocking(move || workspace.replay_onto_base().map_err(|e| e.to_string())).await?;
    let Some(replayed) = replayed else {
        return Err("the agent branch is not behind the repository's HEAD; nothing to do".into());
    };
    if replayed.old_head != head {
        return Err("the worktree is not at the committed head; let the run settle first".into());
    }
    let (workspace, new_head) = (ctx.workspace.clone(), replayed.new_head.clone());
    blocking(move || workspace.reset_to(&new_head).map_err(|e| e.to_string())).await?;
    if let Some((fails, _)) = baseline(ctx).await? {
        let (workspace, old) = (ctx.workspace.clone(), replayed.old_head.clone());
        blocking(move || workspace.reset_to(&old).map_err(|e| e.to_string())).await?;
        return Err(format!(
            "{fails}; on the repository's HEAD {} the branch stays where it was",
            &replayed.base[..10]
        ));
    }
    let (workspace, old) = (ctx.workspace.clone(), replayed.old_head.clone());
    let kept = blocking(move || {
        workspace
            .keep(&old, "agent: branch before a rebase")
            .map_err(|e| e.to_string())
    })
    .await?;
    Ok((
        format!(
            "rebased {} commit(s) onto the repository's HEAD {}; validation passes there; the old branch is kept on {kept}",
            replayed.replayed,
            &replayed.base[..10]
        ),
        replayed.new_head,
    ))
}
