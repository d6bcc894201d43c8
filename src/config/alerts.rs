//! `[alerts]` and `[limits]`: the conditions that raise an alert and the
//! machine resources the agent may use. The two sections share one checked
//! form, [`AlertRules`], because an alert's soft resource limit and
//! `[limits]`' hard one are watched by the same sampler.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;
use super::values::{HumanDuration, Positive};

/// Alert rules (`[alerts]`); each fires once when its condition starts to hold.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRules {
    pub webhook: Option<String>,
    pub webhook_timeout: Duration,
    /// Share of the daily token budget spent that raises `budget`.
    pub budget_warn_fraction: f64,
    /// More restarts than this within `restart_window` raise `restarts`.
    pub restart_limit: u64,
    pub restart_window: Duration,
    /// This many committed iterations in a row without an accepted change raise `no_progress`.
    pub no_progress_iterations: u64,
    /// What the agent and its jobs use of the machine, soft and hard.
    pub resources: crate::resources::Limits,
}

/// `[alerts]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAlerts {
    webhook: Option<String>,
    webhook_timeout: Option<HumanDuration>,
    budget_warn_fraction: Option<f64>,
    restart_limit: Option<Positive>,
    restart_window: Option<HumanDuration>,
    no_progress_iterations: Option<Positive>,
    max_rss_mb: Option<Positive>,
    max_cpu_percent: Option<Positive>,
    min_free_disk_mb: Option<Positive>,
}

/// `[limits]` as written: the hard resource limits, which pause the run.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    max_rss_mb: Option<Positive>,
    min_free_disk_mb: Option<Positive>,
    check_every: Option<HumanDuration>,
}

const MB: u64 = 1024 * 1024;

impl RawAlerts {
    /// Refuses a warning fraction outside (0, 1] and a webhook that is not
    /// plain HTTP, and joins `[limits]` into the resource limits.
    pub(super) fn check(self, file: &Path, limits: RawLimits) -> Result<AlertRules, ConfigError> {
        let fraction = self.budget_warn_fraction.unwrap_or(0.8);
        if !(fraction > 0.0 && fraction <= 1.0) {
            return Err(ConfigError::whole_file(
                file,
                format!(
                    "[alerts] budget_warn_fraction must be above 0 and at most 1, found {fraction}"
                ),
            ));
        }
        if let Some(url) = &self.webhook
            && !url.starts_with("http://")
        {
            return Err(ConfigError::whole_file(
                file,
                format!("[alerts] webhook \"{url}\" must be an http:// URL"),
            ));
        }
        let resources = self.resources(limits);
        Ok(AlertRules {
            webhook: self.webhook,
            webhook_timeout: self.webhook_timeout.map_or(Duration::from_secs(5), |d| d.0),
            budget_warn_fraction: fraction,
            restart_limit: self.restart_limit.map_or(3, Positive::get),
            restart_window: self
                .restart_window
                .map_or(Duration::from_secs(300), |d| d.0),
            no_progress_iterations: self.no_progress_iterations.map_or(5, Positive::get),
            resources,
        })
    }

    /// The soft limits of `[alerts]` (which alert) beside the hard ones of
    /// `[limits]` (which pause the run), in bytes.
    fn resources(&self, limits: RawLimits) -> crate::resources::Limits {
        crate::resources::Limits {
            soft_rss_bytes: self.max_rss_mb.map_or(4096, Positive::get) * MB,
            hard_rss_bytes: limits.max_rss_mb.map(|mb| mb.get() * MB),
            soft_cpu_percent: self.max_cpu_percent.map(|p| p.get() as f32),
            soft_free_disk_bytes: self.min_free_disk_mb.map(|mb| mb.get() * MB),
            hard_free_disk_bytes: limits.min_free_disk_mb.map(|mb| mb.get() * MB),
            every: limits.check_every.map_or(Duration::from_secs(10), |d| d.0),
        }
    }
}
