//! The agent's own git working tree. The agent never edits the user's working
//! copy: a workspace that is the root of a git repository gets a linked
//! worktree under the state directory on the agent's branch; any other
//! directory (such as the example crate inside this project) is imported into
//! a repository of its own under the state directory, so the original
//! repository's files, branches and history stay untouched. All calls block;
//! actors run them on the blocking pool.

use std::path::{Path, PathBuf};

use git2::build::CheckoutBuilder;
use git2::{BranchType, IndexAddOption, Oid, Repository, ResetType, Signature, StatusOptions};

/// The branch of an imported workspace (its repository is the instance's own).
pub const AGENT_BRANCH: &str = "agent/work";
/// Where work found beside the committed head is kept instead of discarded.
pub const RESCUE_PREFIX: &str = "refs/agent/rescued/";
/// Where every change an iteration produced is kept, accepted or refused:
/// `refs/agent/variants/<instance>/<iteration>`.
pub const VARIANTS_PREFIX: &str = "refs/agent/variants/";

/// Appended to a variant ref for the refused change a repair turn started
/// from: both stay in the archive.
pub const REFUSED_SUFFIX: &str = "-refused";

/// The branch an instance commits to in a repository it shares: one per
/// state directory (`agent/<dir name>-<hash of its path>`), so instances on
/// one repository never share a branch.
pub fn instance_branch(state_dir: &Path) -> String {
    let path = state_dir
        .canonicalize()
        .unwrap_or_else(|_| state_dir.to_path_buf());
    let name: String = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "state".into())
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    // FNV-1a: stable across builds, which a std hasher does not promise.
    let hash = path
        .to_string_lossy()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    format!("agent/{name}-{:08x}", hash as u32)
}

#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error("workspace {0} does not exist or is not a directory")]
    Missing(PathBuf),
    #[error("git: {0}")]
    Git(#[from] git2::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(
        "the agent branch moved while the change was committed (it no longer points at {expected})"
    )]
    Moved { expected: String },
    #[error(
        "the branch {branch} is checked out in {holder} (another agent instance's state directory, or a checkout of the user's); stop that instance or give this run its own --state directory"
    )]
    Held { branch: String, holder: String },
    #[error("--base {0} names no commit of the workspace's repository")]
    UnknownBase(String),
    #[error(
        "an imported workspace has no repository to follow; only a linked worktree can be rebased"
    )]
    NoBase,
    #[error("commit {0} conflicts with the repository's HEAD; the branch stays where it was")]
    Conflict(String),
}

/// The branch's commits replayed onto the repository's HEAD.
#[derive(Debug, Clone, PartialEq)]
pub struct Replayed {
    pub base: String,
    pub old_head: String,
    pub new_head: String,
    pub replayed: usize,
}

/// The agent's worktree.
#[derive(Debug, Clone)]
pub struct Workspace {
    pub path: PathBuf,
}

impl Workspace {
    /// Opens the agent's worktree under `state_dir`, creating it from `source`
    /// the first time.
    pub fn prepare(source: &Path, state_dir: &Path) -> Result<Workspace, WorkspaceError> {
        Self::prepare_with_notices(source, state_dir, None).map(|(workspace, _)| workspace)
    }

    /// Like [`Workspace::prepare`], with what a person should be told: work
    /// that was kept on a rescue ref rather than discarded.
    /// A new branch starts at `base` (a revision of the source repository),
    /// by default its HEAD.
    pub fn prepare_with_notices(
        source: &Path,
        state_dir: &Path,
        base: Option<&str>,
    ) -> Result<(Workspace, Vec<String>), WorkspaceError> {
        let path = state_dir.join("worktree");
        if Repository::open(&path).is_ok() {
            return Ok((Workspace { path }, Vec::new()));
        }
        let mut notices = Vec::new();
        if !source.is_dir() {
            return Err(WorkspaceError::Missing(source.to_path_buf()));
        }
        let source = source.canonicalize()?;
        let is_repo_root = Repository::open(&source)
            .ok()
            .and_then(|repo| repo.workdir().map(Path::to_path_buf))
            .and_then(|workdir| workdir.canonicalize().ok())
            .is_some_and(|workdir| workdir == source);
        if is_repo_root {
            let branch = instance_branch(state_dir);
            notices.extend(add_linked_worktree(&source, &path, &branch, base)?);
        } else {
            import_directory(&source, &path)?;
        }
        Ok((Workspace { path }, notices))
    }

