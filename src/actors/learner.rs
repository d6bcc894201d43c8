//! The learner: records the experience of every iteration and keeps
//! per-capability statistics, from which it ranks the capabilities for the
//! next plan. Ranking is UCB1: the mean reward of a capability plus an
//! exploration bonus that shrinks as it is tried, so untried capabilities are
//! tried first and the choice settles on what works as experience grows.

use std::collections::BTreeMap;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::{Deserialize, Serialize};

use super::{Context, handle_common, load_snapshot};
use crate::domain::{
    ActorKind, Advice, CapabilitySummary, Experience, LearnerStats, Outcome, RankedCapability,
};
use crate::messages::LearnerMsg;

const KIND: ActorKind = ActorKind::Learner;
const SCHEMA: u32 = 1;
/// Weight of the exploration bonus.
const EXPLORATION: f64 = 0.5;
/// How many recent experiences an advice carries.
const RECENT: usize = 5;

/// What the learner knows of one capability.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CapabilityStats {
    pub attempts: u64,
    pub accepted: u64,
    pub total_reward: f64,
    pub fitness_gain: f64,
    pub tokens: u64,
}

/// The learner's committed state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LearnerSnapshot {
    pub stats: BTreeMap<String, CapabilityStats>,
    pub experiences: u64,
}

/// The reward of one experience, in [0, 1]: an accepted change that made the
/// fitness better is worth most; a change that did nothing or was rolled back
/// is worth nothing.
pub fn reward(experience: &Experience) -> f64 {
    match experience.outcome {
        Outcome::Accepted => {
            let gain = match (experience.fitness_before, experience.fitness_after) {
                (Some(before), Some(after)) => before - after,
                _ => 0.0,
            };
            if gain > 0.0 { 1.0 } else { 0.3 }
        }
        Outcome::NoChange | Outcome::Rejected | Outcome::JobFailed => 0.0,
    }
}

/// Folds one experience into the statistics.
pub fn learn(stats: &mut BTreeMap<String, CapabilityStats>, experience: &Experience) {
    let entry = stats.entry(experience.capability.clone()).or_default();
    entry.attempts += 1;
    entry.total_reward += reward(experience);
    if experience.outcome == Outcome::Accepted {
        entry.accepted += 1;
        if let (Some(before), Some(after)) = (experience.fitness_before, experience.fitness_after) {
            entry.fitness_gain += before - after;
        }
    }
    entry.tokens += experience.usage.tokens();
}

