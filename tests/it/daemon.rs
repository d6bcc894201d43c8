//! The real `agent run` binary: the main job on the example crate with the
//! offline backend, the control socket, resuming a run, refusing a different
//! goal, a state directory in use, signals, and escalation.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::harness::{
    Daemon, actors_config, agent_bin, ctl, fast_config, history, text, tiny_crate, worktree_log,
};

const WAIT: Duration = Duration::from_secs(120);

fn fast_args<'a>(config: &'a Path, workspace: &'a Path) -> Vec<&'a str> {
    vec![
        "--config",
        config.to_str().unwrap(),
        "--workspace",
        workspace.to_str().unwrap(),
    ]
}

#[test]
fn the_offline_backend_improves_the_example_and_leaves_it_untouched() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = root.join("examples/tidy-stats");
    let before = std::fs::read_to_string(example.join("src/lib.rs")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let output = Command::new(agent_bin())
        .current_dir(root)
        .args([
            "run",
            "--backend",
            "offline",
            "--max-iterations",
            "4",
            "--state",
        ])
        .arg(&state)
        .output()
        .unwrap();
    let stdout = text(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        text(&output.stderr)
    );
    assert!(stdout.contains("backend offline"), "{stdout}");
    assert!(
        !stdout.contains("loop detected"),
        "a healthy run is no loop: {stdout}"
    );
    for n in 1..=4 {
        assert!(
            stdout.contains(&format!("iteration {n:>3}  ")),
            "iteration {n} printed:\n{stdout}"
        );
    }
    let records = history(&state);
    assert_eq!(records.len(), 4);
    let first = records[0]["fitness_before"].as_f64().unwrap();
    let last = records
        .iter()
        .rev()
        .find(|r| r["outcome"] == "accepted")
        .and_then(|r| r["fitness_after"].as_f64())
        .expect("at least one accepted change");
    assert!(
        last < first,
        "fitness went down: {first} → {last}\n{stdout}"
    );
    // Each accepted change is one commit on the agent branch.
    let accepted = records
        .iter()
        .filter(|r| r["outcome"] == "accepted")
        .count();
    let commits = worktree_log(&state)
        .iter()
        .filter(|m| m.contains("\nIteration: "))
        .count();
    assert_eq!(commits, accepted);
    // The example itself was imported, never edited.
    assert_eq!(
        std::fs::read_to_string(example.join("src/lib.rs")).unwrap(),
        before
    );
    assert!(!example.join("target").exists());
}

#[test]
fn ctl_status_pause_resume_and_stop() {
    let dir = tempfile::tempdir().unwrap();
    let config = fast_config(dir.path(), &[]);
    let workspace = tiny_crate(dir.path());
    let state = dir.path().join("state");
    let mut daemon = Daemon::start(
        &state,
        &fast_args(&config, &workspace),
        &[("FAKE_CLAUDE_MODE", "edit")],
    );
    let status = daemon.wait_status("a committed iteration", WAIT, |s| Daemon::committed(s) >= 1);
    assert_eq!(status["run_state"], "running");
    assert_eq!(status["backend"], "claude-cli");
    let names: Vec<&str> = status["actors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "governor",
            "learner",
            "researcher",
            "executor",
            "modifier",
            "planner"
        ]
    );
    for actor in status["actors"].as_array().unwrap() {
        assert_eq!(actor["status"], "running");
        assert_eq!(actor["restarts"], 0);
        assert!(actor["last_error"].is_null());
    }
    let human = daemon.ctl(&["status"]);
    assert!(human.status.success());
    assert!(text(&human.stdout).contains("run state:  running"));

    let pause = daemon.ctl(&["pause"]);
    assert!(pause.status.success(), "{}", text(&pause.stderr));
    let paused = daemon.wait_status("the pause", WAIT, |s| {
        s["run_state"] == "paused" && s["in_flight"].is_null()
    });
    // Nothing starts while paused: the count holds across further polls.
    let held = Daemon::committed(&paused);
    for _ in 0..10 {
        assert_eq!(Daemon::committed(&daemon.status().unwrap()), held);
    }
    assert!(daemon.ctl(&["resume"]).status.success());
    daemon.wait_status("progress after resume", WAIT, |s| {
        Daemon::committed(s) > held
    });

    // Faults are refused outside debug mode.
    let fault = daemon.ctl(&["fault", "learner", "panic"]);
    assert_eq!(fault.status.code(), Some(1));
    assert!(
        text(&fault.stderr).contains("allowed only in debug mode"),
        "{}",
        text(&fault.stderr)
    );

    let stop = daemon.ctl(&["stop"]);
    assert!(stop.status.success());
    assert!(daemon.wait_exit(WAIT).success(), "{}", daemon.logs());
    assert!(!state.join("agent.sock").exists(), "socket removed");
    let unreachable = ctl(&state, &["status"]);
    assert_eq!(unreachable.status.code(), Some(3));
    assert!(text(&unreachable.stderr).contains("agent.sock"));
}

