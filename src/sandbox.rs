//! The confinement every Claude Code job, offline capability, validation and
//! fitness command runs in: bubblewrap (`bwrap`) with the whole filesystem
//! read-only, the worktree (and what a job must write, such as its own
//! Claude config directory) writable, the state directory and the user's
//! checkout hidden under empty tmpfs mounts, a private `/tmp`, its own PID
//! namespace, and no network unless the caller allows it. The user's
//! `.git` stays readable (read-only) so `git diff` and `git log` work in
//! the worktree, whose `.git` file points into it.
//!
//! Whether bubblewrap works is probed once at start: `auto` turns the
//! sandbox off with one warning where it cannot run (no user namespaces, no
//! `bwrap`), `on` refuses to start there, `off` is the operator's choice.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::process::{self, CommandSpec};

/// `[sandbox] enabled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enabled {
    /// On where bubblewrap works, else off with one warning.
    Auto,
    /// Refuse to start where bubblewrap does not work.
    On,
    Off,
}

/// `[sandbox]` in the configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxConfig {
    pub enabled: Enabled,
    /// The bubblewrap executable.
    pub program: PathBuf,
    /// Claude Code jobs reach the network (they need their API).
    pub job_network: bool,
    /// Validation, fitness and offline capabilities reach the network.
    pub check_network: bool,
    /// More paths every confined command may write (e.g. a shared cache).
    pub writable: Vec<PathBuf>,
}

/// What a confined command may reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// A Claude Code job.
    Job,
    /// A check (validation, fitness) or an offline capability.
    Check,
    /// Validation on the unchanged base, once per run: the one check that
    /// may fetch dependencies (network as for jobs, cargo's home writable),
    /// so that the checks of changes can run offline from cargo's cache.
    Baseline,
}

