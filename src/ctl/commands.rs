//! Every ctl command: the function that carries it out and, beside it, the
//! one that renders its reply for a person. [`answer`] (the one path of every
//! operator action, from the socket or the dashboard) and `client::render`
//! only dispatch to them, so a command's behaviour and its output are read in
//! one place. The socket itself, its connections and `watch` are `server.rs`.

use std::path::Path;
use std::time::Duration;

use serde_json::{Map, Value};

use super::catalog;
use super::operations::{self, actor_error, peer_error};
use super::protocol::{
    ActorStatus, ApprovalInfo, ArgInfo, Command, ErrorKind, HistoryEntry, MessageInfo,
    OutcomeCounts, ReleaseStatus, Reply, StatusReply, TreeChild, TreeReply, WireError,
};
use super::server::{ServerContext, StopRequest};
use crate::domain::{ActorKind, FaultKind, Iteration};
use crate::messages::{self, Common, GovernorMsg, PlannerMsg};
use crate::store::audit::Decision;
use crate::store::{ApprovalRecord, StoreError};
use crate::supervisor::{self, SupervisorMsg};

/// How long a command waits for an actor's answer.
const QUICK: Duration = Duration::from_secs(10);

/// Carries out one command for `who` (`ctl`, `dashboard`): the one path of
/// every operator action, audited under that name before it is carried out.
pub async fn answer(
    command: Command,
    context: &ServerContext,
    who: &str,
) -> Result<Reply, WireError> {
    audit(&command, context, who).await?;
    match command {
        Command::Status => status(context).await,
        Command::Tree => tree(context).await,
        Command::Send {
            actor,
            message,
            args,
        } => send_message(&actor, message, &args).await,
        Command::Messages { actor } => list_messages(&actor),
        Command::Pause => set_paused(true).await,
        Command::Resume => set_paused(false).await,
        Command::Stop { now } => stop(now, context),
        Command::Goal { text } => set_goal(text).await,
        Command::Approvals => approvals().await,
        Command::Approve { id } => decide(id, true, None).await,
        Command::Reject { id, reason } => decide(id, false, reason).await,
        Command::Checkpoint => checkpoint(context).await,
        Command::Fault { actor, fault } => inject_fault(&actor, &fault, context),
        Command::Watch => Err(WireError::new(
            ErrorKind::Internal,
            "watch is served as a stream",
        )),
        Command::Rebase => operations::rebase().await.map(done),
        Command::Backup { to } => backup(&to, context).await,
        Command::Upgrade { binary } => upgrade(&binary, context).await,
        Command::History { last } => history(last, context),
    }
}

pub(super) fn command_name(command: &Command) -> &'static str {
    match command {
        Command::Status => "status",
        Command::Tree => "tree",
        Command::Send { .. } => "send",
        Command::Messages { .. } => "messages",
        Command::Pause => "pause",
        Command::Resume => "resume",
        Command::Stop { .. } => "stop",
        Command::Goal { .. } => "goal",
        Command::Approvals => "approvals",
        Command::Approve { .. } => "approve",
        Command::Reject { .. } => "reject",
        Command::Checkpoint => "checkpoint",
        Command::Fault { .. } => "fault",
        Command::Watch => "watch",
        Command::History { .. } => "history",
        Command::Backup { .. } => "backup",
        Command::Rebase => "rebase",
        Command::Upgrade { .. } => "upgrade",
    }
}

/// Records a command that changes something in the audit chain before it
/// is carried out: a command the chain cannot hold is refused.
async fn audit(command: &Command, context: &ServerContext, who: &str) -> Result<(), WireError> {
    let Some(detail) = audited(command) else {
        return Ok(());
    };
    context
        .store
        .audit(Decision::new(who, "ctl.command", detail))
        .await
        .map_err(|e| {
            WireError::new(
                ErrorKind::Internal,
                format!("cannot audit the command: {e}"),
            )
        })?;
    Ok(())
}