    /// Replays the branch's own commits (since it forked from the
    /// repository's HEAD) onto that HEAD, as new commits; the branch does
    /// not move. `None` when the branch is not behind. A conflict is an
    /// error that names the commit.
    pub fn replay_onto_base(&self) -> Result<Option<Replayed>, WorkspaceError> {
        let repo = self.repo()?;
        if !repo.is_worktree() {
            return Err(WorkspaceError::NoBase);
        }
        let main = Repository::open(repo.commondir())?;
        let base = main.head()?.peel_to_commit()?.id();
        let own = repo.head()?.peel_to_commit()?;
        let (_, behind) = repo.graph_ahead_behind(own.id(), base)?;
        if behind == 0 {
            return Ok(None);
        }
        let fork = repo.merge_base(own.id(), base)?;
        let mut walk = repo.revwalk()?;
        walk.push(own.id())?;
        walk.hide(fork)?;
        walk.set_sorting(git2::Sort::TOPOLOGICAL | git2::Sort::REVERSE)?;
        let mut onto = repo.find_commit(base)?;
        let mut replayed = 0;
        for id in walk {
            let commit = repo.find_commit(id?)?;
            let mut index = repo.cherrypick_commit(&commit, &onto, 0, None)?;
            if index.has_conflicts() {
                return Err(WorkspaceError::Conflict(
                    commit.id().to_string()[..10].to_string(),
                ));
            }
            let tree = repo.find_tree(index.write_tree_to(&repo)?)?;
            let new = repo.commit(
                None,
                &commit.author(),
                &commit.committer(),
                commit.message().unwrap_or_default(),
                &tree,
                &[&onto],
            )?;
            onto = repo.find_commit(new)?;
            replayed += 1;
        }
        Ok(Some(Replayed {
            base: base.to_string(),
            old_head: own.id().to_string(),
            new_head: onto.id().to_string(),
            replayed,
        }))
    }

    /// The text of `path` at `commit`; `None` when it has no such file.
    pub fn file_at(&self, commit: &str, path: &str) -> Result<Option<String>, WorkspaceError> {
        let repo = self.repo()?;
        let tree = repo.find_commit(Oid::from_str(commit)?)?.tree()?;
        let Ok(entry) = tree.get_path(Path::new(path)) else {
            return Ok(None);
        };
        let blob = entry.to_object(&repo)?.peel_to_blob()?;
        Ok(Some(String::from_utf8_lossy(blob.content()).into_owned()))
    }

    /// Keeps `commit` on a rescue ref; returns the ref's name.
    pub fn keep(&self, commit: &str, why: &str) -> Result<String, WorkspaceError> {
        let repo = self.repo()?;
        let name = format!("{RESCUE_PREFIX}{}", now_stamp());
        repo.reference(&name, Oid::from_str(commit)?, false, why)?;
        Ok(name)
    }

    /// How many commits the repository's HEAD has that this worktree's
    /// branch lacks, for a linked worktree (an imported one has no base).
    pub fn behind_base(&self) -> Result<Option<(usize, String)>, WorkspaceError> {
        let repo = self.repo()?;
        if !repo.is_worktree() {
            return Ok(None);
        }
        let main = Repository::open(repo.commondir())?;
        let base = main.head()?.peel_to_commit()?.id();
        let own = repo.head()?.peel_to_commit()?.id();
        let (_, behind) = repo.graph_ahead_behind(own, base)?;
        Ok(Some((behind, base.to_string())))
    }

    /// Keeps what the worktree holds beyond `committed` — commits on the
    /// branch past it and uncommitted edits — on a rescue ref, so a reset to
    /// `committed` loses nothing. Returns what was kept, for the person
    /// watching; `None` when there was nothing beyond the committed head.
    pub fn rescue_beyond(&self, committed: &str) -> Result<Option<String>, WorkspaceError> {
        let repo = self.repo()?;
        let committed_id = Oid::from_str(committed)?;
        let head = repo.head()?.peel_to_commit()?;
        let (ahead, _) = repo.graph_ahead_behind(head.id(), committed_id)?;
        let edited = self.changed_files()?;
        if ahead == 0 && edited.is_empty() {
            return Ok(None);
        }
        // The uncommitted edits become a commit of their own (as a stash
        // does); the branch does not move.
        let kept = if edited.is_empty() {
            head.id()
        } else {
            let mut index = repo.index()?;
            index.add_all(["*"], IndexAddOption::DEFAULT, None)?;
            index.update_all(["*"], None)?;
            let tree = repo.find_tree(index.write_tree()?)?;
            let signature = signature()?;
            repo.commit(
                None,
                &signature,
                &signature,
                "agent: uncommitted edits found in the worktree at start",
                &tree,
                &[&head],
            )?
        };
        let name = format!("{RESCUE_PREFIX}{}", now_stamp());
        repo.reference(&name, kept, false, "agent: rescued work")?;
        Ok(Some(format!(
            "kept {ahead} commit(s) and {} uncommitted file(s) found beyond the committed head on {name} ({}); the run goes on from the committed head",
            edited.len(),
            &kept.to_string()[..10]
        )))
    }

