//! Bad configuration is refused before anything starts: exit status 2 and one
//! line naming the file, the line and column, and what was expected.

use std::path::Path;
use std::process::Command;

use crate::harness::{actors_config, agent_bin, text};

const AGENT_TOML: &str = agent::config::DEFAULT_AGENT_TOML;
const ACTORS_TOML: &str = agent::config::DEFAULT_ACTORS_TOML;

/// Runs `agent config check` on the given texts; returns (status, stderr).
fn check(agent_toml: &str, actors_toml: &str) -> (i32, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("agent.toml"), agent_toml).unwrap();
    std::fs::write(dir.path().join("actors.toml"), actors_toml).unwrap();
    let output = Command::new(agent_bin())
        .args(["config", "check", "--config"])
        .arg(dir.path().join("agent.toml"))
        .arg("--actors")
        .arg(dir.path().join("actors.toml"))
        .output()
        .unwrap();
    (output.status.code().unwrap(), text(&output.stderr), dir)
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).unwrap() + 1
}

fn assert_refused(stderr: &str, file: &str, line: Option<usize>, expected: &str) {
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("RUST_BACKTRACE"), "{stderr}");
    assert_eq!(
        stderr.trim().lines().count(),
        1,
        "one line expected: {stderr}"
    );
    assert!(stderr.contains(file), "names the file {file}: {stderr}");
    if let Some(line) = line {
        assert!(
            stderr.contains(&format!("{file}:{line}:")),
            "names line {line}: {stderr}"
        );
    }
    assert!(stderr.contains(expected), "says {expected:?}: {stderr}");
}

#[test]
fn the_shipped_files_are_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = Command::new(agent_bin())
        .current_dir(root)
        .args(["config", "check"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(text(&output.stdout).starts_with("ok: config/agent.toml and actors.toml are valid"));
}

#[test]
fn a_missing_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let output = Command::new(agent_bin())
        .args(["config", "check", "--config"])
        .arg(&missing)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert_refused(&text(&output.stderr), "nope.toml", None, "file not found");
}

#[test]
fn bad_toml_is_located() {
    let bad = AGENT_TOML.replace("mode = \"autonomous\"", "mode = \"autonomous");
    let (code, stderr, _dir) = check(&bad, ACTORS_TOML);
    assert_eq!(code, 2);
    assert_refused(
        &stderr,
        "agent.toml",
        Some(line_of(&bad, "mode = \"autonomous")),
        "",
    );
}

#[test]
fn an_unknown_key_is_located() {
    let bad = AGENT_TOML.replace("[researcher]\n", "[researcher]\ncache_size = 3\n");
    let (code, stderr, _dir) = check(&bad, ACTORS_TOML);
    assert_eq!(code, 2);
    assert_refused(
        &stderr,
        "agent.toml",
        Some(line_of(&bad, "cache_size")),
        "unknown field `cache_size`",
    );
}

#[test]
fn an_unknown_actor_is_located() {
    let bad = ACTORS_TOML.replace("name = \"learner\"", "name = \"teacher\"");
    let (code, stderr, _dir) = check(AGENT_TOML, &bad);
    assert_eq!(code, 2);
    assert_refused(
        &stderr,
        "actors.toml",
        Some(line_of(&bad, "teacher")),
        "unknown actor \"teacher\"",
    );
}

#[test]
fn a_missing_actor_is_named() {
    let bad = ACTORS_TOML.replace(
        "[[actor]]\nname = \"researcher\"\nrestart = \"permanent\"\n",
        "",
    );
    let (code, stderr, _dir) = check(AGENT_TOML, &bad);
    assert_eq!(code, 2);
    assert_refused(
        &stderr,
        "actors.toml",
        None,
        "missing [[actor]] entries for: researcher",
    );
}

