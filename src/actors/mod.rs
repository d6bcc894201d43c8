//! The six actors of the tree and what they share: the [`Shared`] context
//! every actor is started with, the snapshot helpers that restore an actor's
//! committed state in `pre_start`, and the [`Factory`] the supervisor uses to
//! (re)start them. Each actor lives in its own file or folder, built the same way:
//! behaviour struct, state, `pre_start` that reads the store, an exhaustive
//! `handle`. Actors never import each other: they reach peers through
//! `crate::messages` by registered name.

pub mod executor;
pub mod governor;
pub mod learner;
pub mod modifier;
pub mod planner;
pub mod researcher;

use std::sync::Arc;

use ractor::{Actor, ActorCell};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::cognition::Cognition;
use crate::config::{Config, TreeSpec};
use crate::domain::{ActorKind, FaultKind};
use crate::events::EventBus;
use crate::messages::{ActorError, Common};
use crate::store::{SnapshotRecord, Store, codec};
use crate::supervisor::{ChildFactory, PingFuture, SpawnFuture};
use crate::workspace::Workspace;

/// What every actor of one agent instance shares.
#[derive(Clone)]
pub struct Shared {
    pub config: Config,
    pub tree: TreeSpec,
    pub store: Store,
    pub workspace: Workspace,
    pub backend: Arc<dyn Cognition>,
    pub events: EventBus,
    /// The prompt templates model backends offer as capabilities.
    pub prompts: crate::cognition::prompt::Prompts,
    /// Confines validation and fitness when there is one.
    pub sandbox: Option<crate::sandbox::Sandbox>,
    /// In-process validation and fitness, when embedded; `None` runs the
    /// configured commands.
    pub checks: Option<Arc<dyn crate::checks::Checks>>,
}

pub type Context = Arc<Shared>;

/// The context of one candidate: the same instance, working in the
/// candidate's own worktree.
pub fn in_lane(ctx: &Context, lane: &std::path::Path) -> Context {
    Arc::new(Shared {
        workspace: Workspace {
            path: lane.to_path_buf(),
        },
        ..Shared::clone(ctx)
    })
}

/// Each actor's snapshot schema in this build: what a release on probation
/// may not migrate a store to (see `upgrade::attempts`).
pub const SNAPSHOT_SCHEMAS: [(ActorKind, u32); 6] = [
    (ActorKind::Planner, planner::SCHEMA),
    (ActorKind::Executor, executor::SCHEMA),
    (ActorKind::Researcher, researcher::SCHEMA),
    (ActorKind::Learner, learner::SCHEMA),
    (ActorKind::Modifier, modifier::SCHEMA),
    (ActorKind::Governor, governor::SCHEMA),
];

/// Loads an actor's committed snapshot; `None` before its first commit. A
/// snapshot of another schema is a clear error, never a panic.
pub fn load_snapshot<S: DeserializeOwned>(
    store: &Store,
    kind: ActorKind,
    schema: u32,
) -> Result<Option<S>, ActorError> {
    let Some(record) = store
        .snapshot(kind.name())
        .map_err(|e| ActorError::Store(format!("cannot read the {kind} snapshot: {e}")))?
    else {
        return Ok(None);
    };
    if record.schema != schema {
        return Err(ActorError::Store(format!(
            "the stored {kind} snapshot has schema version {}, this build reads version {schema}; \
             use the build that wrote it or start with a new --state directory",
            record.schema
        )));
    }
    codec::decode(&record.body)
        .map(Some)
        .map_err(|e| ActorError::Store(format!("the stored {kind} snapshot is unreadable: {e}")))
}

/// Encodes an actor's state as the record it commits. The planner's iteration
/// driver stamps the iteration number when it commits.
pub fn make_snapshot<S: Serialize>(
    kind: ActorKind,
    schema: u32,
    body: &S,
) -> Result<SnapshotRecord, ActorError> {
    Ok(SnapshotRecord {
        actor: kind.name().to_string(),
        schema,
        iteration: 0,
        body: codec::encode(body).map_err(|e| ActorError::Store(e.to_string()))?,
    })
}

/// Applies an injected fault inside an actor's handler.
pub async fn inject(actor: ActorKind, fault: FaultKind) -> Result<(), ractor::ActorProcessingErr> {
    match fault {
        FaultKind::Panic => panic!("injected panic in {actor}"),
        FaultKind::Error => Err(format!("injected error in {actor}").into()),
        FaultKind::Hang => {
            tracing::warn!(%actor, "injected hang: this actor no longer serves its mailbox");
            std::future::pending::<()>().await;
            Ok(())
        }
    }
}

/// The `Common` messages of an actor whose committed state is one snapshot
/// struct: answer snapshots, revert by reloading the stored one, fail on
/// purpose.
pub async fn handle_common<S>(
    kind: ActorKind,
    schema: u32,
    store: &Store,
    snapshot: &mut S,
    message: Common,
) -> Result<(), ractor::ActorProcessingErr>
where
    S: Serialize + DeserializeOwned + Default,
{
    match message {
        Common::Snapshot(reply) => {
            let _span = tracing::info_span!("actor.snapshot", actor = kind.name()).entered();
            let _ = reply.send(make_snapshot(kind, schema, snapshot));
        }
        Common::Revert(reply) => {
            let loaded = load_snapshot(store, kind, schema);
            let _ = reply.send(loaded.map(|stored| *snapshot = stored.unwrap_or_default()));
        }
        Common::Ping(reply) => {
            let _ = reply.send(());
        }
        Common::Fault(fault) => inject(kind, fault).await?,
    }
    Ok(())
}

/// Starts the real actors for the supervisor.
pub struct Factory {
    pub context: Context,
}

impl ChildFactory for Factory {
    fn ping(&self, kind: ActorKind, timeout: std::time::Duration) -> PingFuture {
        Box::pin(async move {
            // Only silence is a hang; an actor that is not running is the
            // supervisor's business already.
            !matches!(
                crate::messages::call_common(kind, timeout, Common::Ping).await,
                Err(crate::messages::PeerError::Timeout(..))
            )
        })
    }

    fn spawn(&self, kind: ActorKind, supervisor: ActorCell) -> SpawnFuture {
        let ctx = self.context.clone();
        let name = Some(kind.name().to_string());
        Box::pin(async move {
            let cell = match kind {
                ActorKind::Governor => {
                    Actor::spawn_linked(name, governor::Governor, ctx, supervisor)
                        .await?
                        .0
                        .get_cell()
                }
                ActorKind::Learner => Actor::spawn_linked(name, learner::Learner, ctx, supervisor)
                    .await?
                    .0
                    .get_cell(),
                ActorKind::Researcher => {
                    Actor::spawn_linked(name, researcher::Researcher, ctx, supervisor)
                        .await?
                        .0
                        .get_cell()
                }
                ActorKind::Executor => {
                    Actor::spawn_linked(name, executor::Executor, ctx, supervisor)
                        .await?
                        .0
                        .get_cell()
                }
                ActorKind::Modifier => {
                    Actor::spawn_linked(name, modifier::Modifier, ctx, supervisor)
                        .await?
                        .0
                        .get_cell()
                }
                ActorKind::Planner => Actor::spawn_linked(name, planner::Planner, ctx, supervisor)
                    .await?
                    .0
                    .get_cell(),
            };
            Ok(cell)
        })
    }
}
