//! Reliability of the real binary: a failure that does not go away backs off
//! and pauses the run with its error line instead of spinning.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use crate::harness::{Daemon, UNCONFINED, audit_chain, fast_config, text, tiny_crate};

const WAIT: Duration = Duration::from_secs(120);

fn args<'a>(config: &'a Path, workspace: &'a Path) -> Vec<&'a str> {
    vec![
        "--config",
        config.to_str().unwrap(),
        "--workspace",
        workspace.to_str().unwrap(),
    ]
}

/// A fitness probe that fails the way a broken toolchain does: noise, the
/// error, then a backtrace whose tail is useless.
const BROKEN_FITNESS: &str = "echo 'warning: unused manifest key' >&2\n\
echo 'error: the fitness probe is broken' >&2\n\
echo 'stack backtrace:' >&2\n\
echo '  13: <unknown>' >&2\n\
exit 3\n";

/// A configuration whose fitness is `BROKEN_FITNESS` in a script the test
/// can fix later: the script's path and the configuration's.
fn broken_fitness_config(
    dir: &Path,
    extra: &[(&str, &str)],
) -> (std::path::PathBuf, std::path::PathBuf) {
    let probe = dir.join("fitness.sh");
    std::fs::write(&probe, BROKEN_FITNESS).unwrap();
    let fitness = format!("fitness = \"sh {}\"", probe.display());
    let mut replacements = vec![("fitness = \"echo 1\"", fitness.as_str())];
    replacements.extend_from_slice(extra);
    (probe, fast_config(dir, &replacements))
}

#[test]
fn a_persistent_failure_backs_off_then_pauses_with_its_error_line_and_resumes_when_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let (probe, config) = broken_fitness_config(
        dir.path(),
        &[("retry_initial = \"1s\"", "retry_initial = \"200ms\"")],
    );
    let workspace = tiny_crate(dir.path());
    let mut daemon = Daemon::start(&dir.path().join("state"), &args(&config, &workspace), &[]);
    let paused = daemon.wait_status("the run to pause on its own", WAIT, |s| {
        s["run_state"] == "paused"
    });
    let reason = paused["pause_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("paused after 5 failed attempts in a row")
            && reason.contains("error: the fitness probe is broken"),
        "{paused}"
    );
    assert!(!reason.contains("<unknown>"), "{reason}");
    assert_eq!(Daemon::committed(&paused), 0);
    // Paused means no more attempts: 5 in all, the last one before the pause.
    let stdout = daemon.stdout.clone();
    let attempts = || {
        text(&std::fs::read(&stdout).unwrap())
            .matches("abandoned before its commit")
            .count()
    };
    assert_eq!(attempts(), 5, "{}", daemon.logs());
    let human = daemon.ctl(&["status"]);
    assert!(
        text(&human.stdout).contains("paused:     paused after 5 failed attempts"),
        "{}",
        text(&human.stdout)
    );

    std::fs::write(&probe, "echo 1\n").unwrap();
    assert!(daemon.ctl(&["resume"]).status.success());
    let resumed = daemon.wait_status("an iteration after the fix", WAIT, |s| {
        Daemon::committed(s) >= 1
    });
    assert_eq!(resumed["run_state"], "running");
    assert!(resumed["pause_reason"].is_null(), "{resumed}");
    assert_eq!(attempts(), 5, "no attempt failed after the fix");
    assert!(daemon.ctl(&["stop"]).status.success());
    assert!(daemon.wait_exit(WAIT).success());
}

#[test]
fn kill_9_during_validation_leaves_no_process_of_the_old_run_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    // A slow test suite: a child of its own (like the test binary under
    // `cargo test`) that outlives its parent's death.
    let suite = dir.path().join("suite.sh");
    std::fs::write(
        &suite,
        format!(
            "sleep 300 &\necho $! >> {pids}\necho $$ >> {pids}\nwait\n",
            pids = pids.display()
        ),
    )
    .unwrap();
    let validation = format!("command = \"sh {}\"", suite.display());
    let config = fast_config(
        dir.path(),
        &[("command = \"true\"", &validation), UNCONFINED],
    );
    let workspace = tiny_crate(dir.path());
    let state = dir.path().join("state");
    let edit = [("FAKE_CLAUDE_MODE", "edit")];
    let mut daemon = Daemon::start(&state, &args(&config, &workspace), &edit);
    let read_pids = || -> Vec<i32> {
        std::fs::read_to_string(&pids)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    };
    let old = crate::harness::poll_until("the validation suite to start", WAIT, || {
        let found = read_pids();
        (found.len() >= 2).then_some(found)
    });
    daemon.kill9();
    // The suite's child survives the kill: that is what a restart cleans up.
    assert!(
        old.iter().any(|pid| crate::harness::alive(*pid)),
        "nothing of the old run was left to clean up: {old:?}"
    );
    let mut daemon = Daemon::start(&state, &args(&config, &workspace), &edit);
    daemon.wait_status("the restarted daemon", WAIT, |_| true);
    for pid in &old {
        crate::harness::wait_gone(*pid);
    }
    assert!(
        text(&std::fs::read(&daemon.stdout).unwrap())
            .contains("left running by an earlier run of this state directory"),
        "{}",
        daemon.logs()
    );
    assert!(daemon.ctl(&["stop", "--now"]).status.success());
    assert!(daemon.wait_exit(WAIT).success());
}

