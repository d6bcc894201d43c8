//! The claude-cli backend against the stand-in `claude` (tests/bin/claude),
//! run as it must be unattended: stream-json read as it comes, results,
//! usage and cost parsed; `is_error`, garbage and hangs are failed jobs; a
//! silent job is killed at its stall clock, not its deadline, while an
//! announced API retry holds the clock; the first result ends a job that
//! lingers; a rotating login survives concurrent jobs; nothing the job
//! started outlives it.

use std::path::Path;
use std::time::{Duration, Instant};

use agent::claude::{ConfigDirs, Login, Policy};
use agent::cognition::claude_cli::ClaudeCli;
use agent::cognition::{Cognition, Job, StartHook, Started};
use agent::domain::{JobStatus, PermissionMode};

use crate::harness::fake_claude_program;

fn backend(dir: &Path, pid_dir: &Path, log: &Path) -> ClaudeCli {
    ClaudeCli::new(fake_claude_program(), PermissionMode::AcceptEdits, None)
        .with_env(vec![
            ("FAKE_CLAUDE_PID_DIR".into(), pid_dir.display().to_string()),
            ("FAKE_CLAUDE_LOG".into(), log.display().to_string()),
            (
                "FAKE_CLAUDE_ARGS_LOG".into(),
                dir.join("args.log").display().to_string(),
            ),
        ])
        .with_login(Login::Missing)
        .confined(
            None,
            ConfigDirs {
                base: dir.join("claude"),
            },
        )
}

fn job(cwd: &Path, prompt: &str, timeout: Duration) -> Job {
    Job {
        attempt: Default::default(),
        id: 1,
        capability: "claude-edit".into(),
        prompt: Some(prompt.into()),
        cwd: cwd.to_path_buf(),
        timeout,
        execution: agent::domain::Execution::Sync,
        cancel: Default::default(),
        resume: None,
        progress: Default::default(),
    }
}

/// Every pid the stand-in wrote is gone (or a zombie about to be reaped).
fn assert_no_process_left(pid_dir: &Path) {
    let pids: Vec<i32> = std::fs::read_dir(pid_dir)
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|t| t.trim().parse().ok())
        .collect();
    assert!(!pids.is_empty(), "the stand-in wrote no pid");
    for pid in pids {
        crate::harness::wait_gone(pid);
    }
}

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("pids")).unwrap();
        std::fs::create_dir(dir.path().join("work")).unwrap();
        Fixture { dir }
    }
    fn pids(&self) -> std::path::PathBuf {
        self.dir.path().join("pids")
    }
    fn log(&self) -> std::path::PathBuf {
        self.dir.path().join("invocations.log")
    }
    fn backend(&self) -> ClaudeCli {
        backend(self.dir.path(), &self.pids(), &self.log())
    }
    fn cwd(&self) -> std::path::PathBuf {
        self.dir.path().join("work")
    }
    fn args(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("args.log")).unwrap_or_default()
    }
}

#[tokio::test]
async fn success_parses_result_usage_and_cost() {
    let f = Fixture::new();
    let outcome = f
        .backend()
        .run(
            job(&f.cwd(), "tidy the code", Duration::from_secs(20)),
            StartHook::ignored(),
        )
        .await;
    assert_eq!(outcome.status, JobStatus::Completed, "{outcome:?}");
    assert_eq!(outcome.output, "done: tidy the code");
    assert_eq!(outcome.usage.input_tokens, 120);
    assert_eq!(outcome.usage.output_tokens, 45);
    assert_eq!(outcome.usage.cost_usd, 0.0123);
    assert!(outcome.claude.session_id.is_some());
    let log = std::fs::read_to_string(f.log()).unwrap();
    assert!(
        log.contains(" acceptEdits "),
        "permission mode passed as given: {log}"
    );
}

#[tokio::test]
async fn is_error_with_subtype_success_is_a_failed_job_with_its_message() {
    let f = Fixture::new();
    let outcome = f
        .backend()
        .run(
            job(&f.cwd(), "[fake:is-error] go", Duration::from_secs(20)),
            StartHook::ignored(),
        )
        .await;
    assert_eq!(outcome.status, JobStatus::Failed);
    assert_eq!(
        outcome.error.as_deref(),
        Some("Not logged in · Please run /login")
    );
}

#[tokio::test]
async fn garbage_on_stdout_is_a_failed_job_that_keeps_the_text() {
    let f = Fixture::new();
    let outcome = f
        .backend()
        .run(
            job(&f.cwd(), "[fake:garbage] go", Duration::from_secs(20)),
            StartHook::ignored(),
        )
        .await;
    assert_eq!(outcome.status, JobStatus::Failed);
    assert!(outcome.output.contains("this is not json {"), "{outcome:?}");
    assert_eq!(
        outcome.error.as_deref(),
        Some("claude exited with status 0 and printed no result: Loading...")
    );
}

