//! Learning that measurably pays, through the real binary: the research
//! cache answers a repeated query without calling the backend (and calls it
//! again once the entry expired), a real third-party MCP server's tools are
//! discovered and only the validated one is registered, and `agent
//! experiment` measures learning on against learning off on example crates.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::harness::{Daemon, fast_config, json_of, poll_until, send, tiny_crate};

const WAIT: Duration = Duration::from_secs(120);

/// The experiment's suite, in the order it runs (what is learned on one
/// carries into the next).
const EXAMPLES: [&str; 5] = [
    "unused-bits",
    "style-lints",
    "test-warnings",
    "mixed-bag",
    "complexity-perf",
];

/// Commits every change of `workspace` with git, as its user would.
fn commit_all(workspace: &Path, message: &str) {
    for args in [
        vec!["add", "-A"],
        vec![
            "-c",
            "user.name=test",
            "-c",
            "user.email=test@localhost",
            "commit",
            "-qm",
            message,
        ],
    ] {
        let status = std::process::Command::new("git")
            .args(&args)
            .current_dir(workspace)
            .status()
            .unwrap();
        assert!(status.success(), "git {args:?}");
    }
}

/// A crate whose `src/lib.rs` is `lib_rs`, committed, and a configuration
/// that runs the offline backend on it with the real checks (`cargo test`,
/// the warning count); `extra` replaces more of the configuration.
fn offline_crate(dir: &Path, lib_rs: &str, extra: &[(&str, &str)]) -> (PathBuf, PathBuf) {
    let mut replacements = vec![
        ("backend = \"claude-cli\"", "backend = \"offline\""),
        ("command = \"true\"", "command = \"cargo test --quiet\""),
        ("fitness = \"echo 1\"", "fitness = \"cargo-warnings\""),
    ];
    replacements.extend_from_slice(extra);
    let config = fast_config(dir, &replacements);
    let workspace = tiny_crate(dir);
    std::fs::write(workspace.join("src/lib.rs"), lib_rs).unwrap();
    commit_all(&workspace, "the crate under test");
    (config, workspace)
}

/// The stand-in's calls whose prompt names `topic`.
fn calls_about(log: &Path, topic: &str) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(topic))
        .count()
}

#[test]
fn a_repeated_research_query_is_a_cache_hit_and_an_expired_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let config = fast_config(dir.path(), &[("cache_ttl = \"1h\"", "cache_ttl = \"3s\"")]);
    let workspace = tiny_crate(dir.path());
    std::fs::write(
        workspace.join("README.md"),
        "# Tiny\n\nThe frobnicator computes the median of samples.\n\nNothing else here.\n",
    )
    .unwrap();
    commit_all(&workspace, "readme");
    let log = dir.path().join("claude.log");
    let state = dir.path().join("state");
    let mut daemon = Daemon::unbounded(
        &state,
        &config,
        &workspace,
        &[("FAKE_CLAUDE_LOG", log.to_str().unwrap())],
    );
    daemon.wait_status("the daemon answers", WAIT, |_| true);
    let topic = "Frobnicator median: how is it computed?";
    let first = send(
        &daemon,
        "researcher",
        "research",
        &[&format!("topic={topic}")],
    );
    assert_eq!(first["from_cache"], false);
    assert!(
        first["notes"]
            .as_str()
            .unwrap()
            .contains("[README.md] The frobnicator computes"),
        "{first}"
    );
    let sources: Vec<&str> = first["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert!(sources.contains(&"README.md"), "{sources:?}");
    assert!(
        sources.iter().any(|s| s.starts_with("claude-cli")),
        "{sources:?}"
    );
    let after_miss = calls_about(&log, "Frobnicator median");
    assert_eq!(after_miss, 1, "one research prompt on the topic");

    // The same query, written differently: a hit, no call.
    let again = send(
        &daemon,
        "researcher",
        "research",
        &["topic=  frobnicator MEDIAN how is it computed "],
    );
    assert_eq!(again["from_cache"], true, "{again}");
    assert_eq!(again["notes"], first["notes"]);
    assert_eq!(again["input_tokens"], 0);
    assert_eq!(
        calls_about(&log, "Frobnicator median"),
        after_miss,
        "a hit calls no backend"
    );
    let cache = send(&daemon, "researcher", "cache", &[]);
    assert!(cache["hits"].as_u64().unwrap() >= 1, "{cache}");
    assert!(cache["entries"].as_u64().unwrap() >= 1, "{cache}");
    assert!(cache["bytes"].as_u64().unwrap() > 0, "{cache}");

    // Once the entry is older than the TTL, the query is filled again.
    let expired = poll_until("the entry to expire", WAIT, || {
        let reply = send(
            &daemon,
            "researcher",
            "research",
            &[&format!("topic={topic}")],
        );
        (reply["from_cache"] == false).then_some(reply)
    });
    assert_eq!(expired["from_cache"], false);
    assert_eq!(calls_about(&log, "Frobnicator median"), after_miss + 1);
    assert!(daemon.ctl(&["stop"]).status.success());
    daemon.wait_exit(WAIT);
}

