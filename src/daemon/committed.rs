//! What was committed, checked before anything acts on it. The store is one
//! witness; the witness file beside it and the agent branch (each accepted
//! iteration's commit carries `Iteration: N`) are the others. A store that
//! is behind what they prove was committed has lost work: the run is refused
//! with one sentence, nothing is reset — or, with `--recover-from-git`, the
//! missing iterations are rebuilt from the branch.

use std::time::Duration;

use super::RunError;
use crate::actors::planner::{self, PlannerSnapshot};
use crate::actors::{load_snapshot, make_snapshot, modifier::ModifierSnapshot};
use crate::domain::{ActorKind, BackendKind, Iteration, Outcome, Usage};
use crate::store::{Store, now_ms};
use crate::workspace::Workspace;

/// Refuses (or, asked to, repairs) a store that lost committed iterations.
pub(super) async fn check(
    store: &Store,
    workspace: &Workspace,
    goal: &str,
    recover: bool,
) -> Result<(), RunError> {
    let known = store.last_iteration()?.map_or(0, |i| i.number);
    let witnessed = store.witnessed().unwrap_or(0);
    let commits = workspace
        .iteration_commits()
        .map_err(|e| RunError::Failed(format!("cannot read the agent branch: {e}")))?;
    let on_branch: Vec<u64> = commits
        .iter()
        .map(|(iteration, _)| *iteration)
        .filter(|iteration| *iteration > known)
        .collect();
    // The one commit a store may legitimately not know: the branch head, of
    // the iteration after the last committed one, whose store commit never
    // happened (a crash in between). The modifier drops it.
    let crash_window = on_branch == [known + 1]
        && commits.first().map(|(i, _)| *i) == Some(known + 1)
        && witnessed <= known;
    if (on_branch.is_empty() || crash_window) && witnessed <= known {
        return Ok(());
    }
    let last = witnessed.max(on_branch.iter().copied().max().unwrap_or(0));
    let mut evidence = Vec::new();
    if witnessed > known {
        evidence.push(format!(
            "the last commit recorded was of iteration {witnessed}"
        ));
    }
    if !on_branch.is_empty() {
        evidence.push(format!(
            "the agent branch holds the commits of iteration(s) {}",
            list(&on_branch)
        ));
    }
    if !recover {
        return Err(RunError::Failed(format!(
            "the store knows {known} committed iteration(s), but {}: it lost committed work. \
             Nothing was changed; restore the store from a backup (`agent restore`), or run again \
             with --recover-from-git to rebuild iterations {}–{last} from the agent branch",
            evidence.join(" and "),
            known + 1
        )));
    }
    rebuild(store, goal, known, last, &commits).await?;
    println!(
        "agent: recovered iterations {}–{last} from the agent branch ({} with a commit); \
         the others left no commit and are recorded with an unknown outcome",
        known + 1,
        on_branch.len()
    );
    Ok(())
}

/// Writes iterations `known + 1 ..= last` from the branch's commits, and the
/// planner's and modifier's snapshots at the branch head.
async fn rebuild(
    store: &Store,
    goal: &str,
    known: u64,
    last: u64,
    commits: &[(u64, String)],
) -> Result<(), RunError> {
    let failed = |e: String| RunError::Failed(format!("cannot recover from the agent branch: {e}"));
    let mut modifier: ModifierSnapshot =
        load_snapshot(store, ActorKind::Modifier, crate::actors::modifier::SCHEMA)
            .map_err(|e| failed(e.to_string()))?
            .unwrap_or_default();
    let mut planner_snapshot: PlannerSnapshot =
        load_snapshot(store, ActorKind::Planner, planner::SCHEMA)
            .map_err(|e| failed(e.to_string()))?
            .unwrap_or(PlannerSnapshot {
                goal: goal.to_string(),
                committed: known,
                last_fitness: None,
            });
    for number in known + 1..=last {
        let commit = commits.iter().find(|(i, _)| *i == number);
        if let Some((_, id)) = commit {
            modifier.head = id.clone();
            modifier.accepted += 1;
        }
        let iteration = recovered(number, goal, commit.map(|(_, id)| id.as_str()));
        // The head's fitness is unknown after a recovery: measured anew.
        modifier.head_fitness = None;
        planner_snapshot.committed = number;
        planner_snapshot.last_fitness = None;
        let mut snapshots = vec![
            make_snapshot(ActorKind::Planner, planner::SCHEMA, &planner_snapshot)
                .map_err(|e| failed(e.to_string()))?,
            make_snapshot(
                ActorKind::Modifier,
                crate::actors::modifier::SCHEMA,
                &modifier,
            )
            .map_err(|e| failed(e.to_string()))?,
        ];
        for snapshot in &mut snapshots {
            snapshot.iteration = number;
        }
        store
            .commit_iteration(&iteration, None, &[], &snapshots)
            .await?;
    }
    Ok(())
}

