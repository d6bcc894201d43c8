//! Governance against the real binary. Budgets: with a tiny budget the stand-in's
//! invocations stop at the limit, the run waits (status says which budget)
//! and goes on by itself when a short window frees up; a job whose worst
//! case would cross the dollar budget is not started; a budget raised live
//! lets the run go on at once and is on the audit chain. Resource limits:
//! a hard limit crossed pauses the run with the reason. Loop detection: the
//! same refused change again and again, a run without progress, the same
//! plan over and over each pause the run with the pattern named.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{Daemon, audit_chain, fast_config, history, poll_until, text, tiny_crate};

const WAIT: Duration = Duration::from_secs(60);

struct Run {
    dir: tempfile::TempDir,
    daemon: Daemon,
    log: std::path::PathBuf,
}

fn start(extra: &[(&str, &str)], env: &[(&str, &str)]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let workspace = tiny_crate(dir.path());
    let config = fast_config(dir.path(), extra);
    let log = dir.path().join("claude.log");
    // The test's own settings come last and win.
    let mut all = vec![
        ("FAKE_CLAUDE_MODE", "edit"),
        ("FAKE_CLAUDE_LOG", log.to_str().unwrap()),
    ];
    all.extend_from_slice(env);
    let env = all;
    let daemon = Daemon::unbounded(&dir.path().join("state"), &config, &workspace, &env);
    Run { dir, daemon, log }
}

impl Run {
    /// Every Claude Code call: research questions and jobs.
    fn invocations(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .count()
    }

    /// The edit jobs alone (research runs in plan mode).
    fn jobs(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(" acceptEdits "))
            .count()
    }

    /// Waits until the status says the run waits for `budget`; returns the
    /// reason shown.
    fn waiting_for(&self, budget: &str) -> String {
        poll_until(&format!("the run to wait for {budget}"), WAIT, || {
            let status = self.daemon.status()?;
            let waiting = status["waiting"].as_str()?.to_string();
            waiting.contains(budget).then_some(waiting)
        })
    }

    /// Stops the daemon; the directory lives as long as the value returned.
    fn stop(mut self) -> tempfile::TempDir {
        assert!(self.daemon.ctl(&["stop"]).status.success());
        assert!(
            self.daemon.wait_exit(WAIT).success(),
            "{}",
            self.daemon.logs()
        );
        self.dir
    }
}

/// A budget over a short window: the run waits when `counted` reaches
/// `at_limit`, says so with `reason`, and goes on by itself when the window
/// frees.
fn waits_then_goes_on(
    limits: &[(&str, &str)],
    budget: &str,
    reason: &str,
    counted: fn(&Run) -> usize,
    at_limit: usize,
) {
    let run = start(limits, &[]);
    let said = run.waiting_for(budget);
    assert!(said.contains(reason), "{said}");
    assert_eq!(counted(&run), at_limit, "nothing starts past the budget");
    poll_until("the run to go on when the window frees", WAIT, || {
        (counted(&run) > at_limit).then_some(())
    });
    run.stop();
}

#[test]
fn the_token_budget_stops_jobs_at_the_limit_and_the_run_goes_on_when_the_window_frees() {
    // Each stand-in call reports 165 tokens; the first iteration makes three
    // (two research questions, the job): 495 of 400 before a second starts.
    waits_then_goes_on(
        &[
            ("tokens_per_day = 2000000", "tokens_per_day = 400"),
            ("day_window = \"24h\"", "day_window = \"4s\""),
        ],
        "budget tokens_per_day",
        "495 of 400 tokens spent in the last 4s, 0 left; frees up in",
        Run::invocations,
        3,
    );
}

#[test]
fn the_hourly_iteration_budget_waits_and_goes_on_when_its_window_frees() {
    waits_then_goes_on(
        &[
            ("iterations_per_hour = 120", "iterations_per_hour = 2"),
            ("hour_window = \"1h\"", "hour_window = \"3s\""),
        ],
        "budget iterations_per_hour",
        "2 of 2 iterations started in the last 3s",
        Run::jobs,
        2,
    );
}

