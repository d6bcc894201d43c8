//! Self-upgrade end to end, on a copy of this repository run by the real
//! binary as the keeper: the stand-in `claude` edits the agent's own source,
//! one change per iteration, and the pipeline builds each change that passes
//! validation as a candidate release (real `cargo build`) and judges it as an
//! agent against the running release on an example crate.
//! - a harmless change (a log line) is built, judged not worse, handed over
//!   to, and made permanent; `status` names its commit;
//! - a change that does not compile is refused by validation: no release;
//! - a change that makes the agent worse at its job (its offline backend no
//!   longer changes anything) is refused by `agent-fitness` with both scores;
//! - a change that builds and judges well but makes the agent exit at start
//!   under a keeper fails its gate: the keeper restarts the permanent
//!   release, which reverts the commit with a revert commit and marks its
//!   variant `upgrade-failed`; the run goes on to its end with every
//!   iteration committed once.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::{Daemon, agent_bin, fast_config, history, worktree_log};

const WAIT: Duration = Duration::from_secs(900);

/// A copy of this repository's tracked files, committed in a repository of
/// its own.
fn copy_of_this_repository(to: &Path) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR"));
    let listed = Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(source)
        .output()
        .unwrap();
    assert!(listed.status.success());
    let root = to.join("agent-source");
    for file in listed.stdout.split(|b| *b == 0).filter(|f| !f.is_empty()) {
        let file = Path::new(std::str::from_utf8(file).unwrap());
        let (from, into) = (source.join(file), root.join(file));
        if !from.is_file() {
            continue;
        }
        std::fs::create_dir_all(into.parent().unwrap()).unwrap();
        std::fs::copy(&from, &into).unwrap();
    }
    let git = |args: &[&str]| {
        let done = Command::new("git")
            .args(["-c", "user.name=test", "-c", "user.email=test@localhost"])
            .args(args)
            .current_dir(&root)
            .output()
            .unwrap();
        assert!(
            done.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&done.stderr)
        );
    };
    git(&["init", "--quiet"]);
    git(&["add", "--all"]);
    git(&["commit", "--quiet", "-m", "the agent's source"]);
    root
}

/// A target directory for the candidates holding this build's compiled
/// dependencies as hard links, so that only the agent itself is compiled
/// (about 45 s instead of nearly three minutes on two cores). Without hard
/// links (another filesystem) it starts empty and the first build is cold.
fn seeded_target(dir: &Path) -> PathBuf {
    let target = dir.join("candidates-target");
    let built = agent_bin().parent().unwrap().to_path_buf();
    let debug = target.join("debug");
    std::fs::create_dir_all(&debug).unwrap();
    for part in ["deps", "build", ".fingerprint"] {
        let linked = Command::new("cp")
            .arg("-al")
            .arg(built.join(part))
            .arg(&debug)
            .status()
            .unwrap();
        if !linked.success() {
            eprintln!("cannot link {part} into the candidates' target; the first build is cold");
        }
    }
    target
}

fn scripts(dir: &Path) -> PathBuf {
    let scripts = dir.join("scripts");
    std::fs::create_dir_all(&scripts).unwrap();
    let write = |name: &str, text: &str| std::fs::write(scripts.join(name), text).unwrap();
    // 1: harmless, a log line.
    write(
        "1-log-line.sh",
        "sed -i 's/agent: handing over to the current release, state checkpointed/agent: handing over to the next release, state checkpointed/' src/daemon/mod.rs\n\
         grep -q 'handing over to the next release' src/daemon/mod.rs\n",
    );
    // 2: parses, but does not compile.
    write(
        "2-broken.sh",
        "printf '\\nfn broken() -> u32 {\\n    \"not a number\"\\n}\\n' >> src/lib.rs\n",
    );
    // 3: the offline backend runs `cargo --version` instead of its fix: it
    // never changes anything.
    write(
        "3-worse.sh",
        "sed -i 's/            args: line.argv(),/            args: vec![\"--version\".into()],/' src/cognition/offline.rs\n\
         grep -q 'args: vec!\\[\"--version\".into()\\]' src/cognition/offline.rs\n",
    );
    // 4: exits at start when a keeper runs it, and only then.
    write(
        "4-sick.sh",
        "sed -i 's/^fn main() -> std::process::ExitCode {$/&\\n    if std::env::var_os(\"AGENT_KEEPER_CHILD\").is_some() {\\n        eprintln!(\"agent: this release cannot start\");\\n        std::process::exit(1);\\n    }/' src/main.rs\n\
         grep -q 'this release cannot start' src/main.rs\n",
    );
    scripts
}

