//! The keeper: `agent run` with `[upgrade] enabled` (OTP's `heart`). It is
//! the binary the operator installed and never replaces itself during a run:
//! whatever the agent changes in its own source, the process that decides
//! which release runs, and what happens when one fails, stays the one the
//! operator chose. It starts the current release as its child with the same
//! command line, waits for it to answer `ctl status` within `ready_within`
//! (the health gate), and then:
//! - the child's own ends (finished, stopped, paused, refused, escalated)
//!   are the keeper's: it exits with the same status;
//! - a crash (a signal, a panic, a failed gate — silence past
//!   `ready_within`, or status 1 before answering) restarts it after a
//!   back-off, and past `max_restarts` crashes within `restart_window` the
//!   keeper stops with the last cause instead of spinning;
//! - SIGTERM or SIGINT are passed on, and the keeper exits as its child did;
//! - a child that exits asking for a handover (`agent ctl upgrade`) is
//!   followed by the release `current` now names, on probation for
//!   `probation` and `probation_iterations` committed iterations: a crash,
//!   a failed gate or an escalation in that time, or a failure rate over
//!   its iterations above the run's before it, points `current` back at the
//!   permanent release and starts it, telling it which release failed and
//!   why (it reverts the release's commit); a release that lives through
//!   its probation is made permanent.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::Child;
use tokio::signal::unix::{SignalKind, signal};

use super::UpgradeConfig;
use super::attempts::{PROBATION_VAR, ROLLED_BACK_VAR, RolledBack};
use super::releases::{INSTALLED, Pointer, Releases};
use crate::cli::exit;
use crate::ctl::client;
use crate::ctl::protocol::{Command, Outcome, Reply, StatusReply};

/// Set on the keeper's child: it runs as the agent, not as another keeper.
pub const CHILD_VAR: &str = "AGENT_KEEPER_CHILD";
/// The release the child is, for what it reports of itself.
pub const RELEASE_VAR: &str = "AGENT_RELEASE";
/// What the keeper decided since it last started a child (a JSON list of
/// `[action, detail]`): the keeper holds no store, so the child it starts
/// writes these to the audit chain.
pub const SAID_VAR: &str = "AGENT_KEEPER_SAID";

/// What a keeper tells the one child it starts; no other process the agent
/// starts inherits them (a candidate judged by `agent run` in a process of
/// its own is not a keeper's child).
pub const VARS: [&str; 5] = [
    CHILD_VAR,
    RELEASE_VAR,
    SAID_VAR,
    PROBATION_VAR,
    ROLLED_BACK_VAR,
];

/// The first back-off after a crash, and the longest.
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How often the gate asks.
const GATE_POLL: Duration = Duration::from_millis(100);
/// How often a release on probation is asked how its iterations went.
const PROBATION_POLL: Duration = Duration::from_secs(1);

/// Whether this process is a keeper's child.
pub fn is_child() -> bool {
    std::env::var_os(CHILD_VAR).is_some()
}

/// The release this process is, when a keeper started it.
pub fn running_release() -> Option<String> {
    is_child()
        .then(|| std::env::var(RELEASE_VAR).ok())
        .flatten()
}

/// What the keeper needs of the run's configuration.
#[derive(Debug, Clone)]
pub struct Keeper {
    pub config: UpgradeConfig,
    pub releases: Releases,
    /// The operator's binary (this process's own).
    pub installed: PathBuf,
    /// The command line after the program name, given to every release.
    pub args: Vec<OsString>,
    /// Where the child answers `ctl status`.
    pub socket: PathBuf,
}

/// How one start of a release ended.
#[derive(Debug)]
enum End {
    /// The child ended by itself with a status of its own.
    Exited(u8),
    /// It crashed, or failed its gate: why.
    Crashed(String),
    /// The keeper was asked to stop; the child's status.
    Stopped(u8),
}

/// The release running now, until when it is on probation, and what the
/// keeper decided that the next child it starts is to audit.
#[derive(Debug, Clone)]
struct Running {
    release: String,
    probation_until: Option<Instant>,
    unaudited: Vec<(&'static str, String)>,
    /// The release that failed on probation, for the one rolled back to.
    rolled_back: Option<RolledBack>,
    /// When the release before it exited asking for a handover.
    handed_over_at: Option<Instant>,
}

/// Committed and failed iterations, as `ctl status` counts them.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Tally {
    committed: u64,
    failed: u64,
}

