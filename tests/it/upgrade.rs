//! The keeper (`[upgrade] enabled`) against the real binary: it runs the
//! agent as its child, restarts it after a `kill -9` with the run going on,
//! stops restarting a release that keeps crashing, and never boots again a
//! release that was on probation when everything went down.

use std::path::Path;
use std::time::Duration;

use crate::harness::{Daemon, fast_config, history, poll_until, tiny_crate, wait_gone};

const WAIT: Duration = Duration::from_secs(120);

fn keeper_config(dir: &Path, extra: &[(&str, &str)]) -> std::path::PathBuf {
    let mut all = vec![(
        "enabled = false\n# A started release",
        "enabled = true\n# A started release",
    )];
    all.extend_from_slice(extra);
    fast_config(dir, &all)
}

/// The keeper's children, from every one of its threads.
fn children_of(pid: u32) -> Vec<i32> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    let mut children = Vec::new();
    for task in tasks.flatten() {
        let listed = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        children.extend(
            listed
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok()),
        );
    }
    children
}

/// How many iterations the stopped run at `state` committed, each once and
/// none missing.
fn committed_once_each(state: &Path) -> u64 {
    let numbers: Vec<u64> = history(state)
        .iter()
        .map(|r| r["iteration"].as_u64().unwrap())
        .collect();
    assert_eq!(
        numbers,
        (1..=numbers.len() as u64).collect::<Vec<_>>(),
        "no gap, nothing twice"
    );
    numbers.len() as u64
}

fn stderr_of(daemon: &Daemon) -> String {
    std::fs::read_to_string(&daemon.stderr).unwrap_or_default()
}

#[test]
fn the_keeper_restarts_a_killed_agent_and_the_run_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let config = keeper_config(dir.path(), &[]);
    let workspace = tiny_crate(dir.path());
    let state = dir.path().join("state");
    let mut daemon =
        Daemon::unbounded(&state, &config, &workspace, &[("FAKE_CLAUDE_MODE", "edit")]);
    let before = daemon.wait_status("a committed iteration", WAIT, |s| Daemon::committed(s) >= 1);
    let child = poll_until("the keeper's child", WAIT, || {
        let children = children_of(daemon.pid());
        (children.len() == 1).then(|| children[0])
    });
    assert_ne!(
        child,
        daemon.pid() as i32,
        "the agent runs as the keeper's child"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_gone(child);
    let after = daemon.wait_status("the run to go on after the restart", WAIT, |s| {
        Daemon::committed(s) > Daemon::committed(&before) + 1
    });
    let restarted = children_of(daemon.pid());
    assert_eq!(restarted.len(), 1, "one agent at a time: {restarted:?}");
    assert_ne!(restarted[0], child);
    assert!(
        stderr_of(&daemon).contains("agent: keeper: release installed crashed: it was killed by SIGKILL; restarting it in 1s"),
        "{}",
        daemon.logs()
    );
    assert!(daemon.ctl(&["stop"]).status.success());
    assert!(daemon.wait_exit(WAIT).success(), "{}", daemon.logs());
    wait_gone(restarted[0]);
    // Nothing committed was lost or done twice.
    assert!(committed_once_each(&state) >= Daemon::committed(&after));
}

#[test]
fn a_release_on_probation_when_everything_went_down_is_not_booted_again() {
    let dir = tempfile::tempdir().unwrap();
    let config = keeper_config(dir.path(), &[]);
    let workspace = tiny_crate(dir.path());
    let state = dir.path().join("state");
    // A candidate that was current, never permanent, when the keeper died:
    // its binary would fail at once.
    let releases = agent::upgrade::releases::Releases::of_state(&state);
    releases
        .stage("candidate", Path::new("/bin/false"))
        .unwrap();
    releases
        .point(agent::upgrade::releases::Pointer::Current, "candidate")
        .unwrap();
    let mut daemon = Daemon::bounded(
        &state,
        &config,
        &workspace,
        1,
        &[("FAKE_CLAUDE_MODE", "edit")],
    );
    assert!(daemon.wait_exit(WAIT).success(), "{}", daemon.logs());
    assert!(
        stderr_of(&daemon).contains(
            "agent: keeper: release candidate was on probation when the keeper last stopped; booting the permanent release installed"
        ),
        "{}",
        daemon.logs()
    );
    assert_eq!(
        std::fs::read_to_string(state.join("releases/current")).unwrap(),
        "installed\n"
    );
    assert_eq!(history(&state).len(), 1, "the permanent release ran");
}

