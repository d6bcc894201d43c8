//! The Claude Code CLI as a program the agent runs unattended: the command
//! line (`claude -p <task> --output-format stream-json --verbose` with the
//! job's permission mode, its locked-down tools, pinned setting sources and
//! only the MCP servers the configuration names), its events read as they
//! come ([`stream`]), and its end: the first `result` ends the job, silence
//! past the stall clock or the job's deadline kills its process group.
//! Shared by the claude-cli backend and `agent mcp-serve`.
//!
//! Known field problems designed for: `claude -p` can hang with no output
//! (stall clock, deadline, group killed); it can print its result and not
//! exit (a background task holds the pipes: the result ends the job after a
//! grace); SIGTERM gives exit 143 and no JSON (a failed run, not a crash);
//! `is_error: true` is a failure even with subtype `success`; a rejected
//! rate limit is a wait, not a failure of the job's own.

pub mod login;
pub mod stream;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{Semaphore, watch};

pub use login::{CONFIG_DIR_VAR, ConfigDirs, JobConfigDir, Login};
use stream::{Event, StallClock};

use crate::domain::{ClaudeFacts, JobOutcome, JobProgress, JobStatus, PermissionMode, Usage};
use crate::process::{self, CommandSpec, Ending};
use crate::sandbox::{Reach, Sandbox};

/// How long a job that printed its result may take to exit by itself
/// before its process group is ended.
const RESULT_GRACE: Duration = Duration::from_secs(3);

/// One run of `claude -p`.
#[derive(Debug, Clone, PartialEq)]
pub struct Invocation {
    pub task: String,
    pub cwd: PathBuf,
    /// Passed to `--permission-mode` by its name.
    pub permission_mode: PermissionMode,
    pub model: Option<String>,
    pub max_turns: Option<u32>,
    pub max_budget_usd: Option<f64>,
    pub append_system_prompt: Option<String>,
    /// Continue this session (`--resume=<id>`), in the config directory it
    /// was written in, instead of starting a new one.
    pub resume: Option<String>,
    pub timeout: Duration,
    /// Names the job's own Claude config directory (e.g. its job id).
    pub label: String,
}

/// What every job may do and how long it may stay silent: the
/// `[cognition]` settings for running Claude Code unattended.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// `--allowedTools`: pre-approved tool uses.
    pub allowed_tools: Vec<String>,
    /// `--disallowedTools`: refused in every mode.
    pub disallowed_tools: Vec<String>,
    /// `--setting-sources`: which settings load; the workspace's own
    /// `.claude/` only when this names `project` or `local`.
    pub setting_sources: String,
    /// `--mcp-config`; with `--strict-mcp-config` always, so that no other
    /// MCP server (the workspace's `.mcp.json`) is loaded.
    pub mcp_config: Option<PathBuf>,
    /// No event for this long kills the job (stretched by what the last
    /// event announced: an API retry's delay, a compaction).
    pub stall_timeout: Duration,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            allowed_tools: Vec::new(),
            disallowed_tools: Vec::new(),
            setting_sources: "user".into(),
            mcp_config: None,
            stall_timeout: Duration::from_secs(300),
        }
    }
}

/// The fields of Claude Code's result JSON that the agent uses.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ResultJson {
    #[serde(default)]
    pub result: Option<String>,
    #[serde(default)]
    pub is_error: bool,
    #[serde(default)]
    pub subtype: Option<String>,
    #[serde(default)]
    pub session_id: Option<String>,
    #[serde(default)]
    pub num_turns: Option<u64>,
    #[serde(default)]
    pub duration_ms: Option<u64>,
    #[serde(default)]
    pub total_cost_usd: Option<f64>,
    #[serde(default)]
    pub usage: UsageJson,
    /// Tool uses Claude Code was refused.
    #[serde(default)]
    pub permission_denials: Vec<serde_json::Value>,
    /// The HTTP status of a failed API call.
    #[serde(default)]
    pub api_error_status: Option<serde_json::Value>,
}