/// Ranks `candidates` best first (UCB1; untried first, in the given order).
pub fn rank(
    stats: &BTreeMap<String, CapabilityStats>,
    candidates: &[String],
) -> Vec<RankedCapability> {
    let total: u64 = candidates
        .iter()
        .filter_map(|c| stats.get(c))
        .map(|s| s.attempts)
        .sum();
    let mut ranked: Vec<(usize, RankedCapability)> = candidates
        .iter()
        .enumerate()
        .map(|(order, id)| {
            let s = stats.get(id).cloned().unwrap_or_default();
            let (mean, score) = if s.attempts == 0 {
                (0.0, f64::INFINITY)
            } else {
                let mean = s.total_reward / s.attempts as f64;
                let bonus = EXPLORATION * ((total as f64 + 1.0).ln() / s.attempts as f64).sqrt();
                (mean, mean + bonus)
            };
            (
                order,
                RankedCapability {
                    id: id.clone(),
                    score,
                    attempts: s.attempts,
                    mean_reward: mean,
                },
            )
        })
        .collect();
    ranked.sort_by(|(oa, a), (ob, b)| b.score.total_cmp(&a.score).then(oa.cmp(ob)));
    ranked.into_iter().map(|(_, r)| r).collect()
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
        let snapshot = load_snapshot(&ctx.store, KIND, SCHEMA)?.unwrap_or_default();
        Ok(LearnerState { ctx, snapshot })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: LearnerMsg,
        state: &mut LearnerState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            LearnerMsg::Advise { candidates, reply } => {
                let _span = tracing::info_span!("learner.advise", actor = KIND.name()).entered();
                let recent = state
                    .ctx
                    .store
                    .experiences(RECENT)
                    .unwrap_or_default()
                    .into_iter()
                    .rev()
                    .collect();
                let _ = reply.send(Advice {
                    ranked: rank(&state.snapshot.stats, &candidates),
                    recent,
                });
            }
            LearnerMsg::Stats(reply) => {
                let capabilities = state
                    .snapshot
                    .stats
                    .iter()
                    .map(|(id, s)| {
                        let mean = if s.attempts == 0 {
                            0.0
                        } else {
                            s.total_reward / s.attempts as f64
                        };
                        CapabilitySummary {
                            capability: id.clone(),
                            attempts: s.attempts,
                            accepted: s.accepted,
                            mean_reward: mean,
                            fitness_gain: s.fitness_gain,
                            tokens: s.tokens,
                        }
                    })
                    .collect();
                let _ = reply.send(LearnerStats {
                    experiences: state.snapshot.experiences,
                    capabilities,
                });
            }
            LearnerMsg::Forget { capability, reply } => {
                let _ = reply.send(state.snapshot.stats.remove(&capability).is_some());
            }
            LearnerMsg::Record { experience, reply } => {
                let _span = tracing::info_span!(
                    "learner.record",
                    actor = KIND.name(),
                    iteration = experience.iteration as i64,
                    capability = %experience.capability,
                    outcome = experience.outcome.as_str(),
                )
                .entered();
                learn(&mut state.snapshot.stats, &experience);
                state.snapshot.experiences += 1;
                let _ = reply.send(());
            }
            LearnerMsg::Common(common) => {
                handle_common(KIND, SCHEMA, &state.ctx.store, &mut state.snapshot, common).await?
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Usage;
    use std::time::Duration;

    fn experience(capability: &str, outcome: Outcome, before: f64, after: f64) -> Experience {
        Experience {
            iteration: 0,
            capability: capability.into(),
            outcome,
            fitness_before: Some(before),
            fitness_after: Some(after),
            usage: Usage::default(),
            duration: Duration::ZERO,
            error_signature: None,
        }
    }

    #[test]
    fn untried_capabilities_come_first_in_declared_order() {
        let mut stats = BTreeMap::new();
        learn(&mut stats, &experience("a", Outcome::Accepted, 5.0, 3.0));
        let ids: Vec<String> = rank(&stats, &["a".into(), "b".into(), "c".into()])
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids, vec!["b", "c", "a"]);
    }

    /// The choice measurably improves: in a world where only "good" improves
    /// the fitness, picking by rank converges on it.
    #[test]
    fn the_choice_settles_on_what_works() {
        let candidates: Vec<String> = ["bad", "useless", "good", "noop"]
            .map(String::from)
            .to_vec();
        let mut stats = BTreeMap::new();
        let mut picks = Vec::new();
        for _ in 0..60 {
            let pick = rank(&stats, &candidates)[0].id.clone();
            let outcome = match pick.as_str() {
                "good" => experience(&pick, Outcome::Accepted, 10.0, 9.0),
                "bad" => experience(&pick, Outcome::Rejected, 10.0, 12.0),
                _ => experience(&pick, Outcome::NoChange, 10.0, 10.0),
            };
            learn(&mut stats, &outcome);
            picks.push(pick);
        }
        let good_early = picks[..10].iter().filter(|p| *p == "good").count();
        let good_late = picks[40..].iter().filter(|p| *p == "good").count();
        assert!(good_late >= 16, "late picks: {:?}", &picks[40..]);
        assert!(
            good_late > good_early * 2,
            "early {good_early}, late {good_late}"
        );
    }

    #[test]
    fn rewards_prefer_improvements() {
        assert_eq!(reward(&experience("x", Outcome::Accepted, 5.0, 4.0)), 1.0);
        assert!(reward(&experience("x", Outcome::Accepted, 5.0, 5.0)) < 1.0);
        assert_eq!(reward(&experience("x", Outcome::Rejected, 5.0, 6.0)), 0.0);
    }
}
