//! The planner's pure decisions, apart from any actor or store: which plan an
//! iteration makes from the goal, the fitness, the learner's advice and any
//! research; how a verdict is assessed (fitness after, error signature); and
//! the one-line summary an iteration is remembered by.

use std::time::Duration;

use crate::cognition::prompt::{self, Item, Prompts, Slot};
use crate::domain::{
    Advice, Capability, Execution, Experience, Iteration, JobOutcome, JobStatus, Judge, LoopRules,
    Outcome, Plan, Prepared, RefusedBy, Research, Signals, Usage, Verdict,
};

/// What the planner knows when it plans an iteration.
#[derive(Debug, Clone, Copy)]
pub struct Situation<'a> {
    pub goal: &'a str,
    pub iteration: u64,
    pub fitness: Option<f64>,
    /// What the workspace shows.
    pub signals: &'a Signals,
    /// The prompt templates of the model capabilities.
    pub prompts: &'a Prompts,
    /// The token budget of a prompt.
    pub budget: usize,
    pub execution: Execution,
}

/// Why no plan could be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("the backend offers no capability to plan with")]
    NoCapability,
}

/// Turns the goal, the fitness, the learner's advice and any research into a
/// plan: the best-ranked capability, with a prompt from its template for
/// model capabilities.
pub fn make_plan(
    situation: &Situation<'_>,
    advice: &Advice,
    capabilities: &[Capability],
    research: Option<&Research>,
) -> Result<Plan, PlanError> {
    let best = advice.ranked.first().ok_or(PlanError::NoCapability)?;
    Ok(plan_with(situation, advice, capabilities, research, best))
}

/// The plans of an iteration's `count` candidates, slot by slot: the
/// learner's top `count` capabilities, best first, taken round again from
/// the best when there are fewer (a model backend's same template gives a
/// different change each call).
pub fn make_plans(
    situation: &Situation<'_>,
    advice: &Advice,
    capabilities: &[Capability],
    research: Option<&Research>,
    count: u32,
) -> Result<Vec<Plan>, PlanError> {
    if advice.ranked.is_empty() {
        return Err(PlanError::NoCapability);
    }
    Ok((0..count)
        .map(|slot| {
            let ranked = &advice.ranked[slot as usize % advice.ranked.len()];
            Plan {
                slot,
                ..plan_with(situation, advice, capabilities, research, ranked)
            }
        })
        .collect())
}

/// The plan that runs capability `best` in the situation.
fn plan_with(
    situation: &Situation<'_>,
    advice: &Advice,
    capabilities: &[Capability],
    research: Option<&Research>,
    best: &crate::domain::RankedCapability,
) -> Plan {
    let offered = capabilities.iter().any(|c| c.id == best.id);
    let template = situation.prompts.template(&best.id).filter(|_| offered);
    let assembled = template.map(|t| render_prompt(&t.text, situation, advice, research));
    Plan {
        iteration: situation.iteration,
        capability: best.id.clone(),
        prompt_tokens: assembled.as_ref().map_or(0, |a| a.tokens),
        prompt: assembled.map(|a| a.text),
        prompt_name: template.map(|t| t.name.clone()),
        rationale: best.why.clone(),
        execution: situation.execution,
        resume: None,
        slot: 0,
        lane: None,
    }
}

/// A template filled with the goal, the fitness, the workspace's signals,
/// the rules that hold, the most relevant past experiences and the research
/// notes, within the situation's token budget: the least relevant context
/// is dropped first (see `cognition::prompt`).
pub fn render_prompt(
    template: &str,
    situation: &Situation<'_>,
    advice: &Advice,
    research: Option<&Research>,
) -> prompt::Assembled {
    let fixed = template.replace("{goal}", situation.goal).replace(
        "{fitness}",
        &situation
            .fitness
            .map_or("unknown".into(), |f| f.to_string()),
    );
    // Relevance: rules by weight, experiences by retrieval rank, warning
    // codes by count, research paragraphs by their order (best first).
    let slots = [
        Slot {
            placeholder: "{signals}",
            items: signal_items(situation.signals),
            empty: "(no warnings)",
        },
        Slot {
            placeholder: "{rules}",
            items: rule_items(advice),
            empty: "(none yet)",
        },
        Slot {
            placeholder: "{recent}",
            items: experience_items(advice),
            empty: "(none yet)",
        },
        Slot {
            placeholder: "{research}",
            items: research_items(research),
            empty: "(no notes)",
        },
    ];
    prompt::assemble(&fixed, &slots, situation.budget)
}

