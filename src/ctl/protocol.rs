//! The control protocol's wire types: length-delimited JSON frames, each a
//! versioned request with an id, answered by a response with the same id that
//! carries either a reply or a typed error (`watch` answers with a stream of
//! event responses). These are the only serde types of the control plane; the
//! server converts them to actor messages at the edge. New commands are new
//! variants; old clients keep working.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

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
    Tree,
    /// A typed message to one actor; `args` are its named arguments.
    Send {
        actor: String,
        message: String,
        #[serde(default)]
        args: Map<String, Value>,
    },
    /// The messages `send` can deliver to one actor.
    Messages {
        actor: String,
    },
    Pause,
    Resume,
    Stop {
        #[serde(default)]
        now: bool,
    },
    Goal {
        text: String,
    },
    Approvals,
    Approve {
        id: String,
    },
    Reject {
        id: String,
        #[serde(default)]
        reason: Option<String>,
    },
    Checkpoint,
    Fault {
        actor: String,
        fault: String,
    },
    /// Stream events until the client or the daemon goes away.
    Watch,
    History {
        #[serde(default)]
        last: Option<usize>,
    },
    /// Move the agent branch onto the repository's HEAD (paused, idle run).
    Rebase,
    /// Write a consistent copy of the store to `to` (an absolute path).
    Backup {
        to: String,
    },
    /// Stage `binary` (an absolute path) as a release, make it current,
    /// and hand over to it: the daemon checkpoints and exits, and its
    /// keeper starts the release on probation.
    Upgrade {
        binary: String,
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

/// Every reply is one JSON object; `--json` prints it as it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    /// Boxed: by far the largest reply, which would size every other.
    Status(Box<StatusReply>),
    Tree(TreeReply),
    Sent {
        actor: String,
        message: String,
        reply: Value,
    },
    Messages {
        actor: String,
        messages: Vec<MessageInfo>,
    },
    Approvals {
        approvals: Vec<ApprovalInfo>,
    },
    Checkpoint {
        iterations: u64,
        message: String,
    },
    History {
        iterations: Vec<HistoryEntry>,
    },
    Event(WireEvent),
    Done {
        message: String,
    },
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
    /// Why the run is paused, while it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_reason: Option<String>,
    /// Why the run waits for a budget, while it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
    /// Attempts abandoned in a row since the last commit.
    #[serde(default)]
    pub failures: u32,
    /// Committed iterations by outcome: changes kept, no-change, rejected, failed.
    #[serde(default)]
    pub outcomes: OutcomeCounts,
    pub backend: String,
    pub mode: String,
    pub actors: Vec<ActorStatus>,
    /// The release running, when a keeper runs it (`[upgrade] enabled`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<ReleaseStatus>,
}

/// The release a keeper runs: which, of what version, permanent or on
/// probation, and since when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseStatus {
    pub name: String,
    /// The running binary's package version.
    pub version: String,
    /// The commit of the agent's own source it was built from, when it is
    /// a release this run built.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// `false` while on probation.
    pub permanent: bool,
    /// When this release started (ms since the epoch).
    pub since_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActorStatus {
    pub name: String,
    /// running | restarting | stopped
    pub status: String,
    pub restarts: u32,
    pub last_error: Option<String>,
}

/// Committed iterations by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct OutcomeCounts {
    pub kept: u64,
    pub no_change: u64,
    pub rejected: u64,
    pub failed: u64,
}

/// `agent ctl tree`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TreeReply {
    pub strategy: String,
    pub max_restarts: u32,
    pub within: String,
    pub children: Vec<TreeChild>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TreeChild {
    pub name: String,
    pub restart: String,
    pub status: String,
    pub restarts: u32,
    pub uptime_ms: Option<u64>,
    pub last_error: Option<String>,
}

/// One message `send` can deliver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageInfo {
    pub name: String,
    /// query (answers, changes nothing) | command (changes something)
    pub kind: String,
    pub args: Vec<ArgInfo>,
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArgInfo {
    pub name: String,
    /// string | integer | number | string list
    pub kind: String,
    pub required: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalInfo {
    pub id: String,
    pub iteration: u64,
    /// pending | approved | rejected | expired
    pub state: String,
    pub summary: String,
    pub files: Vec<String>,
    pub fitness_before: Option<f64>,
    pub fitness_after: f64,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub iteration: u64,
    pub capability: String,
    pub outcome: String,
    pub fitness_before: Option<f64>,
    pub fitness_after: Option<f64>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
    pub duration_ms: u64,
    pub commit: Option<String>,
    pub summary: String,
    /// What refused the change: a safety rule's name, or `validation`,
    /// `fitness`, `approval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The rules the change was checked against.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<String>,
    /// The change's commit in the variant archive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// The iteration's other candidates (`[run] candidates` > 1), archived
    /// beside the one committed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub others: Vec<OtherCandidate>,
}

/// A candidate of an iteration that was not committed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OtherCandidate {
    pub slot: u32,
    /// The iteration whose committed change it is a sibling of.
    pub sibling_of: u64,
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    pub fitness_after: Option<f64>,
    /// Its change's commit in the variant archive, when it made one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// One event of `agent ctl watch`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireEvent {
    /// iteration_started | step | iteration_committed | iteration_abandoned |
    /// permit_waiting | run_finished | run_paused | actor_failed | actor_restarted |
    /// escalated | approval_requested | goal_changed | daemon_stopping
    pub event: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iteration: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// The step of an iteration, for `step` events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// For `iteration_committed`: what refused the change, if anything did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    pub detail: String,
    pub at_ms: u64,
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
    /// The frame or request could not be read.
    BadRequest,
    VersionMismatch,
    UnknownActor,
    UnknownMessage,
    /// A message's arguments are missing or of the wrong kind.
    BadArguments,
    /// The actor is being restarted; retry after `retry_after_ms`.
    ActorRestarting,
    /// The actor did not answer in time.
    Timeout,
    NotPermitted,
    /// The request was understood and refused (e.g. approving an unknown id).
    Refused,
    Internal,
}

impl ErrorKind {
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::VersionMismatch => "version_mismatch",
            ErrorKind::UnknownActor => "unknown_actor",
            ErrorKind::UnknownMessage => "unknown_message",
            ErrorKind::BadArguments => "bad_arguments",
            ErrorKind::ActorRestarting => "actor_restarting",
            ErrorKind::Timeout => "timeout",
            ErrorKind::NotPermitted => "not_permitted",
            ErrorKind::Refused => "refused",
            ErrorKind::Internal => "internal",
        }
    }
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

    #[test]
    fn error_kinds_serialize_as_their_names() {
        for kind in [
            ErrorKind::ActorRestarting,
            ErrorKind::BadArguments,
            ErrorKind::UnknownMessage,
        ] {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.name());
        }
    }
}