/// What a command that changes something records in the audit chain
/// (`None` for a query).
fn audited(command: &Command) -> Option<String> {
    let detail = match command {
        Command::Send {
            actor,
            message,
            args,
        } => {
            let kind = catalog::actor(actor).ok()?;
            if !catalog::is_command(kind, message) {
                return None;
            }
            format!(
                "send {actor} {message} {}",
                serde_json::Value::Object(args.clone())
            )
        }
        Command::Pause => "pause".into(),
        Command::Resume => "resume".into(),
        Command::Stop { now } => format!("stop{}", if *now { " --now" } else { "" }),
        Command::Goal { text } => format!("goal {text:?}"),
        Command::Approve { id } => format!("approve {id}"),
        Command::Reject { id, reason } => format!(
            "reject {id}{}",
            reason
                .as_ref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        ),
        Command::Fault { actor, fault } => format!("fault {actor} {fault}"),
        Command::Rebase => "rebase".into(),
        Command::Upgrade { binary } => format!("upgrade {binary}"),
        _ => return None,
    };
    Some(detail)
}

/// The reply of a command that only reports what it did; rendered as the
/// message itself.
fn done(message: impl Into<String>) -> Reply {
    Reply::Done {
        message: message.into(),
    }
}

fn internal(error: impl std::fmt::Display) -> WireError {
    WireError::new(ErrorKind::Internal, error.to_string())
}

// ---------------------------------------------------------------- status --

/// `status`: the run as the planner sees it, the backend, and every actor.
async fn status(context: &ServerContext) -> Result<Reply, WireError> {
    let planner = messages::call(ActorKind::Planner, QUICK, PlannerMsg::Status)
        .await
        .map_err(peer_error)?;
    let children = children().await?;
    Ok(Reply::Status(Box::new(StatusReply {
        goal: planner.goal,
        run_state: planner.run_state.as_str().to_string(),
        iteration: planner.iteration,
        in_flight: planner.in_flight,
        fitness: planner.last_fitness,
        pause_reason: planner.pause_reason,
        waiting: planner.waiting,
        failures: planner.failures,
        outcomes: OutcomeCounts {
            kept: planner.outcomes.kept,
            no_change: planner.outcomes.no_change,
            rejected: planner.outcomes.rejected,
            failed: planner.outcomes.failed,
        },
        backend: context.backend.clone(),
        mode: context.mode.clone(),
        actors: children
            .into_iter()
            .map(|child| ActorStatus {
                name: child.kind.name().to_string(),
                status: child.status.to_string(),
                restarts: child.restarts,
                last_error: child.last_error,
            })
            .collect(),
        release: release(context),
    })))
}

/// The release a keeper runs this daemon as: permanent when the
/// `permanent` pointer names it (or names none and it is the installed one).
fn release(context: &ServerContext) -> Option<ReleaseStatus> {
    use crate::upgrade::releases::{INSTALLED, Pointer};
    let releases = context.releases.as_ref()?;
    let name = crate::upgrade::keeper::running_release()?;
    let permanent = match releases.read(Pointer::Permanent) {
        Ok(Some(permanent)) => permanent == name,
        Ok(None) => name == INSTALLED,
        Err(_) => false,
    };
    let commit = context.store.upgrades().ok().and_then(|attempts| {
        attempts
            .into_iter()
            .rev()
            .find(|attempt| attempt.release == name)
            .map(|attempt| attempt.commit)
    });
    Some(ReleaseStatus {
        name,
        version: env!("CARGO_PKG_VERSION").to_string(),
        commit,
        permanent,
        since_ms: context.started_ms,
    })
}

/// The supervisor's children as it reports them (`status` and `tree`).
async fn children() -> Result<Vec<supervisor::ChildStatus>, WireError> {
    let supervisor =
        ractor::ActorRef::<SupervisorMsg>::where_is(supervisor::NAME).ok_or_else(|| {
            WireError::new(ErrorKind::ActorRestarting, "the supervisor is not running")
        })?;
    supervisor
        .call(SupervisorMsg::Children, Some(QUICK))
        .await
        .ok()
        .and_then(|r| r.success_or(()).ok())
        .ok_or_else(|| WireError::new(ErrorKind::Timeout, "the supervisor did not answer"))
}

