//! The command line: clap definitions and dispatch. Every failure a user can
//! cause is printed as one plain sentence (never a debug dump) and mapped to a
//! documented exit status.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{self, BackendChoice, Mode, Overrides};
use crate::ctl::client;
use crate::ctl::protocol::{Command, Outcome};
use crate::daemon::{self, Ending, RunError};
use crate::store::{Store, StoreError};

mod audit;
pub(crate) mod experiment;
mod fleet;
mod worker;

/// Exit statuses of `agent` (documented in the README).
pub mod exit {
    /// Done: the run finished or was stopped cleanly.
    pub const OK: u8 = 0;
    /// The run failed: the tree escalated, or the daemon refused the request.
    pub const FAILED: u8 = 1;
    /// Bad usage or configuration; nothing was changed.
    pub const USAGE: u8 = 2;
    /// The state directory is in use, or the daemon cannot be reached.
    pub const UNAVAILABLE: u8 = 3;
    /// `agent run --exit-on-pause`: the run paused by itself and exited,
    /// checkpointed; it needs the cause fixed before it is started again.
    pub const PAUSED: u8 = 4;
    /// `agent ctl upgrade`: checkpointed; the keeper starts the current
    /// release.
    pub const HANDOVER: u8 = 10;
}

/// The exit status of a run that could not run.
fn run_exit_code(error: &RunError) -> u8 {
    match error {
        RunError::Usage(_) => exit::USAGE,
        RunError::Store(StoreError::InUse(_)) => exit::UNAVAILABLE,
        RunError::Store(_) | RunError::Failed(_) => exit::FAILED,
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "agent",
    version,
    about = "A long-running, supervised, self-improving agent service"
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "human")]
    pub log_format: LogFormat,
    /// Log at `info` on a terminal too (by default a terminal gets warnings
    /// only, beside the one line per iteration); `RUST_LOG` overrides both.
    #[arg(short, long, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub command: TopCommand,
}

pub use crate::telemetry::LogFormat;

