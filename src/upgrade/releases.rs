//! `<state>/releases/`: every release's binary at a versioned path
//! (`<release>/agent`), and the two pointers of OTP's release handler —
//! `current` (what the keeper starts) and `permanent` (what it falls back
//! to) — each a one-line file replaced atomically (a temporary file, synced,
//! renamed over it, the directory synced). A binary is staged and then
//! renamed into place, never written over one that may be running.
//!
//! The release named [`INSTALLED`] is the binary the operator installed
//! (the keeper's own): no file here holds it, and it is permanent until a
//! promotion names another.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The release that is the operator's installed binary.
pub const INSTALLED: &str = "installed";

/// A release's binary inside its directory.
const BINARY: &str = "agent";

/// Which pointer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pointer {
    /// The release the keeper starts.
    Current,
    /// The release the keeper falls back to.
    Permanent,
}

impl Pointer {
    fn file(self) -> &'static str {
        match self {
            Pointer::Current => "current",
            Pointer::Permanent => "permanent",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: {what}")]
    Malformed { path: PathBuf, what: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ReleaseError + '_ {
    move |error| ReleaseError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// What the keeper boots at its start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Boot {
    pub release: String,
    /// The release `current` named when it was never made permanent: the
    /// keeper or the machine went down during its probation, so it is not
    /// booted again (OTP's rule).
    pub abandoned: Option<String>,
}

/// The releases of one state directory.
#[derive(Debug, Clone)]
pub struct Releases {
    pub dir: PathBuf,
}

impl Releases {
    pub fn of_state(state_dir: &Path) -> Releases {
        Releases {
            dir: state_dir.join("releases"),
        }
    }

    /// The release `pointer` names; `None` when it was never written.
    pub fn read(&self, pointer: Pointer) -> Result<Option<String>, ReleaseError> {
        let path = self.dir.join(pointer.file());
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(io(&path)(error)),
        };
        let release = text.trim();
        check_name(release).map_err(|what| ReleaseError::Malformed {
            path: path.clone(),
            what,
        })?;
        Ok(Some(release.to_string()))
    }

    /// Points `pointer` at `release`, atomically and durably.
    pub fn point(&self, pointer: Pointer, release: &str) -> Result<(), ReleaseError> {
        check_name(release).map_err(|what| ReleaseError::Malformed {
            path: self.dir.join(pointer.file()),
            what,
        })?;
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let path = self.dir.join(pointer.file());
        let staged = self
            .dir
            .join(format!(".{}.{}", pointer.file(), std::process::id()));
        let mut file = std::fs::File::create(&staged).map_err(io(&staged))?;
        writeln!(file, "{release}").map_err(io(&staged))?;
        file.sync_all().map_err(io(&staged))?;
        std::fs::rename(&staged, &path).map_err(io(&path))?;
        sync_dir(&self.dir)
    }

    /// Copies `binary` in as `release` (staged beside, then renamed): its
    /// path, runnable.
    pub fn stage(&self, release: &str, binary: &Path) -> Result<PathBuf, ReleaseError> {
        use std::os::unix::fs::PermissionsExt;
        check_name(release).map_err(|what| ReleaseError::Malformed {
            path: self.dir.join(release),
            what,
        })?;
        let dir = self.dir.join(release);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let staged = dir.join(format!(".{BINARY}.staged"));
        std::fs::copy(binary, &staged).map_err(io(binary))?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o755))
            .map_err(io(&staged))?;
        std::fs::File::open(&staged)
            .and_then(|f| f.sync_all())
            .map_err(io(&staged))?;
        let path = dir.join(BINARY);
        std::fs::rename(&staged, &path).map_err(io(&path))?;
        sync_dir(&dir)?;
        Ok(path)
    }

    /// The binary of `release`; [`INSTALLED`] is `installed`.
    pub fn binary(&self, release: &str, installed: &Path) -> PathBuf {
        if release == INSTALLED {
            installed.to_path_buf()
        } else {
            self.dir.join(release).join(BINARY)
        }
    }

    /// What to boot: the permanent release (the installed one when none
    /// was promoted). A `current` that names another release was on
    /// probation when everything went down: it is abandoned and `current`
    /// is pointed back at the permanent release first.
    pub fn boot(&self) -> Result<Boot, ReleaseError> {
        let permanent = self
            .read(Pointer::Permanent)?
            .unwrap_or_else(|| INSTALLED.to_string());
        let current = self.read(Pointer::Current)?;
        let abandoned = current.filter(|current| *current != permanent);
        if abandoned.is_some() || !self.dir.join(Pointer::Current.file()).exists() {
            self.point(Pointer::Current, &permanent)?;
        }
        Ok(Boot {
            release: permanent,
            abandoned,
        })
    }
}

/// A release name is one path component of letters, digits, `.`, `-`, `_`
/// (a commit id, a version).
fn check_name(name: &str) -> Result<(), String> {
    let fine = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if fine {
        Ok(())
    } else {
        Err(format!(
            "expected a release name (letters, digits, '.', '-', '_'), found {name:?}"
        ))
    }
}

fn sync_dir(dir: &Path) -> Result<(), ReleaseError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_state_boots_the_installed_binary_and_says_so_in_current() {
        let dir = tempfile::tempdir().unwrap();
        let releases = Releases::of_state(dir.path());
        let boot = releases.boot().unwrap();
        assert_eq!(boot.release, INSTALLED);
        assert_eq!(boot.abandoned, None);
        assert_eq!(
            releases.read(Pointer::Current).unwrap().as_deref(),
            Some(INSTALLED)
        );
        assert_eq!(releases.read(Pointer::Permanent).unwrap(), None);
        let installed = Path::new("/usr/local/bin/agent");
        assert_eq!(releases.binary(INSTALLED, installed), installed);
    }

    #[test]
    fn a_release_never_made_permanent_is_not_booted_again() {
        let dir = tempfile::tempdir().unwrap();
        let releases = Releases::of_state(dir.path());
        releases.point(Pointer::Permanent, "1a2b3c").unwrap();
        releases.point(Pointer::Current, "4d5e6f").unwrap();
        let boot = releases.boot().unwrap();
        assert_eq!(boot.release, "1a2b3c");
        assert_eq!(boot.abandoned.as_deref(), Some("4d5e6f"));
        assert_eq!(
            releases.read(Pointer::Current).unwrap().as_deref(),
            Some("1a2b3c"),
            "current points back at the permanent release"
        );
        // Booted again, nothing is abandoned any more.
        assert_eq!(releases.boot().unwrap().abandoned, None);
    }

    #[test]
    fn a_staged_binary_is_runnable_at_its_versioned_path_and_nothing_is_left_beside_it() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let built = dir.path().join("built");
        std::fs::write(&built, "#!/bin/sh\necho 7\n").unwrap();
        let releases = Releases::of_state(dir.path());
        let path = releases.stage("4d5e6f", &built).unwrap();
        assert_eq!(path, releases.binary("4d5e6f", Path::new("/x")));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        let entries: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(entries, ["agent"]);
    }

    #[test]
    fn a_pointer_that_is_not_a_release_name_is_an_error_naming_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let releases = Releases::of_state(dir.path());
        std::fs::create_dir_all(&releases.dir).unwrap();
        std::fs::write(releases.dir.join("permanent"), "../../bin/sh\n").unwrap();
        let error = releases.boot().unwrap_err().to_string();
        assert!(
            error.contains("releases/permanent: expected a release name"),
            "{error}"
        );
        assert!(releases.point(Pointer::Current, "").is_err());
    }
}