impl Tally {
    fn of(status: &StatusReply) -> Tally {
        Tally {
            committed: status.iteration,
            failed: status.outcomes.failed,
        }
    }
}

/// Where a release on probation stands: `None` while it must go on, else
/// whether it is promoted (`Ok`) or failed (`Err` with why). Its failure
/// rate over its own iterations may not exceed the run's before it.
fn probation_verdict(
    before: Tally,
    now: Tally,
    iterations: u64,
    time_up: bool,
) -> Option<Result<(), String>> {
    let committed = now.committed.saturating_sub(before.committed);
    if !time_up || committed < iterations {
        return None;
    }
    let failed = now.failed.saturating_sub(before.failed);
    let rate = |failed: u64, of: u64| {
        if of == 0 {
            0.0
        } else {
            failed as f64 / of as f64
        }
    };
    if rate(failed, committed) > rate(before.failed, before.committed) {
        return Some(Err(format!(
            "{failed} of its {committed} iteration(s) failed, above the run's {} of {} before it",
            before.failed, before.committed
        )));
    }
    Some(Ok(()))
}

impl Running {
    /// Says `detail` on stderr and keeps it for the audit chain.
    fn say(&mut self, action: &'static str, detail: String) {
        eprintln!("agent: keeper: {detail}");
        self.unaudited.push((action, detail));
    }
}

impl Keeper {
    /// Runs releases until one ends by itself or the keeper is stopped;
    /// the exit status of `agent run`.
    pub async fn keep(self) -> u8 {
        let boot = match self.releases.boot() {
            Ok(boot) => boot,
            Err(error) => {
                eprintln!("agent: keeper: cannot read the releases: {error}");
                return exit::FAILED;
            }
        };
        let mut running = Running {
            release: boot.release.clone(),
            probation_until: None,
            unaudited: Vec::new(),
            rolled_back: None,
            handed_over_at: None,
        };
        if let Some(abandoned) = &boot.abandoned {
            running.say(
                "release.abandoned",
                format!(
                    "release {abandoned} was on probation when the keeper last stopped; \
                     booting the permanent release {}",
                    boot.release
                ),
            );
        }
        // When the running release crashed, within the restart window.
        let mut crashes: VecDeque<Instant> = VecDeque::new();
        loop {
            let end = self.run_once(&mut running).await;
            let on_probation = running.probation_until.is_some();
            match end {
                End::Exited(exit::HANDOVER) => {
                    self.hand_over(&mut running);
                    crashes.clear();
                }
                End::Exited(exit::FAILED) if on_probation => {
                    self.roll_back(&mut running, "it escalated");
                    crashes.clear();
                }
                // Refusing its configuration or state is failing on
                // probation; finishing or pausing is not (inconclusive:
                // it stays current, and the next start boots the permanent).
                End::Exited(code) if on_probation && code != exit::OK && code != exit::PAUSED => {
                    self.roll_back(&mut running, &format!("it exited with status {code}"));
                    crashes.clear();
                }
                End::Exited(code) | End::Stopped(code) => return code,
                End::Crashed(why) if on_probation => {
                    self.roll_back(&mut running, &why);
                    crashes.clear();
                }
                End::Crashed(why) => {
                    if let Some(code) = self.after_crash(&mut running, &mut crashes, &why).await {
                        return code;
                    }
                }
            }
        }
    }

    /// The release `current` names now, on probation: what the child that
    /// asked for the handover pointed it at.
    fn hand_over(&self, running: &mut Running) {
        match self.releases.read(Pointer::Current) {
            Ok(Some(next)) if next != running.release => {
                let detail = format!(
                    "handing over from release {} to {next}, on probation for {}",
                    running.release,
                    humantime::format_duration(self.config.probation)
                );
                running.say("release.handover", detail);
                running.release = next;
                running.probation_until = Some(Instant::now() + self.config.probation);
                running.handed_over_at = Some(Instant::now());
            }
            other => {
                let named = other.map_or_else(|e| e.to_string(), |r| r.unwrap_or_default());
                let detail = format!(
                    "a handover was asked for, but `current` names {named}; starting release {} again",
                    running.release
                );
                running.say("release.handover", detail);
            }
        }
    }

