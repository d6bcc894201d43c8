//! Domain values to stored records and back: the one place where a committed
//! [`Iteration`] or an [`Experience`] becomes a record and a record becomes
//! one again. Callers of the store see only the domain types; what refused
//! a variant and its validation are typed here and their text on disk.

use std::time::Duration;

use super::records::{ExperienceRecord, IterationRecord, VariantRecord};
use crate::domain::{Experience, Iteration, RefusedBy, Signals, Usage, Validation, Variant};

impl From<&Iteration> for IterationRecord {
    fn from(i: &Iteration) -> Self {
        IterationRecord {
            number: i.number,
            goal: i.goal.clone(),
            capability: i.capability.clone(),
            outcome: i.outcome,
            fitness_before: i.fitness_before,
            fitness_after: i.fitness_after,
            input_tokens: i.usage.input_tokens,
            output_tokens: i.usage.output_tokens,
            cost_usd: i.usage.cost_usd,
            duration_ms: i.duration.as_millis() as u64,
            commit: i.commit.clone(),
            summary: i.summary.clone(),
            finished_at_ms: i.finished_at_ms,
        }
    }
}

impl From<IterationRecord> for Iteration {
    fn from(r: IterationRecord) -> Self {
        Iteration {
            number: r.number,
            goal: r.goal,
            capability: r.capability,
            outcome: r.outcome,
            fitness_before: r.fitness_before,
            fitness_after: r.fitness_after,
            usage: Usage {
                input_tokens: r.input_tokens,
                output_tokens: r.output_tokens,
                cost_usd: r.cost_usd,
            },
            duration: Duration::from_millis(r.duration_ms),
            commit: r.commit,
            summary: r.summary,
            finished_at_ms: r.finished_at_ms,
            // Kept in its own tree; the store adds it.
            variant: None,
        }
    }
}

impl From<&Variant> for VariantRecord {
    fn from(v: &Variant) -> Self {
        VariantRecord {
            iteration: v.iteration,
            commit: v.commit.clone(),
            parent: v.parent.clone(),
            outcome: v.outcome,
            refused_by: v.refused_by.as_ref().map(|by| by.as_str().to_string()),
            rules_checked: v.rules_checked.clone(),
            fitness_before: v.fitness_before,
            fitness_after: v.fitness_after,
            validation: v.validation.to_string(),
            generated_tests: v.generated_tests.clone(),
            started_from: v.started_from,
            change_id: v.change_id.clone(),
        }
    }
}

impl From<VariantRecord> for Variant {
    fn from(r: VariantRecord) -> Self {
        Variant {
            iteration: r.iteration,
            commit: r.commit,
            parent: r.parent,
            outcome: r.outcome,
            refused_by: r.refused_by.as_deref().map(RefusedBy::from_name),
            rules_checked: r.rules_checked,
            fitness_before: r.fitness_before,
            fitness_after: r.fitness_after,
            validation: Validation::from_text(&r.validation),
            generated_tests: r.generated_tests,
            started_from: r.started_from,
            change_id: r.change_id,
        }
    }
}

impl From<&Experience> for ExperienceRecord {
    fn from(e: &Experience) -> Self {
        ExperienceRecord {
            iteration: e.iteration,
            capability: e.capability.clone(),
            outcome: e.outcome,
            fitness_before: e.fitness_before,
            fitness_after: e.fitness_after,
            input_tokens: e.usage.input_tokens,
            output_tokens: e.usage.output_tokens,
            cost_usd: e.usage.cost_usd,
            duration_ms: e.duration.as_millis() as u64,
            error_signature: e.error_signature.clone(),
            prompt: e.prompt.clone(),
            warnings: e
                .signals
                .warnings
                .iter()
                .map(|(code, count)| (code.clone(), *count))
                .collect(),
            failing_tests: e.signals.failing_tests.clone(),
            error: e.signals.error.clone(),
            files_changed: e.files_changed,
            denied_tools: e.denied_tools.clone(),
            repaired: e.repaired,
        }
    }
}

impl From<ExperienceRecord> for Experience {
    fn from(r: ExperienceRecord) -> Self {
        Experience {
            iteration: r.iteration,
            capability: r.capability,
            outcome: r.outcome,
            fitness_before: r.fitness_before,
            fitness_after: r.fitness_after,
            usage: Usage {
                input_tokens: r.input_tokens,
                output_tokens: r.output_tokens,
                cost_usd: r.cost_usd,
            },
            duration: Duration::from_millis(r.duration_ms),
            error_signature: r.error_signature,
            prompt: r.prompt,
            signals: Signals {
                warnings: r.warnings.into_iter().collect(),
                places: Default::default(),
                failing_tests: r.failing_tests,
                error: r.error,
            },
            files_changed: r.files_changed,
            denied_tools: r.denied_tools,
            repaired: r.repaired,
        }
    }
}
