//! The offline backend: no model, capabilities are local cargo commands that
//! improve a Rust workspace, from the broad (`cargo clippy --fix` on every
//! target) to the narrow (one clippy lint group). Which one runs is the
//! planner's choice, made from what the learner learned of the workspace's
//! situation; this module only knows how to run them.

use async_trait::async_trait;

use super::{Cognition, Job};
use crate::domain::{Capability, JobOutcome, JobStatus, Usage};
use crate::process::{self, CommandSpec, Ending};
use crate::sandbox::{self, Reach, Sandbox};

/// Flags every fixing command passes: fix whatever the worktree's state.
const FIX: [&str; 4] = ["--fix", "--allow-dirty", "--allow-staged", "--allow-no-vcs"];

/// (id, description, command line). Which one pays depends on the
/// workspace: rustc lints want `cargo fix`, clippy lints in the library
/// `clippy --fix`, warnings in test code `--all-targets`; a lint group alone
/// (style, complexity, perf) fixes less but cannot break what the other
/// groups' fixes would.
const CAPABILITIES: [(&str, &str, &[&str]); 8] = [
    (
        "cargo-fix",
        "apply the compiler's suggested fixes to every target (cargo fix)",
        &[
            "cargo",
            "fix",
            "--allow-dirty",
            "--allow-staged",
            "--allow-no-vcs",
            "--all-targets",
        ],
    ),
    (
        "clippy-fix",
        "apply clippy's machine-applicable fixes to the library (cargo clippy --fix --lib)",
        &["cargo", "clippy", FIX[0], FIX[1], FIX[2], FIX[3], "--lib"],
    ),
    (
        "clippy-fix-all-targets",
        "apply clippy's fixes to every target, tests included",
        &[
            "cargo",
            "clippy",
            FIX[0],
            FIX[1],
            FIX[2],
            FIX[3],
            "--all-targets",
        ],
    ),
    (
        "clippy-fix-style",
        "apply only clippy's style-group fixes (and rustc's), every target",
        &[
            "cargo",
            "clippy",
            FIX[0],
            FIX[1],
            FIX[2],
            FIX[3],
            "--all-targets",
            "--",
            "-A",
            "clippy::all",
            "-W",
            "clippy::style",
        ],
    ),
    (
        "clippy-fix-complexity",
        "apply only clippy's complexity-group fixes (and rustc's), every target",
        &[
            "cargo",
            "clippy",
            FIX[0],
            FIX[1],
            FIX[2],
            FIX[3],
            "--all-targets",
            "--",
            "-A",
            "clippy::all",
            "-W",
            "clippy::complexity",
        ],
    ),
    (
        "clippy-fix-perf",
        "apply only clippy's perf-group fixes (and rustc's), every target",
        &[
            "cargo",
            "clippy",
            FIX[0],
            FIX[1],
            FIX[2],
            FIX[3],
            "--all-targets",
            "--",
            "-A",
            "clippy::all",
            "-W",
            "clippy::perf",
        ],
    ),
    (
        "cargo-fix-edition-idioms",
        "apply the fixes of the edition's idiom lints (cargo fix --edition-idioms)",
        &[
            "cargo",
            "fix",
            "--edition-idioms",
            "--allow-dirty",
            "--allow-staged",
            "--allow-no-vcs",
            "--all-targets",
        ],
    ),
    (
        "fmt",
        "format the code (cargo fmt); pays only where formatting is what is wrong",
        &["cargo", "fmt", "--all"],
    ),
];

/// The offline backend.
#[derive(Debug, Clone)]
pub struct Offline {
    /// Confines every capability's command when there is one.
    pub sandbox: Option<Sandbox>,
}

#[async_trait]
impl Cognition for Offline {
    fn name(&self) -> &'static str {
        "offline"
    }

    fn capabilities(&self) -> Vec<Capability> {
        CAPABILITIES
            .iter()
            .map(|(id, description, _)| Capability {
                id: (*id).to_string(),
                description: (*description).to_string(),
            })
            .collect()
    }

    async fn run(&self, job: Job, started: super::StartHook) -> JobOutcome {
        let failed = |error: String| JobOutcome {
            job_id: job.id,
            status: JobStatus::Failed,
            output: String::new(),
            error: Some(error),
            usage: Usage::default(),
            claude: Default::default(),
        };
        let Some((_, _, argv)) = CAPABILITIES.iter().find(|(id, _, _)| *id == job.capability)
        else {
            return failed(format!(
                "the offline backend has no capability `{}`",
                job.capability
            ));
        };
        let spec = CommandSpec {
            program: argv[0].into(),
            args: argv[1..].iter().map(|a| (*a).to_string()).collect(),
            cwd: job.cwd.clone(),
            env: Vec::new(),
            timeout: job.timeout,
        };
        let confined = sandbox::confine(self.sandbox.as_ref(), spec.clone(), Reach::Check);
        let running = match process::start(&confined) {
            Ok(running) => running,
            Err(error) => return failed(error.to_string()),
        };
        if let Some(group) = running.process_group() {
            started.started(super::Started::Process(group)).await;
        }
        let finished = running.wait_or_cancel(job.cancel.cancelled()).await;
        let (status, error) = match finished.ending {
            Ending::Exited(Some(0)) => (JobStatus::Completed, None),
            Ending::Exited(code) => (
                JobStatus::Failed,
                Some(format!(
                    "`{}` exited with {}: {}",
                    spec.display(),
                    code.map_or("a signal".to_string(), |c| format!("status {c}")),
                    finished.first_error_line()
                )),
            ),
            Ending::Cancelled => (
                JobStatus::Killed,
                Some(format!("`{}` was killed on request", spec.display())),
            ),
            Ending::TimedOut => (
                JobStatus::Timeout,
                Some(format!(
                    "`{}` did not finish within {}",
                    spec.display(),
                    humantime::format_duration(job.timeout)
                )),
            ),
        };
        JobOutcome {
            job_id: job.id,
            status,
            output: finished.tail(5),
            error,
            usage: Usage::default(),
            claude: Default::default(),
        }
    }
}
