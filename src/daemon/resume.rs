//! The run a state directory belongs to: a new run takes the given (or
//! configured) goal; a stored run is resumed with its own goal; a different
//! `--goal` on an unfinished run is refused unless `--replace-goal` is given.

use super::RunError;
use crate::config::{Config, Overrides};
use crate::domain::RunPhase;
use crate::store::{RunRecord, Store, now_ms};

pub(super) fn new_run(goal: &str) -> RunRecord {
    RunRecord {
        goal: goal.to_string(),
        created_at_ms: now_ms(),
        state: RunPhase::Running,
        last_escalation: None,
    }
}

/// Decides the goal of this run and records it.
pub(super) async fn resolve_run(
    store: &Store,
    config: &Config,
    overrides: &Overrides,
) -> Result<String, RunError> {
    let requested = overrides.goal.clone();
    let goal = match store.run()? {
        None => {
            let goal = requested.unwrap_or_else(|| config.goal.clone());
            store.put_run(&new_run(&goal)).await?;
            goal
        }
        Some(mut run) => match requested {
            Some(goal) if goal != run.goal => {
                if run.state != RunPhase::Finished && !overrides.replace_goal {
                    return Err(RunError::Usage(format!(
                        "the state directory {} holds an unfinished run with the goal \"{}\"; \
                         to replace its goal run again with --replace-goal, \
                         or start a separate run with another --state directory",
                        config.state_dir.display(),
                        run.goal
                    )));
                }
                run.goal = goal.clone();
                run.state = RunPhase::Running;
                store.put_run(&run).await?;
                goal
            }
            _ => {
                if run.state == RunPhase::Finished {
                    run.state = RunPhase::Running;
                    store.put_run(&run).await?;
                }
                run.goal
            }
        },
    };
    if goal.trim().is_empty() {
        return Err(RunError::Usage(
            "--goal must be a non-empty sentence".into(),
        ));
    }
    Ok(goal)
}
