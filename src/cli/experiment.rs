//! `agent experiment`: does learning pay? The agent runs on each workspace
//! with the offline backend, a fresh state directory per run and the same
//! iteration budget, once with learning on and once with learning off (a
//! uniform draw among the same capabilities), over several seeds. In the
//! learning-on arm what was learned on one workspace (the learner's bandit,
//! rules and statistics) is carried into the next run: transfer is what
//! should make it win. `--candidates K` adds an arm that learns as the first
//! does and runs K candidates per iteration (`[run] candidates`); every arm
//! reports wall time to best beside iterations to best, which is what
//! candidates buy. Each run is the real `agent run` in a process of its
//! own; the figures are read from its store afterwards, not from its output.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde_json::{Value, json};

use super::exit;
use crate::domain::{Iteration, Outcome};
use crate::process::{self, CommandSpec};
use crate::store::Store;

/// The goal every run pursues.
const GOAL: &str =
    "Reduce the compiler and clippy warnings of the workspace without breaking its tests";
/// Longest one run may take per iteration before it is given up.
const PER_ITERATION: Duration = Duration::from_secs(600);

#[derive(Debug, Args)]
pub struct ExperimentArgs {
    /// A workspace (a Rust crate); repeat for several, run in the order given.
    #[arg(long = "workspace", value_name = "DIR", required = true)]
    pub workspaces: Vec<PathBuf>,
    /// Seeds per arm (0, 1, …).
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    pub seeds: u64,
    /// Iterations per run (the same budget for both arms).
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..))]
    pub iterations: u64,
    /// Where the runs' state directories and logs go [default: a temporary
    /// directory, removed at the end].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Print the results as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Add an arm that runs K candidates per iteration, learning on;
    /// repeat for several.
    #[arg(long = "candidates", value_name = "K", value_parser = clap::value_parser!(u32).range(1..=16))]
    pub candidates: Vec<u32>,
}

/// One arm of the experiment.
#[derive(Debug, Clone, PartialEq)]
struct Arm {
    name: String,
    learning: bool,
    candidates: u32,
}

/// Learning on and off, one candidate each, then an arm per `--candidates`.
fn arms(candidates: &[u32]) -> Vec<Arm> {
    let mut arms = vec![
        Arm {
            name: "learning_on".into(),
            learning: true,
            candidates: 1,
        },
        Arm {
            name: "learning_off".into(),
            learning: false,
            candidates: 1,
        },
    ];
    arms.extend(candidates.iter().map(|&k| Arm {
        name: format!("candidates_{k}"),
        learning: true,
        candidates: k,
    }));
    arms
}

/// What one run achieved.
#[derive(Debug, Clone, PartialEq)]
pub struct RunResult {
    pub start: f64,
    pub best: f64,
    /// The first iteration whose head had the best fitness (0: the start).
    pub iterations_to_best: u64,
    /// From the first iteration's start to the commit of that iteration.
    pub wall_to_best: Duration,
    pub kept: u64,
    pub refused: u64,
}

/// Reads a run's figures from its committed iterations (oldest first).
pub fn result_of(iterations: &[Iteration]) -> Option<RunResult> {
    let first = iterations.first()?;
    let start = first.fitness_before?;
    let started_ms = first
        .finished_at_ms
        .saturating_sub(first.duration.as_millis() as u64);
    let mut best = start;
    let mut iterations_to_best = 0;
    let mut wall_to_best = Duration::ZERO;
    for iteration in iterations {
        if let Some(fitness) = iteration.head_fitness()
            && fitness < best
        {
            best = fitness;
            iterations_to_best = iteration.number;
            wall_to_best =
                Duration::from_millis(iteration.finished_at_ms.saturating_sub(started_ms));
        }
    }
    let count = |outcome| iterations.iter().filter(|i| i.outcome == outcome).count() as u64;
    Some(RunResult {
        start,
        best,
        iterations_to_best,
        wall_to_best,
        kept: count(Outcome::Accepted),
        refused: count(Outcome::Rejected),
    })
}

/// Mean and (sample) standard deviation.
fn spread(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    if values.is_empty() {
        return (f64::NAN, 0.0);
    }
    let mean = values.iter().sum::<f64>() / n;
    let variance = if values.len() > 1 {
        values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, variance.sqrt())
}

