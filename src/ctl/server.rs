//! The control socket inside the daemon. The socket is a Unix socket in the
//! state directory, mode 0600, that serves only peers with the daemon's uid.
//! Each connection reads length-delimited JSON requests and answers every
//! one (through `commands::answer`), with a typed error when it cannot be
//! served; a malformed or oversized frame is answered and never takes the
//! daemon down. `watch` turns the connection into a stream of events that
//! ends when the client or the daemon goes away.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;
use tokio_util::bytes::BytesMut;
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::commands::{answer, command_name};
use super::protocol::{
    Command, ErrorKind, MAX_FRAME_BYTES, Outcome, PROTOCOL_VERSION, Reply, Request, Response,
    WireError, WireEvent,
};
use crate::config::TreeSpec;
use crate::domain::ActorKind;
use crate::events::{Event, EventBus};
use crate::store::{Store, now_ms};

/// A connection that sends nothing for this long is closed.
const IDLE: Duration = Duration::from_secs(60);

/// What the daemon asked to stop with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopRequest {
    /// Finish the in-flight step within the shutdown deadline.
    Graceful,
    /// Abandon the in-flight step at once.
    Now,
    /// Stop as gracefully, and exit asking the keeper to start the current
    /// release.
    Handover,
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
    /// The releases of the keeper that runs this daemon; `None` without one.
    pub releases: Option<crate::upgrade::releases::Releases>,
    /// When this daemon started (ms since the epoch).
    pub started_ms: u64,
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

// ------------------------------------------------------------ connection --

/// One connection, phase by phase: a stranger is refused; otherwise every
/// request is answered in turn until the connection ends, or `watch` turns
/// it into a stream.
async fn serve(stream: UnixStream, context: Arc<ServerContext>) {
    let own_uid = nix::unistd::geteuid().as_raw();
    let peer_uid = stream.peer_cred().map(|cred| cred.uid()).ok();
    let mut frames = Framed::new(stream, codec());
    if peer_uid != Some(own_uid) {
        refuse_stranger(&mut frames, peer_uid, own_uid).await;
        return;
    }
    while let Some(request) = next_request(&mut frames, &context).await {
        if request.command == Command::Watch {
            stream_events(&mut frames, request.id, &context).await;
            return;
        }
        let id = request.id;
        let outcome = answer_traced(request, &context).await;
        if respond(&mut frames, id, outcome).await.is_err() {
            return;
        }
    }
}

/// A peer with another uid: its first request is answered with the reason
/// (so the client reads why, not a broken pipe), then the connection is
/// closed; nothing it asks for is acted upon.
async fn refuse_stranger(frames: &mut Frames, peer_uid: Option<u32>, own_uid: u32) {
    tracing::warn!(
        ?peer_uid,
        own_uid,
        "refused a control connection from another user"
    );
    let error = WireError::new(
        ErrorKind::NotPermitted,
        "this daemon accepts control requests only from its own user",
    );
    let id = match tokio::time::timeout(Duration::from_secs(5), frames.next()).await {
        Ok(Some(Ok(frame))) => serde_json::from_slice::<Request>(&frame).map_or(0, |r| r.id),
        _ => 0,
    };
    let _ = respond(frames, id, Outcome::Error(error)).await;
}

/// The next request this daemon can serve. One it cannot (malformed, another
/// protocol version) is answered with its error here and the connection
/// reads on; `None` when the connection is over.
async fn next_request(frames: &mut Frames, context: &ServerContext) -> Option<Request> {
    loop {
        let frame = next_frame(frames, context).await?;
        match readable_request(&frame) {
            Ok(request) => return Some(request),
            Err((id, error)) => respond(frames, id, Outcome::Error(error)).await.ok()?,
        }
    }
}

/// The next frame, or `None` when the client hangs up, stays idle too long,
/// the daemon stops, or the frame is unreadable (answered first: the stream
/// cannot be resynchronised after a bad length).
async fn next_frame(frames: &mut Frames, context: &ServerContext) -> Option<BytesMut> {
    let frame = tokio::select! {
        frame = tokio::time::timeout(IDLE, frames.next()) => frame,
        () = context.closing.cancelled() => return None,
    };
    match frame {
        Err(_) | Ok(None) => None,
        Ok(Some(Err(error))) => {
            let error = WireError::new(ErrorKind::BadRequest, format!("unreadable frame: {error}"));
            let _ = respond(frames, 0, Outcome::Error(error)).await;
            None
        }
        Ok(Some(Ok(frame))) => Some(frame),
    }
}