/// The relevant past experiences, most relevant (best retrieval rank) first.
fn experience_items(advice: &Advice) -> Vec<Item> {
    let count = advice.relevant.len().max(1) as f64;
    advice
        .relevant
        .iter()
        .enumerate()
        .map(|(rank, e)| Item {
            text: format!(
                "- iteration {}: {} → {}{}",
                e.iteration,
                e.capability,
                e.outcome.as_str(),
                e.error_signature
                    .as_ref()
                    .map(|s| format!(" ({s})"))
                    .unwrap_or_default()
            ),
            relevance: 0.9 - 0.5 * rank as f64 / count,
        })
        .collect()
}

/// The rules that hold, as relevant as they weigh.
fn rule_items(advice: &Advice) -> Vec<Item> {
    advice
        .rules
        .iter()
        .map(|r| Item {
            text: format!("- {}", r.sentence()),
            relevance: r.weight,
        })
        .collect()
}

/// The warning codes, the more frequent the more relevant; the build's
/// error and the failing tests above them all.
fn signal_items(signals: &Signals) -> Vec<Item> {
    let total = signals.warning_count().max(1) as f64;
    let mut items: Vec<Item> = signals
        .warnings
        .iter()
        .map(|(code, n)| Item {
            text: match signals.places.get(code) {
                Some(place) => format!("- {code}: {n} (the first at {place})"),
                None => format!("- {code}: {n}"),
            },
            relevance: 0.5 + 0.5 * f64::from(*n) / total,
        })
        .collect();
    items.extend(signals.error.iter().map(|e| Item {
        text: format!("- the build fails: {e}"),
        relevance: 1.0,
    }));
    items.extend(signals.failing_tests.iter().map(|t| Item {
        text: format!("- failing test: {t}"),
        relevance: 0.95,
    }));
    items
}

/// The research notes' paragraphs, the first (the best) most relevant.
fn research_items(research: Option<&Research>) -> Vec<Item> {
    let paragraphs: Vec<&str> = research
        .map(|r| {
            r.notes
                .split("\n\n")
                .filter(|p| !p.trim().is_empty())
                .collect()
        })
        .unwrap_or_default();
    paragraphs
        .iter()
        .enumerate()
        .map(|(rank, p)| Item {
            text: p.trim().to_string(),
            relevance: 0.8 - 0.6 * rank as f64 / paragraphs.len().max(1) as f64,
        })
        .collect()
}

/// When every capability has gained nothing in the situation the workspace
/// is in (and would do the same again), the reason to stop: nothing is left
/// to try until the goal or the workspace changes.
pub fn nothing_left(advice: &Advice, signals: &Signals) -> Option<String> {
    if advice.ranked.is_empty() || !advice.ranked.iter().all(|r| r.fruitless) {
        return None;
    }
    let warnings: Vec<String> = signals
        .warnings
        .iter()
        .map(|(code, n)| format!("{code} ×{n}"))
        .collect();
    Some(format!(
        "{}: each of the {} capabilities gained nothing with the warnings that remain ({}); \
         they need another kind of change: change the goal or the workspace, then `agent ctl resume`",
        crate::domain::NOTHING_LEFT,
        advice.ranked.len(),
        warnings.join(", ")
    ))
}

/// How long to wait before the next attempt after `failures` abandoned
/// attempts in a row: `initial`, doubling with each failure, at most `max`.
pub fn retry_delay(failures: u32, initial: Duration, max: Duration) -> Duration {
    let doublings = failures.saturating_sub(1).min(32);
    initial.saturating_mul(1u32 << doublings.min(31)).min(max)
}

/// What a person reads when the run pauses on failures that did not go away.
pub fn pause_reason(failures: u32, reason: &str) -> String {
    format!(
        "paused after {failures} failed attempts in a row: {}; fix the cause, then `agent ctl resume`",
        first_line(reason)
    )
}

/// The fitness of the worktree after an iteration: what the modifier
/// measured, else the fitness it started from.
pub fn fitness_after(prepared: &Prepared, verdict: Option<&Verdict>) -> Option<f64> {
    match verdict {
        Some(Verdict::Accepted { fitness_after, .. }) => Some(*fitness_after),
        Some(Verdict::Rejected { fitness_after, .. }) => *fitness_after,
        _ => prepared.fitness,
    }
}

