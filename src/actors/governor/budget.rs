//! The governor's budgets as pure functions of its ledger: the decision for
//! one permit (iteration limit, pause, deadline, tokens and dollars over a
//! rolling day, iterations over a rolling hour — each checked before the
//! spend, a job's worst case included), the rows `send governor budgets`
//! shows, and live changes by name.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::domain::{BudgetRow, Budgets, Permit};

#[cfg(test)]
const DAY_MS: u64 = 24 * 60 * 60 * 1000;
#[cfg(test)]
const HOUR_MS: u64 = 60 * 60 * 1000;

fn millis(window: Duration) -> u64 {
    window.as_millis() as u64
}

/// One reported spend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Spend {
    pub at_ms: u64,
    pub tokens: u64,
    pub usd: f64,
}

/// Permits granted within one slice of the hour window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permits {
    /// When the latest of them was granted.
    pub at_ms: u64,
    pub count: u64,
}

/// A window is kept in this many slices at most: what happens within one
/// slice is one entry, so the ledger's size does not grow with the rate of
/// iterations. An entry is dated by its latest member, so it counts in its
/// window a little longer than its earliest would: a budget may free up
/// one slice late (a day window's slice is 6 minutes), never early.
const SLICES: u64 = 240;

fn slice_of(at_ms: u64, window: Duration) -> u64 {
    at_ms / (millis(window) / SLICES).max(1)
}

/// Adds a spend to the ledger (into the newest entry when it is of the same
/// slice) and drops what has left the day window.
pub fn note_spend(spend: &mut Vec<Spend>, budgets: &Budgets, now_ms: u64, tokens: u64, usd: f64) {
    let window = budgets.day_window;
    spend.retain(|s| s.at_ms + millis(window) > now_ms);
    match spend.last_mut() {
        Some(last) if slice_of(last.at_ms, window) == slice_of(now_ms, window) => {
            last.at_ms = now_ms;
            last.tokens += tokens;
            last.usd += usd;
        }
        _ => spend.push(Spend {
            at_ms: now_ms,
            tokens,
            usd,
        }),
    }
}

/// Counts a granted permit and drops what has left the hour window.
pub fn note_permit(permits: &mut Vec<Permits>, budgets: &Budgets, now_ms: u64) {
    let window = budgets.hour_window;
    permits.retain(|p| p.at_ms + millis(window) > now_ms);
    match permits.last_mut() {
        Some(last) if slice_of(last.at_ms, window) == slice_of(now_ms, window) => {
            last.at_ms = now_ms;
            last.count += 1;
        }
        _ => permits.push(Permits {
            at_ms: now_ms,
            count: 1,
        }),
    }
}

/// What the budgets are measured on, borrowed from the governor's state.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Ledger<'a> {
    /// Spends of the last day window, by slice.
    pub spend: &'a [Spend],
    /// Permits granted in the last hour window, by slice.
    pub permits: &'a [Permits],
    /// When the run started (for the deadline).
    pub run_started_ms: Option<u64>,
}

impl Ledger<'_> {
    fn tokens_since(&self, since: u64) -> u64 {
        self.spend
            .iter()
            .filter(|s| s.at_ms >= since)
            .map(|s| s.tokens)
            .sum()
    }

    fn usd_since(&self, since: u64) -> f64 {
        self.spend
            .iter()
            .filter(|s| s.at_ms >= since)
            .map(|s| s.usd)
            .sum()
    }

    /// When the oldest spend (with `counts`) of the window leaves it.
    fn frees_at(&self, since: u64, window: u64, counts: impl Fn(&Spend) -> bool) -> Option<u64> {
        self.spend
            .iter()
            .filter(|s| s.at_ms >= since && counts(s))
            .map(|s| s.at_ms + window)
            .min()
    }

    /// Permits granted since `since`, and when the oldest of them leaves a
    /// window of `window` ms.
    fn permits_since(&self, since: u64, window: u64) -> (u64, Option<u64>) {
        let within = self.permits.iter().filter(|p| p.at_ms >= since);
        let count = within.clone().map(|p| p.count).sum();
        (count, within.map(|p| p.at_ms + window).min())
    }

    /// Tokens spent within the day window.
    pub fn tokens_in_day(&self, budgets: &Budgets, now_ms: u64) -> u64 {
        self.tokens_since(now_ms.saturating_sub(millis(budgets.day_window)))
    }
}

