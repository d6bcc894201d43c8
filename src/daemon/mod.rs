//! `agent run`: the daemon's life as five phases — prepare the run (store,
//! run record, backend, worktree), start the services (event consumers,
//! HTTP, the supervision tree, the control socket), wait for the end (the run
//! finishing, a stop request from SIGINT, SIGTERM or `agent ctl stop`, or an
//! escalation, or — with `--exit-on-pause` — the run pausing by itself),
//! shut down, and write the final checkpoint.
//!
//! Shutdown is designed: no new iteration starts, the in-flight one gets the
//! shutdown deadline to commit and is abandoned after it, the tree stops in
//! reverse order, the store is flushed (the final checkpoint), and the socket
//! is removed. `cli` maps the ending to an exit status.

mod committed;
mod console;
mod resume;
mod services;

use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::broadcast;

use crate::cognition::{self, Cognition};
use crate::config::{Config, Overrides, TreeSpec};
use crate::ctl::server::StopRequest;
use crate::domain::RunPhase;
use crate::events::Event;
use crate::sandbox::Sandbox;
use crate::store::audit::Decision;
use crate::store::{Store, StoreError};
use crate::telemetry::alerts::RESOURCE_LIMIT;
use crate::workspace::{Workspace, WorkspaceError};
use services::Services;

/// Why `agent run` could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Bad usage or configuration; nothing was changed.
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Failed(String),
}

/// How the run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    Finished(String),
    Stopped,
    Escalated(String),
    /// The run paused by itself, with this reason, and `exit_on_pause` is
    /// set: it exits checkpointed instead of waiting for an operator.
    Paused(String),
    /// `agent ctl upgrade`: checkpointed, for the keeper to start the
    /// current release.
    Handover,
}

/// What a program that embeds the agent hands in instead of what the
/// configuration selects (the overhead benchmark: a cognition backend and
/// checks that run in-process).
pub struct Embedded {
    pub backend: Arc<dyn Cognition>,
    pub checks: Option<Arc<dyn crate::checks::Checks>>,
    /// Print the one line per iteration on stdout, as `agent run` does.
    pub console: bool,
}

/// Runs the daemon to its end.
pub async fn run(config: Config, tree: TreeSpec, overrides: Overrides) -> Result<Ending, RunError> {
    run_embedded(config, tree, overrides, None).await
}

/// Runs the daemon to its end inside another program: everything as
/// `agent run` does it (store, supervision tree, control socket, telemetry
/// the caller installed) with what `embedded` hands in.
pub async fn run_embedded(
    mut config: Config,
    tree: TreeSpec,
    overrides: Overrides,
    embedded: Option<Embedded>,
) -> Result<Ending, RunError> {
    config.apply(&overrides).map_err(RunError::Usage)?;
    let prepared = prepare(config, &overrides, embedded).await?;
    prepared
        .store
        .audit(Decision::new(
            "daemon",
            "run.started",
            format!(
                "goal \"{}\", backend {}, mode {:?}, sandbox {}",
                prepared.config.goal,
                prepared.backend.name(),
                prepared.config.mode,
                if prepared.sandbox.is_some() {
                    "on"
                } else {
                    "off"
                }
            ),
        ))
        .await?;
    let mut services = Services::start(&prepared, tree).await?;
    let store = prepared.store.clone();
    own_pause_at_start(&store, &prepared.config).await?;
    let (ending, stop) = wait_for_end(&mut services, &store).await?;
    let console = services.shut_down(&ending, stop).await;
    checkpoint(&store, &prepared.config, &ending).await?;
    console.abort();
    Ok(ending)
}

/// What the prepare phase hands to the services.
pub(crate) struct Prepared {
    pub config: Config,
    pub store: Store,
    pub backend: Arc<dyn Cognition>,
    pub workspace: Workspace,
    /// Confines jobs and checks; `None` when off (said once in the log).
    pub sandbox: Option<Sandbox>,
    /// Iterations committed before this start.
    pub committed: u64,
    /// In-process checks (embedded); `None` runs the configured commands.
    pub checks: Option<Arc<dyn crate::checks::Checks>>,
    pub console: bool,
    /// The prompt templates model backends offer as capabilities.
    pub prompts: cognition::prompt::Prompts,
}

