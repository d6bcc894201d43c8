//! Domain values to stored records and back: the one place where a committed
//! [`Iteration`] or an [`Experience`] becomes a record and a record becomes
//! one again. Callers of the store see only the domain types.

use std::time::Duration;

use super::records::{ExperienceRecord, IterationRecord};
use crate::domain::{Experience, Iteration, Usage};

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
        }
    }
}
