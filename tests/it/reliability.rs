//! Reliability of the real binary: a failure that does not go away backs off
//! and pauses the run with its error line instead of spinning.

use std::path::Path;
use std::time::Duration;

use crate::harness::{Daemon, fast_config, text, tiny_crate};

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

#[test]
fn a_persistent_failure_backs_off_then_pauses_with_its_error_line_and_resumes_when_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let probe = dir.path().join("fitness.sh");
    std::fs::write(&probe, BROKEN_FITNESS).unwrap();
    let fitness = format!("fitness = \"sh {}\"", probe.display());
    let config = fast_config(
        dir.path(),
        &[
            ("fitness = \"echo 1\"", &fitness),
            ("retry_initial = \"1s\"", "retry_initial = \"200ms\""),
        ],
    );
    let workspace = tiny_crate(dir.path());
    let mut daemon = Daemon::start(
        &dir.path().join("state"),
        &args(&config, &workspace),
        &[],
    );
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

/// Whether `pid` runs (a zombie waiting for its reaper does not).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| !stat.contains(") Z "))
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
    let config = fast_config(dir.path(), &[("command = \"true\"", &validation)]);
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
        old.iter().any(|pid| alive(*pid)),
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