/// Opens the store, resolves the run (new, resumed, refused), picks the
/// backend and prepares the worktree; prints the banner.
async fn prepare(
    mut config: Config,
    overrides: &Overrides,
    embedded: Option<Embedded>,
) -> Result<Prepared, RunError> {
    refuse_bad_input(&config, overrides)?;
    let prompts = cognition::prompt::Prompts::load(
        std::path::Path::new(cognition::prompt::PROMPTS_DIR),
        &config.prompts,
    )
    .map_err(RunError::Usage)?;
    // The workers' queue is dialled before anything is written: when NATS
    // does not answer, the run refuses to start having changed nothing.
    let workers = match &embedded {
        None if cognition::sends_to_workers(&config) => Some(
            cognition::select(&config, None)
                .await
                .map_err(|e| RunError::Usage(e.to_string()))?,
        ),
        _ => None,
    };
    let store = open_state(&config)?;
    crate::upgrade::keeper::audit_what_it_said(&store).await?;
    crate::upgrade::attempts::refuse_migration_on_probation(&store).map_err(RunError::Failed)?;
    config.goal = resume::resolve_run(&store, &config, overrides).await?;

    let (workspace, notices) = prepare_worktree(&config, &store, overrides).await?;
    // Probed with the run's own binds, so a bind it would refuse later is
    // refused here, once.
    let hidden = [config.state_dir.clone(), config.workspace.clone()];
    let sandbox = Sandbox::probe(&config.sandbox, &hidden, &workspace.path)
        .await
        .map_err(RunError::Usage)?;
    let Chosen {
        selection,
        checks,
        console,
    } = choose_backend(&config, sandbox.as_ref(), embedded, workers).await?;
    tracing::info!(backend = selection.backend.name(), "{}", selection.reason);
    affordable(&config, selection.backend.kind())?;

    for notice in notices {
        println!("agent: {notice}");
    }
    committed::check(&store, &workspace, &config.goal, overrides.recover_from_git).await?;
    committed::keep_the_users_work(&store, &workspace)?;
    crate::upgrade::attempts::settle_rollback(&store, &workspace)
        .await
        .map_err(|e| RunError::Failed(format!("cannot settle the failed upgrade: {e}")))?;
    check_toolchain(&config, &workspace).await?;
    let committed = store.last_iteration()?.map_or(0, |r| r.number);
    print_banner(
        &config,
        &selection,
        sandbox.is_some(),
        &workspace,
        committed,
    );
    Ok(Prepared {
        config,
        store,
        backend: selection.backend,
        workspace,
        sandbox,
        committed,
        checks,
        console,
        prompts,
    })
}

/// The state directory made and opened: refused while an emergency stop
/// file is there; what a killed run left (processes, git locks) cleared
/// once the store's lock proves no run owns them.
fn open_state(config: &Config) -> Result<Store, RunError> {
    std::fs::create_dir_all(&config.state_dir).map_err(|e| {
        RunError::Failed(format!(
            "cannot create the state directory {}: {e}",
            config.state_dir.display()
        ))
    })?;
    let stop_file = config.state_dir.join(STOP_FILE);
    if stop_file.exists() {
        return Err(RunError::Usage(format!(
            "{} is there: an emergency stop was asked for; remove the file to run again",
            stop_file.display()
        )));
    }
    let store = Store::open(&config.state_dir)?;
    reap_leftovers(&config.state_dir);
    clear_stale_locks(&config.state_dir);
    Ok(store)
}