#[derive(Debug, Subcommand)]
pub enum TopCommand {
    /// Run the agent: the supervision tree, the control socket, the iterations.
    Run(RunArgs),
    /// Steer a running agent through its control socket.
    Ctl(CtlArgs),
    /// Check configuration files without starting anything.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Show committed iterations from the store (the daemon must be stopped).
    History(HistoryArgs),
    /// Measure whether learning pays: runs on each workspace with learning
    /// on and off, over several seeds, and prints the table.
    Experiment(experiment::ExperimentArgs),
    /// Write a consistent copy of the store to a file (through the daemon
    /// when it runs).
    Backup(BackupArgs),
    /// Create a state directory's store from a backup file.
    Restore(RestoreArgs),
    /// The audit chain: verify it, show its end, export it (the daemon must
    /// be stopped for `--state`).
    Audit {
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
    /// Serve Claude Code as MCP tools on stdin/stdout (started by the mcp backend).
    McpServe(McpServeArgs),
    /// Run jobs for agents from a NATS JetStream work queue (`[workers]`).
    Worker(WorkerArgs),
    /// A fleet of instances and workers.
    Fleet {
        #[command(subcommand)]
        command: fleet::FleetCommand,
    },
    /// Print a shell completion script.
    Completions {
        /// bash | zsh | fish | elvish | powershell
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Args)]
pub struct McpServeArgs {
    /// The agent configuration the defaults come from.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Path or name of the Claude Code executable.
    #[arg(long, value_name = "PATH")]
    pub claude_bin: Option<PathBuf>,
    /// The agent's state directory; the job table lives in `<state>/mcp`.
    #[arg(long, value_name = "DIR")]
    pub state: Option<PathBuf>,
    /// Deadline of one job, e.g. "10m"; its process group is killed after it.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_arg)]
    pub job_timeout: Option<std::time::Duration>,
    /// Jobs that run at once.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_concurrent: Option<u64>,
    /// Default `--permission-mode` for jobs that do not name one.
    #[arg(long, value_name = "MODE")]
    pub permission_mode: Option<crate::domain::PermissionMode>,
    /// Default `--model` for jobs that do not name one.
    #[arg(long, value_name = "MODEL")]
    pub model: Option<String>,
    /// `--max-turns` of jobs that do not name one.
    #[arg(long, value_name = "N")]
    pub max_turns: Option<u32>,
    /// `--max-budget-usd` of every job.
    #[arg(long, value_name = "USD")]
    pub max_budget_usd: Option<f64>,
    /// Run every job under this bubblewrap (the agent probed it works).
    #[arg(long, value_name = "PATH")]
    pub sandbox_bwrap: Option<PathBuf>,
    /// A directory jobs may not see (the state directory, the checkout).
    #[arg(long, value_name = "DIR", requires = "sandbox_bwrap")]
    pub sandbox_hide: Vec<PathBuf>,
    /// A directory jobs may write besides their worktree.
    #[arg(long, value_name = "DIR", requires = "sandbox_bwrap")]
    pub sandbox_writable: Vec<PathBuf>,
    /// Jobs get no network.
    #[arg(long, requires = "sandbox_bwrap")]
    pub sandbox_no_network: bool,
    /// A job with no stream-json event for this long is killed, e.g. "5m".
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_arg)]
    pub stall_timeout: Option<std::time::Duration>,
    /// A pre-approved tool rule (`--allowedTools`); repeat for more. Given
    /// once or more, it replaces the configured list.
    #[arg(long, value_name = "RULE")]
    pub allowed_tool: Vec<String>,
    /// A refused tool rule (`--disallowedTools`); repeat for more.
    #[arg(long, value_name = "RULE")]
    pub disallowed_tool: Vec<String>,
    /// `--setting-sources` of every job, e.g. "user".
    #[arg(long, value_name = "SOURCES")]
    pub setting_sources: Option<String>,
    /// The only MCP servers jobs load (`--mcp-config`).
    #[arg(long, value_name = "FILE")]
    pub mcp_config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The NATS server (with JetStream) the agents publish jobs to.
    #[arg(long, value_name = "URL", env = "AGENT_NATS")]
    pub nats: String,
    /// Jobs run at once.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub concurrency: u64,
    /// Path or name of the Claude Code executable [default: `[cognition] claude_bin`].
    #[arg(long, value_name = "PATH")]
    pub claude_bin: Option<PathBuf>,
    /// Where the worker keeps its cache of git objects and its jobs'
    /// checkouts (nothing in it must survive a restart).
    #[arg(long, value_name = "DIR", default_value = "worker-state")]
    pub state: PathBuf,
    /// Address of `/healthz` and `/status`.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9465")]
    pub listen: std::net::SocketAddr,
    /// This worker's name in the fleet [default: host name and process id].
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// The configuration `[workers]`, `[sandbox]` and Claude Code's job
    /// policy come from [default: config/agent.toml, else the embedded default].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

fn parse_duration_arg(text: &str) -> Result<std::time::Duration, String> {
    config::values::parse_duration(text)
}

