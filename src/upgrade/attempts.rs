//! Every self-upgrade attempt, and what the keeper's decisions leave for
//! the next release it starts to do, since the keeper holds no store and
//! touches no worktree:
//! - after a rollback, the release that takes over reverts the failed
//!   commit on the branch with a revert commit (history is not rewritten),
//!   marks its variant `upgrade-failed` with the reason, and audits it;
//! - a release on probation refuses to start on a store whose snapshots it
//!   would migrate, since the permanent release it may fall back to could
//!   not read them.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::releases::{Pointer, Releases};
use crate::actors::modifier::{self, ModifierSnapshot};
use crate::actors::{load_snapshot, make_snapshot};
use crate::domain::ActorKind;
use crate::store::audit::Decision;
use crate::store::{Store, StoreError, UpgradeRecord};
use crate::workspace::Workspace;

/// Set by the keeper on a release it starts on probation.
pub const PROBATION_VAR: &str = "AGENT_ON_PROBATION";
/// Set by the keeper on the release it rolled back to: which release
/// failed and why (JSON, [`RolledBack`]).
pub const ROLLED_BACK_VAR: &str = "AGENT_ROLLED_BACK";

/// Outcomes of an attempt, as recorded (a kept release is shown
/// `on-probation` or `permanent` by the pointers).
pub const REFUSED: &str = "refused";
pub const KEPT: &str = "kept";
pub const UPGRADE_FAILED: &str = "upgrade-failed";

/// What the keeper tells the release it rolled back to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolledBack {
    pub release: String,
    pub reason: String,
}

/// Refuses to start a release on probation that would migrate a stored
/// snapshot to a schema the permanent release may not read.
pub fn refuse_migration_on_probation(store: &Store) -> Result<(), String> {
    refuse_migration(store, std::env::var_os(PROBATION_VAR).is_some())
}

fn refuse_migration(store: &Store, on_probation: bool) -> Result<(), String> {
    if !on_probation {
        return Ok(());
    }
    for (kind, ours) in crate::actors::SNAPSHOT_SCHEMAS {
        let stored = store
            .snapshot(kind.name())
            .map_err(|e| e.to_string())?
            .map(|record| record.schema);
        if let Some(stored) = stored
            && stored < ours
        {
            return Err(format!(
                "on probation, this release would migrate the {kind} snapshot from schema {stored} to {ours}, \
                 which the permanent release may not read; it is refused until a migration is released on its own"
            ));
        }
    }
    Ok(())
}