/// Refuses a daily dollar budget smaller than one iteration's worst case:
/// no permit could ever be granted, and the run would wait day after day.
fn affordable(config: &Config, backend: crate::domain::BackendKind) -> Result<(), RunError> {
    use crate::actors::governor::{worst_case_calls, worst_case_usd};
    let (Some(limit), Some(worst)) = (config.budgets.usd_per_day, worst_case_usd(config, backend))
    else {
        return Ok(());
    };
    if worst <= limit {
        return Ok(());
    }
    Err(RunError::Usage(format!(
        "one iteration's worst case ${worst:.2} ({} Claude Code calls at [cognition] max_budget_usd ${:.2}: the research questions, then {} candidate job(s) with {} repair turn(s) each) is more than [governor] usd_per_day ${limit:.2}, so no iteration could ever start; lower [run] candidates or max_budget_usd, or raise usd_per_day",
        worst_case_calls(config),
        config.max_budget_usd.unwrap_or_default(),
        config.candidates,
        config.repair_turns,
    )))
}

/// The backend this run uses and how its checks run and its lines print.
struct Chosen {
    selection: cognition::Selection,
    /// In-process checks (embedded); `None` runs the configured commands.
    checks: Option<Arc<dyn crate::checks::Checks>>,
    console: bool,
}

/// What an embedding program hands in, else the workers' queue already
/// dialled, else what the configuration selects.
async fn choose_backend(
    config: &Config,
    sandbox: Option<&Sandbox>,
    embedded: Option<Embedded>,
    workers: Option<cognition::Selection>,
) -> Result<Chosen, RunError> {
    if let Some(selection) = workers {
        return Ok(Chosen {
            selection,
            checks: None,
            console: true,
        });
    }
    Ok(match embedded {
        Some(embedded) => Chosen {
            selection: cognition::Selection {
                reason: "handed in by the program that embeds the agent".into(),
                backend: embedded.backend,
            },
            checks: embedded.checks,
            console: embedded.console,
        },
        None => Chosen {
            selection: cognition::select(config, sandbox)
                .await
                .map_err(|e| RunError::Usage(e.to_string()))?,
            checks: None,
            console: true,
        },
    })
}

/// What the person who started the run reads first.
fn print_banner(
    config: &Config,
    selection: &cognition::Selection,
    sandboxed: bool,
    workspace: &Workspace,
    committed: u64,
) {
    println!(
        "agent: goal \"{}\"\nagent: backend {} — {}\nagent: sandbox {}\nagent: worktree {} (from {}), state {}, {} iteration(s) committed so far",
        config.goal,
        selection.backend.name(),
        selection.reason,
        if sandboxed {
            "on: jobs and checks run in bubblewrap"
        } else {
            "off: jobs and checks run unconfined"
        },
        workspace.path.display(),
        config.workspace.display(),
        config.state_dir.display(),
        committed
    );
    if selection.backend.kind() != crate::domain::BackendKind::Offline {
        let login = crate::claude::Login::detect();
        println!("agent: Claude Code login: {}", login.describe());
        if let crate::claude::Login::File(file) = &login
            && may_run_long(config)
        {
            eprintln!(
                "agent: warning: {} holds a refresh token that rotates, and this run may outlast \
                 its access token. Every job links to that one file and runs alone, so the \
                 agent keeps it current; a `claude` started elsewhere with the same login can \
                 still make it stale. For long runs, `claude setup-token` and \
                 CLAUDE_CODE_OAUTH_TOKEN do not rotate.",
                file.display()
            );
        }
    }
}

/// Whether a run may outlast an access token (an hour is the bound said
/// here; they last a few): no deadline or iteration limit holds it shorter.
fn may_run_long(config: &Config) -> bool {
    const LONG: Duration = Duration::from_secs(3600);
    let by_deadline = config.budgets.deadline.is_none_or(|d| d > LONG);
    let by_iterations = config.max_iterations.is_none_or(|n| {
        config
            .job_timeout
            .saturating_mul(n.min(u32::MAX.into()) as u32)
            > LONG
    });
    by_deadline && by_iterations
}

