//! What `agent ctl send <actor> <message>` can deliver: every actor's public
//! messages, each entry with its arguments, its description and its own
//! handler — so an entry cannot be listed without being wired. Arguments are
//! checked here, the typed message is built at this edge and the actor's
//! answer turned into the entry's reply type (`replies`), which travels as
//! JSON. `send <actor> --list` prints this catalogue.
//! Messages that are also ctl commands (pause, resume, goal) call the same
//! function in `operations` as the command does.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};

use super::operations::{self, actor_error, peer_error};
use super::protocol::{ArgInfo, ErrorKind, MessageInfo, WireError};
use super::replies::*;
use crate::domain::{ActorKind, Signals};
use crate::messages::{
    self, Common, ExecutorMsg, GovernorMsg, LearnerMsg, ModifierMsg, PeerError, PlannerMsg,
    ResearcherMsg,
};

const QUICK: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Query,
    Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ArgKind {
    Text,
    Integer,
    TextList,
}

struct Arg {
    name: &'static str,
    kind: ArgKind,
    required: bool,
}

type Reply = Result<Value, WireError>;
/// Delivers one message with checked arguments and returns the reply as JSON.
type Handler = fn(Args) -> Pin<Box<dyn Future<Output = Reply> + Send>>;

struct Spec {
    actor: ActorKind,
    name: &'static str,
    kind: Kind,
    args: &'static [Arg],
    description: &'static str,
    handler: Handler,
}

const fn arg(name: &'static str, kind: ArgKind, required: bool) -> Arg {
    Arg {
        name,
        kind,
        required,
    }
}

