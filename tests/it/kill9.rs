//! `kill -9` of the whole daemon, mid-iteration, again and again: the
//! committed iteration count never goes back, no accepted change is committed
//! twice, the store always opens, and nothing the job started is left running.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use crate::harness::{
    Daemon, UNCONFINED, fast_config, history, tiny_crate, wait_gone, worktree_log,
};

const WAIT: Duration = Duration::from_secs(120);

/// The `Iteration: N` trailer of each agent commit on the worktree branch.
fn committed_iterations(state: &Path) -> Vec<u64> {
    worktree_log(state)
        .iter()
        .filter_map(|m| m.lines().find_map(|l| l.strip_prefix("Iteration: ")))
        .map(|n| n.trim().parse().unwrap())
        .collect()
}

#[test]
fn kill_dash_nine_mid_iteration_loses_and_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = fast_config(dir.path(), &[UNCONFINED]);
    let workspace = tiny_crate(dir.path());
    let state = dir.path().join("state");
    let pids = dir.path().join("pids");
    std::fs::create_dir(&pids).unwrap();
    let env = [
        ("FAKE_CLAUDE_MODE", "edit"),
        ("FAKE_CLAUDE_DELAY", "0.3"),
        ("FAKE_CLAUDE_PID_DIR", pids.to_str().unwrap()),
    ];
    let args = [
        "--config",
        config.to_str().unwrap(),
        "--workspace",
        workspace.to_str().unwrap(),
    ];

    let mut last_committed = 0;
    for round in 0..4 {
        let mut daemon = Daemon::start(&state, &args, &env);
        // Let it commit at least one more iteration, then kill it while the
        // next one is in flight.
        daemon.wait_status("progress", WAIT, |s| Daemon::committed(s) > last_committed);
        daemon.wait_status("an iteration in flight", WAIT, |s| {
            !s["in_flight"].is_null()
        });
        daemon.kill9();

        let records = history(&state);
        let committed = records
            .last()
            .map_or(0, |r| r["iteration"].as_u64().unwrap());
        assert!(
            committed >= last_committed,
            "round {round}: committed went back {last_committed} → {committed}"
        );
        let numbers: Vec<u64> = records
            .iter()
            .map(|r| r["iteration"].as_u64().unwrap())
            .collect();
        assert_eq!(
            numbers,
            (1..=committed).collect::<Vec<_>>(),
            "round {round}: the log has no gaps"
        );
        last_committed = committed;
    }

    // One final clean run to the end repeats nothing either.
    let mut daemon = Daemon::start(&state, &args, &env);
    daemon.wait_status("progress", WAIT, |s| Daemon::committed(s) > last_committed);
    assert!(daemon.ctl(&["stop"]).status.success());
    assert!(daemon.wait_exit(WAIT).success(), "{}", daemon.logs());

    let records = history(&state);
    let accepted: Vec<u64> = records
        .iter()
        .filter(|r| r["outcome"] == "accepted")
        .map(|r| r["iteration"].as_u64().unwrap())
        .collect();
    let mut on_branch = committed_iterations(&state);
    on_branch.sort_unstable();
    let mut counts: HashMap<u64, usize> = HashMap::new();
    for n in &on_branch {
        *counts.entry(*n).or_default() += 1;
    }
    assert!(
        counts.values().all(|c| *c == 1),
        "an iteration committed twice: {on_branch:?}"
    );
    assert_eq!(
        on_branch, accepted,
        "the branch holds exactly the accepted iterations"
    );

    // Nothing the killed daemons started is still running.
    // Each file is named `<pid>.pid` (the stand-in writes its pid into it
    // too, but one killed at its first line leaves it empty); edit mode
    // leaves no grandchild.
    for entry in std::fs::read_dir(&pids).unwrap().flatten() {
        let name = entry.file_name();
        let pid: i32 = name
            .to_str()
            .and_then(|name| name.strip_suffix(".pid"))
            .and_then(|pid| pid.parse().ok())
            .unwrap_or_else(|| panic!("not the stand-in's own pid file: {name:?}"));
        wait_gone(pid);
    }
}
