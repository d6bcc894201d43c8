//! `agent mcp-serve` through the real MCP protocol: an rmcp client in the test,
//! the server process, and the stand-in claude behind it (or the real Claude
//! Code CLI, not logged in, when the test set-up installed it).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use agent::mcp::tools::{BatchOutput, JobList, RunOutput, StartedOutput, StatusOutput};
use rmcp::ServiceExt;
use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::service::{RoleClient, RunningService};
use rmcp::transport::{ConfigureCommandExt, TokioChildProcess};
use serde_json::{Value, json};

use crate::harness::{agent_bin, fake_claude, poll_until};

struct Server {
    client: RunningService<RoleClient, ()>,
    pid: i32,
    log: PathBuf,
    pids: PathBuf,
}

async fn start_server(dir: &Path, claude: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
    let log = dir.join("invocations.log");
    let pids = dir.join("pids");
    std::fs::create_dir_all(&pids).unwrap();
    let command = tokio::process::Command::new(agent_bin()).configure(|c| {
        c.arg("mcp-serve")
            .arg("--state")
            .arg(dir.join("state"))
            .arg("--claude-bin")
            .arg(claude)
            .args(args)
            .env("FAKE_CLAUDE_LOG", &log)
            .env("FAKE_CLAUDE_PID_DIR", &pids)
            .envs(env.iter().copied())
            .process_group(0);
    });
    let (transport, _) = TokioChildProcess::builder(command)
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let pid = transport.id().unwrap() as i32;
    let client = ().serve(transport).await.unwrap();
    Server {
        client,
        pid,
        log,
        pids,
    }
}

impl Server {
    async fn call(&self, tool: &str, arguments: Value) -> CallToolResult {
        let request = CallToolRequestParams::new(tool.to_string())
            .with_arguments(arguments.as_object().unwrap().clone());
        tokio::time::timeout(Duration::from_secs(60), self.client.call_tool(request))
            .await
            .unwrap_or_else(|_| panic!("{tool} did not answer within 60s"))
            .unwrap()
    }

    async fn typed<T: serde::de::DeserializeOwned>(&self, tool: &str, arguments: Value) -> T {
        let result = self.call(tool, arguments).await;
        serde_json::from_value(
            result
                .structured_content
                .clone()
                .unwrap_or_else(|| panic!("{tool}: no structured content: {result:?}")),
        )
        .unwrap()
    }

    async fn refusal(&self, tool: &str, arguments: Value) -> String {
        let result = self.call(tool, arguments).await;
        assert_eq!(
            result.is_error,
            Some(true),
            "{tool} should refuse: {result:?}"
        );
        result
            .content
            .iter()
            .filter_map(|c| c.as_text().map(|t| t.text.clone()))
            .collect()
    }

    async fn wait_done(&self, job_id: &str) -> StatusOutput {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let status: StatusOutput = self.typed("claude_status", json!({"jobId": job_id})).await;
            if status.status != "running" {
                return status;
            }
            assert!(Instant::now() < deadline, "{job_id} still running");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Starts an async job and waits until the stand-in is running it.
    async fn start_async(&self, task: &str, cwd: &Path, marker: &str) -> StartedOutput {
        let started: StartedOutput = self.typed("claude_run_async", run_args(task, cwd)).await;
        poll_until("the job to start", Duration::from_secs(10), || {
            self.invocations()
                .iter()
                .any(|l| l.contains(marker))
                .then_some(())
        });
        started
    }

    fn invocations(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }

    /// Every process the stand-in started (itself and any grandchild) is gone.
    fn assert_nothing_left(&self) {
        for entry in std::fs::read_dir(&self.pids).unwrap().flatten() {
            let pid: i32 = std::fs::read_to_string(entry.path())
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            crate::harness::wait_gone(pid);
        }
    }

    async fn stop(self) {
        let _ = self.client.cancel().await;
        crate::harness::wait_gone(self.pid);
    }
}

fn run_args(task: &str, cwd: &Path) -> Value {
    json!({"task": task, "cwd": cwd.display().to_string()})
}

#[tokio::test]
async fn every_tool_over_the_real_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(
        dir.path(),
        &fake_claude(),
        &["--permission-mode", "acceptEdits"],
        &[],
    )
    .await;

