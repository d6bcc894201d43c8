//! The safety rules against the real binary: the stand-in claude makes a
//! change that breaks a rule, and the change is refused before any build
//! runs, named by its rule in the history, absent from the branch, and gone
//! from the worktree.

use std::path::Path;
use std::time::Duration;

use git2::{IndexAddOption, Repository, Signature};

use crate::harness::{Daemon, fast_config, history, tiny_crate};

const WAIT: Duration = Duration::from_secs(120);

/// One bounded run whose single change is the stand-in's `text` in `file`;
/// returns the iteration's summary.
fn refused_summary(
    dir: &Path,
    workspace: &Path,
    extra: &[(&str, &str)],
    edit: &[(&str, &str)],
) -> String {
    let config = fast_config(dir, extra);
    let state = dir.join("state");
    let args = [
        "--config",
        config.to_str().unwrap(),
        "--workspace",
        workspace.to_str().unwrap(),
        "--max-iterations",
        "1",
    ];
    let mut env = vec![("FAKE_CLAUDE_MODE", "edit")];
    env.extend_from_slice(edit);
    let mut daemon = Daemon::start(&state, &args, &env);
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
    records[0]["summary"].as_str().unwrap().to_string()
}

#[test]
fn a_change_that_adds_unsafe_is_refused_by_its_rule_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let workspace = tiny_crate(dir.path());
    let summary = refused_summary(
        dir.path(),
        &workspace,
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
    let summary = refused_summary(
        dir.path(),
        &copy,
        &[("command = \"true\"", &validation)],
        &[("FAKE_CLAUDE_EDIT_FILE", "src/actors/governor.rs")],
    );
    assert!(
        summary.contains("refused by rule protected-path: src/actors/governor.rs"),
        "{summary}"
    );
    assert!(!built.exists(), "no build ran on the refused change");
}