#[tokio::test]
async fn exit_143_without_output_is_a_failed_job() {
    let f = Fixture::new();
    let outcome = f
        .backend()
        .run(
            job(&f.cwd(), "[fake:exit143] go", Duration::from_secs(20)),
            StartHook::ignored(),
        )
        .await;
    assert_eq!(outcome.status, JobStatus::Failed);
    assert!(outcome.error.unwrap().contains("status 143"));
}

#[tokio::test]
async fn a_hang_past_the_timeout_is_killed_with_its_whole_group() {
    for mode in ["hang", "ignore-term", "fork"] {
        let f = Fixture::new();
        let started = Instant::now();
        let (hook, report) = StartHook::new();
        let reported = tokio::spawn(async move {
            let (place, ack) = report.await.expect("the job reported where it runs");
            ack.send(()).unwrap();
            place
        });
        let outcome = f
            .backend()
            .run(
                job(
                    &f.cwd(),
                    &format!("[fake:{mode}] go"),
                    Duration::from_millis(500),
                ),
                hook,
            )
            .await;
        assert_eq!(outcome.status, JobStatus::Timeout, "{mode}: {outcome:?}");
        // Timeout, then at most the SIGTERM grace period, then SIGKILL.
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{mode} took {:?}",
            started.elapsed()
        );
        assert!(
            matches!(reported.await.unwrap(), Started::Process(group) if group > 1),
            "the process group was reported"
        );
        assert_no_process_left(&f.pids());
    }
}

/// A policy with a short stall clock, for the tests that wait on it.
fn stall_after(stall: Duration) -> Policy {
    Policy {
        allowed_tools: vec!["Read".into(), "Bash(cargo test:*)".into()],
        disallowed_tools: vec!["WebFetch".into()],
        stall_timeout: stall,
        ..Policy::default()
    }
}

#[tokio::test]
async fn a_silent_job_is_killed_at_its_stall_clock_not_at_its_deadline() {
    let f = Fixture::new();
    let started = Instant::now();
    let outcome = f
        .backend()
        .with_policy(stall_after(Duration::from_secs(1)))
        .run(
            job(&f.cwd(), "[fake:stall] go", Duration::from_secs(120)),
            StartHook::ignored(),
        )
        .await;
    assert_eq!(outcome.status, JobStatus::Failed, "{outcome:?}");
    let error = outcome.error.unwrap();
    assert!(
        error.starts_with("stalled: no output for 1s after system/init"),
        "{error}"
    );
    // The stall clock (1s), then at most the SIGTERM grace; never the 120s
    // deadline.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        outcome.claude.session_id.is_some(),
        "the init's session is kept"
    );
    assert_no_process_left(&f.pids());
}

#[tokio::test]
async fn an_announced_api_retry_holds_the_stall_clock_and_the_job_goes_on() {
    let f = Fixture::new();
    let mut env = vec![("FAKE_CLAUDE_RETRY_MS".to_string(), "2500".to_string())];
    env.push(("FAKE_CLAUDE_PID_DIR".into(), f.pids().display().to_string()));
    let outcome = f
        .backend()
        .with_env(env)
        .with_policy(stall_after(Duration::from_secs(1)))
        .run(
            job(&f.cwd(), "[fake:api-retry] go", Duration::from_secs(60)),
            StartHook::ignored(),
        )
        .await;
    assert_eq!(outcome.status, JobStatus::Completed, "{outcome:?}");
    assert_eq!(outcome.output, "done: [fake:api-retry] go");
}

#[tokio::test]
async fn a_job_that_lingers_after_its_result_ends_within_the_grace_and_its_result_is_used() {
    let f = Fixture::new();
    let started = Instant::now();
    let progress = std::sync::Arc::new(tokio::sync::watch::Sender::new(Default::default()));
    let outcome = f
        .backend()
        .run(
            Job {
                attempt: Default::default(),
                progress: progress.clone(),
                ..job(&f.cwd(), "[fake:linger] go", Duration::from_secs(120))
            },
            StartHook::ignored(),
        )
        .await;
    assert_eq!(outcome.status, JobStatus::Completed, "{outcome:?}");
    assert_eq!(outcome.output, "done: [fake:linger] go");
    assert_eq!(outcome.usage.input_tokens, 120);
    // The result's grace (3s) and the SIGTERM grace (2s), never the deadline.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    assert_no_process_left(&f.pids());
    let seen = progress.borrow().clone();
    assert_eq!(seen.session_id, outcome.claude.session_id);
    assert_eq!((seen.turns, seen.last_tool.as_deref()), (1, Some("Edit")));
    assert_eq!(seen.last_event.as_deref(), Some("result"));
}