/// Every start of the release aborts at its first commit: past
/// `max_restarts` the keeper stops, with the cause, instead of spinning.
#[cfg(feature = "failpoints")]
#[test]
fn a_release_that_keeps_crashing_stops_the_keeper_with_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    let config = keeper_config(dir.path(), &[("max_restarts = 5", "max_restarts = 1")]);
    let workspace = tiny_crate(dir.path());
    let state = dir.path().join("state");
    let env = [
        ("FAKE_CLAUDE_MODE", "edit"),
        ("FAILPOINTS", "iteration.before_store_commit=return"),
    ];
    let mut daemon = Daemon::unbounded(&state, &config, &workspace, &env);
    let status = daemon.wait_exit(WAIT);
    assert_eq!(status.code(), Some(1), "{}", daemon.logs());
    let stderr = stderr_of(&daemon);
    assert!(
        stderr.contains("agent: keeper: release installed crashed 2 times within 10m: it was killed by SIGABRT; not restarting it"),
        "{}",
        daemon.logs()
    );
    assert_eq!(stderr.matches("restarting it in").count(), 1, "{stderr}");
    assert!(history(&state).is_empty());
}

/// `agent ctl upgrade` to a working binary: the run checkpoints, the
/// keeper starts the new release on probation, the run goes on without a
/// gap, and after its probation the release is permanent.
#[test]
fn a_handover_to_a_working_release_goes_on_and_is_made_permanent() {
    let dir = tempfile::tempdir().unwrap();
    let config = keeper_config(dir.path(), &[("probation = \"10m\"", "probation = \"2s\"")]);
    let workspace = tiny_crate(dir.path());
    let state = dir.path().join("state");
    let mut daemon =
        Daemon::unbounded(&state, &config, &workspace, &[("FAKE_CLAUDE_MODE", "edit")]);
    let before = daemon.wait_status("a committed iteration", WAIT, |s| Daemon::committed(s) >= 1);
    assert_eq!(before["release"]["name"], "installed", "{before}");
    assert_eq!(before["release"]["permanent"], true, "{before}");
    let binary = crate::harness::agent_bin();
    let asked = daemon.ctl(&["upgrade", binary.to_str().unwrap()]);
    assert!(
        asked.status.success(),
        "{}",
        crate::harness::text(&asked.stderr)
    );
    let release = poll_until("the new release to be made permanent", WAIT, || {
        let permanent = std::fs::read_to_string(state.join("releases/permanent")).ok()?;
        permanent
            .starts_with("upgrade-")
            .then(|| permanent.trim().to_string())
    });
    assert_eq!(
        std::fs::read_to_string(state.join("releases/current"))
            .unwrap()
            .trim(),
        release
    );
    let status = daemon.wait_status("the run to go on in the new release", WAIT, |s| {
        Daemon::committed(s) > Daemon::committed(&before) + 1 && s["release"]["permanent"] == true
    });
    assert_eq!(status["release"]["name"], release.as_str(), "{status}");
    // The store as the old release left it, restorable.
    let backup = state.join("releases").join(&release).join("before.backup");
    let restored = dir.path().join("restored");
    let restore = std::process::Command::new(crate::harness::agent_bin())
        .args(["restore", "--from", backup.to_str().unwrap(), "--state"])
        .arg(&restored)
        .output()
        .unwrap();
    assert!(
        restore.status.success(),
        "{}",
        crate::harness::text(&restore.stderr)
    );
    assert_eq!(status["release"]["version"], env!("CARGO_PKG_VERSION"));
    let stderr = stderr_of(&daemon);
    assert!(
        stderr.contains(&format!(
            "handing over from release installed to {release}, on probation for 2s"
        )),
        "{}",
        daemon.logs()
    );
    assert!(stderr.contains(&format!(
        "release {release} passed its probation and is permanent"
    )));
    assert!(daemon.ctl(&["stop"]).status.success());
    assert!(daemon.wait_exit(WAIT).success(), "{}", daemon.logs());
    committed_once_each(&state);
}

