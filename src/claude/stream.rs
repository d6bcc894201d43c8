//! Claude Code's `--output-format stream-json --verbose` events, read one
//! line at a time: the few facts of each kind the agent uses (sessions,
//! turns, tools, tokens, API retries, rate limits, heartbeats, the result),
//! the job's [`JobProgress`] folded from them, and the stall clock they
//! keep.
//!
//! A small reader of our own rather than one of the unofficial crates that
//! type the whole protocol: the agent needs a dozen fields, the protocol
//! grows with every CLI release, and an unknown event must never be an error.

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use super::ResultJson;
use crate::domain::JobProgress;

/// One event of the stream, as far as the agent reads it.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// `system/init`: the session starts.
    Init {
        session_id: Option<String>,
        mcp_servers: Vec<String>,
    },
    /// `assistant`: one model turn, with the tools it uses and its tokens.
    Assistant {
        tools: Vec<String>,
        input_tokens: u64,
        output_tokens: u64,
    },
    /// `system/api_retry`: the CLI waits `delay` before it tries the API
    /// again; waiting, not stalled.
    ApiRetry {
        attempt: u64,
        max_retries: u64,
        delay: Duration,
        error_status: Option<String>,
    },
    /// `rate_limit_event`: `status` is allowed, allowed_warning or rejected;
    /// `resets_at_ms` when the limit lifts.
    RateLimit {
        status: String,
        resets_at_ms: Option<u64>,
    },
    /// `tool_progress`: a running tool's heartbeat.
    ToolProgress { tool: Option<String> },
    /// `system/status`, e.g. while the conversation is compacted.
    Status { status: Option<String> },
    /// `result`: the end of the job.
    Result(Box<ResultJson>),
    /// Anything else (`user`, `stream_event`, kinds of later releases).
    Other(String),
}

impl Event {
    /// The event's kind as shown in progress: `type` or `type/subtype`.
    pub fn kind(&self) -> String {
        match self {
            Event::Init { .. } => "system/init".into(),
            Event::Assistant { .. } => "assistant".into(),
            Event::ApiRetry { .. } => "system/api_retry".into(),
            Event::RateLimit { .. } => "rate_limit_event".into(),
            Event::ToolProgress { .. } => "tool_progress".into(),
            Event::Status { .. } => "system/status".into(),
            Event::Result(_) => "result".into(),
            Event::Other(kind) => kind.clone(),
        }
    }
}

/// Reads one line of output; `None` when it is not a JSON event (a line of
/// text a wrapper or a crash printed).
pub fn parse(line: &str) -> Option<Event> {
    let value: Value = serde_json::from_str(line.trim()).ok()?;
    let kind = value.get("type")?.as_str()?.to_string();
    let subtype = value.get("subtype").and_then(Value::as_str);
    Some(match (kind.as_str(), subtype) {
        ("result", _) => Event::Result(Box::new(ResultJson::deserialize(&value).ok()?)),
        ("system", Some("init")) => Event::Init {
            session_id: text(&value, "session_id"),
            mcp_servers: mcp_servers(&value),
        },
        ("system", Some("api_retry")) => Event::ApiRetry {
            attempt: number(&value, "attempt").unwrap_or(0),
            max_retries: number(&value, "max_retries").unwrap_or(0),
            delay: Duration::from_millis(number(&value, "retry_delay_ms").unwrap_or(0)),
            error_status: value.get("error_status").and_then(scalar_text),
        },
        ("system", Some("status")) => Event::Status {
            status: text(&value, "status"),
        },
        ("assistant", _) => assistant(&value),
        ("rate_limit_event", _) => rate_limit(&value),
        ("tool_progress", _) => Event::ToolProgress {
            tool: text(&value, "tool_name"),
        },
        (_, Some(subtype)) => Event::Other(format!("{kind}/{subtype}")),
        _ => Event::Other(kind),
    })
}

fn text(value: &Value, key: &str) -> Option<String> {
    value.get(key).and_then(Value::as_str).map(str::to_string)
}

fn number(value: &Value, key: &str) -> Option<u64> {
    value.get(key).and_then(Value::as_u64)
}

