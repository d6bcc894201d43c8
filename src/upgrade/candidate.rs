//! A candidate release: an accepted change to the agent's own source, built
//! and judged as an agent. The build is `cargo build` of the worktree (the
//! configured profile, into a target directory shared by every candidate so
//! that builds after the first are incremental, confined like a check,
//! under a timeout). The judgement is what the agent is for — improving
//! workspaces: the candidate and the running release each run the offline
//! backend on the same held-out workspaces with the same seeds (the way
//! `agent experiment` runs an arm, each run a real `agent run` in a fresh
//! state directory), and the candidate is kept only by the configured rule
//! on total best fitness, then iterations to reach it. Its own test suite
//! passing is validation's business, not enough here.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{KeepIf, UpgradeConfig};
use crate::cli::experiment::{RunResult, Setting, one_run};
use crate::process::{self, CommandSpec, Ending};
use crate::sandbox::{Reach, Sandbox};

/// The binary every candidate is built as.
const BINARY: &str = env!("CARGO_PKG_NAME");

/// A built candidate: where cargo left its binary, and how long it took.
#[derive(Debug, Clone)]
pub struct Built {
    pub binary: PathBuf,
    pub took: Duration,
}

/// Where candidates are built: `[upgrade] target_dir`, or beside the
/// releases.
pub fn target_dir(config: &UpgradeConfig, state_dir: &Path) -> PathBuf {
    config.target_dir.clone().unwrap_or_else(|| {
        super::releases::Releases::of_state(state_dir)
            .dir
            .join("target")
    })
}

/// The directory cargo puts a profile's output in.
fn profile_dir(profile: &str) -> &str {
    match profile {
        "dev" | "test" => "debug",
        "bench" => "release",
        other => other,
    }
}

/// Builds the agent in `worktree`; the reason, first line first, when it
/// does not build.
pub async fn build(
    config: &UpgradeConfig,
    state_dir: &Path,
    worktree: &Path,
    sandbox: Option<&Sandbox>,
) -> Result<Built, String> {
    let target = target_dir(config, state_dir);
    std::fs::create_dir_all(&target)
        .map_err(|e| format!("cannot create {}: {e}", target.display()))?;
    let spec = CommandSpec {
        program: "cargo".into(),
        args: [
            "build",
            "--profile",
            &config.profile,
            "--bin",
            BINARY,
            "--target-dir",
            &target.display().to_string(),
        ]
        .map(String::from)
        .to_vec(),
        cwd: worktree.to_path_buf(),
        env: Vec::new(),
        timeout: config.build_timeout,
    };
    let confined = match sandbox {
        Some(sandbox) => sandbox.wrap(spec, Reach::Check, &[&target]),
        None => spec,
    };
    let started = Instant::now();
    let finished = process::run(&confined).await.map_err(|e| e.to_string())?;
    if let Some(failure) = crate::sandbox::start_failure(sandbox, &confined, &finished) {
        return Err(failure.to_string());
    }
    if !finished.success() {
        let why = match finished.ending {
            Ending::TimedOut => format!(
                "timed out after {}",
                humantime::format_duration(config.build_timeout)
            ),
            Ending::Cancelled => "was cancelled".into(),
            Ending::Exited(_) => finished.first_error_line(),
        };
        return Err(format!("the candidate did not build: {why}"));
    }
    let binary = target.join(profile_dir(&config.profile)).join(BINARY);
    if !binary.is_file() {
        return Err(format!(
            "the candidate built, but {} is not there",
            binary.display()
        ));
    }
    Ok(Built {
        binary,
        took: started.elapsed(),
    })
}

/// What one binary achieved over the suite: summed over every workspace
/// and seed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Score {
    /// Total best fitness (lower is better).
    pub best: f64,
    /// Total iterations to reach it.
    pub iterations_to_best: u64,
    /// Changes kept.
    pub kept: u64,
}

impl Score {
    fn of(results: &[RunResult]) -> Score {
        Score {
            best: results.iter().map(|r| r.best).sum(),
            iterations_to_best: results.iter().map(|r| r.iterations_to_best).sum(),
            kept: results.iter().map(|r| r.kept).sum(),
        }
    }
}

/// The candidate against the running release on the same work.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub candidate: Score,
    pub running: Score,
    pub workspaces: usize,
    pub seeds: u64,
    pub iterations: u64,
    pub took_ms: u64,
    pub keep_if: String,
    pub kept: bool,
}

impl Evaluation {
    /// One line: both scores, the work, the rule and its verdict.
    pub fn describe(&self) -> String {
        format!(
            "candidate best fitness {} in {} iteration(s), running {} in {} ({} workspace(s) × {} seed(s), {} iteration(s) each, {:.1}s; rule {}: {})",
            self.candidate.best,
            self.candidate.iterations_to_best,
            self.running.best,
            self.running.iterations_to_best,
            self.workspaces,
            self.seeds,
            self.iterations,
            self.took_ms as f64 / 1000.0,
            self.keep_if,
            if self.kept { "kept" } else { "worse" }
        )
    }
}