/// A handover to a binary that cannot come up (it exits at once): the
/// keeper rolls back to the permanent release and the run goes on.
#[test]
fn a_handover_to_a_release_that_fails_its_gate_is_rolled_back() {
    let dir = tempfile::tempdir().unwrap();
    let config = keeper_config(dir.path(), &[]);
    let workspace = tiny_crate(dir.path());
    let state = dir.path().join("state");
    let mut daemon =
        Daemon::unbounded(&state, &config, &workspace, &[("FAKE_CLAUDE_MODE", "edit")]);
    let before = daemon.wait_status("a committed iteration", WAIT, |s| Daemon::committed(s) >= 1);
    let asked = daemon.ctl(&["upgrade", "/bin/false"]);
    assert!(
        asked.status.success(),
        "{}",
        crate::harness::text(&asked.stderr)
    );
    poll_until("the rollback", WAIT, || {
        stderr_of(&daemon)
            .contains("rolled back to the permanent release installed")
            .then_some(())
    });
    daemon.wait_status("the run to go on in the permanent release", WAIT, |s| {
        Daemon::committed(s) > Daemon::committed(&before) + 1
    });
    let stderr = stderr_of(&daemon);
    assert!(
        stderr.contains("failed on probation: it exited with status 1 before answering `ctl status`; rolled back to the permanent release installed"),
        "{}",
        daemon.logs()
    );
    assert_eq!(
        std::fs::read_to_string(state.join("releases/current")).unwrap(),
        "installed\n"
    );
    assert!(
        !state.join("releases/permanent").exists(),
        "nothing was promoted"
    );
    assert!(daemon.ctl(&["stop"]).status.success());
    assert!(daemon.wait_exit(WAIT).success(), "{}", daemon.logs());
    // The keeper's decisions are in the audit chain, written by the child
    // it started next.
    let audit = crate::harness::audit_chain(&state);
    let keeper: Vec<&str> = audit.lines().filter(|l| l.contains("\"keeper\"")).collect();
    assert_eq!(keeper.len(), 2, "{audit}");
    assert!(
        keeper[0].contains("release.handover")
            && keeper[0].contains("handing over from release installed to upgrade-"),
        "{audit}"
    );
    assert!(
        keeper[1].contains("release.rolled_back") && keeper[1].contains("failed on probation"),
        "{audit}"
    );
}

