//! The audit chain against the real binary: a run's decisions are on it
//! (permits, verdicts, pause and resume, ctl commands, start and end),
//! `agent audit verify` passes on the store and on an export, a changed
//! byte in any exported entry or a removed entry breaks it at that entry,
//! and a `kill -9` leaves no decision of a committed iteration unrecorded.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

use crate::harness::{Daemon, agent_bin, audit_chain, fast_config, history, text, tiny_crate};

const WAIT: Duration = Duration::from_secs(120);

fn audit(args: &[&str]) -> Output {
    Command::new(agent_bin())
        .arg("audit")
        .args(args)
        .output()
        .unwrap()
}

fn entries(state: &Path) -> Vec<Value> {
    audit_chain(state)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Every committed iteration has its permit and its verdict on the chain.
fn every_iteration_is_audited(state: &Path) {
    let chain = entries(state);
    let has = |action: &str, detail: &str| {
        chain
            .iter()
            .any(|e| e["action"] == action && e["detail"].as_str().unwrap().starts_with(detail))
    };
    for record in history(state) {
        let n = record["iteration"].as_u64().unwrap();
        assert!(
            has("permit.granted", &format!("iteration {n}")),
            "permit of {n}: {chain:?}"
        );
        if record["outcome"] == "accepted" {
            assert!(
                has("change.accepted", &format!("iteration {n}:")),
                "verdict of {n}"
            );
        }
    }
}

#[test]
fn a_run_is_on_a_chain_that_verifies_and_any_changed_or_removed_entry_breaks_it_there() {
    let dir = tempfile::tempdir().unwrap();
    let workspace = tiny_crate(dir.path());
    let state = dir.path().join("state");
    let config = fast_config(dir.path(), &[]);
    let mut daemon =
        Daemon::unbounded(&state, &config, &workspace, &[("FAKE_CLAUDE_MODE", "edit")]);
    daemon.wait_status("two committed iterations", WAIT, |s| {
        Daemon::committed(s) >= 2
    });
    assert!(daemon.ctl(&["pause"]).status.success());
    assert!(daemon.ctl(&["resume"]).status.success());
    assert!(daemon.ctl(&["stop"]).status.success());
    assert!(daemon.wait_exit(WAIT).success(), "{}", daemon.logs());

    let state_arg = state.to_str().unwrap();
    let verified = audit(&["verify", "--state", state_arg]);
    assert!(verified.status.success(), "{}", text(&verified.stderr));
    let chain = entries(&state);
    let actions: Vec<&str> = chain
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for expected in [
        "run.started",
        "permit.granted",
        "change.accepted",
        "ctl.command",
        "run.paused",
        "run.resumed",
        "run.ended",
    ] {
        assert!(actions.contains(&expected), "{expected} in {actions:?}");
    }
    assert_eq!(actions.first(), Some(&"run.started"));
    assert_eq!(actions.last(), Some(&"run.ended"));
    every_iteration_is_audited(&state);

    let export = dir.path().join("audit.jsonl");
    let exported = audit(&[
        "export",
        "--state",
        state_arg,
        "--to",
        export.to_str().unwrap(),
    ]);
    assert!(exported.status.success(), "{}", text(&exported.stderr));
    let export_arg = export.to_str().unwrap();
    assert!(audit(&["verify", "--file", export_arg]).status.success());
    let lines: Vec<String> = std::fs::read_to_string(&export)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(lines.len(), chain.len());
    let tampered = dir.path().join("tampered.jsonl");
    let broken_at = |lines: &[String]| {
        std::fs::write(&tampered, lines.join("\n") + "\n").unwrap();
        let output = audit(&["verify", "--file", tampered.to_str().unwrap()]);
        assert!(!output.status.success(), "tampering went unseen");
        text(&output.stderr)
    };
    for (index, line) in lines.iter().enumerate() {
        // One byte of the entry's own text: the first letter of its detail.
        let at = line.find("\"detail\":\"").unwrap() + "\"detail\":\"".len();
        let mut changed = line.clone().into_bytes();
        changed[at] = if changed[at] == b'x' { b'y' } else { b'x' };
        let mut copy = lines.clone();
        copy[index] = String::from_utf8(changed).unwrap();
        let said = broken_at(&copy);
        assert!(
            said.contains(&format!("audit entry {} is broken", index + 1)),
            "a changed byte in entry {}: {said}",
            index + 1
        );
    }
    let mut removed = lines.clone();
    removed.remove(2);
    let said = broken_at(&removed);
    assert!(said.contains("audit entry 3 is broken"), "{said}");
}

#[test]
fn the_audit_survives_kill_9_with_no_gap() {
    let dir = tempfile::tempdir().unwrap();
    let workspace = tiny_crate(dir.path());
    let state = dir.path().join("state");
    let config = fast_config(dir.path(), &[]);
    let env = [("FAKE_CLAUDE_MODE", "edit")];
    let mut daemon = Daemon::unbounded(&state, &config, &workspace, &env);
    daemon.wait_status("iterations before the kill", WAIT, |s| {
        Daemon::committed(s) >= 3
    });
    daemon.kill9();
    let before = history(&state).len() as u64;
    let mut daemon = Daemon::unbounded(&state, &config, &workspace, &env);
    daemon.wait_status("iterations after the restart", WAIT, |s| {
        Daemon::committed(s) >= before + 2
    });
    assert!(daemon.ctl(&["stop"]).status.success());
    assert!(daemon.wait_exit(WAIT).success(), "{}", daemon.logs());
    let verified = audit(&["verify", "--state", state.to_str().unwrap()]);
    assert!(verified.status.success(), "{}", text(&verified.stderr));
    let starts = entries(&state)
        .iter()
        .filter(|e| e["action"] == "run.started")
        .count();
    assert_eq!(starts, 2, "both runs are on one chain");
    every_iteration_is_audited(&state);
}