    /// Removes the git lock files a killed run of this worktree left: the
    /// worktree's index and HEAD locks, its branch's and its variant refs'
    /// locks. Left behind, each fails every later git operation ("the index
    /// is locked"). Call it only while holding the instance's store lock,
    /// which proves that no live run of this worktree is writing them.
    /// Returns the files removed.
    pub fn clear_stale_locks(&self) -> Result<Vec<PathBuf>, WorkspaceError> {
        if !self.path.exists() {
            return Ok(Vec::new());
        }
        let repo = self.repo()?;
        let mut candidates = vec![
            repo.path().join("index.lock"),
            repo.path().join("HEAD.lock"),
        ];
        let common = repo.commondir().to_path_buf();
        if let Ok(head) = repo.find_reference("HEAD")
            && let Some(branch) = head.symbolic_target()
        {
            candidates.push(common.join(format!("{branch}.lock")));
        }
        if let Ok(variants) = self.variant_ref(0) {
            let folder = common.join(variants.trim_end_matches("/0"));
            if let Ok(entries) = std::fs::read_dir(&folder) {
                candidates.extend(
                    entries
                        .flatten()
                        .map(|e| e.path())
                        .filter(|p| p.extension().is_some_and(|x| x == "lock")),
                );
            }
        }
        let mut removed = Vec::new();
        for lock in candidates {
            if lock.is_file() {
                std::fs::remove_file(&lock)?;
                removed.push(lock);
            }
        }
        Ok(removed)
    }

    fn repo(&self) -> Result<Repository, WorkspaceError> {
        Ok(Repository::open(&self.path)?)
    }

    /// The commit the agent's branch points at.
    pub fn head(&self) -> Result<String, WorkspaceError> {
        let repo = self.repo()?;
        let head = repo.head()?.peel_to_commit()?;
        Ok(head.id().to_string())
    }

    /// Puts branch, index and files back at `commit` and removes untracked
    /// files (ignored ones, such as `target/`, stay for the build cache).
    pub fn reset_to(&self, commit: &str) -> Result<(), WorkspaceError> {
        let repo = self.repo()?;
        let mut options = StatusOptions::new();
        options
            .include_untracked(true)
            .recurse_untracked_dirs(false)
            .include_ignored(false);
        // Already there (after a commit or a rollback, each iteration): a
        // hard reset would rewrite the index and the branch for nothing.
        let at_commit = repo
            .head()?
            .peel_to_commit()
            .is_ok_and(|head| head.id().to_string() == commit);
        if at_commit && repo.statuses(Some(&mut options))?.is_empty() {
            crash_point!("worktree.reset");
            return Ok(());
        }
        let object = repo.find_object(Oid::from_str(commit)?, None)?;
        let mut checkout = CheckoutBuilder::new();
        checkout.force();
        repo.reset(&object, ResetType::Hard, Some(&mut checkout))?;
        crash_point!("worktree.reset");
        // A hard reset leaves untracked files; remove them (not ignored ones).
        let untracked: Vec<PathBuf> = repo
            .statuses(Some(&mut options))?
            .iter()
            .filter(|entry| entry.status().is_wt_new())
            .filter_map(|entry| entry.path().map(|p| self.path.join(p)))
            .collect();
        for path in untracked {
            if path.is_dir() {
                std::fs::remove_dir_all(&path)?;
            } else {
                std::fs::remove_file(&path)?;
            }
        }
        Ok(())
    }

    /// Files changed, added or deleted since the last commit (not ignored ones).
    pub fn changed_files(&self) -> Result<Vec<String>, WorkspaceError> {
        let repo = self.repo()?;
        let mut options = StatusOptions::new();
        options
            .include_untracked(true)
            .recurse_untracked_dirs(true)
            .include_ignored(false);
        let statuses = repo.statuses(Some(&mut options))?;
        Ok(statuses
            .iter()
            .filter_map(|entry| entry.path().map(str::to_string))
            .collect())
    }

    /// The worktree's change against the last commit as a unified diff
    /// (new files included), cut at `max` bytes with a note saying so.
    pub fn diff_against_head(&self, max: usize) -> Result<String, WorkspaceError> {
        let repo = self.repo()?;
        let head = repo.head()?.peel_to_tree()?;
        let mut options = git2::DiffOptions::new();
        options
            .include_untracked(true)
            .recurse_untracked_dirs(true)
            .show_untracked_content(true);
        let diff = repo.diff_tree_to_workdir_with_index(Some(&head), Some(&mut options))?;
        let mut text = String::new();
        let mut cut = false;
        diff.print(git2::DiffFormat::Patch, |_, _, line| {
            if text.len() >= max {
                cut = true;
                return false;
            }
            if matches!(line.origin(), '+' | '-' | ' ') {
                text.push(line.origin());
            }
            text.push_str(&String::from_utf8_lossy(line.content()));
            true
        })
        .or_else(|error| if cut { Ok(()) } else { Err(error) })?;
        if cut {
            text.push_str("\n… (cut: the change is longer)\n");
        }
        Ok(text)
    }

    /// The paths a commit changed against its first parent.
    pub fn commit_paths(&self, commit: &str) -> Result<Vec<String>, WorkspaceError> {
        let repo = self.repo()?;
        let commit = repo.find_commit(git2::Oid::from_str(commit)?)?;
        let parent = commit.parent(0).ok().map(|p| p.tree()).transpose()?;
        let diff = repo.diff_tree_to_tree(parent.as_ref(), Some(&commit.tree()?), None)?;
        Ok(diff
            .deltas()
            .filter_map(|delta| delta.new_file().path().or_else(|| delta.old_file().path()))
            .map(|path| path.display().to_string())
            .collect())
    }

