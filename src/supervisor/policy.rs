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

/// Delay before a restart. A child that had been running for a while is
/// restarted at once (one failure now and then must not stall the run); a
/// child that fails again soon after its restart (it ran for less than
/// twice the delay it was given, or less than `initial`) waits `initial`,
/// doubled for each such failure in a row, never more than `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The delay of the `quick`-th quick failure in a row (0: none).
    pub fn delay(&self, quick: u32) -> Duration {
        let Some(doublings) = quick.checked_sub(1) else {
            return Duration::ZERO;
        };
        let factor = 1u32.checked_shl(doublings.min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// Whether a child restarted at `restarted_at` after `delay` and
    /// failing at `now` failed soon (it did not run long enough to count as
    /// recovered).
    fn failed_soon(&self, restarted_at: Instant, delay: Duration, now: Instant) -> bool {
        let ran = now.saturating_duration_since(restarted_at + delay);
        ran < (delay * 2).max(self.initial)
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

/// Restart times within the intensity window, oldest first, and each
/// child's last restart for the backoff.
#[derive(Debug, Default, Clone)]
pub struct RestartWindow {
    restarts: VecDeque<(Instant, usize)>,
    /// By child: when it was last restarted, the delay it was given, and
    /// how many quick failures in a row led to it.
    last: std::collections::HashMap<usize, (Instant, Duration, u32)>,
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
        let quick = match window.last.get(&child) {
            Some(&(at, delay, quick)) if self.backoff.failed_soon(at, delay, now) => quick + 1,
            _ => 0,
        };
        let delay = self.backoff.delay(quick);
        window.restarts.push_back((now, child));
        window.last.insert(child, (now, delay, quick));
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
        assert_eq!(d, restart(&[], &[2], 0));
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
        assert_eq!(d, restart(&[3, 2, 0], &[0, 1, 2, 3], 0));
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
        assert_eq!(d, restart(&[3, 2], &[1, 2, 3], 0));
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
        assert_eq!(d, restart(&[2, 1], &[0, 2], 0));
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

    fn delay_ms(p: &Policy, w: &mut RestartWindow, child: usize, at: Instant) -> u128 {
        match p.decide(w, child, Exit::Failed, at) {
            Decision::Restart { delay, .. } => delay.as_millis(),
            other => panic!("expected a restart, got {other:?}"),
        }
    }

    #[test]
    fn a_child_failing_right_after_each_restart_backs_off_doubling_and_capped() {
        let mut p = policy(Strategy::OneForOne, &[Permanent; 2]);
        p.intensity.max_restarts = 10;
        let now = Instant::now();
        let mut w = RestartWindow::default();
        // Each failure comes as soon as the delay before it has passed.
        let mut at = now;
        let mut delays = Vec::new();
        for _ in 0..5 {
            let ms = delay_ms(&p, &mut w, 0, at);
            delays.push(ms);
            at += Duration::from_millis(ms as u64 + 1);
        }
        assert_eq!(delays, vec![0, 100, 200, 350, 350]);
    }

    #[test]
    fn a_child_that_ran_a_while_is_restarted_at_once_however_often_it_failed() {
        let mut p = policy(Strategy::OneForOne, &[Permanent; 2]);
        p.intensity.max_restarts = 100;
        p.intensity.within = Duration::from_secs(3600);
        let mut w = RestartWindow::default();
        let start = Instant::now();
        // A failure every 3 s for a minute: never a wait.
        for n in 0..20 {
            let at = start + Duration::from_secs(3 * n);
            assert_eq!(delay_ms(&p, &mut w, 0, at), 0, "failure {n}");
        }
        // Two quick failures, then a long run: the streak starts over.
        let at = start + Duration::from_secs(60);
        assert_eq!(delay_ms(&p, &mut w, 0, at), 0);
        assert_eq!(delay_ms(&p, &mut w, 0, at + Duration::from_millis(10)), 100);
        let later = at + Duration::from_secs(5);
        assert_eq!(delay_ms(&p, &mut w, 0, later), 0);
    }

    #[test]
    fn backoff_counts_each_child_separately() {
        let p = policy(Strategy::OneForOne, &[Permanent; 2]);
        let now = Instant::now();
        let mut w = RestartWindow::default();
        p.decide(&mut w, 0, Exit::Failed, now);
        assert_eq!(delay_ms(&p, &mut w, 0, now), 100);
        let other = p.decide(&mut w, 1, Exit::Failed, now);
        assert_eq!(other, restart(&[], &[1], 0));
    }
}
