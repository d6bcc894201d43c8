//! The control socket inside the daemon: a Unix socket in the state directory,
//! mode 0600, that serves only peers with the daemon's uid. Each connection
//! reads length-delimited JSON requests and answers every one, with a typed
//! error when it cannot be served; a malformed or oversized frame is answered
//! and never takes the daemon down.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use super::protocol::{
    ActorStatus, Command, ErrorKind, MAX_FRAME_BYTES, Outcome, PROTOCOL_VERSION, Reply, Request,
    Response, StatusReply, WireError,
};
use crate::messages::{self, ActorKind, Common, FaultKind, GovernorMsg, PeerError, PlannerMsg};
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
}

/// The listening socket; removed when dropped.
pub struct ControlSocket {
    path: PathBuf,
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds the socket and serves it until the returned guard's task is dropped.
pub fn start(
    path: &Path,
    context: Arc<ServerContext>,
) -> std::io::Result<(ControlSocket, tokio::task::JoinHandle<()>)> {
    // The store lock proves no other daemon owns this state directory, so a
    // socket file here is left over from a killed daemon.
    if path.exists() {
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    let task = tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(serve(stream, context.clone()));
                }
                Err(error) => {
                    tracing::warn!(%error, "control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok((
        ControlSocket {
            path: path.to_path_buf(),
        },
        task,
    ))
}

fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(MAX_FRAME_BYTES)
        .new_codec()
}

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
        let _ = send(&mut frames, 0, Outcome::Error(error)).await;
        return;
    }
    loop {
        let frame = match tokio::time::timeout(IDLE, frames.next()).await {
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
        let (id, outcome) = match serde_json::from_slice::<Request>(&frame) {
            Err(error) => (
                0,
                Outcome::Error(WireError::new(
                    ErrorKind::BadRequest,
                    format!("malformed request: {error}"),
                )),
            ),
            Ok(request) if request.version != PROTOCOL_VERSION => (
                request.id,
                Outcome::Error(WireError::new(
                    ErrorKind::VersionMismatch,
                    format!(
                        "protocol version {} is not spoken here; this daemon speaks version {PROTOCOL_VERSION}",
                        request.version
                    ),
                )),
            ),
            Ok(request) => (request.id, dispatch(request.command, &context).await),
        };
        if send(&mut frames, id, outcome).await.is_err() {
            return;
        }
    }
}

async fn send(
    frames: &mut Framed<UnixStream, LengthDelimitedCodec>,
    id: u64,
    result: Outcome,
) -> std::io::Result<()> {
    let response = Response {
        version: PROTOCOL_VERSION,
        id,
        result,
    };
    let bytes = serde_json::to_vec(&response).map_err(std::io::Error::other)?;
    frames.send(tokio_util::bytes::Bytes::from(bytes)).await
}

fn peer_error(error: PeerError) -> WireError {
    let mut wire = WireError::new(ErrorKind::Unavailable, error.to_string());
    if matches!(error, PeerError::NotRunning(_) | PeerError::Gone(_)) {
        wire.retry_after_ms = Some(500);
    }
    wire
}

async fn dispatch(command: Command, context: &ServerContext) -> Outcome {
    let result = match command {
        Command::Status => status(context).await.map(Reply::Status),
        Command::Pause => set_paused(true).await,
        Command::Resume => set_paused(false).await,
        Command::Stop { now } => {
            let request = if now {
                StopRequest::Now
            } else {
                StopRequest::Graceful
            };
            context.stop.send_replace(Some(request));
            Ok(Reply::Done {
                message: if now {
                    "stopping now: the in-flight iteration is abandoned".into()
                } else {
                    "stopping: the in-flight iteration finishes first".into()
                },
            })
        }
        Command::Fault { actor, fault } => inject_fault(&actor, &fault, context),
    };
    match result {
        Ok(reply) => Outcome::Ok(reply),
        Err(error) => Outcome::Error(error),
    }
}

async fn status(context: &ServerContext) -> Result<StatusReply, WireError> {
    let planner = messages::call(ActorKind::Planner, QUICK, PlannerMsg::Status)
        .await
        .map_err(peer_error)?;
    let supervisor = ractor::ActorRef::<SupervisorMsg>::where_is(supervisor::NAME)
        .ok_or_else(|| WireError::new(ErrorKind::Unavailable, "the supervisor is not running"))?;
    let children = supervisor
        .call(SupervisorMsg::Children, Some(QUICK))
        .await
        .ok()
        .and_then(|r| r.success_or(()).ok())
        .ok_or_else(|| WireError::new(ErrorKind::Unavailable, "the supervisor did not answer"))?;
    Ok(StatusReply {
        goal: planner.goal,
        run_state: planner.run_state.as_str().to_string(),
        iteration: planner.iteration,
        in_flight: planner.in_flight,
        fitness: planner.last_fitness,
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

async fn set_paused(paused: bool) -> Result<Reply, WireError> {
    messages::call(ActorKind::Governor, QUICK, |reply| GovernorMsg::SetPaused {
        paused,
        reply,
    })
    .await
    .map_err(peer_error)?
    .map_err(|e| WireError::new(ErrorKind::Internal, e))?;
    messages::lookup::<PlannerMsg>(ActorKind::Planner)
        .and_then(|planner| {
            planner
                .cast(PlannerMsg::Paused(paused))
                .map_err(|_| PeerError::Gone(ActorKind::Planner))
        })
        .map_err(peer_error)?;
    Ok(Reply::Done {
        message: if paused {
            "paused: no new iteration starts until `agent ctl resume`".into()
        } else {
            "resumed".into()
        },
    })
}

fn inject_fault(actor: &str, fault: &str, context: &ServerContext) -> Result<Reply, WireError> {
    if !context.faults_allowed {
        return Err(WireError::new(
            ErrorKind::NotPermitted,
            "fault injection is allowed only in debug mode (--mode debug) or with [debug] fault_injection = true",
        ));
    }
    let kind: ActorKind = actor.parse().map_err(|_| {
        WireError::new(
            ErrorKind::UnknownActor,
            format!(
                "unknown actor \"{actor}\"; expected one of: {}",
                ActorKind::ALL.map(|k| k.name()).join(", ")
            ),
        )
    })?;
    let fault: FaultKind = fault.parse().map_err(|_| {
        WireError::new(
            ErrorKind::BadRequest,
            format!("unknown fault \"{fault}\"; expected panic or error"),
        )
    })?;
    messages::send_common(kind, Common::Fault(fault)).map_err(peer_error)?;
    Ok(Reply::Done {
        message: format!("injected {fault:?} into {kind}").to_lowercase(),
    })
}
