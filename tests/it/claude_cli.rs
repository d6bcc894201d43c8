//! The claude-cli backend against the stand-in `claude` (tests/bin/claude):
//! results, usage and cost parsed; `is_error`, garbage and hangs are failed
//! jobs; nothing the job started outlives it.

use std::path::Path;
use std::time::{Duration, Instant};

use agent::cognition::claude_cli::ClaudeCli;
use agent::cognition::{Cognition, Job, StartHook, Started};
use agent::domain::{JobStatus, PermissionMode};

use crate::harness::fake_claude_program;

fn backend(pid_dir: &Path, log: &Path) -> ClaudeCli {
    ClaudeCli::new(fake_claude_program(), PermissionMode::AcceptEdits, None).with_env(vec![
        ("FAKE_CLAUDE_PID_DIR".into(), pid_dir.display().to_string()),
        ("FAKE_CLAUDE_LOG".into(), log.display().to_string()),
    ])
}

fn job(cwd: &Path, prompt: &str, timeout: Duration) -> Job {
    Job {
        id: 1,
        capability: "claude-edit".into(),
        prompt: Some(prompt.into()),
        cwd: cwd.to_path_buf(),
        timeout,
        execution: agent::domain::Execution::Sync,
        cancel: Default::default(),
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
        Fixture { dir }
    }
    fn pids(&self) -> std::path::PathBuf {
        self.dir.path().join("pids")
    }
    fn log(&self) -> std::path::PathBuf {
        self.dir.path().join("invocations.log")
    }
    fn backend(&self) -> ClaudeCli {
        backend(&self.pids(), &self.log())
    }
    fn cwd(&self) -> &Path {
        self.dir.path()
    }
}

#[tokio::test]
async fn success_parses_result_usage_and_cost() {
    let f = Fixture::new();
    let outcome = f
        .backend()
        .run(
            job(f.cwd(), "tidy the code", Duration::from_secs(20)),
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
            job(f.cwd(), "[fake:is-error] go", Duration::from_secs(20)),
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
            job(f.cwd(), "[fake:garbage] go", Duration::from_secs(20)),
            StartHook::ignored(),
        )
        .await;
    assert_eq!(outcome.status, JobStatus::Failed);
    assert!(outcome.output.contains("this is not json {"), "{outcome:?}");
    assert!(outcome.error.unwrap().contains("no result JSON"));
}

#[tokio::test]
async fn exit_143_without_output_is_a_failed_job() {
    let f = Fixture::new();
    let outcome = f
        .backend()
        .run(
            job(f.cwd(), "[fake:exit143] go", Duration::from_secs(20)),
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
                    f.cwd(),
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