    /// What a commit changed against its first parent: (files, lines
    /// added, lines removed).
    pub fn commit_stat(&self, commit: &str) -> Result<(usize, usize, usize), WorkspaceError> {
        let repo = self.repo()?;
        let commit = repo.find_commit(git2::Oid::from_str(commit)?)?;
        let parent = commit.parent(0).ok().map(|p| p.tree()).transpose()?;
        let diff = repo.diff_tree_to_tree(parent.as_ref(), Some(&commit.tree()?), None)?;
        let stats = diff.stats()?;
        Ok((stats.files_changed(), stats.insertions(), stats.deletions()))
    }

    /// Commits every change on the agent's branch on top of `parent` and
    /// returns the commit id. The branch moves only if it still points at
    /// `parent` (a compare-and-swap of the ref): a commit made by a task
    /// that outlived its actor can never stack on, or under, another one.
    pub fn commit_all(&self, message: &str, parent: &str) -> Result<String, WorkspaceError> {
        let repo = self.repo()?;
        let mut index = repo.index()?;
        index.add_all(["*"], IndexAddOption::DEFAULT, None)?;
        index.update_all(["*"], None)?;
        index.write()?;
        let tree = repo.find_tree(index.write_tree()?)?;
        crash_point!("git.commit");
        let parent_id = Oid::from_str(parent)?;
        let parent = repo.find_commit(parent_id)?;
        let signature = signature()?;
        let id = repo.commit(None, &signature, &signature, message, &tree, &[&parent])?;
        let head = repo.head()?;
        let branch = head
            .name()
            .ok_or_else(|| git2::Error::from_str("the agent branch has no UTF-8 name"))?
            .to_string();
        repo.reference_matching(&branch, id, true, parent_id, "agent: commit")
            .map_err(|error| match error.code() {
                git2::ErrorCode::Modified => WorkspaceError::Moved {
                    expected: parent_id.to_string(),
                },
                _ => WorkspaceError::Git(error),
            })?;
        Ok(id.to_string())
    }

    /// The worktree of candidate `slot` under `dir` (`<state>/candidates`):
    /// a linked worktree of this one's repository on a branch of its own
    /// (`<agent branch>-lane-<slot>`), made the first time and reused after.
    /// Its commits and variant refs never touch the agent branch; only
    /// [`Workspace::advance_to`] brings a candidate's commit there.
    pub fn lane(&self, dir: &Path, slot: u32) -> Result<Workspace, WorkspaceError> {
        let path = dir.join(slot.to_string());
        if Repository::open(&path).is_ok() {
            return Ok(Workspace { path });
        }
        // Candidates open their lanes at once; libgit2's worktree add and
        // the pruning of stale ones must not interleave.
        static MAKING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _making = MAKING
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if Repository::open(&path).is_ok() {
            return Ok(Workspace { path });
        }
        let repo = self.repo()?;
        let head = repo.head()?;
        let agent_branch = head
            .shorthand()
            .ok_or_else(|| git2::Error::from_str("the agent branch has no UTF-8 name"))?
            .to_string();
        let commit = head.peel_to_commit()?;
        std::fs::create_dir_all(dir)?;
        if path.exists() {
            // A directory left half-made by a crash: made again.
            std::fs::remove_dir_all(&path)?;
        }
        prune_stale_worktrees(&repo)?;
        let branch = repo.branch(&format!("{agent_branch}-lane-{slot}"), &commit, true)?;
        let reference = branch.into_reference();
        let mut options = git2::WorktreeAddOptions::new();
        options.reference(Some(&reference));
        std::fs::create_dir_all(repo.commondir().join("worktrees"))?;
        let name = format!("agent-{}-lane-{slot}", std::process::id());
        repo.worktree(&name, &path, Some(&options))?;
        exclude_build_output(&Repository::open(&path)?)?;
        Ok(Workspace { path })
    }

    /// Moves the agent branch from `parent` to `commit` (a candidate's, made
    /// on `parent` in its lane) and checks it out: a compare-and-swap of the
    /// ref, as [`Workspace::commit_all`] does.
    pub fn advance_to(&self, commit: &str, parent: &str) -> Result<(), WorkspaceError> {
        let repo = self.repo()?;
        let branch = repo
            .head()?
            .name()
            .ok_or_else(|| git2::Error::from_str("the agent branch has no UTF-8 name"))?
            .to_string();
        let parent_id = Oid::from_str(parent)?;
        crash_point!("git.commit");
        repo.reference_matching(
            &branch,
            Oid::from_str(commit)?,
            true,
            parent_id,
            "agent: commit the chosen candidate",
        )
        .map_err(|error| match error.code() {
            git2::ErrorCode::Modified => WorkspaceError::Moved {
                expected: parent_id.to_string(),
            },
            _ => WorkspaceError::Git(error),
        })?;
        repo.checkout_head(Some(CheckoutBuilder::new().force()))?;
        Ok(())
    }