#[test]
fn a_rust_workspace_without_a_working_cargo_is_refused_at_start_with_the_error_line() {
    let dir = tempfile::tempdir().unwrap();
    // A cargo that fails the way rustup does without its toolchain.
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let cargo = bin.join("cargo");
    std::fs::write(
        &cargo,
        "#!/bin/sh\necho \"error: toolchain 'stable-x86_64-unknown-linux-gnu' is not installed\" >&2\n\
         echo 'stack backtrace:' >&2\necho '  13: <unknown>' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&cargo, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = fast_config(
        dir.path(),
        &[("command = \"true\"", "command = \"cargo test\"")],
    );
    let workspace = tiny_crate(dir.path());
    let path = format!("{}:/usr/bin:/bin", bin.display());
    let output = std::process::Command::new(crate::harness::agent_bin())
        .args(["run", "--state"])
        .arg(dir.path().join("state"))
        .args(args(&config, &workspace))
        .env("PATH", path)
        .output()
        .unwrap();
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("agent: cargo cannot run in the workspace (error: toolchain 'stable-x86_64-unknown-linux-gnu' is not installed)"),
        "{stderr}"
    );
    assert!(!stderr.contains("<unknown>"), "{stderr}");
}

/// The agent branch's iteration ids, newest first.
fn branch_iterations(state: &Path) -> Vec<u64> {
    crate::harness::worktree_log(state)
        .iter()
        .filter_map(|message| agent::workspace::iteration_of(message))
        .collect()
}

/// `agent run` to its end, killed (and reported as such) after a minute.
fn run_to_exit(state: &Path, args: &[&str]) -> std::process::Output {
    let logs = tempfile::tempdir().unwrap();
    let (out, err) = (logs.path().join("out"), logs.path().join("err"));
    let mut command = std::process::Command::new(crate::harness::agent_bin());
    crate::harness::clean_environment(&mut command);
    let mut child = command
        .args(["run", "--state"])
        .arg(state)
        .args(args)
        .env("FAKE_CLAUDE_MODE", "edit")
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            let status = child.wait().unwrap();
            std::fs::write(&err, "agent run did not end within 60s; killed\n").unwrap();
            break status;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    std::process::Output {
        status,
        stdout: std::fs::read(&out).unwrap(),
        stderr: std::fs::read(&err).unwrap(),
    }
}

