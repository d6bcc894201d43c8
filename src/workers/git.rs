//! Code as git objects, for workers that share no file system with the
//! agent: a commit travels as a git bundle (v2: the commit and its whole
//! tree, its parents named as prerequisites the worker never needs), and
//! a change travels back as a patch in `git diff` form, binary included.
//! All through libgit2; nothing here needs a git server.

use std::io::Write;
use std::path::Path;

use git2::{ApplyLocation, Diff, DiffFormat, DiffOptions, Oid, Repository, build::CheckoutBuilder};

const BUNDLE_SIGNATURE: &str = "# v2 git bundle\n";

fn text(error: git2::Error) -> String {
    error.message().to_string()
}

/// Runs git work off the async runtime's threads (libgit2 blocks: a diff
/// of a large worktree, a pack of a whole tree).
pub async fn off_runtime<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| format!("git work stopped: {e}"))?
}

/// The commit `dir`'s worktree stands on.
pub fn head_commit(dir: &Path) -> Result<String, String> {
    let repo = Repository::open(dir).map_err(text)?;
    let head = repo.head().map_err(text)?.peel_to_commit().map_err(text)?;
    Ok(head.id().to_string())
}

/// A bundle of `commit` from the repository at `dir`.
pub fn bundle(dir: &Path, commit: &str) -> Result<Vec<u8>, String> {
    let repo = Repository::open(dir).map_err(text)?;
    let oid = Oid::from_str(commit).map_err(text)?;
    let found = repo.find_commit(oid).map_err(text)?;
    let mut builder = repo.packbuilder().map_err(text)?;
    // The commit with its complete tree; its history stays behind.
    builder.insert_commit(oid).map_err(text)?;
    let mut pack = git2::Buf::new();
    builder.write_buf(&mut pack).map_err(text)?;
    let mut bundle = BUNDLE_SIGNATURE.as_bytes().to_vec();
    for parent in found.parent_ids() {
        bundle.extend(format!("-{parent}\n").as_bytes());
    }
    bundle.extend(format!("{oid} refs/heads/base\n\n").as_bytes());
    bundle.extend_from_slice(&pack);
    Ok(bundle)
}

/// Adds a bundle's objects to `cache` and answers the commit it carries.
pub fn import(cache: &Repository, bundle: &[u8]) -> Result<Oid, String> {
    let rest = bundle
        .strip_prefix(BUNDLE_SIGNATURE.as_bytes())
        .ok_or("not a v2 git bundle")?;
    let end = rest
        .windows(2)
        .position(|w| w == b"\n\n")
        .ok_or("a git bundle without the end of its header")?;
    let header =
        std::str::from_utf8(&rest[..end]).map_err(|_| "a bundle header that is not text")?;
    let tip = header
        .lines()
        .find(|line| !line.starts_with('-'))
        .and_then(|line| line.split_whitespace().next())
        .ok_or("a git bundle that names no commit")?;
    let tip = Oid::from_str(tip).map_err(text)?;
    let odb = cache.odb().map_err(text)?;
    let mut writer = odb.packwriter().map_err(text)?;
    writer
        .write_all(&rest[end + 2..])
        .map_err(|e| format!("cannot store the bundle's objects: {e}"))?;
    writer.commit().map_err(text)?;
    Ok(tip)
}

/// Whether `cache` holds `commit` (its bundle need not be fetched again).
pub fn has_commit(cache: &Repository, commit: Oid) -> bool {
    cache.find_commit(commit).is_ok()
}

/// A fresh worktree in `dir` at `commit`, its objects read from `cache`
/// (a git alternate: nothing is copied), with `changes` applied on top and
/// staged, so that [`changes`] afterwards answers only what came next.
pub fn check_out(cache: &Path, commit: Oid, dir: &Path, base_changes: &str) -> Result<(), String> {
    Repository::init(dir).map_err(text)?;
    let alternates = dir.join(".git/objects/info/alternates");
    std::fs::write(
        &alternates,
        format!("{}\n", cache.join("objects").display()),
    )
    .map_err(|e| format!("cannot write {}: {e}", alternates.display()))?;
    let repo = Repository::open(dir).map_err(text)?;
    repo.set_head_detached(commit).map_err(text)?;
    repo.checkout_head(Some(CheckoutBuilder::new().force()))
        .map_err(text)?;
    if !base_changes.is_empty() {
        let diff = Diff::from_buffer(base_changes.as_bytes()).map_err(text)?;
        repo.apply(&diff, ApplyLocation::Both, None).map_err(text)?;
    }
    Ok(())
}