    let tools = server.client.list_all_tools().await.unwrap();
    for name in agent::mcp::REQUIRED_TOOLS {
        let tool = tools
            .iter()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("{name} listed"));
        assert!(tool.output_schema.is_some(), "{name} has an output schema");
    }
    let run_schema = &tools
        .iter()
        .find(|t| t.name == "claude_run")
        .unwrap()
        .input_schema;
    assert!(run_schema["properties"]["permissionMode"].is_object());

    // claude_run: the parsed result, usage and cost, plus a short text.
    let result = server
        .call("claude_run", run_args("tidy up", dir.path()))
        .await;
    assert_eq!(result.is_error, Some(false));
    let text: String = result
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect();
    assert!(text.contains("completed: done: tidy up"), "{text}");
    let output: RunOutput = serde_json::from_value(result.structured_content.unwrap()).unwrap();
    assert_eq!(output.status, "completed");
    assert_eq!(output.result.as_deref(), Some("done: tidy up"));
    assert_eq!(
        (output.usage.input_tokens, output.usage.output_tokens),
        (120, 45)
    );
    assert_eq!(output.total_cost_usd, 0.0123);
    assert_eq!(output.num_turns, Some(1));
    assert_eq!(output.duration_ms, Some(1234));
    assert!(output.session_id.is_some());

    // Permission modes: the server's default, and one given per call.
    let planned: RunOutput = server
        .typed("claude_run", json!({"task": "look", "cwd": dir.path().display().to_string(), "permissionMode": "plan"}))
        .await;
    assert_eq!(planned.status, "completed");
    let log = server.invocations();
    assert!(log[0].contains(" success acceptEdits tidy up"), "{log:?}");
    assert!(log[1].contains(" success plan look"), "{log:?}");
    let bad = server
        .refusal("claude_run", json!({"task": "x", "permissionMode": "yolo"}))
        .await;
    assert!(bad.contains("\"yolo\" is not one of"), "{bad}");

    // claude_run_async → claude_status → claude_result.
    let started: StartedOutput = server
        .typed(
            "claude_run_async",
            run_args("[fake:slow] later", dir.path()),
        )
        .await;
    let running: StatusOutput = server
        .typed("claude_status", json!({"jobId": started.job_id}))
        .await;
    assert_eq!(running.status, "running");
    let early = server
        .refusal("claude_result", json!({"jobId": started.job_id}))
        .await;
    assert!(early.contains("still running"), "{early}");
    let done = server.wait_done(&started.job_id).await;
    assert_eq!(done.status, "completed");
    assert!(done.ended_at.is_some());
    let result: RunOutput = server
        .typed("claude_result", json!({"jobId": started.job_id}))
        .await;
    assert_eq!(result.result.as_deref(), Some("done: [fake:slow] later"));
    let unknown = server
        .refusal("claude_status", json!({"jobId": "job-999999"}))
        .await;
    assert!(unknown.contains("unknown job id"), "{unknown}");

    // claude_kill_job on a job that ignores SIGTERM.
    let hanging = server
        .start_async("[fake:ignore-term] stuck", dir.path(), "stuck")
        .await;
    let killed: StatusOutput = server
        .typed("claude_kill_job", json!({"jobId": hanging.job_id}))
        .await;
    assert_eq!(killed.status, "killed");
    let gone = server
        .refusal("claude_kill_job", json!({"jobId": hanging.job_id}))
        .await;
    assert!(gone.contains("not running"), "{gone}");

    // claude_list_jobs knows them all.
    let list: JobList = server.typed("claude_list_jobs", json!({})).await;
    let statuses: Vec<&str> = list.jobs.iter().map(|j| j.status.as_str()).collect();
    assert_eq!(statuses, ["completed", "completed", "completed", "killed"]);

    server.assert_nothing_left();
    server.stop().await;
}

