//! The confinement every Claude Code job, offline capability, validation and
//! fitness command runs in: bubblewrap (`bwrap`) with the whole filesystem
//! read-only, the worktree (and what a job must write, such as its own
//! Claude config directory) writable, the state directory and the user's
//! checkout hidden under empty tmpfs mounts, a private `/tmp`, its own PID
//! namespace, and no network unless the caller allows it. The user's
//! `.git` stays readable (read-only) so `git diff` and `git log` work in
//! the worktree, whose `.git` file points into it.
//!
//! Whether bubblewrap works is probed once at start, by running `true`
//! confined exactly as the run's commands will be (in the worktree, with the
//! state directory and the checkout hidden and every writable path bound,
//! for each kind of reach): `auto` turns the sandbox off with one warning
//! where that fails (no user namespaces, no `bwrap`, a bind it refuses),
//! `on` refuses to start there, `off` is the operator's choice.
//!
//! Every path given here is absolute (the configuration made it so): a
//! confined command runs in another directory (`--chdir`), where a relative
//! bind source would name another path or none. When bubblewrap itself
//! cannot set up a confined command later, [`start_failure`] tells that
//! apart from the command's own failure, so it is reported as the sandbox's
//! and never blamed on the workspace.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::domain::{AbsolutePath, Program};
use crate::process::{self, CommandSpec, Ending, Finished};

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
    pub program: Program,
    /// Claude Code jobs reach the network (they need their API).
    pub job_network: bool,
    /// Validation, fitness and offline capabilities reach the network.
    pub check_network: bool,
    /// More paths every confined command may write (e.g. a shared cache).
    pub writable: Vec<AbsolutePath>,
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
    program: Program,
    /// Directories hidden under empty tmpfs mounts.
    hidden: Vec<PathBuf>,
    /// Directories whose `.git` stays readable inside a hidden one.
    git_dirs: Vec<PathBuf>,
    writable: Vec<PathBuf>,
    job_network: bool,
    check_network: bool,
}