/// Everything a permit depends on besides the ledger.
#[derive(Debug, Clone)]
pub struct Asked<'a> {
    pub iteration: u64,
    pub max_iterations: Option<u64>,
    pub paused: bool,
    pub budgets: &'a Budgets,
    /// The most the iteration may spend in dollars (each Claude Code call
    /// bounded by `--max-budget-usd`).
    pub job_worst_usd: Option<f64>,
    pub retry_after: Duration,
    pub now_ms: u64,
}

/// The decision for one permit.
pub fn decide(ledger: &Ledger, asked: &Asked) -> Permit {
    let now = asked.now_ms;
    let wait = |reason: String, frees_at: Option<u64>| Permit::Wait {
        reason,
        retry_after: frees_at
            .map(|at| Duration::from_millis(at.saturating_sub(now)))
            .unwrap_or(asked.retry_after)
            .max(asked.retry_after),
    };
    if let Some(max) = asked.max_iterations
        && asked.iteration > max
    {
        return Permit::Finished {
            reason: format!("the iteration limit of {max} is reached"),
        };
    }
    if asked.paused {
        return Permit::Paused {
            retry_after: asked.retry_after,
            reason: None,
        };
    }
    let budgets = asked.budgets;
    if let (Some(deadline), Some(started)) = (budgets.deadline, ledger.run_started_ms)
        && now >= started + deadline.as_millis() as u64
    {
        return Permit::Finished {
            reason: format!(
                "the deadline of {} from the run's start is reached",
                humantime::format_duration(deadline)
            ),
        };
    }
    let (day_ms, hour_ms) = (millis(budgets.day_window), millis(budgets.hour_window));
    let day_name = humantime::format_duration(budgets.day_window);
    let day = now.saturating_sub(day_ms);
    let tokens = ledger.tokens_since(day);
    if tokens >= budgets.tokens_per_day {
        let frees = ledger.frees_at(day, day_ms, |s| s.tokens > 0);
        return wait(
            format!(
                "budget tokens_per_day: {tokens} of {} tokens spent in the last {day_name}, 0 left; frees up {}",
                budgets.tokens_per_day,
                when(frees, now)
            ),
            frees,
        );
    }
    if let Some(limit) = budgets.usd_per_day {
        let spent = ledger.usd_since(day);
        let left = (limit - spent).max(0.0);
        let worst = asked.job_worst_usd.unwrap_or(0.0);
        if left <= 0.0 || worst > left {
            let frees = ledger.frees_at(day, day_ms, |s| s.usd > 0.0);
            return wait(
                format!(
                    "budget usd_per_day: ${spent:.2} of ${limit:.2} spent in the last {day_name}, ${left:.2} left, less than one iteration's worst case ${worst:.2}; frees up {}",
                    when(frees, now)
                ),
                frees,
            );
        }
    }
    if let Some(limit) = budgets.iterations_per_hour {
        let hour = now.saturating_sub(hour_ms);
        let (started, frees) = ledger.permits_since(hour, hour_ms);
        if started >= limit {
            return wait(
                format!(
                    "budget iterations_per_hour: {started} of {limit} iterations started in the last {}, 0 left; frees up {}",
                    humantime::format_duration(budgets.hour_window),
                    when(frees, now)
                ),
                frees,
            );
        }
    }
    Permit::Granted
}

fn when(at_ms: Option<u64>, now_ms: u64) -> String {
    match at_ms {
        Some(at) => format!(
            "in {}",
            humantime::format_duration(Duration::from_secs(
                at.saturating_sub(now_ms).div_ceil(1000)
            ))
        ),
        None => "when the window moves on".into(),
    }
}

