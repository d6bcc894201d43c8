//! Candidates in parallel (`[run] candidates`): the real binary, the stand-in
//! `claude` running one script per call (each candidate's change differs),
//! a fitness that counts the lines of `lines.txt` (fewer is better).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use git2::{IndexAddOption, Repository, Signature};
use serde_json::Value;

use crate::harness::{Daemon, fast_config, history, poll_until, tiny_crate};

/// A tiny crate with a ten-line `lines.txt`, committed.
fn workspace(dir: &Path) -> PathBuf {
    let root = tiny_crate(dir);
    let lines: String = (1..=10).map(|n| format!("line {n}\n")).collect();
    std::fs::write(root.join("lines.txt"), lines).unwrap();
    let repo = Repository::open(&root).unwrap();
    let mut index = repo.index().unwrap();
    index.add_all(["*"], IndexAddOption::DEFAULT, None).unwrap();
    index.write().unwrap();
    let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
    let head = repo.head().unwrap().peel_to_commit().unwrap();
    let sig = Signature::now("test", "test@localhost").unwrap();
    repo.commit(Some("HEAD"), &sig, &sig, "lines", &tree, &[&head])
        .unwrap();
    root
}

/// The stand-in's scripts: each logs when it starts and ends (to `marks`),
/// sleeps `delay` seconds, then deletes `n` lines of `lines.txt`; a delay
/// of `None` hangs.
fn scripts(dir: &Path, deletes: &[(usize, Option<u32>)]) -> PathBuf {
    let scripts = dir.join("scripts");
    std::fs::create_dir_all(&scripts).unwrap();
    let marks = dir.join("marks");
    for (i, (n, delay)) in deletes.iter().enumerate() {
        let wait = match delay {
            Some(seconds) => format!("sleep {seconds}"),
            None => "sleep 99991".to_string(),
        };
        std::fs::write(
            scripts.join(format!("{i}.sh")),
            format!(
                "echo \"start $(date +%s%N)\" >>{marks}\n{wait}\nsed -i '1,{n}d' lines.txt\necho \"end $(date +%s%N)\" >>{marks}\n",
                marks = marks.display()
            ),
        )
        .unwrap();
    }
    scripts
}

/// `agent.toml` for `candidates` at once, judged by the lines of `lines.txt`.
fn config(dir: &Path, candidates: u32, deadline: &str) -> PathBuf {
    let deadline = format!("candidate_deadline = \"{deadline}\"");
    let candidates = format!("candidates = {candidates}");
    fast_config(
        dir,
        &[
            ("fitness = \"echo 1\"", "fitness = \"wc -l < lines.txt\""),
            ("candidates = 1", &candidates),
            ("candidate_deadline = \"10m\"", &deadline),
        ],
    )
}

fn env(scripts: &Path) -> Vec<(&'static str, String)> {
    vec![
        (
            "FAKE_CLAUDE_LOG",
            scripts.with_extension("log").display().to_string(),
        ),
        ("FAKE_CLAUDE_MODE", "script".into()),
        ("FAKE_CLAUDE_SCRIPTS", scripts.display().to_string()),
        // The research questions change nothing and take no script.
        ("FAKE_CLAUDE_PLAN_MODE", "success".into()),
    ]
}

/// Runs one iteration to its end; answers the wall time of the run.
fn one_iteration(
    dir: &Path,
    candidates: u32,
    deadline: &str,
    deletes: &[(usize, Option<u32>)],
) -> Duration {
    let workspace = workspace(dir);
    let config = config(dir, candidates, deadline);
    let scripts = scripts(dir, deletes);
    let env = env(&scripts);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let started = Instant::now();
    let mut daemon = Daemon::bounded(&dir.join("state"), &config, &workspace, 1, &env);
    let status = daemon.wait_exit(Duration::from_secs(120));
    assert!(status.success(), "the run failed:\n{}", daemon.logs());
    started.elapsed()
}

/// The committed `lines.txt` on the agent branch.
fn committed_lines(state: &Path) -> usize {
    let text = std::fs::read_to_string(state.join("worktree/lines.txt")).unwrap();
    text.lines().count()
}