/// The signature of what went wrong: the rejection, else the job's error.
pub fn error_signature(verdict: Option<&Verdict>, job: &JobOutcome) -> Option<String> {
    match (verdict, &job.error) {
        (Some(Verdict::Rejected { reason, .. }), _) => Some(signature(reason)),
        (None, Some(error)) => Some(signature(error)),
        _ => None,
    }
}

/// What an attempt taught, as the learner records it: the plan, the
/// situation it was made in, the verdict and what the job spent.
pub fn experience_of(
    plan: &Plan,
    prepared: &Prepared,
    job: &JobOutcome,
    verdict: Option<&Verdict>,
    duration: Duration,
) -> Experience {
    Experience {
        iteration: plan.iteration,
        capability: plan.capability.clone(),
        prompt: plan.prompt_name.clone(),
        signals: prepared.signals.clone(),
        files_changed: match verdict {
            Some(Verdict::Accepted { files_changed, .. }) => *files_changed as u32,
            _ => 0,
        },
        outcome: verdict.map_or(Outcome::JobFailed, Verdict::outcome),
        fitness_before: prepared.fitness,
        fitness_after: fitness_after(prepared, verdict),
        usage: job.usage,
        duration,
        error_signature: error_signature(verdict, job),
        denied_tools: job.claude.denied_tools.clone(),
        repaired: false,
    }
}

/// The line of a failed job that says its login is gone — "Not logged in",
/// a refresh token refused, an HTTP 401 — which no retry mends: the run
/// pauses on it at once instead of failing iteration after iteration.
pub fn login_lost(job: &JobOutcome) -> Option<String> {
    if job.status == JobStatus::Completed {
        return None;
    }
    let error = job.error.as_deref().unwrap_or_default();
    let lost = error.contains("Please run /login")
        || error.contains("Not logged in")
        || job.claude.api_error_status.as_deref() == Some("401");
    lost.then(|| {
        let line = error.lines().next().unwrap_or("HTTP 401");
        format!(
            "Claude Code's login is gone: {line}; log in again (`claude /login`, or set \
             CLAUDE_CODE_OAUTH_TOKEN from `claude setup-token`), then `agent ctl resume`"
        )
    })
}

/// The prompt of a repair turn, when `verdict` is a refusal a repair can
/// answer: validation or a safety rule refused an archived change. Fitness
/// and approval refusals are judgements, not failures to fix.
pub fn repair_prompt(verdict: Option<&Verdict>) -> Option<String> {
    let Some(Verdict::Rejected {
        reason,
        details,
        variant: Some(variant),
        ..
    }) = verdict
    else {
        return None;
    };
    match variant.refused_by.as_ref()? {
        RefusedBy::Step(Judge::Validation) | RefusedBy::Rule(_) => {}
        RefusedBy::Step(Judge::Fitness | Judge::Approval) => return None,
    }
    Some(format!(
        "Your change was refused: {reason}\n\n\
         The first failing lines:\n```\n{details}\n```\n\n\
         The change is back in the working tree. Fix it so that it passes, \
         keeping to the goal and changing nothing else."
    ))
}

/// The plan of a repair turn: the same capability, resuming `session`.
pub fn repair_plan(plan: &Plan, session: String, prompt: String) -> Plan {
    Plan {
        prompt_tokens: prompt::estimate_tokens(&prompt),
        prompt: Some(prompt),
        rationale: format!("repair turn of {}", plan.capability),
        resume: Some(session),
        ..plan.clone()
    }
}

/// The job an iteration is judged by after a repair turn: the repair's when
/// it completed (its change is the one validated), the first one's when it
/// did not; either way with what both spent and every tool either was
/// denied.
pub fn after_repair(first: JobOutcome, repair: JobOutcome) -> JobOutcome {
    let usage = Usage {
        input_tokens: first.usage.input_tokens + repair.usage.input_tokens,
        output_tokens: first.usage.output_tokens + repair.usage.output_tokens,
        cost_usd: first.usage.cost_usd + repair.usage.cost_usd,
    };
    let mut denied = first.claude.denied_tools.clone();
    for tool in &repair.claude.denied_tools {
        if !denied.contains(tool) {
            denied.push(tool.clone());
        }
    }
    let mut kept = if repair.status == JobStatus::Completed {
        repair
    } else {
        first
    };
    kept.usage = usage;
    kept.claude.denied_tools = denied;
    kept
}

