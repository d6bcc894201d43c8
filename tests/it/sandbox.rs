//! The sandbox against the real binary: the stand-in claude and the
//! validation command try to write the user's checkout, the state
//! directory, `/etc` and the directory above the worktree; none of them
//! changes, while the job's edit inside the worktree is judged and kept as
//! usual. Bubblewrap is required here (`.ci/run` installs it): the test
//! runs with `[sandbox] enabled = "on"`, so a machine without it fails
//! loudly instead of passing unconfined.

use std::time::Duration;

use crate::harness::{Daemon, fast_config, history, tiny_crate};

const WAIT: Duration = Duration::from_secs(120);

#[test]
fn a_confined_job_and_check_change_nothing_outside_the_worktree() {
    let dir = tempfile::tempdir().unwrap();
    let workspace = tiny_crate(dir.path());
    let state = dir.path().join("state");
    let targets = [
        workspace.join("WRITTEN_BY_A_JOB"),
        state.join("WRITTEN_BY_A_JOB"),
        "/etc/written-by-an-agent-job".into(),
        state.join("worktree/../ABOVE_THE_WORKTREE"),
    ];
    let check_mark = workspace.join("WRITTEN_BY_VALIDATION");
    // Left by an earlier run that failed unconfined.
    let _ = std::fs::remove_file("/etc/written-by-an-agent-job");
    let _ = std::fs::remove_file("/etc/written-by-agent-validation");
    // What the check sees of the network: its interfaces and cargo's mode
    // (the last validation is the change's, after the base's).
    let network = dir.path().join("check-network");
    let validation = format!(
        "command = \"touch {} /etc/written-by-agent-validation 2>/dev/null; {{ grep -c : /proc/net/dev; echo $CARGO_NET_OFFLINE; }} > {}\"",
        check_mark.display(),
        network.display()
    );
    let config = fast_config(
        dir.path(),
        &[
            ("enabled = \"auto\"", "enabled = \"on\""),
            ("command = \"true\"", &validation),
        ],
    );
    let try_write = targets
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(" ");
    let mut daemon = Daemon::bounded(
        &state,
        &config,
        &workspace,
        1,
        &[
            ("FAKE_CLAUDE_MODE", "edit"),
            ("FAKE_CLAUDE_TRY_WRITE", try_write.as_str()),
        ],
    );
    assert!(daemon.wait_exit(WAIT).success(), "{}", daemon.logs());
    for target in targets.iter().chain([&check_mark]) {
        assert!(!target.exists(), "{} was written", target.display());
    }
    assert!(!std::path::Path::new("/etc/written-by-agent-validation").exists());
    assert_eq!(
        std::fs::read_to_string(&network).unwrap(),
        "1\ntrue\n",
        "a check has only loopback, and cargo is told it is offline"
    );
    let records = history(&state);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["outcome"], "accepted", "{records:?}");
    let worktree = agent::workspace::Workspace {
        path: state.join("worktree"),
    };
    let commits = worktree.iteration_commits().unwrap();
    assert_eq!(commits.len(), 1, "the edit inside the worktree is kept");
    assert!(
        !daemon.logs().contains("sandbox off"),
        "the sandbox ran: {}",
        daemon.logs()
    );
}

#[test]
fn on_without_a_working_bubblewrap_refuses_to_start_and_auto_says_it_is_off() {
    let dir = tempfile::tempdir().unwrap();
    let workspace = tiny_crate(dir.path());
    let state = dir.path().join("state");
    let missing = "program = \"/nonexistent/bwrap\"";
    for (enabled, refused) in [("on", true), ("auto", false)] {
        let config = fast_config(
            dir.path(),
            &[
                ("enabled = \"auto\"", &format!("enabled = \"{enabled}\"")),
                ("program = \"bwrap\"", missing),
            ],
        );
        let mut daemon = Daemon::bounded(
            &state,
            &config,
            &workspace,
            1,
            &[("FAKE_CLAUDE_MODE", "edit")],
        );
        let status = daemon.wait_exit(WAIT);
        let logs = daemon.logs();
        if refused {
            assert!(!status.success(), "{logs}");
            assert!(
                logs.contains("[sandbox] enabled = \"on\" but bubblewrap cannot run here"),
                "{logs}"
            );
        } else {
            assert!(status.success(), "{logs}");
            assert_eq!(
                logs.matches("sandbox off: bubblewrap cannot run here")
                    .count(),
                1,
                "said once: {logs}"
            );
        }
    }
}