/// A status the CLI prints as a number or a string, as text.
fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

fn mcp_servers(value: &Value) -> Vec<String> {
    value
        .get("mcp_servers")
        .and_then(Value::as_array)
        .map(|servers| {
            servers
                .iter()
                .filter_map(|server| {
                    let name = server.get("name")?.as_str()?;
                    let status = server.get("status").and_then(Value::as_str).unwrap_or("?");
                    Some(format!("{name}: {status}"))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn assistant(value: &Value) -> Event {
    let message = value.get("message");
    let tools = message
        .and_then(|m| m.get("content"))
        .and_then(Value::as_array)
        .map(|blocks| {
            blocks
                .iter()
                .filter(|block| block.get("type").and_then(Value::as_str) == Some("tool_use"))
                .filter_map(|block| text(block, "name"))
                .collect()
        })
        .unwrap_or_default();
    let usage = message.and_then(|m| m.get("usage"));
    let tokens = |key| usage.and_then(|u| number(u, key)).unwrap_or(0);
    Event::Assistant {
        tools,
        input_tokens: tokens("input_tokens"),
        output_tokens: tokens("output_tokens"),
    }
}

/// `rate_limit_event`, with its facts under `rate_limit_info` (as the CLI
/// prints them) or at the top level; `resetsAt` is in seconds.
fn rate_limit(value: &Value) -> Event {
    let info = value.get("rate_limit_info").unwrap_or(value);
    Event::RateLimit {
        status: text(info, "status").unwrap_or_default(),
        resets_at_ms: number(info, "resetsAt").map(|seconds| seconds.saturating_mul(1000)),
    }
}

/// Folds an event into the job's progress, seen at `now_ms`.
pub fn note(progress: &mut JobProgress, event: &Event, now_ms: u64) {
    progress.events += 1;
    progress.last_event = Some(event.kind());
    progress.last_event_at_ms = Some(now_ms);
    progress.waiting = None;
    match event {
        Event::Init {
            session_id,
            mcp_servers,
        } => {
            progress.session_id.clone_from(session_id);
            progress.mcp_servers.clone_from(mcp_servers);
        }
        Event::Assistant {
            tools,
            input_tokens,
            output_tokens,
        } => {
            progress.turns += 1;
            progress.input_tokens += input_tokens;
            progress.output_tokens += output_tokens;
            if let Some(tool) = tools.last() {
                progress.last_tool = Some(tool.clone());
            }
        }
        Event::ApiRetry {
            attempt,
            max_retries,
            delay,
            error_status,
        } => {
            progress.waiting = Some(format!(
                "API retry {attempt}/{max_retries} in {}{}",
                humantime::format_duration(*delay),
                error_status
                    .as_ref()
                    .map(|s| format!(" (status {s})"))
                    .unwrap_or_default()
            ));
        }
        Event::Status {
            status: Some(status),
        } => progress.waiting = Some(status.clone()),
        Event::ToolProgress { tool: Some(tool) } => progress.last_tool = Some(tool.clone()),
        _ => {}
    }
}

/// When a job that prints nothing counts as stalled: `stall` after its last
/// event, stretched by what that event announced (an API retry's delay, a
/// compaction). The job's own deadline is kept apart as the outer bound.
#[derive(Debug, Clone, Copy)]
pub struct StallClock {
    stall: Duration,
    quiet_allowed: Duration,
}

impl StallClock {
    pub fn new(stall: Duration) -> StallClock {
        StallClock {
            stall,
            quiet_allowed: stall,
        }
    }

    /// An event came: the clock starts again, with what it announced.
    pub fn saw(&mut self, event: &Event) {
        self.quiet_allowed = match event {
            Event::ApiRetry { delay, .. } => self.stall + *delay,
            Event::Status {
                status: Some(status),
            } if status == "compacting" => self.stall * 2,
            _ => self.stall,
        };
    }

    /// How long the job may stay quiet after its last event.
    pub fn quiet_allowed(&self) -> Duration {
        self.quiet_allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_events_of_a_real_session_are_read() {
        let init = r#"{"type":"system","subtype":"init","cwd":"/w","session_id":"s-1","tools":["Bash"],"mcp_servers":[{"name":"time","status":"failed"}],"model":"m","permissionMode":"acceptEdits"}"#;
        assert_eq!(
            parse(init),
            Some(Event::Init {
                session_id: Some("s-1".into()),
                mcp_servers: vec!["time: failed".into()],
            })
        );
        let turn = r#"{"type":"assistant","message":{"content":[{"type":"text","text":"x"},{"type":"tool_use","id":"t","name":"Edit","input":{}}],"usage":{"input_tokens":7,"output_tokens":3}},"session_id":"s-1"}"#;
        assert_eq!(
            parse(turn),
            Some(Event::Assistant {
                tools: vec!["Edit".into()],
                input_tokens: 7,
                output_tokens: 3
            })
        );
        let retry = r#"{"type":"system","subtype":"api_retry","attempt":2,"max_retries":10,"retry_delay_ms":4000,"error_status":529}"#;
        assert!(matches!(
            parse(retry),
            Some(Event::ApiRetry { attempt: 2, delay, error_status: Some(status), .. })
                if delay == Duration::from_secs(4) && status == "529"
        ));
        let limit = r#"{"type":"rate_limit_event","rate_limit_info":{"status":"rejected","resetsAt":1700000000}}"#;
        assert_eq!(
            parse(limit),
            Some(Event::RateLimit {
                status: "rejected".into(),
                resets_at_ms: Some(1_700_000_000_000)
            })
        );
        let result = r#"{"type":"result","subtype":"success","is_error":false,"result":"ok","session_id":"s-1"}"#;
        assert!(
            matches!(parse(result), Some(Event::Result(r)) if r.result.as_deref() == Some("ok"))
        );
        assert_eq!(
            parse(r#"{"type":"user","message":{}}"#),
            Some(Event::Other("user".into()))
        );
        assert_eq!(parse("Loading..."), None);
        assert_eq!(parse(r#"{"no":"type"}"#), None);
    }

    #[test]
    fn progress_counts_turns_tokens_and_the_last_tool() {
        let mut progress = JobProgress::default();
        for line in [
            r#"{"type":"system","subtype":"init","session_id":"s-1","mcp_servers":[]}"#,
            r#"{"type":"assistant","message":{"content":[{"type":"tool_use","name":"Read"}],"usage":{"input_tokens":10,"output_tokens":1}}}"#,
            r#"{"type":"user","message":{}}"#,
            r#"{"type":"assistant","message":{"content":[{"type":"tool_use","name":"Bash"}],"usage":{"input_tokens":5,"output_tokens":2}}}"#,
            r#"{"type":"system","subtype":"api_retry","attempt":1,"max_retries":10,"retry_delay_ms":2000,"error_status":529}"#,
        ] {
            note(&mut progress, &parse(line).unwrap(), 1_000);
        }
        assert_eq!(progress.session_id.as_deref(), Some("s-1"));
        assert_eq!((progress.turns, progress.events), (2, 5));
        assert_eq!((progress.input_tokens, progress.output_tokens), (15, 3));
        assert_eq!(progress.last_tool.as_deref(), Some("Bash"));
        assert_eq!(progress.last_event.as_deref(), Some("system/api_retry"));
        assert_eq!(
            progress.waiting.as_deref(),
            Some("API retry 1/10 in 2s (status 529)")
        );
        assert_eq!(progress.quiet_seconds(4_500), Some(3));
    }

    #[test]
    fn an_api_retry_stretches_the_stall_clock_by_its_delay_and_the_next_event_resets_it() {
        let stall = Duration::from_secs(60);
        let mut clock = StallClock::new(stall);
        assert_eq!(clock.quiet_allowed(), stall);
        clock.saw(&Event::ApiRetry {
            attempt: 1,
            max_retries: 10,
            delay: Duration::from_secs(300),
            error_status: None,
        });
        assert_eq!(clock.quiet_allowed(), Duration::from_secs(360));
        clock.saw(&Event::Other("user".into()));
        assert_eq!(clock.quiet_allowed(), stall);
    }
}