/// One arm's results on one workspace, over the seeds.
fn summarise(results: &[RunResult]) -> Value {
    let field = |f: fn(&RunResult) -> f64| spread(&results.iter().map(f).collect::<Vec<_>>());
    let (start, start_sd) = field(|r| r.start);
    let (best, best_sd) = field(|r| r.best);
    let (to_best, to_best_sd) = field(|r| r.iterations_to_best as f64);
    let (wall, wall_sd) = field(|r| r.wall_to_best.as_secs_f64());
    let (kept, kept_sd) = field(|r| r.kept as f64);
    let (refused, refused_sd) = field(|r| r.refused as f64);
    json!({
        "runs": results.len(),
        "start_fitness_mean": start, "start_fitness_sd": start_sd,
        "best_fitness_mean": best, "best_fitness_sd": best_sd,
        "iterations_to_best_mean": to_best, "iterations_to_best_sd": to_best_sd,
        "wall_seconds_to_best_mean": wall, "wall_seconds_to_best_sd": wall_sd,
        "kept_mean": kept, "kept_sd": kept_sd,
        "refused_mean": refused, "refused_sd": refused_sd,
    })
}

pub async fn run(args: ExperimentArgs) -> u8 {
    match experiment(&args).await {
        Ok(report) => {
            if args.json {
                super::say(&report.to_string());
            } else {
                super::say(table(&report).trim_end());
            }
            let failed = report["workspaces"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|row| row["failed"].as_array().is_some_and(|f| !f.is_empty()));
            if failed { exit::FAILED } else { exit::OK }
        }
        Err(error) => {
            eprintln!("agent experiment: {error}");
            exit::FAILED
        }
    }
}

async fn experiment(args: &ExperimentArgs) -> Result<Value, String> {
    let own = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let workspaces = rust_workspaces(&args.workspaces)?;
    let (out, temporary) = match &args.out {
        Some(out) => (out.clone(), false),
        None => (
            std::env::temp_dir().join(format!("agent-experiment-{}", std::process::id())),
            true,
        ),
    };
    std::fs::create_dir_all(&out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let arms = arms(&args.candidates);
    let mut table = Table::new(workspaces.len(), arms.clone());
    for seed in 0..args.seeds {
        for (
            arm,
            Arm {
                name: arm_name,
                learning,
                candidates,
            },
        ) in arms.iter().enumerate()
        {
            // The learning arm carries what it learned on one workspace to
            // the next.
            let mut knowledge: Option<PathBuf> = None;
            for (index, workspace) in workspaces.iter().enumerate() {
                let name = label(workspace);
                let dir = out.join(format!("seed{seed}-{arm_name}-{index}-{name}"));
                eprintln!(
                    "agent experiment: seed {seed}, {arm_name}, {name}: {} iteration(s)",
                    args.iterations
                );
                // Both arms draw from the same seed on the same workspace
                // (a paired comparison); each workspace has its own.
                let run_seed = seed * 1_000 + index as u64;
                let result = one_run(
                    &own,
                    workspace,
                    &dir,
                    Setting {
                        learning: *learning,
                        seed: run_seed,
                        iterations: args.iterations,
                        candidates: *candidates,
                    },
                    knowledge.as_deref(),
                )
                .await;
                if result.is_ok() && *learning {
                    knowledge = Some(dir.join("state"));
                }
                let run = RunId {
                    workspace: index,
                    name: &name,
                    arm,
                    seed,
                };
                table.record(run, result);
            }
        }
    }
    if temporary {
        let _ = std::fs::remove_dir_all(&out);
    }
    Ok(json!({
        "seeds": args.seeds,
        "iterations": args.iterations,
        "backend": "offline",
        "workspaces": table.rows(&workspaces),
    }))
}

/// The workspaces given, made absolute, each a Rust crate.
fn rust_workspaces(given: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    given
        .iter()
        .map(|dir| {
            let absolute = std::path::absolute(dir)
                .map_err(|e| format!("workspace {}: {e}", dir.display()))?;
            if !absolute.join("Cargo.toml").is_file() {
                return Err(format!(
                    "workspace {} has no Cargo.toml: the experiment runs on Rust crates",
                    dir.display()
                ));
            }
            Ok(absolute)
        })
        .collect()
}

/// Which run a result is of.
struct RunId<'a> {
    workspace: usize,
    name: &'a str,
    arm: usize,
    seed: u64,
}

/// What the runs gave: per workspace and arm, one result per seed; per
/// workspace, why runs on it ended without one.
struct Table {
    arms: Vec<Arm>,
    results: Vec<Vec<Vec<RunResult>>>,
    failures: Vec<Vec<String>>,
}

impl Table {
    fn new(workspaces: usize, arms: Vec<Arm>) -> Table {
        Table {
            results: vec![vec![Vec::new(); arms.len()]; workspaces],
            failures: vec![Vec::new(); workspaces],
            arms,
        }
    }

