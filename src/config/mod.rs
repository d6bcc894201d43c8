//! Configuration: `config/agent.toml` and `actors.toml`, each parsed into raw
//! structs (shape and value checks, with the span of every bad value) and then
//! into the checked [`Config`] and [`TreeSpec`] the rest of the program uses.
//! Command-line flags are applied on top of the checked config.

pub mod actors;
pub mod error;
pub mod values;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::domain::{AbsolutePath, Execution, Program};

pub use actors::{ChildSpec, DEFAULT_ACTORS_TOML, TreeSpec};
pub use error::ConfigError;
use values::{HumanDuration, Positive};

/// The embedded default, identical to the repository's `config/agent.toml`.
pub const DEFAULT_AGENT_TOML: &str = include_str!("../../config/agent.toml");

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

/// Which cognition backend executes plans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum BackendChoice {
    /// Claude Code when it is installed and usable, else offline.
    Auto,
    /// Local cargo commands, no model.
    Offline,
    /// `claude -p` run directly.
    ClaudeCli,
    /// Claude Code reached over MCP.
    Mcp,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    run: RawRun,
    cognition: RawCognition,
    validation: RawValidation,
    governor: RawGovernor,
    researcher: RawResearcher,
    #[serde(default)]
    ctl: RawCtl,
    #[serde(default)]
    telemetry: RawTelemetry,
    #[serde(default)]
    http: RawHttp,
    #[serde(default)]
    alerts: RawAlerts,
    #[serde(default)]
    safety: RawSafety,
    #[serde(default)]
    sandbox: RawSandbox,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    retention: RawRetention,
    #[serde(default)]
    learning: RawLearning,
    #[serde(default)]
    mcp_servers: Vec<RawToolServer>,
    #[serde(default)]
    debug: RawDebug,
}

/// One `[[mcp_servers]]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToolServer {
    name: String,
    command: Vec<String>,
    #[serde(default)]
    probes: toml::Table,
    timeout: Option<HumanDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLearning {
    enabled: Option<bool>,
    seed: Option<u64>,
    exploration: Option<f64>,
    relevant: Option<Positive>,
    context_tokens: Option<Positive>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    iterations: Option<Positive>,
    audit_entries: Option<Positive>,
}

/// `[sandbox] enabled` as written.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawEnabled {
    Auto,
    On,
    Off,
}