impl Sandbox {
    /// Probes bubblewrap as configured, with the run's own binds: `true`
    /// confined in `worktree` for each reach. `Ok(None)`: off, by choice or
    /// (with `auto`) because it cannot run here, which is logged once.
    /// `hidden` are the state directory and the user's checkout.
    pub async fn probe(
        config: &SandboxConfig,
        hidden: &[AbsolutePath],
        worktree: &Path,
    ) -> Result<Option<Sandbox>, String> {
        if config.enabled == Enabled::Off {
            tracing::info!("sandbox off ([sandbox] enabled = \"off\")");
            return Ok(None);
        }
        let sandbox = Sandbox {
            check_network: config.check_network,
            ..Sandbox::given(
                config.program.clone(),
                hidden.to_vec(),
                config.writable.clone(),
                config.job_network,
            )
        };
        match sandbox.works(worktree).await {
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

    /// Runs `true` confined in `worktree` as each reach confines, so that
    /// what would fail later (a bind source that is missing, a refused
    /// option, no network namespace) fails here, once, with its reason.
    async fn works(&self, worktree: &Path) -> Result<(), String> {
        for reach in [Reach::Check, Reach::Job, Reach::Baseline] {
            let spec = self.wrap(
                CommandSpec {
                    program: "true".into(),
                    args: Vec::new(),
                    cwd: worktree.to_path_buf(),
                    env: Vec::new(),
                    timeout: Duration::from_secs(15),
                },
                reach,
                &[],
            );
            let finished = process::run(&spec)
                .await
                .map_err(|e| format!("cannot start {}: {e}", self.program.display()))?;
            if let Some(failure) = self.failed_to_start(&spec, &finished) {
                return Err(failure.why_and_where());
            }
            if !finished.success() {
                return Err(finished.first_error_line());
            }
        }
        Ok(())
    }

    /// bubblewrap's own failure to set up `wrapped` (this sandbox's
    /// wrapping of a command), told apart from the command's: bubblewrap
    /// reports every setup error as one `bwrap: …` line on stderr and exits
    /// with status 1 before the command runs, and a command it started
    /// never has its stderr begin with bubblewrap's prefix unless it runs
    /// bubblewrap itself.
    pub fn failed_to_start(
        &self,
        wrapped: &CommandSpec,
        finished: &Finished,
    ) -> Option<StartFailure> {
        if wrapped.program != self.program.as_path() || finished.ending != Ending::Exited(Some(1)) {
            return None;
        }
        let first = finished
            .stderr
            .lines()
            .find(|line| !line.trim().is_empty())?;
        let message = first.strip_prefix("bwrap: ")?.trim().to_string();
        Some(StartFailure {
            refused: refused_argument(&wrapped.args, &message),
            command: command_of(&wrapped.args),
            message,
        })
    }

    /// `spec` confined: its working directory and `extra` writable, the rest
    /// as described in the module's documentation.
    pub fn wrap(&self, spec: CommandSpec, reach: Reach, extra: &[&Path]) -> CommandSpec {
        self.wrap_reading(spec, reach, extra, &[])
    }

    /// [`Sandbox::wrap`], with `readable` files bound read-only where the
    /// sandbox would hide them (a login file under `/tmp`, which a job's
    /// config directory links to).
    pub fn wrap_reading(
        &self,
        spec: CommandSpec,
        reach: Reach,
        extra: &[&Path],
        readable: &[&Path],
    ) -> CommandSpec {
        debug_assert!(
            spec.cwd.is_absolute() && extra.iter().all(|path| path.is_absolute()),
            "a confined command's paths must be absolute: {:?} {extra:?}",
            spec.cwd
        );
        let mut args: Vec<String> = Vec::new();
        let mut push = |flag: &str, paths: &[&Path]| {
            args.push(flag.into());
            args.extend(paths.iter().map(|p| p.display().to_string()));
        };
        push("--ro-bind", &[Path::new("/"), Path::new("/")]);
        push("--dev", &[Path::new("/dev")]);
        push("--proc", &[Path::new("/proc")]);
        push("--tmpfs", &[Path::new("/tmp")]);
        // A writable path that is missing is bubblewrap's to refuse: the
        // probe at start says so, instead of the path going quietly unbound.
        for path in &self.writable {
            push("--bind", &[path, path]);
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
        for path in readable.iter().filter(|path| path.exists()) {
            push("--ro-bind", &[path, path]);
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
        for var in self.unreachable_target_dirs(&spec.env) {
            args.extend(["--unsetenv".into(), var.into()]);
        }
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
            program: self.program.to_path_buf(),
            args,
            cwd: spec.cwd,
            env,
            timeout: spec.timeout,
        }
    }

    /// The cargo target-directory variables to unset inside: one that names
    /// a directory outside every writable bind (an operator's shared
    /// `CARGO_TARGET_DIR`) would be read-only in the sandbox and fail every
    /// build; without it cargo builds in the worktree's own `target/`.
    fn unreachable_target_dirs(&self, env: &[(String, String)]) -> Vec<&'static str> {
        ["CARGO_TARGET_DIR", "CARGO_BUILD_TARGET_DIR"]
            .into_iter()
            .filter(|var| {
                let value = env
                    .iter()
                    .rev()
                    .find(|(name, _)| name == var)
                    .map(|(_, value)| std::ffi::OsString::from(value))
                    .or_else(|| std::env::var_os(var));
                value.is_some_and(|dir| {
                    let dir = Path::new(&dir);
                    !self.writable.iter().any(|w| dir.starts_with(&**w))
                })
            })
            .collect()
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
        program: Program,
        hidden: Vec<AbsolutePath>,
        writable: Vec<AbsolutePath>,
        job_network: bool,
    ) -> Sandbox {
        Sandbox {
            program,
            git_dirs: hidden
                .iter()
                .map(|dir| dir.join(".git"))
                .filter(|git| git.exists())
                .collect(),
            hidden: hidden.into_iter().map(PathBuf::from).collect(),
            writable: writable.into_iter().map(PathBuf::from).collect(),
            job_network,
            check_network: false,
        }
    }
}

/// bubblewrap could not set up a confined command: the sandbox failed, not
/// the command, and not the workspace it would have run on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartFailure {
    /// bubblewrap's message, without its `bwrap: ` prefix.
    pub message: String,
    /// The option it refused, with its arguments, when the message names one.
    pub refused: Option<String>,
    /// The confined command line.
    pub command: String,
}

impl StartFailure {
    /// bubblewrap's message and the argument it names.
    fn why_and_where(&self) -> String {
        match &self.refused {
            Some(argument) => format!("bwrap: {} (at `{argument}`)", self.message),
            None => format!("bwrap: {}", self.message),
        }
    }
}

impl std::fmt::Display for StartFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sandbox: bubblewrap could not start `{}`: {}; the command did not run. Check [sandbox] (writable paths, program) or set [sandbox] enabled = \"off\"",
            self.command,
            self.why_and_where()
        )
    }
}

/// The option of bubblewrap's command line (with its arguments) that its
/// message names: the one with the longest argument found in the message.
fn refused_argument(args: &[String], message: &str) -> Option<String> {
    let options = args
        .iter()
        .position(|arg| arg == "--")
        .map_or(args, |end| &args[..end]);
    let mut groups: Vec<Vec<&str>> = Vec::new();
    for arg in options {
        if arg.starts_with("--") || groups.is_empty() {
            groups.push(vec![arg]);
        } else if let Some(group) = groups.last_mut() {
            group.push(arg);
        }
    }
    groups
        .into_iter()
        .filter_map(|group| {
            let named = group
                .iter()
                .filter(|arg| arg.len() > 1 && message.contains(**arg))
                .map(|arg| arg.len())
                .max()?;
            Some((named, group.join(" ")))
        })
        .max_by_key(|(named, _)| *named)
        .map(|(_, group)| group)
}