/// The iteration's log entry, as it is committed.
pub fn committed_iteration(
    goal: &str,
    experience: &Experience,
    verdict: Option<&Verdict>,
    job: &JobOutcome,
    finished_at_ms: u64,
) -> Iteration {
    Iteration {
        number: experience.iteration,
        goal: goal.to_string(),
        capability: experience.capability.clone(),
        outcome: experience.outcome,
        fitness_before: experience.fitness_before,
        fitness_after: experience.fitness_after,
        usage: experience.usage,
        duration: experience.duration,
        commit: match verdict {
            Some(Verdict::Accepted { commit, .. }) => Some(commit.clone()),
            _ => None,
        },
        summary: summarize(experience, verdict, job),
        finished_at_ms,
        variant: verdict
            .and_then(Verdict::variant)
            .map(|v| Box::new(v.clone())),
    }
}

/// A short, stable form of an error: its first line, numbers removed.
pub fn signature(error: &str) -> String {
    first_line(error)
        .chars()
        .map(|c| if c.is_ascii_digit() { '#' } else { c })
        .take(120)
        .collect()
}

/// The one line an iteration is remembered by.
pub fn summarize(experience: &Experience, verdict: Option<&Verdict>, job: &JobOutcome) -> String {
    let mut line = what_happened(experience, verdict, job);
    if experience.repaired {
        line.push_str(" after a repair turn");
    }
    match verdict
        .and_then(Verdict::variant)
        .and_then(|v| v.started_from)
    {
        Some(from) => format!("{line} (built on the variant of iteration {from})"),
        None => line,
    }
}