/// `status` for a person: the run, then one row per actor.
pub fn render_status(status: &StatusReply) -> String {
    let mut out = String::new();
    out.push_str(&format!("goal:       {}\n", status.goal));
    out.push_str(&format!("run state:  {}\n", status.run_state));
    if let Some(reason) = &status.pause_reason {
        out.push_str(&format!("paused:     {reason}\n"));
    }
    if let Some(reason) = &status.waiting {
        out.push_str(&format!("waiting:    {reason}\n"));
    }
    if status.failures > 0 {
        out.push_str(&format!(
            "failures:   {} attempt(s) abandoned in a row\n",
            status.failures
        ));
    }
    let in_flight = status
        .in_flight
        .map(|n| format!(" (iteration {n} in flight)"))
        .unwrap_or_default();
    let o = status.outcomes;
    out.push_str(&format!(
        "iterations: {} committed{in_flight}: {} change(s) kept, {} no-change, {} rejected, {} failed\n",
        status.iteration, o.kept, o.no_change, o.rejected, o.failed
    ));
    if let Some(release) = &status.release {
        out.push_str(&format!(
            "release:    {} ({}{}), {} since {}\n",
            release.name,
            release.version,
            release
                .commit
                .as_ref()
                .map_or(String::new(), |c| format!(", commit {c}")),
            if release.permanent {
                "permanent"
            } else {
                "on probation"
            },
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(release.since_ms)
            )
        ));
    }
    if let Some(fitness) = status.fitness {
        out.push_str(&format!("fitness:    {fitness}\n"));
    }
    out.push_str(&format!(
        "backend:    {} ({} mode)\n\n",
        status.backend, status.mode
    ));
    out.push_str(&format!(
        "{:<11} {:<11} {:>8}  {}\n",
        "ACTOR", "STATUS", "RESTARTS", "LAST ERROR"
    ));
    for actor in &status.actors {
        out.push_str(&format!(
            "{:<11} {:<11} {:>8}  {}\n",
            actor.name,
            actor.status,
            actor.restarts,
            actor.last_error.as_deref().unwrap_or("-")
        ));
    }
    out.trim_end().to_string()
}

// ------------------------------------------------------------------ tree --

/// `tree`: the supervision tree as configured, with each child's state.
async fn tree(context: &ServerContext) -> Result<Reply, WireError> {
    let children = children().await?;
    let spec = &context.tree;
    Ok(Reply::Tree(TreeReply {
        strategy: format!("{:?}", spec.strategy),
        max_restarts: spec.intensity.max_restarts,
        within: humantime::format_duration(spec.intensity.within).to_string(),
        children: children
            .into_iter()
            .map(|child| TreeChild {
                name: child.kind.name().to_string(),
                restart: spec
                    .children
                    .iter()
                    .find(|c| c.kind == child.kind)
                    .map_or("?".into(), |c| format!("{:?}", c.restart).to_lowercase()),
                status: child.status.to_string(),
                restarts: child.restarts,
                uptime_ms: child.uptime.map(|u| u.as_millis() as u64),
                last_error: child.last_error,
            })
            .collect(),
    }))
}

/// `tree` for a person: the strategy, then one branch per child.
pub fn render_tree(tree: &TreeReply) -> String {
    let mut out = format!(
        "supervisor  strategy {}, at most {} restarts within {}\n",
        tree.strategy, tree.max_restarts, tree.within
    );
    let count = tree.children.len();
    for (i, child) in tree.children.iter().enumerate() {
        let branch = if i + 1 == count {
            "└──"
        } else {
            "├──"
        };
        let uptime = child.uptime_ms.map_or("-".to_string(), |ms| {
            humantime::format_duration(Duration::from_secs(ms / 1000)).to_string()
        });
        out.push_str(&format!(
            "{branch} {:<11} {:<10} {:<11} restarts {:<3} up {}{}\n",
            child.name,
            child.restart,
            child.status,
            child.restarts,
            uptime,
            child
                .last_error
                .as_ref()
                .map(|e| format!("  last error: {e}"))
                .unwrap_or_default()
        ));
    }
    out.trim_end().to_string()
}

