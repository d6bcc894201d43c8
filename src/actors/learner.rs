//! The learner: records the experience of every iteration and turns it into
//! what the next plan is made from. It keeps per-capability statistics (for
//! operators), a contextual bandit that predicts each capability's reward in
//! the workspace's situation, and rules ("for warning X, capability Y
//! works") that gain and lose weight with evidence. An advice ranks the
//! candidates by the bandit's upper confidence bound lifted by the rules
//! that hold, and carries the past experiences most relevant to the
//! situation. With `[learning] enabled = false` the ranking is a uniform
//! random draw (the experiment's control arm); experiences are still kept.

use std::collections::BTreeMap;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::{Context, handle_common};
use crate::domain::{
    ActorKind, Advice, CapabilitySummary, Experience, LearnedRules, LearnerStats, Outcome,
    RankedCapability, Signals,
};
use crate::learning::bandit::{self, Bandit};
use crate::learning::rules::Rules;
use crate::learning::{Settings, retrieval};
use crate::messages::{ActorError, LearnerMsg};
use crate::store::{Store, codec};

const KIND: ActorKind = ActorKind::Learner;
const SCHEMA: u32 = 2;
/// How far back retrieval looks for relevant experiences.
const RETRIEVAL_WINDOW: usize = 500;
/// How much a holding rule lifts its capability's score, per unit of weight:
/// enough to prefer a capability that worked for a code present now over
/// one never tried.
const RULE_LIFT: f64 = 0.5;
/// How far back an advice looks for attempts in the very same situation.
const SAME_SITUATION_WINDOW: usize = 30;
/// What a capability loses for having gained nothing in the very situation
/// the workspace is in now (or for a refused change where the same warnings
/// were there): the tools are deterministic, so it would gain nothing
/// again. Larger than any score, so it goes last.
const FRUITLESS: f64 = 10.0;

/// What the learner knows of one capability, for operators.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CapabilityStats {
    pub attempts: u64,
    pub accepted: u64,
    pub total_reward: f64,
    pub fitness_gain: f64,
    pub tokens: u64,
    /// What it cost: time spent and files its kept changes touched.
    pub duration_ms: u64,
    pub files_changed: u64,
}

/// The learner's committed state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LearnerSnapshot {
    pub stats: BTreeMap<String, CapabilityStats>,
    pub experiences: u64,
    pub bandit: Bandit,
    pub rules: Rules,
}

/// The statistics as schema 1 kept them (no bandit, no rules, no costs).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LearnerSnapshotV1 {
    pub stats: BTreeMap<String, CapabilityStatsV1>,
    pub experiences: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CapabilityStatsV1 {
    pub attempts: u64,
    pub accepted: u64,
    pub total_reward: f64,
    pub fitness_gain: f64,
    pub tokens: u64,
}

impl From<LearnerSnapshotV1> for LearnerSnapshot {
    fn from(old: LearnerSnapshotV1) -> Self {
        LearnerSnapshot {
            stats: old
                .stats
                .into_iter()
                .map(|(id, s)| {
                    let stats = CapabilityStats {
                        attempts: s.attempts,
                        accepted: s.accepted,
                        total_reward: s.total_reward,
                        fitness_gain: s.fitness_gain,
                        tokens: s.tokens,
                        ..CapabilityStats::default()
                    };
                    (id, stats)
                })
                .collect(),
            experiences: old.experiences,
            ..LearnerSnapshot::default()
        }
    }
}

