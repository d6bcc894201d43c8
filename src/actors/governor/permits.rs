//! `RequestPermit`: the permit each iteration starts with. The decision
//! itself is pure (`budget::decide`); this file counts a grant in the
//! ledger, bounds how long a denied planner waits, and audits the decision
//! before it is answered (a denial the planner keeps asking about is
//! audited once).

use ractor::RpcReplyPort;
use tracing::Instrument;

use super::budget::{self, Asked};
use super::{GovernorState, KIND};
use crate::actors::Context;
use crate::domain::{BackendKind, Permit};
use crate::messages::ActorError;
use crate::store::{Durable, now_ms};

/// The longest a denied planner waits before it asks again.
const LONGEST_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

impl GovernorState {
    pub(super) async fn request_permit(&mut self, iteration: u64, reply: RpcReplyPort<Permit>) {
        // Debug level: permits are asked for outside any iteration's
        // trace (a paused run asks every few seconds).
        let span = tracing::debug_span!("governor.permit", actor = KIND.name(), iteration);
        let permit = self.decide_permit(iteration);
        let (action, detail) = audit_entry(iteration, &permit);
        if let Err(error) = self.audit_permit(action, detail, span).await {
            // Not audited, not granted: the planner waits and asks again.
            tracing::error!(%error, "cannot audit a permit");
            let _ = reply.send(Permit::Wait {
                reason: error.to_string(),
                retry_after: self.ctx.config.permit_retry_after,
            });
            return;
        }
        let _ = reply.send(permit);
    }

    /// Holds permits until `until_ms`: audited before it is answered.
    pub(super) async fn hold_until(
        &mut self,
        until_ms: u64,
        reason: String,
        reply: RpcReplyPort<Result<(), ActorError>>,
    ) {
        let detail = format!("{reason}; permits wait until {}", rfc3339(until_ms));
        let audited = self.audit_with("permit.hold", detail, Durable::Now).await;
        if audited.is_ok() {
            tracing::warn!(%reason, until = %rfc3339(until_ms), "holding permits");
            self.hold = Some((until_ms, reason));
        }
        let _ = reply.send(audited);
    }

    /// The budgets' decision for `iteration`, with a grant counted in the
    /// ledger and a denial's wait bounded.
    fn decide_permit(&mut self, iteration: u64) -> Permit {
        let config = &self.ctx.config;
        let now = now_ms();
        if let Some((until, reason)) = &self.hold {
            if now < *until && !self.snapshot.paused {
                return Permit::Wait {
                    reason: reason.clone(),
                    retry_after: std::time::Duration::from_millis(until - now).min(LONGEST_WAIT),
                };
            }
            if now >= *until {
                self.hold = None;
            }
        }
        let permit = budget::decide(
            &self.ledger(),
            &Asked {
                iteration,
                max_iterations: config.max_iterations,
                paused: self.snapshot.paused,
                budgets: &self.budgets,
                job_worst_usd: iteration_worst_usd(&self.ctx),
                retry_after: config.permit_retry_after,
                now_ms: now,
            },
        );
        match permit {
            Permit::Granted => {
                self.snapshot.permits_granted += 1;
                budget::note_permit(&mut self.snapshot.permits, &self.budgets, now);
                Permit::Granted
            }
            // Asked again at least every minute: a budget raised
            // live (or a clock that moved) is seen soon.
            Permit::Wait {
                reason,
                retry_after,
            } => Permit::Wait {
                reason,
                retry_after: retry_after.min(LONGEST_WAIT),
            },
            Permit::Paused { retry_after, .. } => Permit::Paused {
                retry_after,
                reason: self.pause_reason.clone(),
            },
            other => other,
        }
    }

    /// Audits a permit's decision. The same denial twice in a row is one
    /// decision, not one a request: a waiting planner asks every few seconds.
    async fn audit_permit(
        &mut self,
        action: &str,
        detail: String,
        span: tracing::Span,
    ) -> Result<(), ActorError> {
        let granted = action == "permit.granted";
        if !granted && self.last_denial.as_deref() == Some(detail.as_str()) {
            return Ok(());
        }
        // A grant starts an iteration and is durable with its commit; a
        // crash before that asks for the permit again.
        let durable = if granted {
            Durable::AtCommit
        } else {
            Durable::Now
        };
        self.audit_with(action, detail.clone(), durable)
            .instrument(span)
            .await?;
        self.last_denial = (!granted).then_some(detail);
        Ok(())
    }
}

