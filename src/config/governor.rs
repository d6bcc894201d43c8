//! `[governor]`: the budgets every iteration's permit is checked against,
//! how long a denied planner waits, and how long a change waits for an
//! operator. Checked into [`GovernorConfig`].

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;
use super::values::{HumanDuration, Positive};
use crate::domain::Budgets;

/// `[governor]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGovernor {
    tokens_per_day: Positive,
    usd_per_day: Option<f64>,
    iterations_per_hour: Option<Positive>,
    deadline: Option<HumanDuration>,
    day_window: Option<HumanDuration>,
    hour_window: Option<HumanDuration>,
    retry_after: HumanDuration,
    approval_timeout: HumanDuration,
}

/// `[governor]` checked: the [`Config`](super::Config) fields `budgets`,
/// `permit_retry_after` and `approval_timeout`.
pub(super) struct GovernorConfig {
    pub budgets: Budgets,
    pub permit_retry_after: Duration,
    pub approval_timeout: Duration,
}

impl RawGovernor {
    /// Refuses a dollar budget that is not a positive amount, or that no
    /// job bound can keep: `max_budget_usd` is `[cognition]`'s.
    pub(super) fn check(
        self,
        file: &Path,
        max_budget_usd: Option<f64>,
    ) -> Result<GovernorConfig, ConfigError> {
        if let Some(usd) = self.usd_per_day {
            if !(usd > 0.0 && usd.is_finite()) {
                return Err(ConfigError::whole_file(
                    file,
                    "[governor] usd_per_day must be a positive number of dollars, e.g. 20.0",
                ));
            }
            if max_budget_usd.is_none() {
                return Err(ConfigError::whole_file(
                    file,
                    "[governor] usd_per_day needs [cognition] max_budget_usd: a job's worst case must be bounded before it starts",
                ));
            }
        }
        Ok(GovernorConfig {
            budgets: Budgets {
                tokens_per_day: self.tokens_per_day.get(),
                usd_per_day: self.usd_per_day,
                iterations_per_hour: self.iterations_per_hour.map(Positive::get),
                deadline: self.deadline.map(|d| d.0),
                day_window: self
                    .day_window
                    .map_or(Duration::from_secs(24 * 3600), |d| d.0),
                hour_window: self.hour_window.map_or(Duration::from_secs(3600), |d| d.0),
            },
            permit_retry_after: self.retry_after.0,
            approval_timeout: self.approval_timeout.0,
        })
    }
}