/// What the worktree at `dir` holds beyond its index (beyond `HEAD` when
/// `since_head`): edits, deletions and new files that are not ignored.
pub fn changes(dir: &Path, since_head: bool) -> Result<String, String> {
    let repo = Repository::open(dir).map_err(text)?;
    let mut options = DiffOptions::new();
    options
        .include_untracked(true)
        .recurse_untracked_dirs(true)
        .show_untracked_content(true)
        .show_binary(true);
    let diff = if since_head {
        let tree = repo
            .head()
            .and_then(|head| head.peel_to_tree())
            .map_err(text)?;
        repo.diff_tree_to_workdir_with_index(Some(&tree), Some(&mut options))
    } else {
        repo.diff_index_to_workdir(None, Some(&mut options))
    }
    .map_err(text)?;
    let mut patch = Vec::new();
    diff.print(DiffFormat::Patch, |_, _, line| {
        if matches!(line.origin(), '+' | '-' | ' ') {
            patch.push(line.origin() as u8);
        }
        patch.extend_from_slice(line.content());
        true
    })
    .map_err(text)?;
    String::from_utf8(patch).map_err(|_| {
        "the change holds text that is not UTF-8, which the queue's JSON cannot carry".to_string()
    })
}

/// Applies a patch made by [`changes`] to the worktree at `dir`.
pub fn apply(dir: &Path, patch: &str) -> Result<(), String> {
    if patch.is_empty() {
        return Ok(());
    }
    let repo = Repository::open(dir).map_err(text)?;
    let diff = Diff::from_buffer(patch.as_bytes()).map_err(text)?;
    repo.apply(&diff, ApplyLocation::WorkDir, None)
        .map_err(|e| format!("the worker's change does not apply here: {}", e.message()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit_all(repo: &Repository, message: &str) -> Oid {
        let mut index = repo.index().unwrap();
        index
            .add_all(["*"], git2::IndexAddOption::DEFAULT, None)
            .unwrap();
        index.write().unwrap();
        let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
        let signature = git2::Signature::now("t", "t@example.com").unwrap();
        let parents: Vec<git2::Commit> = repo
            .head()
            .ok()
            .and_then(|h| h.peel_to_commit().ok())
            .into_iter()
            .collect();
        let parents: Vec<&git2::Commit> = parents.iter().collect();
        repo.commit(
            Some("HEAD"),
            &signature,
            &signature,
            message,
            &tree,
            &parents,
        )
        .unwrap()
    }

    /// A commit crosses as a bundle into a cache, a job's worktree starts
    /// from it with the agent's uncommitted changes, and the job's own
    /// change (an edit, a new file, a deletion, a binary file) comes back
    /// as a patch that makes the agent's worktree the same.
    #[test]
    fn a_change_made_elsewhere_lands_here_as_it_was_made() {
        let root = tempfile::tempdir().unwrap();
        let agent = root.path().join("agent");
        let repo = Repository::init(&agent).unwrap();
        std::fs::write(agent.join("a.txt"), "one\n").unwrap();
        std::fs::write(agent.join("gone.txt"), "bye\n").unwrap();
        commit_all(&repo, "first");
        std::fs::write(agent.join("a.txt"), "one\ntwo\n").unwrap();
        let base = commit_all(&repo, "second");
        std::fs::write(agent.join("dirty.txt"), "uncommitted\n").unwrap();
        let base_changes = changes(&agent, true).unwrap();
        assert!(base_changes.contains("dirty.txt"), "{base_changes}");

        let bundle = bundle(&agent, &base.to_string()).unwrap();
        let cache_dir = root.path().join("cache.git");
        let cache = Repository::init_bare(&cache_dir).unwrap();
        assert!(!has_commit(&cache, base));
        assert_eq!(import(&cache, &bundle).unwrap(), base);
        assert!(has_commit(&cache, base));

        let job = root.path().join("job");
        check_out(&cache_dir, base, &job, &base_changes).unwrap();
        assert_eq!(
            std::fs::read_to_string(job.join("a.txt")).unwrap(),
            "one\ntwo\n"
        );
        assert!(job.join("dirty.txt").is_file());
        std::fs::write(job.join("a.txt"), "one\ntwo\nthree\n").unwrap();
        std::fs::write(job.join("new.rs"), "fn main() {}\n").unwrap();
        std::fs::write(job.join("blob.bin"), [0u8, 159, 146, 150, 255]).unwrap();
        std::fs::remove_file(job.join("gone.txt")).unwrap();
        let patch = changes(&job, false).unwrap();
        assert!(
            !patch.contains("dirty.txt"),
            "only the job's own change: {patch}"
        );

        apply(&agent, &patch).unwrap();
        assert_eq!(
            std::fs::read_to_string(agent.join("a.txt")).unwrap(),
            "one\ntwo\nthree\n"
        );
        assert_eq!(
            std::fs::read_to_string(agent.join("new.rs")).unwrap(),
            "fn main() {}\n"
        );
        assert_eq!(
            std::fs::read(agent.join("blob.bin")).unwrap(),
            [0u8, 159, 146, 150, 255]
        );
        assert!(!agent.join("gone.txt").exists());
        assert!(agent.join("dirty.txt").is_file());
    }

    #[test]
    fn what_is_not_a_bundle_is_refused_with_why() {
        let root = tempfile::tempdir().unwrap();
        let cache = Repository::init_bare(root.path()).unwrap();
        assert_eq!(import(&cache, b"hello").unwrap_err(), "not a v2 git bundle");
        assert!(import(&cache, b"# v2 git bundle\nabc").is_err());
    }
}
