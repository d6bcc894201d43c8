//! Configuration: `config/agent.toml` and `actors.toml`, each parsed into raw
//! structs (shape and value checks, with the span of every bad value) and then
//! into the checked [`Config`] and [`TreeSpec`] the rest of the program uses.
//! Command-line flags are applied on top of the checked config.
//!
//! Each section of `agent.toml` is its own raw type that checks itself into
//! its part of [`Config`] (in the section's file, or below for the sections
//! of a key or two); [`Config::parse`] only composes them. A new key touches
//! its section's raw struct and check, and the field it fills.

pub mod actors;
mod alerts;
mod cognition;
pub mod error;
mod governor;
mod learning;
mod observability;
mod run;
mod safety;
mod sandbox;
mod tool_servers;
mod upgrade;
mod validation;
pub mod values;
mod workers;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::domain::{AbsolutePath, Execution, PermissionMode, Program};

pub use actors::{ChildSpec, DEFAULT_ACTORS_TOML, TreeSpec};
pub use alerts::AlertRules;
pub use cognition::BackendChoice;
pub use error::ConfigError;
pub use observability::OtlpProtocol;
pub use run::Mode;
pub use validation::{FailingBase, Fitness};
use values::{HumanDuration, Positive};

/// The embedded default, identical to the repository's `config/agent.toml`.
pub const DEFAULT_AGENT_TOML: &str = include_str!("../../config/agent.toml");

/// `agent.toml` as written (over the embedded default), one field per section.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    run: run::RawRun,
    cognition: cognition::RawCognition,
    validation: validation::RawValidation,
    governor: governor::RawGovernor,
    researcher: RawResearcher,
    #[serde(default)]
    ctl: RawCtl,
    #[serde(default)]
    telemetry: observability::RawTelemetry,
    #[serde(default)]
    http: observability::RawHttp,
    #[serde(default)]
    alerts: alerts::RawAlerts,
    #[serde(default)]
    safety: safety::RawSafety,
    #[serde(default)]
    sandbox: sandbox::RawSandbox,
    #[serde(default)]
    upgrade: upgrade::RawUpgrade,
    #[serde(default)]
    workers: workers::RawWorkers,
    #[serde(default)]
    limits: alerts::RawLimits,
    #[serde(default)]
    retention: RawRetention,
    #[serde(default)]
    learning: learning::RawLearning,
    #[serde(default)]
    mcp_servers: Vec<tool_servers::RawToolServer>,
    #[serde(default)]
    debug: RawDebug,
}

/// `[researcher]` as written; `cache_ttl` is [`Config::research_ttl`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResearcher {
    cache_ttl: HumanDuration,
}

/// `[ctl]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCtl {
    socket: Option<PathBuf>,
}

impl RawCtl {
    /// The control socket's path, made absolute; `None` is the default in
    /// the state directory ([`Config::socket_path`]).
    fn check(self, file: &Path) -> Result<Option<AbsolutePath>, ConfigError> {
        self.socket
            .map(|socket| absolute(file, "[ctl] socket", &socket))
            .transpose()
    }
}

/// `[retention]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    iterations: Option<Positive>,
    audit_entries: Option<Positive>,
}

impl From<RawRetention> for crate::store::Retention {
    fn from(raw: RawRetention) -> Self {
        let default = Self::default();
        Self {
            iterations: raw.iterations.map_or(default.iterations, Positive::get),
            audit_entries: raw
                .audit_entries
                .map_or(default.audit_entries, Positive::get),
        }
    }
}

/// `[debug]` as written; `fault_injection` is [`Config::fault_injection`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDebug {
    #[serde(default)]
    fault_injection: bool,
}

