//! The supervision policy, as pure functions of the tree's declaration, the
//! failed child and the clock. Erlang/OTP semantics: which children a failure
//! restarts (strategy), whether a child is restarted at all (restart type),
//! when restarting must stop and escalate (intensity) and how long to wait
//! before a restart (capped exponential backoff). The supervisor actor only
//! applies what this module decides, so every rule is unit-tested here.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Which siblings a failure takes down with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Only the failed child is restarted.
    OneForOne,
    /// Every child is stopped and all are restarted.
    OneForAll,
    /// The failed child and every child started after it are restarted.
    RestForOne,
}

/// Whether a child comes back after it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartType {
    /// Always restarted.
    Permanent,
    /// Restarted only after an abnormal exit.
    Transient,
    /// Never restarted.
    Temporary,
}

/// More than `max_restarts` restarts within `within` escalates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Intensity {
    pub max_restarts: u32,
    pub within: Duration,
}

/// Delay before a restart: `initial` doubled for every earlier restart of the
/// same child inside the intensity window, never more than `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    pub fn delay(&self, earlier_restarts: u32) -> Duration {
        let factor = 1u32
            .checked_shl(earlier_restarts.min(31))
            .unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It stopped by itself without error.
    Normal,
    /// It panicked, returned an error, or failed to start.
    Failed,
}

/// What the supervisor must do about an exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Leave the child stopped; nothing else changes.
    Leave,
    /// Stop the `stop` children (already in reverse start order), wait
    /// `delay`, then start the `start` children in start order.
    Restart {
        stop: Vec<usize>,
        start: Vec<usize>,
        delay: Duration,
    },
    /// Too many restarts: stop everything in reverse order and give up.
    Escalate { reason: String },
}

/// Restart times within the intensity window, oldest first.
#[derive(Debug, Default, Clone)]
pub struct RestartWindow {
    restarts: VecDeque<(Instant, usize)>,
}

impl RestartWindow {
    fn prune(&mut self, now: Instant, within: Duration) {
        while let Some(&(at, _)) = self.restarts.front() {
            if now.saturating_duration_since(at) >= within {
                self.restarts.pop_front();
            } else {
                break;
            }
        }
    }

    /// Restarts of one child still inside the window.
    fn count_for(&self, child: usize) -> u32 {
        self.restarts.iter().filter(|(_, c)| *c == child).count() as u32
    }

    pub fn len(&self) -> usize {
        self.restarts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.restarts.is_empty()
    }
}

/// The declared policy of one supervisor.
#[derive(Debug, Clone)]
pub struct Policy {
    pub strategy: Strategy,
    pub intensity: Intensity,
    pub backoff: Backoff,
    /// Restart type of each child, in start order.
    pub restart_types: Vec<RestartType>,
}

