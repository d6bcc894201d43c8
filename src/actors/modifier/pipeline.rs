//! The modifier's judgement of one change, in order, each step a span with
//! its result: scope rules, syntax-tree rules, generated regression tests,
//! the validation command, the fitness command, supervised approval, then
//! one commit whose message names the iteration, the trace, the fitness
//! before and after and the rules checked. The first refusal ends it: the
//! change is archived on its variant ref and the worktree goes back to the
//! base commit, clean. An accepted change is archived too, as its commit.

use std::collections::BTreeSet;
use std::path::Path;

use tracing::Instrument;

use super::fitness::{self, Measure};
use super::upgrade;
use super::{blocking, confine, sandbox_started};
use crate::actors::Context;
use crate::config::Mode;
use crate::domain::{
    ActorKind, ApprovalDecision, ApprovalRequest, Judge, Outcome, RefusedBy, Validation, Variant,
    Verdict,
};
use crate::messages::{self, GovernorMsg, PeerError};
use crate::process::{self, CommandSpec, Ending};
use crate::safety::{self, ChangedFile, Rules};
use crate::sandbox::Reach;
use crate::store::Durable;
use crate::store::audit::Decision;
use crate::testgen;

/// A step's span; its result is recorded when the step ends.
macro_rules! step_span {
    ($name:literal, $iteration:expr) => {
        tracing::info_span!(
            $name,
            actor = ActorKind::Modifier.name(),
            iteration = $iteration as i64,
            result = tracing::field::Empty
        )
    };
}

/// How many failing lines a refusal keeps for a repair turn.
const REPAIR_LINES: usize = 40;

/// What refused a change.
#[derive(Debug)]
pub(super) struct Refusal {
    by: RefusedBy,
    reason: String,
    /// The first failing lines, when there are more than the reason says.
    details: Option<String>,
    fitness_after: Option<f64>,
}

impl Refusal {
    pub(super) fn new(
        by: impl Into<RefusedBy>,
        reason: String,
        fitness_after: Option<f64>,
    ) -> Refusal {
        Refusal {
            by: by.into(),
            reason,
            details: None,
            fitness_after,
        }
    }
}

/// What the pipeline has learned of a change so far.
struct Trial {
    iteration: u64,
    base: String,
    fitness_before: Option<f64>,
    rules_checked: Vec<String>,
    validation: Validation,
    generated_tests: Vec<String>,
    started_from: Option<u64>,
    /// The candidate release, when the change is to the agent's own source
    /// and `[upgrade]` is on.
    upgrade: Option<upgrade::Judged>,
    /// One of several candidates: judged without approval, which only the
    /// chosen one is asked for (`adopt`).
    candidate: bool,
}

impl Trial {
    /// A change not yet through any step.
    fn new(base: &str, judged: Judged) -> Trial {
        Trial {
            iteration: judged.iteration,
            base: base.to_string(),
            fitness_before: judged.fitness_before,
            rules_checked: Vec::new(),
            validation: Validation::NotRun,
            generated_tests: Vec::new(),
            started_from: judged.started_from,
            upgrade: None,
            candidate: judged.candidate,
        }
    }

    fn variant(
        &self,
        commit: String,
        outcome: Outcome,
        refused_by: Option<RefusedBy>,
        fitness_after: Option<f64>,
    ) -> Variant {
        Variant {
            iteration: self.iteration,
            commit,
            parent: self.base.clone(),
            outcome,
            refused_by,
            rules_checked: self.rules_checked.clone(),
            fitness_before: self.fitness_before,
            fitness_after,
            validation: self.validation.clone(),
            generated_tests: self.generated_tests.clone(),
            started_from: self.started_from,
            change_id: String::new(),
        }
    }
}

/// Which iteration's change is judged, from where.
pub(super) struct Judged {
    pub iteration: u64,
    pub fitness_before: Option<f64>,
    /// The earlier variant the worktree started from.
    pub started_from: Option<u64>,
    /// A candidate's change, judged in its own worktree.
    pub candidate: bool,
}

