//! Claude Code run unattended, through the real binary and the stand-in
//! `claude`: a rejected rate limit is waited out (no failed attempt), a
//! silent job fails the iteration with its stall reason, an agent started
//! inside Claude Code still runs its jobs and cannot touch what steers them,
//! and a change validation refused is repaired in the same session.

use std::path::{Path, PathBuf};
use std::time::Duration;

use git2::Repository;

use crate::harness::{Daemon, audit_chain, edit_jobs, fast_config, history, tiny_crate};

const WAIT: Duration = Duration::from_secs(120);

#[test]
fn a_rejected_rate_limit_is_waited_out_and_counts_no_failure() {
    let dir = tempfile::tempdir().unwrap();
    let config = fast_config(dir.path(), &[]);
    let workspace = tiny_crate(dir.path());
    let state = dir.path().join("state");
    let (once, log) = (dir.path().join("once"), dir.path().join("calls.log"));
    let env = [
        ("FAKE_CLAUDE_MODE", "rate-limited"),
        ("FAKE_CLAUDE_RESET_IN", "4"),
        ("FAKE_CLAUDE_ONCE", once.to_str().unwrap()),
        ("FAKE_CLAUDE_THEN", "edit"),
        ("FAKE_CLAUDE_PLAN_MODE", "success"),
        ("FAKE_CLAUDE_LOG", log.to_str().unwrap()),
    ];
    let mut daemon = Daemon::bounded(&state, &config, &workspace, 1, &env);
    let waiting = daemon.wait_status("the run to wait for the rate limit", WAIT, |status| {
        status["waiting"]
            .as_str()
            .is_some_and(|w| w.contains("rate limit until"))
    });
    assert_eq!(waiting["failures"], 0, "no failed attempt: {waiting}");
    assert_eq!(Daemon::committed(&waiting), 0);
    assert!(
        daemon.wait_exit(WAIT).success(),
        "the run went on by itself: {}",
        daemon.logs()
    );
    let records = history(&state);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["outcome"], "accepted", "{records:?}");
    assert_eq!(edit_jobs(&log), 2, "the limited job, then the one after it");
    let audit = audit_chain(&state);
    let hold = audit
        .lines()
        .find(|l| l.contains("permit.hold"))
        .unwrap_or_else(|| panic!("no permit.hold in the audit:\n{audit}"));
    assert!(hold.contains("rate limit until"), "{hold}");
}

#[test]
fn a_job_that_goes_silent_fails_its_iteration_at_the_stall_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let config = fast_config(
        dir.path(),
        &[
            ("stall_timeout = \"5m\"", "stall_timeout = \"1s\""),
            ("job_timeout = \"20s\"", "job_timeout = \"10m\""),
        ],
    );
    let workspace = tiny_crate(dir.path());
    let state = dir.path().join("state");
    let env = [
        ("FAKE_CLAUDE_MODE", "stall"),
        ("FAKE_CLAUDE_PLAN_MODE", "success"),
    ];
    let mut daemon = Daemon::bounded(&state, &config, &workspace, 1, &env);
    // Well inside the ten-minute job timeout: the stall clock ended it.
    assert!(daemon.wait_exit(WAIT).success(), "{}", daemon.logs());
    let records = history(&state);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["outcome"], "job-failed", "{records:?}");
    let summary = records[0]["summary"].as_str().unwrap();
    assert!(
        summary.contains("stalled: no output for 1s after"),
        "{summary}"
    );
}

/// `CLAUDECODE` in the agent's environment (started from inside Claude
/// Code) does not reach the jobs, and a job's edit of the workspace's
/// `.claude/settings.json` is refused by `protected-path`.
#[test]
fn started_inside_claude_code_the_jobs_run_and_cannot_change_their_own_settings() {
    let dir = tempfile::tempdir().unwrap();
    let config = fast_config(dir.path(), &[("repair_turns = 1", "repair_turns = 0")]);
    let workspace = tiny_crate(dir.path());
    let state = dir.path().join("state");
    let env = [
        ("CLAUDECODE", "1"),
        ("CLAUDE_CODE_ENTRYPOINT", "cli"),
        ("FAKE_CLAUDE_MODE", "edit"),
        ("FAKE_CLAUDE_PLAN_MODE", "success"),
        ("FAKE_CLAUDE_EDIT_FILE", ".claude/settings.json"),
        ("FAKE_CLAUDE_EDIT_TEXT", r#"{"hooks":{}}"#),
    ];
    let mut daemon = Daemon::bounded(&state, &config, &workspace, 1, &env);
    assert!(daemon.wait_exit(WAIT).success(), "{}", daemon.logs());
    let records = history(&state);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(
        records[0]["outcome"], "rejected",
        "the job ran: {records:?}"
    );
    assert_eq!(records[0]["rule"], "protected-path", "{records:?}");
    assert!(
        !state.join("worktree/.claude/settings.json").exists(),
        "the refused file is gone from the worktree"
    );
}

/// The variant refs of `repo` whose names end with `suffix`.
fn refs_ending(repo: &Repository, suffix: &str) -> Vec<git2::Oid> {
    repo.references_glob("refs/agent/variants/*")
        .unwrap()
        .flatten()
        .filter(|r| r.name().is_some_and(|n| n.ends_with(suffix)))
        .filter_map(|r| r.target())
        .collect()
}

fn lib_rs_at(repo: &Repository, commit: git2::Oid) -> String {
    let tree = repo.find_commit(commit).unwrap().tree().unwrap();
    let blob = tree.get_path(Path::new("src/lib.rs")).unwrap();
    let blob = repo.find_blob(blob.id()).unwrap();
    String::from_utf8(blob.content().to_vec()).unwrap()
}

/// The session files (`<id>.jsonl`) under `dir`, anywhere.
fn session_file(dir: &Path, id: &str) -> Option<PathBuf> {
    let name = format!("{id}.jsonl");
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.file_name().is_some_and(|n| *n == *name) {
                return Some(path);
            }
        }
    }
    None
}