// ------------------------------------------------------------------ send --

/// `send`: one message of the catalogue, delivered by its entry's handler.
async fn send_message(
    actor: &str,
    message: String,
    args: &Map<String, Value>,
) -> Result<Reply, WireError> {
    let kind = catalog::actor(actor)?;
    let reply = catalog::send(kind, &message, args).await?;
    Ok(Reply::Sent {
        actor: kind.name().into(),
        message,
        reply,
    })
}

/// Every entry's reply is shown as the JSON its handler built, so that what
/// a person reads is what `--json` and scripts get.
pub fn render_sent(actor: &str, message: &str, reply: &Value) -> String {
    format!(
        "{actor} {message}:\n{}",
        serde_json::to_string_pretty(reply).unwrap_or_default()
    )
}

// -------------------------------------------------------------- messages --

/// `messages` (`send <actor> --list`): the catalogue of one actor.
fn list_messages(actor: &str) -> Result<Reply, WireError> {
    let kind = catalog::actor(actor)?;
    Ok(Reply::Messages {
        actor: kind.name().into(),
        messages: catalog::messages_of(kind),
    })
}

/// `messages` for a person: one row per message, with its arguments.
pub fn render_messages(actor: &str, messages: &[MessageInfo]) -> String {
    let mut out =
        format!("messages of {actor} (agent ctl send {actor} <message> [--arg name=value]):\n");
    for m in messages {
        let args: Vec<String> = m.args.iter().map(argument_usage).collect();
        out.push_str(&format!(
            "  {:<14} {:<8} {:<28} {}\n",
            m.name,
            m.kind,
            args.join(" "),
            m.description
        ));
    }
    out.trim_end().to_string()
}

/// `name=<kind>`, in brackets when the argument may be left out.
fn argument_usage(arg: &ArgInfo) -> String {
    if arg.required {
        format!("{}=<{}>", arg.name, arg.kind)
    } else {
        format!("[{}=<{}>]", arg.name, arg.kind)
    }
}

// ---------------------------------------------------- pause, resume, stop --

/// `pause` and `resume`.
async fn set_paused(paused: bool) -> Result<Reply, WireError> {
    operations::set_paused(paused).await?;
    Ok(done(if paused {
        "paused: no new iteration starts until `agent ctl resume`"
    } else {
        "resumed"
    }))
}

/// `stop`: asks the daemon to stop; it answers before it does.
fn stop(now: bool, context: &ServerContext) -> Result<Reply, WireError> {
    let request = if now {
        StopRequest::Now
    } else {
        StopRequest::Graceful
    };
    context.stop.send_replace(Some(request));
    Ok(done(if now {
        "stopping now: the in-flight iteration is abandoned"
    } else {
        "stopping: the in-flight iteration finishes first"
    }))
}

// ------------------------------------------------------------------ goal --

/// `goal`: replaces the goal from the next iteration on.
async fn set_goal(text: String) -> Result<Reply, WireError> {
    operations::set_goal(text.clone()).await?;
    Ok(done(format!(
        "goal set to \"{}\"; the next iteration pursues it",
        text.trim()
    )))
}

// ------------------------------------------------------------- approvals --

/// `approvals`: every change that waited, waits or was decided.
async fn approvals() -> Result<Reply, WireError> {
    let approvals = messages::call(ActorKind::Governor, QUICK, GovernorMsg::Approvals)
        .await
        .map_err(peer_error)?
        .map_err(actor_error)?;
    Ok(Reply::Approvals {
        approvals: approvals.into_iter().map(approval_info).collect(),
    })
}

fn approval_info(approval: ApprovalRecord) -> ApprovalInfo {
    ApprovalInfo {
        id: approval.id,
        iteration: approval.iteration,
        state: approval.state.as_str().to_string(),
        summary: approval.summary,
        files: approval.files,
        fitness_before: approval.fitness_before,
        fitness_after: approval.fitness_after,
        reason: approval.reason,
    }
}