    /// Reverts `commit` with a new commit on the agent branch's head (the
    /// history stays as it was), and checks it out; returns the revert.
    pub fn revert(&self, commit: &str, message: &str) -> Result<String, WorkspaceError> {
        let repo = self.repo()?;
        let head_ref = repo.head()?;
        let branch = head_ref
            .name()
            .ok_or_else(|| git2::Error::from_str("the agent branch has no UTF-8 name"))?
            .to_string();
        let head = head_ref.peel_to_commit()?;
        let reverted = repo.find_commit(Oid::from_str(commit)?)?;
        let mut index = repo.revert_commit(&reverted, &head, 0, None)?;
        if index.has_conflicts() {
            return Err(WorkspaceError::Git(git2::Error::from_str(&format!(
                "reverting {commit} conflicts with the commits after it"
            ))));
        }
        let tree = repo.find_tree(index.write_tree_to(&repo)?)?;
        let signature = signature()?;
        let id = repo.commit(None, &signature, &signature, message, &tree, &[&head])?;
        repo.reference_matching(&branch, id, true, head.id(), "agent: revert")?;
        repo.checkout_head(Some(CheckoutBuilder::new().force()))?;
        Ok(id.to_string())
    }

    /// Keeps the worktree's change as a commit on top of `parent`, off the
    /// branch, on the variant ref of `iteration`; returns the commit. The
    /// branch and the worktree's files do not move (the index does; a
    /// rollback resets it).
    pub fn archive_change(
        &self,
        iteration: u64,
        message: &str,
        parent: &str,
    ) -> Result<String, WorkspaceError> {
        let repo = self.repo()?;
        let mut index = repo.index()?;
        index.add_all(["*"], IndexAddOption::DEFAULT, None)?;
        index.update_all(["*"], None)?;
        let tree = repo.find_tree(index.write_tree()?)?;
        let parent = repo.find_commit(Oid::from_str(parent)?)?;
        let signature = signature()?;
        let id = repo.commit(None, &signature, &signature, message, &tree, &[&parent])?;
        self.mark_variant(iteration, &id.to_string())?;
        Ok(id.to_string())
    }

    /// Points the variant ref of `iteration` at `commit` (replacing one left
    /// by an attempt that never committed).
    pub fn mark_variant(&self, iteration: u64, commit: &str) -> Result<String, WorkspaceError> {
        let repo = self.repo()?;
        let name = self.variant_ref(iteration)?;
        repo.reference(&name, Oid::from_str(commit)?, true, "agent: variant")?;
        Ok(name)
    }

    /// Deletes the variant refs of `iterations` (those that exist, with
    /// the refused change a repair turn started from): the store no longer
    /// keeps their records.
    pub fn forget_variants(&self, iterations: &[u64]) -> Result<(), WorkspaceError> {
        let repo = self.repo()?;
        for iteration in iterations {
            let name = self.variant_ref(*iteration)?;
            for name in [format!("{name}{REFUSED_SUFFIX}"), name] {
                match repo.find_reference(&name) {
                    Ok(mut reference) => reference.delete()?,
                    Err(error) if error.code() == git2::ErrorCode::NotFound => {}
                    Err(error) => return Err(error.into()),
                }
            }
        }
        Ok(())
    }

    /// The refused change of `iteration`, for a repair turn: kept on its own
    /// ref (`<variant ref>-refused`; the repaired change takes the variant
    /// ref) and applied to the worktree again; answers its commit.
    pub fn reopen_refused(&self, iteration: u64) -> Result<String, WorkspaceError> {
        let name = self.variant_ref(iteration)?;
        let repo = self.repo()?;
        let commit = repo.refname_to_id(&name)?;
        repo.reference(
            &format!("{name}{REFUSED_SUFFIX}"),
            commit,
            true,
            "agent: refused, then repaired",
        )?;
        self.apply_change(&commit.to_string())?;
        Ok(commit.to_string())
    }

    /// The variant ref of `iteration` for this worktree's instance.
    pub fn variant_ref(&self, iteration: u64) -> Result<String, WorkspaceError> {
        let repo = self.repo()?;
        let head = repo.head()?;
        let instance = head
            .shorthand()
            .and_then(|branch| branch.rsplit('/').next())
            .unwrap_or("agent")
            .to_string();
        Ok(format!("{VARIANTS_PREFIX}{instance}/{iteration}"))
    }

    /// Applies the change of a variant commit (its parent against it) to
    /// the worktree's files, leaving it uncommitted; fails, changing
    /// nothing, when it does not apply.
    pub fn apply_change(&self, commit: &str) -> Result<(), WorkspaceError> {
        let repo = self.repo()?;
        let commit = repo.find_commit(Oid::from_str(commit)?)?;
        let parent = commit.parent(0)?;
        let diff = repo.diff_tree_to_tree(Some(&parent.tree()?), Some(&commit.tree()?), None)?;
        let mut check = git2::ApplyOptions::new();
        check.check(true);
        repo.apply(&diff, git2::ApplyLocation::WorkDir, Some(&mut check))?;
        repo.apply(&diff, git2::ApplyLocation::WorkDir, None)?;
        Ok(())
    }

    /// The identity of a commit's change whatever its base: git's patch id
    /// of its first parent against it.
    pub fn change_id(&self, commit: &str) -> Result<String, WorkspaceError> {
        let repo = self.repo()?;
        let commit = repo.find_commit(Oid::from_str(commit)?)?;
        let parent = commit.parent(0)?;
        let diff = repo.diff_tree_to_tree(Some(&parent.tree()?), Some(&commit.tree()?), None)?;
        Ok(diff.patchid(None)?.to_string())
    }