/// The third-party MCP server `mcp-server-time` (PyPI), which `.ci/run`
/// installs under `target/mcp-time`.
fn mcp_server_time() -> Option<PathBuf> {
    let installed =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("target/mcp-time/bin/mcp-server-time");
    if installed.exists() {
        return Some(installed);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must install mcp-server-time at {} (see .ci/run)",
        installed.display()
    );
    eprintln!(
        "skipped: mcp-server-time is not installed at {}",
        installed.display()
    );
    None
}

#[test]
fn a_third_party_mcp_servers_tools_are_registered_only_when_their_validation_succeeds() {
    let Some(server) = mcp_server_time() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = fast_config(dir.path(), &[]);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "\n[[mcp_servers]]\nname = \"time\"\ncommand = [\"{}\"]\ntimeout = \"60s\"\n\
         probes = {{ convert_time = {{ source_timezone = \"UTC\", time = \"12:00\", target_timezone = \"Asia/Tokyo\" }}, \
         get_current_time = {{ timezone = \"Invalid/Zone\" }} }}\n",
        server.display()
    ));
    std::fs::write(&config, text).unwrap();
    let workspace = tiny_crate(dir.path());
    let state = dir.path().join("state");
    let mut daemon = Daemon::unbounded(&state, &config, &workspace, &[]);
    daemon.wait_status("the daemon answers", WAIT, |_| true);
    let discovered = poll_until("the time server's tools", WAIT, || {
        let reply = send(&daemon, "executor", "capabilities", &[]);
        let tools = reply["discovered"].as_array().cloned().unwrap_or_default();
        (tools.len() >= 2).then_some(tools)
    });
    let tool = |name: &str| {
        discovered
            .iter()
            .find(|t| t["tool"] == name)
            .unwrap_or_else(|| panic!("{name} was not listed: {discovered:?}"))
            .clone()
    };
    let convert = tool("convert_time");
    assert_eq!(convert["server"], "time");
    assert_eq!(convert["registered"], true, "{convert}");
    assert!(
        convert["detail"].as_str().unwrap().contains("+9.0h"),
        "{convert}"
    );
    let current = tool("get_current_time");
    assert_eq!(current["registered"], false, "{current}");
    assert!(
        current["detail"]
            .as_str()
            .unwrap()
            .contains("Invalid timezone"),
        "{current}"
    );
    assert!(daemon.ctl(&["stop"]).status.success());
    daemon.wait_exit(WAIT);

    // The registry is kept in the store.
    let store = agent::store::Store::open(&state).unwrap();
    let kept = store.tools().unwrap();
    assert!(
        kept.iter()
            .any(|t| t.tool == "convert_time" && t.registered),
        "{kept:?}"
    );
    assert!(
        kept.iter()
            .any(|t| t.tool == "get_current_time" && !t.registered),
        "{kept:?}"
    );
}

