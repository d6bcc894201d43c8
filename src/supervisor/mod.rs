//! The root supervisor: starts the six actors in declared order, watches
//! their supervision events and applies the decisions of the pure
//! [`policy`] (restart with backoff, stop siblings, escalate). It owns the
//! restart counts and last errors that `agent ctl status` reports.
//!
//! Facts of ractor 0.16 this relies on: a panic or error in a child's handler
//! arrives as `ActorFailed`; a failure in `pre_start` is returned to the
//! spawner, never sent as an event, so a failed respawn is counted here; a
//! child's registered name is free again before we hear of its failure.

pub mod policy;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{
    Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SpawnErr, SupervisionEvent,
};

use crate::config::TreeSpec;
use crate::domain::ActorKind;
use crate::events::{Event, EventBus};
use policy::{Decision, Exit, Policy, RestartWindow};

/// The supervisor's registered name.
pub const NAME: &str = "supervisor";

pub type SpawnFuture = Pin<Box<dyn Future<Output = Result<ActorCell, SpawnErr>> + Send>>;
/// Whether a child answered its ping in time.
pub type PingFuture = Pin<Box<dyn Future<Output = bool> + Send>>;

/// Starts one child, linked to the supervisor. The production factory starts
/// the real actors; tests can start stand-ins.
pub trait ChildFactory: Send + Sync + 'static {
    fn spawn(&self, kind: ActorKind, supervisor: ActorCell) -> SpawnFuture;

    /// Asks a child to answer within `timeout`; `false` only when it stayed
    /// silent (a hang). Children that cannot be pinged are taken as alive.
    fn ping(&self, kind: ActorKind, timeout: Duration) -> PingFuture {
        let _ = (kind, timeout);
        Box::pin(std::future::ready(true))
    }
}

/// What `status` and `tree` show of one child.
#[derive(Debug, Clone, PartialEq)]
pub struct ChildStatus {
    pub kind: ActorKind,
    /// running | restarting | stopped
    pub status: &'static str,
    pub restarts: u32,
    pub last_error: Option<String>,
    pub uptime: Option<Duration>,
}

pub enum SupervisorMsg {
    Children(RpcReplyPort<Vec<ChildStatus>>),
    /// A backoff delay has passed: start the children waiting for `epoch`.
    StartChildren {
        epoch: u64,
    },
    /// Stop every child in reverse start order, then the supervisor.
    Shutdown(RpcReplyPort<()>),
    /// The watchdog's ping went unanswered: kill the child, restart it.
    Unresponsive {
        kind: ActorKind,
    },
}

pub struct Supervisor;

pub struct SupervisorArgs {
    pub tree: TreeSpec,
    pub factory: Arc<dyn ChildFactory>,
    pub events: EventBus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    Running,
    Restarting,
    Stopped,
}

struct Slot {
    kind: ActorKind,
    shutdown_timeout: Duration,
    cell: Option<ActorCell>,
    state: SlotState,
    restarts: u32,
    last_error: Option<String>,
    started_at: Option<Instant>,
    /// The restart epoch this child waits for, while restarting.
    pending: Option<u64>,
}

pub struct SupervisorState {
    policy: Policy,
    factory: Arc<dyn ChildFactory>,
    events: EventBus,
    slots: Vec<Slot>,
    window: RestartWindow,
    epoch: u64,
    shutting_down: bool,
    hang_timeout: Duration,
    /// Pings every child; aborted with the supervisor.
    _watchdog: AbortOnDrop,
}