static CATALOG: &[Spec] = &[
    Spec {
        actor: ActorKind::Governor,
        name: "status",
        kind: Kind::Query,
        args: &[],
        description: "pause flag, tokens spent in the last 24h against the budget, cost so far, permits granted",
        handler: |args| Box::pin(governor_status(args)),
    },
    Spec {
        actor: ActorKind::Governor,
        name: "pause",
        kind: Kind::Command,
        args: &[],
        description: "deny permits until resumed (the in-flight iteration finishes)",
        handler: |args| Box::pin(governor_pause(args)),
    },
    Spec {
        actor: ActorKind::Governor,
        name: "resume",
        kind: Kind::Command,
        args: &[],
        description: "grant permits again",
        handler: |args| Box::pin(governor_resume(args)),
    },
    Spec {
        actor: ActorKind::Governor,
        name: "budgets",
        kind: Kind::Query,
        args: &[],
        description: "every budget: its limit, what is spent and left, when it frees up, whether it was set live",
        handler: |args| Box::pin(governor_budgets(args)),
    },
    Spec {
        actor: ActorKind::Governor,
        name: "set-budget",
        kind: Kind::Command,
        args: &[
            arg("name", ArgKind::Text, true),
            arg("value", ArgKind::Text, true),
        ],
        description: "change one budget live (tokens_per_day, usd_per_day, iterations_per_hour, deadline; `none` lifts a limit); audited, kept across restarts",
        handler: |args| Box::pin(governor_set_budget(args)),
    },
    Spec {
        actor: ActorKind::Learner,
        name: "stats",
        kind: Kind::Query,
        args: &[],
        description: "per-capability attempts, acceptances, mean reward, fitness gain, tokens and cost (seconds per attempt, files per kept change)",
        handler: |args| Box::pin(learner_stats(args)),
    },
    Spec {
        actor: ActorKind::Learner,
        name: "rules",
        kind: Kind::Query,
        args: &[],
        description: "the learned rules (\"for warning X, capability Y works\"): weight, evidence, whether each holds; how many were dropped",
        handler: |args| Box::pin(learner_rules(args)),
    },
    Spec {
        actor: ActorKind::Learner,
        name: "experiences",
        kind: Kind::Query,
        args: &[arg("last", ArgKind::Integer, false)],
        description: "the latest experiences with the situation each was in (default 10)",
        handler: |args| Box::pin(learner_experiences(args)),
    },
    Spec {
        actor: ActorKind::Learner,
        name: "advise",
        kind: Kind::Query,
        args: &[
            arg("candidates", ArgKind::TextList, true),
            arg("warnings", ArgKind::TextList, false),
        ],
        description: "rank capabilities as the next plan would, in a situation given as warning codes (code or code=count)",
        handler: |args| Box::pin(learner_advise(args)),
    },
    Spec {
        actor: ActorKind::Learner,
        name: "forget",
        kind: Kind::Command,
        args: &[arg("capability", ArgKind::Text, true)],
        description: "drop what was learned about a capability (durable with the next commit)",
        handler: |args| Box::pin(learner_forget(args)),
    },
    Spec {
        actor: ActorKind::Researcher,
        name: "status",
        kind: Kind::Query,
        args: &[],
        description: "cache hits and misses filled",
        handler: |args| Box::pin(researcher_status(args)),
    },
    Spec {
        actor: ActorKind::Researcher,
        name: "cache",
        kind: Kind::Query,
        args: &[],
        description: "the research cache: hits, misses, entries and bytes",
        handler: |args| Box::pin(researcher_status(args)),
    },
    Spec {
        actor: ActorKind::Researcher,
        name: "research",
        kind: Kind::Query,
        args: &[arg("topic", ArgKind::Text, true)],
        description: "notes on a topic, from the cache or filled now",
        handler: |args| Box::pin(researcher_research(args)),
    },
    Spec {
        actor: ActorKind::Researcher,
        name: "invalidate",
        kind: Kind::Command,
        args: &[arg("topic", ArgKind::Text, true)],
        description: "drop a cached answer so the next request fills it again",
        handler: |args| Box::pin(researcher_invalidate(args)),
    },
    Spec {
        actor: ActorKind::Executor,
        name: "capabilities",
        kind: Kind::Query,
        args: &[],
        description: "what the cognition backend can do, and the tools discovered on MCP servers (registered only when their validation call succeeded)",
        handler: |args| Box::pin(executor_capabilities(args)),
    },
    Spec {
        actor: ActorKind::Executor,
        name: "jobs",
        kind: Kind::Query,
        args: &[arg("last", ArgKind::Integer, false)],
        description: "the latest cognition jobs (default 10)",
        handler: |args| Box::pin(executor_jobs(args)),
    },
    Spec {
        actor: ActorKind::Executor,
        name: "kill-job",
        kind: Kind::Command,
        args: &[arg("job", ArgKind::Integer, true)],
        description: "kill a running job's process group (or its job on the MCP server)",
        handler: |args| Box::pin(executor_kill_job(args)),
    },
    Spec {
        actor: ActorKind::Modifier,
        name: "status",
        kind: Kind::Query,
        args: &[],
        description: "committed head, its fitness, changes accepted and rolled back, files changed now",
        handler: |args| Box::pin(modifier_status(args)),
    },
    Spec {
        actor: ActorKind::Modifier,
        name: "variants",
        kind: Kind::Query,
        args: &[arg("last", ArgKind::Integer, false)],
        description: "the archive of changes, accepted and refused, with parent, rule, fitness and validation (default 20)",
        handler: |args| Box::pin(modifier_variants(args)),
    },
    Spec {
        actor: ActorKind::Modifier,
        name: "upgrades",
        kind: Kind::Query,
        args: &[],
        description: "every self-upgrade attempt: commit, release, build time, the agent evaluation's figures, outcome and reason",
        handler: |args| Box::pin(modifier_upgrades(args)),
    },
    Spec {
        actor: ActorKind::Modifier,
        name: "rollback",
        kind: Kind::Command,
        args: &[],
        description: "put the worktree back at the committed head (pause first)",
        handler: |args| Box::pin(modifier_rollback(args)),
    },
    Spec {
        actor: ActorKind::Planner,
        name: "status",
        kind: Kind::Query,
        args: &[],
        description: "goal, run state, committed iterations, the iteration in flight",
        handler: |args| Box::pin(planner_status(args)),
    },
    Spec {
        actor: ActorKind::Planner,
        name: "tick",
        kind: Kind::Command,
        args: &[],
        description: "start the next iteration now if one is allowed",
        handler: |args| Box::pin(planner_tick(args)),
    },
    Spec {
        actor: ActorKind::Planner,
        name: "goal",
        kind: Kind::Command,
        args: &[arg("text", ArgKind::Text, true)],
        description: "replace the goal from the next iteration on",
        handler: |args| Box::pin(planner_goal(args)),
    },
];