/// Every budget with what is spent and left, for operators.
pub fn rows(ledger: &Ledger, budgets: &Budgets, live: &[String], now_ms: u64) -> Vec<BudgetRow> {
    let (day_ms, hour_ms) = (millis(budgets.day_window), millis(budgets.hour_window));
    let day = now_ms.saturating_sub(day_ms);
    let hour = now_ms.saturating_sub(hour_ms);
    let tokens = ledger.tokens_since(day) as f64;
    let usd = ledger.usd_since(day);
    let (started, permits_free_at) = ledger.permits_since(hour, hour_ms);
    let row =
        |name: &'static str, limit: Option<f64>, spent: f64, resets_at_ms: Option<u64>| BudgetRow {
            name,
            limit,
            spent,
            left: limit.map(|l| (l - spent).max(0.0)),
            resets_at_ms,
            set_live: live.iter().any(|n| n == name),
        };
    let elapsed = ledger
        .run_started_ms
        .map_or(0.0, |at| now_ms.saturating_sub(at) as f64 / 1000.0);
    vec![
        row(
            "tokens_per_day",
            Some(budgets.tokens_per_day as f64),
            tokens,
            ledger.frees_at(day, day_ms, |s| s.tokens > 0),
        ),
        row(
            "usd_per_day",
            budgets.usd_per_day,
            usd,
            ledger.frees_at(day, day_ms, |s| s.usd > 0.0),
        ),
        row(
            "iterations_per_hour",
            budgets.iterations_per_hour.map(|n| n as f64),
            started as f64,
            permits_free_at,
        ),
        row(
            "deadline",
            budgets.deadline.map(|d| d.as_secs_f64()),
            elapsed,
            budgets
                .deadline
                .zip(ledger.run_started_ms)
                .map(|(d, at)| at + d.as_millis() as u64),
        ),
    ]
}

/// The budget names `set-budget` takes.
pub const NAMES: [&str; 4] = [
    "tokens_per_day",
    "usd_per_day",
    "iterations_per_hour",
    "deadline",
];