/// A task that ends when its owner is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Pings each child every half `hang_timeout`; a child that stays silent for
/// `hang_timeout` is reported to the supervisor.
async fn watchdog(
    supervisor: ActorRef<SupervisorMsg>,
    factory: Arc<dyn ChildFactory>,
    kinds: Vec<ActorKind>,
    hang_timeout: Duration,
) {
    let every = (hang_timeout / 2).max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(every).await;
        let pings = kinds.iter().map(|kind| {
            let ping = factory.ping(*kind, hang_timeout);
            async move { (*kind, ping.await) }
        });
        for (kind, alive) in futures::future::join_all(pings).await {
            if !alive
                && supervisor
                    .cast(SupervisorMsg::Unresponsive { kind })
                    .is_err()
            {
                return;
            }
        }
    }
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SupervisorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let policy = Policy {
            strategy: args.tree.strategy,
            intensity: args.tree.intensity,
            backoff: args.tree.backoff,
            restart_types: args.tree.children.iter().map(|c| c.restart).collect(),
        };
        let hang_timeout = args.tree.hang_timeout;
        let watchdog = tokio::spawn(watchdog(
            myself.clone(),
            args.factory.clone(),
            args.tree.children.iter().map(|c| c.kind).collect(),
            hang_timeout,
        ));
        let mut state = SupervisorState {
            hang_timeout,
            _watchdog: AbortOnDrop(watchdog),
            policy,
            factory: args.factory,
            events: args.events,
            slots: args
                .tree
                .children
                .iter()
                .map(|child| Slot {
                    kind: child.kind,
                    shutdown_timeout: child.shutdown_timeout,
                    cell: None,
                    state: SlotState::Stopped,
                    restarts: 0,
                    last_error: None,
                    started_at: None,
                    pending: None,
                })
                .collect(),
            window: RestartWindow::default(),
            epoch: 0,
            shutting_down: false,
        };
        for index in 0..state.slots.len() {
            let kind = state.slots[index].kind;
            match state.factory.spawn(kind, myself.get_cell()).await {
                Ok(cell) => {
                    let slot = &mut state.slots[index];
                    slot.cell = Some(cell);
                    slot.state = SlotState::Running;
                    slot.started_at = Some(Instant::now());
                    tracing::debug!(actor = %kind, "actor started");
                }
                Err(error) => {
                    // A tree that cannot start is not restarted: stop what
                    // did start, in reverse order, and report why.
                    stop_all(&mut state).await;
                    return Err(
                        format!("{kind} failed to start: {}", spawn_error_text(&error)).into(),
                    );
                }
            }
        }
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMsg::Children(reply) => {
                let _ = reply.send(state.slots.iter().map(Slot::status).collect());
            }
            SupervisorMsg::StartChildren { epoch } => {
                for index in 0..state.slots.len() {
                    if state.shutting_down || state.slots[index].pending != Some(epoch) {
                        continue;
                    }
                    state.slots[index].pending = None;
                    let kind = state.slots[index].kind;
                    match state.factory.spawn(kind, myself.get_cell()).await {
                        Ok(cell) => {
                            let slot = &mut state.slots[index];
                            slot.cell = Some(cell);
                            slot.state = SlotState::Running;
                            slot.started_at = Some(Instant::now());
                            slot.restarts += 1;
                            tracing::info_span!("supervisor.restart", actor = %kind, restarts = slot.restarts as i64)
                                .in_scope(|| tracing::info!(actor = %kind, restarts = slot.restarts, "actor restarted"));
                            state.events.emit(Event::ActorRestarted {
                                actor: kind,
                                restarts: slot.restarts,
                            });
                        }
                        Err(error) => {
                            let text = format!("restart failed: {}", spawn_error_text(&error));
                            on_exit(&myself, state, index, Exit::Failed, Some(text)).await;
                        }
                    }
                }
            }
            SupervisorMsg::Unresponsive { kind } => {
                let Some(index) = state
                    .slots
                    .iter()
                    .position(|s| s.kind == kind && s.state == SlotState::Running)
                else {
                    return Ok(());
                };
                if state.shutting_down {
                    return Ok(());
                }
                let cell = state.slots[index].cell.take();
                let error = format!(
                    "{kind} did not answer within {}: hung; killed",
                    humantime::format_duration(state.hang_timeout)
                );
                // The slot forgets the cell first, so its termination event
                // is not taken for a second failure.
                on_exit(&myself, state, index, Exit::Failed, Some(error)).await;
                if let Some(cell) = cell {
                    cell.kill();
                }
            }
            SupervisorMsg::Shutdown(reply) => {
                state.shutting_down = true;
                stop_all(state).await;
                let _ = reply.send(());
                myself.stop(Some("shutdown".into()));
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, exit, error) = match event {
            SupervisionEvent::ActorFailed(cell, error) => {
                (cell, Exit::Failed, Some(error.to_string()))
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => (cell, Exit::Normal, reason),
            _ => return Ok(()),
        };
        // Events about children we stopped on purpose name cells we no
        // longer hold; they are not failures.
        let Some(index) = state.slots.iter().position(|slot| {
            slot.cell
                .as_ref()
                .is_some_and(|c| c.get_id() == cell.get_id())
        }) else {
            return Ok(());
        };
        on_exit(&myself, state, index, exit, error).await;
        Ok(())
    }
}