/// The catalogue of one actor.
pub fn messages_of(actor: ActorKind) -> Vec<MessageInfo> {
    CATALOG
        .iter()
        .filter(|spec| spec.actor == actor)
        .map(|spec| MessageInfo {
            name: spec.name.to_string(),
            kind: match spec.kind {
                Kind::Query => "query",
                Kind::Command => "command",
            }
            .to_string(),
            args: spec
                .args
                .iter()
                .map(|a| ArgInfo {
                    name: a.name.to_string(),
                    kind: match a.kind {
                        ArgKind::Text => "string",
                        ArgKind::Integer => "integer",
                        ArgKind::TextList => "string list",
                    }
                    .to_string(),
                    required: a.required,
                })
                .collect(),
            description: spec.description.to_string(),
        })
        .collect()
}

/// Parses an actor name into a typed error the client can show.
pub fn actor(name: &str) -> Result<ActorKind, WireError> {
    name.parse().map_err(|_| {
        WireError::new(
            ErrorKind::UnknownActor,
            format!(
                "unknown actor \"{name}\"; expected one of: {}",
                ActorKind::ALL.map(|k| k.name()).join(", ")
            ),
        )
    })
}

/// The arguments of one message, checked against its entry.
struct Args {
    spec: &'static Spec,
    values: Map<String, Value>,
}

impl Args {
    fn bad(&self, problem: String) -> WireError {
        let takes = if self.spec.args.is_empty() {
            "no arguments".to_string()
        } else {
            self.spec
                .args
                .iter()
                .map(|a| a.name)
                .collect::<Vec<_>>()
                .join(", ")
        };
        WireError::new(
            ErrorKind::BadArguments,
            format!(
                "{} {}: {problem} (it takes: {takes})",
                self.spec.actor, self.spec.name
            ),
        )
    }

    fn check(&self) -> Result<(), WireError> {
        for name in self.values.keys() {
            if !self.spec.args.iter().any(|a| a.name == name) {
                return Err(self.bad(format!("unknown argument `{name}`")));
            }
        }
        for arg in self.spec.args {
            match self.values.get(arg.name) {
                None if arg.required => {
                    return Err(self.bad(format!("missing argument `{}`", arg.name)));
                }
                None => {}
                Some(value) => {
                    let fits = match arg.kind {
                        // `--arg value=10` arrives as a number.
                        ArgKind::Text => value.is_string() || value.is_number(),
                        ArgKind::Integer => {
                            value.as_u64().is_some()
                                || value.as_str().is_some_and(|s| s.parse::<u64>().is_ok())
                        }
                        ArgKind::TextList => {
                            value
                                .as_array()
                                .is_some_and(|a| a.iter().all(Value::is_string))
                                || value.is_string()
                        }
                    };
                    if !fits {
                        let expected = match arg.kind {
                            ArgKind::Text => "a string",
                            ArgKind::Integer => "a whole number",
                            ArgKind::TextList => {
                                "a list of strings (or one comma-separated string)"
                            }
                        };
                        return Err(
                            self.bad(format!("`{}` must be {expected}, got {value}", arg.name))
                        );
                    }
                }
            }
        }
        Ok(())
    }

    fn text(&self, name: &str) -> String {
        match self.values.get(name) {
            Some(Value::String(text)) => text.clone(),
            Some(Value::Number(number)) => number.to_string(),
            _ => String::new(),
        }
    }

    fn integer(&self, name: &str) -> Option<u64> {
        let value = self.values.get(name)?;
        value.as_u64().or_else(|| value.as_str()?.parse().ok())
    }