impl ResultJson {
    /// What the agent records of the session: its id, turns, denials and
    /// the API's error status.
    pub fn facts(&self) -> ClaudeFacts {
        let mut denied_tools: Vec<String> = Vec::new();
        for denial in &self.permission_denials {
            if let Some(tool) = denial.get("tool_name").and_then(|t| t.as_str())
                && !denied_tools.iter().any(|seen| seen == tool)
            {
                denied_tools.push(tool.to_string());
            }
        }
        ClaudeFacts {
            session_id: self.session_id.clone(),
            turns: self.num_turns,
            permission_denials: self.permission_denials.len() as u64,
            api_error_status: self
                .api_error_status
                .as_ref()
                .filter(|status| !status.is_null())
                .map(|status| match status {
                    serde_json::Value::String(text) => text.clone(),
                    other => other.to_string(),
                }),
            denied_tools,
            rate_limited_until_ms: None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct UsageJson {
    #[serde(default)]
    pub input_tokens: u64,
    #[serde(default)]
    pub output_tokens: u64,
    #[serde(default)]
    pub cache_creation_input_tokens: u64,
    #[serde(default)]
    pub cache_read_input_tokens: u64,
}

/// How one run ended and what it printed.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub status: JobStatus,
    /// The parsed result, when the CLI printed one.
    pub result: Option<ResultJson>,
    /// Why the run counts as failed.
    pub error: Option<String>,
    /// What was printed that is not an event, kept when nothing else was.
    pub raw_output: String,
    /// What the events showed, up to the end.
    pub progress: JobProgress,
    /// A rejected rate limit: when it resets (ms since the epoch).
    pub rate_limited_until_ms: Option<u64>,
}

impl Run {
    pub fn usage(&self) -> Usage {
        self.result.as_ref().map_or_else(
            || Usage {
                input_tokens: self.progress.input_tokens,
                output_tokens: self.progress.output_tokens,
                cost_usd: 0.0,
            },
            |r| Usage {
                input_tokens: r.usage.input_tokens,
                output_tokens: r.usage.output_tokens,
                cost_usd: r.total_cost_usd.unwrap_or(0.0),
            },
        )
    }

    /// What the agent keeps of the session.
    pub fn facts(&self) -> ClaudeFacts {
        let mut facts = self
            .result
            .as_ref()
            .map(ResultJson::facts)
            .unwrap_or_default();
        if facts.session_id.is_none() {
            facts.session_id.clone_from(&self.progress.session_id);
        }
        facts.rate_limited_until_ms = self.rate_limited_until_ms;
        facts
    }

    pub fn into_outcome(self, job_id: u64) -> JobOutcome {
        let usage = self.usage();
        let claude = self.facts();
        let output = match self.result {
            Some(result) => result.result.unwrap_or_default(),
            None => self.raw_output,
        };
        JobOutcome {
            job_id,
            status: self.status,
            output,
            error: self.error,
            usage,
            claude,
        }
    }

    /// A job killed while it waited for its turn.
    pub fn killed_before_start() -> Run {
        Run::failed(
            JobStatus::Killed,
            "the job was killed before it started".into(),
        )
    }

    fn failed(status: JobStatus, error: String) -> Run {
        Run {
            status,
            result: None,
            error: Some(error),
            raw_output: String::new(),
            progress: JobProgress::default(),
            rate_limited_until_ms: None,
        }
    }
}

/// The configured claude executable.
#[derive(Debug, Clone)]
pub struct Cli {
    pub binary: crate::domain::Program,
    /// Extra environment for every claude process.
    pub env: Vec<(String, String)>,
    /// Where each job gets its own `CLAUDE_CONFIG_DIR`; `None` shares the
    /// user's (only for one job at a time).
    pub config_dirs: Option<ConfigDirs>,
    pub sandbox: Option<Sandbox>,
    pub policy: Policy,
    /// What jobs log in with, found when this was made.
    pub login: Login,
    /// One job at a time when the login rotates ([`Login::serial`]).
    serial: Arc<Semaphore>,
}

impl Cli {
    pub fn new(binary: crate::domain::Program) -> Cli {
        Cli {
            binary,
            env: Vec::new(),
            config_dirs: None,
            sandbox: None,
            policy: Policy::default(),
            login: Login::detect(),
            serial: Arc::new(Semaphore::new(1)),
        }
    }

    /// Every job with its own config directory under `config_dirs`, in
    /// `sandbox` when there is one, under `policy`.
    pub fn for_jobs(
        mut self,
        config_dirs: ConfigDirs,
        sandbox: Option<Sandbox>,
        policy: Policy,
    ) -> Cli {
        self.config_dirs = Some(config_dirs);
        self.sandbox = sandbox;
        self.policy = policy;
        self
    }

    /// The process to start, confined when there is a sandbox, with the
    /// job's own config directory when there are `config_dirs`: a new one,
    /// or for a resumed session the one it was written in. The directory is
    /// made on the blocking pool: file copies would otherwise hold a worker.
    pub async fn prepare(
        &self,
        invocation: &Invocation,
    ) -> Result<(CommandSpec, Option<JobConfigDir>), String> {
        let mut spec = self.command(invocation);
        let config_dir = match &self.config_dirs {
            Some(dirs) => {
                let (dirs, label, login) =
                    (dirs.clone(), invocation.label.clone(), self.login.clone());
                let resume = invocation.resume.clone();
                Some(
                    tokio::task::spawn_blocking(move || match resume {
                        Some(session) => dirs.of_session(&session, &login),
                        None => dirs.make(&label, &login),
                    })
                    .await
                    .map_err(|e| format!("cannot make the job's config directory: {e}"))??,
                )
            }
            None => None,
        };
        if let Some(dir) = &config_dir {
            spec.env.retain(|(key, _)| key != CONFIG_DIR_VAR);
            spec.env
                .push((CONFIG_DIR_VAR.into(), dir.dir.display().to_string()));
        }
        let spec = match &self.sandbox {
            Some(sandbox) => {
                let extra: Vec<&Path> = config_dir.iter().map(|d| d.dir.as_path()).collect();
                let readable: Vec<&Path> = config_dir
                    .iter()
                    .filter_map(|d| d.login.as_deref())
                    .collect();
                sandbox.wrap_reading(spec, Reach::Job, &extra, &readable)
            }
            None => spec,
        };
        Ok((spec, config_dir))
    }

    pub fn command(&self, invocation: &Invocation) -> CommandSpec {
        let mut args = vec![
            "-p".to_string(),
            invocation.task.clone(),
            "--output-format".into(),
            "stream-json".into(),
            "--verbose".into(),
            "--permission-mode".into(),
            invocation.permission_mode.to_string(),
        ];
        let mut option = |flag: &str, value: Option<String>| {
            if let Some(value) = value {
                args.extend([flag.to_string(), value]);
            }
        };
        option("--model", invocation.model.clone());
        option("--max-turns", invocation.max_turns.map(|n| n.to_string()));
        option(
            "--max-budget-usd",
            invocation.max_budget_usd.map(|usd| usd.to_string()),
        );
        option(
            "--append-system-prompt",
            invocation.append_system_prompt.clone(),
        );
        option(
            "--setting-sources",
            Some(self.policy.setting_sources.clone()),
        );
        option(
            "--mcp-config",
            self.policy
                .mcp_config
                .as_ref()
                .map(|p| p.display().to_string()),
        );
        if let Some(session) = &invocation.resume {
            args.push(format!("--resume={session}"));
        }
        args.push("--strict-mcp-config".into());
        // Variadic options last: each takes every argument up to the next flag.
        for (flag, tools) in [
            ("--allowedTools", &self.policy.allowed_tools),
            ("--disallowedTools", &self.policy.disallowed_tools),
        ] {
            if !tools.is_empty() {
                args.push(flag.into());
                args.extend(tools.iter().cloned());
            }
        }
        CommandSpec {
            program: self.binary.to_path_buf(),
            args,
            cwd: invocation.cwd.clone(),
            env: self.env.clone(),
            timeout: invocation.timeout,
        }
    }

    /// Runs one invocation to its end. `started` is awaited with the process
    /// group as soon as the process runs (to record it before waiting);
    /// `cancel` completing kills the group; `progress` gets every event's
    /// effect as it comes.
    pub async fn run(
        &self,
        invocation: &Invocation,
        started: impl FnOnce(i32) -> BoxFuture<'static, ()>,
        cancel: impl Future<Output = ()>,
        progress: &watch::Sender<JobProgress>,
    ) -> Run {
        // A rotating login is one process's at a time.
        let _turn = match self.login.serial() {
            true => self.serial.clone().acquire_owned().await.ok(),
            false => None,
        };
        let (spec, config_dir) = match self.prepare(invocation).await {
            Ok(prepared) => prepared,
            Err(error) => return Run::failed(JobStatus::Failed, error),
        };
        let mut running = match process::start(&spec) {
            Ok(running) => running,
            Err(error) => return Run::failed(JobStatus::Failed, error.to_string()),
        };
        if let Some(group) = running.process_group() {
            started(group).await;
        }
        let stdout = running.stream();
        let watched =
            watch_events(stdout, invocation.timeout, &self.policy, cancel, progress).await;
        let finished = match watched.end {
            End::Result | End::Closed => {
                running.end_within(RESULT_GRACE, Ending::Exited(None)).await
            }
            End::Stalled(_) | End::TimedOut => running.end_now(Ending::TimedOut).await,
            End::Cancelled => running.end_now(Ending::Cancelled).await,
        };
        if let Some(dir) = &config_dir {
            settle_login(dir).await;
        }
        if let Some(failure) =
            crate::sandbox::start_failure(self.sandbox.as_ref(), &spec, &finished)
        {
            return Run::failed(JobStatus::Failed, failure.to_string());
        }
        watched.into_run(&finished, invocation.timeout)
    }
}

/// Writes a login the job refreshed back to the one login file.
async fn settle_login(dir: &JobConfigDir) {
    let dir = dir.clone();
    match tokio::task::spawn_blocking(move || dir.settle()).await {
        Ok(Ok(true)) => {
            tracing::info!("a job refreshed the Claude login; written back to the login file")
        }
        Ok(Ok(false)) => {}
        Ok(Err(error)) => tracing::error!(%error, "the refreshed Claude login was not kept"),
        Err(error) => tracing::error!(%error, "the refreshed Claude login was not kept"),
    }
}

/// Why the agent stopped reading a job's events.
#[derive(Debug, Clone, PartialEq)]
enum End {
    /// The first `result` came.
    Result,
    /// Standard output closed without one.
    Closed,
    /// Nothing came for longer than the stall clock allowed.
    Stalled(String),
    TimedOut,
    Cancelled,
}

/// What the events of one job showed.
#[derive(Debug)]
struct Watched {
    end: End,
    result: Option<ResultJson>,
    progress: JobProgress,
    rate_limited_until_ms: Option<u64>,
    /// Lines that were not events (a crash's text, a wrapper's).
    other_lines: Vec<String>,
}

/// Reads events until the first result, a stall, the deadline or a cancel.
async fn watch_events(
    stdout: Option<tokio::process::ChildStdout>,
    timeout: Duration,
    policy: &Policy,
    cancel: impl Future<Output = ()>,
    progress: &watch::Sender<JobProgress>,
) -> Watched {
    let mut watched = Watched {
        end: End::Closed,
        result: None,
        progress: JobProgress::default(),
        rate_limited_until_ms: None,
        other_lines: Vec::new(),
    };
    let Some(stdout) = stdout else {
        return watched;
    };
    let mut lines = BufReader::new(stdout).lines();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut clock = StallClock::new(policy.stall_timeout);
    let mut last = Instant::now();
    tokio::pin!(cancel);
    watched.end = loop {
        let stall_at = tokio::time::Instant::from_std(last + clock.quiet_allowed());
        tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(line)) => {
                    last = Instant::now();
                    if watched.read(&line, &mut clock) {
                        progress.send_replace(watched.progress.clone());
                        break End::Result;
                    }
                    progress.send_replace(watched.progress.clone());
                }
                Ok(None) | Err(_) => break End::Closed,
            },
            () = tokio::time::sleep_until(stall_at) => break End::Stalled(stall_message(clock.quiet_allowed(), &watched.progress)),
            () = tokio::time::sleep_until(deadline) => break End::TimedOut,
            () = &mut cancel => break End::Cancelled,
        }
    };
    watched
}