/// A frame as a request in this daemon's protocol version, or the id and
/// error to answer it with (id 0 when the request cannot be read at all).
fn readable_request(frame: &[u8]) -> Result<Request, (u64, WireError)> {
    let request = serde_json::from_slice::<Request>(frame).map_err(|error| {
        let message = format!("malformed request: {error}");
        (0, WireError::new(ErrorKind::BadRequest, message))
    })?;
    if request.version != PROTOCOL_VERSION {
        let message = format!(
            "protocol version {} is not spoken here; this daemon speaks version {PROTOCOL_VERSION}",
            request.version
        );
        return Err((
            request.id,
            WireError::new(ErrorKind::VersionMismatch, message),
        ));
    }
    Ok(request)
}

/// Answers one request inside a span of its own, a child of the caller's
/// trace when it sent one, so what it causes in the actors nests under it.
async fn answer_traced(request: Request, context: &ServerContext) -> Outcome {
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
    let result = answer(request.command, context, "ctl")
        .instrument(span.clone())
        .await;
    match result {
        Ok(reply) => Outcome::Ok(reply),
        Err(error) => {
            span.record("otel.status_code", "ERROR");
            span.in_scope(|| tracing::warn!(kind = error.kind.name(), message = %error.message, "ctl request refused"));
            Outcome::Error(error)
        }
    }
}

/// Writes one response frame.
async fn respond(frames: &mut Frames, id: u64, result: Outcome) -> std::io::Result<()> {
    let response = Response {
        version: PROTOCOL_VERSION,
        id,
        result,
    };
    let bytes = serde_json::to_vec(&response).map_err(std::io::Error::other)?;
    frames.send(tokio_util::bytes::Bytes::from(bytes)).await
}

// ----------------------------------------------------------------- watch --

/// `watch`: every event as it happens, until the client leaves or the daemon
/// stops (then one last `daemon_stopping` event).
async fn stream_events(frames: &mut Frames, id: u64, context: &ServerContext) {
    let mut events = context.events.subscribe();
    let hello = notice("watching", "streaming events; Ctrl-C to stop");
    if respond_event(frames, id, hello).await.is_err() {
        return;
    }
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            () = context.closing.cancelled() => {
                let last = notice("daemon_stopping", "the daemon is stopping");
                let _ = respond_event(frames, id, last).await;
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
            Err(RecvError::Lagged(missed)) => notice(
                "lagged",
                format!("{missed} events were dropped because this client read too slowly"),
            ),
            Err(RecvError::Closed) => return,
        };
        if respond_event(frames, id, event).await.is_err() {
            return;
        }
    }
}

async fn respond_event(frames: &mut Frames, id: u64, event: WireEvent) -> std::io::Result<()> {
    respond(frames, id, Outcome::Ok(Reply::Event(event))).await
}

/// An event as `watch` streams it (and the dashboard's event stream): each
/// kind names itself and fills the fields it carries.
pub fn wire_event(event: &Event) -> WireEvent {
    match event {
        Event::IterationStarted { iteration } => {
            iteration_event("iteration_started", *iteration, "")
        }
        Event::Step {
            iteration,
            step,
            detail,
        } => WireEvent {
            step: Some((*step).to_string()),
            ..iteration_event("step", *iteration, detail)
        },
        Event::IterationCommitted(committed) => WireEvent {
            rule: committed
                .variant
                .as_ref()
                .and_then(|v| v.refused_by.as_ref())
                .map(ToString::to_string),
            ..iteration_event("iteration_committed", committed.number, &committed.summary)
        },
        Event::IterationAbandoned { iteration, reason } => {
            iteration_event("iteration_abandoned", *iteration, reason)
        }
        Event::PermitWaiting { reason } => notice("permit_waiting", reason),
        Event::RunFinished { reason } => notice("run_finished", reason),
        Event::RunPaused { reason, .. } => notice("run_paused", reason),
        Event::ActorFailed { actor, error } => actor_event("actor_failed", *actor, error),
        Event::ActorRestarted { actor, restarts } => {
            actor_event("actor_restarted", *actor, format!("restart {restarts}"))
        }
        Event::Escalated { reason } => notice("escalated", reason),
        Event::ApprovalRequested {
            id,
            iteration,
            summary,
        } => iteration_event("approval_requested", *iteration, format!("{id}: {summary}")),
        Event::Alert { rule, message } => WireEvent {
            step: Some((*rule).to_string()),
            ..notice("alert", message)
        },
        Event::GoalChanged { goal } => notice("goal_changed", goal),
    }
}