/// Judges the worktree's change against `base`; see the module.
pub(super) async fn validate(
    ctx: &Context,
    base: &str,
    judged: Judged,
    summary: &str,
) -> Result<Verdict, String> {
    let changed = changed_files(ctx).await?;
    if changed.is_empty() {
        return Ok(Verdict::NoChange);
    }
    let mut trial = Trial::new(base, judged);
    match steps(ctx, &mut trial, summary, &changed).await? {
        Ok(measure) => accept(ctx, &trial, summary, measure, changed.len()).await,
        Err(refusal) => refuse(ctx, &trial, refusal).await,
    }
}

/// The files the change touches: changed, added or deleted since the
/// worktree's last commit.
async fn changed_files(ctx: &Context) -> Result<Vec<String>, String> {
    let workspace = ctx.workspace.clone();
    blocking(move || workspace.changed_files().map_err(|e| e.to_string())).await
}

/// Keeps a change that passed every step: one commit on the agent branch,
/// archived as its variant, audited.
async fn accept(
    ctx: &Context,
    trial: &Trial,
    summary: &str,
    measure: Measure,
    files_changed: usize,
) -> Result<Verdict, String> {
    let Measure {
        fitness: fitness_after,
        signals: signals_after,
    } = measure;
    let message = commit_message(trial, summary, fitness_after, files_changed);
    let commit = commit_change(ctx, message, &trial.base).await?;
    if let Some(judged) = &trial.upgrade {
        upgrade::kept(ctx, trial.iteration, &commit, judged).await?;
    }
    let variant = trial.variant(commit.clone(), Outcome::Accepted, None, Some(fitness_after));
    let (workspace, iteration, marked) = (ctx.workspace.clone(), trial.iteration, commit.clone());
    let archived = blocking(move || {
        workspace
            .mark_variant(iteration, &marked)
            .map_err(|e| e.to_string())
    })
    .await;
    // A candidate's change passed; it is accepted when it is chosen.
    let action = if trial.candidate {
        "candidate.passed"
    } else {
        "change.accepted"
    };
    audit(
        ctx,
        action,
        format!(
            "iteration {iteration}: commit {commit}, fitness {} -> {fitness_after}, rules checked: {}",
            trial.fitness_before.map_or("?".into(), |f| f.to_string()),
            trial.rules_checked.join(", ")
        ),
    )
    .await?;
    Ok(Verdict::Accepted {
        commit,
        fitness_after,
        signals_after,
        files_changed,
        variant: kept(ctx, archived, variant).await,
    })
}

/// Commits the worktree's change on `parent`, in its own span.
async fn commit_change(ctx: &Context, message: String, parent: &str) -> Result<String, String> {
    let (workspace, parent) = (ctx.workspace.clone(), parent.to_string());
    blocking(move || {
        workspace
            .commit_all(&message, &parent)
            .map_err(|e| e.to_string())
    })
    .instrument(tracing::info_span!(
        "modifier.commit",
        actor = ActorKind::Modifier.name()
    ))
    .await
}

/// Refuses a change: it is archived on its variant ref with why, the
/// worktree goes back to the base, and the refusal is audited.
async fn refuse(ctx: &Context, trial: &Trial, refusal: Refusal) -> Result<Verdict, String> {
    let iteration = trial.iteration;
    tracing::Span::current().record("rule", refusal.by.as_str());
    let message = format!(
        "agent variant: iteration {iteration}, refused by {}\n\n{}\n\nRules checked: {}\nTrace: {}\nVariant of iteration: {iteration}\n",
        refusal.by,
        refusal.reason,
        trial.rules_checked.join(", "),
        trace_id()
    );
    let (workspace, parent) = (ctx.workspace.clone(), trial.base.clone());
    let archived = blocking(move || {
        workspace
            .archive_change(iteration, &message, &parent)
            .map_err(|e| e.to_string())
    })
    .await;
    let variant = archived.as_ref().map_or(String::new(), Clone::clone);
    if let Some(judged) = &trial.upgrade {
        upgrade::refused(ctx, iteration, &variant, judged, &refusal.reason).await?;
    }
    let variant = trial.variant(
        variant,
        Outcome::Rejected,
        Some(refusal.by.clone()),
        refusal.fitness_after,
    );
    super::rollback(&ctx.workspace, &trial.base).await?;
    audit_refused(ctx, iteration, &refusal).await?;
    Ok(Verdict::Rejected {
        details: refusal.details.unwrap_or_else(|| refusal.reason.clone()),
        reason: refusal.reason,
        fitness_after: refusal.fitness_after,
        variant: kept(ctx, archived, variant).await,
    })
}

