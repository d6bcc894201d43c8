//! What is spent and what may be: `RecordUsage` puts the tokens and money a
//! backend reports into the ledger, written at once (spent is spent, whatever
//! becomes of the iteration); `Budgets` shows every budget against the
//! ledger; `SetBudget` changes one live, audited and kept across restarts.

use ractor::RpcReplyPort;

use super::budget;
use super::{GovernorSnapshot, GovernorState, KIND};
use crate::domain::{ActorKind, BudgetRow, Budgets, Usage};
use crate::messages::{self, ActorError, PlannerMsg};
use crate::store::now_ms;

impl GovernorState {
    pub(super) async fn record_usage(&mut self, usage: Usage, reply: RpcReplyPort<()>) {
        tracing::info_span!(
            "governor.usage",
            actor = KIND.name(),
            gen_ai.usage.input_tokens = usage.input_tokens as i64,
            gen_ai.usage.output_tokens = usage.output_tokens as i64,
            gen_ai.usage.cost_usd = usage.cost_usd,
        )
        .in_scope(|| add_to_ledger(&mut self.snapshot, &self.budgets, usage, now_ms()));
        let spent = self.ledger().tokens_in_day(&self.budgets, now_ms());
        crate::telemetry::metrics::budget_remaining(
            self.budgets.tokens_per_day.saturating_sub(spent),
        );
        if let Err(error) = self.persist().await {
            tracing::error!(%error, "cannot persist the token ledger");
        }
        let _ = reply.send(());
    }

    pub(super) fn budgets(&self, reply: RpcReplyPort<Vec<BudgetRow>>) {
        let _ = reply.send(self.rows());
    }

    pub(super) async fn set_budget(
        &mut self,
        name: String,
        value: String,
        reply: RpcReplyPort<Result<BudgetRow, ActorError>>,
    ) {
        let _ = reply.send(self.change_budget(name, value).await);
    }

    /// Sets budget `name` to `value` once the change is audited, then wakes
    /// the planner; answers the budget's new row.
    async fn change_budget(
        &mut self,
        name: String,
        value: String,
    ) -> Result<BudgetRow, ActorError> {
        let mut budgets = self.budgets.clone();
        budget::set(&mut budgets, &name, &value).map_err(ActorError::Invalid)?;
        self.audit("budget.set", format!("{name} = {value}"))
            .await?;
        self.budgets = budgets;
        self.snapshot.live_budgets.retain(|(n, _)| *n != name);
        self.snapshot.live_budgets.push((name.clone(), value));
        // A waiting planner looks again now.
        if let Ok(planner) = messages::lookup::<PlannerMsg>(ActorKind::Planner) {
            let _ = planner.cast(PlannerMsg::Tick);
        }
        self.persist().await?;
        Ok(self
            .rows()
            .into_iter()
            .find(|row| row.name == name)
            .expect("a budget that was set has a row"))
    }
}

/// Adds a backend's report to the ledger: the spend in its window (when
/// there was any) and the run's totals.
fn add_to_ledger(snapshot: &mut GovernorSnapshot, budgets: &Budgets, usage: Usage, now_ms: u64) {
    if usage.tokens() > 0 || usage.cost_usd > 0.0 {
        budget::note_spend(
            &mut snapshot.spend,
            budgets,
            now_ms,
            usage.tokens(),
            usage.cost_usd,
        );
    }
    snapshot.tokens_total += usage.tokens();
    snapshot.cost_usd_total += usage.cost_usd;
}
