//! Crash windows, hit on purpose: the real binary, built with
//! `--features failpoints`, aborts at each named window (as a `kill -9`
//! would end it) and is started again. After each: the committed count never
//! went back, the history has no gap, the agent branch holds each accepted
//! iteration exactly once and the worktree is clean at the committed head,
//! the store opens, and no process of the killed run is left.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::harness::{Daemon, UNCONFINED, fast_config, history, poll_until, text, tiny_crate};

const WAIT: Duration = Duration::from_secs(120);

/// One window: its failpoint, what reaches it, and how the run starts.
struct Window {
    failpoint: &'static str,
    /// `fail` syntax: `return` aborts at the first pass, `2*off->return` at the third.
    action: &'static str,
    /// Extra flags of the crashing start.
    flags: &'static [&'static str],
    /// Stop the daemon to reach the window (it lies on the shutdown path).
    by_stop: bool,
    /// The workspace is a plain directory, imported at the first start.
    import: bool,
    /// Replacements in the configuration.
    config: &'static [(&'static str, &'static str)],
}

const WINDOWS: &[Window] = &[
    // Between choosing the best of three candidates and committing it.
    Window {
        failpoint: "candidates.before_commit",
        action: "2*off->return",
        flags: &[],
        by_stop: false,
        import: false,
        config: &[("candidates = 1", "candidates = 3")],
    },
    Window {
        failpoint: "iteration.before_store_commit",
        action: "2*off->return",
        flags: &[],
        by_stop: false,
        import: false,
        config: &[],
    },
    Window {
        failpoint: "git.commit",
        action: "2*off->return",
        flags: &[],
        by_stop: false,
        import: false,
        config: &[],
    },
    Window {
        failpoint: "store.before_flush",
        action: "2*off->return",
        flags: &[],
        by_stop: false,
        import: false,
        config: &[],
    },
    Window {
        failpoint: "worktree.reset",
        action: "2*off->return",
        flags: &[],
        by_stop: false,
        import: false,
        config: &[],
    },
    Window {
        failpoint: "worktree.import",
        action: "return",
        flags: &[],
        by_stop: false,
        import: true,
        config: &[],
    },
    Window {
        failpoint: "approval.pending",
        action: "return",
        flags: &["--mode", "supervised"],
        by_stop: false,
        import: false,
        config: &[],
    },
    Window {
        failpoint: "validation.running",
        action: "2*off->return",
        flags: &[],
        by_stop: false,
        import: false,
        config: &[],
    },
    Window {
        failpoint: "shutdown.drain",
        action: "return",
        flags: &[],
        by_stop: true,
        import: false,
        config: &[],
    },
];

/// A crate in a directory that is not a repository (it gets imported).
fn plain_crate(dir: &Path) -> PathBuf {
    let root = dir.join("plain");
    std::fs::create_dir_all(root.join("src")).unwrap();
    std::fs::write(
        root.join("Cargo.toml"),
        "[package]\nname = \"plain\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[workspace]\n",
    )
    .unwrap();
    std::fs::write(root.join("src/lib.rs"), "pub fn one() -> i32 {\n    1\n}\n").unwrap();
    root
}

/// Pids written into `dir` by the validation suite and the stand-in claude.
fn recorded_pids(dirs: &[&Path]) -> Vec<i32> {
    let mut pids = Vec::new();
    for dir in dirs {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        }
    }
    pids
}

fn committed_in(history: &[Value]) -> u64 {
    history.len() as u64
}