/// Appends the verdict to the audit chain before it is acknowledged; it is
/// durable with the iteration's commit (a crash before that judges the
/// iteration's change again).
async fn audit(ctx: &Context, action: &str, detail: String) -> Result<(), String> {
    ctx.store
        .audit_with(
            Decision::new(ActorKind::Modifier.name(), action, detail),
            Durable::AtCommit,
        )
        .await
        .map(|_| ())
        .map_err(|e| format!("cannot audit {action}: {e}"))
}

/// Audits a refused change with what refused it.
async fn audit_refused(ctx: &Context, iteration: u64, refusal: &Refusal) -> Result<(), String> {
    let detail = format!(
        "iteration {iteration}: refused by {}: {}",
        refusal.by, refusal.reason
    );
    audit(ctx, "change.refused", detail).await
}

/// The variant when its ref was written, with its change's identity; an
/// archive that failed is said, not fatal: the verdict stands.
async fn kept<T>(
    ctx: &Context,
    archived: Result<T, String>,
    mut variant: Variant,
) -> Option<Variant> {
    match archived {
        Ok(_) => {
            let (workspace, commit) = (ctx.workspace.clone(), variant.commit.clone());
            variant.change_id =
                blocking(move || workspace.change_id(&commit).map_err(|e| e.to_string()))
                    .await
                    .unwrap_or_default();
            Some(variant)
        }
        Err(error) => {
            tracing::warn!(iteration = variant.iteration, %error, "cannot archive the variant");
            None
        }
    }
}

/// The steps up to approval; `Ok(Err)` is a refusal, `Err` a failure to
/// judge at all.
async fn steps(
    ctx: &Context,
    trial: &mut Trial,
    summary: &str,
    changed: &[String],
) -> Result<Result<Measure, Refusal>, String> {
    let changes = read_changes(ctx, &trial.base, changed).await?;
    if let Err(refusal) = check_rules(trial, &rules_for(ctx), &changes) {
        return Ok(Err(refusal));
    }

    let generate = step_span!("modifier.generate", trial.iteration);
    trial.generated_tests = generate_tests(ctx, changes)
        .instrument(generate.clone())
        .await?;
    generate.record("result", trial.generated_tests.len() as i64);

    let validation = step_span!("modifier.validation", trial.iteration);
    let validated = run_validation(ctx).instrument(validation.clone()).await;
    if let Err(refusal) = ended(&validation, validated) {
        trial.validation = Validation::Failed(refusal.reason.clone());
        return Ok(Err(refusal));
    }
    trial.validation = Validation::Passed;

    let fitness = step_span!("modifier.fitness", trial.iteration);
    let measured = run_fitness(ctx, trial.fitness_before)
        .instrument(fitness.clone())
        .await;
    let after = match ended(&fitness, measured) {
        Ok(after) => after,
        Err(refusal) => return Ok(Err(refusal)),
    };
    let fitness_after = after.fitness;

    if ctx.config.upgrade.enabled && own_source(&ctx.workspace.path) {
        let span = step_span!("modifier.upgrade", trial.iteration);
        let judged = upgrade::judge(ctx, trial.iteration, fitness_after)
            .instrument(span.clone())
            .await;
        match judged {
            Ok(judged) => {
                span.record("result", "passed");
                trial.upgrade = Some(judged);
            }
            Err((judged, refusal)) => {
                span.record("result", "refused");
                trial.upgrade = judged;
                return Ok(Err(refusal));
            }
        }
    }

    if ctx.config.mode == Mode::Supervised && !trial.candidate {
        let request = ApprovalRequest {
            iteration: trial.iteration,
            summary: summary.to_string(),
            files: changed.to_vec(),
            fitness_before: trial.fitness_before,
            fitness_after,
        };
        let span = step_span!("modifier.approval", trial.iteration);
        let decided = approval(ctx, request).instrument(span.clone()).await;
        if let Err(refusal) = ended(&span, decided) {
            return Ok(Err(refusal));
        }
    }
    Ok(Ok(after))
}

