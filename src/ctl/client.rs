//! The client side of `agent ctl`: connects to the daemon's socket, sends one
//! request and turns the response into output and an exit code (0 done,
//! 1 refused by the daemon, 3 cannot reach the daemon).

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::net::UnixStream;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use super::protocol::{
    Command, MAX_FRAME_BYTES, Outcome, PROTOCOL_VERSION, Reply, Request, Response, StatusReply,
};

const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the daemon at {path}: {why} (is `agent run` running with this --state?)")]
    Unreachable { path: PathBuf, why: String },
    #[error("the daemon at {path} did not answer: {why}")]
    NoAnswer { path: PathBuf, why: String },
}

/// Sends one command and waits for its answer.
pub async fn request(socket: &Path, command: Command) -> Result<Outcome, ClientError> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|error| ClientError::Unreachable {
            path: socket.to_path_buf(),
            why: error.to_string(),
        })?;
    let codec = LengthDelimitedCodec::builder()
        .max_frame_length(MAX_FRAME_BYTES)
        .new_codec();
    let mut frames = Framed::new(stream, codec);
    let id = u64::from(std::process::id());
    let request = Request {
        version: PROTOCOL_VERSION,
        id,
        command,
        traceparent: None,
    };
    let no_answer = |why: String| ClientError::NoAnswer {
        path: socket.to_path_buf(),
        why,
    };
    let bytes = serde_json::to_vec(&request).map_err(|e| no_answer(e.to_string()))?;
    frames
        .send(tokio_util::bytes::Bytes::from(bytes))
        .await
        .map_err(|e| no_answer(e.to_string()))?;
    let frame = tokio::time::timeout(ANSWER_TIMEOUT, frames.next())
        .await
        .map_err(|_| no_answer(format!("no answer within {}s", ANSWER_TIMEOUT.as_secs())))?
        .ok_or_else(|| no_answer("the connection closed".into()))?
        .map_err(|e| no_answer(e.to_string()))?;
    let response: Response =
        serde_json::from_slice(&frame).map_err(|e| no_answer(format!("unreadable answer: {e}")))?;
    Ok(response.result)
}

/// Human-readable form of a reply.
pub fn render(reply: &Reply) -> String {
    match reply {
        Reply::Done { message } => message.clone(),
        Reply::Status(status) => render_status(status),
    }
}

fn render_status(status: &StatusReply) -> String {
    let mut out = String::new();
    out.push_str(&format!("goal:       {}\n", status.goal));
    out.push_str(&format!("run state:  {}\n", status.run_state));
    let in_flight = status
        .in_flight
        .map(|n| format!(" (iteration {n} in flight)"))
        .unwrap_or_default();
    out.push_str(&format!(
        "iterations: {} committed{in_flight}\n",
        status.iteration
    ));
    if let Some(fitness) = status.fitness {
        out.push_str(&format!("fitness:    {fitness}\n"));
    }
    out.push_str(&format!(
        "backend:    {} ({} mode)\n\n",
        status.backend, status.mode
    ));
    out.push_str(&format!(
        "{:<11} {:<11} {:>8}  {}\n",
        "ACTOR", "STATUS", "RESTARTS", "LAST ERROR"
    ));
    for actor in &status.actors {
        out.push_str(&format!(
            "{:<11} {:<11} {:>8}  {}\n",
            actor.name,
            actor.status,
            actor.restarts,
            actor.last_error.as_deref().unwrap_or("-")
        ));
    }
    out.trim_end().to_string()
}