/// The stored snapshot, read in the schema it was written in.
fn load(store: &Store) -> Result<Option<LearnerSnapshot>, ActorError> {
    let record = store
        .snapshot(KIND.name())
        .map_err(|e| ActorError::Store(format!("cannot read the learner snapshot: {e}")))?;
    let unreadable = |e: codec::CodecError| {
        ActorError::Store(format!("the stored learner snapshot is unreadable: {e}"))
    };
    match record {
        None => Ok(None),
        Some(record) if record.schema == 1 => codec::decode::<LearnerSnapshotV1>(&record.body)
            .map(|old| Some(old.into()))
            .map_err(unreadable),
        Some(record) if record.schema == SCHEMA => {
            codec::decode(&record.body).map(Some).map_err(unreadable)
        }
        Some(record) => Err(ActorError::Store(format!(
            "the stored learner snapshot has schema version {}, this build reads versions 1 and {SCHEMA}; \
             use the build that wrote it or start with a new --state directory",
            record.schema
        ))),
    }
}

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
    let mut rng = ChaCha8Rng::seed_from_u64(
        settings
            .seed
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .wrapping_add(iteration),
    );
    let mut order: Vec<&String> = candidates.iter().collect();
    order.shuffle(&mut rng);
    let stats = |id: &str| snapshot.stats.get(id).cloned().unwrap_or_default();
    let mean = |s: &CapabilityStats| {
        if s.attempts == 0 {
            0.0
        } else {
            s.total_reward / s.attempts as f64
        }
    };
    if !settings.enabled {
        return order
            .into_iter()
            .map(|id| {
                let s = stats(id);
                RankedCapability {
                    id: id.clone(),
                    score: 0.0,
                    attempts: s.attempts,
                    mean_reward: mean(&s),
                    why: "learning off: drawn at random".into(),
                    fruitless: false,
                }
            })
            .collect();
    }
    let terms = signals.terms();
    let rules = snapshot.rules.holding(&terms);
    let x = situation_features(signals, recent.last());
    let mut ranked: Vec<RankedCapability> = order
        .into_iter()
        .map(|id| {
            let (bound, predicted) = snapshot.bandit.score(id, &x, settings.exploration);
            let rule = rules.iter().find(|r| &r.capability == id);
            let lift = rule.map_or(0.0, |r| RULE_LIFT * r.weight);
            let fruitless = recent
                .iter()
                .rev()
                .find(|e| &e.capability == id && fruitless_here(e, signals));
            let penalty = if fruitless.is_some() { FRUITLESS } else { 0.0 };
            let s = stats(id);
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
                (None, None) if s.attempts == 0 => "not tried yet".to_string(),
                (None, None) => format!(
                    "predicted reward {predicted:.2} here, bound {bound:.2}, {} attempt(s)",
                    s.attempts
                ),
            };
            RankedCapability {
                id: id.clone(),
                score: bound + lift - penalty,
                attempts: s.attempts,
                mean_reward: mean(&s),
                why,
                fruitless: fruitless.is_some(),
            }
        })
        .collect();
    // Stable: equal scores keep the seeded order.
    ranked.sort_by(|a, b| b.score.total_cmp(&a.score));
    ranked
}

pub struct Learner;

pub struct LearnerState {
    ctx: Context,
    snapshot: LearnerSnapshot,
}