/// `kill -9` of the keeper while a release is on probation: its child dies
/// with it, and the next start comes up on the permanent release — the one
/// both pointers name — with every committed iteration, once each.
#[test]
fn a_keeper_killed_during_probation_comes_back_on_the_permanent_release_with_every_iteration() {
    let dir = tempfile::tempdir().unwrap();
    let config = keeper_config(dir.path(), &[]);
    let workspace = tiny_crate(dir.path());
    let state = dir.path().join("state");
    let mut daemon =
        Daemon::unbounded(&state, &config, &workspace, &[("FAKE_CLAUDE_MODE", "edit")]);
    daemon.wait_status("a committed iteration", WAIT, |s| Daemon::committed(s) >= 1);
    let binary = crate::harness::agent_bin();
    assert!(
        daemon
            .ctl(&["upgrade", binary.to_str().unwrap()])
            .status
            .success()
    );
    let on_probation = daemon.wait_status("the new release on probation", WAIT, |s| {
        s["release"]["permanent"] == false && Daemon::committed(s) >= 2
    });
    let candidate = on_probation["release"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let child = children_of(daemon.pid());
    daemon.kill9();
    for pid in child {
        wait_gone(pid);
    }
    let committed = committed_once_each(&state);
    assert!(committed >= Daemon::committed(&on_probation));
    let mut again = Daemon::bounded(
        &state,
        &config,
        &workspace,
        committed + 1,
        &[("FAKE_CLAUDE_MODE", "edit")],
    );
    assert!(again.wait_exit(WAIT).success(), "{}", again.logs());
    assert!(
        stderr_of(&again).contains(&format!(
            "release {candidate} was on probation when the keeper last stopped; booting the permanent release installed"
        )),
        "{}",
        again.logs()
    );
    let read = |pointer: &str| std::fs::read_to_string(state.join("releases").join(pointer)).ok();
    assert_eq!(read("current").as_deref(), Some("installed\n"));
    assert!(read("permanent").is_none(), "nothing was promoted");
    assert_eq!(committed_once_each(&state), committed + 1);
}

#[test]
fn without_a_keeper_an_upgrade_is_refused_and_nothing_changes() {
    let dir = tempfile::tempdir().unwrap();
    let config = fast_config(dir.path(), &[]);
    let workspace = tiny_crate(dir.path());
    let state = dir.path().join("state");
    let mut daemon =
        Daemon::unbounded(&state, &config, &workspace, &[("FAKE_CLAUDE_MODE", "edit")]);
    let status = daemon.wait_status("the daemon answers", WAIT, |_| true);
    assert!(
        status.get("release").is_none(),
        "no release without a keeper: {status}"
    );
    let asked = daemon.ctl(&["upgrade", "/bin/false"]);
    assert_eq!(asked.status.code(), Some(1));
    let stderr = crate::harness::text(&asked.stderr);
    assert!(
        stderr.contains("no keeper runs this agent: start it with [upgrade] enabled = true"),
        "{stderr}"
    );
    assert!(!state.join("releases").exists());
    assert!(daemon.ctl(&["stop"]).status.success());
    assert!(daemon.wait_exit(WAIT).success(), "{}", daemon.logs());
}

/// The child dies in the middle of its handover (it aborts while it drains,
/// after `current` was pointed at the new release): the keeper starts the
/// release that ran, `current` names it again, and the run goes on with
/// every committed iteration.
#[cfg(feature = "failpoints")]
#[test]
fn a_child_killed_during_its_handover_comes_back_as_the_release_that_ran() {
    let dir = tempfile::tempdir().unwrap();
    let config = keeper_config(dir.path(), &[]);
    let workspace = tiny_crate(dir.path());
    let state = dir.path().join("state");
    let env = [
        ("FAKE_CLAUDE_MODE", "edit"),
        ("FAILPOINTS", "shutdown.drain=return"),
    ];
    let mut daemon = Daemon::unbounded(&state, &config, &workspace, &env);
    let before = daemon.wait_status("a committed iteration", WAIT, |s| Daemon::committed(s) >= 1);
    let binary = crate::harness::agent_bin();
    assert!(
        daemon
            .ctl(&["upgrade", binary.to_str().unwrap()])
            .status
            .success()
    );
    poll_until("the restart after the abort", WAIT, || {
        stderr_of(&daemon)
            .contains("agent: keeper: release installed crashed: it was killed by SIGABRT; restarting it in 1s")
            .then_some(())
    });
    let after = daemon.wait_status("the run to go on", WAIT, |s| {
        Daemon::committed(s) > Daemon::committed(&before) + 1
    });
    assert_eq!(after["release"]["name"], "installed", "{after}");
    assert_eq!(
        std::fs::read_to_string(state.join("releases/current")).unwrap(),
        "installed\n",
        "current names the release that runs"
    );
    assert!(
        !stderr_of(&daemon).contains("handing over"),
        "no handover happened"
    );
    let child = children_of(daemon.pid());
    daemon.kill9();
    // The child dies with its keeper; the store is free once it is gone.
    for pid in child {
        wait_gone(pid);
    }
    committed_once_each(&state);
}
