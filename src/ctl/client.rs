//! The client side of `agent ctl`: connects to the daemon's socket, sends one
//! request and turns the response (or, for `watch`, the stream of responses)
//! into output and an exit code (0 done, 1 refused by the daemon, 3 cannot
//! reach the daemon). How each reply reads is its command's own, beside the
//! command in `commands`; [`render`] dispatches to it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::net::UnixStream;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use super::protocol::{
    Command, MAX_FRAME_BYTES, Outcome, PROTOCOL_VERSION, Reply, Request, Response,
};
use super::{commands, server};

/// How long a request waits for its answer (`send researcher research` can
/// fill a cache miss through a model, hence generous).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(620);

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the daemon at {path}: {why} (is `agent run` running with this --state?)")]
    Unreachable { path: PathBuf, why: String },
    #[error("the daemon at {path} did not answer: {why}")]
    NoAnswer { path: PathBuf, why: String },
}

/// An open control connection.
pub struct Connection {
    frames: Framed<UnixStream, LengthDelimitedCodec>,
    path: PathBuf,
}

impl Connection {
    pub async fn open(socket: &Path) -> Result<Connection, ClientError> {
        let stream =
            UnixStream::connect(socket)
                .await
                .map_err(|error| ClientError::Unreachable {
                    path: socket.to_path_buf(),
                    why: error.to_string(),
                })?;
        let codec = LengthDelimitedCodec::builder()
            .max_frame_length(MAX_FRAME_BYTES)
            .new_codec();
        Ok(Connection {
            frames: Framed::new(stream, codec),
            path: socket.to_path_buf(),
        })
    }

    fn no_answer(&self, why: impl Into<String>) -> ClientError {
        ClientError::NoAnswer {
            path: self.path.clone(),
            why: why.into(),
        }
    }

    pub async fn send(&mut self, command: Command) -> Result<(), ClientError> {
        let request = Request {
            version: PROTOCOL_VERSION,
            id: u64::from(std::process::id()),
            command,
            // Scripts that trace themselves pass their context on.
            traceparent: std::env::var("TRACEPARENT").ok().filter(|t| !t.is_empty()),
        };
        let bytes = serde_json::to_vec(&request).map_err(|e| self.no_answer(e.to_string()))?;
        self.frames
            .send(tokio_util::bytes::Bytes::from(bytes))
            .await
            .map_err(|e| ClientError::NoAnswer {
                path: self.path.clone(),
                why: e.to_string(),
            })
    }

    /// The next response; `None` when the daemon closed the stream.
    pub async fn next(
        &mut self,
        timeout: Option<Duration>,
    ) -> Result<Option<Outcome>, ClientError> {
        let next = match timeout {
            Some(timeout) => tokio::time::timeout(timeout, self.frames.next())
                .await
                .map_err(|_| self.no_answer(format!("no answer within {}s", timeout.as_secs())))?,
            None => self.frames.next().await,
        };
        let Some(frame) = next else {
            return Ok(None);
        };
        let frame = frame.map_err(|e| self.no_answer(e.to_string()))?;
        let response: Response = serde_json::from_slice(&frame)
            .map_err(|e| self.no_answer(format!("unreadable answer: {e}")))?;
        Ok(Some(response.result))
    }
}

/// Sends one command and waits for its answer.
pub async fn request(socket: &Path, command: Command) -> Result<Outcome, ClientError> {
    let mut connection = Connection::open(socket).await?;
    connection.send(command).await?;
    connection
        .next(Some(ANSWER_TIMEOUT))
        .await?
        .ok_or_else(|| connection.no_answer("the connection closed"))
}

/// Human-readable form of a reply: each command renders its own, beside its
/// handler in [`commands`].
pub fn render(reply: &Reply) -> String {
    match reply {
        Reply::Done { message } => message.clone(),
        Reply::Status(status) => commands::render_status(status),
        Reply::Tree(tree) => commands::render_tree(tree),
        Reply::Sent {
            actor,
            message,
            reply,
        } => commands::render_sent(actor, message, reply),
        Reply::Messages { actor, messages } => commands::render_messages(actor, messages),
        Reply::Approvals { approvals } => commands::render_approvals(approvals),
        Reply::Checkpoint { message, .. } => message.clone(),
        Reply::History { iterations } => commands::render_history(iterations),
        Reply::Event(event) => server::render_event(event),
    }
}

/// The object `--json` prints for a reply: the reply's own fields.
pub fn json(reply: &Reply) -> serde_json::Value {
    let mut value = serde_json::to_value(reply).unwrap_or_default();
    if let Some(object) = value.as_object_mut() {
        object.remove("type");
    }
    value
}
