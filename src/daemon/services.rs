//! The services of a running daemon, started in order and shut down in
//! reverse: the event consumers (console lines, metrics, alerts), the HTTP
//! listener, the supervision tree with its six actors, and the control
//! socket. Shutting down drains the planner within the deadline first, so no
//! iteration is cut short that could still commit.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorRef};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{Ending, Prepared, RunError, console};
use crate::actors::{Factory, Shared};
use crate::cognition::Cognition;
use crate::config::{Config, TreeSpec};
use crate::ctl::server::{self, ControlSocket, ServerContext, StopRequest};
use crate::domain::ActorKind;
use crate::events::EventBus;
use crate::messages::{self, PlannerMsg};
use crate::supervisor::{self, Supervisor, SupervisorArgs, SupervisorMsg};
use crate::telemetry::{self, http::HttpListener, http::Readiness};

pub(crate) struct Services {
    pub events: EventBus,
    pub readiness: Readiness,
    pub config: Config,
    backend: Arc<dyn Cognition>,
    stop: watch::Sender<Option<StopRequest>>,
    supervisor: ActorRef<SupervisorMsg>,
    /// `None` once it has completed: a JoinHandle must not be polled again.
    supervisor_done: Option<JoinHandle<()>>,
    socket: ControlSocket,
    http: Option<HttpListener>,
    /// Metrics and alerts, stopped with the services.
    tasks: Vec<JoinHandle<()>>,
    /// The console lines, stopped after the final checkpoint.
    console: JoinHandle<()>,
}

impl Services {
    pub async fn start(prepared: &Prepared, tree: TreeSpec) -> Result<Services, RunError> {
        let config = &prepared.config;
        let events = EventBus::default();
        let backend_name = prepared.backend.name().to_string();
        let console = if prepared.console {
            tokio::spawn(console::print_iterations(
                events.subscribe(),
                console::PauseHint::of(&prepared.config),
            ))
        } else {
            tokio::spawn(async {})
        };
        let metrics = telemetry::metrics::install();
        let mut tasks = event_consumers(prepared, &events, metrics.clone());
        let readiness = Readiness::default();
        let dashboard = crate::dashboard::Dashboard::new(crate::dashboard::Settings {
            read_only: config.dashboard_read_only,
            jaeger_url: config.jaeger_url.clone(),
            service_name: config.service_name.clone(),
        });
        let http = match config.http_listen {
            Some(address) => Some(listen_http(address, metrics, &readiness, &dashboard).await?),
            None => None,
        };
        for server in config.mcp_servers.clone() {
            let store = prepared.store.clone();
            tasks.push(tokio::spawn(discover_tools(server, store)));
        }

        let (supervisor, supervisor_done) = start_tree(prepared, &tree, &events).await?;

        let (stop, _) = watch::channel(None);
        let server_context = Arc::new(ServerContext {
            faults_allowed: config.faults_allowed(),
            backend: backend_name,
            mode: format!("{:?}", config.mode).to_lowercase(),
            stop: stop.clone(),
            store: prepared.store.clone(),
            tree,
            events: events.clone(),
            closing: CancellationToken::new(),
            releases: crate::upgrade::keeper::is_child()
                .then(|| crate::upgrade::releases::Releases::of_state(&config.state_dir)),
            started_ms: crate::store::now_ms(),
        });
        dashboard.attach(server_context.clone(), prepared.workspace.clone());
        let socket_path = config.socket_path();
        let socket = server::start(&socket_path, server_context).map_err(|e| {
            RunError::Failed(format!("cannot listen on {}: {e}", socket_path.display()))
        })?;
        tracing::info!(socket = %socket_path.display(), "control socket ready");
        readiness.ready();
        Ok(Services {
            events,
            readiness,
            config: config.clone(),
            backend: prepared.backend.clone(),
            stop,
            supervisor,
            supervisor_done: Some(supervisor_done),
            socket,
            http,
            tasks,
            console,
        })
    }

    /// Stop requests from `agent ctl stop`.
    pub fn stop_requests(&self) -> watch::Receiver<Option<StopRequest>> {
        self.stop.subscribe()
    }

    /// Where a stop-now comes from besides `ctl stop --now`.
    pub fn stop_sender(&self) -> watch::Sender<Option<StopRequest>> {
        self.stop.clone()
    }

    /// Completes when the supervisor has stopped on its own (escalation);
    /// never, once it has been seen to stop.
    pub async fn supervisor_stopped(&mut self) {
        match self.supervisor_done.as_mut() {
            Some(done) => {
                let _ = done.await;
                self.supervisor_done = None;
            }
            None => std::future::pending().await,
        }
    }

    /// Runs `task` while the services shut down; it ends with them (it may
    /// hold the store, which must be closed when the run returns).
    pub fn during_shutdown(&mut self, task: JoinHandle<()>) {
        self.tasks.push(task);
    }