fn others(entry: &Value) -> Vec<Value> {
    entry["others"].as_array().cloned().unwrap_or_default()
}

#[test]
fn four_candidates_run_at_once_and_the_best_of_four_is_committed() {
    let single = tempfile::tempdir().unwrap();
    let one = one_iteration(single.path(), 1, "30s", &[(1, Some(3))]);

    let dir = tempfile::tempdir().unwrap();
    let four = one_iteration(
        dir.path(),
        4,
        "30s",
        &[(1, Some(3)), (3, Some(3)), (4, Some(3)), (2, Some(3))],
    );
    eprintln!("one candidate: {one:?}; four candidates: {four:?}");
    assert!(
        four < one * 2,
        "an iteration of four candidates took {four:?}, one of one took {one:?}"
    );
    // The four jobs overlapped: every one started before any ended.
    let marks = std::fs::read_to_string(dir.path().join("marks")).unwrap();
    let at = |what: &str| -> Vec<u128> {
        marks
            .lines()
            .filter_map(|line| line.strip_prefix(what)?.trim().parse().ok())
            .collect()
    };
    let (starts, ends) = (at("start "), at("end "));
    assert_eq!(
        (starts.len(), ends.len()),
        (4, 4),
        "{marks}\n{}\n{}",
        std::fs::read_to_string(dir.path().join("scripts.log")).unwrap_or_default(),
        std::fs::read_to_string(dir.path().join("state.logs/0.stderr")).unwrap_or_default()
    );
    assert!(
        starts.iter().max() < ends.iter().min(),
        "the candidates ran one after another:\n{marks}"
    );

    let state = dir.path().join("state");
    let entries = history(&state);
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["outcome"], "accepted", "{}", entries[0]);
    // The best of the four deleted four lines.
    assert_eq!(entries[0]["fitness_after"], 6.0, "{}", entries[0]);
    assert_eq!(committed_lines(&state), 6);
    let others = others(&entries[0]);
    assert_eq!(others.len(), 3, "{}", entries[0]);
    let mut fitness: Vec<f64> = others
        .iter()
        .map(|o| {
            assert_eq!(o["sibling_of"], 1);
            assert!(o["variant"].as_str().is_some_and(|v| v.len() == 40), "{o}");
            o["fitness_after"].as_f64().unwrap()
        })
        .collect();
    fitness.sort_by(f64::total_cmp);
    assert_eq!(fitness, [7.0, 8.0, 9.0]);
    // The learner holds four experiences of the iteration.
    let store = agent::store::Store::open(&state).unwrap();
    let experiences = store.experiences(100).unwrap();
    assert_eq!(experiences.len(), 4, "{experiences:?}");
    assert!(experiences.iter().all(|e| e.iteration == 1));
    // The losing changes never reached the branch: one agent commit.
    let branch = crate::harness::worktree_log(&state);
    assert_eq!(
        branch.iter().filter(|m| m.contains("Iteration: 1")).count(),
        1,
        "{branch:?}"
    );
    // No candidate worktree keeps a change.
    for slot in 0..4 {
        let lane = state.join("candidates").join(slot.to_string());
        let repo = Repository::open(&lane).unwrap();
        let dirty = repo.statuses(None).unwrap().iter().count();
        assert_eq!(dirty, 0, "candidate {slot}'s worktree is dirty");
    }
}

