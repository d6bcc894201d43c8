//! The safety rules against the real binary: the stand-in claude makes a
//! change that breaks a rule, and the change is refused before any build
//! runs, named by its rule in the history, absent from the branch, and gone
//! from the worktree.

use std::path::Path;
use std::time::Duration;

use git2::{IndexAddOption, Repository, Signature};

use crate::harness::{Daemon, UNCONFINED, fast_config, history, tiny_crate};

const WAIT: Duration = Duration::from_secs(120);

/// One bounded run whose single change is the stand-in's edit; checks the
/// change was refused by `rule` (named in the history's `rule` field), is
/// absent from the branch but kept in the variant archive, and the worktree
/// is clean. Returns the iteration's summary.
fn refused_summary(
    dir: &Path,
    workspace: &Path,
    rule: &str,
    extra: &[(&str, &str)],
    edit: &[(&str, &str)],
) -> String {
    let config = fast_config(dir, extra);
    let state = dir.join("state");
    let mut env = vec![("FAKE_CLAUDE_MODE", "edit")];
    env.extend_from_slice(edit);
    let mut daemon = Daemon::bounded(&state, &config, workspace, 1, &env);
    assert!(daemon.wait_exit(WAIT).success(), "{}", daemon.logs());
    let records = history(&state);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["outcome"], "rejected", "{records:?}");
    let worktree = agent::workspace::Workspace {
        path: state.join("worktree"),
    };
    assert!(
        worktree.changed_files().unwrap().is_empty(),
        "the worktree is clean"
    );
    assert!(
        worktree.iteration_commits().unwrap().is_empty(),
        "the branch holds no refused change"
    );
    assert_eq!(records[0]["rule"], rule, "{records:?}");
    let archived = worktree.variant_commit(1).unwrap();
    assert_eq!(
        archived.as_deref(),
        records[0]["variant"].as_str(),
        "the refused change is kept on its variant ref"
    );
    records[0]["summary"].as_str().unwrap().to_string()
}

#[test]
fn a_change_that_adds_unsafe_is_refused_by_its_rule_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let workspace = tiny_crate(dir.path());
    let summary = refused_summary(
        dir.path(),
        &workspace,
        "no-new-unsafe",
        &[],
        &[("FAKE_CLAUDE_EDIT_TEXT", "pub fn raw() {\n    unsafe {}\n}")],
    );
    assert!(
        summary.contains("refused by rule no-new-unsafe: src/lib.rs:16: adds `unsafe`"),
        "{summary}"
    );
}

#[test]
fn a_change_to_a_protected_path_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let workspace = tiny_crate(dir.path());
    std::fs::write(workspace.join("actors.toml"), "# the tree\n").unwrap();
    let repo = Repository::open(&workspace).unwrap();
    commit(&repo, "add actors.toml");
    let summary = refused_summary(
        dir.path(),
        &workspace,
        "protected-path",
        &[],
        &[("FAKE_CLAUDE_EDIT_FILE", "actors.toml")],
    );
    assert!(
        summary.contains("refused by rule protected-path: actors.toml"),
        "{summary}"
    );
}