impl From<RawEnabled> for crate::sandbox::Enabled {
    fn from(raw: RawEnabled) -> Self {
        match raw {
            RawEnabled::Auto => Self::Auto,
            RawEnabled::On => Self::On,
            RawEnabled::Off => Self::Off,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSandbox {
    enabled: Option<RawEnabled>,
    program: Option<PathBuf>,
    job_network: Option<bool>,
    check_network: Option<bool>,
    #[serde(default)]
    writable: Vec<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRun {
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
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCognition {
    backend: BackendChoice,
    claude_bin: PathBuf,
    permission_mode: String,
    model: Option<String>,
    job_timeout: HumanDuration,
    execution: RawExecution,
    mcp_command: Option<Vec<String>>,
    mcp_call_timeout: HumanDuration,
    mcp_max_concurrent: Positive,
    max_turns: Option<Positive>,
    max_budget_usd: Option<f64>,
    prompts: Vec<String>,
}

/// `[cognition] execution` as written; checked into [`Execution`].
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RawExecution {
    Sync,
    Async,
}

impl From<RawExecution> for Execution {
    fn from(raw: RawExecution) -> Execution {
        match raw {
            RawExecution::Sync => Execution::Sync,
            RawExecution::Async => Execution::Async,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawValidation {
    command: Option<String>,
    fitness: Option<String>,
    timeout: HumanDuration,
    failing_base: Option<FailingBase>,
}

/// What a run does when validation already fails on its base, before any
/// change (`[validation] failing_base`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailingBase {
    /// Pause with the error line until an operator fixes it and resumes.
    Pause,
    /// Go on: the goal is to make validation pass (changes are still kept
    /// only when validation passes).
    Proceed,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGovernor {
    tokens_per_day: Positive,
    usd_per_day: Option<f64>,
    iterations_per_hour: Option<Positive>,
    deadline: Option<HumanDuration>,
    day_window: Option<HumanDuration>,
    hour_window: Option<HumanDuration>,
    retry_after: HumanDuration,
    approval_timeout: HumanDuration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResearcher {
    cache_ttl: HumanDuration,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCtl {
    socket: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTelemetry {
    otlp_endpoint: Option<String>,
    otlp_protocol: Option<OtlpProtocol>,
    service_name: Option<String>,
}

/// How traces reach the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OtlpProtocol {
    /// OTLP over gRPC (port 4317 by convention).
    Grpc,
    /// OTLP over HTTP with protobuf bodies (port 4318, path /v1/traces).
    HttpProtobuf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    listen: Option<String>,
    read_only: Option<bool>,
    jaeger_url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSafety {
    #[serde(default)]
    protected_paths: Vec<String>,
    #[serde(default)]
    own_source_protected: Vec<String>,
    #[serde(default)]
    allowed_paths: Vec<String>,
    max_files: Option<Positive>,
    max_changed_lines: Option<Positive>,
    #[serde(default)]
    process_spawn_allowed: Vec<String>,
    #[serde(default)]
    protected_fns: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlerts {
    webhook: Option<String>,
    webhook_timeout: Option<HumanDuration>,
    budget_warn_fraction: Option<f64>,
    restart_limit: Option<Positive>,
    restart_window: Option<HumanDuration>,
    no_progress_iterations: Option<Positive>,
    max_rss_mb: Option<Positive>,
    max_cpu_percent: Option<Positive>,
    min_free_disk_mb: Option<Positive>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_rss_mb: Option<Positive>,
    min_free_disk_mb: Option<Positive>,
    check_every: Option<HumanDuration>,
}

/// Alert rules (`[alerts]`); each fires once when its condition starts to hold.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRules {
    pub webhook: Option<String>,
    pub webhook_timeout: Duration,
    /// Share of the daily token budget spent that raises `budget`.
    pub budget_warn_fraction: f64,
    /// More restarts than this within `restart_window` raise `restarts`.
    pub restart_limit: u64,
    pub restart_window: Duration,
    /// This many committed iterations in a row without an accepted change raise `no_progress`.
    pub no_progress_iterations: u64,
    /// What the agent and its jobs use of the machine, soft and hard.
    pub resources: crate::resources::Limits,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDebug {
    #[serde(default)]
    fault_injection: bool,
}

/// How the fitness of the workspace is measured.
#[derive(Debug, Clone, PartialEq)]
pub enum Fitness {
    /// Count of distinct compiler and clippy warnings (`cargo clippy --all-targets`).
    CargoWarnings,
    /// A shell command that prints a number; lower is better.
    Command(String),
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
    /// How much history the store keeps (`[retention]`).
    pub retention: crate::store::Retention,
    /// How capabilities are chosen and what the planner is told (`[learning]`).
    pub learning: crate::learning::Settings,
    /// MCP servers whose tools are discovered at start (`[[mcp_servers]]`).
    pub mcp_servers: Vec<crate::domain::ToolServer>,
    pub backend: BackendChoice,
    pub claude_bin: Program,
    pub permission_mode: String,
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
    /// `--max-turns` of every Claude Code job.
    pub max_turns: Option<u32>,
    /// `--max-budget-usd` of every Claude Code job.
    pub max_budget_usd: Option<f64>,
}

/// The permission modes Claude Code's `--permission-mode` accepts.
pub const PERMISSION_MODES: [&str; 5] = [
    "default",
    "acceptEdits",
    "plan",
    "bypassPermissions",
    "dontAsk",
];

impl Config {
    /// Parses and checks `agent.toml` text; `file` is used in messages only.
    pub fn parse(file: &Path, text: &str) -> Result<Config, ConfigError> {
        let merged = with_defaults(file, text)?;
        let raw: RawConfig = toml::from_str(&merged)
            .map_err(|error| ConfigError::from_merged(file, text, &merged, &error))?;
        if raw.run.goal.trim().is_empty() {
            return Err(ConfigError::whole_file(
                file,
                "[run] goal must be a non-empty sentence",
            ));
        }
        if !PERMISSION_MODES.contains(&raw.cognition.permission_mode.as_str()) {
            return Err(ConfigError::whole_file(
                file,
                format!(
                    "[cognition] permission_mode \"{}\" is not one of: {}",
                    raw.cognition.permission_mode,
                    PERMISSION_MODES.join(", ")
                ),
            ));
        }
        let fitness = match raw.validation.fitness.as_deref().map(str::trim) {
            None | Some("cargo-warnings") => Fitness::CargoWarnings,
            Some("") => {
                return Err(ConfigError::whole_file(
                    file,
                    "[validation] fitness must be \"cargo-warnings\" or a command that prints a number",
                ));
            }
            Some(command) => Fitness::Command(command.to_string()),
        };
        if raw
            .cognition
            .mcp_command
            .as_ref()
            .is_some_and(|c| c.is_empty() || c[0].trim().is_empty())
        {
            return Err(ConfigError::whole_file(
                file,
                "[cognition] mcp_command must name a program, e.g. [\"agent\", \"mcp-serve\"]",
            ));
        }
        let http_listen = match raw.http.listen.as_deref() {
            None => None,
            Some(text) => Some(text.parse().map_err(|_| {
                ConfigError::whole_file(
                    file,
                    format!("[http] listen \"{text}\" is not an address like \"127.0.0.1:9464\""),
                )
            })?),
        };
        let max_budget_usd = raw.cognition.max_budget_usd;
        if let Some(usd) = raw.governor.usd_per_day {
            if !(usd > 0.0 && usd.is_finite()) {
                return Err(ConfigError::whole_file(
                    file,
                    "[governor] usd_per_day must be a positive number of dollars, e.g. 20.0",
                ));
            }
            if max_budget_usd.is_none() {
                return Err(ConfigError::whole_file(
                    file,
                    "[governor] usd_per_day needs [cognition] max_budget_usd: a job's worst case must be bounded before it starts",
                ));
            }
        }
        if max_budget_usd.is_some_and(|usd| !(usd > 0.0 && usd.is_finite())) {
            return Err(ConfigError::whole_file(
                file,
                "[cognition] max_budget_usd must be a positive number of dollars, e.g. 2.5",
            ));
        }
        let learning = {
            let default = crate::learning::Settings::default();
            let exploration = raw.learning.exploration.unwrap_or(default.exploration);
            if !(exploration >= 0.0 && exploration.is_finite()) {
                return Err(ConfigError::whole_file(
                    file,
                    format!(
                        "[learning] exploration must be a number of 0 or more, e.g. 0.5, found {exploration}"
                    ),
                ));
            }
            crate::learning::Settings {
                enabled: raw.learning.enabled.unwrap_or(default.enabled),
                seed: raw.learning.seed.unwrap_or(default.seed),
                exploration,
                relevant: raw
                    .learning
                    .relevant
                    .map_or(default.relevant, |n| n.get() as usize),
                context_tokens: raw
                    .learning
                    .context_tokens
                    .map_or(default.context_tokens, |n| n.get() as usize),
            }
        };
        let mut mcp_servers = Vec::new();
        for server in &raw.mcp_servers {
            if server.command.is_empty() || server.name.trim().is_empty() {
                return Err(ConfigError::whole_file(
                    file,
                    format!(
                        "[[mcp_servers]] \"{}\" needs a name and a command (program and arguments), e.g. command = [\"mcp-server-time\"]",
                        server.name
                    ),
                ));
            }
            let mut probes = std::collections::BTreeMap::new();
            for (tool, arguments) in &server.probes {
                if !arguments.is_table() {
                    return Err(ConfigError::whole_file(
                        file,
                        format!(
                            "[[mcp_servers]] \"{}\": probes.{tool} must be a table of the call's arguments, e.g. {{ timezone = \"UTC\" }}",
                            server.name
                        ),
                    ));
                }
                let json = serde_json::to_string(arguments).map_err(|e| {
                    ConfigError::whole_file(file, format!("[[mcp_servers]] probes.{tool}: {e}"))
                })?;
                probes.insert(tool.clone(), json);
            }
            mcp_servers.push(crate::domain::ToolServer {
                name: server.name.clone(),
                command: command_line(
                    file,
                    &format!("[[mcp_servers]] \"{}\" command", server.name),
                    server.command.clone(),
                )?,
                probes,
                timeout: server
                    .timeout
                    .as_ref()
                    .map_or(Duration::from_secs(30), |d| d.0),
            });
        }
        let fraction = raw.alerts.budget_warn_fraction.unwrap_or(0.8);
        if !(fraction > 0.0 && fraction <= 1.0) {
            return Err(ConfigError::whole_file(
                file,
                format!(
                    "[alerts] budget_warn_fraction must be above 0 and at most 1, found {fraction}"
                ),
            ));
        }
        if let Some(url) = &raw.alerts.webhook
            && !url.starts_with("http://")
        {
            return Err(ConfigError::whole_file(
                file,
                format!("[alerts] webhook \"{url}\" must be an http:// URL"),
            ));
        }
        let alerts = AlertRules {
            webhook: raw.alerts.webhook,
            webhook_timeout: raw
                .alerts
                .webhook_timeout
                .map_or(Duration::from_secs(5), |d| d.0),
            budget_warn_fraction: fraction,
            restart_limit: raw.alerts.restart_limit.map_or(3, Positive::get),
            restart_window: raw
                .alerts
                .restart_window
                .map_or(Duration::from_secs(300), |d| d.0),
            no_progress_iterations: raw.alerts.no_progress_iterations.map_or(5, Positive::get),
            resources: crate::resources::Limits {
                soft_rss_bytes: raw.alerts.max_rss_mb.map_or(4096, Positive::get) * 1024 * 1024,
                hard_rss_bytes: raw.limits.max_rss_mb.map(|mb| mb.get() * 1024 * 1024),
                soft_cpu_percent: raw.alerts.max_cpu_percent.map(|p| p.get() as f32),
                soft_free_disk_bytes: raw.alerts.min_free_disk_mb.map(|mb| mb.get() * 1024 * 1024),
                hard_free_disk_bytes: raw.limits.min_free_disk_mb.map(|mb| mb.get() * 1024 * 1024),
                every: raw
                    .limits
                    .check_every
                    .map_or(Duration::from_secs(10), |d| d.0),
            },
        };
        Ok(Config {
            goal: raw.run.goal,
            workspace: absolute(file, "[run] workspace", &raw.run.workspace)?,
            state_dir: absolute(file, "[run] state", &raw.run.state)?,
            max_iterations: raw.run.max_iterations.map(Positive::get),
            exit_on_pause: raw.run.exit_on_pause.unwrap_or(false),
            mode: raw.run.mode,
            shutdown_timeout: raw.run.shutdown_timeout.0,
            retry_initial: raw
                .run
                .retry_initial
                .map_or(Duration::from_secs(1), |d| d.0),
            retry_max: raw.run.retry_max.map_or(Duration::from_secs(300), |d| d.0),
            start_from_variant_after: raw.run.start_from_variant_after.unwrap_or(10),
            loops: crate::domain::LoopRules {
                same_plan: raw.run.loop_same_plan.unwrap_or(8),
                same_refused_change: raw.run.loop_same_refused_change.unwrap_or(3),
                no_progress: raw.run.loop_no_progress.unwrap_or(30),
            },
            retention: {
                let default = crate::store::Retention::default();
                crate::store::Retention {
                    iterations: raw
                        .retention
                        .iterations
                        .map_or(default.iterations, Positive::get),
                    audit_entries: raw
                        .retention
                        .audit_entries
                        .map_or(default.audit_entries, Positive::get),
                }
            },
            learning,
            mcp_servers,
            pause_after_failures: raw
                .run
                .pause_after_failures
                .map_or(5, |n| n.get().min(u64::from(u32::MAX)) as u32),
            backend: raw.cognition.backend,
            claude_bin: program(file, "[cognition] claude_bin", &raw.cognition.claude_bin)?,
            permission_mode: raw.cognition.permission_mode,
            model: raw.cognition.model.filter(|m| !m.is_empty()),
            job_timeout: raw.cognition.job_timeout.0,
            execution: raw.cognition.execution.into(),
            mcp_command: raw
                .cognition
                .mcp_command
                .map(|command| command_line(file, "[cognition] mcp_command", command))
                .transpose()?,
            mcp_call_timeout: raw.cognition.mcp_call_timeout.0,
            mcp_max_concurrent: raw.cognition.mcp_max_concurrent.get() as usize,
            prompts: raw.cognition.prompts,
            validation_command: raw
                .validation
                .command
                .unwrap_or_else(|| "cargo test".to_string()),
            fitness,
            validation_timeout: raw.validation.timeout.0,
            failing_base: raw.validation.failing_base.unwrap_or(FailingBase::Pause),
            budgets: crate::domain::Budgets {
                tokens_per_day: raw.governor.tokens_per_day.get(),
                usd_per_day: raw.governor.usd_per_day,
                iterations_per_hour: raw.governor.iterations_per_hour.map(Positive::get),
                deadline: raw.governor.deadline.map(|d| d.0),
                day_window: raw
                    .governor
                    .day_window
                    .map_or(Duration::from_secs(24 * 3600), |d| d.0),
                hour_window: raw
                    .governor
                    .hour_window
                    .map_or(Duration::from_secs(3600), |d| d.0),
            },
            permit_retry_after: raw.governor.retry_after.0,
            approval_timeout: raw.governor.approval_timeout.0,
            research_ttl: raw.researcher.cache_ttl.0,
            socket: raw
                .ctl
                .socket
                .map(|socket| absolute(file, "[ctl] socket", &socket))
                .transpose()?,
            fault_injection: raw.debug.fault_injection,
            otlp_endpoint: raw.telemetry.otlp_endpoint.filter(|e| !e.trim().is_empty()),
            otlp_protocol: raw.telemetry.otlp_protocol.unwrap_or(OtlpProtocol::Grpc),
            service_name: raw.telemetry.service_name.unwrap_or_else(|| "agent".into()),
            http_listen,
            dashboard_read_only: raw.http.read_only.unwrap_or(false),
            jaeger_url: raw.http.jaeger_url.clone().filter(|u| !u.trim().is_empty()),
            alerts,
            safety: crate::safety::Rules {
                protected_paths: raw.safety.protected_paths,
                allowed_paths: raw.safety.allowed_paths,
                max_files: raw.safety.max_files.map_or(50, |n| n.get() as usize),
                max_changed_lines: raw
                    .safety
                    .max_changed_lines
                    .map_or(2000, |n| n.get() as usize),
                process_spawn_allowed: raw.safety.process_spawn_allowed,
                protected_fns: raw.safety.protected_fns,
            },
            own_source_protected: raw.safety.own_source_protected,
            sandbox: crate::sandbox::SandboxConfig {
                enabled: raw
                    .sandbox
                    .enabled
                    .map_or(crate::sandbox::Enabled::Auto, Into::into),
                program: program(
                    file,
                    "[sandbox] program",
                    &raw.sandbox.program.unwrap_or_else(|| "bwrap".into()),
                )?,
                job_network: raw.sandbox.job_network.unwrap_or(true),
                check_network: raw.sandbox.check_network.unwrap_or(false),
                writable: raw
                    .sandbox
                    .writable
                    .iter()
                    .map(|path| absolute(file, "[sandbox] writable", path))
                    .collect::<Result<_, _>>()?,
            },
            max_turns: raw
                .cognition
                .max_turns
                .map(|n| n.get().min(u64::from(u32::MAX)) as u32),
            max_budget_usd,
        })
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

/// `path` (the value of `key`) made absolute against the directory the
/// agent was started in: the one place a relative path is read.
fn absolute(file: &Path, key: &str, path: &Path) -> Result<AbsolutePath, ConfigError> {
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