#[test]
fn a_store_that_lost_iterations_is_refused_untouched_and_recovered_from_git() {
    let dir = tempfile::tempdir().unwrap();
    let config = fast_config(dir.path(), &[]);
    let workspace = tiny_crate(dir.path());
    let state = dir.path().join("state");
    let run_args = args(&config, &workspace);
    let edit = [("FAKE_CLAUDE_MODE", "edit")];
    let mut daemon = Daemon::start(&state, &run_args, &edit);
    daemon.wait_status("two iterations", WAIT, |s| Daemon::committed(s) >= 2);
    // A backup taken through the running daemon: an older copy of the store.
    let backup = dir.path().join("older.backup");
    let taken = std::process::Command::new(crate::harness::agent_bin())
        .args(["backup", "--state"])
        .arg(&state)
        .arg("--to")
        .arg(&backup)
        .output()
        .unwrap();
    assert!(taken.status.success(), "{}", text(&taken.stderr));
    assert!(
        text(&taken.stdout).contains("written to"),
        "{}",
        text(&taken.stdout)
    );
    daemon.wait_status("five iterations", WAIT, |s| Daemon::committed(s) >= 5);
    assert!(daemon.ctl(&["stop"]).status.success());
    assert!(daemon.wait_exit(WAIT).success());
    let before = crate::harness::history(&state).len();
    let branch = branch_iterations(&state);
    assert_eq!(branch.len(), before, "every iteration was accepted");

    // Lose the last iterations: the store goes back to the older copy.
    std::fs::rename(state.join("store"), dir.path().join("store.newer")).unwrap();
    let restored = std::process::Command::new(crate::harness::agent_bin())
        .args(["restore", "--from"])
        .arg(&backup)
        .arg("--state")
        .arg(&state)
        .output()
        .unwrap();
    assert!(restored.status.success(), "{}", text(&restored.stderr));
    let older = crate::harness::history(&state).len();
    assert!(older < before, "{older} < {before}");

    // Bounded, so that a run that is not refused ends (and fails the test).
    let mut bounded = run_args.clone();
    let limit = (before + 2).to_string();
    bounded.extend(["--max-iterations", &limit]);
    let refused = run_to_exit(&state, &bounded);
    let stderr = text(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    let line = stderr.lines().last().unwrap_or_default();
    assert!(
        line.contains(&format!("the store knows {older} committed iteration(s)"))
            && line.contains("it lost committed work")
            && line.contains("--recover-from-git"),
        "{stderr}"
    );
    assert_eq!(
        branch_iterations(&state),
        branch,
        "the branch was not touched"
    );
    assert_eq!(crate::harness::history(&state).len(), older);

    // The recovery rebuilds the lost iterations and the run goes on from there.
    let mut recovery = run_args.clone();
    recovery.push("--recover-from-git");
    let mut daemon = Daemon::start(&state, &recovery, &edit);
    let status = daemon.wait_status("iterations after the recovery", WAIT, |s| {
        Daemon::committed(s) > before as u64
    });
    assert!(Daemon::committed(&status) > before as u64);
    assert!(daemon.ctl(&["stop"]).status.success());
    assert!(daemon.wait_exit(WAIT).success());
    let history = crate::harness::history(&state);
    let numbers: Vec<u64> = history
        .iter()
        .map(|h| h["iteration"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, (1..=numbers.len() as u64).collect::<Vec<_>>());
    let mut on_branch = branch_iterations(&state);
    assert_eq!(
        &on_branch[on_branch.len() - branch.len()..],
        branch.as_slice()
    );
    on_branch.sort_unstable();
    on_branch.dedup();
    assert_eq!(
        on_branch.len(),
        branch_iterations(&state).len(),
        "no iteration twice"
    );
}

#[test]
fn a_store_with_overwritten_bytes_is_refused_in_one_sentence_or_keeps_every_iteration() {
    let dir = tempfile::tempdir().unwrap();
    let config = fast_config(dir.path(), &[]);
    let workspace = tiny_crate(dir.path());
    let state = dir.path().join("state");
    let run_args = args(&config, &workspace);
    let edit = [("FAKE_CLAUDE_MODE", "edit")];
    let mut daemon = Daemon::start(&state, &run_args, &edit);
    daemon.wait_status("six iterations", WAIT, |s| Daemon::committed(s) >= 6);
    assert!(daemon.ctl(&["stop"]).status.success());
    assert!(daemon.wait_exit(WAIT).success());
    let before = crate::harness::history(&state).len() as u64;
    let db = state.join("store/db");
    let bytes = std::fs::read(&db).unwrap();
    let mut refusals = 0;
    // Early offsets hit what sled reads at start (it refuses); later ones
    // may hit space it no longer reads (it opens).
    for at in [100, 4096, bytes.len() / 2] {
        let mut damaged = bytes.clone();
        let end = (at + 64).min(damaged.len());
        damaged[at..end].fill(0xA5);
        std::fs::write(&db, &damaged).unwrap();
        let mut limited = run_args.clone();
        limited.extend(["--max-iterations", "1"]);
        let output = run_to_exit(&state, &limited);
        refusals += usize::from(!output.status.success());
        let stderr = text(&output.stderr);
        if output.status.success() {
            // sled read past the damage: then nothing committed may be lost.
            let after = crate::harness::history(&state).len() as u64;
            assert!(after >= before, "{after} < {before} after damage at {at}");
        } else {
            let line = stderr.lines().last().unwrap_or_default();
            assert!(
                line.contains("is damaged") || line.contains("lost committed work"),
                "damage at {at}: {stderr}"
            );
            assert!(!stderr.contains("backtrace"), "{stderr}");
            assert!(!stderr.contains("panicked"), "{stderr}");
        }
        std::fs::write(&db, &bytes).unwrap();
    }
    assert!(refusals > 0, "no damage was noticed at any offset");
}

/// How a test ends the daemon during a slow job.
enum Ending {
    Signal(nix::sys::signal::Signal),
    StopNow,
    /// A first SIGINT (graceful: it would wait), then a second one.
    SecondInterrupt,
    /// `<state>/STOP`, for an operator without the socket.
    StopFile,
}

/// Ends a daemon while a slow job runs: the in-flight iteration ends within
/// the shutdown deadline (never waiting for the job), the job's process
/// group is gone and the worktree is clean.
fn end_during_a_slow_job(
    ending: Ending,
    shutdown_timeout: &str,
) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    std::fs::create_dir(&pids).unwrap();
    let timeout = format!("shutdown_timeout = \"{shutdown_timeout}\"");
    let config = fast_config(
        dir.path(),
        &[("shutdown_timeout = \"10s\"", &timeout), UNCONFINED],
    );
    let workspace = tiny_crate(dir.path());
    let state = dir.path().join("state");
    let env = [
        ("FAKE_CLAUDE_MODE", "edit"),
        ("FAKE_CLAUDE_DELAY", "120"),
        ("FAKE_CLAUDE_PID_DIR", pids.to_str().unwrap()),
    ];
    let mut daemon = Daemon::start(&state, &args(&config, &workspace), &env);
    let job = crate::harness::poll_until("the slow job to start", WAIT, || {
        let found: Vec<i32> = std::fs::read_dir(&pids)
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".pid")?.parse().ok())
            .collect();
        found.first().copied()
    });
    let asked = std::time::Instant::now();
    match ending {
        Ending::Signal(signal) => {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(daemon.pid() as i32), signal).unwrap()
        }
        Ending::StopNow => assert!(daemon.ctl(&["stop", "--now"]).status.success()),
        Ending::SecondInterrupt => {
            let pid = nix::unistd::Pid::from_raw(daemon.pid() as i32);
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
            // The first one is taken (the daemon says it is shutting down)
            // before the second is sent.
            crate::harness::poll_until("the graceful shutdown", WAIT, || {
                daemon.logs().contains("shutting down").then_some(())
            });
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
        }
        Ending::StopFile => std::fs::write(state.join("STOP"), "").unwrap(),
    }
    let status = daemon.wait_exit(WAIT);
    let took = asked.elapsed();
    assert!(status.success(), "{status}: {}", daemon.logs());
    // The job would have run two minutes (cut at the 20s job deadline):
    // the daemon waited for neither.
    assert!(took < Duration::from_secs(15), "took {took:?}");
    crate::harness::wait_gone(job);
    let worktree = agent::workspace::Workspace {
        path: state.join("worktree"),
    };
    assert_eq!(worktree.changed_files().unwrap(), Vec::<String>::new());
    (dir, state)
}