/// `agent experiment` in a reduced form (the five example crates, one seed,
/// five iterations per run): both arms get the same budget and the same
/// capabilities; learning on, with what it learned on the earlier crates
/// carried into the later ones, ends no worse than the uniform draw — a
/// lower total best fitness, or the same reached in no more iterations.
#[test]
fn the_experiment_measures_learning_on_against_learning_off() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(crate::harness::agent_bin())
        .args([
            "experiment",
            "--seeds",
            "1",
            "--iterations",
            "5",
            "--json",
            "--out",
        ])
        .arg(out.path())
        .args(EXAMPLES.iter().flat_map(|name| {
            [
                "--workspace".to_string(),
                root.join("examples").join(name).display().to_string(),
            ]
        }))
        .output()
        .unwrap();
    let report = json_of(&output);
    eprintln!("{report:#}");
    let rows = report["workspaces"].as_array().unwrap();
    assert_eq!(rows.len(), EXAMPLES.len());
    let total = |arm: &str, field: &str| -> f64 {
        rows.iter().map(|r| r[arm][field].as_f64().unwrap()).sum()
    };
    for row in rows {
        assert_eq!(row["failed"], serde_json::json!([]), "{row}");
        for arm in ["learning_on", "learning_off"] {
            assert_eq!(row[arm]["runs"], 1, "{row}");
            let start = row[arm]["start_fitness_mean"].as_f64().unwrap();
            let best = row[arm]["best_fitness_mean"].as_f64().unwrap();
            assert!(start > 0.0 && best <= start, "{row}");
        }
        // Same workspace, same measure: both arms start from the same fitness.
        assert_eq!(
            row["learning_on"]["start_fitness_mean"],
            row["learning_off"]["start_fitness_mean"]
        );
    }
    let (on, off) = (
        total("learning_on", "best_fitness_mean"),
        total("learning_off", "best_fitness_mean"),
    );
    assert!(
        on < off
            || (on == off
                && total("learning_on", "iterations_to_best_mean")
                    <= total("learning_off", "iterations_to_best_mean")),
        "learning on ({on}) is worse than learning off ({off}): {report}"
    );
    // The runs' logs are kept under --out, one directory per run.
    assert_eq!(
        std::fs::read_dir(out.path()).unwrap().count(),
        2 * EXAMPLES.len()
    );
}

/// What the workspace shows reaches the learner: an offline run on a crate
/// with warnings and a failing test records, with its experience, the
/// warning codes (test code's marked `@tests`) and the failing test; the
/// learner lists it.
#[test]
fn an_experience_carries_the_situation_the_workspace_was_in() {
    let dir = tempfile::tempdir().unwrap();
    let (config, workspace) = offline_crate(
        dir.path(),
        "use std::collections::HashMap;\n\npub fn add(a: i32, b: i32) -> i32 {\n    a + b\n}\n\n\
         #[cfg(test)]\nmod tests {\n    #[test]\n    fn adds_wrong() {\n        let mut x = 1;\n        x += 1;\n        assert_eq!(super::add(1, 2), x);\n    }\n}\n",
        &[("failing_base = \"pause\"", "failing_base = \"proceed\"")],
    );
    let state = dir.path().join("state");
    let mut daemon = Daemon::bounded(&state, &config, &workspace, 1, &[]);
    let status = daemon.wait_exit(Duration::from_secs(300));
    assert!(status.success(), "{}", daemon.logs());
    let store = agent::store::Store::open(&state).unwrap();
    let experiences = store.experiences(10).unwrap();
    assert_eq!(experiences.len(), 1, "{experiences:?}");
    let signals = &experiences[0].signals;
    assert_eq!(
        signals.warnings.get("unused_imports"),
        Some(&1),
        "{signals:?}"
    );
    assert_eq!(signals.failing_tests, ["tests::adds_wrong"], "{signals:?}");
    assert!(
        signals.terms().contains(&"family:rustc-lib".to_string()),
        "{:?}",
        signals.terms()
    );
}

/// No spinning: on a crate whose only warning no local command removes
/// (`dead_code`), the run tries each capability once, then pauses with
/// "nothing left to try" and the warning that remains, instead of cycling
/// through commands that will do nothing again.
#[test]
fn a_run_with_nothing_left_to_try_pauses_instead_of_cycling() {
    let dir = tempfile::tempdir().unwrap();
    let (config, workspace) = offline_crate(
        dir.path(),
        "pub fn add(a: i32, b: i32) -> i32 {\n    a + b\n}\n\nfn unused() -> i32 {\n    1\n}\n",
        &[],
    );
    let state = dir.path().join("state");
    let mut daemon = Daemon::unbounded(&state, &config, &workspace, &[]);
    let status = daemon.wait_status("the run to pause", Duration::from_secs(300), |s| {
        s["run_state"] == "paused"
    });
    let reason = status["pause_reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("nothing left to try") && reason.contains("dead_code ×1"),
        "{status}"
    );
    let capabilities = send(&daemon, "executor", "capabilities", &[])["capabilities"]
        .as_array()
        .unwrap()
        .len() as u64;
    assert_eq!(
        Daemon::committed(&status),
        capabilities,
        "each capability once, then the pause: {status}"
    );
    assert!(daemon.ctl(&["stop"]).status.success());
    daemon.wait_exit(WAIT);
}