/// `stalled: no output for 5m after <last event>`.
fn stall_message(quiet: Duration, progress: &JobProgress) -> String {
    format!(
        "stalled: no output for {} after {}; its process group was killed",
        humantime::format_duration(quiet),
        progress.last_event.as_deref().unwrap_or("its start")
    )
}

impl Watched {
    /// Takes one line in; says whether it was the result.
    fn read(&mut self, line: &str, clock: &mut StallClock) -> bool {
        let Some(event) = stream::parse(line) else {
            if !line.trim().is_empty() && self.other_lines.len() < 20 {
                self.other_lines.push(line.chars().take(300).collect());
            }
            return false;
        };
        clock.saw(&event);
        stream::note(&mut self.progress, &event, crate::store::now_ms());
        match event {
            Event::RateLimit {
                status,
                resets_at_ms,
            } if status == "rejected" => {
                self.rate_limited_until_ms =
                    Some(resets_at_ms.unwrap_or_else(|| crate::store::now_ms() + 60_000));
                false
            }
            Event::Result(result) => {
                self.result = Some(*result);
                true
            }
            _ => false,
        }
    }

    /// The run, judged by its result (not its exit code), else by how it
    /// ended.
    fn into_run(self, finished: &Finished, timeout: Duration) -> Run {
        let raw_output = self.other_lines.join("\n");
        let (status, error) = match (&self.end, &self.result) {
            (End::Stalled(why), _) => (JobStatus::Failed, Some(why.clone())),
            (End::TimedOut, _) => (
                JobStatus::Timeout,
                Some(format!(
                    "claude did not finish within {}; its process group was killed",
                    humantime::format_duration(timeout)
                )),
            ),
            (End::Cancelled, _) => (
                JobStatus::Killed,
                Some("the job was killed on request; its process group was killed".into()),
            ),
            (_, Some(result)) => judge(result, self.rate_limited_until_ms),
            (_, None) => (JobStatus::Failed, Some(no_result(finished, &raw_output))),
        };
        Run {
            status,
            result: self.result,
            error,
            raw_output,
            progress: self.progress,
            rate_limited_until_ms: self.rate_limited_until_ms,
        }
    }
}

