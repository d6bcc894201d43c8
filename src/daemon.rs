//! `agent run`: opens the store, resolves the run (new, resumed, or refused),
//! chooses the cognition backend, prepares the worktree, starts the supervision
//! tree and the control socket, and waits for the end: the run finishing, a
//! stop request (SIGINT, SIGTERM, `agent ctl stop`) or an escalation.
//!
//! Shutdown is designed: no new iteration starts, the in-flight one gets the
//! shutdown deadline to commit and is abandoned after it, the tree stops in
//! reverse order, the store is flushed (the final checkpoint), and the socket
//! is removed. The exit status says which end it was.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ractor::Actor;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use crate::actors::{Factory, Shared};
use crate::cognition;
use crate::config::{BackendChoice, Config, Mode, TreeSpec};
use crate::ctl::server::{self, ServerContext, StopRequest};
use crate::events::{Event, EventBus};
use crate::messages::{self, ActorKind, PlannerMsg};
use crate::store::{RunRecord, Store, StoreError, now_ms};
use crate::supervisor::{self, Supervisor, SupervisorArgs, SupervisorMsg};
use crate::telemetry::{self, http::Readiness};
use crate::workspace::Workspace;

/// Exit statuses of `agent` (documented in the README).
pub mod exit {
    /// Done: the run finished or was stopped cleanly.
    pub const OK: u8 = 0;
    /// The run failed: the tree escalated, or the daemon refused the request.
    pub const FAILED: u8 = 1;
    /// Bad usage or configuration; nothing was changed.
    pub const USAGE: u8 = 2;
    /// The state directory is in use, or the daemon cannot be reached.
    pub const UNAVAILABLE: u8 = 3;
}

/// Flags of `agent run` that override the configuration.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub goal: Option<String>,
    pub replace_goal: bool,
    pub workspace: Option<PathBuf>,
    pub state: Option<PathBuf>,
    pub backend: Option<BackendChoice>,
    pub claude_bin: Option<PathBuf>,
    pub mode: Option<Mode>,
    pub max_iterations: Option<u64>,
}

/// Why `agent run` could not run; each carries its exit status.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Failed(String),
}

impl RunError {
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::Usage(_) => exit::USAGE,
            RunError::Store(StoreError::InUse(_)) => exit::UNAVAILABLE,
            RunError::Store(_) | RunError::Failed(_) => exit::FAILED,
        }
    }
}

/// How the run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    Finished(String),
    Stopped,
    Escalated(String),
}

