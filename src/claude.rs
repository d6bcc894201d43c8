//! The Claude Code CLI as a program the agent runs: the command line
//! (`claude -p <task> --output-format json --permission-mode <mode>` plus the
//! optional flags), running it under a deadline and a cancel signal with its
//! whole process group, and reading its result JSON. Shared by the claude-cli
//! backend and `agent mcp-serve`.
//!
//! Known field problems designed for: `claude -p` can hang with no output
//! (deadline, group killed); SIGTERM gives exit 143 and no JSON (a failed run,
//! not a crash); `is_error: true` is a failure even with subtype `success`;
//! anything that is not the result JSON is a failed run that keeps the text.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::future::BoxFuture;
use serde::Deserialize;

use crate::domain::{ClaudeFacts, JobOutcome, JobStatus, PermissionMode, Usage};
use crate::process::{self, CommandSpec, Ending};
use crate::sandbox::{Reach, Sandbox};

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
    pub timeout: Duration,
    /// Names the job's own Claude config directory (e.g. its job id).
    pub label: String,
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
    /// Standard output as printed, kept when it was not understood.
    pub raw_output: String,
}

impl Run {
    pub fn usage(&self) -> Usage {
        self.result.as_ref().map_or_else(Usage::default, |r| Usage {
            input_tokens: r.usage.input_tokens,
            output_tokens: r.usage.output_tokens,
            cost_usd: r.total_cost_usd.unwrap_or(0.0),
        })
    }

