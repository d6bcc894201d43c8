//! The learner's pure decisions, apart from the actor and the store: how one
//! experience updates the statistics, the bandit and the rules (`learn`),
//! and how the candidates are ranked for a situation (`rank`): by the
//! bandit's upper confidence bound, lifted by the rules that hold, a
//! capability that gained nothing in this very situation last; with
//! learning off, a seeded uniform draw. With their unit tests.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::snapshot::{CapabilityStats, LearnerSnapshot};
use crate::domain::{Experience, Outcome, RankedCapability, Rule, Signals};
use crate::learning::Settings;
use crate::learning::bandit;

/// How much a holding rule lifts its capability's score, per unit of weight:
/// enough to prefer a capability that worked for a code present now over
/// one never tried.
const RULE_LIFT: f64 = 0.5;
/// What a capability loses for having gained nothing in the very situation
/// the workspace is in now (or for a refused change where the same warnings
/// were there): the tools are deterministic, so it would gain nothing
/// again. Larger than any score, so it goes last.
const FRUITLESS: f64 = 10.0;

/// Folds one experience into everything the learner keeps. `after` is what
/// the workspace showed once the change was kept (`None`: nothing kept);
/// `previous` is the experience before it.
pub fn learn(
    snapshot: &mut LearnerSnapshot,
    experience: &Experience,
    after: Option<&Signals>,
    previous: Option<&Experience>,
) {
    let reward = crate::learning::reward(experience);
    let entry = snapshot
        .stats
        .entry(experience.capability.clone())
        .or_default();
    entry.attempts += 1;
    entry.total_reward += reward;
    entry.duration_ms += experience.duration.as_millis() as u64;
    entry.tokens += experience.usage.tokens();
    for tool in &experience.denied_tools {
        *entry.denied_tools.entry(tool.clone()).or_default() += 1;
    }
    if experience.repaired {
        entry.repairs += 1;
        entry.repairs_kept += u64::from(experience.outcome == Outcome::Accepted);
    }
    if experience.outcome == Outcome::Accepted {
        entry.accepted += 1;
        entry.files_changed += u64::from(experience.files_changed);
        if let (Some(before), Some(after)) = (experience.fitness_before, experience.fitness_after) {
            entry.fitness_gain += before - after;
        }
    }
    let x = situation_features(&experience.signals, previous);
    snapshot.bandit.update(&experience.capability, &x, reward);
    let kept = (experience.outcome == Outcome::Accepted)
        .then_some(after)
        .flatten();
    let observed = snapshot
        .rules
        .observe(&experience.capability, &experience.signals, kept);
    for rule in &observed.born {
        tracing::info!(rule = %rule, "rule learned");
    }
    for rule in &observed.dropped {
        tracing::info!(rule = %rule, "rule dropped: it stopped holding");
    }
    snapshot.experiences += 1;
}

/// The bandit's view of a situation: its terms, and what produced the
/// head when the last iteration kept a gain (`after:<capability>`: a fixer
/// run again right after its own fix has usually nothing left to do, which
/// the bandit learns like anything else), hashed, at unit length (so an
/// untried capability's exploration bonus is the exploration weight,
/// whatever the number of terms).
fn situation_features(signals: &Signals, previous: Option<&Experience>) -> Vec<f64> {
    let mut terms = signals.terms();
    if let Some(previous) = previous.filter(|p| crate::learning::gain(p) > 0.0) {
        terms.push(format!("after:{}", previous.capability));
    }
    let mut x = bandit::features(&terms);
    let norm = x.iter().map(|v| v * v).sum::<f64>().sqrt();
    for v in &mut x {
        *v /= norm;
    }
    x
}

/// Whether `earlier` says its capability would gain nothing now: it gained
/// nothing in this very situation, or its change was refused where most of
/// the warning codes shown now were already there (whatever made it fail
/// is likely still there: a fix elsewhere removes some codes and may add
/// one, but rarely the one that broke the tests).
fn fruitless_here(earlier: &Experience, now: &Signals) -> bool {
    // A model's answer differs from one ask to the next: only a local
    // command (no prompt) is known to do again what it did.
    if now.warnings.is_empty() || earlier.prompt.is_some() || crate::learning::gain(earlier) > 0.0 {
        return false;
    }
    let same = earlier.signals.warnings == now.warnings;
    let shared = now
        .warnings
        .keys()
        .filter(|code| earlier.signals.warnings.contains_key(*code))
        .count();
    let refused_on_most = earlier.outcome == Outcome::Rejected && 2 * shared > now.warnings.len();
    same || refused_on_most
}

