//! The control socket inside the daemon: a Unix socket in the state directory,
//! mode 0600, that serves only peers with the daemon's uid. Each connection
//! reads length-delimited JSON requests and answers every one, with a typed
//! error when it cannot be served; a malformed or oversized frame is answered
//! and never takes the daemon down. `watch` turns the connection into a
//! stream of events that ends when the client or the daemon goes away.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, watch};
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::catalog;
use super::operations::{self, peer_error};
use super::protocol::{
    ActorStatus, ApprovalInfo, Command, ErrorKind, HistoryEntry, MAX_FRAME_BYTES, Outcome,
    PROTOCOL_VERSION, Reply, Request, Response, StatusReply, TreeChild, TreeReply, WireError,
    WireEvent,
};
use crate::config::TreeSpec;
use crate::domain::{ActorKind, FaultKind, Iteration};
use crate::events::{Event, EventBus};
use crate::messages::{self, Common, GovernorMsg, PlannerMsg};
use crate::store::audit::Decision;
use crate::store::{Store, now_ms};
use crate::supervisor::{self, SupervisorMsg};

/// A connection that sends nothing for this long is closed.
const IDLE: Duration = Duration::from_secs(60);
const QUICK: Duration = Duration::from_secs(10);

/// What the daemon asked to stop with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopRequest {
    /// Finish the in-flight step within the shutdown deadline.
    Graceful,
    /// Abandon the in-flight step at once.
    Now,
}

/// What the server needs from the daemon.
pub struct ServerContext {
    pub faults_allowed: bool,
    pub backend: String,
    pub mode: String,
    pub stop: watch::Sender<Option<StopRequest>>,
    pub store: Store,
    pub tree: TreeSpec,
    pub events: EventBus,
    /// Cancelled when the daemon stops: watchers get a last event and close.
    pub closing: CancellationToken,
}

/// The listening socket; removed when dropped.
pub struct ControlSocket {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
    connections: TaskTracker,
    closing: CancellationToken,
}

impl ControlSocket {
    /// Stops accepting, tells watchers the daemon is stopping and waits
    /// (briefly) for connections to finish their last frame.
    pub async fn close(self) {
        self.task.abort();
        self.closing.cancel();
        self.connections.close();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.connections.wait()).await;
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds the socket and serves it until closed.
pub fn start(path: &Path, context: Arc<ServerContext>) -> std::io::Result<ControlSocket> {
    // The store lock proves no other daemon owns this state directory, so a
    // socket file here is left over from a killed daemon.
    if path.exists() {
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    let connections = TaskTracker::new();
    let closing = context.closing.clone();
    let tracker = connections.clone();
    let task = tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tracker.spawn(serve(stream, context.clone()));
                }
                Err(error) => {
                    tracing::warn!(%error, "control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok(ControlSocket {
        path: path.to_path_buf(),
        task,
        connections,
        closing,
    })
}

fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(MAX_FRAME_BYTES)
        .new_codec()
}

type Frames = Framed<UnixStream, LengthDelimitedCodec>;