#[test]
fn sigterm_during_a_slow_job_ends_the_iteration_within_the_shutdown_deadline() {
    end_during_a_slow_job(Ending::Signal(nix::sys::signal::Signal::SIGTERM), "2s");
}

#[test]
fn sigint_during_a_slow_job_ends_the_iteration_within_the_shutdown_deadline() {
    end_during_a_slow_job(Ending::Signal(nix::sys::signal::Signal::SIGINT), "2s");
}

#[test]
fn a_second_interrupt_during_a_slow_job_kills_the_job_at_once() {
    let (_dir, state) = end_during_a_slow_job(Ending::SecondInterrupt, "10m");
    let chain = audit_chain(&state);
    assert!(
        chain.contains("\"detail\":\"SIGINT: stopping gracefully\""),
        "{chain}"
    );
    assert!(
        chain.contains("\"detail\":\"a second SIGINT: stopping now\""),
        "{chain}"
    );
}

#[test]
fn a_stop_file_during_a_slow_job_kills_the_job_at_once_and_keeps_the_next_start_from_running() {
    let (_dir, state) = end_during_a_slow_job(Ending::StopFile, "10m");
    let chain = audit_chain(&state);
    assert!(
        chain.contains("\"detail\":\"the STOP file: stopping now\""),
        "{chain}"
    );
    let config = fast_config(state.parent().unwrap(), &[UNCONFINED]);
    let workspace = state.parent().unwrap().join("workspace");
    let mut daemon = Daemon::start(&state, &args(&config, &workspace), &[]);
    let status = daemon.wait_exit(WAIT);
    assert_eq!(status.code(), Some(2), "{}", daemon.logs());
    assert!(
        daemon
            .logs()
            .contains("an emergency stop was asked for; remove the file to run again"),
        "{}",
        daemon.logs()
    );
}

