//! How Claude Code jobs log in, and the config directory each job gets.
//!
//! OAuth refresh tokens rotate: the first process that refreshes makes every
//! other copy of the old token stale, the user's own login included, and
//! the failures come as 401s hours later. So a login file is never copied.
//! With a file login every job's config directory holds a symbolic link to
//! the one `.credentials.json`; the CLI writes a refreshed login by renaming
//! a new file over that link (checked in 2.1.197), so when a job ends the
//! agent moves what it wrote back over the one file and links it again.
//! Jobs with a file login therefore run one at a time ([`Login::serial`]).
//! The long-lived forms — `CLAUDE_CODE_OAUTH_TOKEN` from `claude
//! setup-token`, `ANTHROPIC_API_KEY` — do not rotate: jobs inherit them and
//! run as many at once as configured.

use std::path::PathBuf;

/// The variable that moves Claude Code's configuration (its `.claude.json`,
/// credentials, sessions) to another directory.
pub const CONFIG_DIR_VAR: &str = "CLAUDE_CONFIG_DIR";

/// The login file inside a Claude config directory.
pub const CREDENTIALS: &str = ".credentials.json";

/// The files a job's config directory starts with, copied: the CLI's state
/// and the user's settings (neither is a login).
const SEEDED: [&str; 2] = [".claude.json", "settings.json"];

/// How many job config directories are kept (the newest; the sessions in
/// them help to read what a recent job did).
const KEPT_CONFIG_DIRS: usize = 20;

/// What Claude Code jobs authenticate with, found in this process's
/// environment and the user's config directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Login {
    /// `CLAUDE_CODE_OAUTH_TOKEN` (from `claude setup-token`): long-lived.
    OauthToken,
    /// `ANTHROPIC_API_KEY`.
    ApiKey,
    /// A `.credentials.json` written by `claude /login`; its refresh token
    /// rotates.
    File(PathBuf),
    /// None found (the jobs will say "Not logged in").
    Missing,
}

impl Login {
    /// The login jobs started now would use.
    pub fn detect() -> Login {
        let set = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
        if set("CLAUDE_CODE_OAUTH_TOKEN") {
            Login::OauthToken
        } else if set("ANTHROPIC_API_KEY") {
            Login::ApiKey
        } else {
            let file = user_config_dir().map(|dir| dir.join(CREDENTIALS));
            match file {
                Some(file) if file.is_file() => Login::File(file),
                _ => Login::Missing,
            }
        }
    }

    /// Whether jobs must run one at a time: a file login rotates.
    pub fn serial(&self) -> bool {
        matches!(self, Login::File(_))
    }

    /// One line for the start banner.
    pub fn describe(&self) -> String {
        match self {
            Login::OauthToken => "CLAUDE_CODE_OAUTH_TOKEN (long-lived, does not rotate)".into(),
            Login::ApiKey => "ANTHROPIC_API_KEY (does not rotate)".into(),
            Login::File(file) => format!(
                "the login file {} (its refresh token rotates: every job links to it, jobs run one at a time)",
                file.display()
            ),
            Login::Missing => {
                "none found (no CLAUDE_CODE_OAUTH_TOKEN, ANTHROPIC_API_KEY or login file)".into()
            }
        }
    }
}

/// The user's Claude config directory: `$CLAUDE_CONFIG_DIR`, else `~/.claude`.
fn user_config_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os(CONFIG_DIR_VAR).filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".claude"))
}

/// Where the user's copied (non-login) files live, file by file: in
/// `$CLAUDE_CONFIG_DIR` when set, else `~/.claude.json` and
/// `~/.claude/settings.json`.
fn seed_files() -> Vec<(PathBuf, &'static str)> {
    if let Some(dir) = std::env::var_os(CONFIG_DIR_VAR).filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        return SEEDED.iter().map(|file| (dir.join(file), *file)).collect();
    }
    let Some(home) = std::env::var_os("HOME").map(PathBuf::from) else {
        return Vec::new();
    };
    vec![
        (home.join(".claude.json"), SEEDED[0]),
        (home.join(".claude/settings.json"), SEEDED[1]),
    ]
}

/// Per-job Claude config directories under `base`: concurrent `claude -p`
/// runs sharing one `~/.claude.json` corrupt it, and a job's sessions (for
/// `--resume`) stay with it.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigDirs {
    pub base: PathBuf,
}

/// One job's config directory, and the login file it links to.
#[derive(Debug, Clone, PartialEq)]
pub struct JobConfigDir {
    pub dir: PathBuf,
    pub login: Option<PathBuf>,
}