/// The agent's worktree of the workspace (made on a fresh run), once the
/// state directory is known to belong to this workspace; with the notices
/// to print about the user's work.
async fn prepare_worktree(
    config: &Config,
    store: &Store,
    overrides: &Overrides,
) -> Result<(Workspace, Vec<String>), RunError> {
    let belongs_to = same_workspace(store, config).await?;
    let source = config.workspace.clone();
    let state_dir = config.state_dir.clone();
    let base = overrides.base.clone();
    let prepared = tokio::task::spawn_blocking(move || {
        Workspace::prepare_with_notices(&source, &state_dir, base.as_deref())
    })
    .await
    .map_err(|e| RunError::Failed(e.to_string()))?
    .map_err(|e| match e {
        WorkspaceError::Missing(_)
        | WorkspaceError::Held { .. }
        | WorkspaceError::UnknownBase(_) => RunError::Usage(e.to_string()),
        other => RunError::Failed(format!("cannot prepare the worktree: {other}")),
    })?;
    if let Some(path) = belongs_to {
        store.put_workspace_source(&path).await?;
    }
    Ok(prepared)
}

/// What the command line got wrong is refused before anything is created:
/// a refused run leaves no state directory behind.
fn refuse_bad_input(config: &Config, overrides: &Overrides) -> Result<(), RunError> {
    if overrides
        .goal
        .as_deref()
        .is_some_and(|g| g.trim().is_empty())
    {
        return Err(RunError::Usage(
            "--goal must be a non-empty sentence".into(),
        ));
    }
    let fresh = !config.state_dir.join("worktree").exists();
    if fresh && !config.workspace.is_dir() {
        return Err(RunError::Usage(
            WorkspaceError::Missing(config.workspace.to_path_buf()).to_string(),
        ));
    }
    if let Some(base) = overrides.base.as_deref().filter(|_| fresh)
        && !crate::workspace::names_a_commit(&config.workspace, base)
    {
        return Err(RunError::Usage(
            WorkspaceError::UnknownBase(base.to_string()).to_string(),
        ));
    }
    Ok(())
}

/// A state directory belongs to one workspace: another `--workspace` on it
/// is refused with the one it belongs to. Returns the path to record when
/// the state directory has none yet.
async fn same_workspace(store: &Store, config: &Config) -> Result<Option<String>, RunError> {
    let Ok(given) = config.workspace.canonicalize() else {
        // A missing workspace is refused with its own message later.
        return Ok(None);
    };
    let given = given.display().to_string();
    match store.workspace_source()? {
        None => Ok(Some(given)),
        Some(stored) if stored == given => Ok(None),
        Some(stored) => Err(RunError::Usage(format!(
            "the state directory {} belongs to the workspace {stored}, not {given}; run with \
             --workspace {stored}, or give this workspace its own --state directory",
            config.state_dir.display()
        ))),
    }
}

/// A Rust workspace whose validation or fitness needs cargo is refused at
/// start when cargo cannot run there, instead of failing every iteration.
async fn check_toolchain(config: &Config, workspace: &Workspace) -> Result<(), RunError> {
    let uses_cargo = config.fitness == crate::config::Fitness::CargoWarnings
        || config.validation_command.trim_start().starts_with("cargo")
        || config.backend == crate::config::BackendChoice::Offline;
    if !uses_cargo || !workspace.path.join("Cargo.toml").is_file() {
        return Ok(());
    }
    let spec = crate::process::CommandSpec {
        program: "cargo".into(),
        args: vec!["--version".into()],
        cwd: workspace.path.clone(),
        env: Vec::new(),
        timeout: std::time::Duration::from_secs(120),
    };
    let why = match crate::process::run(&spec).await {
        Ok(finished) if finished.success() => return Ok(()),
        Ok(finished) => finished.first_error_line(),
        Err(error) => error.to_string(),
    };
    Err(RunError::Usage(format!(
        "cargo cannot run in the workspace ({why}); the validation and fitness of a Rust \
         workspace need it: install the toolchain, or set [validation] command and fitness \
         to commands that work here"
    )))
}

/// Marks this instance's children and kills what a killed run of the same
/// state directory left running. The store's lock, held now, proves that no
/// live run owns those processes.
fn reap_leftovers(state_dir: &std::path::Path) {
    let instance = state_dir
        .canonicalize()
        .unwrap_or_else(|_| state_dir.to_path_buf())
        .display()
        .to_string();
    crate::process::mark_children(&instance);
    let reaped = crate::process::reap_marked(&instance);
    if !reaped.is_empty() {
        for (pid, command) in &reaped {
            tracing::warn!(pid, %command, "killed a process left running by an earlier run");
        }
        println!(
            "agent: killed {} process(es) left running by an earlier run of this state directory",
            reaped.len()
        );
    }
}