/// Ranks `candidates` for iteration `iteration` in the situation `signals`,
/// best first. Ties (and the whole order, with learning off) are drawn with
/// a generator seeded by the seed and the iteration: the same run makes the
/// same choices after a restart. `recent` are the latest experiences: a
/// capability that gained nothing in this very situation goes last.
pub fn rank(
    settings: &Settings,
    snapshot: &LearnerSnapshot,
    candidates: &[String],
    signals: &Signals,
    iteration: u64,
    recent: &[Experience],
) -> Vec<RankedCapability> {
    let order = seeded_order(settings.seed, candidates, iteration);
    if !settings.enabled {
        return order
            .into_iter()
            .map(|id| drawn_at_random(id, &snapshot.stats_of(id)))
            .collect();
    }
    let scoring = Scoring {
        snapshot,
        exploration: settings.exploration,
        features: situation_features(signals, recent.last()),
        rules: snapshot.rules.holding(&signals.terms()),
        signals,
        recent,
    };
    let mut ranked: Vec<RankedCapability> = order.into_iter().map(|id| scoring.rank(id)).collect();
    // Stable: equal scores keep the seeded order.
    ranked.sort_by(|a, b| b.score.total_cmp(&a.score));
    ranked
}

/// The candidates in the order a generator seeded by `seed` and the
/// iteration draws.
fn seeded_order(seed: u64, candidates: &[String], iteration: u64) -> Vec<&String> {
    let mut rng = ChaCha8Rng::seed_from_u64(
        seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .wrapping_add(iteration),
    );
    let mut order: Vec<&String> = candidates.iter().collect();
    order.shuffle(&mut rng);
    order
}

/// A candidate where learning is off: no score, its place drawn.
fn drawn_at_random(id: &str, stats: &CapabilityStats) -> RankedCapability {
    RankedCapability {
        id: id.to_string(),
        score: 0.0,
        attempts: stats.attempts,
        mean_reward: stats.mean_reward(),
        why: "learning off: drawn at random".into(),
        fruitless: false,
    }
}

/// What every candidate of one advice is scored against.
struct Scoring<'a> {
    snapshot: &'a LearnerSnapshot,
    exploration: f64,
    /// The situation as the bandit sees it.
    features: Vec<f64>,
    /// The rules that hold in the situation.
    rules: Vec<Rule>,
    signals: &'a Signals,
    recent: &'a [Experience],
}

