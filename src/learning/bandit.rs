//! The capability choice: a contextual bandit, LinUCB with one linear model
//! per capability (Li et al., 2010). A situation becomes a short feature
//! vector (its terms hashed into buckets); each capability's model predicts
//! the reward from it, and the choice is the best prediction plus an
//! exploration bonus that is large where the capability has seen little of
//! situations like this one. There is no bias term on purpose: what a
//! capability earned is credited to the situation's terms (its warning
//! codes and their families), so it carries over to a workspace that shows
//! them and not to one that shows nothing alike — there every capability
//! looks new, and the choice is as open as it was at the start. Updates are rank-one
//! (Sherman–Morrison), so a model is a 16×16 inverse and a vector: small
//! enough for the learner's snapshot. Hand-written: it is thirty lines of
//! arithmetic, and no maintained crate offers it without a matrix library.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Length of a feature vector: 16 buckets of hashed terms.
pub const DIMENSIONS: usize = 16;

/// What a situation that shows nothing is, as a term.
const NOTHING: &str = "(no signals)";

/// A situation's features: each term sets its bucket (a situation without
/// terms sets the bucket of "no signals").
pub fn features(terms: &[String]) -> Vec<f64> {
    let mut x = vec![0.0; DIMENSIONS];
    let nothing = [NOTHING.to_string()];
    let terms = if terms.is_empty() {
        &nothing[..]
    } else {
        terms
    };
    for term in terms {
        x[(fnv1a(term.as_bytes()) % DIMENSIONS as u64) as usize] = 1.0;
    }
    x
}

/// FNV-1a: stable across builds and platforms, unlike std's hasher, so a
/// persisted model keeps meaning the same buckets.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// One capability's linear model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Arm {
    /// A⁻¹, row-major, DIMENSIONS × DIMENSIONS (A = I + Σ x xᵀ).
    a_inverse: Vec<f64>,
    /// b = Σ reward · x.
    b: Vec<f64>,
    pub pulls: u64,
}

impl Default for Arm {
    fn default() -> Self {
        let mut a_inverse = vec![0.0; DIMENSIONS * DIMENSIONS];
        for i in 0..DIMENSIONS {
            a_inverse[i * DIMENSIONS + i] = 1.0;
        }
        Arm {
            a_inverse,
            b: vec![0.0; DIMENSIONS],
            pulls: 0,
        }
    }
}

impl Arm {
    fn a_inverse_times(&self, x: &[f64]) -> Vec<f64> {
        (0..DIMENSIONS)
            .map(|row| {
                (0..DIMENSIONS)
                    .map(|col| self.a_inverse[row * DIMENSIONS + col] * x[col])
                    .sum()
            })
            .collect()
    }

    /// The predicted reward for `x` and the width of its confidence.
    pub fn estimate(&self, x: &[f64]) -> (f64, f64) {
        let ax = self.a_inverse_times(x);
        let predicted: f64 = ax.iter().zip(&self.b).map(|(a, b)| a * b).sum();
        let width: f64 = x.iter().zip(&ax).map(|(x, a)| x * a).sum();
        (predicted, width.max(0.0).sqrt())
    }

    /// Learns that `x` gave `reward`.
    pub fn update(&mut self, x: &[f64], reward: f64) {
        let ax = self.a_inverse_times(x);
        let denominator = 1.0 + x.iter().zip(&ax).map(|(x, a)| x * a).sum::<f64>();
        for row in 0..DIMENSIONS {
            for col in 0..DIMENSIONS {
                self.a_inverse[row * DIMENSIONS + col] -= ax[row] * ax[col] / denominator;
            }
        }
        for (b, x) in self.b.iter_mut().zip(x) {
            *b += reward * x;
        }
        self.pulls += 1;
    }
}

/// Every capability's model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Bandit {
    pub arms: BTreeMap<String, Arm>,
}

impl Bandit {
    /// The upper confidence bound of `capability`'s reward in the
    /// situation `x`, with the prediction it is made of.
    pub fn score(&self, capability: &str, x: &[f64], exploration: f64) -> (f64, f64) {
        let (predicted, width) = self
            .arms
            .get(capability)
            .map_or_else(|| Arm::default().estimate(x), |arm| arm.estimate(x));
        (predicted + exploration * width, predicted)
    }

    pub fn update(&mut self, capability: &str, x: &[f64], reward: f64) {
        self.arms
            .entry(capability.to_string())
            .or_default()
            .update(x, reward);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Two capabilities with known reward rates (0.7 and 0.3, Bernoulli):
    /// with a fixed seed the choice settles on the better one.
    #[test]
    fn the_bandit_converges_on_the_better_of_two_capabilities() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let rates = [("better", 0.7), ("worse", 0.3)];
        let x = features(&["warn:unused_imports".to_string()]);
        let mut bandit = Bandit::default();
        let mut picks = Vec::new();
        for _ in 0..300 {
            let (pick, rate) = rates
                .iter()
                .max_by(|a, b| {
                    let sa = bandit.score(a.0, &x, 0.5).0;
                    let sb = bandit.score(b.0, &x, 0.5).0;
                    sa.total_cmp(&sb)
                })
                .copied()
                .unwrap();
            let reward = if rng.random_bool(rate) { 1.0 } else { 0.0 };
            bandit.update(pick, &x, reward);
            picks.push(pick);
        }
        let late_better = picks[200..].iter().filter(|p| **p == "better").count();
        assert!(
            late_better >= 90,
            "better in the last 100 picks: {late_better}"
        );
        let (_, better) = bandit.score("better", &x, 0.0);
        let (_, worse) = bandit.score("worse", &x, 0.0);
        assert!(better > worse, "{better} vs {worse}");
    }

    /// What a capability earned in one situation does not spill into an
    /// unrelated one: the models are linear in the situation's terms.
    #[test]
    fn rewards_are_learned_per_situation() {
        let lint = features(&["warn:unused_imports".to_string()]);
        let other = features(&["warn:clippy::needless_return".to_string()]);
        assert_ne!(lint, other);
        let mut bandit = Bandit::default();
        for _ in 0..20 {
            bandit.update("cargo-fix", &lint, 1.0);
            bandit.update("cargo-fix", &other, 0.0);
        }
        let (_, on_lint) = bandit.score("cargo-fix", &lint, 0.0);
        let (_, on_other) = bandit.score("cargo-fix", &other, 0.0);
        assert!(on_lint > 0.8 && on_other < 0.2, "{on_lint} {on_other}");
    }
}