#[test]
fn a_hung_candidate_is_killed_at_the_deadline_and_the_best_of_the_others_committed() {
    let dir = tempfile::tempdir().unwrap();
    let took = one_iteration(
        dir.path(),
        3,
        "2s",
        &[(1, Some(1)), (5, None), (2, Some(1))],
    );
    eprintln!("three candidates, one hung, a 2 s deadline: {took:?}");
    // The job timeout is 20 s: the iteration did not wait for it.
    assert!(took < Duration::from_secs(18), "took {took:?}");
    let state = dir.path().join("state");
    let entries = history(&state);
    assert_eq!(entries[0]["outcome"], "accepted", "{}", entries[0]);
    assert_eq!(entries[0]["fitness_after"], 8.0, "{}", entries[0]);
    assert_eq!(committed_lines(&state), 8);
    let store = agent::store::Store::open(&state).unwrap();
    let experiences = store.experiences(100).unwrap();
    assert_eq!(experiences.len(), 3, "{experiences:?}");
    let killed: Vec<_> = experiences
        .iter()
        .filter(|e| e.outcome == agent::domain::Outcome::JobFailed)
        .collect();
    assert_eq!(
        killed.len(),
        1,
        "the hung candidate counts as failed: {experiences:?}"
    );
    let jobs = store.jobs().unwrap();
    assert!(
        jobs.iter().all(|job| !job.status.is_running()),
        "no job is left running: {jobs:?}"
    );
    // Its process is gone: nothing sleeps in the test's script.
    poll_until(
        "the hung script to be gone",
        Duration::from_secs(10),
        || {
            crate::harness::processes_with(&["sleep", "99991"])
                .is_empty()
                .then_some(())
        },
    );
}

/// The `Iteration: N` trailer of each agent commit on the branch.
fn on_branch(state: &Path) -> Vec<u64> {
    let mut numbers: Vec<u64> = crate::harness::worktree_log(state)
        .iter()
        .filter_map(|m| m.lines().find_map(|l| l.strip_prefix("Iteration: ")))
        .map(|n| n.trim().parse().unwrap())
        .collect();
    numbers.sort_unstable();
    numbers
}

/// Stand-in scripts `first..first + 3`: quick edits, each its own line.
fn quick_edits(scripts: &Path, first: usize) {
    for i in first..first + 3 {
        std::fs::write(
            scripts.join(format!("{i}.sh")),
            format!("echo '// candidate {i}' >>src/lib.rs\n"),
        )
        .unwrap();
    }
}