fn commit(repo: &Repository, message: &str) {
    let mut index = repo.index().unwrap();
    index.add_all(["*"], IndexAddOption::DEFAULT, None).unwrap();
    index.write().unwrap();
    let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
    let sig = Signature::now("test", "test@localhost").unwrap();
    let parents: Vec<git2::Commit> = repo
        .head()
        .ok()
        .and_then(|h| h.peel_to_commit().ok())
        .into_iter()
        .collect();
    let parents: Vec<&git2::Commit> = parents.iter().collect();
    repo.commit(Some("HEAD"), &sig, &sig, message, &tree, &parents)
        .unwrap();
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[test]
fn on_the_agents_own_source_a_change_to_the_governor_is_refused_before_any_build() {
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let copy = dir.path().join("agent-copy");
    for part in ["src", "config"] {
        copy_tree(&root.join(part), &copy.join(part));
    }
    for file in ["Cargo.toml", "actors.toml"] {
        std::fs::copy(root.join(file), copy.join(file)).unwrap();
    }
    let repo = Repository::init(&copy).unwrap();
    commit(&repo, "a copy of the agent");
    // Validation leaves a mark when it runs on a changed worktree: a build.
    let built = dir.path().join("BUILT_WITH_A_CHANGE");
    let validation = format!(
        "command = \"git diff --quiet HEAD || touch {}\"",
        built.display()
    );
    for (file, dir_name) in [
        ("src/actors/governor/mod.rs", "governor"),
        ("src/actors/modifier/pipeline.rs", "evaluator"),
    ] {
        let run = dir.path().join(dir_name);
        std::fs::create_dir_all(&run).unwrap();
        let summary = refused_summary(
            &run,
            &copy,
            "protected-path",
            // The mark is written outside the worktree: unconfined.
            &[("command = \"true\"", &validation), UNCONFINED],
            &[("FAKE_CLAUDE_EDIT_FILE", file)],
        );
        assert!(
            summary.contains(&format!("refused by rule protected-path: {file}")),
            "{summary}"
        );
        assert!(!built.exists(), "no build ran on the refused change");
    }
}

/// A crate whose lib has a test and a protected function, committed.
fn crate_with_a_test(dir: &Path) -> std::path::PathBuf {
    let workspace = tiny_crate(dir);
    std::fs::write(
        workspace.join("src/lib.rs"),
        "pub fn score() -> u32 {\n    1\n}\n\n#[cfg(test)]\nmod tests {\n    #[test]\n    fn scores() {\n        assert_eq!(super::score(), 1);\n    }\n}\n",
    )
    .unwrap();
    commit(&Repository::open(&workspace).unwrap(), "a test");
    workspace
}

/// A rule, the config replacements that arm it, the stand-in's edit, and
/// what the summary must say.
type RuleCase<'a> = (
    &'a str,
    &'a [(&'a str, &'a str)],
    Vec<(&'a str, &'a str)>,
    &'a str,
);

#[test]
fn each_scope_and_syntax_rule_refuses_its_change_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let replace = ("FAKE_CLAUDE_EDIT_REPLACE", "1");
    let cases: [RuleCase; 6] = [
        (
            "outside-allowed-paths",
            &[("allowed_paths = []", "allowed_paths = [\"src/\"]")],
            vec![("FAKE_CLAUDE_EDIT_FILE", "build.rs")],
            "refused by rule outside-allowed-paths: build.rs",
        ),
        (
            "change-too-large",
            &[("max_changed_lines = 2000", "max_changed_lines = 1")],
            vec![("FAKE_CLAUDE_EDIT_TEXT", "// one\n// two")],
            "lines changed, at most 1 allowed",
        ),
        (
            "no-process-spawn",
            &[],
            vec![(
                "FAKE_CLAUDE_EDIT_TEXT",
                "pub fn run() {\n    let _ = std::process::Command::new(\"ls\");\n}",
            )],
            "refused by rule no-process-spawn: src/lib.rs:",
        ),
        (
            "no-removed-test",
            &[],
            vec![
                ("FAKE_CLAUDE_EDIT_TEXT", "pub fn score() -> u32 {\n    1\n}"),
                replace,
            ],
            "removes the test `scores`",
        ),
        (
            "no-edit-protected-fn",
            &[(
                "protected_fns = []",
                "protected_fns = [\"src/lib.rs::score\"]",
            )],
            vec![
                (
                    "FAKE_CLAUDE_EDIT_TEXT",
                    "pub fn score() -> u32 {\n    2\n}\n\n#[cfg(test)]\nmod tests {\n    #[test]\n    fn scores() {\n        assert_eq!(super::score(), 1);\n    }\n}",
                ),
                replace,
            ],
            "refused by rule no-edit-protected-fn: src/lib.rs:1: edits the protected function `score`",
        ),
        (
            "rust-syntax",
            &[],
            vec![("FAKE_CLAUDE_EDIT_TEXT", "fn broken( {")],
            "refused by rule rust-syntax: src/lib.rs:",
        ),
    ];
    for (rule, extra, edit, expected) in cases {
        let run = dir.path().join(rule);
        std::fs::create_dir_all(&run).unwrap();
        let workspace = crate_with_a_test(&run);
        let summary = refused_summary(&run, &workspace, rule, extra, &edit);
        assert!(summary.contains(expected), "{rule}: {summary}");
    }
}