/// `approvals` for a person: one row per approval, or a line saying there are none.
pub fn render_approvals(approvals: &[ApprovalInfo]) -> String {
    if approvals.is_empty() {
        return "no approvals".into();
    }
    let mut out = format!(
        "{:<10} {:<9} {:>9}  {}\n",
        "ID", "STATE", "FITNESS", "CHANGE"
    );
    for a in approvals {
        let fitness = format!(
            "{}→{}",
            a.fitness_before.map_or("?".into(), |f| f.to_string()),
            a.fitness_after
        );
        out.push_str(&format!(
            "{:<10} {:<9} {:>9}  iteration {}: {} ({} file(s)){}\n",
            a.id,
            a.state,
            fitness,
            a.iteration,
            a.summary,
            a.files.len(),
            a.reason
                .as_ref()
                .map(|r| format!(" — {r}"))
                .unwrap_or_default()
        ));
    }
    out.trim_end().to_string()
}

/// `approve` and `reject`.
async fn decide(id: String, approve: bool, reason: Option<String>) -> Result<Reply, WireError> {
    let approval = operations::decide(id, approve, reason).await?;
    Ok(done(format!(
        "{} {} (iteration {})",
        approval.state, approval.id, approval.iteration
    )))
}

// ------------------------------------------------------------ checkpoint --

/// `checkpoint`: everything the daemon holds durably (iterations, ledger,
/// goal, approvals, jobs) is written as it happens; the flush makes the last
/// of it reach the disk before this reply. Rendered as its message.
async fn checkpoint(context: &ServerContext) -> Result<Reply, WireError> {
    context
        .store
        .flush()
        .await
        .map_err(|e| WireError::new(ErrorKind::Internal, format!("flush failed: {e}")))?;
    let iterations = context
        .store
        .last_iteration()
        .map_err(internal)?
        .map_or(0, |r| r.number);
    Ok(Reply::Checkpoint {
        iterations,
        message: format!("checkpoint written: {iterations} iteration(s) committed, store flushed"),
    })
}

// ----------------------------------------------------------------- fault --

/// `fault`: makes an actor panic, fail or hang, to see the supervisor act.
fn inject_fault(actor: &str, fault: &str, context: &ServerContext) -> Result<Reply, WireError> {
    if !context.faults_allowed {
        return Err(WireError::new(
            ErrorKind::NotPermitted,
            "fault injection is allowed only in debug mode (--mode debug) or with [debug] fault_injection = true",
        ));
    }
    let kind = catalog::actor(actor)?;
    let fault: FaultKind = fault.parse().map_err(|_| {
        WireError::new(
            ErrorKind::BadArguments,
            format!("unknown fault \"{fault}\"; expected panic, error or hang"),
        )
    })?;
    messages::send_common(kind, Common::Fault(fault)).map_err(peer_error)?;
    Ok(done(format!("injected {} into {kind}", fault.name())))
}

// --------------------------------------------------------------- upgrade --

/// `upgrade`: stages the binary as a release, points `current` at it and
/// stops for the keeper to hand over; refused without a keeper.
async fn upgrade(binary: &str, context: &ServerContext) -> Result<Reply, WireError> {
    let refused = |message: String| WireError::new(ErrorKind::Refused, message);
    let Some(releases) = context.releases.clone() else {
        return Err(refused(
            "no keeper runs this agent: start it with [upgrade] enabled = true".into(),
        ));
    };
    let binary = std::path::PathBuf::from(binary);
    if !binary.is_absolute() || !binary.is_file() {
        return Err(refused(format!(
            "{}: expected the path of an agent binary",
            binary.display()
        )));
    }
    let release = format!("upgrade-{}", crate::store::now_ms());
    let staged = release.clone();
    tokio::task::spawn_blocking(move || {
        use crate::upgrade::releases::Pointer;
        releases.stage(&staged, &binary)?;
        releases.point(Pointer::Current, &staged)
    })
    .await
    .map_err(|e| WireError::new(ErrorKind::Internal, e.to_string()))?
    .map_err(|e| {
        WireError::new(
            ErrorKind::Internal,
            format!("cannot stage the release: {e}"),
        )
    })?;
    context.stop.send_replace(Some(StopRequest::Handover));
    Ok(done(format!(
        "release {release} is current: the in-flight iteration finishes, then the keeper starts it on probation"
    )))
}