impl Scoring<'_> {
    /// The bandit's bound, lifted by the candidate's holding rule, lowered
    /// when it gained nothing here; and why, in a sentence.
    fn rank(&self, id: &str) -> RankedCapability {
        let (bound, predicted) = self
            .snapshot
            .bandit
            .score(id, &self.features, self.exploration);
        let rule = self.rules.iter().find(|r| r.capability == id);
        let lift = rule.map_or(0.0, |r| RULE_LIFT * r.weight);
        let fruitless = self
            .recent
            .iter()
            .rev()
            .find(|e| e.capability == id && fruitless_here(e, self.signals));
        let penalty = if fruitless.is_some() { FRUITLESS } else { 0.0 };
        let stats = self.snapshot.stats_of(id);
        let why = match (fruitless, rule) {
            (Some(e), _) => format!(
                "gained nothing in this situation at iteration {} ({})",
                e.iteration,
                e.outcome.as_str()
            ),
            (None, Some(rule)) => format!(
                "rule: {} (predicted reward {predicted:.2})",
                rule.sentence()
            ),
            (None, None) if stats.attempts == 0 => "not tried yet".to_string(),
            (None, None) => format!(
                "predicted reward {predicted:.2} here, bound {bound:.2}, {} attempt(s)",
                stats.attempts
            ),
        };
        RankedCapability {
            id: id.to_string(),
            score: bound + lift - penalty,
            attempts: stats.attempts,
            mean_reward: stats.mean_reward(),
            why,
            fruitless: fruitless.is_some(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;
    use crate::domain::Usage;

    fn signals(codes: &[&str]) -> Signals {
        Signals {
            warnings: codes.iter().map(|c| (c.to_string(), 3)).collect(),
            ..Signals::default()
        }
    }

    fn experience(capability: &str, outcome: Outcome, codes: &[&str]) -> Experience {
        Experience {
            iteration: 0,
            capability: capability.into(),
            prompt: None,
            signals: signals(codes),
            outcome,
            fitness_before: Some(6.0),
            fitness_after: Some(if outcome == Outcome::Accepted {
                3.0
            } else {
                6.0
            }),
            files_changed: 1,
            usage: Usage::default(),
            duration: Duration::from_secs(2),
            error_signature: None,
            denied_tools: Vec::new(),
            repaired: false,
        }
    }

    fn ids(ranked: &[RankedCapability]) -> Vec<&str> {
        ranked.iter().map(|r| r.id.as_str()).collect()
    }

    /// Whether repair pays, and what the tool set lacks, per capability.
    #[test]
    fn repairs_and_denied_tools_are_counted_per_capability() {
        let mut snapshot = LearnerSnapshot::default();
        let mut kept = experience("claude-code", Outcome::Accepted, &[]);
        kept.repaired = true;
        kept.denied_tools = vec!["Bash".into(), "WebFetch".into()];
        let mut refused = experience("claude-code", Outcome::Rejected, &[]);
        refused.repaired = true;
        refused.denied_tools = vec!["Bash".into()];
        let plain = experience("claude-code", Outcome::Rejected, &[]);
        for experience in [&kept, &refused, &plain] {
            learn(&mut snapshot, experience, None, None);
        }
        let stats = snapshot.stats_of("claude-code").summary("claude-code");
        assert_eq!(
            (stats.attempts, stats.repairs, stats.repairs_kept),
            (3, 2, 1)
        );
        assert_eq!(
            stats.denied_tools,
            BTreeMap::from([("Bash".to_string(), 2), ("WebFetch".to_string(), 1)])
        );
    }

    /// Learning carries over to a new workspace that shows the same codes:
    /// what fixed `unused_imports` before is ranked first where it appears,
    /// and the rule that says so is why.
    #[test]
    fn what_worked_for_a_code_is_ranked_first_where_the_code_appears() {
        let settings = Settings::default();
        let candidates: Vec<String> = ["fmt", "clippy-fix", "cargo-fix"].map(String::from).into();
        let mut snapshot = LearnerSnapshot::default();
        let fixed = experience("cargo-fix", Outcome::Accepted, &["unused_imports"]);
        learn(&mut snapshot, &fixed, Some(&signals(&[])), None);
        learn(
            &mut snapshot,
            &experience("fmt", Outcome::NoChange, &["unused_imports"]),
            None,
            None,
        );
        let now = signals(&["unused_imports", "unused_mut"]);
        for iteration in 0..5 {
            let ranked = rank(&settings, &snapshot, &candidates, &now, iteration, &[]);
            assert_eq!(ranked[0].id, "cargo-fix", "{:?}", ids(&ranked));
            assert!(ranked[0].why.starts_with("rule:"), "{}", ranked[0].why);
        }
        // Once it did nothing in this very situation, it goes last.
        let mut fruitless = experience("cargo-fix", Outcome::NoChange, &[]);
        fruitless.signals = now.clone();
        fruitless.iteration = 7;
        let ranked = rank(&settings, &snapshot, &candidates, &now, 8, &[fruitless]);
        assert_eq!(ranked.last().map(|r| r.id.as_str()), Some("cargo-fix"));
        assert!(
            ranked.last().unwrap().why.contains("at iteration 7"),
            "{}",
            ranked.last().unwrap().why
        );
        // A change refused where most of these warnings were shown: still
        // last; where most codes are new, not.
        let mut refused = experience("cargo-fix", Outcome::Rejected, &[]);
        refused.signals = signals(&["unused_imports", "unused_mut", "dead_code"]);
        let ranked = rank(
            &settings,
            &snapshot,
            &candidates,
            &now,
            9,
            &[refused.clone()],
        );
        assert_eq!(ranked.last().map(|r| r.id.as_str()), Some("cargo-fix"));
        // A model capability (a prompt) may answer differently next time:
        // never written off.
        let mut asked = experience("cargo-fix", Outcome::NoChange, &[]);
        asked.signals = now.clone();
        asked.prompt = Some("fix-warning".into());
        let ranked = rank(&settings, &snapshot, &candidates, &now, 9, &[asked]);
        assert!(ranked.iter().all(|r| !r.fruitless), "{:?}", ids(&ranked));
        let elsewhere = signals(&["unused_imports", "unused_parens"]);
        let ranked = rank(&settings, &snapshot, &candidates, &elsewhere, 9, &[refused]);
        assert_eq!(ranked[0].id, "cargo-fix", "{:?}", ids(&ranked));
    }

    #[test]
    fn with_learning_off_the_choice_is_uniform_and_seeded() {
        let settings = Settings {
            enabled: false,
            ..Settings::default()
        };
        let candidates: Vec<String> = ["a", "b", "c", "d"].map(String::from).into();
        let mut snapshot = LearnerSnapshot::default();
        learn(
            &mut snapshot,
            &experience("a", Outcome::Accepted, &["x"]),
            Some(&signals(&[])),
            None,
        );
        let mut firsts = BTreeMap::new();
        for iteration in 0..400 {
            let ranked = rank(
                &settings,
                &snapshot,
                &candidates,
                &signals(&["x"]),
                iteration,
                &[],
            );
            *firsts.entry(ranked[0].id.clone()).or_insert(0) += 1;
            let again = rank(
                &settings,
                &snapshot,
                &candidates,
                &signals(&["x"]),
                iteration,
                &[],
            );
            assert_eq!(ids(&ranked), ids(&again), "same seed, same draw");
        }
        assert_eq!(firsts.len(), 4, "{firsts:?}");
        assert!(firsts.values().all(|n| *n > 60), "{firsts:?}");
    }
}