    fn list(&self, name: &str) -> Vec<String> {
        match self.values.get(name) {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect(),
            Some(Value::String(text)) => text
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// Delivers a message and returns its reply as JSON.
/// Whether `message` to `actor` changes something (a command, audited),
/// rather than asks (a query).
pub fn is_command(actor: ActorKind, message: &str) -> bool {
    CATALOG
        .iter()
        .any(|s| s.actor == actor && s.name == message && s.kind == Kind::Command)
}

pub async fn send(actor: ActorKind, message: &str, values: &Map<String, Value>) -> Reply {
    let Some(spec) = CATALOG
        .iter()
        .find(|s| s.actor == actor && s.name == message)
    else {
        let known: Vec<&str> = CATALOG
            .iter()
            .filter(|s| s.actor == actor)
            .map(|s| s.name)
            .collect();
        return Err(WireError::new(
            ErrorKind::UnknownMessage,
            format!(
                "{actor} has no message \"{message}\"; it takes: {} (see `agent ctl send {actor} --list`)",
                known.join(", ")
            ),
        ));
    };
    let args = Args {
        spec,
        values: values.clone(),
    };
    args.check()?;
    (spec.handler)(args).await
}

fn refused(message: String) -> WireError {
    WireError::new(ErrorKind::Refused, message)
}

/// A typed reply as the JSON `Reply::Sent` carries: serializing a plain
/// struct of strings, numbers and lists cannot fail, but if it ever did the
/// client gets an internal error rather than a half reply.
fn wire<T: Serialize>(reply: T) -> Reply {
    serde_json::to_value(reply)
        .map_err(|e| WireError::new(ErrorKind::Internal, format!("cannot encode a reply: {e}")))
}

// -------------------------------------------------------------- governor --

async fn governor_status(_: Args) -> Reply {
    let s = messages::call(ActorKind::Governor, QUICK, GovernorMsg::Status)
        .await
        .map_err(peer_error)?;
    wire(GovernorStatusReply {
        paused: s.paused,
        pause_reason: s.pause_reason,
        tokens_last_day: s.tokens_last_day,
        tokens_per_day: s.tokens_per_day,
        cost_usd_total: s.cost_usd_total,
        permits_granted: s.permits_granted,
    })
}

fn budget_info(row: &crate::domain::BudgetRow) -> BudgetInfo {
    BudgetInfo {
        name: row.name.to_string(),
        limit: row.limit,
        spent: row.spent,
        left: row.left,
        resets_at_ms: row.resets_at_ms,
        set_live: row.set_live,
    }
}

async fn governor_budgets(_: Args) -> Reply {
    let rows = messages::call(ActorKind::Governor, QUICK, GovernorMsg::Budgets)
        .await
        .map_err(peer_error)?;
    wire(BudgetsReply {
        budgets: rows.iter().map(budget_info).collect(),
    })
}

async fn governor_set_budget(args: Args) -> Reply {
    let name = args.text("name");
    let value = args.text("value");
    let row = messages::call(ActorKind::Governor, QUICK, |reply| GovernorMsg::SetBudget {
        name,
        value,
        reply,
    })
    .await
    .map_err(peer_error)?
    .map_err(actor_error)?;
    wire(SetBudgetReply {
        budget: budget_info(&row),
    })
}

async fn governor_pause(_: Args) -> Reply {
    operations::set_paused(true).await?;
    wire(PausedReply { paused: true })
}

async fn governor_resume(_: Args) -> Reply {
    operations::set_paused(false).await?;
    wire(PausedReply { paused: false })
}

// --------------------------------------------------------------- learner --

async fn learner_stats(_: Args) -> Reply {
    let stats = messages::call(ActorKind::Learner, QUICK, LearnerMsg::Stats)
        .await
        .map_err(peer_error)?;
    let capabilities = stats
        .capabilities
        .into_iter()
        .map(|c| CapabilityStatsInfo {
            capability: c.capability,
            attempts: c.attempts,
            accepted: c.accepted,
            mean_reward: c.mean_reward,
            fitness_gain: c.fitness_gain,
            tokens: c.tokens,
            mean_seconds: c.mean_seconds,
            mean_files_changed: c.mean_files_changed,
            repairs: c.repairs,
            repairs_kept: c.repairs_kept,
            denied_tools: c.denied_tools,
        })
        .collect();
    wire(LearnerStatsReply {
        experiences: stats.experiences,
        capabilities,
    })
}

async fn learner_rules(_: Args) -> Reply {
    let learned = messages::call(ActorKind::Learner, QUICK, LearnerMsg::Rules)
        .await
        .map_err(peer_error)?;
    let rules = learned
        .rules
        .iter()
        .map(|r| RuleInfo {
            term: r.term.clone(),
            capability: r.capability.clone(),
            weight: r.weight,
            evidence: r.evidence,
            holds: r.holds,
            rule: r.sentence(),
        })
        .collect();
    wire(RulesReply {
        rules,
        dropped: learned.dropped,
    })
}

fn experience_info(e: crate::domain::Experience) -> ExperienceInfo {
    ExperienceInfo {
        iteration: e.iteration,
        capability: e.capability,
        prompt: e.prompt,
        outcome: e.outcome.as_str().to_string(),
        fitness_before: e.fitness_before,
        fitness_after: e.fitness_after,
        warnings: e.signals.warnings,
        failing_tests: e.signals.failing_tests,
        error: e.signals.error,
        files_changed: e.files_changed,
        seconds: e.duration.as_secs_f64(),
        tokens: e.usage.tokens(),
        cost_usd: e.usage.cost_usd,
        error_signature: e.error_signature,
    }
}

async fn learner_experiences(args: Args) -> Reply {
    let last = args.integer("last").unwrap_or(10) as usize;
    let experiences = messages::call(ActorKind::Learner, QUICK, |reply| LearnerMsg::Experiences {
        last,
        reply,
    })
    .await
    .map_err(peer_error)?
    .map_err(actor_error)?;
    wire(ExperiencesReply {
        experiences: experiences.into_iter().map(experience_info).collect(),
    })
}

/// The situation `advise` is asked about: warning codes, `code` or
/// `code=count`.
fn advise_signals(warnings: Vec<String>) -> Result<Signals, WireError> {
    let mut signals = Signals::default();
    for warning in warnings {
        let (code, count) = match warning.split_once('=') {
            Some((code, count)) => (
                code.to_string(),
                count.parse().map_err(|_| {
                    refused(format!(
                        "warnings: \"{warning}\" is not code=count with a whole count"
                    ))
                })?,
            ),
            None => (warning.clone(), 1),
        };
        signals.warnings.insert(code, count);
    }
    Ok(signals)
}

async fn learner_advise(args: Args) -> Reply {
    let candidates = args.list("candidates");
    let signals = advise_signals(args.list("warnings"))?;
    let advice = messages::call(ActorKind::Learner, QUICK, |reply| LearnerMsg::Advise {
        iteration: 0,
        candidates,
        signals,
        reply,
    })
    .await
    .map_err(peer_error)?;
    wire(AdviseReply {
        ranked: advice
            .ranked
            .into_iter()
            .map(|r| RankedInfo {
                capability: r.id,
                score: r.score,
                attempts: r.attempts,
                mean_reward: r.mean_reward,
                why: r.why,
            })
            .collect(),
        rules: advice.rules.iter().map(|r| r.sentence()).collect(),
        relevant: advice
            .relevant
            .into_iter()
            .map(|e| RelevantInfo {
                iteration: e.iteration,
                capability: e.capability,
                outcome: e.outcome.as_str().to_string(),
            })
            .collect(),
    })
}

async fn learner_forget(args: Args) -> Reply {
    let capability = args.text("capability");
    let known = messages::call(ActorKind::Learner, QUICK, |reply| LearnerMsg::Forget {
        capability: capability.clone(),
        reply,
    })
    .await
    .map_err(peer_error)?;
    if !known {
        return Err(refused(format!(
            "the learner knows nothing about \"{capability}\""
        )));
    }
    wire(ForgottenReply {
        forgotten: capability,
    })
}

// ------------------------------------------------------------ researcher --

async fn researcher_status(_: Args) -> Reply {
    let status = messages::call(ActorKind::Researcher, QUICK, ResearcherMsg::Status)
        .await
        .map_err(peer_error)?;
    wire(ResearcherStatusReply {
        hits: status.hits,
        misses: status.misses,
        entries: status.entries,
        bytes: status.bytes,
    })
}

async fn researcher_research(args: Args) -> Reply {
    let topic = args.text("topic");
    let research = messages::call(ActorKind::Researcher, Duration::from_secs(600), |reply| {
        ResearcherMsg::Research { topic, reply }
    })
    .await
    .map_err(peer_error)?;
    wire(ResearchReply {
        topic: research.topic,
        from_cache: research.from_cache,
        notes: research.notes,
        sources: research.sources,
        input_tokens: research.usage.input_tokens,
        output_tokens: research.usage.output_tokens,
    })
}

async fn researcher_invalidate(args: Args) -> Reply {
    let topic = args.text("topic");
    let removed = messages::call(ActorKind::Researcher, QUICK, |reply| {
        ResearcherMsg::Invalidate {
            topic: topic.clone(),
            reply,
        }
    })
    .await
    .map_err(peer_error)?
    .map_err(actor_error)?;
    wire(InvalidatedReply { topic, removed })
}

// -------------------------------------------------------------- executor --

async fn executor_capabilities(_: Args) -> Reply {
    let capabilities = messages::call(ActorKind::Executor, QUICK, ExecutorMsg::Capabilities)
        .await
        .map_err(peer_error)?;
    let tools = messages::call(ActorKind::Executor, QUICK, ExecutorMsg::Tools)
        .await
        .map_err(peer_error)?
        .map_err(actor_error)?;
    wire(CapabilitiesReply {
        capabilities: capabilities
            .into_iter()
            .map(|c| CapabilityInfo {
                id: c.id,
                description: c.description,
            })
            .collect(),
        discovered: tools
            .into_iter()
            .map(|t| ToolInfo {
                server: t.server,
                tool: t.tool,
                registered: t.registered,
                description: t.description,
                detail: t.detail,
                checked_at_ms: t.checked_at_ms,
            })
            .collect(),
    })
}

async fn executor_jobs(args: Args) -> Reply {
    let last = args.integer("last").unwrap_or(10) as usize;
    let jobs = messages::call(ActorKind::Executor, QUICK, |reply| ExecutorMsg::Jobs {
        last,
        reply,
    })
    .await
    .map_err(peer_error)?;
    let now = crate::store::now_ms();
    let jobs = jobs
        .into_iter()
        .map(|(j, progress)| JobInfo {
            job: j.id,
            iteration: j.iteration,
            backend: j.backend.as_str().to_string(),
            capability: j.capability,
            status: j.status.as_str().to_string(),
            remote_id: j.remote_id,
            error: j.error,
            session_id: j.session.session_id,
            turns: j.session.turns,
            permission_denials: j.session.permission_denials,
            api_error_status: j.session.api_error_status,
            seconds_since_last_event: progress.as_ref().and_then(|p| p.quiet_seconds(now)),
            progress: progress.map(Into::into),
        })
        .collect();
    wire(JobsReply { jobs })
}

async fn executor_kill_job(args: Args) -> Reply {
    let job = args.integer("job").unwrap_or_default();
    messages::call(ActorKind::Executor, QUICK, |reply| ExecutorMsg::KillJob {
        job,
        reply,
    })
    .await
    .map_err(peer_error)?
    .map_err(actor_error)?;
    wire(KilledReply { killed: job })
}

// -------------------------------------------------------------- modifier --

async fn modifier_status(_: Args) -> Reply {
    let s = messages::call(ActorKind::Modifier, QUICK, ModifierMsg::Status)
        .await
        .map_err(peer_error)?;
    wire(ModifierStatusReply {
        head: s.head,
        head_fitness: s.head_fitness,
        accepted: s.accepted,
        rolled_back: s.rolled_back,
        changed_files: s.changed,
    })
}

fn variant_info(v: crate::domain::Variant) -> VariantInfo {
    VariantInfo {
        iteration: v.iteration,
        outcome: v.outcome.as_str().to_string(),
        refused_by: v.refused_by.as_ref().map(|by| by.as_str().to_string()),
        validation: v.validation.to_string(),
        commit: v.commit,
        parent: v.parent,
        fitness_before: v.fitness_before,
        fitness_after: v.fitness_after,
        rules_checked: v.rules_checked,
        generated_tests: v.generated_tests,
        started_from: v.started_from,
    }
}

async fn modifier_variants(args: Args) -> Reply {
    let last = args.integer("last").unwrap_or(20) as usize;
    let variants = messages::call(ActorKind::Modifier, QUICK, |reply| ModifierMsg::Variants {
        last,
        reply,
    })
    .await
    .map_err(peer_error)?
    .map_err(actor_error)?;
    wire(VariantsReply {
        variants: variants.into_iter().map(variant_info).collect(),
    })
}

async fn modifier_upgrades(_: Args) -> Reply {
    messages::call(ActorKind::Modifier, QUICK, ModifierMsg::Upgrades)
        .await
        .map_err(peer_error)?
        .map_err(actor_error)
}

async fn modifier_rollback(_: Args) -> Reply {
    messages::call_common(ActorKind::Modifier, Duration::from_secs(60), Common::Revert)
        .await
        .map_err(peer_error)?
        .map_err(actor_error)?;
    wire(RolledBackReply { rolled_back: true })
}

// --------------------------------------------------------------- planner --

async fn planner_status(_: Args) -> Reply {
    let s = messages::call(ActorKind::Planner, QUICK, PlannerMsg::Status)
        .await
        .map_err(peer_error)?;
    wire(PlannerStatusReply {
        goal: s.goal,
        run_state: s.run_state.as_str().to_string(),
        iteration: s.iteration,
        in_flight: s.in_flight,
        fitness: s.last_fitness,
    })
}

async fn planner_tick(_: Args) -> Reply {
    messages::lookup::<PlannerMsg>(ActorKind::Planner)
        .and_then(|p| {
            p.cast(PlannerMsg::Tick)
                .map_err(|_| PeerError::Gone(ActorKind::Planner))
        })
        .map_err(peer_error)?;
    wire(TickedReply { ticked: true })
}

async fn planner_goal(args: Args) -> Reply {
    let goal = args.text("text");
    operations::set_goal(goal.clone()).await?;
    wire(GoalReply { goal })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_actor_has_a_query_and_a_command() {
        for actor in ActorKind::ALL {
            let messages = messages_of(actor);
            assert!(
                messages.iter().any(|m| m.kind == "query"),
                "{actor} has a query"
            );
            assert!(
                messages.iter().any(|m| m.kind == "command"),
                "{actor} has a command"
            );
        }
    }

    #[tokio::test]
    async fn unknown_messages_and_bad_arguments_are_typed_errors() {
        let unknown = send(ActorKind::Learner, "dance", &Map::new())
            .await
            .unwrap_err();
        assert_eq!(unknown.kind, ErrorKind::UnknownMessage);
        assert!(
            unknown
                .message
                .contains("stats, rules, experiences, advise, forget"),
            "{}",
            unknown.message
        );
        let missing = send(ActorKind::Researcher, "research", &Map::new())
            .await
            .unwrap_err();
        assert_eq!(missing.kind, ErrorKind::BadArguments);
        assert!(
            missing.message.contains("missing argument `topic`"),
            "{}",
            missing.message
        );
        let mut wrong = Map::new();
        wrong.insert("job".into(), serde_json::json!("seven"));
        let wrong = send(ActorKind::Executor, "kill-job", &wrong)
            .await
            .unwrap_err();
        assert_eq!(wrong.kind, ErrorKind::BadArguments);
        assert!(
            wrong.message.contains("`job` must be a whole number"),
            "{}",
            wrong.message
        );
    }
}