/// The checked configuration of one agent instance.
#[derive(Debug, Clone)]
pub struct Config {
    pub goal: String,
    /// Absolute, like every path here (see [`AbsolutePath`]).
    pub workspace: AbsolutePath,
    pub state_dir: AbsolutePath,
    pub max_iterations: Option<u64>,
    /// A pause the run makes by itself ends the process (checkpointed, exit
    /// status 4) instead of waiting for `agent ctl resume`.
    pub exit_on_pause: bool,
    pub mode: Mode,
    pub shutdown_timeout: Duration,
    /// Abandoned attempts in a row back off from `retry_initial`, doubling,
    /// up to `retry_max`.
    pub retry_initial: Duration,
    pub retry_max: Duration,
    /// After this many abandoned attempts in a row the run pauses.
    pub pause_after_failures: u32,
    /// After this many committed iterations without a fitness improvement
    /// an iteration may start from the best refused variant; 0 is never.
    pub start_from_variant_after: u64,
    /// What loop detection pauses the run on.
    pub loops: crate::domain::LoopRules,
    /// Candidate changes each iteration runs at once (`[run] candidates`).
    pub candidates: u32,
    /// Candidates' checks (validation, fitness) that run at once.
    pub max_parallel_checks: usize,
    /// How long a candidate still running is waited for once the first
    /// candidate of its iteration is judged.
    pub candidate_deadline: Duration,
    /// How much history the store keeps (`[retention]`).
    pub retention: crate::store::Retention,
    /// How capabilities are chosen and what the planner is told (`[learning]`).
    pub learning: crate::learning::Settings,
    /// MCP servers whose tools are discovered at start (`[[mcp_servers]]`).
    pub mcp_servers: Vec<crate::domain::ToolServer>,
    pub backend: BackendChoice,
    pub claude_bin: Program,
    pub permission_mode: PermissionMode,
    pub model: Option<String>,
    pub job_timeout: Duration,
    pub execution: Execution,
    /// The MCP server to start; `None` means this binary's `mcp-serve`.
    pub mcp_command: Option<Vec<String>>,
    pub mcp_call_timeout: Duration,
    pub mcp_max_concurrent: usize,
    /// The prompt templates (`config/prompts/<name>.md`) a model backend
    /// offers as capabilities.
    pub prompts: Vec<String>,
    /// Shell command that must succeed for a change to be kept.
    pub validation_command: String,
    pub fitness: Fitness,
    pub validation_timeout: Duration,
    pub failing_base: FailingBase,
    /// The budgets a permit is checked against.
    pub budgets: crate::domain::Budgets,
    pub permit_retry_after: Duration,
    /// How long a change waits for an operator in supervised mode.
    pub approval_timeout: Duration,
    pub research_ttl: Duration,
    pub socket: Option<AbsolutePath>,
    pub fault_injection: bool,
    /// OTLP trace export; `None` keeps traces in the logs only.
    pub otlp_endpoint: Option<String>,
    pub otlp_protocol: OtlpProtocol,
    pub service_name: String,
    /// Address of the HTTP listener (metrics, health); `None` is off.
    pub http_listen: Option<std::net::SocketAddr>,
    /// The dashboard only shows: approve and reject are hidden and refused.
    pub dashboard_read_only: bool,
    /// A Jaeger UI the dashboard links each iteration's trace to.
    pub jaeger_url: Option<String>,
    pub alerts: AlertRules,
    /// The safety rules every change passes before any build runs.
    pub safety: crate::safety::Rules,
    /// Also protected when the workspace is this agent's own source.
    pub own_source_protected: Vec<String>,
    /// Where jobs and checks run confined.
    pub sandbox: crate::sandbox::SandboxConfig,
    /// `[upgrade]`: whether `agent run` is the keeper of its releases.
    pub upgrade: crate::upgrade::UpgradeConfig,
    /// `[workers]`: jobs run by `agent worker` processes through NATS.
    pub workers: crate::workers::WorkersConfig,
    /// `--max-turns` of every Claude Code job.
    pub max_turns: Option<u32>,
    /// `--max-budget-usd` of every Claude Code job.
    pub max_budget_usd: Option<f64>,
    /// Tools, setting sources, MCP servers and the stall clock of every
    /// Claude Code job.
    pub claude_policy: crate::claude::Policy,
    /// Resumed sessions a refused change gets before it is thrown away.
    pub repair_turns: u32,
}

impl Config {
    /// Parses and checks `agent.toml` text; `file` is used in messages only.
    pub fn parse(file: &Path, text: &str) -> Result<Config, ConfigError> {
        let merged = with_defaults(file, text)?;
        let raw: RawConfig = toml::from_str(&merged)
            .map_err(|error| ConfigError::from_merged(file, text, &merged, &error))?;
        raw.check(file)
    }