/// cargo's home, where fetched dependencies go.
fn cargo_home() -> Option<PathBuf> {
    std::env::var_os("CARGO_HOME")
        .filter(|home| !home.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
}

/// A working bubblewrap and what it hides.
#[derive(Debug, Clone, PartialEq)]
pub struct Sandbox {
    program: PathBuf,
    /// Directories hidden under empty tmpfs mounts.
    hidden: Vec<PathBuf>,
    /// Directories whose `.git` stays readable inside a hidden one.
    git_dirs: Vec<PathBuf>,
    writable: Vec<PathBuf>,
    job_network: bool,
    check_network: bool,
}

impl Sandbox {
    /// Probes bubblewrap as configured. `Ok(None)`: off, by choice or
    /// (with `auto`) because it cannot run here, which is logged once.
    /// `hidden` are the state directory and the user's checkout.
    pub async fn probe(
        config: &SandboxConfig,
        hidden: &[PathBuf],
    ) -> Result<Option<Sandbox>, String> {
        if config.enabled == Enabled::Off {
            tracing::info!("sandbox off ([sandbox] enabled = \"off\")");
            return Ok(None);
        }
        let absolute = |path: &Path| std::path::absolute(path).unwrap_or_else(|_| path.into());
        let hidden: Vec<PathBuf> = hidden.iter().map(|p| absolute(p)).collect();
        let sandbox = Sandbox {
            check_network: config.check_network,
            ..Sandbox::given(
                config.program.clone(),
                hidden,
                config.writable.iter().map(|p| absolute(p)).collect(),
                config.job_network,
            )
        };
        match sandbox.works().await {
            Ok(()) => Ok(Some(sandbox)),
            Err(why) if config.enabled == Enabled::On => Err(format!(
                "[sandbox] enabled = \"on\" but bubblewrap cannot run here: {why}"
            )),
            Err(why) => {
                tracing::warn!(
                    "sandbox off: bubblewrap cannot run here ({why}); Claude Code jobs and checks can write anywhere this user can. Install bubblewrap and allow user namespaces, or set [sandbox] enabled = \"off\" to say so"
                );
                Ok(None)
            }
        }
    }

    async fn works(&self) -> Result<(), String> {
        let cwd = std::env::temp_dir();
        let spec = self.wrap(
            CommandSpec {
                program: "true".into(),
                args: Vec::new(),
                cwd: cwd.clone(),
                env: Vec::new(),
                timeout: Duration::from_secs(15),
            },
            Reach::Check,
            &[],
        );
        let finished = process::run(&spec).await.map_err(|e| e.to_string())?;
        if finished.success() {
            Ok(())
        } else {
            Err(finished.first_error_line())
        }
    }

    /// `spec` confined: its working directory and `extra` writable, the rest
    /// as described in the module's documentation.
    pub fn wrap(&self, spec: CommandSpec, reach: Reach, extra: &[&Path]) -> CommandSpec {
        let mut args: Vec<String> = Vec::new();
        let mut push = |flag: &str, paths: &[&Path]| {
            args.push(flag.into());
            args.extend(paths.iter().map(|p| p.display().to_string()));
        };
        push("--ro-bind", &[Path::new("/"), Path::new("/")]);
        push("--dev", &[Path::new("/dev")]);
        push("--proc", &[Path::new("/proc")]);
        push("--tmpfs", &[Path::new("/tmp")]);
        for path in &self.writable {
            if path.exists() {
                push("--bind", &[path, path]);
            }
        }
        for dir in &self.hidden {
            if dir.exists() {
                push("--tmpfs", &[dir]);
            }
        }
        for git in &self.git_dirs {
            push("--ro-bind", &[git, git]);
        }
        // A program under `/tmp` or a hidden directory (a tool unpacked
        // there) stays runnable, read-only.
        for program in self.hidden_programs(&spec.program) {
            push("--ro-bind", &[&program, &program]);
        }
        for path in std::iter::once(spec.cwd.as_path()).chain(extra.iter().copied()) {
            push("--bind", &[path, path]);
        }
        if reach == Reach::Baseline
            && let Some(home) = cargo_home().filter(|home| home.is_dir())
        {
            push("--bind", &[&home, &home]);
        }
        let network = match reach {
            Reach::Job | Reach::Baseline => self.job_network,
            Reach::Check => self.check_network,
        };
        let mut env = spec.env;
        if !network {
            args.push("--unshare-net".into());
            // cargo resolves from its cache instead of failing on the index.
            env.push(("CARGO_NET_OFFLINE".into(), "true".into()));
        }
        args.extend(["--unshare-pid", "--die-with-parent", "--chdir"].map(String::from));
        args.push(spec.cwd.display().to_string());
        args.push("--".into());
        args.push(spec.program.display().to_string());
        args.extend(spec.args);
        CommandSpec {
            program: self.program.clone(),
            args,
            cwd: spec.cwd,
            env,
            timeout: spec.timeout,
        }
    }

    /// `program` (and what its symlink points at) when the sandbox would
    /// hide it.
    fn hidden_programs(&self, program: &Path) -> Vec<PathBuf> {
        let Some(found) = process::find_executable(program) else {
            return Vec::new();
        };
        let found = std::path::absolute(&found).unwrap_or(found);
        let canonical = found.canonicalize().unwrap_or_else(|_| found.clone());
        let hidden = |path: &Path| {
            path.starts_with("/tmp") || self.hidden.iter().any(|dir| path.starts_with(dir))
        };
        let mut programs: Vec<PathBuf> = [found, canonical]
            .into_iter()
            .filter(|path| hidden(path))
            .collect();
        programs.dedup();
        programs
    }

    /// The arguments that give `agent mcp-serve` the same sandbox.
    pub fn serve_args(&self) -> Vec<String> {
        let mut args = vec![
            "--sandbox-bwrap".to_string(),
            self.program.display().to_string(),
        ];
        for dir in &self.hidden {
            args.extend(["--sandbox-hide".to_string(), dir.display().to_string()]);
        }
        for path in &self.writable {
            args.extend(["--sandbox-writable".to_string(), path.display().to_string()]);
        }
        if !self.job_network {
            args.push("--sandbox-no-network".into());
        }
        args
    }

    /// A sandbox hiding `hidden` (their `.git` readable) with checks
    /// offline; also the one `agent mcp-serve` is given by
    /// [`Sandbox::serve_args`], which the agent probed already.
    pub fn given(
        program: PathBuf,
        hidden: Vec<PathBuf>,
        writable: Vec<PathBuf>,
        job_network: bool,
    ) -> Sandbox {
        Sandbox {
            program,
            git_dirs: hidden
                .iter()
                .map(|dir| dir.join(".git"))
                .filter(|git| git.exists())
                .collect(),
            hidden,
            writable,
            job_network,
            check_network: false,
        }
    }
}

/// Wraps `spec` when there is a sandbox.
pub fn confine(sandbox: Option<&Sandbox>, spec: CommandSpec, reach: Reach) -> CommandSpec {
    match sandbox {
        Some(sandbox) => sandbox.wrap(spec, reach, &[]),
        None => spec,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bwrap_works() -> bool {
        let works = process::find_executable(Path::new("bwrap")).is_some();
        assert!(
            works || std::env::var_os("CI").is_none(),
            "CI must install bubblewrap (see .ci/run)"
        );
        works
    }

    #[tokio::test]
    async fn a_program_under_tmp_runs_confined_and_writes_only_its_worktree() {
        if !bwrap_works() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (worktree, hidden) = (dir.path().join("worktree"), dir.path().join("checkout"));
        std::fs::create_dir_all(&worktree).unwrap();
        std::fs::create_dir_all(&hidden).unwrap();
        std::fs::write(hidden.join("secret"), "s").unwrap();
        let script = dir.path().join("tool.sh");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\ntouch here {0}/outside\ncat {1}/secret 2>/dev/null && echo visible\necho ran\n",
                dir.path().display(),
                hidden.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let sandbox = Sandbox::given("bwrap".into(), vec![hidden.clone()], Vec::new(), false);
        let spec = CommandSpec {
            program: script.clone(),
            args: Vec::new(),
            cwd: worktree.clone(),
            env: Vec::new(),
            timeout: Duration::from_secs(20),
        };
        let finished = process::run(&sandbox.wrap(spec, Reach::Check, &[]))
            .await
            .unwrap();
        assert_eq!(finished.stdout, "ran\n", "{finished:?}");
        assert!(worktree.join("here").exists(), "the worktree is writable");
        assert!(!dir.path().join("outside").exists(), "nothing else is");
    }
}
