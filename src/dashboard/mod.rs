//! The dashboard: a live page at `/` of the HTTP listener (`[http] listen`),
//! embedded in the binary. `GET /api/state` answers what the page shows —
//! status, the tree, recent iterations, the governor's status (the pause
//! reason), budgets, approvals, variants — each through the control plane's
//! own commands, read back as their reply types; `GET /api/events` streams the
//! event bus as server-sent events (what `agent ctl watch` streams), and the
//! page refreshes what it shows on each. Approvals are decided by `POST
//! /api/approvals/<id>/approve|reject`, the same path as `agent ctl approve`
//! (audited as `dashboard`), and only with the page's token in
//! `X-Agent-Token` and, when the browser sends one, an `Origin` of this
//! listener: another site's page can neither read the token nor set the
//! header. `[http] read_only = true` hides and refuses them.

use std::convert::Infallible;
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use futures::Stream;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use crate::ctl::client;
use crate::ctl::commands::answer;
use crate::ctl::protocol::{ApprovalInfo, Command, ErrorKind, HistoryEntry, Reply};
use crate::ctl::replies::{BudgetsReply, GovernorStatusReply, JobsReply, VariantsReply};
use crate::ctl::server::{ServerContext, wire_event};
use crate::workspace::Workspace;

/// The most of a pending change's diff the page is sent.
const MAX_DIFF: usize = 64 * 1024;

const PAGE: &str = include_str!("page.html");

/// What the dashboard is configured with.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Approve and reject are hidden and refused.
    pub read_only: bool,
    /// A Jaeger UI the page links each iteration's trace to.
    pub jaeger_url: Option<String>,
    /// The traces' service name, for those links.
    pub service_name: String,
}

/// The dashboard's shared state: the control plane once it runs.
#[derive(Clone)]
pub struct Dashboard {
    settings: Settings,
    /// Shown in the page, required on every change it asks for.
    token: String,
    context: Arc<OnceLock<Arc<ServerContext>>>,
    /// The agent's worktree: the pending change's diff, each commit's stat.
    workspace: Arc<OnceLock<Workspace>>,
}

impl Dashboard {
    pub fn new(settings: Settings) -> Dashboard {
        Dashboard {
            settings,
            token: new_token(),
            context: Arc::default(),
            workspace: Arc::default(),
        }
    }

    /// The control plane the dashboard speaks to, and the agent's worktree,
    /// once they exist.
    pub fn attach(&self, context: Arc<ServerContext>, workspace: Workspace) {
        let _ = self.context.set(context);
        let _ = self.workspace.set(workspace);
    }

    /// The routes to merge into the HTTP listener.
    pub fn routes(&self) -> Router {
        Router::new()
            .route("/", get(page))
            .route("/api/state", get(state))
            .route("/api/events", get(events))
            .route("/api/approvals/{id}/{decision}", post(decide))
            .with_state(self.clone())
    }

    fn context(&self) -> Option<Arc<ServerContext>> {
        self.context.get().cloned()
    }
}

