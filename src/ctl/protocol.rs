//! The control protocol's wire types: length-delimited JSON frames, each a
//! versioned request with an id, answered by a response with the same id that
//! carries either a reply or a typed error. These are the only serde types of
//! the control plane; the server converts them to actor messages at the edge.
//! New commands are new variants; old clients keep working.

use serde::{Deserialize, Serialize};

/// Bumped when a change would make an old client misread a reply.
pub const PROTOCOL_VERSION: u32 = 1;
/// Largest frame either side accepts.
pub const MAX_FRAME_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub version: u32,
    pub id: u64,
    pub command: Command,
    /// W3C trace context of the caller, so what it causes joins its trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    Status,
    Pause,
    Resume,
    Stop {
        #[serde(default)]
        now: bool,
    },
    Fault {
        actor: String,
        fault: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub version: u32,
    /// The request's id; 0 when the request could not be read.
    pub id: u64,
    pub result: Outcome,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok(Reply),
    Error(WireError),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    Status(StatusReply),
    Done { message: String },
}

/// `agent ctl status`: also the shape of `status --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReply {
    pub goal: String,
    /// running | paused | stopping | finished
    pub run_state: String,
    /// Committed iterations.
    pub iteration: u64,
    pub in_flight: Option<u64>,
    pub fitness: Option<f64>,
    pub backend: String,
    pub mode: String,
    pub actors: Vec<ActorStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActorStatus {
    pub name: String,
    /// running | restarting | stopped
    pub status: String,
    pub restarts: u32,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireError {
    pub kind: ErrorKind,
    pub message: String,
    /// When retrying may help (an actor restarting), after how long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    BadRequest,
    VersionMismatch,
    UnknownActor,
    NotPermitted,
    Unavailable,
    Internal,
}

impl WireError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        WireError {
            kind,
            message: message.into(),
            retry_after_ms: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_as_plain_json() {
        let request = Request {
            version: PROTOCOL_VERSION,
            id: 7,
            command: Command::Fault {
                actor: "learner".into(),
                fault: "panic".into(),
            },
            traceparent: None,
        };
        let text = serde_json::to_string(&request).unwrap();
        assert_eq!(
            text,
            r#"{"version":1,"id":7,"command":{"name":"fault","actor":"learner","fault":"panic"}}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), request);
    }
}