#[tokio::test]
async fn a_batch_of_eight_one_second_jobs_four_at_a_time_takes_about_two_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(
        dir.path(),
        &fake_claude(),
        &["--max-concurrent", "8"],
        &[("FAKE_CLAUDE_DELAY", "1")],
    )
    .await;
    let tasks: Vec<Value> = (0..8)
        .map(|i| run_args(&format!("[fake:slow] part {i}"), dir.path()))
        .collect();
    let mut tasks = tasks;
    tasks[5] = run_args("[fake:is-error] part 5", dir.path());
    let started = Instant::now();
    let batch: BatchOutput = server
        .typed(
            "claude_run_batch",
            json!({"tasks": tasks, "maxConcurrent": 4}),
        )
        .await;
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1900),
        "at most four at a time: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_millis(4500),
        "four at a time, not one: {elapsed:?}"
    );
    assert_eq!(batch.results.len(), 8);
    for (i, result) in batch.results.iter().enumerate() {
        if i == 5 {
            assert!(result.is_error);
            assert_eq!(
                result.error.as_deref(),
                Some("Not logged in · Please run /login")
            );
        } else {
            assert_eq!(result.status, "completed");
            assert_eq!(
                result.result.as_deref(),
                Some(format!("done: [fake:slow] part {i}").as_str()),
                "in order"
            );
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn every_fault_of_the_stand_in_ends_the_job_within_its_deadline_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(
        dir.path(),
        &fake_claude(),
        &["--job-timeout", "1s", "--max-concurrent", "8"],
        &[],
    )
    .await;
    let expectations = [
        ("hang", "timeout", "did not finish within 1s"),
        ("ignore-term", "timeout", "did not finish within 1s"),
        ("fork", "timeout", "did not finish within 1s"),
        ("garbage", "failed", "printed no result: Loading..."),
        ("is-error", "failed", "Not logged in · Please run /login"),
        ("exit143", "failed", "status 143 and printed no result"),
    ];
    for (mode, status, error) in expectations {
        let started = Instant::now();
        let output: RunOutput = server
            .typed(
                "claude_run",
                run_args(&format!("[fake:{mode}] go"), dir.path()),
            )
            .await;
        // 1s deadline + 2s between SIGTERM and SIGKILL, with room to spare.
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "{mode} took {:?}",
            started.elapsed()
        );
        assert_eq!(output.status, status, "{mode}: {output:?}");
        assert!(output.is_error, "{mode}");
        assert!(
            output.error.as_deref().unwrap_or("").contains(error),
            "{mode}: {output:?}"
        );
    }
    server.assert_nothing_left();
    server.stop().await;
}

#[tokio::test]
async fn concurrent_jobs_each_get_their_own_claude_config_directory_seeded_from_the_login() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(home.join(".claude")).unwrap();
    std::fs::write(home.join(".claude.json"), "{\"userID\": \"u\"}").unwrap();
    std::fs::write(home.join(".claude/.credentials.json"), "{}").unwrap();
    let config_log = dir.path().join("config.log");
    let server = start_server(
        dir.path(),
        &fake_claude(),
        &["--max-concurrent", "2"],
        &[
            ("HOME", home.to_str().unwrap()),
            ("CLAUDE_CONFIG_DIR", ""),
            ("FAKE_CLAUDE_DELAY", "1"),
            ("FAKE_CLAUDE_CONFIG_LOG", config_log.to_str().unwrap()),
        ],
    )
    .await;
    let tasks: Vec<Value> = (0..2)
        .map(|i| run_args(&format!("[fake:slow] part {i}"), dir.path()))
        .collect();
    let batch: BatchOutput = server
        .typed(
            "claude_run_batch",
            json!({"tasks": tasks, "maxConcurrent": 2}),
        )
        .await;
    assert!(batch.results.iter().all(|r| r.status == "completed"));
    let lines: Vec<String> = std::fs::read_to_string(&config_log)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    let dirs: Vec<&str> = lines.iter().map(|l| l.split(' ').next().unwrap()).collect();
    assert_ne!(dirs[0], dirs[1], "each job has its own directory");
    let base = dir.path().join("state").join("claude");
    for line in &lines {
        let (config_dir, files) = line.split_once(' ').unwrap();
        assert!(Path::new(config_dir).starts_with(&base), "{line}");
        assert!(
            files.contains(".claude.json") && files.contains(".credentials.json"),
            "seeded from the login: {line}"
        );
    }
    // The user's own file is never written by a job.
    assert_eq!(
        std::fs::read_to_string(home.join(".claude.json")).unwrap(),
        "{\"userID\": \"u\"}"
    );
    server.stop().await;
}