#[test]
fn a_change_validation_refused_is_repaired_in_the_same_session() {
    let dir = tempfile::tempdir().unwrap();
    // Like `cargo test`: what failed on stdout, the verdict on stderr.
    let validation = "grep -q BROKEN src/lib.rs || exit 0; \
        grep -n BROKEN src/lib.rs | sed 's/^/failed at line /'; \
        echo 'error: the change is broken' >&2; exit 1";
    let config = fast_config(
        dir.path(),
        &[("command = \"true\"", &format!("command = \"{validation}\""))],
    );
    let workspace = tiny_crate(dir.path());
    let repaired = format!(
        "{}// repaired\n",
        std::fs::read_to_string(workspace.join("src/lib.rs")).unwrap()
    );
    let broken_line = repaired.lines().count();
    let state = dir.path().join("state");
    let resumed = dir.path().join("resumed.log");
    let env = [
        ("FAKE_CLAUDE_MODE", "edit"),
        ("FAKE_CLAUDE_PLAN_MODE", "success"),
        ("FAKE_CLAUDE_EDIT_TEXT", "// BROKEN"),
        ("FAKE_CLAUDE_RESUME_EDIT_TEXT", repaired.trim_end()),
        ("FAKE_CLAUDE_RESUME_EDIT_REPLACE", "1"),
        ("FAKE_CLAUDE_RESUME_LOG", resumed.to_str().unwrap()),
    ];
    let mut daemon = Daemon::bounded(&state, &config, &workspace, 1, &env);
    assert!(daemon.wait_exit(WAIT).success(), "{}", daemon.logs());

    let records = history(&state);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["outcome"], "accepted", "{records:?}");
    let summary = records[0]["summary"].as_str().unwrap();
    assert!(summary.contains("after a repair turn"), "{summary}");
    // Both turns' tokens and cost (the stand-in's 120 in, 45 out, $0.0123).
    assert_eq!(records[0]["input_tokens"], 240, "{records:?}");
    assert_eq!(records[0]["output_tokens"], 90, "{records:?}");
    assert_eq!(records[0]["cost_usd"], 0.0246, "{records:?}");

    // The stand-in was resumed once, in the session the first job printed,
    // and told what failed.
    let resumed = std::fs::read_to_string(&resumed).unwrap();
    let lines: Vec<&str> = resumed.lines().collect();
    assert_eq!(lines.len(), 1, "{resumed}");
    let (session, prompt) = lines[0].split_once(' ').unwrap();
    assert!(prompt.contains("error: the change is broken"), "{prompt}");
    assert!(
        prompt.contains(&format!("failed at line {broken_line}:// BROKEN")),
        "the failing line: {prompt}"
    );
    let conversation = session_file(&state.join("claude"), session)
        .unwrap_or_else(|| panic!("no session {session} under the job config dirs"));
    let turns = std::fs::read_to_string(conversation).unwrap();
    assert_eq!(turns.lines().count(), 2, "one session, two turns: {turns}");

    // Both changes are archived; the repaired one is on the branch.
    let repo = Repository::open(state.join("worktree")).unwrap();
    let refused = refs_ending(&repo, "/1-refused");
    let kept = refs_ending(&repo, "/1");
    assert_eq!((refused.len(), kept.len()), (1, 1), "the variant refs");
    assert!(lib_rs_at(&repo, refused[0]).contains("// BROKEN"));
    let repaired_text = lib_rs_at(&repo, kept[0]);
    assert!(repaired_text.contains("// repaired") && !repaired_text.contains("BROKEN"));
    assert_eq!(
        records[0]["commit"].as_str(),
        Some(kept[0].to_string().as_str())
    );
}