    /// The commit a variant ref points at, if it exists.
    pub fn variant_commit(&self, iteration: u64) -> Result<Option<String>, WorkspaceError> {
        let repo = self.repo()?;
        let name = self.variant_ref(iteration)?;
        match repo.refname_to_id(&name) {
            Ok(id) => Ok(Some(id.to_string())),
            Err(error) if error.code() == git2::ErrorCode::NotFound => Ok(None),
            Err(error) => Err(error.into()),
        }
    }

    /// The agent's commits on the branch, newest first: (iteration, commit).
    /// Each carries its iteration in an `Iteration: N` line; other commits
    /// (the workspace's own history) are skipped.
    pub fn iteration_commits(&self) -> Result<Vec<(u64, String)>, WorkspaceError> {
        self.iterations_in(None)
    }

    /// The iterations of the agent's commits that a reset to `base` would
    /// drop (reachable from the branch head, not from `base`).
    pub fn iterations_since(&self, base: &str) -> Result<Vec<u64>, WorkspaceError> {
        Ok(self
            .iterations_in(Some(base))?
            .into_iter()
            .map(|(iteration, _)| iteration)
            .collect())
    }

    fn iterations_in(&self, hide: Option<&str>) -> Result<Vec<(u64, String)>, WorkspaceError> {
        let repo = self.repo()?;
        let mut walk = repo.revwalk()?;
        walk.push_head()?;
        if let Some(base) = hide {
            walk.hide(Oid::from_str(base)?)?;
        }
        let mut found = Vec::new();
        for id in walk {
            let commit = repo.find_commit(id?)?;
            if let Some(iteration) = iteration_of(commit.message().unwrap_or_default()) {
                found.push((iteration, commit.id().to_string()));
            }
        }
        Ok(found)
    }

    /// The messages of the agent branch's commits, newest first.
    pub fn log(&self) -> Result<Vec<String>, WorkspaceError> {
        let repo = self.repo()?;
        let mut walk = repo.revwalk()?;
        walk.push_head()?;
        walk.map(|id| {
            let commit = repo.find_commit(id?)?;
            Ok(commit.message().unwrap_or_default().to_string())
        })
        .collect()
    }
}

/// The iteration an agent's commit message names (`Iteration: N`).
pub fn iteration_of(message: &str) -> Option<u64> {
    message
        .lines()
        .find_map(|line| line.strip_prefix("Iteration: "))
        .and_then(|n| n.trim().parse().ok())
}

fn signature() -> Result<Signature<'static>, git2::Error> {
    Signature::now("agent", "agent@localhost")
}

/// Creates the agent's branch at the source's HEAD and a linked worktree of it.
/// Whether `revision` names a commit of the repository at `source`.
pub fn names_a_commit(source: &Path, revision: &str) -> bool {
    Repository::open(source)
        .and_then(|repo| repo.revparse_single(revision)?.peel_to_commit().map(|_| ()))
        .is_ok()
}

/// A moment's name for a rescue ref: milliseconds since the epoch.
fn now_stamp() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

/// A linked worktree on `branch_name`, which starts at the repository's
/// current HEAD: a new run follows the main line. A branch of that name left
/// by an earlier run whose state is gone is kept on a rescue ref, then moved.
fn add_linked_worktree(
    source: &Path,
    path: &Path,
    branch_name: &str,
    base: Option<&str>,
) -> Result<Vec<String>, WorkspaceError> {
    let repo = Repository::open(source)?;
    let head = match base {
        None => repo.head()?.peel_to_commit()?,
        Some(revision) => repo
            .revparse_single(revision)
            .and_then(|object| object.peel_to_commit())
            .map_err(|_| WorkspaceError::UnknownBase(revision.to_string()))?,
    };
    let mut notices = Vec::new();
    prune_stale_worktrees(&repo)?;
    if let Ok(old) = repo.find_branch(branch_name, BranchType::Local) {
        let old_tip = old.get().peel_to_commit()?.id();
        if old_tip != head.id() {
            let name = format!("{RESCUE_PREFIX}{}", now_stamp());
            repo.reference(&name, old_tip, false, "agent: earlier run's branch")?;
            notices.push(format!(
                "the branch {branch_name} of an earlier run was kept on {name}; this run starts from the repository's HEAD {}",
                &head.id().to_string()[..10]
            ));
        }
    }
    let branch = repo
        .branch(branch_name, &head, true)
        .map_err(|error| held_elsewhere(&repo, error, branch_name))?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let reference = branch.into_reference();
    let mut options = git2::WorktreeAddOptions::new();
    options.reference(Some(&reference));
    // Worktree names must be unique in the source repository.
    let name = format!("agent-{}", std::process::id());
    // Instances starting side by side add worktrees to one repository at
    // once: libgit2 creates `.git/worktrees` with a plain mkdir that fails
    // when another process made it a moment before, so make it here first
    // (idempotent), and try again once if a lock was taken meanwhile.
    std::fs::create_dir_all(repo.path().join("worktrees"))?;
    let added = repo.worktree(&name, path, Some(&options)).or_else(|error| {
        if matches!(
            error.code(),
            git2::ErrorCode::Locked | git2::ErrorCode::Exists
        ) {
            std::thread::sleep(std::time::Duration::from_millis(100));
            repo.worktree(&name, path, Some(&options))
        } else {
            Err(error)
        }
    });
    added.map_err(|error| held_elsewhere(&repo, error, branch_name))?;
    exclude_build_output(&Repository::open(path)?)?;
    Ok(notices)
}