async fn serve(stream: UnixStream, context: Arc<ServerContext>) {
    let own_uid = nix::unistd::geteuid().as_raw();
    let peer_uid = stream.peer_cred().map(|cred| cred.uid()).ok();
    let mut frames = Framed::new(stream, codec());
    if peer_uid != Some(own_uid) {
        tracing::warn!(
            ?peer_uid,
            own_uid,
            "refused a control connection from another user"
        );
        let error = WireError::new(
            ErrorKind::NotPermitted,
            "this daemon accepts control requests only from its own user",
        );
        // Answer the first request (so the client reads a reason, not a
        // broken pipe), then hang up; nothing of it is acted upon.
        let id = match tokio::time::timeout(Duration::from_secs(5), frames.next()).await {
            Ok(Some(Ok(frame))) => serde_json::from_slice::<Request>(&frame).map_or(0, |r| r.id),
            _ => 0,
        };
        let _ = send(&mut frames, id, Outcome::Error(error)).await;
        return;
    }
    loop {
        let frame = tokio::select! {
            frame = tokio::time::timeout(IDLE, frames.next()) => frame,
            () = context.closing.cancelled() => return,
        };
        let frame = match frame {
            Err(_) | Ok(None) => return,
            Ok(Some(Err(error))) => {
                // The stream cannot be resynchronised after a bad length.
                let error =
                    WireError::new(ErrorKind::BadRequest, format!("unreadable frame: {error}"));
                let _ = send(&mut frames, 0, Outcome::Error(error)).await;
                return;
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let request = match serde_json::from_slice::<Request>(&frame) {
            Err(error) => {
                let error =
                    WireError::new(ErrorKind::BadRequest, format!("malformed request: {error}"));
                if send(&mut frames, 0, Outcome::Error(error)).await.is_err() {
                    return;
                }
                continue;
            }
            Ok(request) => request,
        };
        if request.version != PROTOCOL_VERSION {
            let error = WireError::new(
                ErrorKind::VersionMismatch,
                format!(
                    "protocol version {} is not spoken here; this daemon speaks version {PROTOCOL_VERSION}",
                    request.version
                ),
            );
            if send(&mut frames, request.id, Outcome::Error(error))
                .await
                .is_err()
            {
                return;
            }
            continue;
        }
        if request.command == Command::Watch {
            stream_events(&mut frames, request.id, &context).await;
            return;
        }
        // Each request is a span of its own, a child of the caller's trace
        // when it sent one; what it causes in the actors nests under it.
        let span = tracing::info_span!(
            "ctl.request",
            command = command_name(&request.command),
            request.id = request.id as i64,
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
        );
        if let Some(traceparent) = &request.traceparent {
            crate::telemetry::set_remote_parent(&span, traceparent);
        }
        let result = dispatch(request.command, &context)
            .instrument(span.clone())
            .await;
        if let Err(error) = &result {
            span.record("otel.status_code", "ERROR");
            span.in_scope(|| tracing::warn!(kind = error.kind.name(), message = %error.message, "ctl request refused"));
        }
        let outcome = match result {
            Ok(reply) => Outcome::Ok(reply),
            Err(error) => Outcome::Error(error),
        };
        if send(&mut frames, request.id, outcome).await.is_err() {
            return;
        }
    }
}

async fn send(frames: &mut Frames, id: u64, result: Outcome) -> std::io::Result<()> {
    let response = Response {
        version: PROTOCOL_VERSION,
        id,
        result,
    };
    let bytes = serde_json::to_vec(&response).map_err(std::io::Error::other)?;
    frames.send(tokio_util::bytes::Bytes::from(bytes)).await
}

/// `watch`: every event as it happens, until the client leaves or the daemon
/// stops (then one last `daemon_stopping` event).
async fn stream_events(frames: &mut Frames, id: u64, context: &ServerContext) {
    let mut events = context.events.subscribe();
    let hello = WireEvent {
        event: "watching".into(),
        iteration: None,
        actor: None,
        step: None,
        rule: None,
        detail: "streaming events; Ctrl-C to stop".into(),
        at_ms: now_ms(),
    };
    if send(frames, id, Outcome::Ok(Reply::Event(hello)))
        .await
        .is_err()
    {
        return;
    }
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            () = context.closing.cancelled() => {
                let last = WireEvent { event: "daemon_stopping".into(), iteration: None, actor: None, step: None, rule: None, detail: "the daemon is stopping".into(), at_ms: now_ms() };
                let _ = send(frames, id, Outcome::Ok(Reply::Event(last))).await;
                return;
            }
            // A client that hangs up ends the stream.
            next = frames.next() => match next {
                None | Some(Err(_)) => return,
                Some(Ok(_)) => continue,
            },
        };
        let event = match event {
            Ok(event) => wire_event(&event),
            Err(broadcast::error::RecvError::Lagged(missed)) => WireEvent {
                event: "lagged".into(),
                iteration: None,
                actor: None,
                step: None,
                rule: None,
                detail: format!("{missed} events were dropped because this client read too slowly"),
                at_ms: now_ms(),
            },
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if send(frames, id, Outcome::Ok(Reply::Event(event)))
            .await
            .is_err()
        {
            return;
        }
    }
}

/// An event as `watch` streams it (and the dashboard's event stream).
pub fn wire_event(event: &Event) -> WireEvent {
    let mut wire = WireEvent {
        event: String::new(),
        iteration: None,
        actor: None,
        step: None,
        rule: None,
        detail: String::new(),
        at_ms: now_ms(),
    };
    match event {
        Event::IterationStarted { iteration } => {
            wire.event = "iteration_started".into();
            wire.iteration = Some(*iteration);
        }
        Event::Step {
            iteration,
            step,
            detail,
        } => {
            wire.event = "step".into();
            wire.iteration = Some(*iteration);
            wire.step = Some((*step).to_string());
            wire.detail = detail.clone();
        }
        Event::IterationCommitted(committed) => {
            wire.event = "iteration_committed".into();
            wire.iteration = Some(committed.number);
            wire.detail = committed.summary.clone();
            wire.rule = committed
                .variant
                .as_ref()
                .and_then(|v| v.refused_by.clone());
        }
        Event::IterationAbandoned { iteration, reason } => {
            wire.event = "iteration_abandoned".into();
            wire.iteration = Some(*iteration);
            wire.detail = reason.clone();
        }
        Event::PermitWaiting { reason } => {
            wire.event = "permit_waiting".into();
            wire.detail = reason.clone();
        }
        Event::RunFinished { reason } => {
            wire.event = "run_finished".into();
            wire.detail = reason.clone();
        }
        Event::RunPaused { reason, .. } => {
            wire.event = "run_paused".into();
            wire.detail = reason.clone();
        }
        Event::ActorFailed { actor, error } => {
            wire.event = "actor_failed".into();
            wire.actor = Some(actor.name().into());
            wire.detail = error.clone();
        }
        Event::ActorRestarted { actor, restarts } => {
            wire.event = "actor_restarted".into();
            wire.actor = Some(actor.name().into());
            wire.detail = format!("restart {restarts}");
        }
        Event::Escalated { reason } => {
            wire.event = "escalated".into();
            wire.detail = reason.clone();
        }
        Event::ApprovalRequested {
            id,
            iteration,
            summary,
        } => {
            wire.event = "approval_requested".into();
            wire.iteration = Some(*iteration);
            wire.detail = format!("{id}: {summary}");
        }
        Event::Alert { rule, message } => {
            wire.event = "alert".into();
            wire.step = Some((*rule).to_string());
            wire.detail = message.clone();
        }
        Event::GoalChanged { goal } => {
            wire.event = "goal_changed".into();
            wire.detail = goal.clone();
        }
    }
    wire
}

fn command_name(command: &Command) -> &'static str {
    match command {
        Command::Status => "status",
        Command::Tree => "tree",
        Command::Send { .. } => "send",
        Command::Messages { .. } => "messages",
        Command::Pause => "pause",
        Command::Resume => "resume",
        Command::Stop { .. } => "stop",
        Command::Goal { .. } => "goal",
        Command::Approvals => "approvals",
        Command::Approve { .. } => "approve",
        Command::Reject { .. } => "reject",
        Command::Checkpoint => "checkpoint",
        Command::Fault { .. } => "fault",
        Command::Watch => "watch",
        Command::History { .. } => "history",
        Command::Backup { .. } => "backup",
        Command::Rebase => "rebase",
    }
}