    /// Reads and checks a file.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let text = read_config_file(file)?;
        Self::parse(file, &text)
    }

    /// Whether `agent ctl fault` is accepted.
    pub fn faults_allowed(&self) -> bool {
        self.mode == Mode::Debug || self.fault_injection
    }

    /// The control socket path.
    pub fn socket_path(&self) -> PathBuf {
        self.socket
            .as_deref()
            .map_or_else(|| self.state_dir.join("agent.sock"), Path::to_path_buf)
    }
}

impl RawConfig {
    /// Checks every section and lays the results out as the flat [`Config`].
    /// Sections are checked in the order the default file and
    /// docs/configuration.md list them, so of several refusals the one
    /// reported is in the topmost section. `[limits]` is checked with
    /// `[alerts]`, and the governor is handed the job bound of `[cognition]`
    /// that its dollar budget depends on.
    fn check(self, file: &Path) -> Result<Config, ConfigError> {
        let run = self.run.check(file)?;
        let cognition = self.cognition.check(file)?;
        let validation = self.validation.check(file)?;
        let governor = self.governor.check(file, cognition.max_budget_usd)?;
        let socket = self.ctl.check(file)?;
        let telemetry = observability::TelemetryConfig::from(self.telemetry);
        let http = self.http.check(file)?;
        let alerts = self.alerts.check(file, self.limits)?;
        let learning = self.learning.check(file)?;
        let mcp_servers = self
            .mcp_servers
            .into_iter()
            .map(|server| server.check(file))
            .collect::<Result<Vec<_>, _>>()?;
        let safety = safety::SafetyConfig::from(self.safety);
        let sandbox = self.sandbox.check(file)?;
        Ok(Config {
            goal: run.goal,
            workspace: run.workspace,
            state_dir: run.state_dir,
            max_iterations: run.max_iterations,
            exit_on_pause: run.exit_on_pause,
            mode: run.mode,
            shutdown_timeout: run.shutdown_timeout,
            retry_initial: run.retry_initial,
            retry_max: run.retry_max,
            pause_after_failures: run.pause_after_failures,
            start_from_variant_after: run.start_from_variant_after,
            loops: run.loops,
            candidates: run.candidates,
            max_parallel_checks: run.max_parallel_checks,
            candidate_deadline: run.candidate_deadline,
            retention: self.retention.into(),
            learning,
            mcp_servers,
            backend: cognition.backend,
            claude_bin: cognition.claude_bin,
            permission_mode: cognition.permission_mode,
            model: cognition.model,
            job_timeout: cognition.job_timeout,
            execution: cognition.execution,
            mcp_command: cognition.mcp_command,
            mcp_call_timeout: cognition.mcp_call_timeout,
            mcp_max_concurrent: cognition.mcp_max_concurrent,
            prompts: cognition.prompts,
            validation_command: validation.command,
            fitness: validation.fitness,
            validation_timeout: validation.timeout,
            failing_base: validation.failing_base,
            budgets: governor.budgets,
            permit_retry_after: governor.permit_retry_after,
            approval_timeout: governor.approval_timeout,
            research_ttl: self.researcher.cache_ttl.0,
            socket,
            fault_injection: self.debug.fault_injection,
            otlp_endpoint: telemetry.otlp_endpoint,
            otlp_protocol: telemetry.otlp_protocol,
            service_name: telemetry.service_name,
            http_listen: http.listen,
            dashboard_read_only: http.read_only,
            jaeger_url: http.jaeger_url,
            alerts,
            safety: safety.rules,
            own_source_protected: safety.own_source_protected,
            sandbox,
            upgrade: self.upgrade.check(file)?,
            workers: self.workers.check(file)?,
            max_turns: cognition.max_turns,
            max_budget_usd: cognition.max_budget_usd,
            claude_policy: cognition.policy,
            repair_turns: cognition.repair_turns,
        })
    }
}

/// `path` (the value of `key`) made absolute against the directory the
/// agent was started in: the one place a relative path is read.
pub(super) fn absolute(file: &Path, key: &str, path: &Path) -> Result<AbsolutePath, ConfigError> {
    AbsolutePath::resolve(path).map_err(|error| {
        ConfigError::whole_file(file, format!("{key} \"{}\": {error}", path.display()))
    })
}