#[test]
fn a_job_whose_worst_case_would_cross_the_dollar_budget_is_not_started_until_raised_live() {
    // Every Claude Code call costs $0.30 and may cost up to $0.50; an
    // iteration makes up to four (two research questions, the job and its
    // repair turn): its worst case is $2.00. After the first (three calls:
    // its change is kept), $0.90 is spent and $1.10 left.
    let run = start(
        &[
            ("usd_per_day = 50.0", "usd_per_day = 2.0"),
            ("max_budget_usd = 5.0", "max_budget_usd = 0.5"),
        ],
        &[("FAKE_CLAUDE_COST", "0.3")],
    );
    let reason = run.waiting_for("budget usd_per_day");
    assert!(
        reason.contains(
            "$0.90 of $2.00 spent in the last 1day, $1.10 left, less than one iteration's worst case $2.00"
        ),
        "{reason}"
    );
    assert_eq!(
        run.invocations(),
        3,
        "no call of a second iteration is started"
    );

    let budgets = send(&run.daemon, &["budgets"]);
    let usd = budgets["budgets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "usd_per_day")
        .unwrap()
        .clone();
    assert_eq!(usd["limit"], 2.0);
    assert!((usd["spent"].as_f64().unwrap() - 0.9).abs() < 1e-9, "{usd}");
    assert_eq!(usd["set_live"], false);

    let set = send(
        &run.daemon,
        &[
            "set-budget",
            "--arg",
            "name=usd_per_day",
            "--arg",
            "value=4",
        ],
    );
    assert_eq!(set["budget"]["limit"], 4.0);
    assert_eq!(set["budget"]["set_live"], true);
    poll_until("the run to go on under the raised budget", WAIT, || {
        (run.invocations() > 3).then_some(())
    });
    let bad = run.daemon.ctl(&[
        "send",
        "governor",
        "set-budget",
        "--arg",
        "name=dollars",
        "--arg",
        "value=2",
    ]);
    assert!(!bad.status.success());
    assert!(
        text(&bad.stderr).contains("there is no budget \"dollars\""),
        "{}",
        text(&bad.stderr)
    );
    let state = run.daemon_state();
    let _dir = run.stop();
    let chain = audit_chain(&state);
    assert!(
        chain.contains("\"action\":\"budget.set\",\"detail\":\"usd_per_day = 4\""),
        "{}",
        chain
    );
}

fn send(daemon: &Daemon, args: &[&str]) -> Value {
    let mut argv = vec!["send", "governor"];
    argv.extend_from_slice(args);
    argv.push("--json");
    let output = daemon.ctl(&argv);
    assert!(output.status.success(), "{}", text(&output.stderr));
    serde_json::from_slice::<Value>(&output.stdout).unwrap()["reply"].clone()
}

impl Run {
    fn daemon_state(&self) -> std::path::PathBuf {
        Path::new(&self.log).parent().unwrap().join("state")
    }
}

fn paused_by(limit: (&str, &str), expected: &str) {
    let run = start(
        &[limit, ("check_every = \"10s\"", "check_every = \"200ms\"")],
        &[],
    );
    let reason = poll_until("the run to pause at the hard limit", WAIT, || {
        let status = run.daemon.status()?;
        let reason = status["pause_reason"].as_str()?.to_string();
        (status["run_state"] == "paused").then_some(reason)
    });
    assert!(reason.contains(expected), "{reason}");
    assert!(
        run.daemon.logs().contains("resource_limit"),
        "{}",
        run.daemon.logs()
    );
    let state = run.daemon_state();
    let _dir = run.stop();
    let chain = audit_chain(&state);
    assert!(
        chain.contains(&format!(
            "\"action\":\"run.paused\",\"detail\":\"{}",
            "hard limit"
        )),
        "{}",
        chain
    );
}

#[test]
fn a_memory_hard_limit_below_what_the_agent_uses_pauses_the_run_with_the_reason() {
    paused_by(
        ("max_rss_mb = 8192", "max_rss_mb = 1"),
        "hard limit: resident memory of the agent and its jobs",
    );
}

#[test]
fn a_disk_hard_limit_above_what_is_free_pauses_the_run_with_the_reason() {
    paused_by(
        ("min_free_disk_mb = 256", "min_free_disk_mb = 100000000"),
        "hard limit: free disk under the state directory",
    );
}

/// Waits until the run pauses itself; returns the reason.
fn paused_reason(run: &Run) -> String {
    poll_until("the run to pause itself", WAIT, || {
        let status = run.daemon.status()?;
        let reason = status["pause_reason"].as_str()?.to_string();
        (status["run_state"] == "paused").then_some(reason)
    })
}

#[test]
fn the_same_refused_change_proposed_again_and_again_pauses_the_run_as_a_loop() {
    // Without repair turns: one job per attempt.
    let run = start(
        &[("repair_turns = 1", "repair_turns = 0")],
        &[("FAKE_CLAUDE_EDIT_TEXT", "pub fn raw() {\n    unsafe {}\n}")],
    );
    let reason = paused_reason(&run);
    assert!(
        reason.starts_with("loop detected: the same refused change proposed 3 times"),
        "{reason}"
    );
    assert!(reason.contains("refused by no-new-unsafe"), "{reason}");
    assert_eq!(run.jobs(), 3, "no fourth attempt");
    assert!(
        run.daemon.logs().contains("rule=\"loop\""),
        "{}",
        run.daemon.logs()
    );
    run.stop();
}

#[test]
fn a_run_without_progress_or_repeating_its_plan_pauses_as_a_loop() {
    for (threshold, expected) in [
        (
            ("loop_no_progress = 30", "loop_no_progress = 4"),
            "loop detected: 4 committed iterations in a row without a fitness improvement",
        ),
        (
            ("loop_same_plan = 8", "loop_same_plan = 3"),
            "loop detected: the same plan (claude-edit toward the same goal) 3 times in a row",
        ),
    ] {
        // The stand-in answers but changes nothing: every iteration is no-change.
        let run = start(&[threshold], &[("FAKE_CLAUDE_MODE", "success")]);
        let reason = paused_reason(&run);
        assert!(reason.starts_with(expected), "{reason}");
        run.stop();
    }
}

#[test]
fn changes_all_kept_at_a_constant_fitness_pause_the_run_as_a_loop_after_k_iterations() {
    // The stand-in appends a line each job, validation passes, the fitness
    // is `echo 1`: every change is kept and none improves anything.
    let run = start(&[("loop_no_progress = 30", "loop_no_progress = 4")], &[]);
    let reason = paused_reason(&run);
    assert_eq!(
        reason,
        "loop detected: 4 committed iterations in a row without a fitness improvement \
         (changes kept or not); the fitness has stayed at 1 through all 4 of them; change the \
         goal or the workspace, then `agent ctl resume`"
    );
    // The alert is logged as the pause is seen, not before the status says it.
    poll_until("the loop alert in the log", WAIT, || {
        run.daemon.logs().contains("rule=\"loop\"").then_some(())
    });
    let state = run.daemon.state.clone();
    let _dir = run.stop();
    let records = history(&state);
    assert_eq!(records.len(), 4, "paused at the fourth: {records:?}");
    assert!(
        records.iter().all(|r| r["outcome"] == "accepted"),
        "{records:?}"
    );
}

#[test]
fn the_deadline_finishes_the_run_with_its_reason() {
    let mut run = start(&[("# deadline = \"72h\"", "deadline = \"1s\"")], &[]);
    assert!(
        run.daemon.wait_exit(WAIT).success(),
        "{}",
        run.daemon.logs()
    );
    assert!(
        run.daemon
            .logs()
            .contains("run finished (the deadline of 1s from the run's start is reached)"),
        "{}",
        run.daemon.logs()
    );
}