fn done(message: impl Into<String>) -> Reply {
    Reply::Done {
        message: message.into(),
    }
}

/// What a command that changes something records in the audit chain
/// (`None` for a query).
fn audited(command: &Command) -> Option<String> {
    let detail = match command {
        Command::Send {
            actor,
            message,
            args,
        } => {
            let kind = catalog::actor(actor).ok()?;
            if !catalog::is_command(kind, message) {
                return None;
            }
            format!(
                "send {actor} {message} {}",
                serde_json::Value::Object(args.clone())
            )
        }
        Command::Pause => "pause".into(),
        Command::Resume => "resume".into(),
        Command::Stop { now } => format!("stop{}", if *now { " --now" } else { "" }),
        Command::Goal { text } => format!("goal {text:?}"),
        Command::Approve { id } => format!("approve {id}"),
        Command::Reject { id, reason } => format!(
            "reject {id}{}",
            reason
                .as_ref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        ),
        Command::Fault { actor, fault } => format!("fault {actor} {fault}"),
        Command::Rebase => "rebase".into(),
        _ => return None,
    };
    Some(detail)
}

async fn dispatch(command: Command, context: &ServerContext) -> Result<Reply, WireError> {
    answer(command, context, "ctl").await
}

/// Carries out one command for `who` (`ctl`, `dashboard`): the one path of
/// every operator action, audited under that name before it is carried out.
pub async fn answer(
    command: Command,
    context: &ServerContext,
    who: &str,
) -> Result<Reply, WireError> {
    // Recorded before it is carried out: a command the chain cannot hold
    // is refused.
    if let Some(detail) = audited(&command) {
        context
            .store
            .audit(Decision::new(who, "ctl.command", detail))
            .await
            .map_err(|e| {
                WireError::new(
                    ErrorKind::Internal,
                    format!("cannot audit the command: {e}"),
                )
            })?;
    }
    match command {
        Command::Status => status(context).await.map(Reply::Status),
        Command::Tree => tree(context).await.map(Reply::Tree),
        Command::Send {
            actor,
            message,
            args,
        } => {
            let kind = catalog::actor(&actor)?;
            let reply = catalog::send(kind, &message, &args).await?;
            Ok(Reply::Sent {
                actor: kind.name().into(),
                message,
                reply,
            })
        }
        Command::Messages { actor } => {
            let kind = catalog::actor(&actor)?;
            Ok(Reply::Messages {
                actor: kind.name().into(),
                messages: catalog::messages_of(kind),
            })
        }
        Command::Pause => set_paused(true).await,
        Command::Resume => set_paused(false).await,
        Command::Stop { now } => {
            let request = if now {
                StopRequest::Now
            } else {
                StopRequest::Graceful
            };
            context.stop.send_replace(Some(request));
            Ok(done(if now {
                "stopping now: the in-flight iteration is abandoned"
            } else {
                "stopping: the in-flight iteration finishes first"
            }))
        }
        Command::Goal { text } => {
            operations::set_goal(text.clone()).await?;
            Ok(done(format!(
                "goal set to \"{}\"; the next iteration pursues it",
                text.trim()
            )))
        }
        Command::Approvals => {
            let approvals = messages::call(ActorKind::Governor, QUICK, GovernorMsg::Approvals)
                .await
                .map_err(peer_error)?;
            Ok(Reply::Approvals {
                approvals: approvals
                    .into_iter()
                    .map(|a| ApprovalInfo {
                        id: a.id,
                        iteration: a.iteration,
                        state: a.state.as_str().to_string(),
                        summary: a.summary,
                        files: a.files,
                        fitness_before: a.fitness_before,
                        fitness_after: a.fitness_after,
                        reason: a.reason,
                    })
                    .collect(),
            })
        }
        Command::Approve { id } => decide(id, true, None).await,
        Command::Reject { id, reason } => decide(id, false, reason).await,
        Command::Checkpoint => {
            // Everything the daemon holds durably (iterations, ledger, goal,
            // approvals, jobs) is written as it happens; the flush makes the
            // last of it reach the disk before this reply.
            context
                .store
                .flush()
                .await
                .map_err(|e| WireError::new(ErrorKind::Internal, format!("flush failed: {e}")))?;
            let iterations = context
                .store
                .last_iteration()
                .map_err(|e| WireError::new(ErrorKind::Internal, e.to_string()))?
                .map_or(0, |r| r.number);
            Ok(Reply::Checkpoint {
                iterations,
                message: format!(
                    "checkpoint written: {iterations} iteration(s) committed, store flushed"
                ),
            })
        }
        Command::Fault { actor, fault } => inject_fault(&actor, &fault, context),
        Command::Watch => Err(WireError::new(
            ErrorKind::Internal,
            "watch is served as a stream",
        )),
        Command::Rebase => operations::rebase().await.map(done),
        Command::Backup { to } => {
            let (bytes, iterations) = context
                .store
                .export()
                .map_err(|e| WireError::new(ErrorKind::Internal, e.to_string()))?;
            crate::store::write_backup(std::path::Path::new(&to), &bytes)
                .map_err(|e| WireError::new(ErrorKind::Refused, e.to_string()))?;
            Ok(done(format!(
                "backup of {iterations} committed iteration(s) written to {to}"
            )))
        }
        Command::History { last } => {
            let records = context
                .store
                .iterations(last.unwrap_or(20))
                .map_err(|e| WireError::new(ErrorKind::Internal, e.to_string()))?;
            Ok(Reply::History {
                iterations: records.iter().map(history_entry).collect(),
            })
        }
    }
}