    /// The release on probation failed: `current` points back at the
    /// permanent release, which starts at once.
    fn roll_back(&self, running: &mut Running, why: &str) {
        let permanent = match self.releases.read(Pointer::Permanent) {
            Ok(permanent) => permanent.unwrap_or_else(|| INSTALLED.to_string()),
            Err(error) => {
                eprintln!("agent: keeper: {error}; falling back to the installed binary");
                INSTALLED.to_string()
            }
        };
        if let Err(error) = self.releases.point(Pointer::Current, &permanent) {
            eprintln!("agent: keeper: cannot point `current` back: {error}");
        }
        let detail = format!(
            "release {} failed on probation: {why}; rolled back to the permanent release {permanent}",
            running.release
        );
        running.say("release.rolled_back", detail);
        running.rolled_back = Some(RolledBack {
            release: running.release.clone(),
            reason: why.to_string(),
        });
        running.release = permanent;
        running.probation_until = None;
        running.handed_over_at = None;
    }

    /// A crash of a release that is not on probation: restarted after a
    /// back-off, or `Some(status)` to exit with when it keeps crashing (or
    /// a stop came meanwhile).
    async fn after_crash(
        &self,
        running: &mut Running,
        crashes: &mut VecDeque<Instant>,
        why: &str,
    ) -> Option<u8> {
        let now = Instant::now();
        crashes.push_back(now);
        while crashes
            .front()
            .is_some_and(|at| now.duration_since(*at) > self.config.restart_window)
        {
            crashes.pop_front();
        }
        let count = crashes.len() as u32;
        if count > self.config.max_restarts {
            eprintln!(
                "agent: keeper: release {} crashed {count} times within {}: {why}; not restarting it",
                running.release,
                humantime::format_duration(self.config.restart_window)
            );
            return Some(exit::FAILED);
        }
        let delay = backoff(count);
        let detail = format!(
            "release {} crashed: {why}; restarting it in {}",
            running.release,
            humantime::format_duration(delay)
        );
        running.say("release.crashed", detail);
        self.sleep_or_stop(delay).await.then_some(exit::OK)
    }