#[tokio::test]
async fn bounds_are_passed_and_the_results_error_fields_decide_failure() {
    let dir = tempfile::tempdir().unwrap();
    let args_log = dir.path().join("args.log");
    let server = start_server(
        dir.path(),
        &fake_claude(),
        &["--max-turns", "7", "--max-budget-usd", "1.5"],
        &[("FAKE_CLAUDE_ARGS_LOG", args_log.to_str().unwrap())],
    )
    .await;
    let run = |mode: &str| {
        let args = run_args(&format!("[fake:{mode}] go"), dir.path());
        let server = &server;
        async move { server.typed::<RunOutput>("claude_run", args).await }
    };
    let turns = run("max-turns").await;
    assert_eq!(turns.status, "failed", "{turns:?}");
    assert!(turns.is_error);
    assert_eq!(turns.subtype.as_deref(), Some("error_max_turns"));
    assert_eq!(turns.num_turns, Some(3));
    let api = run("api-error").await;
    assert_eq!(
        api.status, "failed",
        "a success subtype with is_error fails"
    );
    assert_eq!(api.api_error_status.as_deref(), Some("529"));
    assert_eq!(
        api.error.as_deref(),
        Some("API Error: Overloaded (API status 529)")
    );
    let denied = run("denied").await;
    assert_eq!(denied.status, "completed", "{denied:?}");
    assert_eq!(denied.permission_denials, 2);
    assert_eq!(denied.num_turns, Some(2));
    assert!(denied.session_id.is_some());
    let args = std::fs::read_to_string(&args_log).unwrap();
    assert_eq!(args.lines().count(), 3);
    assert!(
        args.lines()
            .all(|l| l.contains("--max-turns 7") && l.contains("--max-budget-usd 1.5")),
        "{args}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_restarted_server_answers_for_finished_jobs_and_fails_the_ones_it_lost() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), &fake_claude(), &[], &[]).await;
    let finished: RunOutput = server
        .typed("claude_run", run_args("first", dir.path()))
        .await;
    let lost = server
        .start_async("[fake:hang] second", dir.path(), "second")
        .await;
    // The server dies with a job running; its claude dies with it.
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(server.pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    crate::harness::wait_gone(server.pid);
    server.assert_nothing_left();

    let again = start_server(dir.path(), &fake_claude(), &[], &[]).await;
    let result: RunOutput = again
        .typed("claude_result", json!({"jobId": finished.job_id}))
        .await;
    assert_eq!(result, finished);
    let status: StatusOutput = again
        .typed("claude_status", json!({"jobId": lost.job_id}))
        .await;
    assert_eq!(status.status, "failed");
    assert!(status.error.unwrap().contains("stopped while the job ran"));
    again.stop().await;
}

#[tokio::test]
async fn starting_again_with_the_same_request_id_returns_the_job_already_started() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(
        dir.path(),
        &fake_claude(),
        &[],
        &[("FAKE_CLAUDE_DELAY", "0.5")],
    )
    .await;
    let args = json!({"task": "[fake:slow] once", "cwd": dir.path().display().to_string(), "requestId": "agent#7"});
    let first: StartedOutput = server.typed("claude_run_async", args.clone()).await;
    let again: StartedOutput = server.typed("claude_run_async", args).await;
    assert_eq!(first.job_id, again.job_id);
    assert_eq!(server.wait_done(&first.job_id).await.status, "completed");
    let after: StartedOutput = server
        .typed("claude_run_async", json!({"task": "[fake:slow] once", "cwd": dir.path().display().to_string(), "requestId": "agent#7"}))
        .await;
    assert_eq!(after.job_id, first.job_id, "a finished job is found too");
    assert_eq!(server.invocations().len(), 1, "claude ran once");
    server.stop().await;
}

/// `claude_status` shows how far a running job has come, from its
/// stream-json: the turn, the last tool, tokens so far and how long it has
/// been quiet.
#[tokio::test]
async fn claude_status_shows_a_running_jobs_progress() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(
        dir.path(),
        &fake_claude(),
        &[],
        &[
            ("FAKE_CLAUDE_HEARTBEATS", "600"),
            ("FAKE_CLAUDE_HEARTBEAT_MS", "100"),
        ],
    )
    .await;
    let started: StartedOutput = server
        .typed(
            "claude_run_async",
            run_args("[fake:heartbeat] check", dir.path()),
        )
        .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let (status, progress) = loop {
        let status: StatusOutput = server
            .typed("claude_status", json!({"jobId": started.job_id}))
            .await;
        assert_eq!(status.status, "running", "{status:?}");
        if let Some(progress) = status
            .progress
            .clone()
            .filter(|p| p.last_event.as_deref() == Some("tool_progress"))
        {
            break (status, progress);
        }
        assert!(Instant::now() < deadline, "no progress shown: {status:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert_eq!(progress.turns, 1, "{progress:?}");
    assert_eq!(progress.last_tool.as_deref(), Some("Bash"));
    assert_eq!((progress.input_tokens, progress.output_tokens), (120, 45));
    assert!(progress.session_id.is_some());
    assert!(
        status.seconds_since_last_event.is_some_and(|s| s < 60),
        "{status:?}"
    );
    let killed: StatusOutput = server
        .typed("claude_kill_job", json!({"jobId": started.job_id}))
        .await;
    assert_eq!(killed.status, "killed");
    server.stop().await;
}

/// The real Claude Code CLI (npm package `@anthropic-ai/claude-code`), which
/// `.ci/run` installs under `target/claude-code`, not logged in.
#[tokio::test]
async fn the_real_claude_code_not_logged_in_is_a_failed_job_with_its_message() {
    let Some(claude) = crate::harness::real_claude() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let home = home.display().to_string();
    let server = start_server(
        dir.path(),
        &claude,
        &["--job-timeout", "60s"],
        &[
            ("HOME", home.as_str()),
            ("CLAUDE_CONFIG_DIR", home.as_str()),
            ("ANTHROPIC_API_KEY", ""),
        ],
    )
    .await;
    let started = Instant::now();
    let output: RunOutput = server
        .typed("claude_run", run_args("say hello", dir.path()))
        .await;
    assert!(started.elapsed() < Duration::from_secs(60));
    assert_eq!(output.status, "failed", "{output:?}");
    assert!(output.is_error);
    assert_eq!(output.subtype.as_deref(), Some("success"));
    assert_eq!(
        output.error.as_deref(),
        Some("Not logged in · Please run /login"),
        "{output:?}"
    );
    server.stop().await;
}

// ------------------------------------------------- the agent's mcp backend --

mod backend {
    use std::time::Duration;

    use crate::harness::{
        Daemon, fast_config, history, poll_until, processes_with, tiny_crate, wait_gone,
    };

    const WAIT: Duration = Duration::from_secs(120);

    use crate::harness::edit_jobs as edits;

    #[test]
    fn a_killed_server_is_restarted_the_iteration_fails_cleanly_and_the_next_one_runs() {
        let dir = tempfile::tempdir().unwrap();
        let config = fast_config(
            dir.path(),
            &[("backend = \"claude-cli\"", "backend = \"mcp\"")],
        );
        let workspace = tiny_crate(dir.path());
        let state = dir.path().join("state");
        let log = dir.path().join("invocations.log");
        let env = [
            ("FAKE_CLAUDE_MODE", "edit"),
            ("FAKE_CLAUDE_DELAY", "2"),
            ("FAKE_CLAUDE_LOG", log.to_str().unwrap()),
        ];
        let args = [
            "--config",
            config.to_str().unwrap(),
            "--workspace",
            workspace.to_str().unwrap(),
        ];
        let mut daemon = Daemon::start(&state, &args, &env);
        poll_until("the first edit job to start", WAIT, || {
            (edits(&log) >= 1).then_some(())
        });
        let servers = processes_with(&["mcp-serve", state.to_str().unwrap()]);
        assert_eq!(servers.len(), 1, "one mcp-serve: {servers:?}");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(servers[0]),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        wait_gone(servers[0]);

        let status = daemon.wait_status("a later accepted iteration", WAIT, |s| {
            Daemon::committed(s) >= 2
        });
        assert!(Daemon::committed(&status) >= 2);
        assert!(daemon.ctl(&["stop", "--now"]).status.success());
        assert!(daemon.wait_exit(WAIT).success(), "{}", daemon.logs());
        let records = history(&state);
        assert_eq!(records[0]["outcome"], "job-failed", "{records:?}");
        assert!(
            records[0]["summary"]
                .as_str()
                .unwrap()
                .contains("MCP server"),
            "{records:?}"
        );
        assert_eq!(records[1]["outcome"], "accepted", "{records:?}");
        let servers = processes_with(&["mcp-serve", state.to_str().unwrap()]);
        for pid in servers {
            wait_gone(pid);
        }
    }

    /// Kills `agent run` while its async job runs (before or after the job
    /// edited the worktree), restarts it, and checks the job ran once and its
    /// edit was kept.
    fn reattach_after_kill(edit_first: bool) {
        let dir = tempfile::tempdir().unwrap();
        let config = fast_config(
            dir.path(),
            &[("backend = \"claude-cli\"", "backend = \"mcp\"")],
        );
        let workspace = tiny_crate(dir.path());
        let state = dir.path().join("state");
        let log = dir.path().join("invocations.log");
        let env = [
            ("FAKE_CLAUDE_MODE", "edit"),
            ("FAKE_CLAUDE_DELAY", "2"),
            ("FAKE_CLAUDE_EDIT_FIRST", if edit_first { "1" } else { "0" }),
            ("FAKE_CLAUDE_LOG", log.to_str().unwrap()),
        ];
        let args = [
            "--config",
            config.to_str().unwrap(),
            "--workspace",
            workspace.to_str().unwrap(),
            "--max-iterations",
            "1",
        ];
        let mut first = Daemon::start(&state, &args, &env);
        poll_until("the edit job to start", WAIT, || {
            (edits(&log) == 1).then_some(())
        });
        if edit_first {
            let lib = state.join("worktree/src/lib.rs");
            poll_until("the job's edit", WAIT, || {
                std::fs::read_to_string(&lib)
                    .ok()
                    .filter(|t| t.contains("edited by claude"))
                    .map(|_| ())
            });
        }
        first.kill9();

        let mut second = Daemon::start(&state, &args, &env);
        assert!(second.wait_exit(WAIT).success(), "{}", second.logs());
        assert_eq!(
            edits(&log),
            1,
            "the job ran once: {}",
            std::fs::read_to_string(&log).unwrap()
        );
        let records = history(&state);
        assert_eq!(records.len(), 1);
        assert_eq!(
            records[0]["outcome"], "accepted",
            "the re-attached job's edit was kept: {records:?}"
        );
        assert_eq!(records[0]["input_tokens"], 120);
        assert!(second.logs().contains("re-attaching"), "{}", second.logs());
    }

    #[test]
    fn a_restarted_agent_reattaches_to_its_async_job_instead_of_starting_it_again() {
        reattach_after_kill(false);
    }

    #[test]
    fn a_job_that_edited_before_the_kill_keeps_its_edit_after_the_restart() {
        reattach_after_kill(true);
    }

    #[test]
    fn a_server_that_never_answers_is_killed_with_its_group_and_the_iteration_fails_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("server.pid");
        let server = format!(
            "mcp_call_timeout = \"1s\"\nmcp_command = [\"sh\", \"-c\", \"echo $$ > {}; exec sleep 1000\"]",
            pid_file.display()
        );
        let config = fast_config(
            dir.path(),
            &[
                ("backend = \"claude-cli\"", "backend = \"mcp\""),
                ("job_timeout = \"20s\"", "job_timeout = \"1s\""),
                ("mcp_call_timeout = \"30s\"", &server),
            ],
        );
        let workspace = tiny_crate(dir.path());
        let state = dir.path().join("state");
        let args = [
            "--config",
            config.to_str().unwrap(),
            "--workspace",
            workspace.to_str().unwrap(),
            "--max-iterations",
            "1",
        ];
        let mut daemon = Daemon::start(&state, &args, &[]);
        assert!(daemon.wait_exit(WAIT).success(), "{}", daemon.logs());
        let records = history(&state);
        assert_eq!(records[0]["outcome"], "job-failed", "{records:?}");
        let summary = records[0]["summary"].as_str().unwrap();
        assert!(
            summary.contains("did not initialize within 2s"),
            "{summary}"
        );
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        wait_gone(pid);
    }
}
