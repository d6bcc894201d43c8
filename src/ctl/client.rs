//! The client side of `agent ctl`: connects to the daemon's socket, sends one
//! request and turns the response (or, for `watch`, the stream of responses)
//! into output and an exit code (0 done, 1 refused by the daemon, 3 cannot
//! reach the daemon).

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::net::UnixStream;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use super::protocol::{
    Command, MAX_FRAME_BYTES, Outcome, PROTOCOL_VERSION, Reply, Request, Response, StatusReply,
};

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

/// Human-readable form of a reply.
pub fn render(reply: &Reply) -> String {
    match reply {
        Reply::Done { message } => message.clone(),
        Reply::Status(status) => render_status(status),
        Reply::Tree(tree) => {
            let mut out = format!(
                "supervisor  strategy {}, at most {} restarts within {}\n",
                tree.strategy, tree.max_restarts, tree.within
            );
            let count = tree.children.len();
            for (i, child) in tree.children.iter().enumerate() {
                let branch = if i + 1 == count {
                    "└──"
                } else {
                    "├──"
                };
                let uptime = child.uptime_ms.map_or("-".to_string(), |ms| {
                    humantime::format_duration(Duration::from_secs(ms / 1000)).to_string()
                });
                out.push_str(&format!(
                    "{branch} {:<11} {:<10} {:<11} restarts {:<3} up {}{}\n",
                    child.name,
                    child.restart,
                    child.status,
                    child.restarts,
                    uptime,
                    child
                        .last_error
                        .as_ref()
                        .map(|e| format!("  last error: {e}"))
                        .unwrap_or_default()
                ));
            }
            out.trim_end().to_string()
        }
        Reply::Sent {
            actor,
            message,
            reply,
        } => format!(
            "{actor} {message}:\n{}",
            serde_json::to_string_pretty(reply).unwrap_or_default()
        ),
        Reply::Messages { actor, messages } => {
            let mut out = format!(
                "messages of {actor} (agent ctl send {actor} <message> [--arg name=value]):\n"
            );
            for m in messages {
                let args: Vec<String> = m
                    .args
                    .iter()
                    .map(|a| {
                        if a.required {
                            format!("{}=<{}>", a.name, a.kind)
                        } else {
                            format!("[{}=<{}>]", a.name, a.kind)
                        }
                    })
                    .collect();
                out.push_str(&format!(
                    "  {:<14} {:<8} {:<28} {}\n",
                    m.name,
                    m.kind,
                    args.join(" "),
                    m.description
                ));
            }
            out.trim_end().to_string()
        }
        Reply::Approvals { approvals } => {
            if approvals.is_empty() {
                return "no approvals".into();
            }
            let mut out = format!(
                "{:<10} {:<9} {:>9}  {}\n",
                "ID", "STATE", "FITNESS", "CHANGE"
            );
            for a in approvals {
                let fitness = format!(
                    "{}→{}",
                    a.fitness_before.map_or("?".into(), |f| f.to_string()),
                    a.fitness_after
                );
                out.push_str(&format!(
                    "{:<10} {:<9} {:>9}  iteration {}: {} ({} file(s)){}\n",
                    a.id,
                    a.state,
                    fitness,
                    a.iteration,
                    a.summary,
                    a.files.len(),
                    a.reason
                        .as_ref()
                        .map(|r| format!(" — {r}"))
                        .unwrap_or_default()
                ));
            }
            out.trim_end().to_string()
        }
        Reply::Checkpoint { message, .. } => message.clone(),
        Reply::History { iterations } => {
            if iterations.is_empty() {
                return "no committed iterations yet".into();
            }
            let mut out = String::new();
            for r in iterations {
                out.push_str(&format!(
                    "{:>4}  {:<24} {:<10} {:>6} tok  {:>6.1}s  {}\n",
                    r.iteration,
                    r.capability,
                    r.outcome,
                    r.input_tokens + r.output_tokens,
                    r.duration_ms as f64 / 1000.0,
                    r.summary
                ));
            }
            out.trim_end().to_string()
        }
        Reply::Event(event) => {
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

fn render_status(status: &StatusReply) -> String {
    let mut out = String::new();
    out.push_str(&format!("goal:       {}\n", status.goal));
    out.push_str(&format!("run state:  {}\n", status.run_state));
    if let Some(reason) = &status.pause_reason {
        out.push_str(&format!("paused:     {reason}\n"));
    }
    if let Some(reason) = &status.waiting {
        out.push_str(&format!("waiting:    {reason}\n"));
    }
    if status.failures > 0 {
        out.push_str(&format!(
            "failures:   {} attempt(s) abandoned in a row\n",
            status.failures
        ));
    }
    let in_flight = status
        .in_flight
        .map(|n| format!(" (iteration {n} in flight)"))
        .unwrap_or_default();
    let o = status.outcomes;
    out.push_str(&format!(
        "iterations: {} committed{in_flight}: {} change(s) kept, {} no-change, {} rejected, {} failed\n",
        status.iteration, o.kept, o.no_change, o.rejected, o.failed
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