// ---------------------------------------------------------------- backup --

/// `backup`: a consistent copy of the store, written to `to`. The copy and
/// its fsync run on the blocking pool, so the daemon keeps answering (status
/// above all) while a large store is copied.
async fn backup(to: &str, context: &ServerContext) -> Result<Reply, WireError> {
    let iterations = context
        .store
        .backup_to(Path::new(to))
        .await
        .map_err(|e| match e {
            // What `write_backup` says (the file cannot be written) is the
            // operator's to fix, as before; anything else is the daemon's.
            StoreError::Backup(_) => WireError::new(ErrorKind::Refused, e.to_string()),
            e => internal(e),
        })?;
    Ok(done(format!(
        "backup of {iterations} committed iteration(s) written to {to}"
    )))
}

// --------------------------------------------------------------- history --

/// `history`: the last committed iterations (20 unless asked otherwise).
fn history(last: Option<usize>, context: &ServerContext) -> Result<Reply, WireError> {
    let records = context
        .store
        .iterations(last.unwrap_or(20))
        .map_err(internal)?;
    let iterations = records
        .iter()
        .map(|i| Ok(history_entry(i, &context.store.siblings(i.number)?)))
        .collect::<Result<_, crate::store::StoreError>>()
        .map_err(internal)?;
    Ok(Reply::History { iterations })
}

/// One iteration as `history` shows it, with the other candidates its
/// iteration ran beside it (`siblings`, by slot).
pub fn history_entry(i: &Iteration, siblings: &[crate::domain::Sibling]) -> HistoryEntry {
    HistoryEntry {
        others: siblings
            .iter()
            .map(|sibling| super::protocol::OtherCandidate {
                slot: sibling.slot,
                sibling_of: i.number,
                outcome: sibling.experience.outcome.as_str().to_string(),
                rule: sibling
                    .variant
                    .as_ref()
                    .and_then(|v| v.refused_by.as_ref())
                    .map(ToString::to_string),
                fitness_after: sibling.experience.fitness_after,
                variant: sibling.variant.as_ref().map(|v| v.commit.clone()),
            })
            .collect(),
        iteration: i.number,
        capability: i.capability.clone(),
        outcome: i.outcome.as_str().to_string(),
        fitness_before: i.fitness_before,
        fitness_after: i.fitness_after,
        input_tokens: i.usage.input_tokens,
        output_tokens: i.usage.output_tokens,
        cost_usd: i.usage.cost_usd,
        duration_ms: i.duration.as_millis() as u64,
        commit: i.commit.clone(),
        summary: i.summary.clone(),
        rule: i
            .variant
            .as_ref()
            .and_then(|v| v.refused_by.as_ref())
            .map(ToString::to_string),
        rules: i
            .variant
            .as_ref()
            .map(|v| v.rules_checked.clone())
            .unwrap_or_default(),
        variant: i.variant.as_ref().map(|v| v.commit.clone()),
    }
}

/// The other candidates of an iteration, in a few words: ` (+3 others:
/// rejected, accepted, job-failed)`.
fn others(others: &[super::protocol::OtherCandidate]) -> String {
    if others.is_empty() {
        return String::new();
    }
    let outcomes: Vec<&str> = others.iter().map(|o| o.outcome.as_str()).collect();
    format!(" (+{} others: {})", others.len(), outcomes.join(", "))
}

/// `history` for a person: one row per iteration, or a line saying there are none.
pub fn render_history(iterations: &[HistoryEntry]) -> String {
    if iterations.is_empty() {
        return "no committed iterations yet".into();
    }
    let mut out = String::new();
    for r in iterations {
        out.push_str(&format!(
            "{:>4}  {:<24} {:<10} {:>6} tok  {:>6.1}s  {}{}\n",
            r.iteration,
            r.capability,
            r.outcome,
            r.input_tokens + r.output_tokens,
            r.duration_ms as f64 / 1000.0,
            r.summary,
            others(&r.others)
        ));
    }
    out.trim_end().to_string()
}