/// 128 random bits as hex, from the kernel.
fn new_token() -> String {
    let mut bytes = [0u8; 16];
    if let Ok(mut random) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = random.read_exact(&mut bytes);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn page(State(dashboard): State<Dashboard>) -> impl IntoResponse {
    let config = json!({
        "token": if dashboard.settings.read_only { String::new() } else { dashboard.token.clone() },
        "read_only": dashboard.settings.read_only,
        "jaeger_url": dashboard.settings.jaeger_url,
        "service_name": dashboard.settings.service_name,
    });
    (
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        Html(PAGE.replace("/*CONFIG*/null", &config.to_string())),
    )
}

/// Runs a command through the control plane, as `agent ctl` would.
async fn query(context: &ServerContext, command: Command) -> Result<Reply, String> {
    answer(command, context, "dashboard")
        .await
        .map_err(|error| error.message)
}

/// Runs a `send` entry and reads its reply back as the entry's own type
/// (`ctl::replies`): what the catalogue builds is what the page is given, so
/// a field the socket has cannot be missing here.
async fn ask<T: DeserializeOwned>(
    context: &ServerContext,
    actor: &str,
    message: &str,
    args: Map<String, Value>,
) -> Result<T, String> {
    let command = Command::Send {
        actor: actor.into(),
        message: message.into(),
        args,
    };
    match query(context, command).await? {
        Reply::Sent { reply, .. } => serde_json::from_value(reply)
            .map_err(|error| format!("{actor} {message} answered an unexpected reply: {error}")),
        other => Err(format!("{actor} {message} answered {other:?}")),
    }
}

/// A reply as the page reads it: the reply's JSON, or `{"error": …}` in its
/// place so one failed query leaves the rest of the page.
fn shown<T: Serialize, E: std::fmt::Display>(reply: &Result<T, E>) -> Value {
    match reply {
        Ok(reply) => serde_json::to_value(reply).unwrap_or_default(),
        Err(error) => json!({ "error": error.to_string() }),
    }
}

/// A `send` reply as the page reads it: inside the envelope `agent ctl send
/// --json` prints (`actor`, `message`, `reply`).
fn shown_sent<T: Serialize>(actor: &str, message: &str, reply: &Result<T, String>) -> Value {
    match reply {
        Ok(_) => json!({ "actor": actor, "message": message, "reply": shown(reply) }),
        Err(_) => shown(reply),
    }
}

/// Each reply in its own type, as `GET /api/state` composes them.
struct Facts {
    status: Result<Reply, String>,
    tree: Result<Reply, String>,
    history: Result<Vec<HistoryEntry>, String>,
    approvals: Result<Vec<ApprovalInfo>, String>,
    governor: Result<GovernorStatusReply, String>,
    budgets: Result<BudgetsReply, String>,
    variants: Result<VariantsReply, String>,
    jobs: Result<JobsReply, String>,
}

async fn facts(context: &ServerContext) -> Facts {
    let history = async {
        match query(context, Command::History { last: Some(50) }).await? {
            Reply::History { iterations } => Ok(iterations),
            other => Err(format!("history answered {other:?}")),
        }
    };
    let approvals = async {
        match query(context, Command::Approvals).await? {
            Reply::Approvals { approvals } => Ok(approvals),
            other => Err(format!("approvals answered {other:?}")),
        }
    };
    let mut last = Map::new();
    last.insert("last".into(), json!(12));
    let (status, tree, history, approvals, governor, budgets, variants, jobs) = tokio::join!(
        query(context, Command::Status),
        query(context, Command::Tree),
        history,
        approvals,
        ask(context, "governor", "status", Map::new()),
        ask(context, "governor", "budgets", Map::new()),
        ask(context, "modifier", "variants", last),
        ask(context, "executor", "jobs", Map::new()),
    );
    Facts {
        status,
        tree,
        history,
        approvals,
        governor,
        budgets,
        variants,
        jobs,
    }
}

async fn state(State(dashboard): State<Dashboard>) -> Response {
    let Some(context) = dashboard.context() else {
        return starting();
    };
    let facts = facts(&context).await;
    let pending = facts
        .approvals
        .as_ref()
        .is_ok_and(|list| list.iter().any(|a| a.state == "pending"));
    let commits: Vec<(u64, String)> = facts
        .history
        .iter()
        .flatten()
        .filter_map(|i| Some((i.iteration, i.commit.clone()?)))
        .collect();
    let (diff, stats) = match dashboard.workspace.get().cloned() {
        Some(workspace) => {
            tokio::task::spawn_blocking(move || worktree_facts(&workspace, pending, &commits))
                .await
                .unwrap_or_default()
        }
        None => Default::default(),
    };
    let reply = |reply: &Result<Reply, String>| match reply {
        Ok(reply) => client::json(reply),
        Err(error) => json!({ "error": error }),
    };
    // The shapes are those the page has always read: a command's reply as
    // `--json` prints it, a `send` reply in its envelope.
    (
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(json!({
            "status": reply(&facts.status),
            "tree": reply(&facts.tree),
            "history": shown(&facts.history.as_ref().map(|list| json!({ "iterations": list }))),
            "approvals": shown(&facts.approvals.as_ref().map(|list| json!({ "approvals": list }))),
            "governor": shown_sent("governor", "status", &facts.governor),
            "budgets": shown_sent("governor", "budgets", &facts.budgets),
            "variants": shown_sent("modifier", "variants", &facts.variants),
            "jobs": shown_sent("executor", "jobs", &facts.jobs),
            "diff": diff,
            "stats": stats,
        })),
    )
        .into_response()
}

/// The pending change's diff (while one waits: the worktree holds it) and
/// each kept iteration's diff stat, by iteration.
fn worktree_facts(
    workspace: &Workspace,
    pending: bool,
    commits: &[(u64, String)],
) -> (Option<String>, serde_json::Map<String, Value>) {
    let diff = pending
        .then(|| workspace.diff_against_head(MAX_DIFF).ok())
        .flatten();
    let stats = commits
        .iter()
        .filter_map(|(iteration, commit)| {
            let (files, added, removed) = workspace.commit_stat(commit).ok()?;
            Some((
                iteration.to_string(),
                json!(format!("{files} file(s) +{added} −{removed}")),
            ))
        })
        .collect();
    (diff, stats)
}

async fn events(
    State(dashboard): State<Dashboard>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, Response> {
    let context = dashboard.context().ok_or_else(starting)?;
    let receiver = context.events.subscribe();
    let closing = context.closing.clone();
    // Ends when the daemon closes or the bus does; a client that goes away
    // drops the stream, and the receiver with it.
    let stream = futures::stream::unfold(receiver, move |mut receiver| {
        let closing = closing.clone();
        async move {
            loop {
                let event = tokio::select! {
                    () = closing.cancelled() => return None,
                    event = receiver.recv() => event,
                };
                match event {
                    Ok(event) => {
                        let data = serde_json::to_string(&wire_event(&event)).unwrap_or_default();
                        return Some((Ok(SseEvent::default().data(data)), receiver));
                    }
                    // Fell behind: the page refreshes everything anyway.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

async fn decide(
    State(dashboard): State<Dashboard>,
    Path((id, decision)): Path<(String, String)>,
    headers: HeaderMap,
    body: String,
) -> Response {
    if dashboard.settings.read_only {
        return refuse(
            StatusCode::FORBIDDEN,
            "the dashboard is read-only ([http] read_only)",
        );
    }
    if let Err(why) = same_origin(&headers) {
        return refuse(StatusCode::FORBIDDEN, &why);
    }
    let token = headers
        .get("x-agent-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if token.is_empty() || token != dashboard.token {
        return refuse(
            StatusCode::FORBIDDEN,
            "missing or wrong X-Agent-Token: decisions come from the dashboard's own page",
        );
    }
    let command = match decision.as_str() {
        "approve" => Command::Approve { id },
        "reject" => Command::Reject {
            id,
            reason: serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v["reason"].as_str().map(String::from))
                .or_else(|| Some("rejected in the dashboard".into())),
        },
        other => {
            return refuse(
                StatusCode::NOT_FOUND,
                &format!("no decision \"{other}\": approve or reject"),
            );
        }
    };
    let Some(context) = dashboard.context() else {
        return starting();
    };
    match answer(command, &context, "dashboard").await {
        Ok(Reply::Done { message }) => axum::Json(json!({ "done": message })).into_response(),
        Ok(other) => axum::Json(client::json(&other)).into_response(),
        Err(error) => {
            let status = match error.kind {
                ErrorKind::BadArguments | ErrorKind::Refused => StatusCode::CONFLICT,
                ErrorKind::NotPermitted => StatusCode::FORBIDDEN,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            refuse(status, &error.message)
        }
    }
}

/// A browser sends `Origin` with every POST; it must be this listener
/// (`Host`). A request without one is not from a browser page.
fn same_origin(headers: &HeaderMap) -> Result<(), String> {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return Ok(());
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let bare = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .unwrap_or(origin);
    if !host.is_empty() && bare == host {
        Ok(())
    } else {
        Err(format!(
            "a request from {origin} is refused: decisions come from this dashboard's own page"
        ))
    }
}

/// What is answered before the control plane runs.
fn starting() -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, "the agent is starting\n").into_response()
}

fn refuse(status: StatusCode, why: &str) -> Response {
    (status, axum::Json(json!({ "error": why }))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_listeners_origin_or_none_is_accepted() {
        let headers = |origin: Option<&str>| {
            let mut map = HeaderMap::new();
            map.insert(header::HOST, "127.0.0.1:9464".parse().unwrap());
            if let Some(origin) = origin {
                map.insert(header::ORIGIN, origin.parse().unwrap());
            }
            map
        };
        assert!(same_origin(&headers(None)).is_ok());
        assert!(same_origin(&headers(Some("http://127.0.0.1:9464"))).is_ok());
        assert!(same_origin(&headers(Some("http://evil.example"))).is_err());
        assert!(same_origin(&headers(Some("http://127.0.0.1:9465"))).is_err());
    }

    #[test]
    fn tokens_are_fresh_and_long() {
        let (a, b) = (new_token(), new_token());
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }
}