/// Removes the git locks a killed run of this state directory left in its
/// worktree (the store's lock, held now, proves no live run holds them);
/// says which.
fn clear_stale_locks(state_dir: &std::path::Path) {
    let worktree = Workspace {
        path: state_dir.join("worktree"),
    };
    match worktree.clear_stale_locks() {
        Ok(removed) => {
            for lock in removed {
                tracing::warn!(lock = %lock.display(), "removed a git lock left by a killed run");
                println!(
                    "agent: removed {} (left by a killed run of this state directory)",
                    lock.display()
                );
            }
        }
        Err(error) => tracing::warn!(%error, "cannot look for git locks left by a killed run"),
    }
}

/// How a stop is asked for outside the control socket: SIGTERM, SIGINT,
/// or the STOP file (polled).
struct StopSignals {
    sigterm: tokio::signal::unix::Signal,
    sigint: tokio::signal::unix::Signal,
    stop_file: std::path::PathBuf,
    poll: tokio::time::Interval,
}

impl StopSignals {
    fn install(state_dir: &std::path::Path) -> Result<StopSignals, RunError> {
        let listen = |kind| signal(kind).map_err(|e| RunError::Failed(e.to_string()));
        Ok(StopSignals {
            sigterm: listen(SignalKind::terminate())?,
            sigint: listen(SignalKind::interrupt())?,
            stop_file: state_dir.join(STOP_FILE),
            poll: tokio::time::interval(STOP_FILE_POLL),
        })
    }

    /// The next stop asked for this way: how it was asked, and how soon.
    async fn next(&mut self) -> (&'static str, StopRequest) {
        loop {
            tokio::select! {
                _ = self.sigterm.recv() => return ("SIGTERM", StopRequest::Graceful),
                _ = self.sigint.recv() => return ("SIGINT", StopRequest::Graceful),
                _ = self.poll.tick() => {
                    if self.stop_file.exists() {
                        println!("agent: {} found: stopping now", self.stop_file.display());
                        return ("the STOP file", StopRequest::Now);
                    }
                }
            }
        }
    }
}

/// Waits for whichever comes first: a signal or the STOP file, `agent ctl
/// stop`, the run finishing, an escalation of the tree, or (with
/// `exit_on_pause`) the run pausing by itself. A stop asked for outside the
/// socket is audited (ctl commands are audited as they arrive); during a
/// graceful stop, a second one means now.
async fn wait_for_end(
    services: &mut Services,
    store: &Store,
) -> Result<(Ending, StopRequest), RunError> {
    let mut signals = StopSignals::install(&services.config.state_dir)?;
    let (ending, asked) = tokio::select! {
        (asked, request) = signals.next() => ((Ending::Stopped, request), Some(asked)),
        ending = run_ending(services) => (ending, None),
    };
    if let Some(asked) = asked {
        let how = if ending.1 == StopRequest::Now {
            "now"
        } else {
            "gracefully"
        };
        store
            .audit(Decision::new(
                "daemon",
                "run.stop",
                format!("{asked}: stopping {how}"),
            ))
            .await?;
    }
    if ending.1 != StopRequest::Now {
        let hurry = services.stop_sender();
        services.during_shutdown(tokio::spawn(hurry_on_a_second_stop(
            signals,
            store.clone(),
            hurry,
        )));
    }
    Ok(ending)
}