/// Whether `candidate` is kept against `running` by `rule`.
pub fn judge(rule: KeepIf, candidate: &Score, running: &Score) -> bool {
    if candidate.best != running.best {
        return candidate.best < running.best;
    }
    match rule {
        KeepIf::NotWorse => candidate.iterations_to_best <= running.iterations_to_best,
        KeepIf::Better => candidate.iterations_to_best < running.iterations_to_best,
    }
}

/// The held-out workspaces: as configured, or the crates under the
/// source's `examples/` (a protected path, so a change cannot edit its own
/// exam).
pub fn suite(config: &UpgradeConfig, worktree: &Path) -> Result<Vec<PathBuf>, String> {
    if !config.suite.is_empty() {
        return Ok(config.suite.clone());
    }
    let examples = worktree.join("examples");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&examples)
        .map_err(|e| format!("cannot read the example suite {}: {e}", examples.display()))?
        .flatten()
        .map(|entry| entry.path())
        .filter(|dir| dir.join("Cargo.toml").is_file())
        .collect();
    found.sort();
    if found.is_empty() {
        return Err(format!(
            "no crate under {} to judge a candidate on: set [upgrade] suite",
            examples.display()
        ));
    }
    Ok(found)
}

/// The running release's score by binary and work, so that it is measured
/// once however many candidates are judged against it.
type ScoreKey = (PathBuf, Vec<PathBuf>, u64, u64);
static RUNNING_SCORES: Mutex<Option<HashMap<ScoreKey, Score>>> = Mutex::new(None);

/// Scores `candidate` against `running` on `suite`; the runs' state goes
/// under `out` (their logs stay, their state directories are removed).
pub async fn evaluate(
    config: &UpgradeConfig,
    candidate: &Path,
    running: &Path,
    suite: &[PathBuf],
    out: &Path,
) -> Result<Evaluation, String> {
    let started = Instant::now();
    let key: ScoreKey = (
        running.to_path_buf(),
        suite.to_vec(),
        config.seeds,
        config.iterations,
    );
    let known = RUNNING_SCORES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_or_insert_with(HashMap::new)
        .get(&key)
        .copied();
    let candidate_score = Score::of(&runs(config, candidate, "candidate", suite, out).await?);
    let running_score = match known {
        Some(score) => score,
        None => {
            let score = Score::of(&runs(config, running, "running", suite, out).await?);
            RUNNING_SCORES
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_or_insert_with(HashMap::new)
                .insert(key, score);
            score
        }
    };
    Ok(Evaluation {
        kept: judge(config.keep_if, &candidate_score, &running_score),
        candidate: candidate_score,
        running: running_score,
        workspaces: suite.len(),
        seeds: config.seeds,
        iterations: config.iterations,
        took_ms: started.elapsed().as_millis() as u64,
        keep_if: config.keep_if.name().to_string(),
    })
}

/// One arm: `binary` on every workspace and seed. Seed `s` on workspace `i`
/// is `s * 1000 + i` for both arms (a paired comparison).
async fn runs(
    config: &UpgradeConfig,
    binary: &Path,
    arm: &str,
    suite: &[PathBuf],
    out: &Path,
) -> Result<Vec<RunResult>, String> {
    let mut results = Vec::new();
    for seed in 0..config.seeds {
        for (index, workspace) in suite.iter().enumerate() {
            let dir = out.join(format!("{arm}-seed{seed}-{index}"));
            let run_seed = seed * 1_000 + index as u64;
            let setting = Setting {
                learning: true,
                seed: run_seed,
                iterations: config.iterations,
                candidates: 1,
            };
            let result = one_run(binary, workspace, &dir, setting, None)
                .await
                .map_err(|error| {
                    format!(
                        "the {arm} release's run on {} (seed {run_seed}) failed: {error}",
                        workspace.display()
                    )
                });
            // The run's worktree and builds are large; its log stays.
            let _ = std::fs::remove_dir_all(dir.join("state"));
            results.push(result?);
        }
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn score(best: f64, iterations_to_best: u64) -> Score {
        Score {
            best,
            iterations_to_best,
            kept: 0,
        }
    }

    #[test]
    fn a_candidate_is_judged_on_best_fitness_then_iterations_to_reach_it() {
        let running = score(10.0, 3);
        for (rule, candidate, kept) in [
            (KeepIf::NotWorse, score(9.0, 5), true),
            (KeepIf::NotWorse, score(10.0, 3), true),
            (KeepIf::NotWorse, score(10.0, 4), false),
            (KeepIf::NotWorse, score(11.0, 1), false),
            (KeepIf::Better, score(10.0, 3), false),
            (KeepIf::Better, score(10.0, 2), true),
            (KeepIf::Better, score(9.5, 9), true),
        ] {
            assert_eq!(
                judge(rule, &candidate, &running),
                kept,
                "{rule:?} {candidate:?} against {running:?}"
            );
        }
    }

    #[test]
    fn the_profile_names_the_directory_cargo_builds_into() {
        assert_eq!(profile_dir("dev"), "debug");
        assert_eq!(profile_dir("release"), "release");
        assert_eq!(profile_dir("candidate"), "candidate");
    }
}