/// A program's name (looked up on `PATH`) or its path, made absolute.
fn program(file: &Path, key: &str, program: &Path) -> Result<Program, ConfigError> {
    Program::resolve(program).map_err(|error| {
        ConfigError::whole_file(file, format!("{key} \"{}\": {error}", program.display()))
    })
}

/// A command line whose program, when given as a path, is made absolute.
fn command_line(
    file: &Path,
    key: &str,
    mut command: Vec<String>,
) -> Result<Vec<String>, ConfigError> {
    if let Some(first) = command.first_mut() {
        let resolved = program(file, key, Path::new(first.as_str()))?;
        *first = resolved.display().to_string();
    }
    Ok(command)
}

/// Flags of `agent run` that override the configuration.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub goal: Option<String>,
    pub replace_goal: bool,
    /// Rebuild iterations the store lost from the agent branch.
    pub recover_from_git: bool,
    /// The revision a new run's branch starts from (default: HEAD).
    pub base: Option<String>,
    pub workspace: Option<PathBuf>,
    pub state: Option<PathBuf>,
    pub backend: Option<BackendChoice>,
    pub claude_bin: Option<PathBuf>,
    pub mode: Option<Mode>,
    pub max_iterations: Option<u64>,
    pub exit_on_pause: bool,
}

impl Config {
    /// Applies the command line's flags on top of the checked file, their
    /// paths made absolute as the file's are. The goal is not applied here:
    /// whether `--goal` may replace a stored run's goal is decided against
    /// the store (`daemon`).
    pub fn apply(&mut self, overrides: &Overrides) -> Result<(), String> {
        let flag = |name: &str, path: &Path, error: std::io::Error| {
            format!("{name} \"{}\": {error}", path.display())
        };
        if let Some(workspace) = &overrides.workspace {
            self.workspace =
                AbsolutePath::resolve(workspace).map_err(|e| flag("--workspace", workspace, e))?;
        }
        if let Some(state) = &overrides.state {
            self.state_dir = AbsolutePath::resolve(state).map_err(|e| flag("--state", state, e))?;
        }
        if let Some(backend) = overrides.backend {
            self.backend = backend;
        }
        if let Some(bin) = &overrides.claude_bin {
            self.claude_bin = Program::resolve(bin).map_err(|e| flag("--claude-bin", bin, e))?;
        }
        if let Some(mode) = overrides.mode {
            self.mode = mode;
        }
        if let Some(max) = overrides.max_iterations {
            self.max_iterations = Some(max);
        }
        self.exit_on_pause |= overrides.exit_on_pause;
        Ok(())
    }
}

/// The user's file over the embedded default, as TOML text: a file holds
/// only what it changes. Its syntax is checked on its own text (so errors
/// point into it); `max_iterations` absent means no limit, so it is never
/// taken from the default.
fn with_defaults(file: &Path, text: &str) -> Result<String, ConfigError> {
    let user: toml::Table =
        toml::from_str(text).map_err(|error| ConfigError::from_toml(file, text, &error))?;
    let mut merged: toml::Table = toml::from_str(DEFAULT_AGENT_TOML).map_err(|error| {
        ConfigError::whole_file(file, format!("the embedded default is invalid: {error}"))
    })?;
    if let Some(toml::Value::Table(run)) = merged.get_mut("run") {
        run.remove("max_iterations");
    }
    merge(&mut merged, user);
    Ok(merged.to_string())
}

/// Puts `over` on top of `base`: tables merge key by key, values replace.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(base)), toml::Value::Table(over)) => merge(base, over),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// Reads a config file, turning I/O failures into an error naming the file.
pub(crate) fn read_config_file(file: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(file).map_err(|error| {
        let why = match error.kind() {
            std::io::ErrorKind::NotFound => "file not found".to_string(),
            _ => format!("cannot read the file: {error}"),
        };
        ConfigError::whole_file(file, why)
    })
}

/// Which file to read: the one given, else the conventional path when it
/// exists, else the embedded default (so a bare `agent run` works anywhere).
pub enum Source {
    File(PathBuf),
    Embedded(&'static str, &'static str),
}

