//! `agent worker`: its flags over the configuration's `[workers]`,
//! `[sandbox]` and Claude Code job policy, its traces, and its life until
//! SIGTERM or Ctrl-C (after which the jobs it holds end first).

use tokio::signal::unix::{SignalKind, signal};

use super::{LogFormat, WorkerArgs, config, exit};
use crate::domain::{AbsolutePath, Program};
use crate::workers::worker::WorkerOptions;

pub async fn run(args: WorkerArgs, format: LogFormat) -> u8 {
    let (options, config) = match options(args) {
        Ok(chosen) => chosen,
        Err(error) => {
            eprintln!("agent worker: {error}");
            return exit::USAGE;
        }
    };
    let export = crate::telemetry::traces::Export::resolve(
        config.otlp_endpoint.as_deref(),
        config.otlp_protocol,
        "agent-worker",
    );
    let telemetry = match crate::telemetry::traces::init(format, export.as_ref()) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("agent worker: {error}");
            return exit::USAGE;
        }
    };
    let code = match crate::workers::worker::run(options, stopped()).await {
        Ok(()) => exit::OK,
        Err(error) => {
            eprintln!("agent worker: {error}");
            exit::USAGE
        }
    };
    telemetry.shutdown().await;
    code
}

/// Resolves on SIGTERM or SIGINT.
async fn stopped() {
    let (Ok(mut term), Ok(mut interrupt)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = interrupt.recv() => {}
    }
    tracing::info!("stopping: no new jobs; the running ones end first");
}

/// The flags over the configuration file's settings.
fn options(args: WorkerArgs) -> Result<(WorkerOptions, config::Config), String> {
    let (config, _) = config::load_all(args.config.as_deref(), None).map_err(|e| e.to_string())?;
    crate::workers::check_url(&args.nats)
        .map_err(|why| format!("--nats \"{}\": {why}", args.nats))?;
    let state = AbsolutePath::resolve(&args.state)
        .map_err(|e| format!("--state \"{}\": {e}", args.state.display()))?;
    let claude_bin = match &args.claude_bin {
        Some(bin) => {
            Program::resolve(bin).map_err(|e| format!("--claude-bin \"{}\": {e}", bin.display()))?
        }
        None => config.claude_bin.clone(),
    };
    let name = args.name.unwrap_or_else(|| {
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "worker".into());
        format!("{host}-{}", std::process::id())
    });
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
    {
        return Err(format!(
            "--name \"{name}\": a worker's name is letters, digits, '-' and '_'"
        ));
    }
    let options = WorkerOptions {
        nats: args.nats,
        name,
        concurrency: args.concurrency as usize,
        claude_bin,
        state: state.into(),
        listen: args.listen,
        queue: config.workers.clone(),
        sandbox: config.sandbox.clone(),
        policy: config.claude_policy.clone(),
    };
    Ok((options, config))
}
