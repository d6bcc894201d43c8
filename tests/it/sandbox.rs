//! The sandbox against the real binary: the stand-in claude and the
//! validation command try to write the user's checkout, the state
//! directory, `/etc` and the directory above the worktree; none of them
//! changes, while the job's edit inside the worktree is judged and kept as
//! usual. Bubblewrap is required here (`.ci/run` installs it): the test
//! runs with `[sandbox] enabled = "on"`, so a machine without it fails
//! loudly instead of passing unconfined.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::harness::{
    Daemon, agent_bin, clean_environment, fast_config, history, text, tiny_crate,
};

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

/// `agent run` in `dir` with relative paths only, as a user types them.
fn run_in(dir: &Path, args: &[&str]) -> std::process::Output {
    let mut command = Command::new(agent_bin());
    clean_environment(&mut command);
    command
        .current_dir(dir)
        .arg("run")
        .args(args)
        .env("FAKE_CLAUDE_MODE", "edit")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn relative_state_workspace_and_writable_paths_from_another_directory_run_confined() {
    let dir = tempfile::tempdir().unwrap();
    tiny_crate(dir.path());
    std::fs::create_dir(dir.path().join("cache")).unwrap();
    let mark = dir.path().join("cache/validated");
    let validation = format!("command = \"touch {}\"", mark.display());
    let writable = format!("writable = [\"{}\"]", dir.path().display());
    fast_config(
        dir.path(),
        &[
            ("enabled = \"auto\"", "enabled = \"on\""),
            (&writable, "writable = [\"cache\"]"),
            ("command = \"true\"", &validation),
        ],
    );
    // The test's working directory is not the project's root, and no path
    // the agent is given is absolute.
    let output = run_in(
        dir.path(),
        &[
            "--config",
            "agent.toml",
            "--state",
            "state",
            "--workspace",
            "workspace",
            "--max-iterations",
            "1",
            "--exit-on-pause",
        ],
    );
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("agent: sandbox on"), "{stdout}");
    assert!(
        mark.exists(),
        "the relative writable path was bound writable:\n{stdout}\n{stderr}"
    );
    let records = history(&dir.path().join("state"));
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["outcome"], "accepted", "{records:?}");
}

/// Stands in for bubblewrap: refuses any command line that runs clippy the
/// way bubblewrap refuses a bind whose source is missing (naming the first
/// `--bind`), and hands everything else to the real one.
const BWRAP_REFUSING_CLIPPY: &str = r#"#!/bin/sh
case "$*" in
*clippy*)
    prev=
    for arg; do
        if [ "$prev" = --bind ]; then
            echo "bwrap: Can't find source path $arg: No such file or directory" >&2
            exit 1
        fi
        prev=$arg
    done
    ;;
esac
exec bwrap "$@"
"#;

#[test]
fn a_sandbox_that_cannot_start_a_check_is_named_and_never_blamed_on_the_workspace() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let workspace = tiny_crate(dir.path());
    let wrapper = dir.path().join("bwrap-refusing-clippy");
    std::fs::write(&wrapper, BWRAP_REFUSING_CLIPPY).unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let program = format!("program = \"{}\"", wrapper.display());
    let config = fast_config(
        dir.path(),
        &[
            ("enabled = \"auto\"", "enabled = \"on\""),
            ("program = \"bwrap\"", &program),
            ("fitness = \"echo 1\"", "fitness = \"cargo-warnings\""),
            ("pause_after_failures = 5", "pause_after_failures = 2"),
            ("retry_initial = \"1s\"", "retry_initial = \"10ms\""),
        ],
    );
    let mut daemon = Daemon::start(
        &dir.path().join("state"),
        &[
            "--config",
            config.to_str().unwrap(),
            "--workspace",
            workspace.to_str().unwrap(),
            "--exit-on-pause",
        ],
        &[("FAKE_CLAUDE_MODE", "edit")],
    );
    // The probe's `true` passes: the run starts, and its clippy is refused.
    let status = daemon.wait_exit(WAIT);
    let logs = daemon.logs();
    assert_eq!(status.code(), Some(4), "paused and exited: {logs}");
    let stdout = text(&std::fs::read(&daemon.stdout).unwrap());
    let abandoned = stdout
        .lines()
        .find(|line| line.contains("abandoned before its commit"))
        .unwrap_or_else(|| panic!("an abandoned attempt: {logs}"));
    assert!(
        abandoned.contains("sandbox: bubblewrap could not start `cargo clippy")
            && abandoned.contains("bwrap: Can't find source path")
            && abandoned.contains("(at `--bind "),
        "{abandoned}"
    );
    assert!(
        !logs.contains("does not build"),
        "a sandbox failure is not the workspace's: {logs}"
    );
    let paused = stdout
        .lines()
        .find(|line| line.starts_with("agent: paused: "))
        .unwrap_or_else(|| panic!("the pause said: {logs}"));
    assert!(
        paused.contains("sandbox: bubblewrap could not start"),
        "{paused}"
    );
}

#[test]
fn on_with_a_bind_bubblewrap_refuses_is_refused_at_start_naming_the_bind() {
    let dir = tempfile::tempdir().unwrap();
    let workspace = tiny_crate(dir.path());
    let missing = dir.path().join("no-such-cache");
    let writable = format!("writable = [\"{}\"]", dir.path().display());
    let refused = format!("writable = [\"{}\"]", missing.display());
    let config = fast_config(
        dir.path(),
        &[
            ("enabled = \"auto\"", "enabled = \"on\""),
            (&writable, &refused),
        ],
    );
    let mut daemon = Daemon::bounded(&dir.path().join("state"), &config, &workspace, 1, &[]);
    let status = daemon.wait_exit(WAIT);
    let logs = daemon.logs();
    assert_eq!(status.code(), Some(2), "{logs}");
    assert!(
        logs.contains("[sandbox] enabled = \"on\" but bubblewrap cannot run here: bwrap: Can't find source path")
            && logs.contains(&format!("(at `--bind {0} {0}`)", missing.display())),
        "{logs}"
    );
    assert!(!logs.contains("iteration   1"), "nothing ran: {logs}");
}