    /// Starts the running release, gates it and waits for its end; a
    /// release on probation that lives to its end of probation is made
    /// permanent.
    async fn run_once(&self, running: &mut Running) -> End {
        // `current` names what runs: after a child died in the middle of a
        // handover it may name the release that was never started.
        if self
            .releases
            .read(Pointer::Current)
            .ok()
            .flatten()
            .as_deref()
            != Some(running.release.as_str())
            && let Err(error) = self.releases.point(Pointer::Current, &running.release)
        {
            return End::Crashed(format!("cannot point `current` at it: {error}"));
        }
        let mut child = match self.start(running) {
            Ok(child) => child,
            Err(end) => return end,
        };
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return End::Crashed("cannot listen for signals".into());
        };
        let gate = tokio::select! {
            gate = self.gate(&mut child) => gate,
            _ = term.recv() => return stop(&mut child).await,
            _ = int.recv() => return stop(&mut child).await,
        };
        if let Some(end) = gate {
            // It never came up, so it audited nothing: the next child will.
            return end;
        }
        // A child that answers has audited what it was told, and settled
        // the rollback it was told of (at its start, before its control
        // socket opened).
        running.unaudited.clear();
        running.rolled_back = None;
        if let Some(at) = running.handed_over_at.take() {
            eprintln!(
                "agent: keeper: release {} answered {} ms after the handover",
                running.release,
                at.elapsed().as_millis()
            );
        }
        // What the run had committed when the release on probation took
        // over: its own iterations are counted from here.
        let before = match running.probation_until {
            Some(_) => tally(&self.socket).await,
            None => None,
        };
        self.watch(&mut child, running, before, &mut term, &mut int)
            .await
    }

    /// Starts the running release's binary with what the keeper has to tell it.
    fn start(&self, running: &Running) -> Result<Child, End> {
        let binary = self.releases.binary(&running.release, &self.installed);
        let said = serde_json::to_string(&running.unaudited).unwrap_or_default();
        let rolled_back = running
            .rolled_back
            .as_ref()
            .map(|r| serde_json::to_string(r).unwrap_or_default());
        let mut env = vec![
            (CHILD_VAR, "1"),
            (RELEASE_VAR, running.release.as_str()),
            (SAID_VAR, said.as_str()),
        ];
        if running.probation_until.is_some() {
            env.push((PROBATION_VAR, "1"));
        }
        if let Some(rolled_back) = &rolled_back {
            env.push((ROLLED_BACK_VAR, rolled_back.as_str()));
        }
        crate::process::start_attached(&binary, &self.args, &env)
            .map_err(|error| End::Crashed(error.to_string()))
    }

    /// Waits for the end of a release that answered; a release on
    /// probation is asked how its iterations go and promoted, or stopped
    /// as failed.
    async fn watch(
        &self,
        child: &mut Child,
        running: &mut Running,
        before: Option<Tally>,
        term: &mut tokio::signal::unix::Signal,
        int: &mut tokio::signal::unix::Signal,
    ) -> End {
        loop {
            let probation = async {
                match running.probation_until {
                    Some(_) => tokio::time::sleep(PROBATION_POLL).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                status = child.wait() => return ended(status),
                _ = term.recv() => return stop(child).await,
                _ = int.recv() => return stop(child).await,
                () = probation => {
                    let Some(until) = running.probation_until else { continue };
                    let (Some(before), Some(now)) = (before, tally(&self.socket).await) else {
                        // Inconclusive (it does not answer now): hold.
                        continue;
                    };
                    match probation_verdict(before, now, self.config.probation_iterations, Instant::now() >= until) {
                        None => {}
                        Some(Ok(())) => self.promote(running),
                        Some(Err(why)) => {
                            // It stops cleanly; the permanent release takes over.
                            let _ = stop(child).await;
                            return End::Crashed(why);
                        }
                    }
                }
            }
        }
    }

    /// The release lived through its probation: it becomes permanent.
    fn promote(&self, running: &mut Running) {
        running.probation_until = None;
        match self.releases.point(Pointer::Permanent, &running.release) {
            Ok(()) => {
                let detail = format!(
                    "release {} passed its probation and is permanent",
                    running.release
                );
                running.say("release.permanent", detail);
            }
            Err(error) => eprintln!(
                "agent: keeper: cannot make release {} permanent: {error}; it stays current",
                running.release
            ),
        }
    }

    /// Waits until the child answers `ctl status`; `None` once it has, or
    /// how it ended first (a child still silent at `ready_within` is killed
    /// and counts as a crash).
    async fn gate(&self, child: &mut Child) -> Option<End> {
        let deadline = Instant::now() + self.config.ready_within;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(before_ready(ended(Ok(status))));
            }
            if answers(&self.socket).await {
                return None;
            }
            if Instant::now() >= deadline {
                let _ = child.kill().await;
                return Some(End::Crashed(format!(
                    "it did not answer `ctl status` within {}",
                    humantime::format_duration(self.config.ready_within)
                )));
            }
            tokio::time::sleep(GATE_POLL).await;
        }
    }

    /// Sleeps `delay`; `true` when a stop was asked for meanwhile.
    async fn sleep_or_stop(&self, delay: Duration) -> bool {
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tokio::time::sleep(delay).await;
            return false;
        };
        tokio::select! {
            () = tokio::time::sleep(delay) => false,
            _ = term.recv() => true,
            _ = int.recv() => true,
        }
    }
}

/// Writes what the keeper said to this child's start into the audit chain
/// (actor `keeper`); a promotion said while a child ran is written by the
/// next one the keeper starts.
pub async fn audit_what_it_said(
    store: &crate::store::Store,
) -> Result<(), crate::store::StoreError> {
    let Some(said) = std::env::var(SAID_VAR).ok().filter(|s| !s.is_empty()) else {
        return Ok(());
    };
    let decisions: Vec<(String, String)> = match serde_json::from_str(&said) {
        Ok(decisions) => decisions,
        Err(error) => {
            tracing::warn!(%error, "cannot read what the keeper said; not audited");
            return Ok(());
        }
    };
    for (action, detail) in decisions {
        store
            .audit(crate::store::audit::Decision::new(
                "keeper", &action, detail,
            ))
            .await?;
    }
    Ok(())
}

/// The agent's committed and failed iterations, when it answers.
async fn tally(socket: &Path) -> Option<Tally> {
    match client::request(socket, Command::Status).await {
        Ok(Outcome::Ok(Reply::Status(status))) => Some(Tally::of(&status)),
        _ => None,
    }
}

/// Whether the agent on `socket` answers `ctl status`.
async fn answers(socket: &Path) -> bool {
    matches!(
        client::request(socket, Command::Status).await,
        Ok(Outcome::Ok(_))
    )
}