impl ConfigDirs {
    /// Makes the directory of one job: the user's settings copied in, and
    /// with a file login a link to that one file.
    pub fn make(&self, label: &str, login: &Login) -> Result<JobConfigDir, String> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "{}-{}-{}",
            crate::store::now_ms(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            label.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "_")
        );
        let dir = self.base.join(name);
        let io = |e: std::io::Error| format!("cannot make {}: {e}", dir.display());
        std::fs::create_dir_all(&dir).map_err(io)?;
        for (from, file) in seed_files() {
            if from.is_file() {
                std::fs::copy(&from, dir.join(file)).map_err(io)?;
            }
        }
        let login = match login {
            Login::File(file) => {
                std::os::unix::fs::symlink(file, dir.join(CREDENTIALS)).map_err(io)?;
                Some(file.clone())
            }
            _ => None,
        };
        self.prune();
        Ok(JobConfigDir { dir, login })
    }

    /// The config directory session `session` was written in (the CLI
    /// keeps it under `projects/<cwd>/<session>.jsonl` and resumes it only
    /// from there), with a file login linked again.
    pub fn of_session(&self, session: &str, login: &Login) -> Result<JobConfigDir, String> {
        let file = format!("{session}.jsonl");
        let found = std::fs::read_dir(&self.base)
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.path())
            .filter(|dir| {
                std::fs::read_dir(dir.join("projects"))
                    .into_iter()
                    .flatten()
                    .flatten()
                    .any(|project| project.path().join(&file).is_file())
            })
            .max();
        let Some(dir) = found else {
            return Err(format!(
                "cannot resume session {session}: no job config directory under {} holds it",
                self.base.display()
            ));
        };
        let login = match login {
            Login::File(file) => {
                let here = dir.join(CREDENTIALS);
                if std::fs::symlink_metadata(&here).is_err() {
                    std::os::unix::fs::symlink(file, &here).map_err(|e| {
                        format!("cannot link the login into {}: {e}", dir.display())
                    })?;
                }
                Some(file.clone())
            }
            _ => None,
        };
        Ok(JobConfigDir { dir, login })
    }

    fn prune(&self) {
        let Ok(entries) = std::fs::read_dir(&self.base) else {
            return;
        };
        let mut dirs: Vec<(u64, u64, PathBuf)> = entries
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().to_string_lossy().into_owned();
                let mut parts = name.splitn(3, '-');
                let ms = parts.next()?.parse().ok()?;
                let n = parts.next()?.parse().ok()?;
                Some((ms, n, entry.path()))
            })
            .collect();
        dirs.sort();
        let excess = dirs.len().saturating_sub(KEPT_CONFIG_DIRS);
        for (_, _, dir) in dirs.into_iter().take(excess) {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl JobConfigDir {
    /// After the job: when it refreshed the login (the CLI renamed a new
    /// file over the link), that file replaces the one login file — by a
    /// rename next to it, so a reader never sees half a file — and the link
    /// is made again for a resumed turn. Says whether it did.
    pub fn settle(&self) -> Result<bool, String> {
        let Some(login) = &self.login else {
            return Ok(false);
        };
        let here = self.dir.join(CREDENTIALS);
        let refreshed = match std::fs::symlink_metadata(&here) {
            Ok(meta) => meta.file_type().is_file(),
            Err(_) => false,
        };
        if !refreshed {
            return Ok(false);
        }
        let fail = |e: std::io::Error| {
            format!(
                "cannot write the refreshed login back to {}: {e}",
                login.display()
            )
        };
        let staged = login.with_extension(format!("json.agent-{}", std::process::id()));
        std::fs::copy(&here, &staged).map_err(fail)?;
        std::fs::rename(&staged, login).map_err(fail)?;
        std::fs::remove_file(&here).map_err(fail)?;
        std::os::unix::fs::symlink(login, &here).map_err(fail)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_config_directories_are_distinct_and_only_the_newest_are_kept() {
        let base = tempfile::tempdir().unwrap();
        let dirs = ConfigDirs {
            base: base.path().to_path_buf(),
        };
        let made: Vec<PathBuf> = (0..KEPT_CONFIG_DIRS + 2)
            .map(|i| dirs.make(&format!("job-{i}"), &Login::Missing).unwrap().dir)
            .collect();
        let left = std::fs::read_dir(base.path()).unwrap().count();
        assert_eq!(left, KEPT_CONFIG_DIRS);
        assert!(!made[0].exists() && !made[1].exists(), "the oldest go");
        assert!(made[KEPT_CONFIG_DIRS + 1].exists(), "the newest stays");
    }

    #[test]
    fn a_file_login_is_linked_and_a_refreshed_one_goes_back_to_the_one_file() {
        let home = tempfile::tempdir().unwrap();
        let login = home.path().join(CREDENTIALS);
        std::fs::write(&login, "old").unwrap();
        let dirs = ConfigDirs {
            base: home.path().join("jobs"),
        };
        let job = dirs.make("job-1", &Login::File(login.clone())).unwrap();
        let link = job.dir.join(CREDENTIALS);
        assert_eq!(std::fs::read_link(&link).unwrap(), login);
        assert!(!job.settle().unwrap(), "nothing refreshed, nothing written");
        // What the CLI does on a refresh: a new file renamed over the link.
        std::fs::write(job.dir.join("new"), "refreshed").unwrap();
        std::fs::rename(job.dir.join("new"), &link).unwrap();
        assert!(job.settle().unwrap());
        assert_eq!(std::fs::read_to_string(&login).unwrap(), "refreshed");
        assert_eq!(std::fs::read_link(&link).unwrap(), login, "linked again");
    }
}