/// Changes one budget by name; `value` as the configuration writes it
/// (`none` lifts a limit other than tokens).
pub fn set(budgets: &mut Budgets, name: &str, value: &str) -> Result<(), String> {
    let value = value.trim();
    let none = value.eq_ignore_ascii_case("none");
    let number = || {
        value
            .parse::<f64>()
            .ok()
            .filter(|v| *v > 0.0 && v.is_finite())
            .ok_or_else(|| format!("budget {name}: \"{value}\" is not a positive number"))
    };
    match name {
        "tokens_per_day" => {
            budgets.tokens_per_day =
                value
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| {
                        format!("budget tokens_per_day: \"{value}\" is not a positive whole number")
                    })?;
        }
        "usd_per_day" => budgets.usd_per_day = if none { None } else { Some(number()?) },
        "iterations_per_hour" => {
            budgets.iterations_per_hour = if none {
                None
            } else {
                Some(value.parse::<u64>().ok().filter(|n| *n > 0).ok_or_else(|| {
                    format!("budget iterations_per_hour: \"{value}\" is not a positive whole number")
                })?)
            }
        }
        "deadline" => {
            budgets.deadline = if none {
                None
            } else {
                Some(humantime::parse_duration(value).map_err(|e| {
                    format!("budget deadline: \"{value}\" is not a duration like \"72h\": {e}")
                })?)
            }
        }
        other => {
            return Err(format!(
                "there is no budget \"{other}\"; the budgets are: {}",
                NAMES.join(", ")
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const RETRY: Duration = Duration::from_secs(2);

    fn budgets() -> Budgets {
        Budgets {
            tokens_per_day: 100,
            usd_per_day: Some(1.0),
            iterations_per_hour: Some(3),
            deadline: Some(Duration::from_secs(3600 * 10)),
            day_window: Duration::from_millis(DAY_MS),
            hour_window: Duration::from_millis(HOUR_MS),
        }
    }

    fn asked(budgets: &Budgets, now_ms: u64) -> Asked<'_> {
        Asked {
            iteration: 1,
            max_iterations: None,
            paused: false,
            budgets,
            job_worst_usd: Some(0.5),
            retry_after: RETRY,
            now_ms,
        }
    }

    fn spend(at_ms: u64, tokens: u64, usd: f64) -> Spend {
        Spend { at_ms, tokens, usd }
    }

    #[test]
    fn each_budget_denies_before_the_spend_names_itself_and_frees_up_in_its_window() {
        let b = budgets();
        let now = 10 * DAY_MS;
        // No run start: the deadline is not what these wait for.
        let started = None;
        let denied = |ledger: &Ledger| match decide(ledger, &asked(&b, now)) {
            Permit::Wait {
                reason,
                retry_after,
            } => (reason, retry_after),
            other => panic!("expected a wait, got {other:?}"),
        };
        let tokens = Ledger {
            spend: &[spend(now - 1000, 110, 0.1)],
            run_started_ms: started,
            ..Default::default()
        };
        let (reason, retry) = denied(&tokens);
        assert!(
            reason.starts_with("budget tokens_per_day: 110 of 100 tokens spent in the last 1day"),
            "{reason}"
        );
        assert_eq!(retry, Duration::from_millis(DAY_MS - 1000));
        // $0.60 spent: $0.40 left is less than a job's worst case $0.50.
        let usd = Ledger {
            spend: &[spend(now - 2000, 10, 0.6)],
            run_started_ms: started,
            ..Default::default()
        };
        let (reason, retry) = denied(&usd);
        assert!(
            reason.contains("budget usd_per_day: $0.60 of $1.00"),
            "{reason}"
        );
        assert!(reason.contains("$0.40 left, less than one iteration's worst case $0.50"));
        assert_eq!(retry, Duration::from_millis(DAY_MS - 2000));
        let mut permits = Vec::new();
        for at in [now - 3000, now - 2000, now - 1000] {
            note_permit(&mut permits, &b, at);
        }
        let hourly = Ledger {
            permits: &permits,
            run_started_ms: started,
            ..Default::default()
        };
        let (reason, retry) = denied(&hourly);
        assert!(
            reason.starts_with("budget iterations_per_hour: 3 of 3"),
            "{reason}"
        );
        // The three fall in one slice of the hour (15 s), dated by the latest:
        // the budget frees up when that one leaves the window.
        assert_eq!(permits.len(), 1);
        assert_eq!(retry, Duration::from_millis(HOUR_MS - 1000));
        // Once the window has moved on, each is granted again.
        for ledger in [&tokens, &usd] {
            assert_eq!(decide(ledger, &asked(&b, now + DAY_MS)), Permit::Granted);
        }
        assert_eq!(decide(&hourly, &asked(&b, now + HOUR_MS)), Permit::Granted);
    }

    #[test]
    fn the_ledger_holds_a_bounded_number_of_slices_whatever_the_rate() {
        let b = budgets();
        let (mut spend, mut permits) = (Vec::new(), Vec::new());
        // One permit and one spend every 100 ms for two days.
        let start = 10 * DAY_MS;
        for step in 0..(2 * DAY_MS / 100) {
            let now = start + step * 100;
            note_permit(&mut permits, &b, now);
            note_spend(&mut spend, &b, now, 1, 0.001);
        }
        assert!(permits.len() <= SLICES as usize + 1, "{}", permits.len());
        assert!(spend.len() <= SLICES as usize + 1, "{}", spend.len());
        let now = start + 2 * DAY_MS - 100;
        let ledger = Ledger {
            spend: &spend,
            permits: &permits,
            run_started_ms: None,
        };
        // Counted conservatively: at least what the window really holds, and
        // at most one slice more.
        let (started, _) = ledger.permits_since(now - HOUR_MS, HOUR_MS);
        assert!((36_000..=36_000 + 150).contains(&started), "{started}");
        let tokens = ledger.tokens_in_day(&b, now);
        assert!((864_000..=864_000 + 3_600).contains(&tokens), "{tokens}");
    }

    #[test]
    fn the_deadline_and_the_iteration_limit_finish_the_run_and_a_pause_waits() {
        let b = budgets();
        let ledger = Ledger {
            run_started_ms: Some(0),
            ..Default::default()
        };
        assert!(matches!(
            decide(&ledger, &asked(&b, 10 * HOUR_MS)),
            Permit::Finished { reason } if reason.contains("deadline of 10h")
        ));
        let mut limited = asked(&b, 0);
        limited.max_iterations = Some(0);
        assert!(matches!(decide(&ledger, &limited), Permit::Finished { .. }));
        let mut paused = asked(&b, 0);
        paused.paused = true;
        assert!(
            matches!(decide(&ledger, &paused), Permit::Paused { retry_after, .. } if retry_after == RETRY)
        );
    }

    #[test]
    fn budgets_are_set_by_name_and_bad_values_are_refused() {
        let mut b = budgets();
        set(&mut b, "usd_per_day", "2.5").unwrap();
        set(&mut b, "deadline", "90m").unwrap();
        set(&mut b, "iterations_per_hour", "none").unwrap();
        assert_eq!(b.usd_per_day, Some(2.5));
        assert_eq!(b.deadline, Some(Duration::from_secs(5400)));
        assert_eq!(b.iterations_per_hour, None);
        assert!(
            set(&mut b, "usd_per_day", "-1")
                .unwrap_err()
                .contains("not a positive number")
        );
        assert!(
            set(&mut b, "dollars", "1")
                .unwrap_err()
                .contains("there is no budget \"dollars\"")
        );
        assert!(set(&mut b, "tokens_per_day", "none").is_err());
    }
}
