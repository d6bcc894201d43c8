//! `actors.toml`: the declared supervision tree. Parsed into raw structs first,
//! then checked into a [`TreeSpec`] that the supervisor and its pure policy use:
//! `[supervisor]` checks itself, and the `[[actor]]` tables are checked one by
//! one and then as a whole (each actor once, all six there).

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::error::ConfigError;
use super::values::{HumanDuration, Positive};
use crate::domain::ActorKind;
use crate::supervisor::policy::{Backoff, Intensity, RestartType, Strategy};

/// The embedded default, identical to the repository's `actors.toml`.
pub const DEFAULT_ACTORS_TOML: &str = include_str!("../../actors.toml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTree {
    supervisor: RawSupervisor,
    #[serde(rename = "actor")]
    actors: Vec<RawActor>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSupervisor {
    strategy: RawStrategy,
    max_restarts: Positive,
    within: HumanDuration,
    backoff_initial: HumanDuration,
    backoff_max: HumanDuration,
    shutdown_timeout: HumanDuration,
    hang_timeout: Option<HumanDuration>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RawStrategy {
    OneForOne,
    OneForAll,
    RestForOne,
}

impl From<RawStrategy> for Strategy {
    fn from(raw: RawStrategy) -> Strategy {
        match raw {
            RawStrategy::OneForOne => Strategy::OneForOne,
            RawStrategy::OneForAll => Strategy::OneForAll,
            RawStrategy::RestForOne => Strategy::RestForOne,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RawRestart {
    Permanent,
    Transient,
    Temporary,
}

impl From<RawRestart> for RestartType {
    fn from(raw: RawRestart) -> RestartType {
        match raw {
            RawRestart::Permanent => RestartType::Permanent,
            RawRestart::Transient => RestartType::Transient,
            RawRestart::Temporary => RestartType::Temporary,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawActor {
    name: Spanned<String>,
    restart: RawRestart,
    shutdown_timeout: Option<HumanDuration>,
    /// Executor only: how many cognition jobs may run at once.
    concurrency: Option<Spanned<Positive>>,
}

/// One child of the supervisor, in start order.
#[derive(Debug, Clone, PartialEq)]
pub struct ChildSpec {
    pub kind: ActorKind,
    pub restart: RestartType,
    pub shutdown_timeout: Duration,
}

/// The checked tree: strategy, intensity, backoff and the ordered children.
#[derive(Debug, Clone, PartialEq)]
pub struct TreeSpec {
    /// A child that does not answer a ping within this is killed and
    /// restarted as a failure.
    pub hang_timeout: Duration,
    pub strategy: Strategy,
    pub intensity: Intensity,
    pub backoff: Backoff,
    pub children: Vec<ChildSpec>,
    /// Settings that belong to one actor.
    pub executor_concurrency: usize,
}

impl TreeSpec {
    /// Parses and checks `actors.toml` text; `file` is used in messages only.
    pub fn parse(file: &Path, text: &str) -> Result<TreeSpec, ConfigError> {
        let raw: RawTree =
            toml::from_str(text).map_err(|error| ConfigError::from_toml(file, text, &error))?;
        // The actors first: of several refusals, a wrong actor is reported
        // before a wrong backoff.
        let default_shutdown = raw.supervisor.shutdown_timeout.0;
        let actors = check_actors(file, text, &raw.actors, default_shutdown)?;
        let supervisor = raw.supervisor.check(file)?;
        Ok(TreeSpec {
            hang_timeout: supervisor.hang_timeout,
            strategy: supervisor.strategy,
            intensity: supervisor.intensity,
            backoff: supervisor.backoff,
            children: actors.children,
            executor_concurrency: actors.executor_concurrency,
        })
    }

    /// Reads and checks a file; a missing file is an error naming it.
    pub fn load(file: &Path) -> Result<TreeSpec, ConfigError> {
        let text = super::read_config_file(file)?;
        Self::parse(file, &text)
    }
}

/// `[supervisor]` checked: the [`TreeSpec`] fields of the same names.
struct SupervisorSpec {
    hang_timeout: Duration,
    strategy: Strategy,
    intensity: Intensity,
    backoff: Backoff,
}

impl RawSupervisor {
    /// Refuses a backoff that would start above its own cap.
    fn check(&self, file: &Path) -> Result<SupervisorSpec, ConfigError> {
        if self.backoff_initial > self.backoff_max {
            return Err(ConfigError::whole_file(
                file,
                "[supervisor] backoff_initial must not exceed backoff_max",
            ));
        }
        Ok(SupervisorSpec {
            hang_timeout: self
                .hang_timeout
                .as_ref()
                .map_or(Duration::from_secs(30), |d| d.0),
            strategy: self.strategy.into(),
            intensity: Intensity {
                max_restarts: self.max_restarts.get() as u32,
                within: self.within.0,
            },
            backoff: Backoff {
                initial: self.backoff_initial.0,
                max: self.backoff_max.0,
            },
        })
    }
}

/// The `[[actor]]` tables checked: the [`TreeSpec`] fields of the same names.
struct ActorSpecs {
    children: Vec<ChildSpec>,
    executor_concurrency: usize,
}

/// Checks the `[[actor]]` tables in start order: each actor known, declared
/// once, with only its own settings, and all six of them there. An actor
/// without a `shutdown_timeout` gets the supervisor's, `default_shutdown`.
fn check_actors(
    file: &Path,
    text: &str,
    actors: &[RawActor],
    default_shutdown: Duration,
) -> Result<ActorSpecs, ConfigError> {
    let mut children = Vec::with_capacity(actors.len());
    let mut executor_concurrency = 1;
    for actor in actors {
        let kind = actor.kind(file, text)?;
        if children.iter().any(|c: &ChildSpec| c.kind == kind) {
            return Err(ConfigError::at(
                file,
                text,
                Some(actor.name.span()),
                format!("actor \"{kind}\" is declared twice; declare each actor once"),
            ));
        }
        if let Some(concurrency) = actor.executor_concurrency(file, text, kind)? {
            executor_concurrency = concurrency;
        }
        children.push(ChildSpec {
            kind,
            restart: actor.restart.into(),
            shutdown_timeout: actor.shutdown_timeout.map_or(default_shutdown, |d| d.0),
        });
    }
    refuse_missing_actors(file, &children)?;
    Ok(ActorSpecs {
        children,
        executor_concurrency,
    })
}

/// Refuses a tree without all six actors, naming every missing one at once
/// so that one `agent config check` lists them all.
fn refuse_missing_actors(file: &Path, children: &[ChildSpec]) -> Result<(), ConfigError> {
    let missing: Vec<&str> = ActorKind::ALL
        .iter()
        .filter(|kind| !children.iter().any(|c| c.kind == **kind))
        .map(|kind| kind.name())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(ConfigError::whole_file(
        file,
        format!(
            "the tree must declare all six actors; missing [[actor]] entries for: {}",
            missing.join(", ")
        ),
    ))
}

impl RawActor {
    /// The actor this table declares, refused at its name when unknown.
    fn kind(&self, file: &Path, text: &str) -> Result<ActorKind, ConfigError> {
        self.name.get_ref().parse().map_err(|_| {
            ConfigError::at(
                file,
                text,
                Some(self.name.span()),
                format!(
                    "unknown actor \"{}\"; expected one of: {}",
                    self.name.get_ref(),
                    ActorKind::ALL.map(|k| k.name()).join(", ")
                ),
            )
        })
    }

    /// `concurrency`, which only the executor has: refused at the key on
    /// any other actor.
    fn executor_concurrency(
        &self,
        file: &Path,
        text: &str,
        kind: ActorKind,
    ) -> Result<Option<usize>, ConfigError> {
        let Some(concurrency) = &self.concurrency else {
            return Ok(None);
        };
        if kind != ActorKind::Executor {
            return Err(ConfigError::at(
                file,
                text,
                Some(concurrency.span()),
                format!("`concurrency` is a setting of the executor, not of \"{kind}\""),
            ));
        }
        Ok(Some(concurrency.get_ref().get() as usize))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid() {
        let tree = TreeSpec::parse(Path::new("actors.toml"), DEFAULT_ACTORS_TOML).unwrap();
        assert_eq!(tree.children.len(), 6);
        assert_eq!(tree.children.last().unwrap().kind, ActorKind::Planner);
    }
}