/// Runs the daemon to its end.
pub async fn run(
    mut config: Config,
    tree: TreeSpec,
    overrides: Overrides,
) -> Result<Ending, RunError> {
    apply(&mut config, &overrides);
    std::fs::create_dir_all(&config.state_dir).map_err(|e| {
        RunError::Failed(format!(
            "cannot create the state directory {}: {e}",
            config.state_dir.display()
        ))
    })?;
    let store = Store::open(&config.state_dir)?;
    config.goal = resolve_run(&store, &config, &overrides).await?;

    let selection = cognition::select(&config)
        .await
        .map_err(|e| RunError::Usage(e.to_string()))?;
    tracing::info!(backend = selection.backend.name(), "{}", selection.reason);

    let source = config.workspace.clone();
    let state_dir = config.state_dir.clone();
    let workspace = tokio::task::spawn_blocking(move || Workspace::prepare(&source, &state_dir))
        .await
        .map_err(|e| RunError::Failed(e.to_string()))?
        .map_err(|e| match e {
            crate::workspace::WorkspaceError::Missing(_) => RunError::Usage(e.to_string()),
            other => RunError::Failed(format!("cannot prepare the worktree: {other}")),
        })?;
    let committed = store.last_iteration()?.map_or(0, |r| r.number);
    println!(
        "agent: goal \"{}\"\nagent: backend {} — {}\nagent: worktree {} (from {}), state {}, {} iteration(s) committed so far",
        config.goal,
        selection.backend.name(),
        selection.reason,
        workspace.path.display(),
        config.workspace.display(),
        config.state_dir.display(),
        committed
    );

    let events = EventBus::default();
    let mut listener = events.subscribe();
    let printer = tokio::spawn(print_iterations(events.subscribe()));
    let backend_name = selection.backend.name().to_string();

    // Metrics follow the events; the HTTP listener serves them with health.
    let metrics = telemetry::metrics::install();
    telemetry::metrics::committed(committed);
    let recorder = tokio::spawn(record_metrics(events.subscribe(), backend_name.clone()));
    let readiness = Readiness::default();
    let http = match config.http_listen {
        Some(address) => {
            let listener = telemetry::http::start(address, metrics.clone(), readiness.clone())
                .await
                .map_err(|e| {
                    RunError::Failed(format!("cannot listen for HTTP on {address}: {e}"))
                })?;
            tracing::info!(address = %listener.address, "serving /metrics, /healthz and /readyz");
            Some(listener)
        }
        None => None,
    };
    let alerts = tokio::spawn(telemetry::alerts::run(
        config.alerts.clone(),
        events.clone(),
        config.service_name.clone(),
    ));
    let backend = selection.backend.clone();
    let shared = Arc::new(Shared {
        prompt_template: load_prompt_template(),
        config: config.clone(),
        tree: tree.clone(),
        store: store.clone(),
        workspace,
        backend: selection.backend,
        events: events.clone(),
    });
    let (supervisor, supervisor_done) = Actor::spawn(
        Some(supervisor::NAME.to_string()),
        Supervisor,
        SupervisorArgs {
            tree: tree.clone(),
            factory: Arc::new(Factory { context: shared }),
            events: events.clone(),
        },
    )
    .await
    .map_err(|e| RunError::Failed(format!("the supervision tree did not start: {e}")))?;

    let (stop_tx, mut stop_rx) = watch::channel(None);
    let server_context = Arc::new(ServerContext {
        faults_allowed: config.faults_allowed(),
        backend: backend_name,
        mode: format!("{:?}", config.mode).to_lowercase(),
        stop: stop_tx.clone(),
        store: store.clone(),
        tree: tree.clone(),
        events: events.clone(),
        closing: tokio_util::sync::CancellationToken::new(),
    });
    let socket_path = config.socket_path();
    let socket = server::start(&socket_path, server_context).map_err(|e| {
        RunError::Failed(format!("cannot listen on {}: {e}", socket_path.display()))
    })?;
    tracing::info!(socket = %socket_path.display(), "control socket ready");
    readiness.ready();

    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|e| RunError::Failed(e.to_string()))?;
    let mut sigint =
        signal(SignalKind::interrupt()).map_err(|e| RunError::Failed(e.to_string()))?;
    let mut supervisor_done = supervisor_done;
    // A JoinHandle must not be polled again once it has completed.
    let mut supervisor_running = true;
    let (ending, stop) = loop {
        tokio::select! {
            _ = sigterm.recv() => break (Ending::Stopped, StopRequest::Graceful),
            _ = sigint.recv() => break (Ending::Stopped, StopRequest::Graceful),
            changed = stop_rx.changed() => {
                if changed.is_ok() && let Some(request) = *stop_rx.borrow() {
                    break (Ending::Stopped, request);
                }
            }
            event = listener.recv() => match event {
                Ok(Event::RunFinished { reason }) => break (Ending::Finished(reason), StopRequest::Graceful),
                Ok(Event::Escalated { reason }) => {
                    readiness.escalating();
                    break (Ending::Escalated(reason), StopRequest::Now);
                }
                _ => {}
            },
            _ = &mut supervisor_done => {
                supervisor_running = false;
                readiness.escalating();
                // The escalation event may still be queued behind the stop.
                let mut reason = "the supervisor stopped".to_string();
                while let Ok(event) = listener.try_recv() {
                    if let Event::Escalated { reason: why } = event {
                        reason = why;
                    }
                }
                break (Ending::Escalated(reason), StopRequest::Now);
            }
        }
    };

    if !matches!(ending, Ending::Escalated(_)) {
        tracing::info!(?stop, "shutting down");
        drain(&config, stop).await;
        let _ = supervisor
            .call(SupervisorMsg::Shutdown, Some(Duration::from_secs(60)))
            .await;
    }
    // Escalation stops the tree itself; either way wait for it to be down.
    if supervisor_running {
        let _ = tokio::time::timeout(Duration::from_secs(60), supervisor_done).await;
    }
    if !matches!(ending, Ending::Escalated(_)) {
        readiness.stopping();
    }
    socket.close().await;
    backend.shutdown().await;
    alerts.abort();
    recorder.abort();
    if let Some(http) = http {
        http.stop();
    }

    // The final checkpoint.
    let mut run = store.run()?.unwrap_or_else(|| new_run(&config.goal));
    match &ending {
        Ending::Finished(_) => run.state = "finished".into(),
        Ending::Escalated(reason) => run.last_escalation = Some(reason.clone()),
        Ending::Stopped => {}
    }
    store.put_run(&run).await?;
    store.flush().await?;
    printer.abort();
    let committed = store.last_iteration()?.map_or(0, |r| r.number);
    match &ending {
        Ending::Finished(reason) => {
            println!("agent: run finished ({reason}); {committed} iteration(s) committed")
        }
        Ending::Stopped => {
            println!("agent: stopped; {committed} iteration(s) committed, state checkpointed")
        }
        Ending::Escalated(reason) => {
            tracing::error!(%reason, "the supervision tree escalated; state checkpointed");
            eprintln!(
                "agent: escalated: {reason}; {committed} iteration(s) committed, state checkpointed"
            );
        }
    }
    Ok(ending)
}

