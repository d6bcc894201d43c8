//! Operators' first steps off the happy path: several instances on one
//! repository, the user's work in the worktree kept rather than reset away,
//! a new run following the repository's main line, and a state directory
//! that belongs to one workspace.

use std::path::Path;
use std::time::Duration;

use git2::{IndexAddOption, Repository, Signature};

use crate::harness::{Daemon, fast_config, text, tiny_crate};

const WAIT: Duration = Duration::from_secs(120);

fn args<'a>(config: &'a Path, workspace: &'a Path) -> Vec<&'a str> {
    vec![
        "--config",
        config.to_str().unwrap(),
        "--workspace",
        workspace.to_str().unwrap(),
    ]
}

/// Commits every file of `dir` (a repository) as `message`.
fn commit_all(dir: &Path, message: &str) -> String {
    let repo = Repository::open(dir).unwrap();
    let mut index = repo.index().unwrap();
    index.add_all(["*"], IndexAddOption::DEFAULT, None).unwrap();
    index.write().unwrap();
    let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
    let sig = Signature::now("user", "user@localhost").unwrap();
    let parent = repo.head().unwrap().peel_to_commit().unwrap();
    repo.commit(Some("HEAD"), &sig, &sig, message, &tree, &[&parent])
        .unwrap()
        .to_string()
}

fn stdout_of(daemon: &Daemon) -> String {
    text(&std::fs::read(&daemon.stdout).unwrap())
}

#[test]
fn two_instances_improve_one_repository_side_by_side_on_their_own_branches() {
    let dir = tempfile::tempdir().unwrap();
    let config = fast_config(dir.path(), &[]);
    let workspace = tiny_crate(dir.path());
    let edit = [("FAKE_CLAUDE_MODE", "edit")];
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    let mut first = Daemon::start(&one, &args(&config, &workspace), &edit);
    let mut second = Daemon::start(&two, &args(&config, &workspace), &edit);
    for daemon in [&mut first, &mut second] {
        daemon.wait_status("two iterations on its own branch", WAIT, |s| {
            Daemon::committed(s) >= 2
        });
    }
    for daemon in [&mut first, &mut second] {
        assert!(daemon.ctl(&["stop"]).status.success());
        assert!(daemon.wait_exit(WAIT).success(), "{}", daemon.logs());
    }
    let repo = Repository::open(&workspace).unwrap();
    let branch_of = |state: &Path| {
        let worktree = Repository::open(state.join("worktree")).unwrap();
        let head = worktree.head().unwrap();
        head.shorthand().unwrap().to_string()
    };
    let (a, b) = (branch_of(&one), branch_of(&two));
    assert_ne!(a, b, "each instance has a branch of its own");
    for branch in [&a, &b] {
        let tip = repo
            .find_branch(branch, git2::BranchType::Local)
            .unwrap()
            .get()
            .peel_to_commit()
            .unwrap();
        assert!(
            tip.message().unwrap().contains("\nIteration: "),
            "{branch} holds the agent's commits"
        );
    }
}