/// After a rollback: the failed release's commit reverted on the branch,
/// its variant marked `upgrade-failed`, its attempt recorded and audited.
/// Done once: an attempt already marked is left alone.
pub async fn settle_rollback(store: &Store, workspace: &Workspace) -> Result<(), String> {
    let Some(said) = std::env::var(ROLLED_BACK_VAR)
        .ok()
        .filter(|s| !s.is_empty())
    else {
        return Ok(());
    };
    let rolled_back: RolledBack = serde_json::from_str(&said)
        .map_err(|e| format!("cannot read what the keeper said of its rollback: {e}"))?;
    let attempts = store.upgrades().map_err(|e| e.to_string())?;
    let Some(mut attempt) = attempts
        .into_iter()
        .rev()
        .find(|a| a.release == rolled_back.release)
    else {
        // A release staged by hand (`agent ctl upgrade`): no commit of this
        // run to revert.
        return Ok(());
    };
    if attempt.outcome == UPGRADE_FAILED {
        return Ok(());
    }
    let message = format!(
        "agent: revert iteration {}: upgrade failed\n\nRelease {} failed on probation: {}\n\nThis reverts commit {}.\nUpgrade-failed: {}\n",
        attempt.iteration, attempt.release, rolled_back.reason, attempt.commit, attempt.iteration
    );
    let (worktree, commit) = (workspace.clone(), attempt.commit.clone());
    let revert = tokio::task::spawn_blocking(move || {
        worktree
            .revert(&commit, &message)
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())??;
    // The modifier starts from the revert: it is the branch's head now.
    let mut snapshot: ModifierSnapshot =
        load_snapshot(store, ActorKind::Modifier, modifier::SCHEMA)
            .map_err(|e| e.to_string())?
            .unwrap_or_default();
    snapshot.head = revert.clone();
    snapshot.head_fitness = None;
    let record = make_snapshot(ActorKind::Modifier, modifier::SCHEMA, &snapshot)
        .map_err(|e| e.to_string())?;
    store
        .put_snapshot(&record)
        .await
        .map_err(|e| e.to_string())?;
    store
        .mark_upgrade_failed(attempt.iteration, &rolled_back.reason)
        .await
        .map_err(|e| e.to_string())?;
    attempt.outcome = UPGRADE_FAILED.to_string();
    attempt.reason = format!("{}; reverted by {revert}", rolled_back.reason);
    store
        .put_upgrade(&attempt)
        .await
        .map_err(|e| e.to_string())?;
    store
        .audit(Decision::new(
            "modifier",
            "upgrade.failed",
            format!(
                "iteration {}: release {} failed on probation: {}; commit {} reverted by {revert}",
                attempt.iteration, attempt.release, rolled_back.reason, attempt.commit
            ),
        ))
        .await
        .map_err(|e: StoreError| e.to_string())?;
    println!(
        "agent: release {} failed on probation ({}); its commit {} is reverted by {}",
        attempt.release,
        rolled_back.reason,
        short(&attempt.commit),
        short(&revert)
    );
    Ok(())
}

/// Every attempt as `send modifier upgrades` shows it: a release handed
/// over is `on-probation` while `current` but not `permanent`, and
/// `permanent` once it is.
pub fn listing(store: &Store, releases: &Releases) -> Result<Value, String> {
    let attempts = store.upgrades().map_err(|e| e.to_string())?;
    let current = releases.read(Pointer::Current).ok().flatten();
    let permanent = releases.read(Pointer::Permanent).ok().flatten();
    let rows: Vec<Value> = attempts
        .iter()
        .map(|attempt| {
            let outcome = match attempt.outcome.as_str() {
                KEPT if permanent.as_deref() == Some(attempt.release.as_str()) => "permanent",
                KEPT if current.as_deref() == Some(attempt.release.as_str()) => "on-probation",
                other => other,
            };
            json!({
                "iteration": attempt.iteration,
                "commit": attempt.commit,
                "release": attempt.release,
                "build_ms": attempt.build_ms,
                "evaluation": attempt.evaluation,
                "outcome": outcome,
                "reason": attempt.reason,
                "at_ms": attempt.at_ms,
            })
        })
        .collect();
    Ok(json!({ "upgrades": rows }))
}

/// The name a commit's release is staged under.
pub fn release_name(commit: &str) -> String {
    short(commit).to_string()
}

fn short(commit: &str) -> &str {
    &commit[..commit.len().min(12)]
}

/// A new attempt's record, before its outcome is known.
pub fn record(iteration: u64) -> UpgradeRecord {
    UpgradeRecord {
        iteration,
        commit: String::new(),
        release: String::new(),
        build_ms: 0,
        evaluation: None,
        outcome: REFUSED.to_string(),
        reason: String::new(),
        at_ms: crate::store::now_ms(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SnapshotRecord;

    #[tokio::test]
    async fn a_release_on_probation_refuses_a_store_it_would_migrate() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (kind, ours) = crate::actors::SNAPSHOT_SCHEMAS[3];
        assert_eq!(kind, ActorKind::Learner);
        let older = SnapshotRecord {
            actor: kind.name().to_string(),
            schema: ours - 1,
            iteration: 0,
            body: Vec::new(),
        };
        store.put_snapshot(&older).await.unwrap();
        let refused = refuse_migration(&store, true).unwrap_err();
        assert!(
            refused.contains(&format!(
                "would migrate the learner snapshot from schema {} to {ours}",
                ours - 1
            )),
            "{refused}"
        );
        // Off probation the migration is the release's to do.
        assert_eq!(refuse_migration(&store, false), Ok(()));
        // A store at this build's schemas starts on probation too.
        let current = SnapshotRecord {
            schema: ours,
            ..older
        };
        store.put_snapshot(&current).await.unwrap();
        assert_eq!(refuse_migration(&store, true), Ok(()));
    }
}