/// The scope rules, then the rules on the syntax trees, each a step with
/// its span; the first rule broken refuses the change.
fn check_rules(trial: &mut Trial, rules: &Rules, changes: &[ChangedFile]) -> Result<(), Refusal> {
    let refused = |violation: safety::Violation| {
        Refusal::new(
            RefusedBy::Rule(violation.rule.to_string()),
            violation.to_string(),
            None,
        )
    };
    let scope = step_span!("modifier.scope", trial.iteration);
    let checked = scope.in_scope(|| safety::scope(rules, changes));
    trial
        .rules_checked
        .extend(safety::SCOPE_RULES.map(String::from));
    ended(&scope, checked).map_err(refused)?;

    let syntax = step_span!("modifier.syntax", trial.iteration);
    let checked = syntax.in_scope(|| safety::parsing(|| safety::syntax(rules, changes)));
    trial
        .rules_checked
        .extend(safety::SYNTAX_RULES.map(String::from));
    ended(&syntax, checked).map_err(refused)
}

/// Records a step's result on its span: `passed` or `refused`.
fn ended<T, E>(span: &tracing::Span, result: Result<T, E>) -> Result<T, E> {
    span.record("result", if result.is_ok() { "passed" } else { "refused" });
    result
}

/// The changed files with their base and new texts.
async fn read_changes(
    ctx: &Context,
    base: &str,
    changed: &[String],
) -> Result<Vec<ChangedFile>, String> {
    let (workspace, base, changed) = (ctx.workspace.clone(), base.to_string(), changed.to_vec());
    blocking(move || {
        changed
            .iter()
            .map(|path| {
                Ok(ChangedFile {
                    path: path.clone(),
                    before: workspace.file_at(&base, path).map_err(|e| e.to_string())?,
                    after: std::fs::read_to_string(workspace.path.join(path)).ok(),
                })
            })
            .collect()
    })
    .await
}

/// The configured rules, with the agent's own evaluator and governor
/// protected when the worktree is its own source, and the state directory
/// when it lies inside the user's checkout.
fn rules_for(ctx: &Context) -> Rules {
    let mut rules = ctx.config.safety.clone();
    if own_source(&ctx.workspace.path) {
        rules
            .protected_paths
            .extend(ctx.config.own_source_protected.iter().cloned());
    }
    let canonical = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    let (state, checkout) = (
        canonical(&ctx.config.state_dir),
        canonical(&ctx.config.workspace),
    );
    if let Ok(inside) = state.strip_prefix(&checkout)
        && !inside.as_os_str().is_empty()
    {
        rules.protected_paths.push(format!("{}/", inside.display()));
    }
    rules
}

/// Whether the worktree holds this agent's own source (its `Cargo.toml`
/// names this package).
fn own_source(worktree: &Path) -> bool {
    std::fs::read_to_string(worktree.join("Cargo.toml"))
        .ok()
        .and_then(|text| text.parse::<toml::Table>().ok())
        .and_then(|manifest| {
            manifest
                .get("package")?
                .get("name")?
                .as_str()
                .map(|name| name == env!("CARGO_PKG_NAME"))
        })
        .unwrap_or(false)
}