use crate::process::Finished;

/// A result's verdict: `is_error` fails even with subtype `success`.
fn judge(result: &ResultJson, rate_limited_until_ms: Option<u64>) -> (JobStatus, Option<String>) {
    let message = result.result.clone().unwrap_or_default();
    let subtype = result.subtype.clone().unwrap_or_default();
    let error = if let Some(until) = rate_limited_until_ms {
        Some(format!(
            "rate-limited until {}",
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(until))
        ))
    } else if result.is_error {
        let status = result
            .facts()
            .api_error_status
            .map(|status| format!(" (API status {status})"))
            .unwrap_or_default();
        Some(if message.is_empty() {
            format!("claude reported an error (subtype {subtype}){status}")
        } else {
            format!("{}{status}", first_line(&message))
        })
    } else if subtype != "success" {
        Some(format!("claude ended with subtype {subtype}"))
    } else {
        None
    };
    let status = match error {
        Some(_) => JobStatus::Failed,
        None => JobStatus::Completed,
    };
    (status, error)
}

fn first_line(text: &str) -> &str {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or(text)
}

/// Why a job that printed no result failed: its first meaningful line.
fn no_result(finished: &Finished, other_lines: &str) -> String {
    let code = match finished.ending {
        Ending::Exited(Some(code)) => format!("status {code}"),
        _ => "a signal".to_string(),
    };
    let shown = if other_lines.trim().is_empty() {
        finished.first_error_line()
    } else {
        first_line(other_lines).chars().take(300).collect()
    };
    if shown == "(no output)" {
        format!("claude exited with {code} and printed no result")
    } else {
        format!("claude exited with {code} and printed no result: {shown}")
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

    /// The run the agent makes of these lines, ended as `ending`.
    fn run_of(lines: &[&str], end: End, ending: Ending) -> Run {
        let mut watched = Watched {
            end,
            result: None,
            progress: JobProgress::default(),
            rate_limited_until_ms: None,
            other_lines: Vec::new(),
        };
        let mut clock = StallClock::new(Duration::from_secs(60));
        for line in lines {
            if watched.read(line, &mut clock) {
                break;
            }
        }
        let finished = Finished {
            ending,
            stdout: String::new(),
            stderr: String::new(),
        };
        watched.into_run(&finished, Duration::from_secs(600))
    }

    #[test]
    fn is_error_is_a_failure_even_with_subtype_success() {
        let result = r#"{"type":"result","subtype":"success","is_error":true,"result":"Not logged in · Please run /login","session_id":"s","total_cost_usd":0,"usage":{"input_tokens":0,"output_tokens":0}}"#;
        let run = run_of(&[result], End::Result, Ending::Exited(Some(1)));
        assert_eq!(run.status, JobStatus::Failed);
        assert_eq!(
            run.error.as_deref(),
            Some("Not logged in · Please run /login")
        );
    }

    #[test]
    fn usage_cost_turns_and_denied_tools_are_read_from_the_result() {
        let result = r#"{"type":"result","subtype":"success","is_error":false,"result":"ok","session_id":"abc","num_turns":3,"duration_ms":900,"total_cost_usd":0.5,"usage":{"input_tokens":10,"output_tokens":20,"cache_read_input_tokens":7},"permission_denials":[{"tool_name":"Bash"},{"tool_name":"Write"},{"tool_name":"Bash"}]}"#;
        // Killed after its grace: the result decides, not the exit.
        let run = run_of(&[result], End::Result, Ending::Exited(None));
        assert_eq!(run.status, JobStatus::Completed);
        let outcome = run.into_outcome(1);
        assert_eq!(outcome.usage.input_tokens, 10);
        assert_eq!(outcome.usage.output_tokens, 20);
        assert_eq!(outcome.usage.cost_usd, 0.5);
        assert_eq!(outcome.claude.session_id.as_deref(), Some("abc"));
        assert_eq!(outcome.claude.turns, Some(3));
        assert_eq!(outcome.claude.permission_denials, 3);
        assert_eq!(outcome.claude.denied_tools, ["Bash", "Write"]);
    }

    #[test]
    fn a_rejected_rate_limit_is_kept_with_its_reset() {
        let run = run_of(
            &[
                r#"{"type":"system","subtype":"init","session_id":"s-1"}"#,
                r#"{"type":"rate_limit_event","rate_limit_info":{"status":"allowed_warning","resetsAt":1700000000}}"#,
                r#"{"type":"rate_limit_event","rate_limit_info":{"status":"rejected","resetsAt":1800000000}}"#,
                r#"{"type":"result","subtype":"success","is_error":true,"result":"Claude AI usage limit reached|1800000000"}"#,
            ],
            End::Result,
            Ending::Exited(Some(1)),
        );
        assert_eq!(run.status, JobStatus::Failed);
        assert_eq!(run.rate_limited_until_ms, Some(1_800_000_000_000));
        assert!(
            run.error
                .unwrap()
                .starts_with("rate-limited until 2027-01-15")
        );
    }

    #[test]
    fn garbage_is_a_failed_run_that_keeps_the_text() {
        let run = run_of(
            &["Loading...", "this is not json {"],
            End::Closed,
            Ending::Exited(Some(0)),
        );
        assert_eq!(run.status, JobStatus::Failed);
        assert_eq!(
            run.error.as_deref(),
            Some("claude exited with status 0 and printed no result: Loading...")
        );
        assert_eq!(run.into_outcome(1).output, "Loading...\nthis is not json {");
    }

    #[test]
    fn a_stall_names_the_last_event() {
        let run = run_of(
            &[r#"{"type":"system","subtype":"init","session_id":"s-1"}"#],
            End::Stalled(stall_message(
                Duration::from_secs(300),
                &JobProgress {
                    last_event: Some("system/init".into()),
                    ..JobProgress::default()
                },
            )),
            Ending::TimedOut,
        );
        assert_eq!(run.status, JobStatus::Failed);
        assert!(
            run.error
                .unwrap()
                .starts_with("stalled: no output for 5m after system/init")
        );
        assert_eq!(run.progress.session_id.as_deref(), Some("s-1"));
    }

    #[test]
    fn the_command_line_is_locked_down_and_its_variadic_options_come_last() {
        let mut cli = Cli::new(crate::domain::Program::resolve(Path::new("claude")).unwrap());
        cli.policy = Policy {
            allowed_tools: vec!["Read".into(), "Bash(cargo test:*)".into()],
            disallowed_tools: vec!["WebFetch".into()],
            setting_sources: "user".into(),
            mcp_config: None,
            stall_timeout: Duration::from_secs(300),
        };
        let spec = cli.command(&Invocation {
            task: "t".into(),
            cwd: "/w".into(),
            permission_mode: PermissionMode::Plan,
            model: Some("sonnet".into()),
            max_turns: Some(3),
            max_budget_usd: Some(0.5),
            append_system_prompt: Some("be brief".into()),
            resume: Some("s-1".into()),
            timeout: Duration::from_secs(1),
            label: "job-1".into(),
        });
        assert_eq!(
            spec.args,
            [
                "-p",
                "t",
                "--output-format",
                "stream-json",
                "--verbose",
                "--permission-mode",
                "plan",
                "--model",
                "sonnet",
                "--max-turns",
                "3",
                "--max-budget-usd",
                "0.5",
                "--append-system-prompt",
                "be brief",
                "--setting-sources",
                "user",
                "--resume=s-1",
                "--strict-mcp-config",
                "--allowedTools",
                "Read",
                "Bash(cargo test:*)",
                "--disallowedTools",
                "WebFetch"
            ]
        );
    }
}
