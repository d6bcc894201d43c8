//! The offline backend: no model, capabilities are local cargo commands that
//! improve a Rust workspace. Which one runs is the planner's choice, made
//! from the learner's statistics; this module only knows how to run them.

use async_trait::async_trait;

use super::{Cognition, Job};
use crate::domain::{Capability, JobOutcome, JobStatus, Usage};
use crate::process::{self, CommandSpec, Ending};
use crate::sandbox::{self, Reach, Sandbox};

/// (id, description, command line)
const CAPABILITIES: [(&str, &str, &[&str]); 4] = [
    (
        "cargo-fix",
        "apply the compiler's suggested fixes (cargo fix)",
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
        "apply clippy's machine-applicable fixes to the library (cargo clippy --fix)",
        &[
            "cargo",
            "clippy",
            "--fix",
            "--allow-dirty",
            "--allow-staged",
            "--allow-no-vcs",
            "--lib",
        ],
    ),
    (
        "clippy-fix-all-targets",
        "apply clippy's fixes to every target, tests included",
        &[
            "cargo",
            "clippy",
            "--fix",
            "--allow-dirty",
            "--allow-staged",
            "--allow-no-vcs",
            "--all-targets",
        ],
    ),
    (
        "fmt",
        "format the code (cargo fmt)",
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