#[derive(Debug, Args)]
pub struct FileArgs {
    /// The agent configuration [default: config/agent.toml, else the embedded default].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The supervision tree [default: actors.toml, else the embedded default].
    #[arg(long, value_name = "FILE")]
    pub actors: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The goal, one sentence [default: the stored run's goal, else the configured one].
    #[arg(long)]
    pub goal: Option<String>,
    /// Replace the goal of an unfinished run stored in the state directory.
    #[arg(long)]
    pub replace_goal: bool,
    /// When the store lost committed iterations that the agent branch still
    /// holds, rebuild them from the branch instead of refusing to run.
    #[arg(long)]
    pub recover_from_git: bool,
    /// The revision of the workspace's repository a new run's branch starts
    /// from [default: its HEAD]; ignored when the run is resumed.
    #[arg(long, value_name = "REF")]
    pub base: Option<String>,
    /// The git repository or directory to improve.
    #[arg(long, value_name = "DIR")]
    pub workspace: Option<PathBuf>,
    /// Runtime data directory (store, worktree, control socket).
    #[arg(long, value_name = "DIR")]
    pub state: Option<PathBuf>,
    #[command(flatten)]
    pub files: FileArgs,
    /// Cognition backend.
    #[arg(long, value_enum)]
    pub backend: Option<BackendChoice>,
    /// Path or name of the Claude Code executable.
    #[arg(long, value_name = "PATH")]
    pub claude_bin: Option<PathBuf>,
    /// Autonomy mode.
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    /// Stop once this many iterations are committed (in total for the run).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_iterations: Option<u64>,
    /// When the run pauses by itself (failures that persist, a loop),
    /// checkpoint and exit with status 4 instead of waiting for `agent ctl
    /// resume`; starting it again resumes it. For scripts and CI jobs.
    #[arg(long)]
    pub exit_on_pause: bool,
}

#[derive(Debug, Args)]
pub struct CtlArgs {
    /// The daemon's state directory [default: the configured one, `state`].
    #[arg(long, value_name = "DIR", global = true)]
    pub state: Option<PathBuf>,
    /// The control socket, if not in the state directory.
    #[arg(long, value_name = "PATH", global = true)]
    pub socket: Option<PathBuf>,
    /// Print the daemon's answer as JSON.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Goal, run state, committed iterations and every actor's health.
    Status,
    /// The supervision tree: strategy, intensity, each child's restart type, status, restarts, uptime.
    Tree,
    /// Send a typed message to one actor and print its reply (`--list` shows what it takes).
    Send {
        /// governor | learner | researcher | executor | modifier | planner
        actor: String,
        /// The message's name (see --list).
        #[arg(required_unless_present = "list")]
        message: Option<String>,
        /// An argument as name=value (repeatable); values that parse as JSON are taken as JSON.
        #[arg(long = "arg", value_name = "NAME=VALUE")]
        args: Vec<String>,
        /// All arguments as one JSON object, e.g. '{"topic": "tests"}'.
        #[arg(long = "args", value_name = "JSON", conflicts_with = "args")]
        args_json: Option<String>,
        /// List the actor's messages instead of sending one.
        #[arg(long)]
        list: bool,
    },
    /// Start no new iteration until resumed.
    Pause,
    /// Resume after a pause.
    Resume,
    /// Stop the daemon: the in-flight iteration finishes first unless --now.
    Stop {
        /// Abandon the in-flight iteration at once.
        #[arg(long)]
        now: bool,
    },
    /// Replace the goal; the next iteration pursues it.
    Goal {
        /// The new goal, one sentence.
        #[arg(required = true, num_args = 1..)]
        text: Vec<String>,
    },
    /// Changes waiting for approval (supervised mode) and recent decisions.
    Approvals,
    /// Approve a waiting change: it is committed.
    Approve {
        /// The approval's id (see `approvals`).
        id: String,
    },
    /// Reject a waiting change: it is rolled back.
    Reject {
        /// The approval's id (see `approvals`).
        id: String,
        /// Why, recorded with the decision.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Make everything the daemon holds durable; answers after the flush.
    Checkpoint,
    /// Move the agent branch onto the repository's current HEAD, kept only
    /// if validation passes there (pause the run first).
    Rebase,
    /// Hand over to another agent binary ([upgrade] enabled only): it is
    /// staged as a release and started by the keeper on probation; a crash
    /// or a failed health gate rolls back to the permanent release.
    Upgrade {
        /// The agent binary to run.
        binary: PathBuf,
    },
    /// Make an actor fail on purpose (debug mode or [debug] fault_injection only).
    Fault {
        /// governor | learner | researcher | executor | modifier | planner
        actor: String,
        /// panic | error | hang
        fault: String,
    },
    /// Stream events (iteration steps, supervision, budget) until the daemon stops.
    Watch,
    /// Committed iterations: outcome, capability, fitness, tokens, duration.
    History {
        /// How many of the latest iterations.
        #[arg(long, value_name = "N", default_value_t = 20)]
        last: usize,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate agent.toml and actors.toml; exit 2 with the place of the first problem.
    Check(FileArgs),
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// The state directory.
    #[arg(long, value_name = "DIR", default_value = "state")]
    pub state: PathBuf,
    /// How many of the latest iterations to show.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub last: usize,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// The state directory.
    #[arg(long, value_name = "DIR", default_value = "state")]
    pub state: PathBuf,
    /// The backup file to write.
    #[arg(long, value_name = "FILE")]
    pub to: PathBuf,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The backup file written by `agent backup`.
    #[arg(long, value_name = "FILE")]
    pub from: PathBuf,
    /// The state directory; it must hold no store (move a damaged one away).
    #[arg(long, value_name = "DIR", default_value = "state")]
    pub state: PathBuf,
}

/// Runs the parsed command line and returns the process exit status.
pub fn main(cli: Cli) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("agent: cannot start the async runtime: {error}");
            return ExitCode::from(exit::FAILED);
        }
    };
    #[cfg(feature = "failpoints")]
    let _failpoints = crate::failpoints::setup();
    // Commands that talk to a socket keep SIGPIPE ignored: a daemon that
    // closes the connection mid-request must be an error they report, not
    // a signal that ends them without a word. They print through `say`.
    if !matches!(
        cli.command,
        TopCommand::Run(_)
            | TopCommand::McpServe(_)
            | TopCommand::Worker(_)
            | TopCommand::Ctl(_)
            | TopCommand::Experiment(_)
    ) {
        crate::process::quiet_on_closed_pipe();
    }
    let format = cli.log_format;
    crate::telemetry::traces::set_verbose(cli.verbose);
    let code = runtime.block_on(async move {
        if !matches!(cli.command, TopCommand::Run(_) | TopCommand::Worker(_)) {
            crate::telemetry::traces::init_logs(format);
        }
        match cli.command {
            TopCommand::Run(args) => run(args, format).await,
            TopCommand::Ctl(args) => ctl(args).await,
            TopCommand::Config {
                command: ConfigCommand::Check(files),
            } => config_check(&files),
            TopCommand::History(args) => history(&args),
            TopCommand::Experiment(args) => experiment::run(args).await,
            TopCommand::Backup(args) => backup(&args).await,
            TopCommand::Restore(args) => restore(&args).await,
            TopCommand::Audit { command } => audit::run(&command),
            TopCommand::McpServe(args) => mcp_serve(args).await,
            TopCommand::Worker(args) => worker::run(args, format).await,
            TopCommand::Fleet { command } => fleet::run(command).await,
            TopCommand::Completions { shell } => {
                let mut command = <Cli as clap::CommandFactory>::command();
                clap_complete::generate(shell, &mut command, "agent", &mut std::io::stdout());
                exit::OK
            }
        }
    });
    // Jobs still running on the blocking pool must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    ExitCode::from(code)
}