/// The confined command line: what follows bubblewrap's `--`.
fn command_of(args: &[String]) -> String {
    args.iter()
        .position(|arg| arg == "--")
        .map_or_else(String::new, |end| args[end + 1..].join(" "))
}

/// When `finished` is `wrapped` failing because the sandbox could not start
/// it, why; `None` when it ran (or there is no sandbox).
pub fn start_failure(
    sandbox: Option<&Sandbox>,
    wrapped: &CommandSpec,
    finished: &Finished,
) -> Option<StartFailure> {
    sandbox.and_then(|sandbox| sandbox.failed_to_start(wrapped, finished))
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
        let sandbox = Sandbox::given(
            Program::resolve(Path::new("bwrap")).unwrap(),
            vec![AbsolutePath::given(hidden.clone()).unwrap()],
            Vec::new(),
            false,
        );
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

    fn sandbox_with(writable: Vec<AbsolutePath>) -> Sandbox {
        Sandbox::given(
            Program::resolve(Path::new("bwrap")).unwrap(),
            Vec::new(),
            writable,
            false,
        )
    }

    fn true_in(cwd: &Path) -> CommandSpec {
        CommandSpec {
            program: "true".into(),
            args: Vec::new(),
            cwd: cwd.to_path_buf(),
            env: Vec::new(),
            timeout: Duration::from_secs(20),
        }
    }

    #[tokio::test]
    async fn bubblewrap_refusing_a_bind_is_its_own_failure_naming_the_bind() {
        if !bwrap_works() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let missing = AbsolutePath::given(dir.path().join("no-such-cache")).unwrap();
        let sandbox = sandbox_with(vec![missing.clone()]);
        let wrapped = sandbox.wrap(true_in(dir.path()), Reach::Check, &[]);
        let finished = process::run(&wrapped).await.unwrap();
        let failure = start_failure(Some(&sandbox), &wrapped, &finished)
            .unwrap_or_else(|| panic!("a start failure: {finished:?}"));
        assert!(
            failure.message.starts_with("Can't find source path")
                && failure.message.contains(&missing.display().to_string()),
            "{failure:?}"
        );
        assert_eq!(
            failure.refused.as_deref(),
            Some(format!("--bind {0} {0}", missing.display()).as_str())
        );
        let said = failure.to_string();
        assert!(
            said.starts_with(
                "sandbox: bubblewrap could not start `true`: bwrap: Can't find source path"
            ),
            "{said}"
        );
        // The probe finds the same before anything runs.
        let probed = sandbox.works(dir.path()).await.unwrap_err();
        assert!(probed.contains("Can't find source path"), "{probed}");
    }

    #[test]
    fn a_target_dir_outside_the_writable_binds_is_unset_inside() {
        let sandbox = sandbox_with(vec![AbsolutePath::given("/srv/shared".into()).unwrap()]);
        let mut spec = true_in(Path::new("/tmp"));
        spec.env
            .push(("CARGO_TARGET_DIR".into(), "/home/me/target".into()));
        spec.env
            .push(("CARGO_BUILD_TARGET_DIR".into(), "/srv/shared/target".into()));
        let args = sandbox.wrap(spec, Reach::Check, &[]).args.join(" ");
        assert!(args.contains("--unsetenv CARGO_TARGET_DIR"), "{args}");
        assert!(
            !args.contains("--unsetenv CARGO_BUILD_TARGET_DIR"),
            "{args}"
        );
    }

    #[test]
    fn a_command_that_ran_and_failed_is_not_the_sandboxs_failure() {
        let sandbox = sandbox_with(Vec::new());
        let wrapped = sandbox.wrap(true_in(Path::new("/tmp")), Reach::Check, &[]);
        let ran_and_failed = Finished {
            ending: Ending::Exited(Some(101)),
            stdout: String::new(),
            stderr: "error[E0433]: failed to resolve\nbwrap: not this line\n".into(),
        };
        assert_eq!(
            start_failure(Some(&sandbox), &wrapped, &ran_and_failed),
            None
        );
        // Status 1 with the command's own error: not bubblewrap's either.
        let own_error = Finished {
            ending: Ending::Exited(Some(1)),
            ..ran_and_failed
        };
        assert_eq!(start_failure(Some(&sandbox), &wrapped, &own_error), None);
        // No sandbox, no sandbox failure.
        let bwrap_like = Finished {
            ending: Ending::Exited(Some(1)),
            stdout: String::new(),
            stderr: "bwrap: No permissions to create new namespace\n".into(),
        };
        assert_eq!(start_failure(None, &wrapped, &bwrap_like), None);
        let failure = start_failure(Some(&sandbox), &wrapped, &bwrap_like).unwrap();
        assert_eq!(failure.message, "No permissions to create new namespace");
        assert_eq!(failure.refused, None, "the message names no argument");
    }
}
