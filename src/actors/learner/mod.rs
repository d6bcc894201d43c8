//! The learner: records the experience of every iteration and turns it into
//! what the next plan is made from. It keeps per-capability statistics (for
//! operators), a contextual bandit that predicts each capability's reward in
//! the workspace's situation, and rules ("for warning X, capability Y
//! works") that gain and lose weight with evidence. An advice ranks the
//! candidates by the bandit's upper confidence bound lifted by the rules
//! that hold, and carries the past experiences most relevant to the
//! situation. With `[learning] enabled = false` the ranking is a uniform
//! random draw (the experiment's control arm); experiences are still kept.
//!
//! This file is the actor and its handlers, one per message; what it keeps
//! (and reads from older stores) is in `snapshot.rs`, how an experience is
//! learned and how candidates are ranked in `policy.rs`.

mod policy;
mod snapshot;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::{Context, handle_common};
use crate::domain::{ActorKind, Advice, Experience, LearnedRules, LearnerStats, Signals};
use crate::learning::retrieval;
use crate::messages::{ActorError, LearnerMsg};
use policy::{learn, rank};
use snapshot::LearnerSnapshot;

const KIND: ActorKind = ActorKind::Learner;
pub(crate) const SCHEMA: u32 = 3;
/// How far back retrieval looks for relevant experiences.
const RETRIEVAL_WINDOW: usize = 500;
/// How far back an advice looks for attempts in the very same situation.
const SAME_SITUATION_WINDOW: usize = 30;

pub struct Learner;

pub struct LearnerState {
    ctx: Context,
    snapshot: LearnerSnapshot,
}

impl Actor for Learner {
    type Msg = LearnerMsg;
    type State = LearnerState;
    type Arguments = Context;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        ctx: Context,
    ) -> Result<Self::State, ActorProcessingErr> {
        let snapshot = snapshot::load(&ctx.store)?.unwrap_or_default();
        Ok(LearnerState { ctx, snapshot })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: LearnerMsg,
        state: &mut LearnerState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            LearnerMsg::Advise {
                iteration,
                candidates,
                signals,
                reply,
            } => state.advise(iteration, &candidates, &signals, reply),
            LearnerMsg::Stats(reply) => state.stats(reply),
            LearnerMsg::Rules(reply) => state.rules(reply),
            LearnerMsg::Experiences { last, reply } => state.experiences(last, reply),
            LearnerMsg::Forget { capability, reply } => state.forget(&capability, reply),
            LearnerMsg::Record {
                experience,
                after,
                reply,
            } => state.record(&experience, after.as_deref(), reply),
            LearnerMsg::Common(common) => {
                handle_common(KIND, SCHEMA, &state.ctx.store, &mut state.snapshot, common).await?
            }
        }
        Ok(())
    }
}

impl LearnerState {
    /// Ranks the candidates for the situation, with the rules that hold and
    /// the past experiences most relevant to it.
    fn advise(
        &self,
        iteration: u64,
        candidates: &[String],
        signals: &Signals,
        reply: RpcReplyPort<Advice>,
    ) {
        let settings = self.ctx.config.learning;
        let span = tracing::info_span!(
            "learner.advise",
            actor = KIND.name(),
            iteration = iteration as i64,
            relevant = tracing::field::Empty,
            rules = tracing::field::Empty,
        );
        let _entered = span.enter();
        let terms = signals.terms();
        // One read of the store serves retrieval and the memory of the same
        // situation (the newest of the same window). With no terms there is
        // nothing to match: only the last experience matters (`after:`).
        let window = if terms.is_empty() {
            1
        } else {
            RETRIEVAL_WINDOW
        };
        let past = self.ctx.store.experiences(window).unwrap_or_default();
        let relevant = retrieval::most_relevant(&past, &terms, settings.relevant);
        let (rules, recent) = if settings.enabled {
            let newest = past.len().saturating_sub(SAME_SITUATION_WINDOW);
            (self.snapshot.rules.holding(&terms), &past[newest..])
        } else {
            (Vec::new(), &past[..0])
        };
        span.record("relevant", relevant.len() as i64);
        span.record("rules", rules.len() as i64);
        let _ = reply.send(Advice {
            ranked: rank(
                &settings,
                &self.snapshot,
                candidates,
                signals,
                iteration,
                recent,
            ),
            relevant,
            rules,
        });
    }

    fn stats(&self, reply: RpcReplyPort<LearnerStats>) {
        let capabilities = self
            .snapshot
            .stats
            .iter()
            .map(|(id, s)| s.summary(id))
            .collect();
        let _ = reply.send(LearnerStats {
            experiences: self.snapshot.experiences,
            capabilities,
        });
    }

    fn rules(&self, reply: RpcReplyPort<LearnedRules>) {
        let _ = reply.send(LearnedRules {
            rules: self.snapshot.rules.all(),
            dropped: self.snapshot.rules.dropped,
        });
    }

    fn experiences(&self, last: usize, reply: RpcReplyPort<Result<Vec<Experience>, ActorError>>) {
        let found = self
            .ctx
            .store
            .experiences(last)
            .map_err(|e| ActorError::Store(e.to_string()));
        let _ = reply.send(found);
    }

    /// Drops the statistics and the bandit's model of a capability; answers
    /// whether there was any.
    fn forget(&mut self, capability: &str, reply: RpcReplyPort<bool>) {
        let known = self.snapshot.stats.remove(capability).is_some();
        let modelled = self.snapshot.bandit.arms.remove(capability).is_some();
        let _ = reply.send(known || modelled);
    }

    /// Learns from an experience; `after` is what the workspace showed once
    /// its change was kept.
    fn record(
        &mut self,
        experience: &Experience,
        after: Option<&Signals>,
        reply: RpcReplyPort<()>,
    ) {
        let _span = tracing::info_span!(
            "learner.record",
            actor = KIND.name(),
            iteration = experience.iteration as i64,
            capability = %experience.capability,
            outcome = experience.outcome.as_str(),
        )
        .entered();
        let previous = self
            .ctx
            .store
            .experiences(1)
            .unwrap_or_default()
            .pop()
            .filter(|p| p.iteration < experience.iteration);
        learn(&mut self.snapshot, experience, after, previous.as_ref());
        let _ = reply.send(());
    }
}