async fn run(args: RunArgs, format: LogFormat) -> u8 {
    let (config, tree) =
        match config::load_all(args.files.config.as_deref(), args.files.actors.as_deref()) {
            Ok(loaded) => loaded,
            Err(error) => {
                eprintln!("agent: {error}");
                return exit::USAGE;
            }
        };
    let overrides = Overrides {
        goal: args.goal,
        replace_goal: args.replace_goal,
        recover_from_git: args.recover_from_git,
        base: args.base,
        workspace: args.workspace,
        state: args.state,
        backend: args.backend,
        claude_bin: args.claude_bin,
        mode: args.mode,
        max_iterations: args.max_iterations,
        exit_on_pause: args.exit_on_pause,
    };
    if config.upgrade.enabled && !crate::upgrade::keeper::is_child() {
        return keep(config, &overrides).await;
    }
    let export = crate::telemetry::traces::Export::resolve(
        config.otlp_endpoint.as_deref(),
        config.otlp_protocol,
        &config.service_name,
    );
    let telemetry = match crate::telemetry::traces::init(format, export.as_ref()) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("agent: {error}");
            return exit::USAGE;
        }
    };
    let code = match daemon::run(config, tree, overrides).await {
        Ok(Ending::Finished(_) | Ending::Stopped) => exit::OK,
        Ok(Ending::Escalated(_)) => exit::FAILED,
        Ok(Ending::Paused(_)) => exit::PAUSED,
        Ok(Ending::Handover) => exit::HANDOVER,
        Err(error) => {
            eprintln!("agent: {error}");
            run_exit_code(&error)
        }
    };
    // Every exit path flushes the last traces.
    telemetry.shutdown().await;
    code
}

