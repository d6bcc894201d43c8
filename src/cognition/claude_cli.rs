//! The `claude-cli` backend: runs Claude Code's CLI directly in the worktree
//! through [`crate::claude`], one job per plan. It is what `auto` falls back
//! to when MCP cannot be used, and what `--backend claude-cli` asks for.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;

use super::{Cognition, Job};
use crate::claude::{Cli, ConfigDirs, Invocation};
use crate::domain::{BackendKind, Capability, JobOutcome, PermissionMode};
use crate::sandbox::Sandbox;

/// The single capability of a model backend: one focused change.
pub const CAPABILITY: &str = "claude-edit";

/// Runs Claude Code's CLI directly.
#[derive(Debug, Clone)]
pub struct ClaudeCli {
    cli: Cli,
    permission_mode: PermissionMode,
    model: Option<String>,
    max_turns: Option<u32>,
    max_budget_usd: Option<f64>,
}

impl ClaudeCli {
    pub fn new(
        binary: crate::domain::Program,
        permission_mode: PermissionMode,
        model: Option<String>,
    ) -> Self {
        ClaudeCli {
            cli: Cli::new(binary),
            permission_mode,
            model,
            max_turns: None,
            max_budget_usd: None,
        }
    }

    /// Extra environment for every claude process.
    pub fn with_env(mut self, env: Vec<(String, String)>) -> Self {
        self.cli.env = env;
        self
    }

    /// `--max-turns` and `--max-budget-usd` of every job.
    pub fn with_limits(mut self, max_turns: Option<u32>, max_budget_usd: Option<f64>) -> Self {
        self.max_turns = max_turns;
        self.max_budget_usd = max_budget_usd;
        self
    }

    /// Tools, setting sources, MCP servers and stall clock of every job.
    pub fn with_policy(mut self, policy: crate::claude::Policy) -> Self {
        self.cli.policy = policy;
        self
    }

    /// What every job logs in with (found in the environment by default).
    pub fn with_login(mut self, login: crate::claude::Login) -> Self {
        self.cli.login = login;
        self
    }

    /// Every job in `sandbox` (when there is one) with its own config
    /// directory under `config_dirs`.
    pub fn confined(mut self, sandbox: Option<Sandbox>, config_dirs: ConfigDirs) -> Self {
        self.cli.sandbox = sandbox;
        self.cli.config_dirs = Some(config_dirs);
        self
    }

    fn invocation(
        &self,
        task: &str,
        cwd: &Path,
        permission_mode: PermissionMode,
        timeout: Duration,
        label: &str,
        resume: Option<String>,
    ) -> Invocation {
        Invocation {
            task: task.to_string(),
            cwd: cwd.to_path_buf(),
            permission_mode,
            model: self.model.clone(),
            max_turns: self.max_turns,
            max_budget_usd: self.max_budget_usd,
            append_system_prompt: None,
            resume,
            timeout,
            label: label.to_string(),
        }
    }
}

#[async_trait]
impl Cognition for ClaudeCli {
    fn kind(&self) -> BackendKind {
        BackendKind::ClaudeCli
    }

    fn capabilities(&self) -> Vec<Capability> {
        vec![Capability {
            id: CAPABILITY.into(),
            description: "ask Claude Code for one focused change toward the goal".into(),
        }]
    }

    fn takes_prompts(&self) -> bool {
        true
    }

    async fn run(&self, job: Job, started: super::StartHook) -> JobOutcome {
        let task = job.prompt.clone().unwrap_or_default();
        let invocation = self.invocation(
            &task,
            &job.cwd,
            self.permission_mode,
            job.timeout,
            &format!("job-{}", job.id),
            job.resume.clone(),
        );
        let run = self
            .cli
            .run(
                &invocation,
                |group| Box::pin(started.started(super::Started::Process(group))),
                job.cancel.cancelled(),
                &job.progress,
            )
            .await;
        run.into_outcome(job.id)
    }

    async fn research(
        &self,
        questions: &[String],
        cwd: &Path,
        timeout: Duration,
    ) -> Option<Vec<JobOutcome>> {
        // Research must not edit the worktree: plan mode is read-only.
        let mut answers = Vec::with_capacity(questions.len());
        for question in questions {
            let invocation = self.invocation(
                question,
                cwd,
                PermissionMode::Plan,
                timeout,
                "research",
                None,
            );
            let run = self
                .cli
                .run(
                    &invocation,
                    |_| Box::pin(async {}),
                    std::future::pending(),
                    &Default::default(),
                )
                .await;
            answers.push(run.into_outcome(0));
        }
        Some(answers)
    }
}