    /// Stops everything in reverse order of start; returns the console
    /// task, which prints until the final checkpoint.
    pub async fn shut_down(mut self, ending: &Ending, stop: StopRequest) -> JoinHandle<()> {
        let escalated = matches!(ending, Ending::Escalated(_));
        if !escalated {
            tracing::info!(?stop, "shutting down");
            drain(&self.config, stop, self.stop.subscribe()).await;
            crash_point!("shutdown.drain");
            let _ = self
                .supervisor
                .call(SupervisorMsg::Shutdown, Some(Duration::from_secs(60)))
                .await;
        }
        // Escalation stops the tree itself; either way wait for it to be down.
        if let Some(done) = self.supervisor_done.take() {
            let _ = tokio::time::timeout(Duration::from_secs(60), done).await;
        }
        if !escalated {
            self.readiness.stopping();
        }
        self.socket.close().await;
        self.backend.shutdown().await;
        if let Some(http) = self.http.take() {
            http.stop();
        }
        for task in &self.tasks {
            task.abort();
        }
        self.console
    }
}

/// Lets the in-flight iteration finish within the deadline, else abandons
/// it — at once when a stop-now arrives while it drains (a second
/// interrupt, the STOP file, `ctl stop --now`).
async fn drain(
    config: &Config,
    stop: StopRequest,
    mut hurry: watch::Receiver<Option<StopRequest>>,
) {
    let deadline = match stop {
        StopRequest::Graceful | StopRequest::Handover => config.shutdown_timeout,
        StopRequest::Now => Duration::ZERO,
    };
    let now_requested = async {
        while hurry.changed().await.is_ok() {
            if *hurry.borrow() == Some(StopRequest::Now) {
                return;
            }
        }
        std::future::pending::<()>().await;
    };
    let drained = !deadline.is_zero()
        && tokio::select! {
            drained = messages::call(ActorKind::Planner, deadline, PlannerMsg::Drain) => drained.is_ok(),
            () = now_requested => {
                tracing::warn!("stopping now: the in-flight iteration is abandoned");
                false
            }
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

/// Discovers one MCP server's tools and keeps the registry in the store; a
/// server that cannot be reached is said once and leaves its earlier
/// entries as they were.
async fn discover_tools(server: crate::domain::ToolServer, store: crate::store::Store) {
    let span = tracing::info_span!("executor.discover", server = %server.name);
    let found = crate::mcp::discovery::discover(&server, crate::store::now_ms())
        .instrument(span)
        .await;
    match found {
        Ok(tools) => {
            let registered = tools.iter().filter(|t| t.registered).count();
            tracing::info!(server = %server.name, listed = tools.len(), registered, "MCP tools discovered");
            if let Err(error) = store.put_tools(&server.name, &tools).await {
                tracing::warn!(server = %server.name, %error, "cannot keep the discovered tools");
            }
        }
        Err(error) => {
            tracing::warn!(server = %server.name, %error, "cannot discover the MCP server's tools");
        }
    }
}

/// The tasks that follow the run's events: metrics (folded in regularly,
/// since without a scraper their samples would pile up) and alerts.
fn event_consumers(
    prepared: &Prepared,
    events: &EventBus,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
) -> Vec<JoinHandle<()>> {
    let config = &prepared.config;
    let mut tasks = Vec::new();
    if let Some(handle) = metrics {
        tasks.push(tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(5));
            loop {
                every.tick().await;
                handle.run_upkeep();
            }
        }));
    }
    telemetry::metrics::committed(prepared.committed);
    tasks.push(tokio::spawn(console::record_metrics(
        events.subscribe(),
        prepared.backend.name().to_string(),
    )));
    tasks.push(tokio::spawn(telemetry::alerts::run(
        config.alerts.clone(),
        events.clone(),
        config.service_name.clone(),
        config.state_dir.to_path_buf(),
    )));
    tasks
}

/// The HTTP listener: metrics, health and the dashboard.
async fn listen_http(
    address: std::net::SocketAddr,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    readiness: &Readiness,
    dashboard: &crate::dashboard::Dashboard,
) -> Result<HttpListener, RunError> {
    let listener = telemetry::http::start(address, metrics, readiness.clone(), dashboard.routes())
        .await
        .map_err(|e| RunError::Failed(format!("cannot listen for HTTP on {address}: {e}")))?;
    tracing::info!(address = %listener.address, "serving the dashboard at /, /metrics, /healthz and /readyz");
    Ok(listener)
}

/// The supervision tree, with everything its actors share.
async fn start_tree(
    prepared: &Prepared,
    tree: &TreeSpec,
    events: &EventBus,
) -> Result<(ActorRef<SupervisorMsg>, JoinHandle<()>), RunError> {
    let shared = Arc::new(Shared {
        prompts: prepared.prompts.clone(),
        config: prepared.config.clone(),
        tree: tree.clone(),
        store: prepared.store.clone(),
        workspace: prepared.workspace.clone(),
        backend: prepared.backend.clone(),
        events: events.clone(),
        sandbox: prepared.sandbox.clone(),
        checks: prepared.checks.clone(),
    });
    Actor::spawn(
        Some(supervisor::NAME.to_string()),
        Supervisor,
        SupervisorArgs {
            tree: tree.clone(),
            factory: Arc::new(Factory { context: shared }),
            events: events.clone(),
        },
    )
    .await
    .map_err(|e| RunError::Failed(format!("the supervision tree did not start: {e}")))
}