/// A branch checked out by another worktree, named in one sentence with
/// the worktree that holds it (for an agent's, its state directory).
fn held_elsewhere(repo: &Repository, error: git2::Error, branch: &str) -> WorkspaceError {
    let wanted = format!("refs/heads/{branch}");
    let holder = repo.worktrees().ok().and_then(|names| {
        names.iter().flatten().find_map(|name| {
            let worktree = repo.find_worktree(name).ok()?;
            let opened = Repository::open(worktree.path()).ok()?;
            let head = opened.head().ok()?;
            (head.name() == Some(wanted.as_str())).then(|| {
                let path = worktree.path();
                // An agent's worktree is `<state>/worktree`: name the state.
                match path.file_name().and_then(|n| n.to_str()) {
                    Some("worktree") => path.parent().unwrap_or(path).display().to_string(),
                    _ => path.display().to_string(),
                }
            })
        })
    });
    match holder {
        Some(holder) => WorkspaceError::Held {
            branch: branch.to_string(),
            holder,
        },
        None => WorkspaceError::Git(error),
    }
}

/// Forgets linked worktrees of earlier agents whose directories are gone (a
/// deleted state directory), so the agent branch can be checked out again.
fn prune_stale_worktrees(repo: &Repository) -> Result<(), WorkspaceError> {
    for name in repo.worktrees()?.iter().flatten() {
        if !name.starts_with("agent-") {
            continue;
        }
        let worktree = repo.find_worktree(name)?;
        if worktree.validate().is_err() {
            worktree.prune(Some(
                git2::WorktreePruneOptions::new()
                    .valid(false)
                    .working_tree(false),
            ))?;
        }
    }
    Ok(())
}

/// Copies a directory's files (not `.git`, `target`) into a new repository and
/// commits them as the agent branch's first commit.
fn import_directory(source: &Path, path: &Path) -> Result<(), WorkspaceError> {
    // Build the import next to its final place, then rename, so a crash
    // half-way never leaves a repository that looks ready.
    let staging = path.with_extension("importing");
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    std::fs::create_dir_all(&staging)?;
    copy_tree(source, &staging)?;
    {
        let repo = Repository::init(&staging)?;
        repo.set_head(&format!("refs/heads/{AGENT_BRANCH}"))?;
        exclude_build_output(&repo)?;
        let mut index = repo.index()?;
        index.add_all(["*"], IndexAddOption::DEFAULT, None)?;
        index.write()?;
        let tree = repo.find_tree(index.write_tree()?)?;
        let signature = signature()?;
        repo.commit(
            Some("HEAD"),
            &signature,
            &signature,
            &format!("agent: import {}", source.display()),
            &tree,
            &[],
        )?;
    }
    crash_point!("worktree.import");
    std::fs::rename(&staging, path)?;
    Ok(())
}

