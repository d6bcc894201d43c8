//! The `claude-cli` backend: runs `claude -p <prompt> --output-format json
//! --permission-mode <mode>` in the worktree and reads the result JSON. Known
//! field problems are designed for: a hang is cut by the job timeout and the
//! whole process group is killed; `is_error: true` is a failure even when the
//! subtype says `success`; anything that is not the result JSON is a failed
//! job that keeps the text.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use tokio::sync::oneshot;

use super::{Cognition, Job};
use crate::messages::{Capability, JobOutcome, JobStatus, Usage};
use crate::process::{self, CommandSpec, Ending};

/// The single capability of a model backend: one focused change.
pub const CAPABILITY: &str = "claude-edit";

/// The fields of Claude Code's result JSON that the agent uses.
#[derive(Debug, Deserialize)]
struct ResultJson {
    #[serde(default)]
    result: Option<String>,
    #[serde(default)]
    is_error: bool,
    #[serde(default)]
    subtype: Option<String>,
    #[serde(default)]
    usage: Option<UsageJson>,
    #[serde(default)]
    total_cost_usd: Option<f64>,
    #[serde(default)]
    session_id: Option<String>,
}

#[derive(Debug, Deserialize)]
struct UsageJson {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
}

/// Runs Claude Code's CLI directly.
#[derive(Debug, Clone)]
pub struct ClaudeCli {
    binary: PathBuf,
    permission_mode: String,
    model: Option<String>,
    env: Vec<(String, String)>,
}

impl ClaudeCli {
    pub fn new(binary: PathBuf, permission_mode: String, model: Option<String>) -> Self {
        ClaudeCli {
            binary,
            permission_mode,
            model,
            env: Vec::new(),
        }
    }

    /// Extra environment for every claude process (e.g. `CLAUDE_CONFIG_DIR`).
    pub fn with_env(mut self, env: Vec<(String, String)>) -> Self {
        self.env = env;
        self
    }

    fn command(&self, job: &Job, prompt: &str) -> CommandSpec {
        self.command_in_mode(job, prompt, &self.permission_mode)
    }

    fn command_in_mode(&self, job: &Job, prompt: &str, permission_mode: &str) -> CommandSpec {
        let mut args = vec![
            "-p".to_string(),
            prompt.to_string(),
            "--output-format".into(),
            "json".into(),
            "--permission-mode".into(),
            permission_mode.to_string(),
        ];
        if let Some(model) = &self.model {
            args.extend(["--model".to_string(), model.clone()]);
        }
        CommandSpec {
            program: self.binary.clone(),
            args,
            cwd: job.cwd.clone(),
            env: self.env.clone(),
            timeout: job.timeout,
        }
    }
}

#[async_trait]
impl Cognition for ClaudeCli {
    fn name(&self) -> &'static str {
        "claude-cli"
    }

    fn capabilities(&self) -> Vec<Capability> {
        vec![Capability {
            id: CAPABILITY.into(),
            description: "ask Claude Code for one focused change toward the goal".into(),
        }]
    }

    async fn run(&self, job: Job, started: oneshot::Sender<i32>) -> JobOutcome {
        let prompt = job.prompt.clone().unwrap_or_default();
        let spec = self.command(&job, &prompt);
        let running = match process::start(&spec) {
            Ok(running) => running,
            Err(error) => {
                return outcome(
                    job.id,
                    JobStatus::Failed,
                    String::new(),
                    Some(error.to_string()),
                );
            }
        };
        if let Some(group) = running.process_group() {
            let _ = started.send(group);
        }
        let finished = running.wait().await;
        if finished.ending == Ending::TimedOut {
            return outcome(
                job.id,
                JobStatus::Timeout,
                String::new(),
                Some(format!(
                    "claude did not finish within {}; its process group was killed",
                    humantime::format_duration(job.timeout)
                )),
            );
        }
        interpret(job.id, &finished.stdout, &finished.stderr, finished.ending)
    }

    async fn research(&self, question: &str, cwd: &Path, timeout: Duration) -> Option<JobOutcome> {
        // Research must not edit the worktree: plan mode is read-only.
        let job = Job {
            id: 0,
            capability: "research".into(),
            prompt: None,
            cwd: cwd.to_path_buf(),
            timeout,
        };
        let spec = self.command_in_mode(&job, question, "plan");
        let finished = match process::run(&spec).await {
            Ok(finished) => finished,
            Err(error) => {
                return Some(outcome(
                    0,
                    JobStatus::Failed,
                    String::new(),
                    Some(error.to_string()),
                ));
            }
        };
        if finished.ending == Ending::TimedOut {
            return Some(outcome(
                0,
                JobStatus::Timeout,
                String::new(),
                Some("research timed out".into()),
            ));
        }
        Some(interpret(
            0,
            &finished.stdout,
            &finished.stderr,
            finished.ending,
        ))
    }
}

