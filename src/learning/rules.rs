//! Rules in the manner of experiential-learning agents: "when warning code X
//! is present, capability Y works". A rule is born the first time Y removed
//! X's warnings; each later use of Y where X was present is evidence for it
//! (X went down) or against it (it did not). Evidence decays, so recent
//! outcomes weigh most, and a rule whose weight falls low once it has enough
//! evidence is dropped: it stopped holding. The planner reads the rules that
//! hold: they lift their capability's rank and go into model prompts.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::domain::{Rule, Signals};

/// Each new observation multiplies the old evidence by this.
const DECAY: f64 = 0.9;
/// A rule holds at this weight or above…
const HOLD_WEIGHT: f64 = 0.6;
/// …and is dropped below this one once it has `DROP_EVIDENCE` observations.
const DROP_WEIGHT: f64 = 0.35;
const DROP_EVIDENCE: f64 = 3.0;
/// The most rules kept; beyond it the ones with the least evidence go.
const MAX_RULES: usize = 500;

/// The evidence for one rule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    pub works: f64,
    pub fails: f64,
}

impl Evidence {
    /// Laplace-smoothed share of the evidence that says the rule works.
    pub fn weight(&self) -> f64 {
        (self.works + 1.0) / (self.works + self.fails + 2.0)
    }

    pub fn total(&self) -> f64 {
        self.works + self.fails
    }

    fn holds(&self) -> bool {
        self.weight() >= HOLD_WEIGHT
    }

    fn observe(&mut self, worked: bool) {
        self.works *= DECAY;
        self.fails *= DECAY;
        if worked {
            self.works += 1.0;
        } else {
            self.fails += 1.0;
        }
    }
}

/// Every rule, keyed by (term, capability).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Rules {
    entries: BTreeMap<(String, String), Evidence>,
    /// How many rules were dropped since the start.
    pub dropped: u64,
}

/// What one observation did to the rules.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    pub born: Vec<String>,
    pub dropped: Vec<String>,
}

impl Rules {
    /// Folds in one use of `capability` on a workspace that showed `before`
    /// and, if its change was kept, `after` (`None`: nothing was kept). A
    /// warning code whose count went down is evidence that the capability
    /// works for it; one that did not is evidence against an existing rule.
    pub fn observe(
        &mut self,
        capability: &str,
        before: &Signals,
        after: Option<&Signals>,
    ) -> Observed {
        let mut observed = Observed::default();
        for (code, count) in &before.warnings {
            let remaining = after.map_or(*count, |a| a.warnings.get(code).copied().unwrap_or(0));
            let worked = remaining < *count;
            let key = (format!("warn:{code}"), capability.to_string());
            match self.entries.get_mut(&key) {
                Some(evidence) => {
                    evidence.observe(worked);
                    if evidence.total() >= DROP_EVIDENCE && evidence.weight() < DROP_WEIGHT {
                        self.entries.remove(&key);
                        self.dropped += 1;
                        observed.dropped.push(format!("{} → {}", key.0, key.1));
                    }
                }
                None if worked => {
                    let mut evidence = Evidence::default();
                    evidence.observe(true);
                    observed.born.push(format!("{} → {}", key.0, key.1));
                    self.entries.insert(key, evidence);
                }
                None => {}
            }
        }
        self.bound();
        observed
    }

    fn bound(&mut self) {
        while self.entries.len() > MAX_RULES {
            let weakest = self
                .entries
                .iter()
                .min_by(|a, b| a.1.total().total_cmp(&b.1.total()))
                .map(|(key, _)| key.clone());
            match weakest {
                Some(key) => self.entries.remove(&key),
                None => break,
            };
        }
    }

    /// The rules that hold for the terms of a situation, strongest first.
    pub fn holding(&self, terms: &[String]) -> Vec<Rule> {
        let mut rules: Vec<Rule> = self
            .all()
            .into_iter()
            .filter(|rule| rule.holds && terms.contains(&rule.term))
            .collect();
        rules.sort_by(|a, b| b.weight.total_cmp(&a.weight));
        rules
    }

    /// Every rule, holding or not, in key order.
    pub fn all(&self) -> Vec<Rule> {
        self.entries
            .iter()
            .map(|((term, capability), evidence)| Rule {
                term: term.clone(),
                capability: capability.clone(),
                weight: evidence.weight(),
                evidence: evidence.total(),
                holds: evidence.holds(),
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signals(codes: &[(&str, u32)]) -> Signals {
        Signals {
            warnings: codes.iter().map(|(c, n)| (c.to_string(), *n)).collect(),
            ..Signals::default()
        }
    }

    #[test]
    fn a_rule_is_born_from_a_fix_and_only_for_the_code_it_fixed() {
        let mut rules = Rules::default();
        let before = signals(&[("unused_imports", 3), ("clippy::needless_return", 2)]);
        let after = signals(&[("clippy::needless_return", 2)]);
        let observed = rules.observe("cargo-fix", &before, Some(&after));
        assert_eq!(observed.born, ["warn:unused_imports → cargo-fix"]);
        let terms = before.terms();
        let holding = rules.holding(&terms);
        assert_eq!(holding.len(), 1);
        assert_eq!(holding[0].capability, "cargo-fix");
        assert!(holding[0].sentence().contains("unused_imports"));
        // Not in a situation without that code.
        assert!(rules.holding(&after.terms()).is_empty());
    }

    #[test]
    fn a_rule_loses_weight_and_is_dropped_after_contrary_evidence() {
        let mut rules = Rules::default();
        let before = signals(&[("unused_imports", 3)]);
        rules.observe("cargo-fix", &before, Some(&signals(&[])));
        let terms = before.terms();
        let first = rules.holding(&terms)[0].weight;
        // The capability stops working for that code: rejected, then kept
        // without touching it.
        rules.observe("cargo-fix", &before, None);
        let second = rules.all()[0].weight;
        assert!(second < first, "{second} < {first}");
        assert!(
            rules.holding(&terms).is_empty(),
            "a rule at {second} no longer holds"
        );
        rules.observe("cargo-fix", &before, Some(&before));
        assert_eq!(rules.len(), 1, "not dropped before enough evidence");
        let observed = rules.observe("cargo-fix", &before, None);
        assert_eq!(observed.dropped, ["warn:unused_imports → cargo-fix"]);
        assert!(rules.is_empty());
        assert_eq!(rules.dropped, 1);
        // Failures alone never create a rule.
        rules.observe("fmt", &before, None);
        assert!(rules.is_empty());
    }
}