/// `agent run` as the keeper of its releases (`[upgrade] enabled`): the
/// same command line runs in each release it starts.
async fn keep(mut config: config::Config, overrides: &Overrides) -> u8 {
    if let Err(error) = config.apply(overrides) {
        eprintln!("agent: {error}");
        return exit::USAGE;
    }
    let installed = match std::env::current_exe() {
        Ok(path) => path,
        Err(error) => {
            eprintln!("agent: keeper: cannot find its own binary: {error}");
            return exit::FAILED;
        }
    };
    let keeper = crate::upgrade::keeper::Keeper {
        releases: crate::upgrade::releases::Releases::of_state(&config.state_dir),
        socket: config.socket_path(),
        config: config.upgrade,
        installed,
        args: std::env::args_os().skip(1).collect(),
    };
    keeper.keep().await
}

async fn ctl(args: CtlArgs) -> u8 {
    let socket = match (&args.socket, &args.state) {
        (Some(socket), _) => socket.clone(),
        (None, Some(state)) => state.join("agent.sock"),
        (None, None) => match config::load_all(None, None) {
            Ok((config, _)) => config.socket_path(),
            Err(_) => Path::new("state").join("agent.sock"),
        },
    };
    let command = match ctl_command(args.command) {
        Ok(command) => command,
        Err(message) => {
            eprintln!("agent ctl: {message}");
            return exit::USAGE;
        }
    };
    if command == Command::Watch {
        return watch(&socket, args.json).await;
    }
    match client::request(&socket, command).await {
        Err(error) => {
            eprintln!("agent ctl: {error}");
            exit::UNAVAILABLE
        }
        Ok(Outcome::Ok(reply)) => {
            if args.json {
                say(&client::json(&reply).to_string());
            } else {
                say(&client::render(&reply));
            }
            exit::OK
        }
        Ok(Outcome::Error(error)) => refused(&error, args.json),
    }
}

/// Prints one line to stdout; a reader that went away (`| head`) ends the
/// command quietly, as it ends `cat`.
pub(crate) fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(error) = writeln!(out, "{line}").and_then(|()| out.flush())
        && error.kind() == std::io::ErrorKind::BrokenPipe
    {
        std::process::exit(i32::from(exit::OK));
    }
}

fn refused(error: &crate::ctl::protocol::WireError, json: bool) -> u8 {
    if json {
        say(&serde_json::json!({ "error": error }).to_string());
    }
    let retry = error
        .retry_after_ms
        .map(|ms| format!(" (retry in {ms} ms)"))
        .unwrap_or_default();
    eprintln!(
        "agent ctl: refused ({}): {}{retry}",
        error.kind.name(),
        error.message
    );
    exit::FAILED
}