fn apply(config: &mut Config, overrides: &Overrides) {
    if let Some(workspace) = &overrides.workspace {
        config.workspace = workspace.clone();
    }
    if let Some(state) = &overrides.state {
        config.state_dir = state.clone();
    }
    if let Some(backend) = overrides.backend {
        config.backend = backend;
    }
    if let Some(bin) = &overrides.claude_bin {
        config.claude_bin = bin.clone();
    }
    if let Some(mode) = overrides.mode {
        config.mode = mode;
    }
    if let Some(max) = overrides.max_iterations {
        config.max_iterations = Some(max);
    }
}

fn new_run(goal: &str) -> RunRecord {
    RunRecord {
        goal: goal.to_string(),
        created_at_ms: now_ms(),
        state: "running".into(),
        last_escalation: None,
    }
}

/// Decides the goal of this run: a new run takes the given (or configured)
/// goal; a stored run is resumed with its own goal; a different `--goal` on an
/// unfinished run is refused unless `--replace-goal` is given.
async fn resolve_run(
    store: &Store,
    config: &Config,
    overrides: &Overrides,
) -> Result<String, RunError> {
    let requested = overrides.goal.clone();
    let goal = match store.run()? {
        None => {
            let goal = requested.unwrap_or_else(|| config.goal.clone());
            store.put_run(&new_run(&goal)).await?;
            goal
        }
        Some(mut run) => match requested {
            Some(goal) if goal != run.goal => {
                if run.state != "finished" && !overrides.replace_goal {
                    return Err(RunError::Usage(format!(
                        "the state directory {} holds an unfinished run with the goal \"{}\"; \
                         to replace its goal run again with --replace-goal, \
                         or start a separate run with another --state directory",
                        config.state_dir.display(),
                        run.goal
                    )));
                }
                run.goal = goal.clone();
                run.state = "running".into();
                store.put_run(&run).await?;
                goal
            }
            _ => {
                if run.state == "finished" {
                    run.state = "running".into();
                    store.put_run(&run).await?;
                }
                run.goal
            }
        },
    };
    if goal.trim().is_empty() {
        return Err(RunError::Usage(
            "--goal must be a non-empty sentence".into(),
        ));
    }
    Ok(goal)
}

/// Lets the in-flight iteration finish within the deadline, else abandons it.
async fn drain(config: &Config, stop: StopRequest) {
    let deadline = match stop {
        StopRequest::Graceful => config.shutdown_timeout,
        StopRequest::Now => Duration::ZERO,
    };
    let drained = if deadline.is_zero() {
        false
    } else {
        messages::call(ActorKind::Planner, deadline, PlannerMsg::Drain)
            .await
            .is_ok()
    };
    if !drained {
        let _ = messages::call(
            ActorKind::Planner,
            Duration::from_secs(30),
            PlannerMsg::Abandon,
        )
        .await;
    }
}

/// Keeps the metrics in step with the run's events.
async fn record_metrics(mut events: tokio::sync::broadcast::Receiver<Event>, backend: String) {
    loop {
        match events.recv().await {
            Ok(event) => telemetry::metrics::record_event(&event, &backend),
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// One line per committed iteration on stdout, for the person watching.
async fn print_iterations(mut events: tokio::sync::broadcast::Receiver<Event>) {
    loop {
        match events.recv().await {
            Ok(Event::IterationCommitted(record)) => println!(
                "iteration {:>3}  {:<24} {:<10} {} ({:.1}s)",
                record.number,
                record.capability,
                record.outcome,
                record.summary,
                record.duration_ms as f64 / 1000.0
            ),
            Ok(Event::IterationAbandoned { iteration, reason }) => {
                println!(
                    "iteration {iteration:>3}  abandoned before its commit: {reason}; it will run again"
                )
            }
            Ok(Event::ActorRestarted { actor, restarts }) => {
                println!("agent: {actor} restarted (restart {restarts})")
            }
            Ok(_) => {}
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// The prompt template: `config/prompts/iteration.md` when present, else the
/// embedded copy.
fn load_prompt_template() -> String {
    std::fs::read_to_string("config/prompts/iteration.md")
        .unwrap_or_else(|_| include_str!("../config/prompts/iteration.md").to_string())
}