#[test]
fn a_run_resumes_where_it_stopped_and_refuses_a_different_goal() {
    let dir = tempfile::tempdir().unwrap();
    let config = fast_config(dir.path(), &[]);
    let workspace = tiny_crate(dir.path());
    let state = dir.path().join("state");
    let env = [("FAKE_CLAUDE_MODE", "edit")];
    let mut args = fast_args(&config, &workspace);
    args.extend(["--goal", "make it better", "--max-iterations", "2"]);
    let mut first = Daemon::start(&state, &args, &env);
    assert!(first.wait_exit(WAIT).success(), "{}", first.logs());
    assert_eq!(history(&state).len(), 2);

    // Same goal, higher limit: counting goes on from the last commit.
    let mut args = fast_args(&config, &workspace);
    args.extend(["--max-iterations", "3"]);
    let mut second = Daemon::start(&state, &args, &env);
    assert!(second.wait_exit(WAIT).success(), "{}", second.logs());
    let numbers: Vec<u64> = history(&state)
        .iter()
        .map(|r| r["iteration"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [1, 2, 3]);

    // Stop an unfinished run, then ask for another goal: refused, unchanged.
    let mut third = Daemon::start(&state, &fast_args(&config, &workspace), &env);
    third.wait_status("the daemon to answer", WAIT, |_| true);
    assert!(third.ctl(&["stop"]).status.success());
    assert!(third.wait_exit(WAIT).success());
    let count = history(&state).len();
    let mut args = fast_args(&config, &workspace);
    args.extend(["--goal", "something else"]);
    let output = Command::new(agent_bin())
        .arg("run")
        .arg("--state")
        .arg(&state)
        .args(&args)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let message = text(&output.stderr);
    assert!(
        message.contains("unfinished run with the goal \"make it better\""),
        "{message}"
    );
    assert!(message.contains("--replace-goal"), "{message}");
    assert_eq!(history(&state).len(), count);
}

#[test]
fn a_state_directory_in_use_is_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = fast_config(dir.path(), &[]);
    let workspace = tiny_crate(dir.path());
    let state = dir.path().join("state");
    let mut daemon = Daemon::start(
        &state,
        &fast_args(&config, &workspace),
        &[("FAKE_CLAUDE_MODE", "slow")],
    );
    daemon.wait_status("the daemon to answer", WAIT, |_| true);
    let second = Command::new(agent_bin())
        .arg("run")
        .arg("--state")
        .arg(&state)
        .args(fast_args(&config, &workspace))
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(3));
    let message = text(&second.stderr);
    assert_eq!(message.trim().lines().count(), 1, "{message}");
    assert!(
        message.contains("in use by a running agent") && message.contains("agent ctl"),
        "{message}"
    );
    let history = Command::new(agent_bin())
        .args(["history", "--state"])
        .arg(&state)
        .output()
        .unwrap();
    assert_eq!(history.status.code(), Some(3));

    // SIGTERM: a clean stop with exit status 0.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.pid() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(daemon.wait_exit(WAIT).success(), "{}", daemon.logs());
}

#[test]
fn repeated_failures_escalate_and_the_daemon_stops_cleanly_with_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let config = fast_config(dir.path(), &[]);
    let actors = actors_config(
        dir.path(),
        &[
            ("max_restarts = 5", "max_restarts = 2"),
            ("within = \"30s\"", "within = \"5m\""),
        ],
    );
    let workspace = tiny_crate(dir.path());
    let state = dir.path().join("state");
    let mut args = fast_args(&config, &workspace);
    args.extend(["--actors", actors.to_str().unwrap(), "--mode", "debug"]);
    let mut daemon = Daemon::start(&state, &args, &[("FAKE_CLAUDE_MODE", "edit")]);
    let status = daemon.wait_status("a committed iteration", WAIT, |s| Daemon::committed(s) >= 1);
    let committed_before = Daemon::committed(&status);
    for restarts in 1..=2 {
        let fault = daemon.ctl(&["fault", "learner", "panic"]);
        assert!(fault.status.success(), "{}", text(&fault.stderr));
        daemon.wait_status("the learner's restart", WAIT, |s| {
            Daemon::actor(s, "learner")["restarts"] == restarts
                && Daemon::actor(s, "learner")["status"] == "running"
        });
    }
    assert!(daemon.ctl(&["fault", "learner", "error"]).status.success());
    let exit = daemon.wait_exit(WAIT);
    assert_eq!(exit.code(), Some(1), "{}", daemon.logs());
    let logs = daemon.logs();
    assert!(
        logs.contains("escalated") && logs.contains("more than 2 restarts within 5m"),
        "{logs}"
    );
    // The checkpoint: the store opens and nothing committed was lost.
    assert!(history(&state).len() as u64 >= committed_before);
}