fn exclude_build_output(repo: &Repository) -> Result<(), WorkspaceError> {
    let exclude = repo.path().join("info").join("exclude");
    if let Some(dir) = exclude.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut text = std::fs::read_to_string(&exclude).unwrap_or_default();
    if !text.lines().any(|line| line.trim() == "/target") {
        text.push_str("\n/target\n");
        std::fs::write(&exclude, text)?;
    }
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        if name == ".git" || name == "target" {
            continue;
        }
        let kind = entry.file_type()?;
        let target = to.join(&name);
        if kind.is_dir() {
            std::fs::create_dir_all(&target)?;
            copy_tree(&entry.path(), &target)?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn imported() -> (tempfile::TempDir, Workspace) {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("src-dir");
        std::fs::create_dir_all(source.join("sub")).unwrap();
        std::fs::write(source.join("a.txt"), "a\n").unwrap();
        std::fs::write(source.join("sub/b.txt"), "b\n").unwrap();
        let ws = Workspace::prepare(&source, &dir.path().join("state")).unwrap();
        (dir, ws)
    }

    #[test]
    fn rollback_restores_the_base_commit_and_leaves_nothing_untracked() {
        let (_dir, ws) = imported();
        let base = ws.head().unwrap();
        std::fs::write(ws.path.join("a.txt"), "changed\n").unwrap();
        std::fs::write(ws.path.join("new.txt"), "new\n").unwrap();
        std::fs::remove_file(ws.path.join("sub/b.txt")).unwrap();
        assert_eq!(ws.changed_files().unwrap().len(), 3);
        ws.reset_to(&base).unwrap();
        assert!(ws.changed_files().unwrap().is_empty());
        assert_eq!(ws.head().unwrap(), base);
        assert_eq!(
            std::fs::read_to_string(ws.path.join("a.txt")).unwrap(),
            "a\n"
        );
        assert!(!ws.path.join("new.txt").exists());
    }

    #[test]
    fn an_accepted_change_is_one_commit() {
        let (_dir, ws) = imported();
        let base = ws.head().unwrap();
        std::fs::write(ws.path.join("a.txt"), "better\n").unwrap();
        std::fs::write(ws.path.join("c.txt"), "c\n").unwrap();
        let commit = ws.commit_all("agent: iteration 1", &base).unwrap();
        assert_ne!(commit, base);
        assert!(ws.changed_files().unwrap().is_empty());
        let repo = Repository::open(&ws.path).unwrap();
        let head = repo.head().unwrap().peel_to_commit().unwrap();
        assert_eq!(head.parent_id(0).unwrap().to_string(), base);
        assert_eq!(ws.log().unwrap().len(), 2);
    }

    #[test]
    fn a_new_branch_starts_at_the_given_base_and_an_unknown_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("repo");
        std::fs::create_dir_all(&source).unwrap();
        let repo = Repository::init(&source).unwrap();
        let sig = signature().unwrap();
        let commit = |message: &str, file: &str| {
            std::fs::write(source.join(file), message).unwrap();
            let mut index = repo.index().unwrap();
            index.add_all(["*"], IndexAddOption::DEFAULT, None).unwrap();
            let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
            let parents: Vec<git2::Commit> = repo
                .head()
                .ok()
                .and_then(|h| h.peel_to_commit().ok())
                .into_iter()
                .collect();
            let parents: Vec<&git2::Commit> = parents.iter().collect();
            repo.commit(Some("HEAD"), &sig, &sig, message, &tree, &parents)
                .unwrap()
        };
        let first = commit("first", "a.txt");
        commit("second", "b.txt");
        let state = dir.path().join("state");
        let unknown = Workspace::prepare_with_notices(&source, &state, Some("no-such-ref"));
        assert!(matches!(unknown, Err(WorkspaceError::UnknownBase(_))));
        let (ws, _) =
            Workspace::prepare_with_notices(&source, &state, Some(&first.to_string())).unwrap();
        assert_eq!(ws.head().unwrap(), first.to_string());
        assert_eq!(ws.behind_base().unwrap().map(|(n, _)| n), Some(1));
    }

    #[test]
    fn a_commit_lands_only_on_the_parent_it_was_made_for() {
        let (_dir, ws) = imported();
        let base = ws.head().unwrap();
        std::fs::write(ws.path.join("a.txt"), "first\n").unwrap();
        let first = ws
            .commit_all("agent: iteration 1\n\nIteration: 1\n", &base)
            .unwrap();
        // A late commit made for the old head must not stack on the new one.
        std::fs::write(ws.path.join("a.txt"), "late\n").unwrap();
        let late = ws.commit_all("agent: iteration 1\n\nIteration: 1\n", &base);
        assert!(
            matches!(late, Err(WorkspaceError::Moved { .. })),
            "{late:?}"
        );
        assert_eq!(ws.head().unwrap(), first);
        assert_eq!(ws.iterations_since(&base).unwrap(), vec![1]);
    }

    #[test]
    fn a_repository_root_gets_a_linked_worktree_and_its_checkout_is_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("repo");
        std::fs::create_dir_all(&source).unwrap();
        let repo = Repository::init(&source).unwrap();
        std::fs::write(source.join("f.txt"), "f\n").unwrap();
        let mut index = repo.index().unwrap();
        index.add_all(["*"], IndexAddOption::DEFAULT, None).unwrap();
        let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
        let sig = signature().unwrap();
        repo.commit(Some("HEAD"), &sig, &sig, "init", &tree, &[])
            .unwrap();
        let user_branch = repo.head().unwrap().shorthand().unwrap().to_string();

        let ws = Workspace::prepare(&source, &dir.path().join("state")).unwrap();
        std::fs::write(ws.path.join("f.txt"), "agent\n").unwrap();
        let head = ws.head().unwrap();
        ws.commit_all("agent: iteration 1", &head).unwrap();

        assert_eq!(
            std::fs::read_to_string(source.join("f.txt")).unwrap(),
            "f\n"
        );
        assert_eq!(repo.head().unwrap().shorthand().unwrap(), user_branch);
        let branch = instance_branch(&dir.path().join("state"));
        assert!(repo.find_branch(&branch, BranchType::Local).is_ok());

        // A deleted state directory leaves a stale worktree behind in the
        // source repository; the next agent prunes it and starts again from
        // the repository's HEAD, keeping the old branch on a rescue ref.
        std::fs::remove_dir_all(dir.path().join("state")).unwrap();
        let (again, notices) =
            Workspace::prepare_with_notices(&source, &dir.path().join("state"), None).unwrap();
        assert_eq!(again.log().unwrap()[0], "init");
        assert!(
            notices[0].contains("was kept on refs/agent/rescued/"),
            "{notices:?}"
        );
        let rescued = repo
            .references_glob("refs/agent/rescued/*")
            .unwrap()
            .count();
        assert_eq!(rescued, 1);
    }
}