/// Passes the stop on to the child (it checkpoints and exits) and waits.
async fn stop(child: &mut Child) -> End {
    if let Some(pid) = child.id() {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    }
    match child.wait().await {
        Ok(status) => End::Stopped(status.code().map_or(exit::FAILED, clamp)),
        Err(_) => End::Stopped(exit::FAILED),
    }
}

/// Sorts the child's exit: the statuses `agent run` gives are its own
/// ends; a signal or any other status (a panic's 101) is a crash.
fn ended(status: std::io::Result<ExitStatus>) -> End {
    use std::os::unix::process::ExitStatusExt;
    let status = match status {
        Ok(status) => status,
        Err(error) => return End::Crashed(format!("cannot wait for it: {error}")),
    };
    match status.code() {
        Some(code) if own_end(code) => End::Exited(code as u8),
        Some(code) => End::Crashed(format!("it exited with status {code}")),
        None => End::Crashed(match status.signal() {
            Some(signal) => format!(
                "it was killed by {}",
                Signal::try_from(signal).map_or(format!("signal {signal}"), |s| s.to_string())
            ),
            None => "it ended without a status".into(),
        }),
    }
}

/// A release that ends before it answered: a run that finished, paused or
/// was refused its configuration or state ended as it should; one that
/// failed (status 1) could not come up, which is a failed gate.
fn before_ready(end: End) -> End {
    match end {
        End::Exited(code) if code == exit::FAILED => End::Crashed(format!(
            "it exited with status {code} before answering `ctl status`"
        )),
        other => other,
    }
}

/// The statuses `agent run` exits with by its own decision.
fn own_end(code: i32) -> bool {
    [
        exit::OK,
        exit::FAILED,
        exit::USAGE,
        exit::UNAVAILABLE,
        exit::PAUSED,
        exit::HANDOVER,
    ]
    .iter()
    .any(|own| i32::from(*own) == code)
}

fn clamp(code: i32) -> u8 {
    code.clamp(0, 255) as u8
}

/// The delay before restart `n` (1-based): doubling from a second, at most
/// half a minute.
fn backoff(n: u32) -> Duration {
    BACKOFF_FIRST
        .saturating_mul(1 << n.saturating_sub(1).min(16))
        .min(BACKOFF_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn the_childs_own_statuses_end_the_keeper_and_anything_else_is_a_crash() {
        let exited = |code: i32| ended(Ok(ExitStatus::from_raw(code << 8)));
        for code in [0, 1, 2, 3, 4] {
            assert!(matches!(exited(code), End::Exited(c) if i32::from(c) == code));
        }
        assert!(
            matches!(before_ready(exited(1)), End::Crashed(why) if why.contains("status 1 before answering"))
        );
        assert!(matches!(before_ready(exited(4)), End::Exited(4)));
        let panic = exited(101);
        assert!(matches!(&panic, End::Crashed(why) if why == "it exited with status 101"));
        let killed = ended(Ok(ExitStatus::from_raw(9)));
        assert!(
            matches!(&killed, End::Crashed(why) if why == "it was killed by SIGKILL"),
            "{killed:?}"
        );
    }

    #[test]
    fn probation_ends_after_its_time_and_iterations_and_fails_above_the_runs_failure_rate() {
        let tally = |committed, failed| Tally { committed, failed };
        let before = tally(10, 1);
        // Neither the time nor the iterations alone end it.
        assert_eq!(probation_verdict(before, tally(13, 1), 3, false), None);
        assert_eq!(probation_verdict(before, tally(12, 1), 3, true), None);
        assert_eq!(
            probation_verdict(before, tally(13, 1), 3, true),
            Some(Ok(()))
        );
        // 1 in 3 is above 1 in 10.
        let failed = probation_verdict(before, tally(13, 2), 3, true);
        assert!(
            matches!(&failed, Some(Err(why)) if why == "1 of its 3 iteration(s) failed, above the run's 1 of 10 before it"),
            "{failed:?}"
        );
        // With no iterations asked for, time alone promotes.
        assert_eq!(probation_verdict(before, before, 0, true), Some(Ok(())));
    }

    #[test]
    fn restarts_back_off_up_to_half_a_minute() {
        let delays: Vec<u64> = (1..=7).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30]);
    }
}