#[test]
fn an_accepted_change_to_its_own_source_becomes_the_running_agent_and_a_sick_one_is_rolled_back() {
    let dir = tempfile::tempdir().unwrap();
    let source = copy_of_this_repository(dir.path());
    let target = seeded_target(dir.path());
    let scripts = scripts(dir.path());
    let validation = format!(
        "command = \"cargo build --offline --quiet --bin agent --target-dir {}\"",
        target.display()
    );
    let suite = format!(
        "suite = [\"{}\"]",
        source.join("examples/unused-bits").display()
    );
    let config = fast_config(
        dir.path(),
        &[
            (
                "enabled = false\n# A started release",
                "enabled = true\n# A started release",
            ),
            ("command = \"true\"", &validation),
            ("repair_turns = 1", "repair_turns = 0"),
            ("probation = \"10m\"", "probation = \"1s\""),
            ("probation_iterations = 3", "probation_iterations = 1"),
            ("profile = \"release\"", "profile = \"dev\""),
            (
                "build_timeout = \"30m\"",
                &format!(
                    "build_timeout = \"10m\"\ntarget_dir = \"{}\"",
                    target.display()
                ),
            ),
            ("suite = []", &suite),
            ("iterations = 4\nkeep_if", "iterations = 1\nkeep_if"),
        ],
    );
    let state = dir.path().join("state");
    let started = Instant::now();
    let mut daemon = Daemon::bounded(
        &state,
        &config,
        &source,
        5,
        &[
            ("FAKE_CLAUDE_MODE", "script"),
            ("FAKE_CLAUDE_PLAN_MODE", "success"),
            ("FAKE_CLAUDE_SCRIPTS", scripts.to_str().unwrap()),
        ],
    );
    // While the first candidate runs, `status` names it and its commit.
    let upgraded = daemon.wait_status("the first candidate to run", WAIT, |s| {
        assert_ne!(s["run_state"], "paused", "{s}");
        s["release"]["name"]
            .as_str()
            .is_some_and(|n| n != "installed")
    });
    let status = daemon.wait_exit(WAIT);
    let logs = daemon.logs();
    assert!(status.success(), "{logs}");
    eprintln!("the run took {:.0}s", started.elapsed().as_secs_f64());

    // Every iteration committed once, in order.
    let records = history(&state);
    let numbers: Vec<u64> = records
        .iter()
        .map(|r| r["iteration"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [1, 2, 3, 4, 5], "{logs}");
    let outcome = |n: usize| records[n - 1]["outcome"].as_str().unwrap().to_string();
    let summary = |n: usize| records[n - 1]["summary"].as_str().unwrap().to_string();
    assert_eq!(outcome(1), "accepted", "{}", summary(1));
    assert_eq!(outcome(2), "rejected", "{}", summary(2));
    assert!(summary(2).contains("validation"), "{}", summary(2));
    assert_eq!(outcome(3), "rejected", "{}", summary(3));
    assert!(summary(3).contains("agent-fitness"), "{}", summary(3));
    assert_eq!(outcome(4), "accepted", "{}", summary(4));

    let store = agent::store::Store::open(&state).unwrap();
    let attempts = store.upgrades().unwrap();
    let attempt = |n: u64| attempts.iter().find(|a| a.iteration == n);
    // 1: kept, permanent, named by status with its commit.
    let first = attempt(1).expect("an attempt for iteration 1");
    assert_eq!(first.outcome, "kept", "{first:?}");
    let release = first.release.clone();
    assert_eq!(upgraded["release"]["name"], release.as_str(), "{upgraded}");
    assert_eq!(
        upgraded["release"]["commit"],
        first.commit.as_str(),
        "{upgraded}"
    );
    assert_eq!(records[0]["commit"], first.commit.as_str());
    let evaluation = first.evaluation.as_ref().expect("its evaluation");
    assert!(evaluation.kept);
    // 2: refused before any build.
    assert!(attempt(2).is_none(), "{attempts:?}");
    // 3: worse at its job, both scores said.
    let worse = attempt(3).expect("an attempt for iteration 3");
    assert_eq!(worse.outcome, "refused");
    let scores = worse.evaluation.as_ref().expect("its evaluation");
    assert!(
        !scores.kept && scores.candidate.best > scores.running.best,
        "{scores:?}"
    );
    assert!(
        worse
            .reason
            .contains(&format!("candidate best fitness {}", scores.candidate.best))
            && worse
                .reason
                .contains(&format!("running {}", scores.running.best)),
        "{}",
        worse.reason
    );
    // 4: its gate failed; reverted, marked.
    let sick = attempt(4).expect("an attempt for iteration 4");
    assert_eq!(sick.outcome, "upgrade-failed", "{sick:?}");
    assert!(sick.reason.contains("before answering"), "{}", sick.reason);
    let variant = store.variant(4).unwrap().unwrap();
    assert_eq!(variant.outcome.to_string(), "upgrade-failed");
    drop(store);

    // Only the releases kept were staged; the permanent one runs.
    let read =
        |pointer: &str| std::fs::read_to_string(state.join("releases").join(pointer)).unwrap();
    assert_eq!(read("permanent").trim(), release);
    assert_eq!(read("current").trim(), release);
    let staged: Vec<String> = std::fs::read_dir(state.join("releases"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("agent").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(staged.len(), 2, "{staged:?}");
    assert!(staged.contains(&release) && staged.contains(&sick.release));

    // The branch: the commit of iteration 4, then its revert; nothing rewritten.
    let log = worktree_log(&state);
    let revert = log
        .iter()
        .position(|m| m.starts_with("agent: revert iteration 4: upgrade failed"))
        .unwrap_or_else(|| panic!("no revert commit: {log:#?}"));
    let reverted = log
        .iter()
        .position(|m| m.starts_with("agent: iteration 4:"))
        .unwrap();
    assert!(revert < reverted, "the revert comes after: {log:#?}");
    let first_message = log
        .iter()
        .find(|m| m.starts_with("agent: iteration 1:"))
        .unwrap();
    assert!(
        first_message.contains("Agent evaluation: candidate best fitness"),
        "{first_message}"
    );
    assert!(
        first_message.contains("Candidate build: "),
        "{first_message}"
    );
    let main = std::fs::read_to_string(state.join("worktree/src/main.rs")).unwrap();
    assert!(
        !main.contains("this release cannot start"),
        "the sick change is reverted in the worktree"
    );

    // What the keeper said, and when.
    let stderr = std::fs::read_to_string(&daemon.stderr).unwrap();
    for said in [
        format!("handing over from release installed to {release}"),
        format!("release {release} passed its probation and is permanent"),
        format!(
            "release {} failed on probation: it exited with status 1 before answering",
            sick.release
        ),
        format!("rolled back to the permanent release {release}"),
        format!("release {release} answered "),
    ] {
        assert!(stderr.contains(&said), "no {said:?} in {logs}");
    }
    figures(&stderr);
}

/// Prints the figures from the log: build, evaluation, and the handover
/// from the old release's exit to the new one's first answer.
fn figures(stderr: &str) {
    let figure = |l: &&str| {
        [
            "candidate release built",
            "agent evaluation:",
            "after the handover",
        ]
        .iter()
        .any(|f| l.contains(f))
    };
    for line in stderr.lines().filter(figure) {
        eprintln!("figure: {line}");
    }
}