/// Runs `agent run` to its end (one iteration) and returns its stdout.
fn run_once(
    dir: &Path,
    config: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (String, std::path::PathBuf) {
    let workspace = tiny_crate(dir);
    let state = dir.join("state");
    let output = Command::new(agent_bin())
        .arg("run")
        .arg("--state")
        .arg(&state)
        .args(fast_args(config, &workspace))
        .args(["--max-iterations", "1"])
        .args(extra)
        .envs(env.iter().copied())
        .env_remove("ANTHROPIC_API_KEY")
        .output()
        .unwrap();
    let stdout = text(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        text(&output.stderr)
    );
    (stdout, state)
}

#[test]
fn auto_uses_claude_code_when_logged_in_and_says_why_it_does_not_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let config = fast_config(
        dir.path(),
        &[("backend = \"claude-cli\"", "backend = \"auto\"")],
    );

    let (stdout, _) = run_once(
        &dir.path().join("a"),
        &config,
        &[],
        &[("FAKE_CLAUDE_MODE", "edit")],
    );
    assert!(
        stdout.contains("backend mcp — Claude Code found at"),
        "{stdout}"
    );
    assert!(stdout.contains("and logged in"), "{stdout}");

    let (stdout, _) = run_once(
        &dir.path().join("b"),
        &config,
        &[],
        &[("FAKE_CLAUDE_LOGGED_IN", "0")],
    );
    assert!(
        stdout.contains("backend offline — Claude Code found at"),
        "{stdout}"
    );
    assert!(
        stdout.contains("but not logged in: using the offline backend"),
        "{stdout}"
    );

    let (stdout, _) = run_once(
        &dir.path().join("c"),
        &config,
        &["--claude-bin", "/nonexistent/claude"],
        &[],
    );
    assert!(
        stdout.contains("backend offline — Claude Code not found"),
        "{stdout}"
    );

    let (stdout, _) = run_once(
        &dir.path().join("d"),
        &config,
        &[],
        &[
            ("FAKE_CLAUDE_LOGGED_IN", "0"),
            ("ANTHROPIC_API_KEY_FOR_TEST", "x"),
        ],
    );
    assert!(stdout.contains("backend offline"), "{stdout}");
}

/// A job whose login is gone pauses the run at once, with Claude Code's
/// own line: no retry mends a login, so no iteration is spent on it.
#[test]
fn a_not_logged_in_job_pauses_the_run_at_once_with_its_message() {
    let dir = tempfile::tempdir().unwrap();
    let config = fast_config(dir.path(), &[]);
    let log = dir.path().join("calls.log");
    let workspace = tiny_crate(dir.path());
    let state = dir.path().join("state");
    let output = Command::new(agent_bin())
        .arg("run")
        .arg("--state")
        .arg(&state)
        .args(fast_args(&config, &workspace))
        .arg("--exit-on-pause")
        .env("FAKE_CLAUDE_MODE", "is-error")
        .env("FAKE_CLAUDE_PLAN_MODE", "success")
        .env("FAKE_CLAUDE_LOG", &log)
        .env_remove("ANTHROPIC_API_KEY")
        .output()
        .unwrap();
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert_eq!(output.status.code(), Some(4), "paused: {stdout}\n{stderr}");
    assert!(
        stdout.contains(
            "paused: Claude Code's login is gone: Not logged in · Please run /login; log in again"
        ),
        "{stdout}"
    );
    assert!(history(&state).is_empty(), "no iteration committed");
    let jobs = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(
        jobs.lines().filter(|l| l.contains(" acceptEdits ")).count(),
        1,
        "one job, no retry: {jobs}"
    );
    assert!(worktree_log(&state).len() == 1, "nothing committed");
}

#[test]
fn a_change_that_fails_validation_is_rolled_back_to_the_base_commit_and_clean() {
    let dir = tempfile::tempdir().unwrap();
    let config = fast_config(
        dir.path(),
        &[
            (
                "command = \"true\"",
                "command = \"echo tests failed >&2; false\"",
            ),
            // Validation fails at the base too: go on, so that the change
            // itself is judged (the default pauses at the base).
            ("failing_base = \"pause\"", "failing_base = \"proceed\""),
        ],
    );
    let (_, state) = run_once(dir.path(), &config, &[], &[("FAKE_CLAUDE_MODE", "edit")]);
    let records = history(&state);
    assert_eq!(records[0]["outcome"], "rejected");
    assert!(
        records[0]["summary"]
            .as_str()
            .unwrap()
            .contains("tests failed")
    );
    let worktree = agent::workspace::Workspace {
        path: state.join("worktree"),
    };
    assert!(
        worktree.changed_files().unwrap().is_empty(),
        "git status is clean"
    );
    let log = worktree.log().unwrap();
    assert_eq!(
        log.len(),
        1,
        "the branch is still at its base commit: {log:?}"
    );
    let lib = std::fs::read_to_string(state.join("worktree/src/lib.rs")).unwrap();
    assert!(!lib.contains("edited by claude"));
}