/// The run's own end, or `agent ctl stop`: whichever the services say first.
async fn run_ending(services: &mut Services) -> (Ending, StopRequest) {
    let mut stop_rx = services.stop_requests();
    let mut listener = services.events.subscribe();
    loop {
        tokio::select! {
            changed = stop_rx.changed() => {
                if changed.is_ok() && let Some(request) = *stop_rx.borrow() {
                    let ending = if request == StopRequest::Handover {
                        Ending::Handover
                    } else {
                        Ending::Stopped
                    };
                    return (ending, request);
                }
            }
            event = listener.recv() => match event {
                Ok(Event::RunFinished { reason }) => return (Ending::Finished(reason), StopRequest::Graceful),
                Ok(Event::IterationCommitted(committed)) => {
                    if let Some(release) = handover_to(&services.config, &committed) {
                        println!("agent: iteration {}: release {release} is current; handing over", committed.number);
                        return (Ending::Handover, StopRequest::Graceful);
                    }
                }
                Ok(Event::Escalated { reason }) => {
                    services.readiness.escalating();
                    return (Ending::Escalated(reason), StopRequest::Now);
                }
                Ok(Event::RunPaused { reason, .. }
                    | Event::Alert { rule: RESOURCE_LIMIT, message: reason })
                    if services.config.exit_on_pause =>
                {
                    return (Ending::Paused(reason), StopRequest::Graceful);
                }
                _ => {}
            },
            () = services.supervisor_stopped() => {
                services.readiness.escalating();
                return (Ending::Escalated(escalation_reason(&mut listener)), StopRequest::Now);
            }
        }
    }
}

/// While the in-flight iteration drains, a second interrupt or the STOP
/// file means now: the iteration is abandoned.
async fn hurry_on_a_second_stop(
    mut signals: StopSignals,
    store: Store,
    hurry: tokio::sync::watch::Sender<Option<StopRequest>>,
) {
    let asked = tokio::select! {
        _ = signals.sigterm.recv() => "a second SIGTERM",
        _ = signals.sigint.recv() => "a second SIGINT",
        () = async {
            loop {
                signals.poll.tick().await;
                if signals.stop_file.exists() {
                    break;
                }
            }
        } => "the STOP file",
    };
    println!("agent: stopping now: the in-flight iteration is abandoned");
    // Recorded first; a stop-now goes ahead even if it cannot be.
    let _ = store
        .audit(Decision::new(
            "daemon",
            "run.stop",
            format!("{asked}: stopping now"),
        ))
        .await;
    hurry.send_replace(Some(StopRequest::Now));
}

/// A run that paused by itself and is started again: with `exit_on_pause`
/// the start is the operator's word that the cause is fixed (the run exited
/// so that they could fix it), so it resumes, audited; without it the run
/// stays paused, as a restart after a crash must, and says so at once
/// instead of waiting silently. A pause an operator made stays either way.
async fn own_pause_at_start(store: &Store, config: &Config) -> Result<(), RunError> {
    let Some(reason) = store.pause_reason()? else {
        return Ok(());
    };
    if !config.exit_on_pause {
        println!("{}", console::PauseHint::of(config).line(&reason));
        return Ok(());
    }
    println!(
        "agent: the run had paused ({reason}); started again with --exit-on-pause, it resumes"
    );
    store
        .audit(Decision::new(
            "daemon",
            "run.resume",
            format!("started again with --exit-on-pause after the pause: {reason}"),
        ))
        .await?;
    crate::ctl::operations::set_paused(false)
        .await
        .map_err(|e| RunError::Failed(format!("cannot resume the paused run: {}", e.message)))
}

/// A file an operator without the socket creates to stop the daemon at
/// once; it stays, and keeps the next start from running, until removed.
pub const STOP_FILE: &str = "STOP";
const STOP_FILE_POLL: Duration = Duration::from_millis(250);

/// The supervisor stopped on its own: the escalation event may still be
/// queued behind the stop.
fn escalation_reason(listener: &mut broadcast::Receiver<Event>) -> String {
    let mut reason = "the supervisor stopped".to_string();
    while let Ok(event) = listener.try_recv() {
        if let Event::Escalated { reason: why } = event {
            reason = why;
        }
    }
    reason
}

