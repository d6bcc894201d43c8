//! The offline backend: no model, capabilities are local cargo commands that
//! improve a Rust workspace, from the broad (`cargo clippy --fix` on every
//! target) to the narrow (one clippy lint group). Which one runs is the
//! planner's choice, made from what the learner learned of the workspace's
//! situation; this module only knows how to run them.

use async_trait::async_trait;

use super::{Cognition, Job};
use crate::domain::{BackendKind, Capability, JobOutcome, JobStatus, Usage};
use crate::process::{self, CommandSpec, Ending};
use crate::sandbox::{self, Reach, Sandbox};

/// How a capability's command line is made.
#[derive(Debug, Clone, Copy)]
enum Line {
    /// `cargo <args>`, with the flags that let a fix run on any worktree.
    CargoFix(&'static [&'static str]),
    /// `cargo clippy --fix` on `targets`; with a lint group, only that
    /// group's fixes (and rustc's), the rest of clippy allowed.
    ClippyFix {
        targets: &'static str,
        group: Option<&'static str>,
    },
    /// `cargo <args>` as written.
    Cargo(&'static [&'static str]),
}

impl Line {
    fn argv(self) -> Vec<String> {
        const ANY_WORKTREE: [&str; 3] = ["--allow-dirty", "--allow-staged", "--allow-no-vcs"];
        let mut argv: Vec<&str> = Vec::new();
        match self {
            Line::CargoFix(args) => {
                argv.extend(["fix"]);
                argv.extend(args);
                argv.extend(ANY_WORKTREE);
                argv.push("--all-targets");
            }
            Line::ClippyFix { targets, group } => {
                argv.extend(["clippy", "--fix"]);
                argv.extend(ANY_WORKTREE);
                argv.push(targets);
                if let Some(group) = group {
                    argv.extend(["--", "-A", "clippy::all", "-W", group]);
                }
            }
            Line::Cargo(args) => argv.extend(args),
        }
        argv.into_iter().map(String::from).collect()
    }
}

/// (id, description, command line). Which one pays depends on the
/// workspace: rustc lints want `cargo fix`, clippy lints in the library
/// `clippy --fix`, warnings in test code `--all-targets`; a lint group alone
/// (style, complexity, perf) fixes less but cannot break what the other
/// groups' fixes would.
const CAPABILITIES: [(&str, &str, Line); 8] = [
    (
        "cargo-fix",
        "apply the compiler's suggested fixes to every target (cargo fix)",
        Line::CargoFix(&[]),
    ),
    (
        "clippy-fix",
        "apply clippy's machine-applicable fixes to the library (cargo clippy --fix --lib)",
        Line::ClippyFix {
            targets: "--lib",
            group: None,
        },
    ),
    (
        "clippy-fix-all-targets",
        "apply clippy's fixes to every target, tests included",
        Line::ClippyFix {
            targets: "--all-targets",
            group: None,
        },
    ),
    (
        "clippy-fix-style",
        "apply only clippy's style-group fixes (and rustc's), every target",
        Line::ClippyFix {
            targets: "--all-targets",
            group: Some("clippy::style"),
        },
    ),
    (
        "clippy-fix-complexity",
        "apply only clippy's complexity-group fixes (and rustc's), every target",
        Line::ClippyFix {
            targets: "--all-targets",
            group: Some("clippy::complexity"),
        },
    ),
    (
        "clippy-fix-perf",
        "apply only clippy's perf-group fixes (and rustc's), every target",
        Line::ClippyFix {
            targets: "--all-targets",
            group: Some("clippy::perf"),
        },
    ),
    (
        "cargo-fix-edition-idioms",
        "apply the fixes of the edition's idiom lints (cargo fix --edition-idioms)",
        Line::CargoFix(&["--edition-idioms"]),
    ),
    (
        "fmt",
        "format the code (cargo fmt); pays only where formatting is what is wrong",
        Line::Cargo(&["fmt", "--all"]),
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
    fn kind(&self) -> BackendKind {
        BackendKind::Offline
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
        let Some((_, _, line)) = CAPABILITIES.iter().find(|(id, _, _)| *id == job.capability)
        else {
            return failed(format!(
                "the offline backend has no capability `{}`",
                job.capability
            ));
        };
        let spec = CommandSpec {
            program: "cargo".into(),
            args: line.argv(),
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
        if let Some(failure) = sandbox::start_failure(self.sandbox.as_ref(), &confined, &finished) {
            return failed(failure.to_string());
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_are_the_cargo_commands_they_name() {
        let line = |id: &str| {
            let (_, _, line) = CAPABILITIES.iter().find(|(c, _, _)| *c == id).unwrap();
            line.argv().join(" ")
        };
        assert_eq!(
            line("cargo-fix"),
            "fix --allow-dirty --allow-staged --allow-no-vcs --all-targets"
        );
        assert_eq!(
            line("clippy-fix"),
            "clippy --fix --allow-dirty --allow-staged --allow-no-vcs --lib"
        );
        assert_eq!(
            line("clippy-fix-perf"),
            "clippy --fix --allow-dirty --allow-staged --allow-no-vcs --all-targets -- -A clippy::all -W clippy::perf"
        );
        assert_eq!(
            line("cargo-fix-edition-idioms"),
            "fix --edition-idioms --allow-dirty --allow-staged --allow-no-vcs --all-targets"
        );
        assert_eq!(line("fmt"), "fmt --all");
    }
}