    /// One run's result. A workspace that cannot be run does not end the
    /// experiment: it is reported, and the others go on.
    fn record(&mut self, run: RunId<'_>, result: Result<RunResult, String>) {
        match result {
            Ok(result) => self.results[run.workspace][run.arm].push(result),
            Err(error) => {
                let arm_name = &self.arms[run.arm].name;
                eprintln!(
                    "agent experiment: {} ({arm_name}, seed {}): {error}",
                    run.name, run.seed
                );
                self.failures[run.workspace]
                    .push(format!("{arm_name}, seed {}: {error}", run.seed));
            }
        }
    }

    fn rows(&self, workspaces: &[PathBuf]) -> Vec<Value> {
        workspaces
            .iter()
            .zip(&self.results)
            .zip(&self.failures)
            .map(|((workspace, results), failed)| {
                let mut row = json!({
                    "workspace": label(workspace),
                    "failed": failed,
                    "arms": self.arms.iter().map(|arm| arm.name.clone()).collect::<Vec<_>>(),
                });
                for (arm, results) in self.arms.iter().zip(results) {
                    row[arm.name.as_str()] = summarise(results);
                }
                row
            })
            .collect()
    }
}

fn label(workspace: &Path) -> String {
    workspace
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| workspace.display().to_string())
}

/// How one run is set.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Setting {
    pub learning: bool,
    pub seed: u64,
    pub iterations: u64,
    /// `[run] candidates`.
    pub candidates: u32,
}

/// One `agent run` on a fresh state directory; `knowledge` is the state
/// directory of the run whose learning it starts from.
pub(crate) async fn one_run(
    own: &Path,
    workspace: &Path,
    dir: &Path,
    setting: Setting,
    knowledge: Option<&Path>,
) -> Result<RunResult, String> {
    let iterations = setting.iterations;
    let state = dir.join("state");
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| format!("cannot clear {}: {e}", dir.display()))?;
    }
    std::fs::create_dir_all(&state)
        .map_err(|e| format!("cannot create {}: {e}", state.display()))?;
    let config = write_config(dir, workspace, &state, setting)?;
    if let Some(from) = knowledge {
        carry_learning(from, &state).await?;
    }
    let spec = CommandSpec {
        program: own.to_path_buf(),
        args: vec![
            "run".into(),
            "--config".into(),
            config.display().to_string(),
        ],
        cwd: dir.to_path_buf(),
        env: Vec::new(),
        timeout: PER_ITERATION * (iterations as u32 + 1),
    };
    let running = process::start(&spec).map_err(|e| format!("cannot start `agent run`: {e}"))?;
    // A run that pauses (a workspace that does not build, failures that do
    // not go away) would wait for an operator forever: it is stopped, and
    // the pause is this run's result.
    let paused = std::sync::Mutex::new(None::<String>);
    let finished = running
        .wait_or_cancel(async {
            let reason = wait_for_pause(&state.join("agent.sock")).await;
            *paused.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
        })
        .await;
    let log = dir.join("run.log");
    let _ = std::fs::write(&log, format!("{}{}", finished.stdout, finished.stderr));
    match paused.into_inner().unwrap_or_else(|p| p.into_inner()) {
        // Every capability was tried in the situation the run reached and
        // none gained anything: the run is over, its figures stand.
        Some(reason) if reason.starts_with(crate::domain::NOTHING_LEFT) => {}
        Some(reason) => {
            return Err(format!("the run paused: {reason} (log: {})", log.display()));
        }
        None if !finished.success() => {
            return Err(format!(
                "`agent run` failed: {} (log: {})",
                finished.first_error_line(),
                log.display()
            ));
        }
        None => {}
    }
    let store = Store::open(&state).map_err(|e| e.to_string())?;
    let committed = store.iterations(usize::MAX).map_err(|e| e.to_string())?;
    result_of(&committed).ok_or_else(|| {
        format!(
            "the run committed no iteration with a measured fitness (log: {})",
            log.display()
        )
    })
}