/// The assertions that must hold after every crash and restart.
fn assert_nothing_lost(window: &str, state: &Path, committed_before_crash: u64) {
    let history = history(state);
    let numbers: Vec<u64> = history
        .iter()
        .map(|h| h["iteration"].as_u64().unwrap())
        .collect();
    assert_eq!(
        numbers,
        (1..=numbers.len() as u64).collect::<Vec<_>>(),
        "{window}: the history has a gap"
    );
    assert!(
        committed_in(&history) >= committed_before_crash,
        "{window}: the committed count went back from {committed_before_crash} to {}",
        history.len()
    );
    let workspace = agent::workspace::Workspace {
        path: state.join("worktree"),
    };
    let on_branch: Vec<u64> = workspace
        .iteration_commits()
        .unwrap()
        .into_iter()
        .map(|(iteration, _)| iteration)
        .collect();
    let accepted: Vec<(u64, String)> = history
        .iter()
        .filter(|h| h["outcome"] == "accepted")
        .map(|h| {
            (
                h["iteration"].as_u64().unwrap(),
                h["commit"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut expected: Vec<u64> = accepted.iter().map(|(i, _)| *i).collect();
    expected.reverse();
    assert_eq!(
        on_branch, expected,
        "{window}: the branch must hold each accepted iteration exactly once"
    );
    if let Some((_, commit)) = accepted.last() {
        assert_eq!(&workspace.head().unwrap(), commit, "{window}: head");
    }
    assert_eq!(
        workspace.changed_files().unwrap(),
        Vec::<String>::new(),
        "{window}: the worktree is not clean"
    );
}

#[test]
#[cfg_attr(
    not(feature = "failpoints"),
    ignore = "needs the crash windows compiled in: cargo test --features failpoints"
)]
fn every_named_crash_window_loses_nothing_and_leaves_nothing_running() {
    for window in WINDOWS {
        crash_at(window);
    }
}

fn crash_at(window: &Window) {
    let name = window.failpoint;
    let dir = tempfile::tempdir().unwrap();
    let pid_dir = dir.path().join("pids");
    std::fs::create_dir(&pid_dir).unwrap();
    // A validation suite that leaves a child of its own running (as a test
    // binary may): only a kill of its group, or the restart's clean-up after
    // a crash, ends it. Every pid is recorded.
    let suite = dir.path().join("suite.sh");
    std::fs::write(
        &suite,
        format!(
            "sleep 60 >/dev/null 2>&1 &\necho $! >> {pids}/suite\necho $$ >> {pids}/suite\n",
            pids = pid_dir.display()
        ),
    )
    .unwrap();
    let validation = format!("command = \"sh {}\"", suite.display());
    let mut replacements = vec![("command = \"true\"", validation.as_str()), UNCONFINED];
    replacements.extend_from_slice(window.config);
    let config = fast_config(dir.path(), &replacements);
    let workspace = if window.import {
        plain_crate(dir.path())
    } else {
        tiny_crate(dir.path())
    };
    let state = dir.path().join("state");
    let mut args = vec![
        "--config".to_string(),
        config.display().to_string(),
        "--workspace".into(),
        workspace.display().to_string(),
    ];
    let base = args.clone();
    args.extend(window.flags.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let failpoint = format!("{name}={}", window.action);
    let env = [
        ("FAKE_CLAUDE_MODE", "edit"),
        ("FAKE_CLAUDE_PID_DIR", pid_dir.to_str().unwrap()),
    ];
    let mut crashing = env.to_vec();
    crashing.push(("FAILPOINTS", failpoint.as_str()));

    let mut daemon = Daemon::start(&state, &args, &crashing);
    if window.by_stop {
        daemon.wait_status(&format!("{name}: two iterations"), WAIT, |s| {
            Daemon::committed(s) >= 2
        });
        // The daemon aborts on the way down; the request may see it go.
        let _ = daemon.ctl(&["stop"]);
    }
    let ended = daemon.wait_exit(WAIT);
    assert!(
        !ended.success(),
        "{name}: the daemon was meant to abort at the window, it exited {ended}:\n{}",
        daemon.logs()
    );
    assert!(
        text(&std::fs::read(&daemon.stderr).unwrap())
            .contains(&format!("failpoint {name} reached")),
        "{name}: the window was not the reason of the crash:\n{}",
        daemon.logs()
    );
    let before = if state.join("store").exists() {
        committed_in(&history(&state))
    } else {
        0
    };

    // Restarted without the failpoint (and without supervision, so that no
    // operator is needed): the run goes on.
    let base: Vec<&str> = base.iter().map(String::as_str).collect();
    let mut daemon = Daemon::start(&state, &base, &env);
    daemon.wait_status(
        &format!("{name}: an iteration after the restart"),
        WAIT,
        |s| Daemon::committed(s) > before,
    );
    assert!(daemon.ctl(&["stop"]).status.success());
    assert!(
        daemon.wait_exit(WAIT).success(),
        "{name}: {}",
        daemon.logs()
    );
    assert_nothing_lost(name, &state, before);
    let left: Vec<i32> = poll_until(
        &format!("{name}: every process of both runs to end"),
        Duration::from_secs(10),
        || {
            let left: Vec<i32> = recorded_pids(&[&pid_dir])
                .into_iter()
                .filter(|pid| crate::harness::alive(*pid))
                .collect();
            left.is_empty().then_some(left)
        },
    );
    assert!(left.is_empty());
}
