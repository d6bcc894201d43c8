//! What the learner keeps and commits: per-capability statistics (for
//! operators), the bandit and the rules; the schema 1 and 2 layouts it
//! migrates from when it reads an older store; and the summary operators
//! read.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{KIND, SCHEMA};
use crate::domain::CapabilitySummary;
use crate::learning::bandit::Bandit;
use crate::learning::rules::Rules;
use crate::messages::ActorError;
use crate::store::{Store, codec};

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
    /// Attempts that took a repair turn, and those whose repaired change
    /// was kept: whether repair pays for this capability.
    pub repairs: u64,
    pub repairs_kept: u64,
    /// Tool uses Claude Code refused it, by tool: what `allowed_tools`
    /// may be missing.
    pub denied_tools: BTreeMap<String, u64>,
}

impl CapabilityStats {
    /// The mean of `total` over the attempts; 0 before the first.
    fn per_attempt(&self, total: f64) -> f64 {
        if self.attempts == 0 {
            0.0
        } else {
            total / self.attempts as f64
        }
    }

    pub fn mean_reward(&self) -> f64 {
        self.per_attempt(self.total_reward)
    }

    /// What operators read of capability `id`.
    pub fn summary(&self, id: &str) -> CapabilitySummary {
        CapabilitySummary {
            capability: id.to_string(),
            attempts: self.attempts,
            accepted: self.accepted,
            mean_reward: self.mean_reward(),
            fitness_gain: self.fitness_gain,
            tokens: self.tokens,
            mean_seconds: self.per_attempt(self.duration_ms as f64 / 1000.0),
            mean_files_changed: if self.accepted == 0 {
                0.0
            } else {
                self.files_changed as f64 / self.accepted as f64
            },
            repairs: self.repairs,
            repairs_kept: self.repairs_kept,
            denied_tools: self.denied_tools.clone(),
        }
    }
}

/// The learner's committed state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LearnerSnapshot {
    pub stats: BTreeMap<String, CapabilityStats>,
    pub experiences: u64,
    pub bandit: Bandit,
    pub rules: Rules,
}

impl LearnerSnapshot {
    /// The statistics of capability `id`; empty when it was never tried.
    pub fn stats_of(&self, id: &str) -> CapabilityStats {
        self.stats.get(id).cloned().unwrap_or_default()
    }
}

/// The snapshot as schema 2 kept it (no repairs, no denied tools).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LearnerSnapshotV2 {
    pub stats: BTreeMap<String, CapabilityStatsV2>,
    pub experiences: u64,
    pub bandit: Bandit,
    pub rules: Rules,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CapabilityStatsV2 {
    pub attempts: u64,
    pub accepted: u64,
    pub total_reward: f64,
    pub fitness_gain: f64,
    pub tokens: u64,
    pub duration_ms: u64,
    pub files_changed: u64,
}

impl From<LearnerSnapshotV2> for LearnerSnapshot {
    fn from(old: LearnerSnapshotV2) -> Self {
        let stats = old.stats.into_iter().map(|(id, s)| {
            let stats = CapabilityStats {
                attempts: s.attempts,
                accepted: s.accepted,
                total_reward: s.total_reward,
                fitness_gain: s.fitness_gain,
                tokens: s.tokens,
                duration_ms: s.duration_ms,
                files_changed: s.files_changed,
                ..CapabilityStats::default()
            };
            (id, stats)
        });
        LearnerSnapshot {
            stats: stats.collect(),
            experiences: old.experiences,
            bandit: old.bandit,
            rules: old.rules,
        }
    }
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
pub fn load(store: &Store) -> Result<Option<LearnerSnapshot>, ActorError> {
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
        Some(record) if record.schema == 2 => codec::decode::<LearnerSnapshotV2>(&record.body)
            .map(|old| Some(old.into()))
            .map_err(unreadable),
        Some(record) if record.schema == SCHEMA => {
            codec::decode(&record.body).map(Some).map_err(unreadable)
        }
        Some(record) => Err(ActorError::Store(format!(
            "the stored learner snapshot has schema version {}, this build reads versions 1 to {SCHEMA}; \
             use the build that wrote it or start with a new --state directory",
            record.schema
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[tokio::test]
    async fn a_schema_2_snapshot_keeps_its_costs_bandit_and_rules() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut old = LearnerSnapshotV2 {
            stats: [(
                "fmt".to_string(),
                CapabilityStatsV2 {
                    attempts: 4,
                    duration_ms: 8000,
                    files_changed: 2,
                    ..CapabilityStatsV2::default()
                },
            )]
            .into(),
            experiences: 4,
            ..LearnerSnapshotV2::default()
        };
        old.bandit
            .update("fmt", &[1.0; crate::learning::bandit::DIMENSIONS], 1.0);
        let record = crate::actors::make_snapshot(KIND, 2, &old).unwrap();
        store.put_snapshot(&record).await.unwrap();
        let loaded = load(&store).unwrap().unwrap();
        let fmt = &loaded.stats["fmt"];
        assert_eq!(
            (fmt.attempts, fmt.duration_ms, fmt.files_changed),
            (4, 8000, 2)
        );
        assert_eq!((fmt.repairs, fmt.repairs_kept), (0, 0));
        assert_eq!(loaded.bandit, old.bandit);
    }
}