impl Slot {
    fn status(&self) -> ChildStatus {
        ChildStatus {
            kind: self.kind,
            status: match self.state {
                SlotState::Running => "running",
                SlotState::Restarting => "restarting",
                SlotState::Stopped => "stopped",
            },
            restarts: self.restarts,
            last_error: self.last_error.clone(),
            uptime: match self.state {
                SlotState::Running => self.started_at.map(|at| at.elapsed()),
                _ => None,
            },
        }
    }
}

/// Applies the policy to the exit of child `index`.
async fn on_exit(
    myself: &ActorRef<SupervisorMsg>,
    state: &mut SupervisorState,
    index: usize,
    exit: Exit,
    error: Option<String>,
) {
    let kind = state.slots[index].kind;
    {
        let slot = &mut state.slots[index];
        slot.cell = None;
        slot.state = SlotState::Stopped;
        slot.started_at = None;
        if error.is_some() {
            slot.last_error = error.clone();
        }
    }
    if state.shutting_down {
        return;
    }
    match exit {
        Exit::Failed => {
            let error = error.unwrap_or_else(|| "unknown failure".into());
            tracing::error_span!("supervisor.failure", actor = %kind, otel.status_code = "ERROR")
                .in_scope(|| tracing::error!(actor = %kind, %error, "actor failed"));
            state.events.emit(Event::ActorFailed { actor: kind, error });
        }
        Exit::Normal => tracing::info!(actor = %kind, "actor stopped"),
    }
    match state
        .policy
        .decide(&mut state.window, index, exit, Instant::now())
    {
        Decision::Leave => tracing::info!(actor = %kind, "actor not restarted (restart type)"),
        Decision::Restart { stop, start, delay } => {
            for sibling in stop {
                stop_child(&mut state.slots[sibling], "sibling restart").await;
                state.slots[sibling].state = SlotState::Restarting;
            }
            state.epoch += 1;
            for child in start {
                state.slots[child].state = SlotState::Restarting;
                state.slots[child].pending = Some(state.epoch);
            }
            tracing::info!(actor = %kind, delay = %humantime::format_duration(delay), "restarting");
            let epoch = state.epoch;
            myself.send_after(delay, move || SupervisorMsg::StartChildren { epoch });
        }
        Decision::Escalate { reason } => {
            let reason = format!("{kind} failed and the supervisor gave up: {reason}");
            tracing::error_span!("supervisor.escalation", otel.status_code = "ERROR")
                .in_scope(|| tracing::error!(%reason, "escalating: stopping the tree"));
            state.events.emit(Event::Escalated {
                reason: reason.clone(),
            });
            state.shutting_down = true;
            stop_all(state).await;
            myself.stop(Some(reason));
        }
    }
}

/// Stops every running child in reverse start order.
async fn stop_all(state: &mut SupervisorState) {
    for slot in state.slots.iter_mut().rev() {
        slot.pending = None;
        stop_child(slot, "tree stopping").await;
    }
}

/// Stops one child gracefully within its shutdown timeout, else kills it.
async fn stop_child(slot: &mut Slot, reason: &str) {
    slot.state = SlotState::Stopped;
    slot.started_at = None;
    let Some(cell) = slot.cell.take() else {
        return;
    };
    if cell
        .stop_and_wait(Some(reason.to_string()), Some(slot.shutdown_timeout))
        .await
        .is_err()
    {
        tracing::warn!(
            actor = %slot.kind,
            timeout = %humantime::format_duration(slot.shutdown_timeout),
            "actor did not stop in time; killing it"
        );
        let _ = cell.kill_and_wait(Some(slot.shutdown_timeout)).await;
    }
}

fn spawn_error_text(error: &SpawnErr) -> String {
    match error {
        SpawnErr::StartupFailed(inner) => inner.to_string(),
        other => other.to_string(),
    }
}
