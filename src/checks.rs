//! How a change is judged after the safety rules: by default the validation
//! and fitness commands of the configuration, run as processes (in the
//! modifier); a program that embeds the agent (the overhead benchmark) can
//! hand in [`Checks`] that run in-process instead.

use std::path::Path;

use async_trait::async_trait;

/// Validation and fitness of a worktree, in-process.
#[async_trait]
pub trait Checks: Send + Sync {
    /// `Ok` when the worktree at `cwd` passes; else why not, in one line.
    async fn validate(&self, cwd: &Path) -> Result<(), String>;

    /// The worktree's fitness (lower is better).
    async fn fitness(&self, cwd: &Path) -> Result<f64, String>;
}