/// Writes regression-test skeletons for the public functions the change
/// adds or edits that no test calls; returns the tests' names.
async fn generate_tests(ctx: &Context, changes: Vec<ChangedFile>) -> Result<Vec<String>, String> {
    let worktree = ctx.workspace.path.clone();
    blocking(move || {
        let sources: Vec<testgen::Source> = changes
            .into_iter()
            .filter(|c| c.path.starts_with("src/") && c.path.ends_with(".rs"))
            .filter_map(|c| {
                Some(testgen::Source {
                    path: c.path,
                    before: c.before,
                    after: c.after?,
                })
            })
            .collect();
        if sources.is_empty() {
            return Ok(Vec::new());
        }
        let called_by_tests = || {
            let mut called = BTreeSet::new();
            for (dir, whole_file) in [("src", false), ("tests", true)] {
                for file in rust_files(&worktree.join(dir)) {
                    if let Ok(text) = std::fs::read_to_string(&file) {
                        testgen::called_by_tests(&text, whole_file, &mut called);
                    }
                }
            }
            called
        };
        let mut names = Vec::new();
        let written = safety::parsing(|| testgen::generate(&sources, called_by_tests));
        for generated in written {
            let path = worktree.join(&generated.path);
            std::fs::write(&path, &generated.text)
                .map_err(|e| format!("cannot write a generated test to {}: {e}", path.display()))?;
            tracing::info!(file = %generated.path, tests = %generated.test, "generated regression tests");
            names.extend(generated.test.split(", ").map(String::from));
        }
        Ok(names)
    })
    .await
}

/// Every `.rs` file under `dir`, `target/` and hidden directories aside.
fn rust_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() && !name.starts_with('.') && name != "target" {
            found.extend(rust_files(&path));
        } else if name.ends_with(".rs") {
            found.push(path);
        }
    }
    found
}

/// The validation command, under its timeout.
async fn run_validation(ctx: &Context) -> Result<(), Refusal> {
    if let Some(checks) = &ctx.checks {
        return checks
            .validate(&ctx.workspace.path)
            .await
            .map_err(|why| Refusal::new(Judge::Validation, why, None));
    }
    let spec = CommandSpec::shell(
        &ctx.config.validation_command,
        &ctx.workspace.path,
        ctx.config.validation_timeout,
    );
    let confined = confine(ctx, spec, Reach::Check);
    let running = process::start(&confined)
        .map_err(|e| Refusal::new(Judge::Validation, e.to_string(), None))?;
    crash_point!("validation.running");
    let finished = running.wait().await;
    sandbox_started(ctx, &confined, &finished)
        .map_err(|why| Refusal::new(Judge::Validation, why, None))?;
    if finished.success() {
        return Ok(());
    }
    let why = match finished.ending {
        Ending::TimedOut => "timed out".to_string(),
        Ending::Cancelled => "was cancelled".to_string(),
        Ending::Exited(code) => format!(
            "failed ({})",
            code.map_or("signal".into(), |c| format!("status {c}"))
        ),
    };
    Err(Refusal {
        details: Some(finished.failing_lines(REPAIR_LINES)),
        ..Refusal::new(
            Judge::Validation,
            format!(
                "validation `{}` {why}: {}",
                ctx.config.validation_command,
                finished.first_error_line()
            ),
            None,
        )
    })
}

/// The fitness command; refused when it fails or gets worse.
async fn run_fitness(ctx: &Context, before: Option<f64>) -> Result<Measure, Refusal> {
    let after = fitness::measure(ctx, &ctx.workspace.path, Reach::Check)
        .await
        .map_err(|reason| Refusal::new(Judge::Fitness, reason, None))?;
    match before {
        Some(before) if after.fitness > before => Err(Refusal::new(
            Judge::Fitness,
            format!("fitness got worse: {before} → {}", after.fitness),
            Some(after.fitness),
        )),
        _ => Ok(after),
    }
}

