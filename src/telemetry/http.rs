//! The HTTP listener (`[http] listen`, off when not configured): Prometheus
//! text at `/metrics`, liveness at `/healthz` (the process answers) and
//! readiness at `/readyz` (tree started, store open, not escalating or
//! stopping) for Kubernetes probes and scrapers; the routes of the layers
//! above (the dashboard) are merged in.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;

/// Whether the daemon should receive work, shared with the daemon.
#[derive(Debug, Clone)]
pub struct Readiness(Arc<AtomicU8>);

impl Default for Readiness {
    fn default() -> Self {
        Readiness(Arc::new(AtomicU8::new(STARTING)))
    }
}

const STARTING: u8 = 0;
const READY: u8 = 1;
const ESCALATING: u8 = 2;
const STOPPING: u8 = 3;

impl Readiness {
    pub fn ready(&self) {
        self.0.store(READY, Ordering::SeqCst);
    }
    pub fn escalating(&self) {
        self.0.store(ESCALATING, Ordering::SeqCst);
    }
    pub fn stopping(&self) {
        self.0.store(STOPPING, Ordering::SeqCst);
    }
    fn describe(&self) -> (bool, &'static str) {
        match self.0.load(Ordering::SeqCst) {
            READY => (true, "ready"),
            ESCALATING => (false, "escalating: the supervision tree gave up"),
            STOPPING => (false, "stopping"),
            _ => (false, "starting"),
        }
    }
}

#[derive(Clone)]
struct Shared {
    metrics: Option<PrometheusHandle>,
    readiness: Readiness,
}

async fn metrics_text(State(shared): State<Shared>) -> impl IntoResponse {
    match &shared.metrics {
        Some(handle) => (
            StatusCode::OK,
            [("content-type", "text/plain; version=0.0.4")],
            super::metrics::render(handle),
        ),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            [("content-type", "text/plain")],
            "metrics are recorded by another agent in this process\n".to_string(),
        ),
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(shared): State<Shared>) -> impl IntoResponse {
    let (ready, why) = shared.readiness.describe();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, format!("{why}\n"))
}

/// A bound listener; serving stops when the task is aborted.
pub struct HttpListener {
    pub address: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl HttpListener {
    pub fn stop(self) {
        self.task.abort();
    }
}

/// Binds `address` and serves until stopped; `more` adds routes of the
/// layers above (the dashboard).
pub async fn start(
    address: SocketAddr,
    metrics: Option<PrometheusHandle>,
    readiness: Readiness,
    more: Router,
) -> std::io::Result<HttpListener> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    let address = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(Shared { metrics, readiness })
        .merge(more);
    let task = tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "the HTTP listener stopped");
        }
    });
    Ok(HttpListener { address, task })
}