#[test]
fn a_user_commit_and_an_edit_in_the_worktree_survive_a_restart_on_a_rescue_ref() {
    let dir = tempfile::tempdir().unwrap();
    let config = fast_config(dir.path(), &[]);
    let workspace = tiny_crate(dir.path());
    let state = dir.path().join("state");
    let edit = [("FAKE_CLAUDE_MODE", "edit")];
    let mut daemon = Daemon::start(&state, &args(&config, &workspace), &edit);
    daemon.wait_status("an iteration", WAIT, |s| Daemon::committed(s) >= 1);
    assert!(daemon.ctl(&["stop"]).status.success());
    assert!(daemon.wait_exit(WAIT).success());

    // The user works in the agent's worktree: a commit and an edit.
    let worktree = state.join("worktree");
    std::fs::write(worktree.join("NOTES.md"), "my notes\n").unwrap();
    let user_commit = commit_all(&worktree, "user: notes");
    std::fs::write(worktree.join("src/lib.rs"), "// half-done by the user\n").unwrap();

    let mut daemon = Daemon::start(&state, &args(&config, &workspace), &edit);
    daemon.wait_status("an iteration after the restart", WAIT, |s| {
        Daemon::committed(s) >= 2
    });
    assert!(daemon.ctl(&["stop"]).status.success());
    assert!(daemon.wait_exit(WAIT).success());
    let said = stdout_of(&daemon);
    assert!(
        said.contains("kept 1 commit(s) and 1 uncommitted file(s) found beyond the committed head on refs/agent/rescued/"),
        "{said}"
    );
    let repo = Repository::open(&workspace).unwrap();
    let rescued: Vec<_> = repo
        .references_glob("refs/agent/rescued/*")
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(rescued.len(), 1);
    let kept = rescued[0].peel_to_commit().unwrap();
    let lib = kept
        .tree()
        .unwrap()
        .get_path(Path::new("src/lib.rs"))
        .unwrap()
        .to_object(&repo)
        .unwrap()
        .peel_to_blob()
        .unwrap();
    assert_eq!(lib.content(), b"// half-done by the user\n");
    assert_eq!(kept.parent_id(0).unwrap().to_string(), user_commit);
}

#[test]
fn a_new_run_starts_from_the_main_line_and_a_resumed_one_says_it_is_behind() {
    let dir = tempfile::tempdir().unwrap();
    let config = fast_config(dir.path(), &[]);
    let workspace = tiny_crate(dir.path());
    let state = dir.path().join("state");
    let edit = [("FAKE_CLAUDE_MODE", "edit")];
    let mut bounded = args(&config, &workspace);
    bounded.extend(["--max-iterations", "1"]);
    let mut daemon = Daemon::start(&state, &bounded, &edit);
    assert!(daemon.wait_exit(WAIT).success(), "{}", daemon.logs());

    // The main line moves on.
    std::fs::write(workspace.join("CHANGELOG.md"), "new\n").unwrap();
    let main_commit = commit_all(&workspace, "main: changelog");

    let mut resumed_args = args(&config, &workspace);
    resumed_args.extend(["--max-iterations", "2"]);
    let mut resumed = Daemon::start(&state, &resumed_args, &edit);
    assert!(resumed.wait_exit(WAIT).success(), "{}", resumed.logs());
    assert!(
        stdout_of(&resumed)
            .contains("the agent branch is 1 commit(s) behind the repository's HEAD"),
        "{}",
        resumed.logs()
    );

    // A new run (the state directory deleted) starts from the new main line.
    std::fs::remove_dir_all(&state).unwrap();
    let mut fresh = Daemon::start(&state, &bounded, &edit);
    assert!(fresh.wait_exit(WAIT).success(), "{}", fresh.logs());
    assert!(
        stdout_of(&fresh).contains("of an earlier run was kept on refs/agent/rescued/"),
        "{}",
        fresh.logs()
    );
    let worktree = Repository::open(state.join("worktree")).unwrap();
    let head = worktree.head().unwrap().peel_to_commit().unwrap();
    assert_eq!(head.parent_id(0).unwrap().to_string(), main_commit);
}

#[test]
fn a_state_directory_of_another_workspace_is_refused_with_the_one_it_belongs_to() {
    let dir = tempfile::tempdir().unwrap();
    let config = fast_config(dir.path(), &[]);
    let workspace = tiny_crate(dir.path());
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let state = dir.path().join("state");
    let mut bounded = args(&config, &workspace);
    bounded.extend(["--max-iterations", "1"]);
    let mut daemon = Daemon::start(&state, &bounded, &[("FAKE_CLAUDE_MODE", "edit")]);
    assert!(daemon.wait_exit(WAIT).success(), "{}", daemon.logs());

    let output = std::process::Command::new(crate::harness::agent_bin())
        .args(["run", "--state"])
        .arg(&state)
        .args(args(&config, &other))
        .output()
        .unwrap();
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    let belongs = workspace.canonicalize().unwrap();
    assert!(
        stderr.contains(&format!("belongs to the workspace {}", belongs.display())),
        "{stderr}"
    );
}