/// Supervised mode: the governor holds the change until an operator decides.
async fn approval(ctx: &Context, request: ApprovalRequest) -> Result<(), Refusal> {
    let fitness_after = request.fitness_after;
    let decision = messages::call(ActorKind::Governor, ctx.config.approval_timeout, |reply| {
        GovernorMsg::RequestApproval { request, reply }
    })
    .await;
    let reason = match decision {
        Ok(Ok(ApprovalDecision::Approved)) => return Ok(()),
        Ok(Ok(ApprovalDecision::Rejected { reason })) => {
            format!("rejected by an operator: {reason}")
        }
        // The governor could not record the request: no one can approve
        // it, so the change is refused and the iteration asks again.
        Ok(Err(error)) => format!("approval not recorded: {error}"),
        Err(PeerError::Timeout(..)) => format!(
            "no decision within {}",
            humantime::format_duration(ctx.config.approval_timeout)
        ),
        // The governor restarted: the iteration is abandoned and asks again.
        Err(error) => format!("approval lost: {error}"),
    };
    Err(Refusal::new(Judge::Approval, reason, Some(fitness_after)))
}

/// The chosen candidate's accepted change onto the agent branch, which
/// must still be at `base`: approval first in supervised mode (a refusal is
/// the verdict that stands, audited), then the branch moves to the
/// candidate's commit, which becomes the iteration's variant. Any other
/// verdict is answered as it is.
pub(super) async fn adopt(
    ctx: &Context,
    base: &str,
    iteration: u64,
    summary: &str,
    verdict: Verdict,
) -> Result<Verdict, String> {
    let Verdict::Accepted {
        commit,
        fitness_after,
        variant,
        ..
    } = &verdict
    else {
        return Ok(verdict);
    };
    if ctx.config.mode == Mode::Supervised {
        let (workspace, of) = (ctx.workspace.clone(), commit.clone());
        let files =
            blocking(move || workspace.commit_paths(&of).map_err(|e| e.to_string())).await?;
        let request = ApprovalRequest {
            iteration,
            summary: summary.to_string(),
            files,
            fitness_before: variant.as_ref().and_then(|v| v.fitness_before),
            fitness_after: *fitness_after,
        };
        let span = step_span!("modifier.approval", iteration);
        let decided = approval(ctx, request).instrument(span.clone()).await;
        if let Err(refusal) = ended(&span, decided) {
            audit_refused(ctx, iteration, &refusal).await?;
            return Ok(Verdict::Rejected {
                details: refusal.reason.clone(),
                variant: variant.clone().map(|variant| Variant {
                    outcome: Outcome::Rejected,
                    refused_by: Some(refusal.by.clone()),
                    ..variant
                }),
                reason: refusal.reason,
                fitness_after: Some(*fitness_after),
            });
        }
    }
    let (workspace, chosen, parent) = (ctx.workspace.clone(), commit.clone(), base.to_string());
    blocking(move || {
        workspace
            .advance_to(&chosen, &parent)
            .and_then(|()| workspace.mark_variant(iteration, &chosen))
            .map(drop)
            .map_err(|e| e.to_string())
    })
    .instrument(tracing::info_span!(
        "modifier.commit",
        actor = ActorKind::Modifier.name()
    ))
    .await?;
    audit(
        ctx,
        "change.accepted",
        format!("iteration {iteration}: commit {commit}, the best of its candidates, fitness -> {fitness_after}"),
    )
    .await?;
    Ok(verdict)
}

/// The iteration's trace, as Jaeger shows it.
fn trace_id() -> String {
    crate::telemetry::traces::current_trace_id().unwrap_or_else(|| "not exported".into())
}

fn commit_message(trial: &Trial, summary: &str, after: f64, files: usize) -> String {
    let before = trial
        .fitness_before
        .map_or("?".to_string(), |b| b.to_string());
    let iteration = trial.iteration;
    let trace =
        crate::telemetry::traces::current_trace_id().unwrap_or_else(|| "not exported".into());
    let generated = if trial.generated_tests.is_empty() {
        String::new()
    } else {
        format!("Generated tests: {}\n", trial.generated_tests.join(", "))
    };
    let upgrade = trial
        .upgrade
        .as_ref()
        .map_or(String::new(), upgrade::Judged::commit_lines);
    format!(
        "agent: iteration {iteration}: {summary}\n\nFitness: {before} -> {after}\nFiles changed: {files}\nRules checked: {}\n{generated}{upgrade}Trace: {trace}\nIteration: {iteration}\n",
        trial.rules_checked.join(", ")
    )
}