/// Turns the command line into a request, checking what only the client can.
fn ctl_command(command: CtlCommand) -> Result<Command, String> {
    Ok(match command {
        CtlCommand::Status => Command::Status,
        CtlCommand::Tree => Command::Tree,
        CtlCommand::Send {
            actor,
            message,
            args,
            args_json,
            list,
        } => {
            if list {
                return Ok(Command::Messages { actor });
            }
            let mut map = serde_json::Map::new();
            if let Some(json) = args_json {
                match serde_json::from_str::<serde_json::Value>(&json) {
                    Ok(serde_json::Value::Object(object)) => map = object,
                    Ok(_) => {
                        return Err(
                            "--args must be a JSON object, e.g. '{\"topic\": \"tests\"}'".into(),
                        );
                    }
                    Err(error) => return Err(format!("--args is not valid JSON: {error}")),
                }
            }
            for pair in args {
                let Some((name, value)) = pair.split_once('=') else {
                    return Err(format!("--arg {pair}: expected NAME=VALUE"));
                };
                let value = serde_json::from_str(value)
                    .unwrap_or_else(|_| serde_json::Value::String(value.to_string()));
                map.insert(name.to_string(), value);
            }
            Command::Send {
                actor,
                message: message.unwrap_or_default(),
                args: map,
            }
        }
        CtlCommand::Pause => Command::Pause,
        CtlCommand::Resume => Command::Resume,
        CtlCommand::Stop { now } => Command::Stop { now },
        CtlCommand::Goal { text } => Command::Goal {
            text: text.join(" "),
        },
        CtlCommand::Approvals => Command::Approvals,
        CtlCommand::Approve { id } => Command::Approve { id },
        CtlCommand::Reject { id, reason } => Command::Reject { id, reason },
        CtlCommand::Checkpoint => Command::Checkpoint,
        CtlCommand::Rebase => Command::Rebase,
        CtlCommand::Upgrade { binary } => Command::Upgrade {
            binary: std::path::absolute(&binary)
                .map_err(|e| format!("{}: {e}", binary.display()))?
                .display()
                .to_string(),
        },
        CtlCommand::Fault { actor, fault } => Command::Fault { actor, fault },
        CtlCommand::Watch => Command::Watch,
        CtlCommand::History { last } => Command::History { last: Some(last) },
    })
}

/// `ctl watch`: prints events until the daemon stops (exit 0) or the
/// connection breaks.
async fn watch(socket: &Path, json: bool) -> u8 {
    let mut connection = match client::Connection::open(socket).await {
        Ok(connection) => connection,
        Err(error) => {
            eprintln!("agent ctl: {error}");
            return exit::UNAVAILABLE;
        }
    };
    if let Err(error) = connection.send(Command::Watch).await {
        eprintln!("agent ctl: {error}");
        return exit::UNAVAILABLE;
    }
    loop {
        match connection.next(None).await {
            Ok(None) => return exit::OK,
            Ok(Some(Outcome::Ok(reply))) => {
                if json {
                    say(&client::json(&reply).to_string());
                } else {
                    say(&client::render(&reply));
                }
                if let crate::ctl::protocol::Reply::Event(event) = &reply
                    && event.event == "daemon_stopping"
                {
                    return exit::OK;
                }
            }
            Ok(Some(Outcome::Error(error))) => return refused(&error, json),
            Err(error) => {
                eprintln!("agent ctl: {error}");
                return exit::UNAVAILABLE;
            }
        }
    }
}

async fn mcp_serve(args: McpServeArgs) -> u8 {
    let config = match config::load_all(args.config.as_deref(), None) {
        Ok((config, _)) => config,
        Err(error) => {
            eprintln!("agent mcp-serve: {error}");
            return exit::USAGE;
        }
    };
    let options = match serve_options(args, config) {
        Ok(options) => options,
        Err(error) => {
            eprintln!("agent mcp-serve: {error}");
            return exit::USAGE;
        }
    };
    match crate::mcp::server::serve_stdio(options).await {
        Ok(()) => exit::OK,
        Err(error) => {
            eprintln!("agent mcp-serve: {error}");
            exit::FAILED
        }
    }
}

