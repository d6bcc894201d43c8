//! `actors.toml`: the declared supervision tree. Parsed into raw structs first,
//! then checked into a [`TreeSpec`] that the supervisor and its pure policy use.

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

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RawRestart {
    Permanent,
    Transient,
    Temporary,
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
        let mut children = Vec::with_capacity(raw.actors.len());
        let mut executor_concurrency = 1;
        for actor in &raw.actors {
            let span = actor.name.span();
            let kind: ActorKind = actor.name.get_ref().parse().map_err(|_| {
                ConfigError::at(
                    file,
                    text,
                    Some(span.clone()),
                    format!(
                        "unknown actor \"{}\"; expected one of: {}",
                        actor.name.get_ref(),
                        ActorKind::ALL.map(|k| k.name()).join(", ")
                    ),
                )
            })?;
            if children.iter().any(|c: &ChildSpec| c.kind == kind) {
                return Err(ConfigError::at(
                    file,
                    text,
                    Some(span),
                    format!("actor \"{kind}\" is declared twice; declare each actor once"),
                ));
            }
            if let Some(concurrency) = &actor.concurrency {
                if kind != ActorKind::Executor {
                    return Err(ConfigError::at(
                        file,
                        text,
                        Some(concurrency.span()),
                        format!("`concurrency` is a setting of the executor, not of \"{kind}\""),
                    ));
                }
                executor_concurrency = concurrency.get_ref().get() as usize;
            }
            children.push(ChildSpec {
                kind,
                restart: match actor.restart {
                    RawRestart::Permanent => RestartType::Permanent,
                    RawRestart::Transient => RestartType::Transient,
                    RawRestart::Temporary => RestartType::Temporary,
                },
                shutdown_timeout: actor
                    .shutdown_timeout
                    .map_or(raw.supervisor.shutdown_timeout.0, |d| d.0),
            });
        }
        let missing: Vec<&str> = ActorKind::ALL
            .iter()
            .filter(|kind| !children.iter().any(|c| c.kind == **kind))
            .map(|kind| kind.name())
            .collect();
        if !missing.is_empty() {
            return Err(ConfigError::whole_file(
                file,
                format!(
                    "the tree must declare all six actors; missing [[actor]] entries for: {}",
                    missing.join(", ")
                ),
            ));
        }
        let supervisor = &raw.supervisor;
        if supervisor.backoff_initial > supervisor.backoff_max {
            return Err(ConfigError::whole_file(
                file,
                "[supervisor] backoff_initial must not exceed backoff_max",
            ));
        }
        Ok(TreeSpec {
            hang_timeout: supervisor
                .hang_timeout
                .as_ref()
                .map_or(Duration::from_secs(30), |d| d.0),
            strategy: match supervisor.strategy {
                RawStrategy::OneForOne => Strategy::OneForOne,
                RawStrategy::OneForAll => Strategy::OneForAll,
                RawStrategy::RestForOne => Strategy::RestForOne,
            },
            intensity: Intensity {
                max_restarts: supervisor.max_restarts.get() as u32,
                within: supervisor.within.0,
            },
            backoff: Backoff {
                initial: supervisor.backoff_initial.0,
                max: supervisor.backoff_max.0,
            },
            children,
            executor_concurrency,
        })
    }

    /// Reads and checks a file; a missing file is an error naming it.
    pub fn load(file: &Path) -> Result<TreeSpec, ConfigError> {
        let text = super::read_config_file(file)?;
        Self::parse(file, &text)
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