/// `ms` since the epoch as an RFC 3339 time, to the second.
fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

/// The audit entry of a permit: its action and detail.
fn audit_entry(iteration: u64, permit: &Permit) -> (&'static str, String) {
    match permit {
        Permit::Granted => ("permit.granted", format!("iteration {iteration}")),
        Permit::Paused { reason, .. } => (
            "permit.denied",
            format!(
                "iteration {iteration}: paused{}",
                reason
                    .as_ref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            ),
        ),
        Permit::Wait { reason, .. } => {
            ("permit.denied", format!("iteration {iteration}: {reason}"))
        }
        Permit::Finished { reason } => (
            "permit.finished",
            format!("iteration {iteration}: {reason}"),
        ),
    }
}

/// The most one iteration may spend in dollars: every Claude Code call it
/// may make at `--max-budget-usd` each. The offline backend spends nothing.
fn iteration_worst_usd(ctx: &Context) -> Option<f64> {
    worst_case_usd(&ctx.config, ctx.backend.kind())
}

/// [`iteration_worst_usd`] for a configuration and a backend, with the calls
/// it counts.
pub fn worst_case_usd(config: &crate::config::Config, backend: BackendKind) -> Option<f64> {
    if backend == BackendKind::Offline {
        return Some(0.0);
    }
    config
        .max_budget_usd
        .map(|usd| usd * worst_case_calls(config) as f64)
}

/// The Claude Code calls one iteration of this configuration may make.
pub fn worst_case_calls(config: &crate::config::Config) -> u64 {
    iteration_calls(
        crate::cognition::research_questions("").len(),
        config.candidates,
        config.repair_turns,
    )
}

/// The Claude Code calls one iteration may make: the research questions,
/// then each candidate's job and its repair turns.
pub(super) fn iteration_calls(research: usize, candidates: u32, repair_turns: u32) -> u64 {
    research as u64 + u64::from(candidates) * (1 + u64::from(repair_turns))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::budget::{Asked, Ledger, Spend, decide};
    use super::iteration_calls;
    use crate::domain::{Budgets, Permit};

    /// The permit for an iteration of `candidates` with `spent` dollars of
    /// a $5.00 day gone; $0.50 a call, two research questions, one repair
    /// turn per job.
    fn permit(candidates: u32, spent: f64) -> Permit {
        let budgets = Budgets {
            tokens_per_day: u64::MAX,
            usd_per_day: Some(5.0),
            iterations_per_hour: None,
            deadline: None,
            day_window: Duration::from_secs(24 * 3600),
            hour_window: Duration::from_secs(3600),
        };
        let now = 100 * 24 * 3600 * 1000;
        let spend = [Spend {
            at_ms: now - 1000,
            tokens: 0,
            usd: spent,
        }];
        let ledger = Ledger {
            spend: &spend,
            ..Default::default()
        };
        let asked = Asked {
            iteration: 1,
            max_iterations: None,
            paused: false,
            budgets: &budgets,
            job_worst_usd: Some(0.5 * iteration_calls(2, candidates, 1) as f64),
            retry_after: Duration::from_secs(1),
            now_ms: now,
        };
        decide(&ledger, &asked)
    }

    #[test]
    fn the_dollar_budget_holds_the_worst_case_of_every_candidate() {
        // Three candidates: 2 research calls + 3 × (job + repair) = 8 calls,
        // $4.00; one candidate: 4 calls, $2.00.
        assert_eq!(iteration_calls(2, 3, 1), 8);
        // $2.50 left: three worst cases do not fit, one would.
        match permit(3, 2.5) {
            Permit::Wait { reason, .. } => assert!(
                reason.contains("$2.50 left, less than one iteration's worst case $4.00"),
                "{reason}"
            ),
            other => panic!("three candidates' worst case must not fit: {other:?}"),
        }
        assert_eq!(permit(1, 2.5), Permit::Granted);
        // $4.50 left: three fit.
        assert_eq!(permit(3, 0.5), Permit::Granted);
    }
}
