//! What the learner knows how to do, apart from the actor: the reward of an
//! experience, a contextual bandit over the situation's features
//! ([`bandit`]), rules learned from evidence ([`rules`]) and the retrieval
//! of past experiences that match a situation ([`retrieval`]). Pure: the
//! learner actor holds the state and persists it.

pub mod bandit;
pub mod retrieval;
pub mod rules;

use crate::domain::{Experience, Outcome};

/// `[learning]`: how capabilities are chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// Off: every capability is equally likely, whatever was learned (the
    /// experiment's control arm). Experiences are recorded either way.
    pub enabled: bool,
    /// Seeds the choices that are left to chance (ties, the control arm's
    /// draw): the same seed and the same workspace make the same choices.
    pub seed: u64,
    /// Weight of the bandit's exploration bonus.
    pub exploration: f64,
    /// How many relevant past experiences an advice carries.
    pub relevant: usize,
    /// The token budget of a model prompt.
    pub context_tokens: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            enabled: true,
            seed: 0,
            exploration: 0.5,
            relevant: 5,
            context_tokens: 6000,
        }
    }
}

/// The reward of one experience: the fitness gain per cost. The gain is
/// relative to where the fitness started (removing 3 of 10 warnings is
/// 0.3), and only a kept change gains; the cost counts a minute of work and
/// a dollar of spend each as much as doing nothing at all, so a cheaper
/// capability that gains as much is preferred.
pub fn reward(experience: &Experience) -> f64 {
    gain(experience) / cost(experience)
}

/// The relative fitness gain of a kept change, in [0, 1]; 0 for anything
/// else.
pub fn gain(experience: &Experience) -> f64 {
    match (
        experience.outcome,
        experience.fitness_before,
        experience.fitness_after,
    ) {
        (Outcome::Accepted, Some(before), Some(after)) if after < before => {
            ((before - after) / before.abs().max(1.0)).min(1.0)
        }
        _ => 0.0,
    }
}

/// What an experience cost, ≥ 1.
pub fn cost(experience: &Experience) -> f64 {
    1.0 + experience.duration.as_secs_f64() / 60.0 + experience.usage.cost_usd.max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Signals, Usage};
    use std::time::Duration;

    fn experience(outcome: Outcome, before: f64, after: f64, seconds: u64) -> Experience {
        Experience {
            iteration: 1,
            capability: "c".into(),
            prompt: None,
            signals: Signals::default(),
            outcome,
            fitness_before: Some(before),
            fitness_after: Some(after),
            files_changed: 1,
            usage: Usage::default(),
            duration: Duration::from_secs(seconds),
            error_signature: None,
            denied_tools: Vec::new(),
            repaired: false,
        }
    }

    #[test]
    fn the_reward_is_the_gain_per_cost() {
        assert_eq!(reward(&experience(Outcome::Accepted, 10.0, 7.0, 0)), 0.3);
        let slow = reward(&experience(Outcome::Accepted, 10.0, 7.0, 60));
        assert!((slow - 0.15).abs() < 1e-9, "{slow}");
        assert_eq!(reward(&experience(Outcome::Accepted, 5.0, 5.0, 0)), 0.0);
        assert_eq!(reward(&experience(Outcome::Rejected, 5.0, 3.0, 0)), 0.0);
    }
}