#[tokio::test]
async fn stdin_is_closed_so_a_job_that_reads_to_its_end_does_not_hang() {
    // The stand-in reads stdin to its end before anything else, as
    // `claude -p` does since 2.1.50; with stdin left open this would wait
    // for the stall clock.
    let f = Fixture::new();
    let started = Instant::now();
    let outcome = f
        .backend()
        .with_policy(stall_after(Duration::from_secs(60)))
        .run(
            job(&f.cwd(), "read nothing", Duration::from_secs(120)),
            StartHook::ignored(),
        )
        .await;
    assert_eq!(outcome.status, JobStatus::Completed, "{outcome:?}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn the_command_line_is_locked_down_and_denied_tools_are_kept() {
    let f = Fixture::new();
    let outcome = f
        .backend()
        .with_policy(stall_after(Duration::from_secs(60)))
        .run(
            job(&f.cwd(), "[fake:denied] go", Duration::from_secs(60)),
            StartHook::ignored(),
        )
        .await;
    assert_eq!(outcome.status, JobStatus::Completed, "{outcome:?}");
    assert_eq!(outcome.claude.denied_tools, ["Bash", "Write"]);
    let args = f.args();
    for expected in [
        "--output-format stream-json --verbose --permission-mode acceptEdits",
        "--setting-sources user",
        "--strict-mcp-config",
        "--allowedTools Read Bash(cargo test:*) --disallowedTools WebFetch",
    ] {
        assert!(args.contains(expected), "{expected:?} not in {args}");
    }
}

/// The stand-in's login file: an access token that expired, the refresh
/// token the auth server (a file) knows.
fn expired_login(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let server = dir.join("auth-server");
    std::fs::write(&server, "access=a-1\nrefresh=r-1\n").unwrap();
    let home = dir.join("home-claude");
    std::fs::create_dir_all(&home).unwrap();
    let login = home.join(".credentials.json");
    std::fs::write(
        &login,
        r#"{"claudeAiOauth":{"accessToken":"a-1","refreshToken":"r-1","expiresAt":1000,"scopes":["user:inference"],"subscriptionType":"pro"}}"#,
    )
    .unwrap();
    (server, login)
}

#[tokio::test]
async fn a_rotating_login_survives_three_concurrent_jobs_and_stays_valid_for_its_user() {
    let f = Fixture::new();
    let (server, login) = expired_login(f.dir.path());
    let backend = f
        .backend()
        .with_env(vec![
            (
                "FAKE_CLAUDE_AUTH_SERVER".into(),
                server.display().to_string(),
            ),
            ("FAKE_CLAUDE_PID_DIR".into(), f.pids().display().to_string()),
        ])
        .with_login(Login::File(login.clone()));
    let run = |id: u64| {
        let backend = backend.clone();
        let job = Job {
            attempt: Default::default(),
            id,
            ..job(&f.cwd(), &format!("job {id}"), Duration::from_secs(60))
        };
        async move { backend.run(job, StartHook::ignored()).await }
    };
    let (a, b, c) = tokio::join!(run(1), run(2), run(3));
    for outcome in [&a, &b, &c] {
        assert_eq!(outcome.status, JobStatus::Completed, "{outcome:?}");
    }
    let refreshes = std::fs::read_to_string(server.with_extension("log")).unwrap_or_default();
    assert_eq!(
        refreshes.lines().count(),
        1,
        "one job refreshed: {refreshes}"
    );
    // The user's own login holds what the auth server now knows.
    let server_now = std::fs::read_to_string(&server).unwrap();
    let login_now = std::fs::read_to_string(&login).unwrap();
    for line in server_now.lines() {
        let (kind, token) = line.split_once('=').unwrap();
        let field = if kind == "access" {
            "accessToken"
        } else {
            "refreshToken"
        };
        assert!(
            login_now.contains(&format!("\"{field}\":\"{token}\"")),
            "the user's login is stale: {login_now} vs {server_now}"
        );
    }
    assert!(
        std::fs::symlink_metadata(&login)
            .unwrap()
            .file_type()
            .is_file(),
        "the user's login is still a file of its own"
    );
}

/// The real Claude Code CLI (`.ci/run` installs 2.1.197 under
/// `target/claude-code`), not logged in, run by the claude-cli backend with
/// the whole locked-down command line in stream-json: its real events are
/// read and its result is the job's clear failure.
#[tokio::test]
async fn the_real_claude_code_not_logged_in_fails_clearly_in_stream_json() {
    let Some(claude) = crate::harness::real_claude() else {
        return;
    };
    let f = Fixture::new();
    let home = f.dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let home = home.display().to_string();
    let backend = ClaudeCli::new(
        agent::domain::Program::resolve(&claude).unwrap(),
        PermissionMode::AcceptEdits,
        None,
    )
    .with_env(vec![
        ("HOME".into(), home),
        ("ANTHROPIC_API_KEY".into(), String::new()),
        ("CLAUDE_CODE_OAUTH_TOKEN".into(), String::new()),
    ])
    .with_login(Login::Missing)
    .with_policy(stall_after(Duration::from_secs(60)))
    .confined(
        None,
        ConfigDirs {
            base: f.dir.path().join("claude"),
        },
    );
    let outcome = backend
        .run(
            job(&f.cwd(), "say hello", Duration::from_secs(90)),
            StartHook::ignored(),
        )
        .await;
    assert_eq!(outcome.status, JobStatus::Failed, "{outcome:?}");
    assert_eq!(
        outcome.error.as_deref(),
        Some("Not logged in · Please run /login"),
        "{outcome:?}"
    );
    assert!(
        outcome.claude.session_id.is_some(),
        "the init event was read: {outcome:?}"
    );
}
