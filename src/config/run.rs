//! `[run]`: what the agent pursues, where, in which mode, and how a run backs
//! off, pauses and detects loops. Checked into [`RunConfig`], whose paths are
//! made absolute here.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::values::{HumanDuration, Positive};
use super::{ConfigError, absolute};
use crate::domain::{AbsolutePath, LoopRules};

/// How much autonomy the agent has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Changes that pass validation are committed without asking.
    Autonomous,
    /// Changes wait for an operator's approval.
    Supervised,
    /// Like autonomous, and fault injection through `agent ctl fault` is allowed.
    Debug,
}

/// `[run]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRun {
    goal: String,
    workspace: PathBuf,
    state: PathBuf,
    max_iterations: Option<Positive>,
    exit_on_pause: Option<bool>,
    mode: Mode,
    shutdown_timeout: HumanDuration,
    retry_initial: Option<HumanDuration>,
    retry_max: Option<HumanDuration>,
    pause_after_failures: Option<Positive>,
    start_from_variant_after: Option<u64>,
    loop_same_plan: Option<u32>,
    loop_same_refused_change: Option<u32>,
    loop_no_progress: Option<u32>,
    candidates: Option<Positive>,
    max_parallel_checks: Option<Positive>,
    candidate_deadline: Option<HumanDuration>,
}

/// `[run]` checked; each field is the [`Config`](super::Config) field of
/// the same name.
pub(super) struct RunConfig {
    pub goal: String,
    pub workspace: AbsolutePath,
    pub state_dir: AbsolutePath,
    pub max_iterations: Option<u64>,
    pub exit_on_pause: bool,
    pub mode: Mode,
    pub shutdown_timeout: Duration,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    pub pause_after_failures: u32,
    pub start_from_variant_after: u64,
    pub loops: LoopRules,
    pub candidates: u32,
    pub max_parallel_checks: usize,
    pub candidate_deadline: Duration,
}

/// More candidates than this in one iteration is refused: past about four
/// the candidates are made before the improvements reach the archive (see
/// DESIGN §14), and each is a job, a worktree and a build.
pub const MAX_CANDIDATES: u64 = 16;

impl RawRun {
    /// Refuses an empty goal, makes the paths absolute and fills in the
    /// defaults of the keys a file may leave out.
    pub(super) fn check(self, file: &Path) -> Result<RunConfig, ConfigError> {
        if self.goal.trim().is_empty() {
            return Err(ConfigError::whole_file(
                file,
                "[run] goal must be a non-empty sentence",
            ));
        }
        let candidates = self.candidates.map_or(1, Positive::get);
        if candidates > MAX_CANDIDATES {
            return Err(ConfigError::whole_file(
                file,
                format!(
                    "[run] candidates = {candidates}: at most {MAX_CANDIDATES} candidates run in one iteration"
                ),
            ));
        }
        Ok(RunConfig {
            candidates: candidates as u32,
            max_parallel_checks: self
                .max_parallel_checks
                .map_or_else(cores, |n| n.get().min(1024) as usize),
            candidate_deadline: self
                .candidate_deadline
                .map_or(Duration::from_secs(600), |d| d.0),
            goal: self.goal,
            workspace: absolute(file, "[run] workspace", &self.workspace)?,
            state_dir: absolute(file, "[run] state", &self.state)?,
            max_iterations: self.max_iterations.map(Positive::get),
            exit_on_pause: self.exit_on_pause.unwrap_or(false),
            mode: self.mode,
            shutdown_timeout: self.shutdown_timeout.0,
            retry_initial: self.retry_initial.map_or(Duration::from_secs(1), |d| d.0),
            retry_max: self.retry_max.map_or(Duration::from_secs(300), |d| d.0),
            pause_after_failures: self
                .pause_after_failures
                .map_or(5, |n| n.get().min(u64::from(u32::MAX)) as u32),
            start_from_variant_after: self.start_from_variant_after.unwrap_or(10),
            loops: LoopRules {
                same_plan: self.loop_same_plan.unwrap_or(8),
                same_refused_change: self.loop_same_refused_change.unwrap_or(3),
                no_progress: self.loop_no_progress.unwrap_or(30),
            },
        })
    }
}

/// The default of `max_parallel_checks`: the cores this process may use,
/// because cargo builds do not scale past them.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}