    pub fn into_outcome(self, job_id: u64) -> JobOutcome {
        let usage = self.usage();
        let (output, claude) = match self.result {
            Some(result) => {
                let facts = result.facts();
                (result.result.unwrap_or_default(), facts)
            }
            None => (self.raw_output, ClaudeFacts::default()),
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

    fn failed(status: JobStatus, error: String) -> Run {
        Run {
            status,
            result: None,
            error: Some(error),
            raw_output: String::new(),
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
}

impl Cli {
    pub fn new(binary: crate::domain::Program) -> Cli {
        Cli {
            binary,
            env: Vec::new(),
            config_dirs: None,
            sandbox: None,
        }
    }

    /// The process to start, confined when there is a sandbox, with the
    /// job's own config directory (made and seeded) when there are
    /// `config_dirs`. The directory is made and the login copied on the
    /// blocking pool: file copies would otherwise hold a worker thread.
    pub async fn prepare(&self, invocation: &Invocation) -> Result<CommandSpec, String> {
        let mut spec = self.command(invocation);
        let config_dir = match &self.config_dirs {
            Some(dirs) => {
                let (dirs, label) = (dirs.clone(), invocation.label.clone());
                Some(
                    tokio::task::spawn_blocking(move || dirs.make(&label))
                        .await
                        .map_err(|e| format!("cannot make the job's config directory: {e}"))??,
                )
            }
            None => None,
        };
        if let Some(dir) = &config_dir {
            spec.env.retain(|(key, _)| key != CONFIG_DIR_VAR);
            spec.env
                .push((CONFIG_DIR_VAR.into(), dir.display().to_string()));
        }
        Ok(match &self.sandbox {
            Some(sandbox) => {
                let extra: Vec<&Path> = config_dir.iter().map(PathBuf::as_path).collect();
                sandbox.wrap(spec, Reach::Job, &extra)
            }
            None => spec,
        })
    }

    pub fn command(&self, invocation: &Invocation) -> CommandSpec {
        let mut args = vec![
            "-p".to_string(),
            invocation.task.clone(),
            "--output-format".into(),
            "json".into(),
            "--permission-mode".into(),
            invocation.permission_mode.to_string(),
        ];
        if let Some(model) = &invocation.model {
            args.extend(["--model".to_string(), model.clone()]);
        }
        if let Some(turns) = invocation.max_turns {
            args.extend(["--max-turns".to_string(), turns.to_string()]);
        }
        if let Some(usd) = invocation.max_budget_usd {
            args.extend(["--max-budget-usd".to_string(), usd.to_string()]);
        }
        if let Some(prompt) = &invocation.append_system_prompt {
            args.extend(["--append-system-prompt".to_string(), prompt.clone()]);
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
    /// `cancel` completing kills the group.
    pub async fn run(
        &self,
        invocation: &Invocation,
        started: impl FnOnce(i32) -> BoxFuture<'static, ()>,
        cancel: impl Future<Output = ()>,
    ) -> Run {
        let spec = match self.prepare(invocation).await {
            Ok(spec) => spec,
            Err(error) => return Run::failed(JobStatus::Failed, error),
        };
        let running = match process::start(&spec) {
            Ok(running) => running,
            Err(error) => return Run::failed(JobStatus::Failed, error.to_string()),
        };
        if let Some(group) = running.process_group() {
            started(group).await;
        }
        let finished = running.wait_or_cancel(cancel).await;
        if let Some(failure) =
            crate::sandbox::start_failure(self.sandbox.as_ref(), &spec, &finished)
        {
            return Run::failed(JobStatus::Failed, failure.to_string());
        }
        match finished.ending {
            Ending::TimedOut => Run::failed(
                JobStatus::Timeout,
                format!(
                    "claude did not finish within {}; its process group was killed",
                    humantime::format_duration(invocation.timeout)
                ),
            ),
            Ending::Cancelled => Run::failed(
                JobStatus::Killed,
                "the job was killed on request; its process group was killed".into(),
            ),
            Ending::Exited(_) => interpret(&finished.stdout, &finished.stderr, finished.ending),
        }
    }
}

/// The variable that moves Claude Code's configuration (its `.claude.json`,
/// credentials, sessions) to another directory.
pub const CONFIG_DIR_VAR: &str = "CLAUDE_CONFIG_DIR";

/// The files of a login that a job's own config directory starts with.
const SEEDED: [&str; 3] = [".credentials.json", ".claude.json", "settings.json"];

/// How many job config directories are kept (the newest; the sessions in
/// them help to read what a recent job did).
const KEPT_CONFIG_DIRS: usize = 20;

/// Per-job Claude config directories under `base`, each seeded from the
/// user's login: concurrent `claude -p` runs sharing one `~/.claude.json`
/// corrupt it.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigDirs {
    pub base: PathBuf,
}

impl ConfigDirs {
    /// Makes the directory of one job and copies the login into it: from
    /// `$CLAUDE_CONFIG_DIR` when this process has one, else from
    /// `~/.claude/` and `~/.claude.json`.
    pub fn make(&self, label: &str) -> Result<PathBuf, String> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "{}-{}-{}",
            crate::store::now_ms(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            label.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "_")
        );
        let dir = self.base.join(name);
        let io = |e: std::io::Error| format!("cannot make {}: {e}", dir.display());
        std::fs::create_dir_all(&dir).map_err(io)?;
        for (from, file) in login_files() {
            if from.is_file() {
                std::fs::copy(&from, dir.join(file)).map_err(io)?;
            }
        }
        self.prune();
        Ok(dir)
    }

    fn prune(&self) {
        let Ok(entries) = std::fs::read_dir(&self.base) else {
            return;
        };
        let mut dirs: Vec<(u64, u64, PathBuf)> = entries
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().to_string_lossy().into_owned();
                let mut parts = name.splitn(3, '-');
                let ms = parts.next()?.parse().ok()?;
                let n = parts.next()?.parse().ok()?;
                Some((ms, n, entry.path()))
            })
            .collect();
        dirs.sort();
        let excess = dirs.len().saturating_sub(KEPT_CONFIG_DIRS);
        for (_, _, dir) in dirs.into_iter().take(excess) {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Where the user's login lives, file by file.
fn login_files() -> Vec<(PathBuf, &'static str)> {
    if let Some(dir) = std::env::var_os(CONFIG_DIR_VAR).filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        return SEEDED.iter().map(|file| (dir.join(file), *file)).collect();
    }
    let Some(home) = std::env::var_os("HOME").map(PathBuf::from) else {
        return Vec::new();
    };
    vec![
        (home.join(".claude/.credentials.json"), SEEDED[0]),
        (home.join(".claude.json"), SEEDED[1]),
        (home.join(".claude/settings.json"), SEEDED[2]),
    ]
}

/// Turns what `claude -p --output-format json` printed into a run.
pub fn interpret(stdout: &str, stderr: &str, ending: Ending) -> Run {
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
        let error = if shown.is_empty() {
            format!("claude exited with {code} and printed no result")
        } else {
            format!(
                "claude exited with {code} and printed no result JSON: {}",
                shown.chars().take(300).collect::<String>()
            )
        };
        return Run {
            status: JobStatus::Failed,
            result: None,
            error: Some(error),
            raw_output: text.to_string(),
        };
    };
    let message = result.result.clone().unwrap_or_default();
    let subtype = result.subtype.clone().unwrap_or_default();
    let error = if result.is_error {
        let status = result
            .facts()
            .api_error_status
            .map(|status| format!(" (API status {status})"))
            .unwrap_or_default();
        Some(if message.is_empty() {
            format!("claude reported an error (subtype {subtype}){status}")
        } else {
            format!("{message}{status}")
        })
    } else if subtype != "success" {
        Some(format!("claude ended with subtype {subtype}"))
    } else if ending != Ending::Exited(Some(0)) {
        Some(format!(
            "claude exited with {ending:?} after printing a result"
        ))
    } else {
        None
    };
    Run {
        status: if error.is_some() {
            JobStatus::Failed
        } else {
            JobStatus::Completed
        },
        result: Some(result),
        error,
        raw_output: text.to_string(),
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
        let run = interpret(stdout, "", Ending::Exited(Some(1)));
        assert_eq!(run.status, JobStatus::Failed);
        assert_eq!(
            run.error.as_deref(),
            Some("Not logged in · Please run /login")
        );
    }

    #[test]
    fn usage_cost_and_turns_are_read_from_the_result() {
        let stdout = r#"{"type":"result","subtype":"success","is_error":false,"result":"ok","session_id":"abc","num_turns":3,"duration_ms":900,"total_cost_usd":0.5,"usage":{"input_tokens":10,"output_tokens":20,"cache_read_input_tokens":7}}"#;
        let run = interpret(stdout, "", Ending::Exited(Some(0)));
        assert_eq!(run.status, JobStatus::Completed);
        let result = run.result.clone().unwrap();
        assert_eq!(result.num_turns, Some(3));
        assert_eq!(result.usage.cache_read_input_tokens, 7);
        let outcome = run.into_outcome(1);
        assert_eq!(outcome.usage.input_tokens, 10);
        assert_eq!(outcome.usage.output_tokens, 20);
        assert_eq!(outcome.usage.cost_usd, 0.5);
        assert_eq!(outcome.claude.session_id.as_deref(), Some("abc"));
        assert_eq!(outcome.claude.turns, Some(3));
    }

    #[test]
    fn job_config_directories_are_distinct_and_only_the_newest_are_kept() {
        let base = tempfile::tempdir().unwrap();
        let dirs = ConfigDirs {
            base: base.path().to_path_buf(),
        };
        let made: Vec<PathBuf> = (0..KEPT_CONFIG_DIRS + 2)
            .map(|i| dirs.make(&format!("job-{i}")).unwrap())
            .collect();
        let left: Vec<PathBuf> = std::fs::read_dir(base.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(left.len(), KEPT_CONFIG_DIRS);
        assert!(!made[0].exists() && !made[1].exists(), "the oldest go");
        assert!(made[KEPT_CONFIG_DIRS + 1].exists(), "the newest stays");
    }

    #[test]
    fn garbage_is_a_failed_run_that_keeps_the_text() {
        let run = interpret("this is not json {", "", Ending::Exited(Some(0)));
        assert_eq!(run.status, JobStatus::Failed);
        assert!(run.error.as_ref().unwrap().contains("no result JSON"));
        assert_eq!(run.into_outcome(1).output, "this is not json {");
    }

    #[test]
    fn optional_flags_are_passed_through() {
        let cli = Cli::new(crate::domain::Program::resolve(Path::new("claude")).unwrap());
        let spec = cli.command(&Invocation {
            task: "t".into(),
            cwd: ".".into(),
            permission_mode: PermissionMode::Plan,
            model: Some("sonnet".into()),
            max_turns: Some(3),
            max_budget_usd: Some(0.5),
            append_system_prompt: Some("be brief".into()),
            timeout: Duration::from_secs(1),
            label: "job-1".into(),
        });
        assert_eq!(
            spec.args,
            [
                "-p",
                "t",
                "--output-format",
                "json",
                "--permission-mode",
                "plan",
                "--model",
                "sonnet",
                "--max-turns",
                "3",
                "--max-budget-usd",
                "0.5",
                "--append-system-prompt",
                "be brief"
            ]
        );
    }
}