/// An event that is only its name and a detail, stamped now.
fn notice(event: &str, detail: impl Into<String>) -> WireEvent {
    WireEvent {
        event: event.into(),
        iteration: None,
        actor: None,
        step: None,
        rule: None,
        detail: detail.into(),
        at_ms: now_ms(),
    }
}

/// An event about one iteration.
fn iteration_event(event: &str, iteration: u64, detail: impl Into<String>) -> WireEvent {
    WireEvent {
        iteration: Some(iteration),
        ..notice(event, detail)
    }
}

/// An event about one actor.
fn actor_event(event: &str, actor: ActorKind, detail: impl Into<String>) -> WireEvent {
    WireEvent {
        actor: Some(actor.name().into()),
        ..notice(event, detail)
    }
}

/// One line per event: its name, then what it carries.
pub fn render_event(event: &WireEvent) -> String {
    let mut line = event.event.clone();
    if let Some(iteration) = event.iteration {
        line.push_str(&format!(" #{iteration}"));
    }
    if let Some(step) = &event.step {
        line.push_str(&format!(" {step}"));
    }
    if let Some(actor) = &event.actor {
        line.push_str(&format!(" {actor}"));
    }
    if let Some(rule) = &event.rule {
        line.push_str(&format!(" [refused by {rule}]"));
    }
    if !event.detail.is_empty() {
        line.push_str(&format!(": {}", event.detail));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Iteration, Outcome as IterationOutcome, Usage, Variant};

    fn line(event: Event) -> String {
        render_event(&wire_event(&event))
    }

    #[test]
    fn each_event_kind_fills_its_own_fields() {
        let step = Event::Step {
            iteration: 2,
            step: "plan",
            detail: "chose refactor".into(),
        };
        assert_eq!(line(step), "step #2 plan: chose refactor");
        let restarted = Event::ActorRestarted {
            actor: ActorKind::Executor,
            restarts: 4,
        };
        assert_eq!(line(restarted), "actor_restarted executor: restart 4");
        let alert = Event::Alert {
            rule: "slow",
            message: "too slow".into(),
        };
        assert_eq!(line(alert), "alert slow: too slow");
        let approval = Event::ApprovalRequested {
            id: "a1".into(),
            iteration: 5,
            summary: "tidy".into(),
        };
        assert_eq!(line(approval), "approval_requested #5: a1: tidy");
        let started = wire_event(&Event::IterationStarted { iteration: 1 });
        assert_eq!(started.detail, "");
        assert!(started.at_ms > 0);
    }

    #[test]
    fn a_committed_iteration_names_what_refused_its_change() {
        let variant = Variant {
            iteration: 9,
            commit: "c9".into(),
            parent: "p".into(),
            outcome: IterationOutcome::Rejected,
            refused_by: Some(crate::domain::RefusedBy::Rule("no_secrets".into())),
            rules_checked: Vec::new(),
            fitness_before: None,
            fitness_after: None,
            validation: crate::domain::Validation::Passed,
            generated_tests: Vec::new(),
            started_from: None,
            change_id: String::new(),
        };
        let committed = Iteration {
            number: 9,
            goal: "g".into(),
            capability: "c".into(),
            outcome: IterationOutcome::Rejected,
            fitness_before: None,
            fitness_after: None,
            usage: Usage::default(),
            duration: Duration::ZERO,
            commit: None,
            summary: "refused".into(),
            finished_at_ms: 0,
            variant: Some(Box::new(variant)),
        };
        assert_eq!(
            line(Event::IterationCommitted(committed)),
            "iteration_committed #9 [refused by no_secrets]: refused"
        );
    }
}