/// `mcp-serve`'s flags over the configuration, every path made absolute as
/// the configuration's are.
fn serve_options(
    args: McpServeArgs,
    config: config::Config,
) -> Result<crate::mcp::server::ServeOptions, String> {
    use crate::domain::{AbsolutePath, Program};
    let absolute = |flag: &str, path: &Path| {
        AbsolutePath::resolve(path).map_err(|e| format!("{flag} \"{}\": {e}", path.display()))
    };
    let program = |flag: &str, path: &Path| {
        Program::resolve(path).map_err(|e| format!("{flag} \"{}\": {e}", path.display()))
    };
    let all = |flag: &str, paths: &[PathBuf]| {
        paths
            .iter()
            .map(|path| absolute(flag, path))
            .collect::<Result<Vec<_>, _>>()
    };
    let sandbox = match &args.sandbox_bwrap {
        Some(bwrap) => Some(crate::sandbox::Sandbox::given(
            program("--sandbox-bwrap", bwrap)?,
            all("--sandbox-hide", &args.sandbox_hide)?,
            all("--sandbox-writable", &args.sandbox_writable)?,
            !args.sandbox_no_network,
        )),
        None => None,
    };
    let policy = serve_policy(&args, config.claude_policy, absolute)?;
    Ok(crate::mcp::server::ServeOptions {
        state_dir: match &args.state {
            Some(state) => absolute("--state", state)?,
            None => config.state_dir,
        },
        claude_bin: match &args.claude_bin {
            Some(bin) => program("--claude-bin", bin)?,
            None => config.claude_bin,
        },
        job_timeout: args.job_timeout.unwrap_or(config.job_timeout),
        max_concurrent: args
            .max_concurrent
            .map_or(config.mcp_max_concurrent, |n| n as usize),
        permission_mode: args.permission_mode.unwrap_or(config.permission_mode),
        model: args.model.or(config.model),
        max_turns: args.max_turns.or(config.max_turns),
        max_budget_usd: args.max_budget_usd.or(config.max_budget_usd),
        policy,
        sandbox,
    })
}

/// `mcp-serve`'s job policy: each flag given replaces the configured value.
fn serve_policy(
    args: &McpServeArgs,
    mut policy: crate::claude::Policy,
    absolute: impl Fn(&str, &Path) -> Result<crate::domain::AbsolutePath, String>,
) -> Result<crate::claude::Policy, String> {
    if let Some(stall) = args.stall_timeout {
        policy.stall_timeout = stall;
    }
    if !args.allowed_tool.is_empty() {
        policy.allowed_tools.clone_from(&args.allowed_tool);
    }
    if !args.disallowed_tool.is_empty() {
        policy.disallowed_tools.clone_from(&args.disallowed_tool);
    }
    if let Some(sources) = &args.setting_sources {
        policy.setting_sources.clone_from(sources);
    }
    if let Some(file) = &args.mcp_config {
        policy.mcp_config = Some(absolute("--mcp-config", file)?.into());
    }
    Ok(policy)
}

fn config_check(files: &FileArgs) -> u8 {
    match config::load_all(files.config.as_deref(), files.actors.as_deref()) {
        Ok((config, tree)) => {
            let used = |given: Option<&Path>, conventional: &'static str| {
                config::Source::pick(given, conventional, "").describe()
            };
            println!(
                "ok: {} and {} are valid ({} actors, strategy {:?}, backend {:?}, mode {:?})",
                used(files.config.as_deref(), "config/agent.toml"),
                used(files.actors.as_deref(), "actors.toml"),
                tree.children.len(),
                tree.strategy,
                config.backend,
                config.mode
            );
            exit::OK
        }
        Err(error) => {
            eprintln!("agent: {error}");
            exit::USAGE
        }
    }
}