pub fn history_entry(i: &Iteration) -> HistoryEntry {
    HistoryEntry {
        iteration: i.number,
        capability: i.capability.clone(),
        outcome: i.outcome.as_str().to_string(),
        fitness_before: i.fitness_before,
        fitness_after: i.fitness_after,
        input_tokens: i.usage.input_tokens,
        output_tokens: i.usage.output_tokens,
        cost_usd: i.usage.cost_usd,
        duration_ms: i.duration.as_millis() as u64,
        commit: i.commit.clone(),
        summary: i.summary.clone(),
        rule: i.variant.as_ref().and_then(|v| v.refused_by.clone()),
        rules: i
            .variant
            .as_ref()
            .map(|v| v.rules_checked.clone())
            .unwrap_or_default(),
        variant: i.variant.as_ref().map(|v| v.commit.clone()),
    }
}

async fn children(context: &ServerContext) -> Result<Vec<supervisor::ChildStatus>, WireError> {
    let _ = context;
    let supervisor =
        ractor::ActorRef::<SupervisorMsg>::where_is(supervisor::NAME).ok_or_else(|| {
            WireError::new(ErrorKind::ActorRestarting, "the supervisor is not running")
        })?;
    supervisor
        .call(SupervisorMsg::Children, Some(QUICK))
        .await
        .ok()
        .and_then(|r| r.success_or(()).ok())
        .ok_or_else(|| WireError::new(ErrorKind::Timeout, "the supervisor did not answer"))
}

