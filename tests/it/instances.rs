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

/// A run's human output with what changes between runs replaced: the
/// temporary directory, commit ids and durations.
fn normalized(output: &str, dir: &Path) -> String {
    let dir = dir.display().to_string();
    output
        .lines()
        .map(|line| {
            let mut line = line.replace(&dir, "<DIR>");
            if let Some(at) = line.find("commit ") {
                let start = at + "commit ".len();
                let end = (start + 10).min(line.len());
                line.replace_range(start..end, "<HASH>");
            }
            if line.starts_with("iteration ")
                && let Some(open) = line.rfind(" (")
            {
                line.truncate(open);
                line.push_str(" (<T>)");
            }
            line
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_human_output_of_a_short_run_is_one_line_per_iteration_and_what_was_kept() {
    let dir = tempfile::tempdir().unwrap();
    // Unconfined, so that the banner's sandbox line is the same on every
    // machine.
    let config = fast_config(dir.path(), &[crate::harness::UNCONFINED]);
    let workspace = tiny_crate(dir.path());
    let state = dir.path().join("state");
    let mut command = std::process::Command::new(crate::harness::agent_bin());
    crate::harness::clean_environment(&mut command);
    let output = command
        .args(["run", "--state"])
        .arg(&state)
        .args(args(&config, &workspace))
        .args(["--max-iterations", "3"])
        .env("FAKE_CLAUDE_MODE", "edit")
        // Whatever login this machine has, the banner names this one.
        .env("ANTHROPIC_API_KEY", "sk-test")
        .env_remove("CLAUDE_CODE_OAUTH_TOKEN")
        .env_remove("NO_COLOR")
        .output()
        .unwrap();
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert!(output.status.success(), "{stderr}");
    let expected = "\
agent: goal \"Reduce the compiler and clippy warnings of the workspace without breaking its tests\"
agent: backend claude-cli — claude-cli backend chosen in configuration
agent: sandbox off: jobs and checks run unconfined
agent: worktree <DIR>/state/worktree (from <DIR>/workspace), state <DIR>/state, 0 iteration(s) committed so far
agent: Claude Code login: ANTHROPIC_API_KEY (does not rotate)
iteration   1  claude-edit              accepted   claude-edit accepted: 1 file(s), fitness 1 → 1, commit <HASH> (<T>)
iteration   2  claude-edit              accepted   claude-edit accepted: 1 file(s), fitness 1 → 1, commit <HASH> (<T>)
iteration   3  claude-edit              accepted   claude-edit accepted: 1 file(s), fitness 1 → 1, commit <HASH> (<T>)
agent: run finished (the iteration limit of 3 is reached); 3 iteration(s) committed: 3 change(s) kept, 0 no-change, 0 rejected, 0 failed";
    assert_eq!(normalized(&stdout, dir.path()), expected);
    // Redirected, the logs carry no colour codes.
    assert!(!stderr.contains('\u{1b}'), "{stderr}");
    assert!(!stdout.contains('\u{1b}'), "{stdout}");
}

#[test]
fn on_a_terminal_each_iteration_is_one_line_and_no_colour_with_no_color() {
    // `script` (util-linux) gives the run a terminal.
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: `script` (util-linux) is not installed, so no terminal can be given");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = fast_config(dir.path(), &[]);
    let workspace = tiny_crate(dir.path());
    let state = dir.path().join("state");
    let run = format!(
        "{} run --state {} --config {} --workspace {} --max-iterations 2",
        crate::harness::agent_bin().display(),
        state.display(),
        config.display(),
        workspace.display()
    );
    let mut command = std::process::Command::new("script");
    crate::harness::clean_environment(&mut command);
    let output = command
        .args(["-qec", &run, "/dev/null"])
        .env("FAKE_CLAUDE_MODE", "edit")
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let screen = text(&output.stdout).replace('\r', "");
    assert!(output.status.success(), "{screen}");
    let lines: Vec<&str> = screen.lines().collect();
    let iterations = lines.iter().filter(|l| l.starts_with("iteration ")).count();
    assert_eq!(iterations, 2, "{screen}");
    assert!(
        !screen.contains("INFO"),
        "a terminal gets no info logs beside the iteration lines: {screen}"
    );
    assert!(!screen.contains('\u{1b}'), "NO_COLOR: {screen}");
    assert!(
        lines.last().unwrap().contains("2 change(s) kept"),
        "{screen}"
    );
}

/// A validation suite that fails at the base, as a broken test would.
fn failing_suite(dir: &Path) -> String {
    let suite = dir.join("suite.sh");
    std::fs::write(
        &suite,
        "echo 'running 1 test' >&2\necho 'error: test adds ... FAILED' >&2\nexit 101\n",
    )
    .unwrap();
    format!("command = \"sh {}\"", suite.display())
}

#[test]
fn a_base_whose_validation_fails_is_reported_and_pauses_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let validation = failing_suite(dir.path());
    let config = fast_config(dir.path(), &[("command = \"true\"", &validation)]);
    let workspace = tiny_crate(dir.path());
    let state = dir.path().join("state");
    let mut daemon = Daemon::start(
        &state,
        &args(&config, &workspace),
        &[("FAKE_CLAUDE_MODE", "edit")],
    );
    let paused = daemon.wait_status("the pause on a failing base", WAIT, |s| {
        s["run_state"] == "paused"
    });
    let reason = paused["pause_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("fails at the base, before any change: error: test adds ... FAILED"),
        "{paused}"
    );
    assert_eq!(Daemon::committed(&paused), 0);
    assert!(
        !stdout_of(&daemon).contains("abandoned"),
        "no attempt is blamed on a capability: {}",
        daemon.logs()
    );
    assert!(daemon.ctl(&["stop"]).status.success());
    assert!(daemon.wait_exit(WAIT).success());
}

#[test]
fn with_failing_base_proceed_the_run_goes_on_from_a_failing_base() {
    let dir = tempfile::tempdir().unwrap();
    let validation = failing_suite(dir.path());
    let config = fast_config(
        dir.path(),
        &[
            ("command = \"true\"", &validation),
            ("failing_base = \"pause\"", "failing_base = \"proceed\""),
        ],
    );
    let workspace = tiny_crate(dir.path());
    let state = dir.path().join("state");
    let mut daemon = Daemon::start(
        &state,
        &args(&config, &workspace),
        &[("FAKE_CLAUDE_MODE", "edit")],
    );
    let status = daemon.wait_status("iterations on a failing base", WAIT, |s| {
        Daemon::committed(s) >= 2
    });
    assert_eq!(status["run_state"], "running");
    // Status counts the outcomes apart: nothing kept, all rejected.
    let outcomes = &status["outcomes"];
    assert_eq!(outcomes["kept"], 0, "{status}");
    assert_eq!(outcomes["rejected"], status["iteration"], "{status}");
    let human = text(&daemon.ctl(&["status"]).stdout);
    assert!(human.contains("0 change(s) kept"), "{human}");
    assert!(daemon.ctl(&["stop"]).status.success());
    assert!(daemon.wait_exit(WAIT).success());
    // Changes are still kept only when validation passes.
    let history = crate::harness::history(&state);
    assert!(
        history.iter().all(|h| h["outcome"] == "rejected"),
        "{history:?}"
    );
}

#[test]
fn ctl_rebase_moves_the_branch_onto_the_main_line_only_when_validation_passes_there() {
    let dir = tempfile::tempdir().unwrap();
    // Validation fails when the main line's CHANGELOG says "broken".
    let suite = dir.path().join("suite.sh");
    std::fs::write(
        &suite,
        "if grep -q broken CHANGELOG.md 2>/dev/null; then echo 'error: the changelog is broken' >&2; exit 1; fi\n",
    )
    .unwrap();
    let validation = format!("command = \"sh {}\"", suite.display());
    let config = fast_config(dir.path(), &[("command = \"true\"", &validation)]);
    let workspace = tiny_crate(dir.path());
    let state = dir.path().join("state");
    let mut daemon = Daemon::start(
        &state,
        &args(&config, &workspace),
        &[("FAKE_CLAUDE_MODE", "edit")],
    );
    daemon.wait_status("two iterations", WAIT, |s| Daemon::committed(s) >= 2);
    let refused = daemon.ctl(&["rebase"]);
    assert_eq!(
        refused.status.code(),
        Some(1),
        "a running run is not rebased"
    );
    assert!(
        text(&refused.stderr).contains("pause the run first"),
        "{}",
        text(&refused.stderr)
    );
    assert!(daemon.ctl(&["pause"]).status.success());
    daemon.wait_status("paused and idle", WAIT, |s| {
        s["run_state"] == "paused" && s["in_flight"].is_null()
    });
    let worktree = Repository::open(state.join("worktree")).unwrap();
    let before = worktree.head().unwrap().peel_to_commit().unwrap().id();

    std::fs::write(workspace.join("CHANGELOG.md"), "broken\n").unwrap();
    commit_all(&workspace, "main: a broken changelog");
    let failed = daemon.ctl(&["rebase"]);
    assert_eq!(failed.status.code(), Some(1));
    assert!(
        text(&failed.stderr).contains("error: the changelog is broken")
            && text(&failed.stderr).contains("the branch stays where it was"),
        "{}",
        text(&failed.stderr)
    );
    assert_eq!(
        worktree.head().unwrap().peel_to_commit().unwrap().id(),
        before
    );

    std::fs::write(workspace.join("CHANGELOG.md"), "fixed\n").unwrap();
    let main_commit = commit_all(&workspace, "main: a fixed changelog");
    let rebased = daemon.ctl(&["rebase"]);
    assert!(rebased.status.success(), "{}", text(&rebased.stderr));
    let said = text(&rebased.stdout);
    assert!(
        said.starts_with("rebased ") && said.contains(" commit(s) onto the repository's HEAD"),
        "{said}"
    );
    let head = worktree.head().unwrap().peel_to_commit().unwrap();
    assert!(
        worktree
            .graph_descendant_of(head.id(), git2::Oid::from_str(&main_commit).unwrap())
            .unwrap()
    );
    let status = daemon.status().unwrap();
    let committed = Daemon::committed(&status);
    assert!(daemon.ctl(&["resume"]).status.success());
    daemon.wait_status("an iteration on the new base", WAIT, |s| {
        Daemon::committed(s) > committed
    });
    assert!(daemon.ctl(&["stop"]).status.success());
    assert!(daemon.wait_exit(WAIT).success(), "{}", daemon.logs());
}

#[test]
fn a_branch_held_by_another_worktree_is_named_with_its_holder() {
    let dir = tempfile::tempdir().unwrap();
    let config = fast_config(dir.path(), &[]);
    let workspace = tiny_crate(dir.path());
    let state = dir.path().join("state");
    // Another worktree already holds the branch this state directory would use.
    std::fs::create_dir_all(&state).unwrap();
    let branch = agent::workspace::instance_branch(&state);
    let repo = Repository::open(&workspace).unwrap();
    let head = repo.head().unwrap().peel_to_commit().unwrap();
    let reference = repo.branch(&branch, &head, false).unwrap().into_reference();
    let holder = dir.path().join("elsewhere");
    let mut options = git2::WorktreeAddOptions::new();
    options.reference(Some(&reference));
    repo.worktree("elsewhere", &holder, Some(&options)).unwrap();

    let output = std::process::Command::new(crate::harness::agent_bin())
        .args(["run", "--state"])
        .arg(&state)
        .args(args(&config, &workspace))
        .output()
        .unwrap();
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    let line = stderr.lines().last().unwrap_or_default();
    assert!(
        line.contains(&format!(
            "the branch {branch} is checked out in {}",
            holder.canonicalize().unwrap().display()
        )) || line.contains(&format!(
            "the branch {branch} is checked out in {}",
            holder.display()
        )),
        "{stderr}"
    );
}