#[test]
fn negative_and_zero_limits_are_refused() {
    for value in ["-3", "0"] {
        let bad = ACTORS_TOML.replace("max_restarts = 5", &format!("max_restarts = {value}"));
        let (code, stderr, _dir) = check(AGENT_TOML, &bad);
        assert_eq!(code, 2);
        assert_refused(
            &stderr,
            "actors.toml",
            Some(line_of(&bad, "max_restarts =")),
            &format!("expected a whole number greater than zero, found {value}"),
        );
    }
    let bad = AGENT_TOML.replace("tokens_per_day = 2000000", "tokens_per_day = -1");
    let (code, stderr, _dir) = check(&bad, ACTORS_TOML);
    assert_eq!(code, 2);
    assert_refused(
        &stderr,
        "agent.toml",
        Some(line_of(&bad, "tokens_per_day")),
        "greater than zero",
    );
}

#[test]
fn an_unknown_strategy_is_located() {
    let bad = ACTORS_TOML.replace("strategy = \"one_for_one\"", "strategy = \"all_for_one\"");
    let (code, stderr, _dir) = check(AGENT_TOML, &bad);
    assert_eq!(code, 2);
    assert_refused(
        &stderr,
        "actors.toml",
        Some(line_of(&bad, "all_for_one")),
        "one_for_one",
    );
}

#[test]
fn a_bad_duration_is_located() {
    let bad = ACTORS_TOML.replace("within = \"30s\"", "within = \"thirty seconds\"");
    let (code, stderr, _dir) = check(AGENT_TOML, &bad);
    assert_eq!(code, 2);
    assert_refused(
        &stderr,
        "actors.toml",
        Some(line_of(&bad, "thirty seconds")),
        "expected a duration such as \"10s\"",
    );
}

#[test]
fn run_refuses_bad_config_before_creating_anything() {
    let dir = tempfile::tempdir().unwrap();
    let actors = actors_config(
        dir.path(),
        &[("strategy = \"one_for_one\"", "strategy = \"sometimes\"")],
    );
    let state = dir.path().join("state");
    let output = Command::new(agent_bin())
        .arg("run")
        .arg("--actors")
        .arg(&actors)
        .arg("--state")
        .arg(&state)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let line = line_of(&std::fs::read_to_string(&actors).unwrap(), "sometimes");
    assert_refused(
        &text(&output.stderr),
        "actors.toml",
        Some(line),
        "sometimes",
    );
    assert!(!state.exists(), "nothing may be created");
}

/// Runs `agent config check` on one user file; returns (status, stderr).
fn check_file(agent_toml: &str) -> (i32, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mine.toml"), agent_toml).unwrap();
    let output = Command::new(agent_bin())
        .args(["config", "check", "--config"])
        .arg(dir.path().join("mine.toml"))
        .output()
        .unwrap();
    (output.status.code().unwrap(), text(&output.stderr), dir)
}

#[test]
fn a_file_holds_only_what_it_changes() {
    let (code, stderr, _dir) = check_file("[governor]\ntokens_per_day = 5\n");
    assert_eq!(code, 0, "{stderr}");
    let (code, stderr, _dir) = check_file("");
    assert_eq!(code, 0, "an empty file is the default: {stderr}");
}

#[test]
fn a_wrong_value_is_named_by_its_key_and_located() {
    let cases = [
        ("[governor]\nretry_after = 5\n", 2, "governor.retry_after: "),
        ("# mine\n[run]\nmode = \"sometimes\"\n", 3, "run.mode: "),
        (
            "[validation]\ntimeout = \"forever\"\n",
            2,
            "validation.timeout: expected a duration such as \"10s\"",
        ),
        (
            "[cognition]\nmcp_max_concurrent = 0\n",
            2,
            "cognition.mcp_max_concurrent: ",
        ),
    ];
    for (file, line, expected) in cases {
        let (code, stderr, _dir) = check_file(file);
        assert_eq!(code, 2, "{file}: {stderr}");
        assert_refused(&stderr, "mine.toml", Some(line), expected);
    }
}