fn outcome(job_id: u64, status: JobStatus, output: String, error: Option<String>) -> JobOutcome {
    JobOutcome {
        job_id,
        status,
        output,
        error,
        usage: Usage::default(),
        session_id: None,
    }
}

/// Turns what `claude -p --output-format json` printed into an outcome.
pub fn interpret(job_id: u64, stdout: &str, stderr: &str, ending: Ending) -> JobOutcome {
    let text = stdout.trim();
    // The result is one JSON object; with --verbose more lines may precede it.
    let parsed = serde_json::from_str::<ResultJson>(text).or_else(|error| {
        text.lines()
            .last()
            .ok_or(error)
            .and_then(|line| serde_json::from_str::<ResultJson>(line.trim()))
    });
    let Ok(result) = parsed else {
        let code = match ending {
            Ending::Exited(Some(code)) => format!("status {code}"),
            _ => "a signal".to_string(),
        };
        let shown = if text.is_empty() { stderr.trim() } else { text };
        return outcome(
            job_id,
            JobStatus::Failed,
            text.to_string(),
            Some(if shown.is_empty() {
                format!("claude exited with {code} and printed no result")
            } else {
                format!(
                    "claude exited with {code} and printed no result JSON: {}",
                    shown.chars().take(300).collect::<String>()
                )
            }),
        );
    };
    let usage = Usage {
        input_tokens: result.usage.as_ref().map_or(0, |u| u.input_tokens),
        output_tokens: result.usage.as_ref().map_or(0, |u| u.output_tokens),
        cost_usd: result.total_cost_usd.unwrap_or(0.0),
    };
    let message = result.result.clone().unwrap_or_default();
    let subtype = result.subtype.clone().unwrap_or_default();
    let error = if result.is_error {
        Some(if message.is_empty() {
            format!("claude reported an error (subtype {subtype})")
        } else {
            message.clone()
        })
    } else if subtype != "success" {
        Some(format!("claude ended with subtype {subtype}"))
    } else if ending != Ending::Exited(Some(0)) {
        Some(format!("claude exited with {ending:?}"))
    } else {
        None
    };
    JobOutcome {
        job_id,
        status: if error.is_some() {
            JobStatus::Failed
        } else {
            JobStatus::Completed
        },
        output: message,
        error,
        usage,
        session_id: result.session_id,
    }
}

/// Asks `claude auth status` whether Claude Code is logged in.
pub async fn logged_in(binary: &Path) -> Result<bool, String> {
    let spec = CommandSpec {
        program: binary.to_path_buf(),
        args: vec!["auth".into(), "status".into()],
        cwd: std::env::temp_dir(),
        env: Vec::new(),
        timeout: Duration::from_secs(15),
    };
    let finished = process::run(&spec).await.map_err(|e| e.to_string())?;
    if finished.ending == Ending::TimedOut {
        return Err("it did not answer within 15s".into());
    }
    #[derive(Deserialize)]
    struct AuthStatus {
        #[serde(rename = "loggedIn")]
        logged_in: bool,
    }
    serde_json::from_str::<AuthStatus>(finished.stdout.trim())
        .map(|status| status.logged_in)
        .map_err(|_| format!("it printed no JSON with `loggedIn`: {}", finished.tail(2)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_error_is_a_failure_even_with_subtype_success() {
        let stdout = r#"{"type":"result","subtype":"success","is_error":true,"result":"Not logged in · Please run /login","session_id":"s","total_cost_usd":0,"usage":{"input_tokens":0,"output_tokens":0}}"#;
        let outcome = interpret(1, stdout, "", Ending::Exited(Some(1)));
        assert_eq!(outcome.status, JobStatus::Failed);
        assert_eq!(
            outcome.error.as_deref(),
            Some("Not logged in · Please run /login")
        );
    }

    #[test]
    fn usage_and_cost_are_read_from_the_result() {
        let stdout = r#"{"type":"result","subtype":"success","is_error":false,"result":"ok","session_id":"abc","total_cost_usd":0.5,"usage":{"input_tokens":10,"output_tokens":20}}"#;
        let outcome = interpret(1, stdout, "", Ending::Exited(Some(0)));
        assert_eq!(outcome.status, JobStatus::Completed);
        assert_eq!(outcome.usage.input_tokens, 10);
        assert_eq!(outcome.usage.output_tokens, 20);
        assert_eq!(outcome.usage.cost_usd, 0.5);
        assert_eq!(outcome.session_id.as_deref(), Some("abc"));
    }

    #[test]
    fn garbage_is_a_failed_job_that_keeps_the_text() {
        let outcome = interpret(1, "this is not json {", "", Ending::Exited(Some(0)));
        assert_eq!(outcome.status, JobStatus::Failed);
        assert_eq!(outcome.output, "this is not json {");
        assert!(outcome.error.unwrap().contains("no result JSON"));
    }
}