#[test]
fn stop_now_during_a_slow_job_kills_the_job_at_once() {
    // A deadline longer than the test's patience: only "now" can end it in time.
    end_during_a_slow_job(Ending::StopNow, "10m");
}

/// A `kill -9` in the middle of a git write leaves git's lock files in the
/// agent's worktree; left there, every later iteration fails ("the index is
/// locked") until the run pauses. The next start removes them, says so, and
/// the run goes on.
#[test]
fn git_locks_left_by_a_killed_run_are_removed_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = fast_config(dir.path(), &[UNCONFINED]);
    let workspace = tiny_crate(dir.path());
    let state = dir.path().join("state");
    let args = args(&config, &workspace);
    let first = run_to_exit(&state, &[&args[..], &["--max-iterations", "1"]].concat());
    assert!(first.status.success(), "{}", text(&first.stderr));
    // What a run killed inside `git commit` leaves: the worktree's index
    // lock and its branch's ref lock.
    let repo = git2::Repository::open(state.join("worktree")).unwrap();
    let branch = repo.head().unwrap().name().unwrap().to_string();
    let locks = [
        repo.path().join("index.lock"),
        repo.commondir().join(format!("{branch}.lock")),
    ];
    for lock in &locks {
        std::fs::write(lock, "").unwrap();
    }
    let second = run_to_exit(&state, &[&args[..], &["--max-iterations", "2"]].concat());
    let said = text(&second.stdout);
    assert!(second.status.success(), "{said}\n{}", text(&second.stderr));
    for lock in &locks {
        assert!(!lock.exists(), "{} is still there", lock.display());
        assert!(
            said.contains(&format!("removed {}", lock.display())),
            "the start says what it removed: {said}"
        );
    }
    assert_eq!(branch_iterations(&state), vec![2, 1], "{said}");
}

#[test]
fn exit_on_pause_checkpoints_and_exits_with_status_4_and_a_start_after_the_fix_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let (probe, config) = broken_fitness_config(
        dir.path(),
        &[
            ("retry_initial = \"1s\"", "retry_initial = \"10ms\""),
            ("pause_after_failures = 5", "pause_after_failures = 2"),
        ],
    );
    let workspace = tiny_crate(dir.path());
    let state = dir.path().join("state");
    let mut run_args = args(&config, &workspace);
    run_args.push("--exit-on-pause");
    let mut daemon = Daemon::start(&state, &run_args, &[]);
    let status = daemon.wait_exit(WAIT);
    let stdout = text(&std::fs::read(&daemon.stdout).unwrap());
    assert_eq!(status.code(), Some(4), "{}", daemon.logs());
    assert_eq!(
        stdout.matches("abandoned before its commit").count(),
        2,
        "{stdout}"
    );
    let paused = stdout
        .lines()
        .find(|line| line.starts_with("agent: paused: "))
        .unwrap_or_else(|| panic!("one pause line: {stdout}"));
    assert!(
        paused.contains("error: the fitness probe is broken")
            && paused.contains("run `agent run` again to resume"),
        "{paused}"
    );
    assert_eq!(
        stdout.matches("agent: paused: ").count(),
        1,
        "said once: {stdout}"
    );
    assert!(
        stdout.contains("agent: exited on the pause, state checkpointed"),
        "{stdout}"
    );
    assert!(
        audit_chain(&state).contains("paused (--exit-on-pause)"),
        "the checkpoint's run.ended names the pause"
    );

    // Fixed, and started again the same way: it resumes and goes on.
    std::fs::write(&probe, "echo 1\n").unwrap();
    run_args.extend(["--max-iterations", "1"]);
    let mut again = Daemon::start(&state, &run_args, &[]);
    assert!(again.wait_exit(WAIT).success(), "{}", again.logs());
    let stdout = text(&std::fs::read(&again.stdout).unwrap());
    assert!(
        stdout.contains("started again with --exit-on-pause, it resumes"),
        "{stdout}"
    );
    assert!(stdout.contains("iteration   1  claude-edit"), "{stdout}");
    assert!(audit_chain(&state).contains("run.resume"));
}