impl Actor for Learner {
    type Msg = LearnerMsg;
    type State = LearnerState;
    type Arguments = Context;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        ctx: Context,
    ) -> Result<Self::State, ActorProcessingErr> {
        let snapshot = load(&ctx.store)?.unwrap_or_default();
        Ok(LearnerState { ctx, snapshot })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: LearnerMsg,
        state: &mut LearnerState,
    ) -> Result<(), ActorProcessingErr> {
        let settings = state.ctx.config.learning;
        match message {
            LearnerMsg::Advise {
                iteration,
                candidates,
                signals,
                reply,
            } => {
                let span = tracing::info_span!(
                    "learner.advise",
                    actor = KIND.name(),
                    iteration = iteration as i64,
                    relevant = tracing::field::Empty,
                    rules = tracing::field::Empty,
                );
                let _entered = span.enter();
                let terms = signals.terms();
                // One read of the store serves retrieval and the memory of
                // the same situation (the newest of the same window). With
                // no terms there is nothing to match: only the last
                // experience matters (`after:`).
                let window = if terms.is_empty() {
                    1
                } else {
                    RETRIEVAL_WINDOW
                };
                let past = state.ctx.store.experiences(window).unwrap_or_default();
                let relevant = retrieval::most_relevant(&past, &terms, settings.relevant);
                let (rules, recent) = if settings.enabled {
                    let newest = past.len().saturating_sub(SAME_SITUATION_WINDOW);
                    (state.snapshot.rules.holding(&terms), &past[newest..])
                } else {
                    (Vec::new(), &past[..0])
                };
                span.record("relevant", relevant.len() as i64);
                span.record("rules", rules.len() as i64);
                let _ = reply.send(Advice {
                    ranked: rank(
                        &settings,
                        &state.snapshot,
                        &candidates,
                        &signals,
                        iteration,
                        recent,
                    ),
                    relevant,
                    rules,
                });
            }
            LearnerMsg::Stats(reply) => {
                let capabilities = state
                    .snapshot
                    .stats
                    .iter()
                    .map(|(id, s)| summary(id, s))
                    .collect();
                let _ = reply.send(LearnerStats {
                    experiences: state.snapshot.experiences,
                    capabilities,
                });
            }
            LearnerMsg::Rules(reply) => {
                let _ = reply.send(LearnedRules {
                    rules: state.snapshot.rules.all(),
                    dropped: state.snapshot.rules.dropped,
                });
            }
            LearnerMsg::Experiences { last, reply } => {
                let found = state
                    .ctx
                    .store
                    .experiences(last)
                    .map_err(|e| ActorError::Store(e.to_string()));
                let _ = reply.send(found);
            }
            LearnerMsg::Forget { capability, reply } => {
                let known = state.snapshot.stats.remove(&capability).is_some();
                let modelled = state.snapshot.bandit.arms.remove(&capability).is_some();
                let _ = reply.send(known || modelled);
            }
            LearnerMsg::Record {
                experience,
                after,
                reply,
            } => {
                let _span = tracing::info_span!(
                    "learner.record",
                    actor = KIND.name(),
                    iteration = experience.iteration as i64,
                    capability = %experience.capability,
                    outcome = experience.outcome.as_str(),
                )
                .entered();
                let previous = state
                    .ctx
                    .store
                    .experiences(1)
                    .unwrap_or_default()
                    .pop()
                    .filter(|p| p.iteration < experience.iteration);
                learn(
                    &mut state.snapshot,
                    &experience,
                    after.as_deref(),
                    previous.as_ref(),
                );
                let _ = reply.send(());
            }
            LearnerMsg::Common(common) => {
                handle_common(KIND, SCHEMA, &state.ctx.store, &mut state.snapshot, common).await?
            }
        }
        Ok(())
    }
}

fn summary(id: &str, s: &CapabilityStats) -> CapabilitySummary {
    let per_attempt = |total: f64| {
        if s.attempts == 0 {
            0.0
        } else {
            total / s.attempts as f64
        }
    };
    CapabilitySummary {
        capability: id.to_string(),
        attempts: s.attempts,
        accepted: s.accepted,
        mean_reward: per_attempt(s.total_reward),
        fitness_gain: s.fitness_gain,
        tokens: s.tokens,
        mean_seconds: per_attempt(s.duration_ms as f64 / 1000.0),
        mean_files_changed: if s.accepted == 0 {
            0.0
        } else {
            s.files_changed as f64 / s.accepted as f64
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Usage;
    use std::time::Duration;

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
        }
    }

    fn ids(ranked: &[RankedCapability]) -> Vec<&str> {
        ranked.iter().map(|r| r.id.as_str()).collect()
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

    #[tokio::test]
    async fn a_schema_1_snapshot_is_read_and_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let old = LearnerSnapshotV1 {
            stats: [(
                "fmt".to_string(),
                CapabilityStatsV1 {
                    attempts: 3,
                    ..CapabilityStatsV1::default()
                },
            )]
            .into(),
            experiences: 3,
        };
        let record = crate::actors::make_snapshot(KIND, 1, &old).unwrap();
        store.put_snapshot(&record).await.unwrap();
        let loaded = load(&store).unwrap().unwrap();
        assert_eq!(loaded.stats["fmt"].attempts, 3);
        assert_eq!(loaded.experiences, 3);
        assert!(loaded.rules.is_empty());
    }
}