/// The run's `agent.toml`: the offline backend, loop checks off, the
/// setting's learning, seed, iterations and candidates.
fn write_config(
    dir: &Path,
    workspace: &Path,
    state: &Path,
    setting: Setting,
) -> Result<PathBuf, String> {
    let Setting {
        learning,
        seed,
        iterations,
        candidates,
    } = setting;
    let config = dir.join("agent.toml");
    let text = format!(
        "[run]\ngoal = {goal:?}\nworkspace = {workspace:?}\nstate = {state:?}\nmax_iterations = {iterations}\n\
         loop_same_plan = 0\nloop_same_refused_change = 0\nloop_no_progress = 0\nstart_from_variant_after = 0\n{candidates}\
         [cognition]\nbackend = \"offline\"\n\
         [validation]\nfailing_base = \"proceed\"\n\
         [learning]\nenabled = {learning}\nseed = {seed}\n",
        // Written only when asked for: a release from before the key
        // (an upgrade's running binary) refuses it.
        candidates = if candidates > 1 {
            format!("candidates = {candidates}\n")
        } else {
            String::new()
        },
        goal = GOAL,
        workspace = workspace.display().to_string(),
        state = state.display().to_string(),
    );
    std::fs::write(&config, text).map_err(|e| format!("cannot write {}: {e}", config.display()))?;
    Ok(config)
}

/// Asks the run for its status every second until it is paused; its reason.
async fn wait_for_pause(socket: &Path) -> String {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let asked =
            crate::ctl::client::request(socket, crate::ctl::protocol::Command::Status).await;
        if let Ok(crate::ctl::protocol::Outcome::Ok(crate::ctl::protocol::Reply::Status(status))) =
            asked
            && status.run_state == "paused"
        {
            return status
                .pause_reason
                .unwrap_or_else(|| "paused without a reason".into());
        }
    }
}

/// Seeds a fresh store with what the learner learned in an earlier run.
async fn carry_learning(from: &Path, to: &Path) -> Result<(), String> {
    let learned = {
        let earlier = Store::open(from).map_err(|e| e.to_string())?;
        earlier.snapshot("learner").map_err(|e| e.to_string())?
    };
    if let Some(record) = learned {
        let store = Store::open(to).map_err(|e| e.to_string())?;
        store
            .put_snapshot(&record)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The report as a table: per workspace and arm, mean ± sd over seeds.
pub fn table(report: &Value) -> String {
    let mut out = format!(
        "{} seed(s), {} iteration(s) per run, offline backend\n\n{:<18} {:<13} {:>12} {:>12} {:>14} {:>16} {:>11} {:>11}\n",
        report["seeds"],
        report["iterations"],
        "workspace",
        "arm",
        "start",
        "best",
        "iters to best",
        "secs to best",
        "kept",
        "refused"
    );
    let cell = |arm: &Value, field: &str| {
        format!(
            "{:.1} ± {:.1}",
            arm[format!("{field}_mean")].as_f64().unwrap_or(f64::NAN),
            arm[format!("{field}_sd")].as_f64().unwrap_or(f64::NAN)
        )
    };
    for row in report["workspaces"].as_array().into_iter().flatten() {
        let arms = row["arms"].as_array().cloned().unwrap_or_default();
        for arm in arms.iter().filter_map(Value::as_str) {
            let name = arm.replace('_', " ");
            let a = &row[arm];
            out.push_str(&format!(
                "{:<18} {:<13} {:>12} {:>12} {:>14} {:>16} {:>11} {:>11}\n",
                row["workspace"].as_str().unwrap_or("?"),
                name,
                cell(a, "start_fitness"),
                cell(a, "best_fitness"),
                cell(a, "iterations_to_best"),
                cell(a, "wall_seconds_to_best"),
                cell(a, "kept"),
                cell(a, "refused"),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iteration(number: u64, outcome: Outcome, before: f64, after: f64) -> Iteration {
        Iteration {
            number,
            goal: GOAL.into(),
            capability: "c".into(),
            outcome,
            fitness_before: Some(before),
            fitness_after: Some(after),
            usage: Default::default(),
            duration: Duration::ZERO,
            commit: None,
            summary: String::new(),
            finished_at_ms: number * 1000,
            variant: None,
        }
    }

    #[test]
    fn a_run_is_read_from_its_committed_iterations() {
        let log = [
            iteration(1, Outcome::Rejected, 10.0, 12.0),
            iteration(2, Outcome::Accepted, 10.0, 6.0),
            iteration(3, Outcome::NoChange, 6.0, 6.0),
            iteration(4, Outcome::Accepted, 6.0, 6.0),
        ];
        assert_eq!(
            result_of(&log),
            Some(RunResult {
                start: 10.0,
                best: 6.0,
                iterations_to_best: 2,
                // From iteration 1's start (it took no time) to iteration 2.
                wall_to_best: Duration::from_secs(1),
                kept: 2,
                refused: 1,
            })
        );
        assert_eq!(result_of(&[]), None);
    }

    #[test]
    fn spread_is_mean_and_sample_deviation() {
        assert_eq!(spread(&[2.0, 4.0]), (3.0, 2f64.sqrt()));
        assert_eq!(spread(&[5.0]), (5.0, 0.0));
    }
}