/// The release an accepted change to the agent's own source was staged as,
/// pointed at as `current` once its iteration is committed; `None` when
/// there is none (no keeper, no candidate, or `current` cannot be written,
/// which is logged: the run goes on with the release it has).
fn handover_to(config: &Config, committed: &crate::domain::Iteration) -> Option<String> {
    use crate::upgrade::releases::{Pointer, Releases};
    if !config.upgrade.enabled || !crate::upgrade::keeper::is_child() {
        return None;
    }
    let commit = committed.commit.as_deref()?;
    let release = crate::upgrade::attempts::release_name(commit);
    let releases = Releases::of_state(&config.state_dir);
    if !releases
        .binary(&release, std::path::Path::new(""))
        .is_file()
    {
        return None;
    }
    match releases.point(Pointer::Current, &release) {
        Ok(()) => Some(release),
        Err(error) => {
            tracing::error!(%error, release, "cannot point `current` at the candidate; no handover");
            None
        }
    }
}

/// The final checkpoint: the run record says how the run ended, the store is
/// flushed, and the person watching reads one line.
async fn checkpoint(store: &Store, config: &Config, ending: &Ending) -> Result<(), RunError> {
    let mut run = store
        .run()?
        .unwrap_or_else(|| resume::new_run(&config.goal));
    match ending {
        Ending::Finished(_) => run.state = RunPhase::Finished,
        Ending::Escalated(reason) => run.last_escalation = Some(reason.clone()),
        Ending::Stopped | Ending::Paused(_) | Ending::Handover => {}
    }
    store.put_run(&run).await?;
    if matches!(ending, Ending::Handover) {
        backup_before_handover(store, config).await?;
    }
    let committed = committed_summary(store)?;
    let how = match ending {
        Ending::Finished(reason) => format!("finished: {reason}"),
        Ending::Stopped => "stopped".to_string(),
        Ending::Escalated(reason) => format!("escalated: {reason}"),
        Ending::Paused(reason) => format!("paused (--exit-on-pause): {reason}"),
        Ending::Handover => "handed over to the current release".to_string(),
    };
    store
        .audit(Decision::new(
            "daemon",
            "run.ended",
            format!("{how}; {committed}"),
        ))
        .await?;
    match ending {
        Ending::Finished(reason) => println!("agent: run finished ({reason}); {committed}"),
        Ending::Stopped => println!("agent: stopped, state checkpointed; {committed}"),
        Ending::Handover => {
            println!("agent: handing over to the current release, state checkpointed; {committed}")
        }
        Ending::Paused(reason) => {
            println!("{}", console::PauseHint::of(config).line(reason));
            println!("agent: exited on the pause, state checkpointed; {committed}");
        }
        Ending::Escalated(reason) => {
            tracing::error!(%reason, "the supervision tree escalated; state checkpointed");
            eprintln!("agent: escalated: {reason}; state checkpointed; {committed}");
        }
    }
    Ok(())
}

/// A backup of the store as the old release leaves it, beside the release
/// that takes over (`<state>/releases/<release>/before.backup`): what to
/// restore if the new release damages the store (`agent restore`).
async fn backup_before_handover(store: &Store, config: &Config) -> Result<(), RunError> {
    use crate::upgrade::releases::{Pointer, Releases};
    let releases = Releases::of_state(&config.state_dir);
    let next = releases
        .read(Pointer::Current)
        .map_err(|e| RunError::Failed(e.to_string()))?
        .ok_or_else(|| RunError::Failed("a handover with no current release".into()))?;
    let to = releases.dir.join(&next).join("before.backup");
    let iterations = store.backup_to(&to).await?;
    println!(
        "agent: backup of {iterations} committed iteration(s) before the handover: {}",
        to.display()
    );
    Ok(())
}

/// "12 iteration(s) committed: 5 changes kept, 4 no-change, 2 rejected, 1 failed"
fn committed_summary(store: &Store) -> Result<String, RunError> {
    let counts = store.outcome_counts()?;
    Ok(format!(
        "{} iteration(s) committed: {} change(s) kept, {} no-change, {} rejected, {} failed",
        counts.kept + counts.no_change + counts.rejected + counts.failed,
        counts.kept,
        counts.no_change,
        counts.rejected,
        counts.failed
    ))
}
