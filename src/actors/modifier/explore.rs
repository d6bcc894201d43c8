//! When the line stalls, start from an earlier variant: after
//! `[run] start_from_variant_after` committed iterations without a fitness
//! improvement (and without an iteration that already started from one),
//! the best refused variant that passed validation — refused by fitness or
//! by an operator, never by a safety rule — and was never started from is
//! applied to the worktree first. The job builds on it and the whole change
//! is judged against the head as usual, so nothing worse than the head is
//! ever kept. Pure choice; the modifier applies it.

use std::collections::{HashSet, VecDeque};

use crate::domain::{Iteration, Judge, Outcome, RefusedBy, Validation, Variant};
use crate::store::{Store, StoreError};

/// How many of the newest variants a stalled line chooses among.
const ARCHIVE_SEARCHED: usize = 500;

/// What the modifier keeps between iterations to choose a variant: the
/// newest archived variants (read from the store once, then only those
/// committed since: a stalled line asks every iteration) and the variants
/// found not to apply.
#[derive(Debug, Default)]
pub struct Exploration {
    window: VecDeque<Variant>,
    read_through: u64,
    pub unappliable: HashSet<u64>,
}

impl Exploration {
    /// Reads the variants committed since the last time.
    pub fn refresh(&mut self, store: &Store) -> Result<(), StoreError> {
        for variant in store.variants_after(self.read_through, ARCHIVE_SEARCHED)? {
            self.read_through = variant.iteration;
            self.window.push_back(variant);
            if self.window.len() > ARCHIVE_SEARCHED {
                self.window.pop_front();
            }
        }
        self.window.make_contiguous();
        Ok(())
    }

    /// The best variant to start from among the newest (see [`best`]).
    pub fn best(&self) -> Option<&Variant> {
        best(self.window.as_slices().0, &self.unappliable)
    }
}

/// Whether the last `after` iterations gained no fitness and none of them
/// started from a variant: the one question asked every iteration, before
/// the archive is read at all.
pub fn stalled(after: u64, recent: &[Iteration]) -> bool {
    if after == 0 || (recent.len() as u64) < after {
        return false;
    }
    let window = &recent[recent.len() - after as usize..];
    let improved = window.iter().any(|i| {
        i.outcome == Outcome::Accepted
            && matches!((i.fitness_before, i.fitness_after), (Some(b), Some(a)) if a < b)
    });
    let explored = window
        .iter()
        .any(|i| i.variant.as_ref().is_some_and(|v| v.started_from.is_some()));
    !improved && !explored
}

/// The best refused variant to start from: passed validation, refused by
/// fitness or an operator, never started from, known to apply.
pub fn best<'a>(archive: &'a [Variant], failed: &HashSet<u64>) -> Option<&'a Variant> {
    let started_from: HashSet<u64> = archive.iter().filter_map(|v| v.started_from).collect();
    archive
        .iter()
        .filter(|v| {
            v.outcome == Outcome::Rejected
                && v.validation == Validation::Passed
                && matches!(
                    v.refused_by,
                    Some(RefusedBy::Step(Judge::Fitness | Judge::Approval))
                )
                && !v.commit.is_empty()
                && v.fitness_after.is_some()
                && !started_from.contains(&v.iteration)
                && !failed.contains(&v.iteration)
        })
        // Lowest fitness first; the newest among equals.
        .min_by(|a, b| {
            a.fitness_after
                .partial_cmp(&b.fitness_after)
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(b.iteration.cmp(&a.iteration))
        })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// The variant to start the next iteration from, if the line has stalled.
    /// `recent` are the last committed iterations (oldest first), `archive`
    /// the archived variants, `failed` variants that did not apply before.
    fn pick<'a>(
        after: u64,
        recent: &[Iteration],
        archive: &'a [Variant],
        failed: &HashSet<u64>,
    ) -> Option<&'a Variant> {
        if stalled(after, recent) {
            best(archive, failed)
        } else {
            None
        }
    }
    use crate::domain::Usage;

    fn iteration(number: u64, before: f64, after: f64, outcome: Outcome) -> Iteration {
        Iteration {
            number,
            goal: "g".into(),
            capability: "c".into(),
            outcome,
            fitness_before: Some(before),
            fitness_after: Some(after),
            usage: Usage::default(),
            duration: Duration::ZERO,
            commit: None,
            summary: String::new(),
            finished_at_ms: 0,
            variant: None,
        }
    }

    fn refused(number: u64, by: &str, fitness: f64) -> Variant {
        Variant {
            iteration: number,
            commit: format!("c{number}"),
            parent: "p".into(),
            outcome: Outcome::Rejected,
            refused_by: Some(RefusedBy::from_name(by)),
            rules_checked: Vec::new(),
            fitness_before: Some(3.0),
            fitness_after: Some(fitness),
            validation: Validation::Passed,
            generated_tests: Vec::new(),
            started_from: None,
            change_id: String::new(),
        }
    }

    #[test]
    fn a_stalled_line_starts_from_the_best_variant_refused_by_fitness() {
        let stalled: Vec<Iteration> = (1..=3)
            .map(|n| iteration(n, 3.0, 3.0, Outcome::Accepted))
            .collect();
        let archive = vec![
            refused(1, "fitness", 5.0),
            refused(2, "fitness", 4.0),
            refused(3, "no-new-unsafe", 1.0),
        ];
        let none = HashSet::new();
        assert_eq!(pick(3, &stalled, &archive, &none).unwrap().iteration, 2);
        // Not before the window is full, not when it is off.
        assert!(pick(4, &stalled, &archive, &none).is_none());
        assert!(pick(0, &stalled, &archive, &none).is_none());
        // Not after an improvement.
        let mut improving = stalled.clone();
        improving[2] = iteration(3, 3.0, 2.0, Outcome::Accepted);
        assert!(pick(3, &improving, &archive, &none).is_none());
        // A variant that did not apply, or was started from, is not taken again.
        assert_eq!(
            pick(3, &stalled, &archive, &HashSet::from([2]))
                .unwrap()
                .iteration,
            1
        );
        let mut used = archive.clone();
        used.push(Variant {
            started_from: Some(2),
            ..refused(4, "fitness", 9.0)
        });
        assert_eq!(pick(3, &stalled, &used, &none).unwrap().iteration, 1);
    }
}