#[test]
fn a_refused_run_leaves_no_state_behind() {
    let dir = tempfile::tempdir().unwrap();
    let workspace = crate::harness::tiny_crate(dir.path());
    let workspace = workspace.to_str().unwrap();
    for bad in [
        vec!["--goal", "  "],
        vec!["--workspace", "/nonexistent/workspace"],
        vec!["--workspace", workspace, "--base", "no-such-ref"],
    ] {
        let state = dir.path().join("state");
        let output = Command::new(agent_bin())
            .arg("run")
            .arg("--state")
            .arg(&state)
            .args(&bad)
            .output()
            .unwrap();
        assert_eq!(
            output.status.code(),
            Some(2),
            "{bad:?}: {}",
            text(&output.stderr)
        );
        assert!(!state.exists(), "{bad:?} left {} behind", state.display());
    }
}

/// The keys `docs/configuration.md` documents, by file and section: rows
/// whose first cell is a key in backquotes, under `### `[section]`` headings.
fn documented_keys() -> std::collections::BTreeMap<(String, String), Vec<String>> {
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md"),
    )
    .unwrap();
    let mut keys: std::collections::BTreeMap<(String, String), Vec<String>> = Default::default();
    let (mut file, mut section) = (String::new(), String::new());
    for line in doc.lines() {
        if let Some(name) = line.strip_prefix("## ") {
            file = name.trim().to_string();
        } else if let Some(heading) = line.strip_prefix("### `") {
            section = heading.trim_end_matches('`').to_string();
            keys.entry((file.clone(), section.clone())).or_default();
        } else if let Some(row) = line.strip_prefix("| `")
            && !section.is_empty()
        {
            let key = row.split('`').next().unwrap().to_string();
            keys.entry((file.clone(), section.clone()))
                .or_default()
                .push(key);
        }
    }
    keys
}

/// What the program accepts, read from its own refusal of an unknown key:
/// serde lists every field it expected.
fn accepted(file: &str, text: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(file);
    std::fs::write(&path, text).unwrap();
    let error = match file {
        "agent.toml" => agent::config::load_all(Some(&path), None),
        _ => agent::config::load_all(None, Some(&path)),
    }
    .map(|_| ())
    .unwrap_err()
    .to_string();
    // "expected one of `a`, `b`", "expected `a` or `b`" or "expected `a`".
    let list = error
        .split(", expected ")
        .nth(1)
        .unwrap_or_else(|| panic!("{file}: no list of accepted keys in: {error}"));
    list.split('`')
        .skip(1)
        .step_by(2)
        .map(String::from)
        .collect()
}

/// `docs/configuration.md` and the keys the program accepts are the same,
/// section by section, in both files: a key added to the code and not to
/// the page (or documented and gone) fails here.
#[test]
fn the_configuration_page_documents_exactly_the_accepted_keys() {
    let documented = documented_keys();
    for (file, probe) in [
        ("agent.toml", "[zzz_unknown]\na = 1\n"),
        ("actors.toml", "zzz_unknown = 1\n"),
    ] {
        let mut sections: Vec<String> = accepted(file, probe);
        sections.sort();
        let mut on_page: Vec<String> = documented
            .keys()
            .filter(|(f, _)| f == file)
            .map(|(_, s)| s.trim_matches(['[', ']']).to_string())
            .collect();
        on_page.sort();
        assert_eq!(
            on_page, sections,
            "{file}: the sections on the page vs accepted"
        );
        for ((_, section), keys) in documented.iter().filter(|((f, _), _)| f == file) {
            let name = section.trim_matches(['[', ']']);
            let mut expected = accepted(file, &format!("{section}\nzzz_unknown = 1\n"));
            expected.sort();
            let mut keys = keys.clone();
            keys.sort();
            assert_eq!(
                keys, expected,
                "{file} [{name}]: the keys on the page vs accepted"
            );
        }
    }
}