fn what_happened(experience: &Experience, verdict: Option<&Verdict>, job: &JobOutcome) -> String {
    let fitness = |f: Option<f64>| f.map_or("?".to_string(), |f| f.to_string());
    let before = fitness(experience.fitness_before);
    match verdict {
        Some(Verdict::Accepted {
            commit,
            fitness_after,
            files_changed,
            ..
        }) => format!(
            "{} accepted: {} file(s), fitness {} → {}, commit {}",
            experience.capability,
            files_changed,
            before,
            fitness_after,
            &commit[..commit.len().min(10)]
        ),
        Some(Verdict::Rejected { reason, .. }) => {
            format!(
                "{} rejected and rolled back: {}",
                experience.capability,
                first_line(reason)
            )
        }
        Some(Verdict::NoChange) => format!(
            "{} changed nothing (fitness {before})",
            experience.capability
        ),
        None => format!(
            "{} job {}: {}",
            experience.capability,
            job.status.as_str(),
            first_line(job.error.as_deref().unwrap_or("no error text"))
        ),
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

/// The loop the latest committed iterations (oldest first) are in, named
/// by its pattern, or `None`.
pub fn loop_detected(recent: &[Iteration], rules: LoopRules) -> Option<String> {
    let last = recent.last()?;
    let same_plan = recent
        .iter()
        .rev()
        .take_while(|i| {
            i.capability == last.capability && i.goal == last.goal && i.outcome != Outcome::Accepted
        })
        .count() as u32;
    if rules.same_plan > 0 && same_plan >= rules.same_plan {
        return Some(format!(
            "loop detected: the same plan ({} toward the same goal) {same_plan} times in a row, none of them kept",
            last.capability
        ));
    }
    if rules.same_refused_change > 0
        && let Some(id) = last
            .variant
            .as_ref()
            .filter(|v| v.outcome == Outcome::Rejected && !v.change_id.is_empty())
            .map(|v| v.change_id.as_str())
    {
        let seen = recent
            .iter()
            .filter_map(|i| i.variant.as_ref())
            .filter(|v| v.outcome == Outcome::Rejected && v.change_id == id)
            .count() as u32;
        if seen >= rules.same_refused_change {
            return Some(format!(
                "loop detected: the same refused change proposed {seen} times (iteration {}, refused by {})",
                last.number,
                last.variant
                    .as_ref()
                    .and_then(|v| v.refused_by.as_ref())
                    .map_or("?", RefusedBy::as_str)
            ));
        }
    }
    if rules.no_progress > 0 {
        return no_fitness_progress(recent, rules.no_progress);
    }
    None
}

/// Whether the branch's fitness went down in this iteration: a change kept
/// that measured better. A kept change that measured the same is no
/// progress, however many there are.
fn improved(iteration: &Iteration) -> bool {
    iteration.outcome == Outcome::Accepted
        && matches!((iteration.fitness_before, iteration.fitness_after), (Some(b), Some(a)) if a < b)
}

/// `limit` committed iterations or more since the fitness last improved,
/// kept or not: said with how many, and from what to what it last went.
fn no_fitness_progress(recent: &[Iteration], limit: u32) -> Option<String> {
    let since = recent.iter().rev().take_while(|i| !improved(i)).count();
    if (since as u32) < limit {
        return None;
    }
    let now = recent.last().and_then(Iteration::head_fitness);
    let last_improvement = recent.iter().rev().find(|i| improved(i));
    let history = match (last_improvement, now) {
        (Some(i), Some(now)) => format!(
            "the fitness last improved at iteration {}, from {} to {}, and has stayed at {now} since",
            i.number,
            i.fitness_before.unwrap_or_default(),
            i.fitness_after.unwrap_or_default()
        ),
        (None, Some(now)) => format!("the fitness has stayed at {now} through all {since} of them"),
        (_, None) => "no fitness was measured".to_string(),
    };
    Some(format!(
        "loop detected: {since} committed iterations in a row without a fitness improvement \
         (changes kept or not); {history}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::RankedCapability;

    const MODEL_CAPABILITY: &str = crate::cognition::claude_cli::CAPABILITY;

    fn plan_with(
        template: &str,
        fitness: Option<f64>,
        best: &str,
        attempts: u64,
        research: Option<&Research>,
    ) -> Result<Plan, PlanError> {
        let prompts = Prompts::single(template);
        let signals = Signals::default();
        let situation = Situation {
            goal: "fewer warnings",
            iteration: 3,
            fitness,
            signals: &signals,
            prompts: &prompts,
            budget: 1000,
            execution: Execution::Async,
        };
        let caps = vec![Capability {
            id: best.into(),
            description: String::new(),
        }];
        make_plan(&situation, &advice(best, attempts), &caps, research)
    }

    fn advice(best: &str, attempts: u64) -> Advice {
        Advice {
            ranked: vec![RankedCapability {
                id: best.into(),
                score: 0.9,
                attempts,
                mean_reward: 0.7,
                why: format!("predicted reward 0.70 here, {attempts} attempt(s)"),
                fruitless: false,
            }],
            relevant: Vec::new(),
            rules: Vec::new(),
        }
    }

    #[test]
    fn a_local_capability_has_no_prompt() {
        let plan = plan_with("{goal}", Some(4.0), "fmt", 2, None).unwrap();
        assert_eq!(plan.capability, "fmt");
        assert_eq!(plan.iteration, 3);
        assert!(plan.prompt.is_none());
        assert_eq!(plan.prompt_tokens, 0);
        assert!(plan.rationale.contains("2 attempt"));
    }

    #[test]
    fn a_model_capability_gets_the_rendered_prompt() {
        let research = Research {
            topic: "g".into(),
            notes: "uses median".into(),
            sources: Vec::new(),
            from_cache: true,
            usage: Usage::default(),
        };
        let plan = plan_with(
            "G={goal} F={fitness} R={research} S={signals}",
            Some(7.0),
            MODEL_CAPABILITY,
            0,
            Some(&research),
        )
        .unwrap();
        assert_eq!(
            plan.prompt.as_deref(),
            Some("G=fewer warnings F=7 R=uses median S=(no warnings)")
        );
        assert_eq!(plan.prompt_name.as_deref(), Some("iteration"));
        assert!(plan.prompt_tokens > 0);
    }

    #[test]
    fn no_capability_is_an_error() {
        let prompts = Prompts::default();
        let signals = Signals::default();
        let situation = Situation {
            goal: "g",
            iteration: 1,
            fitness: None,
            signals: &signals,
            prompts: &prompts,
            budget: 100,
            execution: Execution::Async,
        };
        let empty = Advice {
            ranked: vec![],
            relevant: vec![],
            rules: vec![],
        };
        assert_eq!(
            make_plan(&situation, &empty, &[], None),
            Err(PlanError::NoCapability)
        );
    }

    #[test]
    fn nothing_is_left_only_when_every_capability_was_fruitless_here() {
        let signals = Signals {
            warnings: [("dead_code".to_string(), 1)].into(),
            ..Signals::default()
        };
        let mut advice = advice("fmt", 3);
        advice.ranked.push(RankedCapability {
            id: "cargo-fix".into(),
            score: -9.0,
            attempts: 2,
            mean_reward: 0.0,
            why: String::new(),
            fruitless: true,
        });
        assert_eq!(
            nothing_left(&advice, &signals),
            None,
            "fmt is still worth a try"
        );
        advice.ranked[0].fruitless = true;
        let reason = nothing_left(&advice, &signals).unwrap();
        assert!(reason.starts_with(crate::domain::NOTHING_LEFT), "{reason}");
        assert!(
            reason.contains("dead_code ×1") && reason.contains("2 capabilities"),
            "{reason}"
        );
        let empty = Advice {
            ranked: vec![],
            relevant: vec![],
            rules: vec![],
        };
        assert_eq!(nothing_left(&empty, &signals), None);
    }

    #[test]
    fn retries_back_off_doubling_up_to_the_cap() {
        let second = Duration::from_secs(1);
        let minute = Duration::from_secs(60);
        let delays: Vec<u64> = (1..=8)
            .map(|n| retry_delay(n, second, minute).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(retry_delay(u32::MAX, second, minute), minute);
    }

    #[test]
    fn a_signature_keeps_the_first_line_without_numbers() {
        assert_eq!(
            signature("validation `cargo test` failed (status 101): 3 tests\nbacktrace"),
            "validation `cargo test` failed (status ###): # tests"
        );
    }

    #[test]
    fn the_assessment_follows_the_verdict() {
        let prepared = Prepared {
            base_commit: "abc".into(),
            fitness: Some(5.0),
            signals: Signals::default(),
            started_from: None,
        };
        let job = JobOutcome {
            job_id: 1,
            status: JobStatus::Failed,
            output: String::new(),
            error: Some("exit 143 after 12s".into()),
            usage: Usage::default(),
            claude: Default::default(),
        };
        let rejected = Verdict::Rejected {
            reason: "fitness got worse: 5 → 6".into(),
            details: String::new(),
            fitness_after: Some(6.0),
            variant: None,
        };
        assert_eq!(fitness_after(&prepared, Some(&rejected)), Some(6.0));
        assert_eq!(fitness_after(&prepared, None), Some(5.0));
        assert_eq!(
            error_signature(Some(&rejected), &job).as_deref(),
            Some("fitness got worse: # → #")
        );
        assert_eq!(
            error_signature(None, &job).as_deref(),
            Some("exit ### after ##s")
        );
        assert_eq!(error_signature(Some(&Verdict::NoChange), &job), None);
    }

    #[test]
    fn an_accepted_change_is_learned_and_logged_with_its_commit() {
        let prepared = Prepared {
            base_commit: "abc".into(),
            fitness: Some(5.0),
            signals: Signals::default(),
            started_from: None,
        };
        let plan = Plan {
            iteration: 9,
            capability: "fmt".into(),
            prompt: None,
            prompt_name: None,
            prompt_tokens: 0,
            rationale: String::new(),
            execution: Execution::Async,
            resume: None,
            slot: 0,
            lane: None,
        };
        let job = JobOutcome {
            job_id: 1,
            status: JobStatus::Completed,
            output: String::new(),
            error: None,
            usage: Usage::default(),
            claude: Default::default(),
        };
        let accepted = Verdict::Accepted {
            commit: "0123456789abcdef".into(),
            fitness_after: 3.0,
            signals_after: Signals::default(),
            files_changed: 2,
            variant: None,
        };
        let duration = Duration::from_secs(4);
        let experience = experience_of(&plan, &prepared, &job, Some(&accepted), duration);
        assert_eq!((experience.iteration, experience.files_changed), (9, 2));
        assert_eq!(experience.outcome, Outcome::Accepted);
        assert_eq!(experience.fitness_after, Some(3.0));
        assert_eq!(experience.error_signature, None);
        let logged = committed_iteration("g", &experience, Some(&accepted), &job, 77);
        assert_eq!((logged.number, logged.finished_at_ms), (9, 77));
        assert_eq!(logged.commit.as_deref(), Some("0123456789abcdef"));
        assert_eq!(
            logged.summary,
            "fmt accepted: 2 file(s), fitness 5 → 3, commit 0123456789"
        );
        let failed = experience_of(&plan, &prepared, &job, None, duration);
        assert_eq!(
            (failed.outcome, failed.files_changed),
            (Outcome::JobFailed, 0)
        );
        let logged = committed_iteration("g", &failed, None, &job, 78);
        assert_eq!(logged.commit, None);
    }

    fn committed(number: u64, outcome: Outcome, change: &str) -> Iteration {
        Iteration {
            number,
            goal: "g".into(),
            capability: "claude-edit".into(),
            outcome,
            fitness_before: Some(3.0),
            fitness_after: Some(3.0),
            usage: Default::default(),
            duration: std::time::Duration::ZERO,
            commit: None,
            summary: String::new(),
            finished_at_ms: 0,
            variant: (!change.is_empty()).then(|| {
                Box::new(crate::domain::Variant {
                    iteration: number,
                    commit: format!("c{number}"),
                    parent: "p".into(),
                    outcome,
                    refused_by: Some(crate::domain::RefusedBy::Step(
                        crate::domain::Judge::Fitness,
                    )),
                    rules_checked: Vec::new(),
                    fitness_before: Some(3.0),
                    fitness_after: Some(4.0),
                    validation: crate::domain::Validation::Passed,
                    generated_tests: Vec::new(),
                    started_from: None,
                    change_id: change.into(),
                })
            }),
        }
    }

    #[test]
    fn loops_are_named_by_their_pattern_and_a_healthy_run_is_none() {
        let rules = LoopRules {
            same_plan: 4,
            same_refused_change: 2,
            no_progress: 6,
        };
        let refused_twice = [
            committed(1, Outcome::Rejected, "a"),
            committed(2, Outcome::Rejected, "b"),
            committed(3, Outcome::Rejected, "a"),
        ];
        assert!(
            loop_detected(&refused_twice, rules)
                .unwrap()
                .contains("the same refused change proposed 2 times")
        );
        let same_plan: Vec<Iteration> = (1..=4)
            .map(|n| committed(n, Outcome::NoChange, ""))
            .collect();
        assert!(
            loop_detected(&same_plan, rules)
                .unwrap()
                .contains("the same plan (claude-edit toward the same goal) 4 times")
        );
        let mut other_goals = same_plan.clone();
        other_goals[1].goal = "h".into();
        assert_eq!(loop_detected(&other_goals, rules), None);
        let mut stalled: Vec<Iteration> = (1..=6)
            .map(|n| committed(n, Outcome::NoChange, ""))
            .collect();
        for (i, iteration) in stalled.iter_mut().enumerate() {
            iteration.capability = format!("c{i}");
        }
        assert!(
            loop_detected(&stalled, rules)
                .unwrap()
                .contains("6 committed iterations in a row without a fitness improvement")
        );
        // Changes that improve the fitness now and then: healthy.
        let improving = |n: u64| {
            let mut kept = committed(n, Outcome::Accepted, &format!("{n}"));
            kept.fitness_before = Some(100.0 - n as f64);
            kept.fitness_after = Some(99.0 - n as f64);
            kept
        };
        let healthy: Vec<Iteration> = (1..=20)
            .map(|n| {
                if n % 3 == 0 {
                    improving(n)
                } else {
                    committed(n, Outcome::Rejected, &format!("{n}"))
                }
            })
            .collect();
        assert_eq!(loop_detected(&healthy, rules), None);
    }

    #[test]
    fn changes_kept_without_a_fitness_improvement_are_no_progress() {
        let rules = LoopRules {
            same_plan: 0,
            same_refused_change: 0,
            no_progress: 4,
        };
        // Every change kept, the fitness the same each time.
        let kept_flat: Vec<Iteration> = (1..=4)
            .map(|n| committed(n, Outcome::Accepted, &format!("{n}")))
            .collect();
        assert_eq!(
            loop_detected(&kept_flat, rules).unwrap(),
            "loop detected: 4 committed iterations in a row without a fitness improvement \
             (changes kept or not); the fitness has stayed at 3 through all 4 of them"
        );
        assert_eq!(loop_detected(&kept_flat[..3], rules), None);
        // An improvement, then four kept changes that gain nothing.
        let mut improved_once = vec![committed(1, Outcome::Accepted, "a")];
        improved_once[0].fitness_before = Some(14.0);
        improved_once[0].fitness_after = Some(3.0);
        improved_once.extend((2..=5).map(|n| committed(n, Outcome::Accepted, &format!("{n}"))));
        assert_eq!(
            loop_detected(&improved_once, rules).unwrap(),
            "loop detected: 4 committed iterations in a row without a fitness improvement \
             (changes kept or not); the fitness last improved at iteration 1, from 14 to 3, \
             and has stayed at 3 since"
        );
    }

    fn refused_by(by: RefusedBy) -> Verdict {
        Verdict::Rejected {
            reason: format!("refused by {}", by.as_str()),
            details: "error[E0308]: mismatched types\n --> src/lib.rs:3:5".into(),
            fitness_after: None,
            variant: Some(crate::domain::Variant {
                iteration: 4,
                commit: "c4".into(),
                parent: "p".into(),
                outcome: Outcome::Rejected,
                refused_by: Some(by),
                rules_checked: Vec::new(),
                fitness_before: None,
                fitness_after: None,
                validation: crate::domain::Validation::Failed("error".into()),
                generated_tests: Vec::new(),
                started_from: None,
                change_id: String::new(),
            }),
        }
    }

    #[test]
    fn a_lost_login_is_told_from_other_failures() {
        let job = |status, error: &str, api: Option<&str>| JobOutcome {
            job_id: 1,
            status,
            output: String::new(),
            error: Some(error.into()),
            usage: Usage::default(),
            claude: crate::domain::ClaudeFacts {
                api_error_status: api.map(String::from),
                ..Default::default()
            },
        };
        let reason = login_lost(&job(
            JobStatus::Failed,
            "Not logged in · Please run /login",
            None,
        ))
        .expect("not logged in");
        assert!(
            reason.starts_with(
                "Claude Code's login is gone: Not logged in · Please run /login; log in again"
            ),
            "{reason}"
        );
        assert!(login_lost(&job(JobStatus::Failed, "API Error: 401 {…}", Some("401"))).is_some());
        assert_eq!(
            login_lost(&job(JobStatus::Failed, "exit 143 after 12s", None)),
            None
        );
        assert_eq!(
            login_lost(&job(JobStatus::Timeout, "did not finish", Some("529"))),
            None
        );
        assert_eq!(
            login_lost(&job(JobStatus::Completed, "Please run /login", None)),
            None
        );
    }

    #[test]
    fn only_what_validation_or_a_rule_refused_is_repaired() {
        let prompt = repair_prompt(Some(&refused_by(RefusedBy::Step(Judge::Validation))))
            .expect("validation refusals are repaired");
        assert!(prompt.contains("refused by validation"), "{prompt}");
        assert!(
            prompt.contains("error[E0308]: mismatched types"),
            "{prompt}"
        );
        assert!(
            repair_prompt(Some(&refused_by(RefusedBy::Rule("protected-path".into())))).is_some()
        );
        for judgement in [Judge::Fitness, Judge::Approval] {
            assert_eq!(
                repair_prompt(Some(&refused_by(RefusedBy::Step(judgement)))),
                None
            );
        }
        assert_eq!(repair_prompt(Some(&Verdict::NoChange)), None);
        assert_eq!(repair_prompt(None), None);
    }

    #[test]
    fn a_repair_adds_up_both_turns_and_keeps_the_change_that_was_made() {
        let job = |status, tokens: u64, denied: &[&str]| JobOutcome {
            job_id: tokens,
            status,
            output: String::new(),
            error: None,
            usage: Usage {
                input_tokens: tokens,
                output_tokens: 1,
                cost_usd: 0.5,
            },
            claude: crate::domain::ClaudeFacts {
                denied_tools: denied.iter().map(|t| t.to_string()).collect(),
                ..Default::default()
            },
        };
        let first = job(JobStatus::Completed, 10, &["Bash"]);
        let kept = after_repair(
            first.clone(),
            job(JobStatus::Completed, 20, &["Bash", "WebFetch"]),
        );
        assert_eq!(kept.job_id, 20);
        assert_eq!((kept.usage.input_tokens, kept.usage.output_tokens), (30, 2));
        assert_eq!(kept.usage.cost_usd, 1.0);
        assert_eq!(kept.claude.denied_tools, ["Bash", "WebFetch"]);
        let failed = after_repair(first, job(JobStatus::Failed, 5, &[]));
        assert_eq!((failed.job_id, failed.status), (10, JobStatus::Completed));
        assert_eq!(failed.usage.input_tokens, 15);
    }
}