/// The log entry of iteration `number` rebuilt from the branch: accepted
/// with its commit when it left one, else no change.
fn recovered(number: u64, goal: &str, commit: Option<&str>) -> Iteration {
    let (outcome, summary) = match commit {
        Some(id) => (
            Outcome::Accepted,
            format!(
                "recovered from the agent branch: commit {}",
                &id[..id.len().min(10)]
            ),
        ),
        None => (
            Outcome::NoChange,
            "recovered: this iteration left no commit on the agent branch; its outcome was not kept".into(),
        ),
    };
    Iteration {
        number,
        goal: goal.to_string(),
        capability: "recovered".into(),
        outcome,
        fitness_before: None,
        fitness_after: None,
        usage: Usage::default(),
        duration: Duration::ZERO,
        commit: commit.map(str::to_string),
        summary,
        finished_at_ms: now_ms(),
        variant: None,
    }
}

/// Keeps on a rescue ref whatever the worktree holds beyond the committed
/// head — a commit or an edit the user made there, a job's half change —
/// before anything resets it, and says so. Says too how far the branch is
/// behind the repository it came from.
pub(super) fn keep_the_users_work(store: &Store, workspace: &Workspace) -> Result<(), RunError> {
    let failed = |e: String| RunError::Failed(format!("cannot inspect the worktree: {e}"));
    let snapshot: Option<ModifierSnapshot> =
        load_snapshot(store, ActorKind::Modifier, crate::actors::modifier::SCHEMA)
            .map_err(|e| failed(e.to_string()))?;
    // A job still running on the MCP server edits the worktree on purpose:
    // its edits stay in place for the re-attached iteration.
    let reattaching = store
        .jobs()?
        .iter()
        .any(|j| j.status.is_running() && (j.remote_id.is_some() || j.backend == BackendKind::Mcp));
    if let Some(snapshot) = snapshot.filter(|s| !s.head.is_empty())
        && !reattaching
        && let Some(kept) = workspace
            .rescue_beyond(&snapshot.head)
            .map_err(|e| failed(e.to_string()))?
    {
        tracing::warn!(%kept, "work found beyond the committed head");
        println!("agent: {kept}");
    }
    if let Some((behind, base)) = workspace.behind_base().map_err(|e| failed(e.to_string()))?
        && behind > 0
    {
        println!(
            "agent: the agent branch is {behind} commit(s) behind the repository's HEAD ({}); a run with a new --state directory starts from it",
            &base[..base.len().min(10)]
        );
    }
    Ok(())
}

/// "3, 4, 5" — or "3–40 (38)" when long.
fn list(iterations: &[u64]) -> String {
    let mut sorted = iterations.to_vec();
    sorted.sort_unstable();
    if sorted.len() > 6 {
        format!(
            "{}–{} ({})",
            sorted[0],
            sorted[sorted.len() - 1],
            sorted.len()
        )
    } else {
        sorted
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}