#[test]
fn kill_dash_nine_during_three_candidates_leaves_no_process_no_dirty_worktree_no_repeat() {
    let dir = tempfile::tempdir().unwrap();
    let config = fast_config(
        dir.path(),
        &[
            crate::harness::UNCONFINED,
            ("candidates = 1", "candidates = 3"),
        ],
    );
    let workspace = tiny_crate(dir.path());
    let state = dir.path().join("state");
    let scripts = dir.path().join("scripts");
    std::fs::create_dir(&scripts).unwrap();
    // Iteration 1: three quick changes; iteration 2: three jobs that hang
    // (each edits first, so its worktree is dirty when the agent dies).
    quick_edits(&scripts, 0);
    for i in 3..6 {
        std::fs::write(
            scripts.join(format!("{i}.sh")),
            "echo '// half a change' >>src/lib.rs\nsleep 99992\n",
        )
        .unwrap();
    }
    let env = env(&scripts);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let hung = || crate::harness::processes_with(&["sleep", "99992"]);
    let wait =
        Duration::from_secs(std::env::var("CANDIDATES_WAIT").map_or(120, |s| s.parse().unwrap()));

    let mut daemon = Daemon::unbounded(&state, &config, &workspace, &env);
    daemon.wait_status("iteration 1", wait, |s| Daemon::committed(s) >= 1);
    let since = Instant::now();
    while hung().len() < 3 {
        assert!(
            since.elapsed() < wait,
            "iteration 2's three jobs never ran:\n{}",
            daemon.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    daemon.kill9();
    assert_eq!(history(&state).len(), 1);
    assert!(
        !hung().is_empty(),
        "the jobs outlive a killed agent until it restarts"
    );

    // The restart (bounded to what is committed: it only recovers) leaves
    // no job's process and no candidate worktree with a change.
    quick_edits(&scripts, 6);
    let mut restarted = Daemon::bounded(&state, &config, &workspace, 1, &env);
    assert!(restarted.wait_exit(wait).success(), "{}", restarted.logs());
    poll_until("no job left running", Duration::from_secs(10), || {
        hung().is_empty().then_some(())
    });
    for slot in 0..3 {
        let lane = state.join("candidates").join(slot.to_string());
        let repo = Repository::open(&lane).unwrap();
        let dirty: Vec<String> = repo
            .statuses(None)
            .unwrap()
            .iter()
            .filter_map(|s| s.path().map(String::from))
            .collect();
        assert!(dirty.is_empty(), "candidate {slot} keeps {dirty:?}");
    }

    // Iteration 2 is redone once, to its end: every iteration once.
    let mut daemon = Daemon::bounded(&state, &config, &workspace, 2, &env);
    assert!(daemon.wait_exit(wait).success(), "{}", daemon.logs());
    let records = history(&state);
    let numbers: Vec<u64> = records
        .iter()
        .map(|r| r["iteration"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [1, 2]);
    let accepted: Vec<u64> = records
        .iter()
        .filter(|r| r["outcome"] == "accepted")
        .map(|r| r["iteration"].as_u64().unwrap())
        .collect();
    assert_eq!(accepted, [1, 2]);
    assert_eq!(
        on_branch(&state),
        [1, 2],
        "each iteration once on the branch"
    );
}

#[test]
fn supervised_mode_asks_approval_of_the_chosen_candidate_only() {
    let dir = tempfile::tempdir().unwrap();
    let workspace = workspace(dir.path());
    let config = config(dir.path(), 3, "30s");
    let scripts = scripts(dir.path(), &[(1, Some(0)), (3, Some(0)), (2, Some(0))]);
    let env = env(&scripts);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let args = [
        "--config",
        config.to_str().unwrap(),
        "--workspace",
        workspace.to_str().unwrap(),
        "--mode",
        "supervised",
        "--max-iterations",
        "1",
    ];
    let mut daemon = Daemon::start(&dir.path().join("state"), &args, &env);
    let wait = Duration::from_secs(120);
    daemon.wait_status("the daemon", wait, |_| true);
    let pending = poll_until("the chosen change to wait for approval", wait, || {
        let approvals = crate::harness::json_of(&daemon.ctl(&["approvals", "--json"]));
        let list = approvals["approvals"].as_array()?.clone();
        (!list.is_empty()).then_some(list)
    });
    // One request for the iteration: the best of three (7 lines left).
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(pending[0]["iteration"], 1);
    assert_eq!(pending[0]["fitness_after"], 7.0, "{}", pending[0]);
    assert_eq!(pending[0]["files"], serde_json::json!(["lines.txt"]));
    let id = pending[0]["id"].as_str().unwrap().to_string();
    assert!(daemon.ctl(&["approve", &id]).status.success());
    assert!(daemon.wait_exit(wait).success(), "{}", daemon.logs());
    let state = dir.path().join("state");
    let entries = history(&state);
    assert_eq!(entries[0]["outcome"], "accepted", "{}", entries[0]);
    assert_eq!(committed_lines(&state), 7);
    assert_eq!(others(&entries[0]).len(), 2);
    // The losers were never put to an operator.
    let chain = crate::harness::audit_chain(&state);
    assert_eq!(chain.matches("approval.requested").count(), 1, "{chain}");
}

#[test]
fn a_daily_budget_below_one_iteration_of_its_candidates_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let workspace = tiny_crate(dir.path());
    // Five candidates: 2 research questions + 5 × (job + repair turn) = 12
    // calls at $5.00 = $60.00 a day's worst case, against $50.00.
    let config = fast_config(dir.path(), &[("candidates = 1", "candidates = 5")]);
    let mut daemon = Daemon::bounded(&dir.path().join("state"), &config, &workspace, 1, &[]);
    let status = daemon.wait_exit(Duration::from_secs(60));
    assert_eq!(status.code(), Some(2), "{}", daemon.logs());
    let stderr = std::fs::read_to_string(&daemon.stderr).unwrap();
    assert!(
        stderr.contains(
            "one iteration's worst case $60.00 (12 Claude Code calls at [cognition] max_budget_usd $5.00"
        ) && stderr.contains("is more than [governor] usd_per_day $50.00"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(history(&dir.path().join("state")).is_empty());
}