/// `agent backup`: from the store directly when no daemon holds it, else
/// through the daemon's socket (the copy is consistent either way).
async fn backup(args: &BackupArgs) -> u8 {
    if !args.state.join("store").is_dir() {
        eprintln!(
            "agent: no agent state in {} (expected a store written by `agent run`)",
            args.state.display()
        );
        return exit::USAGE;
    }
    let to = match absolute(&args.to) {
        Ok(to) => to,
        Err(message) => {
            eprintln!("agent: {message}");
            return exit::USAGE;
        }
    };
    match Store::open(&args.state) {
        Ok(store) => {
            let written = store.backup_to(&to).await;
            match written {
                Ok(iterations) => {
                    println!(
                        "backup of {iterations} committed iteration(s) written to {}",
                        to.display()
                    );
                    exit::OK
                }
                Err(error) => {
                    eprintln!("agent: {error}");
                    exit::FAILED
                }
            }
        }
        Err(StoreError::InUse(_)) => {
            let command = Command::Backup {
                to: to.display().to_string(),
            };
            match client::request(&args.state.join("agent.sock"), command).await {
                Ok(Outcome::Ok(reply)) => {
                    println!("{}", client::render(&reply));
                    exit::OK
                }
                Ok(Outcome::Error(error)) => refused(&error, false),
                Err(error) => {
                    eprintln!("agent: the daemon holds the store and does not answer: {error}");
                    exit::UNAVAILABLE
                }
            }
        }
        Err(error) => {
            eprintln!("agent: {error}");
            exit::FAILED
        }
    }
}

/// `agent restore`: a new store from a backup; never over an existing one.
async fn restore(args: &RestoreArgs) -> u8 {
    let bytes = match std::fs::read(&args.from) {
        Ok(bytes) => bytes,
        Err(error) => {
            eprintln!("agent: cannot read {}: {error}", args.from.display());
            return exit::USAGE;
        }
    };
    match Store::import(&args.state, &bytes).await {
        Ok(iterations) => {
            println!(
                "restored {iterations} committed iteration(s) into {}; `agent run` checks them against the agent branch",
                args.state.display()
            );
            exit::OK
        }
        Err(error) => {
            eprintln!("agent: {error}");
            match error {
                StoreError::Backup(_) => exit::USAGE,
                StoreError::InUse(_) => exit::UNAVAILABLE,
                _ => exit::FAILED,
            }
        }
    }
}

/// `path` made absolute against the current directory (the daemon that
/// writes a backup has a directory of its own).
fn absolute(path: &Path) -> Result<PathBuf, String> {
    std::path::absolute(path).map_err(|e| format!("cannot resolve {}: {e}", path.display()))
}

/// Opens the store of a stopped daemon for an offline command; `Err` is
/// the exit status, the reason already printed.
fn open_offline(state: &Path) -> Result<Store, u8> {
    if !state.join("store").is_dir() {
        eprintln!(
            "agent: no agent state in {} (expected a store written by `agent run`)",
            state.display()
        );
        return Err(exit::USAGE);
    }
    Store::open(state).map_err(|error| {
        eprintln!("agent: {error}");
        match error {
            StoreError::InUse(_) => exit::UNAVAILABLE,
            _ => exit::FAILED,
        }
    })
}

fn history(args: &HistoryArgs) -> u8 {
    let store = match open_offline(&args.state) {
        Ok(store) => store,
        Err(status) => return status,
    };
    let records = match store.iterations(args.last) {
        Ok(records) => records,
        Err(error) => {
            eprintln!("agent: {error}");
            return exit::FAILED;
        }
    };
    for record in records {
        if args.json {
            // The same object as each entry of `agent ctl history --json`.
            let siblings = store.siblings(record.number).unwrap_or_default();
            let entry = crate::ctl::commands::history_entry(&record, &siblings);
            println!("{}", serde_json::to_string(&entry).unwrap_or_default());
        } else {
            let others = match store.siblings(record.number).map(|s| s.len()) {
                Ok(0) | Err(_) => String::new(),
                Ok(n) => format!(" (+{n} others)"),
            };
            println!(
                "{:>4}  {:<24} {:<10} {}{others}",
                record.number,
                record.capability,
                record.outcome.as_str(),
                record.summary
            );
        }
    }
    exit::OK
}
