//! The variant archive and the generated regression tests against the real
//! binary: refused and accepted changes stay reachable on their variant refs
//! with their parents and judgement, across a restart, and listed by
//! `agent ctl send modifier variants`; a public function the change adds
//! and no test calls gets a skeleton test that the validation runs and the
//! commit carries.

use std::time::Duration;

use serde_json::Value;

use crate::harness::{Daemon, fast_config, history, text, tiny_crate};

const WAIT: Duration = Duration::from_secs(180);

fn variants(daemon: &Daemon) -> Vec<Value> {
    let output = daemon.ctl(&["send", "modifier", "variants", "--json"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let reply: Value = serde_json::from_slice(&output.stdout).unwrap();
    reply["reply"]["variants"].as_array().unwrap().clone()
}

#[test]
fn refused_and_accepted_variants_are_archived_with_their_parents_and_kept_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let workspace = tiny_crate(dir.path());
    let state = dir.path().join("state");
    // Validation passes on the base, fails on the first change (refused),
    // then passes.
    let failed_once = dir.path().join("validation-failed-once");
    let validation = format!(
        "command = \"git diff --quiet HEAD || test -f {0} || {{ touch {0}; false; }}\"",
        failed_once.display()
    );
    // Without a repair turn, so that the refusal stands.
    let config = fast_config(
        dir.path(),
        &[
            ("command = \"true\"", &validation),
            ("repair_turns = 1", "repair_turns = 0"),
        ],
    );
    let env = [("FAKE_CLAUDE_MODE", "edit")];
    let mut daemon = Daemon::unbounded(&state, &config, &workspace, &env);
    daemon.wait_status("two committed iterations", WAIT, |s| {
        Daemon::committed(s) >= 2
    });
    assert!(daemon.ctl(&["pause"]).status.success());
    let listed = variants(&daemon);
    assert!(listed.len() >= 2, "{listed:?}");
    let (refused, accepted) = (&listed[0], &listed[1]);
    assert_eq!(refused["iteration"], 1);
    assert_eq!(refused["outcome"], "rejected");
    assert_eq!(refused["refused_by"], "validation");
    assert!(
        refused["validation"]
            .as_str()
            .unwrap()
            .starts_with("failed: validation"),
        "{refused}"
    );
    assert_eq!(accepted["iteration"], 2);
    assert_eq!(accepted["outcome"], "accepted");
    assert_eq!(accepted["refused_by"], Value::Null);
    assert_eq!(accepted["validation"], "passed");
    assert_eq!(
        refused["parent"], accepted["parent"],
        "both were made on the same base"
    );
    assert_eq!(
        accepted["rules_checked"].as_array().unwrap().len(),
        8,
        "{accepted}"
    );
    assert!(daemon.ctl(&["stop"]).status.success());
    assert!(daemon.wait_exit(WAIT).success(), "{}", daemon.logs());

    // The refs hold the commits with their parents.
    let repo = git2::Repository::open(&workspace).unwrap();
    let refs: Vec<String> = repo
        .references_glob("refs/agent/variants/*")
        .unwrap()
        .map(|r| r.unwrap().name().unwrap().to_string())
        .collect();
    assert!(refs.len() >= 2, "{refs:?}");
    for variant in [refused, accepted] {
        let commit = repo
            .find_commit(git2::Oid::from_str(variant["commit"].as_str().unwrap()).unwrap())
            .unwrap();
        assert_eq!(
            commit.parent_id(0).unwrap().to_string(),
            variant["parent"].as_str().unwrap()
        );
    }
    let worktree = agent::workspace::Workspace {
        path: state.join("worktree"),
    };
    let on_branch: Vec<String> = worktree
        .iteration_commits()
        .unwrap()
        .into_iter()
        .map(|(_, c)| c)
        .collect();
    assert!(!on_branch.contains(&refused["commit"].as_str().unwrap().to_string()));
    assert!(on_branch.contains(&accepted["commit"].as_str().unwrap().to_string()));

    // A restart keeps them.
    let mut daemon = Daemon::unbounded(
        &state,
        &config,
        &workspace,
        &[("FAKE_CLAUDE_MODE", "success")],
    );
    daemon.wait_status("the restarted daemon", WAIT, |_| true);
    assert!(daemon.ctl(&["pause"]).status.success());
    let again = variants(&daemon);
    assert_eq!(&again[..2], &listed[..2], "kept across the restart");
    assert!(daemon.ctl(&["stop"]).status.success());
    assert!(daemon.wait_exit(WAIT).success(), "{}", daemon.logs());
}

#[test]
fn a_new_public_function_no_test_calls_gets_a_generated_test_that_the_validation_runs() {
    let dir = tempfile::tempdir().unwrap();
    let workspace = tiny_crate(dir.path());
    let state = dir.path().join("state");
    let log = dir.path().join("validation.log");
    // The real `cargo test` (offline: the tiny crate has no dependencies),
    // its output kept to see the generated test run.
    let validation = format!(
        "command = \"cargo test --offline 2>&1 | tee {0} && grep -q 'test result: ok' {0}\"",
        log.display()
    );
    // Without a repair turn, so that the refusal stands.
    let config = fast_config(
        dir.path(),
        &[
            ("command = \"true\"", &validation),
            ("repair_turns = 1", "repair_turns = 0"),
        ],
    );
    let mut daemon = Daemon::bounded(
        &state,
        &config,
        &workspace,
        1,
        &[
            ("FAKE_CLAUDE_MODE", "edit"),
            (
                "FAKE_CLAUDE_EDIT_TEXT",
                "pub fn double(x: u64) -> u64 {\n    x * 2\n}",
            ),
        ],
    );
    assert!(daemon.wait_exit(WAIT).success(), "{}", daemon.logs());
    let records = history(&state);
    assert_eq!(records[0]["outcome"], "accepted", "{records:?}");
    let ran = std::fs::read_to_string(&log).unwrap();
    assert!(
        ran.contains("agent_regression_double ... ok"),
        "the validation ran the generated test: {ran}"
    );
    // The commit carries the test, formatted as prettyplease writes it, and
    // names it with the rules checked.
    let worktree = agent::workspace::Workspace {
        path: state.join("worktree"),
    };
    let (_, commit) = worktree.iteration_commits().unwrap()[0].clone();
    let repo = git2::Repository::open(&workspace).unwrap();
    let commit = repo
        .find_commit(git2::Oid::from_str(&commit).unwrap())
        .unwrap();
    let message = commit.message().unwrap();
    assert!(
        message.contains("Generated tests: agent_regression_double"),
        "{message}"
    );
    assert!(
        message.contains("Rules checked: protected-path, outside-allowed-paths, change-too-large, rust-syntax, no-new-unsafe, no-process-spawn, no-removed-test, no-edit-protected-fn"),
        "{message}"
    );
    assert!(message.contains("Trace: "), "{message}");
    let lib = worktree
        .file_at(&commit.id().to_string(), "src/lib.rs")
        .unwrap()
        .unwrap();
    let at = lib
        .find("#[cfg(test)]\nmod agent_regression_double")
        .unwrap();
    let generated = &lib[at..];
    let file = syn::parse_file(generated).unwrap();
    assert_eq!(prettyplease::unparse(&file), generated);
}

#[test]
fn a_stalled_line_starts_from_the_best_refused_variant_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let workspace = tiny_crate(dir.path());
    let state = dir.path().join("state");
    // Every edit adds a WORSE line: validation passes, fitness gets worse.
    let config = fast_config(
        dir.path(),
        &[
            (
                "fitness = \"echo 1\"",
                "fitness = \"grep -c WORSE src/lib.rs || true\"",
            ),
            (
                "start_from_variant_after = 10",
                "start_from_variant_after = 1",
            ),
        ],
    );
    let mut daemon = Daemon::bounded(
        &state,
        &config,
        &workspace,
        3,
        &[
            ("FAKE_CLAUDE_MODE", "edit"),
            ("FAKE_CLAUDE_EDIT_TEXT", "// WORSE"),
        ],
    );
    assert!(daemon.wait_exit(WAIT).success(), "{}", daemon.logs());
    let records = history(&state);
    assert_eq!(records.len(), 3, "{records:?}");
    for record in &records {
        assert_eq!(record["rule"], "fitness", "{record}");
    }
    let second = records[1]["summary"].as_str().unwrap();
    assert!(
        second.contains("fitness got worse: 0 → 2")
            && second.ends_with("(built on the variant of iteration 1)"),
        "the second iteration started from the first one's change: {second}"
    );
    // After one exploration the line waits again before the next.
    let third = records[2]["summary"].as_str().unwrap();
    assert!(third.contains("fitness got worse: 0 → 1"), "{third}");
}
