//! `[safety]`: the rules every change passes before any build runs (paths it
//! may touch, its size, who may spawn processes, functions it may not edit).
//! Checked into [`SafetyConfig`]; nothing in it can be wrong once it parsed.

use serde::Deserialize;

use super::values::Positive;
use crate::safety::Rules;

/// `[safety]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSafety {
    #[serde(default)]
    protected_paths: Vec<String>,
    #[serde(default)]
    own_source_protected: Vec<String>,
    #[serde(default)]
    allowed_paths: Vec<String>,
    max_files: Option<Positive>,
    max_changed_lines: Option<Positive>,
    #[serde(default)]
    process_spawn_allowed: Vec<String>,
    #[serde(default)]
    protected_fns: Vec<String>,
}

/// `[safety]` checked: the [`Config`](super::Config) fields `safety` and
/// `own_source_protected`, apart because the latter applies only when the
/// workspace is this agent's own source.
pub(super) struct SafetyConfig {
    pub rules: Rules,
    pub own_source_protected: Vec<String>,
}

impl From<RawSafety> for SafetyConfig {
    fn from(raw: RawSafety) -> SafetyConfig {
        SafetyConfig {
            rules: Rules {
                protected_paths: raw.protected_paths,
                allowed_paths: raw.allowed_paths,
                max_files: raw.max_files.map_or(50, |n| n.get() as usize),
                max_changed_lines: raw.max_changed_lines.map_or(2000, |n| n.get() as usize),
                process_spawn_allowed: raw.process_spawn_allowed,
                protected_fns: raw.protected_fns,
            },
            own_source_protected: raw.own_source_protected,
        }
    }
}