impl Source {
    pub fn pick(
        given: Option<&Path>,
        conventional: &'static str,
        embedded: &'static str,
    ) -> Source {
        match given {
            Some(path) => Source::File(path.to_path_buf()),
            None if Path::new(conventional).is_file() => Source::File(conventional.into()),
            None => Source::Embedded(conventional, embedded),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Source::File(path) => path.display().to_string(),
            Source::Embedded(name, _) => format!("embedded default {name}"),
        }
    }
}

/// Loads both files (from the given paths, the conventional ones, or the
/// embedded defaults).
pub fn load_all(
    config: Option<&Path>,
    actors: Option<&Path>,
) -> Result<(Config, TreeSpec), ConfigError> {
    let config = match Source::pick(config, "config/agent.toml", DEFAULT_AGENT_TOML) {
        Source::File(path) => Config::load(&path)?,
        Source::Embedded(name, text) => Config::parse(Path::new(name), text)?,
    };
    let tree = match Source::pick(actors, "actors.toml", DEFAULT_ACTORS_TOML) {
        Source::File(path) => TreeSpec::load(&path)?,
        Source::Embedded(name, text) => TreeSpec::parse(Path::new(name), text)?,
    };
    Ok((config, tree))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid() {
        let config = Config::parse(Path::new("agent.toml"), DEFAULT_AGENT_TOML).unwrap();
        assert_eq!(config.backend, BackendChoice::Auto);
        assert_eq!(config.fitness, Fitness::CargoWarnings);
    }

    fn error_of(text: &str) -> String {
        Config::parse(Path::new("agent.toml"), text)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn bad_values_are_located() {
        let bad = DEFAULT_AGENT_TOML.replace("job_timeout = \"10m\"", "job_timeout = \"soon\"");
        let message = error_of(&bad);
        assert!(message.starts_with("agent.toml:"), "{message}");
        assert!(message.contains("found \"soon\""), "{message}");
    }

    /// The invariant of docs/ARCHITECTURE.md: every path the configuration
    /// hands down is absolute, read against the directory the agent started
    /// in, from the file and from the command line alike.
    #[test]
    fn every_path_is_made_absolute_where_the_configuration_is_checked() {
        let here = std::env::current_dir().unwrap();
        let text = DEFAULT_AGENT_TOML
            .replace(
                "writable = []",
                "writable = [\"cache\", \"../shared/./cache\"]",
            )
            .replace(
                "claude_bin = \"claude\"",
                "claude_bin = \"tests/bin/claude\"",
            )
            .replace("program = \"bwrap\"", "program = \"tools/bwrap\"");
        let mut config = Config::parse(Path::new("agent.toml"), &text).unwrap();
        assert_eq!(config.workspace.as_path(), here.join("examples/tidy-stats"));
        assert_eq!(config.state_dir.as_path(), here.join("state"));
        assert_eq!(config.socket_path(), here.join("state/agent.sock"));
        assert_eq!(config.claude_bin.as_path(), here.join("tests/bin/claude"));
        assert_eq!(config.sandbox.program.as_path(), here.join("tools/bwrap"));
        let parent = here.parent().unwrap();
        assert_eq!(
            config.sandbox.writable,
            [
                AbsolutePath::given(here.join("cache")).unwrap(),
                AbsolutePath::given(parent.join("shared/cache")).unwrap()
            ]
        );
        config
            .apply(&Overrides {
                workspace: Some("crate".into()),
                state: Some("runs/one".into()),
                claude_bin: Some("claude".into()),
                ..Overrides::default()
            })
            .unwrap();
        assert_eq!(config.workspace.as_path(), here.join("crate"));
        assert_eq!(config.state_dir.as_path(), here.join("runs/one"));
        // A bare name is looked up on PATH, wherever the command runs.
        assert_eq!(config.claude_bin.as_path(), Path::new("claude"));
    }

    #[test]
    fn an_empty_path_is_refused_with_its_key() {
        let message = error_of(&DEFAULT_AGENT_TOML.replace("state = \"state\"", "state = \"\""));
        assert!(
            message.contains("[run] state \"\": the path is empty"),
            "{message}"
        );
    }
}