impl Policy {
    /// Decides what follows the exit of child `child` at `now`, recording the
    /// restart in `window` when one is decided.
    pub fn decide(
        &self,
        window: &mut RestartWindow,
        child: usize,
        exit: Exit,
        now: Instant,
    ) -> Decision {
        let restarts = match (self.restart_types[child], exit) {
            (RestartType::Permanent, _) => true,
            (RestartType::Transient, Exit::Failed) => true,
            (RestartType::Transient, Exit::Normal) | (RestartType::Temporary, _) => false,
        };
        if !restarts {
            return Decision::Leave;
        }
        window.prune(now, self.intensity.within);
        if window.len() as u32 >= self.intensity.max_restarts {
            return Decision::Escalate {
                reason: format!(
                    "more than {} restarts within {}",
                    self.intensity.max_restarts,
                    humantime::format_duration(self.intensity.within)
                ),
            };
        }
        let delay = self.backoff.delay(window.count_for(child));
        window.restarts.push_back((now, child));
        let affected: Vec<usize> = match self.strategy {
            Strategy::OneForOne => vec![child],
            Strategy::OneForAll => (0..self.restart_types.len()).collect(),
            Strategy::RestForOne => (child..self.restart_types.len()).collect(),
        };
        // Siblings taken down with the failed child are stopped in reverse
        // start order; temporary siblings are stopped but not started again.
        let stop: Vec<usize> = affected
            .iter()
            .rev()
            .copied()
            .filter(|&c| c != child)
            .collect();
        let start: Vec<usize> = affected
            .into_iter()
            .filter(|&c| c == child || self.restart_types[c] != RestartType::Temporary)
            .collect();
        Decision::Restart { stop, start, delay }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RestartType::*;

    fn policy(strategy: Strategy, types: &[RestartType]) -> Policy {
        Policy {
            strategy,
            intensity: Intensity {
                max_restarts: 3,
                within: Duration::from_secs(10),
            },
            backoff: Backoff {
                initial: Duration::from_millis(100),
                max: Duration::from_millis(350),
            },
            restart_types: types.to_vec(),
        }
    }

    fn restart(stop: &[usize], start: &[usize], delay_ms: u64) -> Decision {
        Decision::Restart {
            stop: stop.to_vec(),
            start: start.to_vec(),
            delay: Duration::from_millis(delay_ms),
        }
    }

    #[test]
    fn one_for_one_restarts_only_the_failed_child() {
        let p = policy(Strategy::OneForOne, &[Permanent; 4]);
        let d = p.decide(
            &mut RestartWindow::default(),
            2,
            Exit::Failed,
            Instant::now(),
        );
        assert_eq!(d, restart(&[], &[2], 100));
    }

    #[test]
    fn one_for_all_stops_the_others_in_reverse_and_restarts_all_in_order() {
        let p = policy(Strategy::OneForAll, &[Permanent; 4]);
        let d = p.decide(
            &mut RestartWindow::default(),
            1,
            Exit::Failed,
            Instant::now(),
        );
        assert_eq!(d, restart(&[3, 2, 0], &[0, 1, 2, 3], 100));
    }

    #[test]
    fn rest_for_one_restarts_the_child_and_those_started_after_it() {
        let p = policy(Strategy::RestForOne, &[Permanent; 4]);
        let d = p.decide(
            &mut RestartWindow::default(),
            1,
            Exit::Failed,
            Instant::now(),
        );
        assert_eq!(d, restart(&[3, 2], &[1, 2, 3], 100));
    }

    #[test]
    fn temporary_siblings_are_stopped_but_not_restarted() {
        let p = policy(Strategy::OneForAll, &[Permanent, Temporary, Permanent]);
        let d = p.decide(
            &mut RestartWindow::default(),
            0,
            Exit::Failed,
            Instant::now(),
        );
        assert_eq!(d, restart(&[2, 1], &[0, 2], 100));
    }

    #[test]
    fn restart_types_decide_whether_a_child_comes_back() {
        let p = policy(Strategy::OneForOne, &[Permanent, Transient, Temporary]);
        let now = Instant::now();
        let mut w = RestartWindow::default();
        assert!(matches!(
            p.decide(&mut w, 0, Exit::Normal, now),
            Decision::Restart { .. }
        ));
        assert!(matches!(
            p.decide(&mut w, 0, Exit::Failed, now),
            Decision::Restart { .. }
        ));
        assert_eq!(p.decide(&mut w, 1, Exit::Normal, now), Decision::Leave);
        assert!(matches!(
            p.decide(&mut w, 1, Exit::Failed, now),
            Decision::Restart { .. }
        ));
        assert_eq!(p.decide(&mut w, 2, Exit::Failed, now), Decision::Leave);
        assert_eq!(p.decide(&mut w, 2, Exit::Normal, now), Decision::Leave);
    }

    #[test]
    fn exceeding_the_intensity_within_the_window_escalates() {
        let p = policy(Strategy::OneForOne, &[Permanent; 2]);
        let start = Instant::now();
        let mut w = RestartWindow::default();
        for i in 0..3 {
            let at = start + Duration::from_secs(i);
            assert!(matches!(
                p.decide(&mut w, 0, Exit::Failed, at),
                Decision::Restart { .. }
            ));
        }
        let fourth = p.decide(&mut w, 1, Exit::Failed, start + Duration::from_secs(3));
        assert!(matches!(fourth, Decision::Escalate { .. }), "{fourth:?}");
    }

    #[test]
    fn restarts_older_than_the_window_are_forgotten() {
        let p = policy(Strategy::OneForOne, &[Permanent]);
        let start = Instant::now();
        let mut w = RestartWindow::default();
        for i in 0..3 {
            p.decide(&mut w, 0, Exit::Failed, start + Duration::from_secs(i));
        }
        // At 10s the first restart (at 0s) has left the 10s window.
        let later = p.decide(&mut w, 0, Exit::Failed, start + Duration::from_secs(10));
        assert!(matches!(later, Decision::Restart { .. }), "{later:?}");
        let again = p.decide(&mut w, 0, Exit::Failed, start + Duration::from_secs(10));
        assert!(matches!(again, Decision::Escalate { .. }), "{again:?}");
    }

    #[test]
    fn backoff_doubles_per_restart_of_the_same_child_and_is_capped() {
        let p = policy(Strategy::OneForOne, &[Permanent; 2]);
        let now = Instant::now();
        let mut w = RestartWindow::default();
        let delays: Vec<Duration> = (0..3)
            .map(|_| match p.decide(&mut w, 0, Exit::Failed, now) {
                Decision::Restart { delay, .. } => delay,
                other => panic!("expected a restart, got {other:?}"),
            })
            .collect();
        let ms: Vec<u128> = delays.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, vec![100, 200, 350]);
        assert_eq!(p.backoff.delay(40), Duration::from_millis(350));
    }

    #[test]
    fn backoff_counts_each_child_separately() {
        let p = policy(Strategy::OneForOne, &[Permanent; 2]);
        let now = Instant::now();
        let mut w = RestartWindow::default();
        p.decide(&mut w, 0, Exit::Failed, now);
        let other = p.decide(&mut w, 1, Exit::Failed, now);
        assert_eq!(other, restart(&[], &[1], 100));
    }
}