async fn status(context: &ServerContext) -> Result<StatusReply, WireError> {
    let planner = messages::call(ActorKind::Planner, QUICK, PlannerMsg::Status)
        .await
        .map_err(peer_error)?;
    let children = children(context).await?;
    Ok(StatusReply {
        goal: planner.goal,
        run_state: planner.run_state.as_str().to_string(),
        iteration: planner.iteration,
        in_flight: planner.in_flight,
        fitness: planner.last_fitness,
        pause_reason: planner.pause_reason,
        waiting: planner.waiting,
        failures: planner.failures,
        outcomes: super::protocol::OutcomeCounts {
            kept: planner.outcomes.kept,
            no_change: planner.outcomes.no_change,
            rejected: planner.outcomes.rejected,
            failed: planner.outcomes.failed,
        },
        backend: context.backend.clone(),
        mode: context.mode.clone(),
        actors: children
            .into_iter()
            .map(|child| ActorStatus {
                name: child.kind.name().to_string(),
                status: child.status.to_string(),
                restarts: child.restarts,
                last_error: child.last_error,
            })
            .collect(),
    })
}

async fn tree(context: &ServerContext) -> Result<TreeReply, WireError> {
    let children = children(context).await?;
    let spec = &context.tree;
    Ok(TreeReply {
        strategy: format!("{:?}", spec.strategy),
        max_restarts: spec.intensity.max_restarts,
        within: humantime::format_duration(spec.intensity.within).to_string(),
        children: children
            .into_iter()
            .map(|child| TreeChild {
                name: child.kind.name().to_string(),
                restart: spec
                    .children
                    .iter()
                    .find(|c| c.kind == child.kind)
                    .map_or("?".into(), |c| format!("{:?}", c.restart).to_lowercase()),
                status: child.status.to_string(),
                restarts: child.restarts,
                uptime_ms: child.uptime.map(|u| u.as_millis() as u64),
                last_error: child.last_error,
            })
            .collect(),
    })
}

async fn set_paused(paused: bool) -> Result<Reply, WireError> {
    operations::set_paused(paused).await?;
    Ok(done(if paused {
        "paused: no new iteration starts until `agent ctl resume`"
    } else {
        "resumed"
    }))
}

async fn decide(id: String, approve: bool, reason: Option<String>) -> Result<Reply, WireError> {
    let approval = operations::decide(id, approve, reason).await?;
    Ok(done(format!(
        "{} {} (iteration {})",
        approval.state, approval.id, approval.iteration
    )))
}

fn inject_fault(actor: &str, fault: &str, context: &ServerContext) -> Result<Reply, WireError> {
    if !context.faults_allowed {
        return Err(WireError::new(
            ErrorKind::NotPermitted,
            "fault injection is allowed only in debug mode (--mode debug) or with [debug] fault_injection = true",
        ));
    }
    let kind = catalog::actor(actor)?;
    let fault: FaultKind = fault.parse().map_err(|_| {
        WireError::new(
            ErrorKind::BadArguments,
            format!("unknown fault \"{fault}\"; expected panic, error or hang"),
        )
    })?;
    messages::send_common(kind, Common::Fault(fault)).map_err(peer_error)?;
    Ok(done(format!("injected {} into {kind}", fault.name())))
}
