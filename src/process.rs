//! Running child processes the way a long-running service must: each in a
//! process group of its own, with a deadline, output captured, and the whole
//! group killed on timeout, on cancellation and when the handle is dropped, so
//! that no grandchild outlives the job. Children also get SIGKILL if this
//! process dies (`PR_SET_PDEATHSIG`), and job records keep their process group
//! so a restarted agent can clean up after a `kill -9`.
//!
//! `PR_SET_PDEATHSIG` reaches only the direct child; a grandchild (the test
//! binary under `cargo test`) is re-parented to init when the agent is
//! killed. So every child also carries the instance's mark in its
//! environment, which its own children inherit, and the next start of the
//! same instance kills every process that still carries it
//! ([`reap_marked`]).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

/// Resolves a program name on `PATH` (or checks a path that has a slash).
pub fn find_executable(program: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let is_executable = |path: &Path| {
        path.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.components().count() > 1 {
        return is_executable(program).then(|| program.to_path_buf());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|candidate| is_executable(candidate))
    })
}

/// How long a process group gets between SIGTERM and SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(2);

/// What to run.
#[derive(Debug, Clone)]
pub struct CommandSpec {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub cwd: PathBuf,
    pub env: Vec<(String, String)>,
    pub timeout: Duration,
}

impl CommandSpec {
    /// `sh -c <script>` in `cwd`.
    pub fn shell(script: &str, cwd: &Path, timeout: Duration) -> CommandSpec {
        CommandSpec {
            program: "sh".into(),
            args: vec!["-c".into(), script.into()],
            cwd: cwd.to_path_buf(),
            env: Vec::new(),
            timeout,
        }
    }

    /// One line for logs: the program and its arguments.
    pub fn display(&self) -> String {
        let mut line = self.program.display().to_string();
        for arg in &self.args {
            line.push(' ');
            line.push_str(arg);
        }
        line
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// It exited by itself; `None` when a signal ended it.
    Exited(Option<i32>),
    /// The deadline passed and the group was killed.
    TimedOut,
    /// It was cancelled (killed on request) and the group was killed.
    Cancelled,
}

/// The result of running a command.
#[derive(Debug, Clone)]
pub struct Finished {
    pub ending: Ending,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    pub fn success(&self) -> bool {
        self.ending == Ending::Exited(Some(0))
    }

    /// The line a person needs: the first line that reports an error (of
    /// stderr, else stdout), else the first line at all. Never a backtrace's
    /// tail, which is what the last lines of a crashing program are.
    pub fn first_error_line(&self) -> String {
        let text = if self.stderr.trim().is_empty() {
            &self.stdout
        } else {
            &self.stderr
        };
        let lines = || text.lines().map(str::trim).filter(|l| !l.is_empty());
        let line = lines()
            .find(|l| l.to_ascii_lowercase().contains("error"))
            .or_else(|| lines().next())
            .unwrap_or("(no output)");
        line.chars().take(240).collect()
    }

    /// What a person fixing the failure reads first: up to `lines` lines,
    /// from the first line of each stream that reports a failure — stdout
    /// (where `cargo test` names its failed tests and panics) then stderr
    /// (where the compiler writes). A stream that reports none is left out
    /// unless neither does; then the last lines are what there is.
    pub fn failing_lines(&self, lines: usize) -> String {
        let reports = |l: &str| {
            let l = l.to_ascii_lowercase();
            l.contains("error") || l.contains("failed") || l.contains("panicked")
        };
        let sections: Vec<Vec<&str>> = [&self.stdout, &self.stderr]
            .into_iter()
            .map(|text| {
                let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
                all.iter()
                    .position(|l| reports(l))
                    .map_or_else(Vec::new, |first| all[first..].to_vec())
            })
            .collect();
        let reporting = sections.iter().filter(|s| !s.is_empty()).count();
        if reporting == 0 {
            return self.tail(lines);
        }
        let share = lines.div_ceil(reporting);
        sections
            .iter()
            .flat_map(|section| section.iter().take(share))
            .take(lines)
            .copied()
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The end of stderr (or stdout), for error messages.
    pub fn tail(&self, lines: usize) -> String {
        let text = if self.stderr.trim().is_empty() {
            &self.stdout
        } else {
            &self.stderr
        };
        let all: Vec<&str> = text.trim_end().lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot start `{command}`: {source}")]
pub struct SpawnError {
    pub command: String,
    #[source]
    pub source: std::io::Error,
}

/// Kills a process group when dropped, unless disarmed.
struct GroupGuard {
    group: Option<Pid>,
}

impl GroupGuard {
    fn kill(&mut self, signal: Signal) {
        if let Some(group) = self.group {
            // ESRCH means the group is already gone, which is what we want.
            let _ = killpg(group, signal);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill(Signal::SIGKILL);
    }
}

/// A started process; `wait` runs it to the end.
pub struct Running {
    child: Child,
    guard: GroupGuard,
    spec: CommandSpec,
    /// Reads stderr while the caller reads stdout itself ([`Running::stream`]).
    stderr_reader: Option<tokio::task::JoinHandle<String>>,
}

impl Running {
    /// The process group id (equal to the child's pid).
    pub fn process_group(&self) -> Option<i32> {
        self.guard.group.map(Pid::as_raw)
    }

    /// Hands stdout to the caller, to read as it comes; stderr is read on
    /// its own meanwhile, so a chatty child cannot block on a full pipe.
    /// End the process with [`Running::end_within`] or [`Running::end_now`].
    pub fn stream(&mut self) -> Option<tokio::process::ChildStdout> {
        if let Some(pipe) = self.child.stderr.take() {
            self.stderr_reader = Some(tokio::spawn(read_all(pipe)));
        }
        self.child.stdout.take()
    }

    /// Gives the process `grace` to exit by itself; then its group is ended
    /// (SIGTERM, a grace, SIGKILL) and the ending is `forced`. Nothing of
    /// the group outlives this call.
    pub async fn end_within(mut self, grace: Duration, forced: Ending) -> Finished {
        let ending = match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(Ok(status)) => Ending::Exited(status.code()),
            _ => {
                self.terminate().await;
                forced
            }
        };
        self.finish(ending, None).await
    }

    /// Ends the group now (SIGTERM, a grace, SIGKILL) with `ending`.
    pub async fn end_now(mut self, ending: Ending) -> Finished {
        tracing::warn!(command = %self.spec.display(), ?ending, "terminating the command's process group");
        self.terminate().await;
        self.finish(ending, None).await
    }

    /// SIGTERM to the group, then up to [`TERM_GRACE`] for the child to go.
    async fn terminate(&mut self) {
        self.guard.kill(Signal::SIGTERM);
        if tokio::time::timeout(TERM_GRACE, self.child.wait())
            .await
            .is_err()
        {
            tracing::warn!(command = %self.spec.display(), "process group ignored SIGTERM; killing it");
        }
    }

    /// SIGKILL to whatever is left of the group, then the output.
    async fn finish(
        mut self,
        ending: Ending,
        stdout: Option<tokio::task::JoinHandle<String>>,
    ) -> Finished {
        self.guard.kill(Signal::SIGKILL);
        let _ = self.child.wait().await;
        Finished {
            ending,
            stdout: collect(stdout).await,
            stderr: collect(self.stderr_reader.take()).await,
        }
    }

    /// Waits for the process, killing its group at the deadline. The group is
    /// killed after a normal exit too, so that grandchildren left behind die.
    pub async fn wait(self) -> Finished {
        self.wait_or_cancel(std::future::pending()).await
    }

    /// Like [`Running::wait`], but `cancel` completing ends the process group
    /// the same way a timeout does (SIGTERM, grace, SIGKILL).
    pub async fn wait_or_cancel(
        mut self,
        cancel: impl std::future::Future<Output = ()>,
    ) -> Finished {
        // Readers run on their own so that a grandchild holding the pipes
        // open cannot keep us waiting once the child itself has exited.
        let stdout = self
            .child
            .stdout
            .take()
            .map(|pipe| tokio::spawn(read_all(pipe)));
        if let Some(pipe) = self.child.stderr.take() {
            self.stderr_reader = Some(tokio::spawn(read_all(pipe)));
        }
        let waited = tokio::select! {
            waited = tokio::time::timeout(self.spec.timeout, self.child.wait()) => Some(waited),
            () = cancel => None,
        };
        let ending = match waited {
            Some(Ok(status)) => Ending::Exited(status.ok().and_then(|s| s.code())),
            None | Some(Err(_)) => {
                let ending = if waited.is_none() {
                    Ending::Cancelled
                } else {
                    Ending::TimedOut
                };
                tracing::warn!(
                    command = %self.spec.display(),
                    timeout = %humantime::format_duration(self.spec.timeout),
                    ?ending,
                    "terminating the command's process group"
                );
                self.terminate().await;
                ending
            }
        };
        // Whatever the ending, nothing of the group may outlive the job.
        self.finish(ending, stdout).await
    }
}

async fn read_all(mut pipe: impl tokio::io::AsyncRead + Unpin) -> String {
    let mut bytes = Vec::new();
    let _ = pipe.read_to_end(&mut bytes).await;
    String::from_utf8_lossy(&bytes).into_owned()
}

async fn collect(reader: Option<tokio::task::JoinHandle<String>>) -> String {
    match reader {
        Some(handle) => handle.await.unwrap_or_default(),
        None => String::new(),
    }
}

/// What Claude Code sets for the processes it runs, and refuses to start
/// under; no child of the agent inherits them.
pub const NESTING_VARS: [&str; 2] = ["CLAUDECODE", "CLAUDE_CODE_ENTRYPOINT"];

/// The environment variable that marks the processes of one agent instance.
pub const MARK_VAR: &str = "AGENT_INSTANCE";

/// This process's mark, once the daemon knows its instance.
static MARK: OnceLock<String> = OnceLock::new();

/// Marks every child started from now on as belonging to `instance` (the
/// canonical state directory).
pub fn mark_children(instance: &str) {
    let _ = MARK.set(instance.to_string());
}

/// Kills every process that carries `instance`'s mark and is not this
/// process: what a killed run of the same instance left running. Call it
/// while holding the instance's store lock, so no live run owns them.
/// Returns the pid and command line of each process killed.
pub fn reap_marked(instance: &str) -> Vec<(i32, String)> {
    let wanted = format!("{MARK_VAR}={instance}");
    let own = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut killed = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == own {
            continue;
        }
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if !environ
            .split(|b| *b == 0)
            .any(|var| var == wanted.as_bytes())
        {
            continue;
        }
        let command = std::fs::read(entry.path().join("cmdline"))
            .map(|raw| {
                String::from_utf8_lossy(&raw)
                    .split('\0')
                    .filter(|part| !part.is_empty())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        if nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
            killed.push((pid, command));
        }
    }
    killed
}

/// A command for `program` that will start in a process group of its own.
/// Every child process of the agent is built here, so that none escapes the
/// group kill; callers that hand the command to another crate (the MCP
/// client's transport) own its lifetime from then on.
#[allow(
    clippy::disallowed_methods,
    reason = "the one place a child process is built: in its own process group"
)]
pub fn group_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new(program);
    command.process_group(0);
    // Claude Code refuses to start under these (its guard against nesting):
    // an agent started from inside a Claude Code session must still run jobs.
    for inherited in NESTING_VARS.iter().chain(&crate::upgrade::keeper::VARS) {
        command.env_remove(inherited);
    }
    if let Some(instance) = MARK.get() {
        command.env(MARK_VAR, instance);
    }
    command
}

/// Starts `spec` in a new process group with stdin closed.
pub fn start(spec: &CommandSpec) -> Result<Running, SpawnError> {
    let mut command = group_command(&spec.program);
    command
        .args(&spec.args)
        .current_dir(&spec.cwd)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    die_with_parent(&mut command);
    let child = command.spawn().map_err(|source| SpawnError {
        command: spec.display(),
        source,
    })?;
    let group = child.id().map(|pid| Pid::from_raw(pid as i32));
    Ok(Running {
        child,
        guard: GroupGuard { group },
        spec: spec.clone(),
        stderr_reader: None,
    })
}

/// Starts a long-lived child that speaks to the same terminal: in a process
/// group of its own (a terminal's Ctrl-C reaches the caller, which decides),
/// stdout and stderr inherited, stdin closed, killed when this process dies.
/// The keeper runs each release this way.
pub fn start_attached(
    program: &Path,
    args: &[std::ffi::OsString],
    env: &[(&str, &str)],
) -> Result<Child, SpawnError> {
    let mut command = group_command(program);
    command
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    die_with_parent(&mut command);
    command.spawn().map_err(|source| SpawnError {
        command: program.display().to_string(),
        source,
    })
}

/// Runs `spec` to the end.
pub async fn run(spec: &CommandSpec) -> Result<Finished, SpawnError> {
    Ok(start(spec)?.wait().await)
}

/// Lets a closed pipe end this process quietly, as it ends `ls` or `cat`
/// (`agent history | head`), instead of a panic in `println!`. Only for the
/// short commands: the daemon keeps ignoring SIGPIPE, so a closed log pipe
/// cannot kill it.
#[allow(unsafe_code)]
pub fn quiet_on_closed_pipe() {
    // SAFETY: restoring the default disposition of SIGPIPE at start, before
    // any other thread could depend on it; no handler function is involved.
    let _ =
        unsafe { nix::sys::signal::signal(Signal::SIGPIPE, nix::sys::signal::SigHandler::SigDfl) };
}

/// Asks the kernel to SIGKILL the child when this process dies, so a
/// `kill -9` of the agent does not leave a job editing the worktree.
#[allow(unsafe_code)]
fn die_with_parent(command: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and calls only
    // prctl(2), which is async-signal-safe; it touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Kills a process group left behind by an earlier run (after a `kill -9`).
pub fn kill_stale_group(group: i32) {
    if group > 1 {
        let _ = killpg(Pid::from_raw(group), Signal::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished(stdout: &str, stderr: &str) -> Finished {
        Finished {
            ending: Ending::Exited(Some(101)),
            stdout: stdout.into(),
            stderr: stderr.into(),
        }
    }

    #[test]
    fn the_failing_lines_come_from_where_each_stream_reports_a_failure() {
        let stdout = "running 2 tests\ntest adds ... ok\ntest subtracts ... FAILED\n\nfailures:\n---- subtracts stdout ----\nthread 'subtracts' panicked at src/lib.rs:9:9:\n";
        let stderr = "   Compiling tiny v0.1.0\n    Finished `test` profile\nerror: test failed, to rerun pass `--lib`\n";
        let lines = finished(stdout, stderr).failing_lines(40);
        assert_eq!(
            lines,
            "test subtracts ... FAILED\nfailures:\n---- subtracts stdout ----\n\
             thread 'subtracts' panicked at src/lib.rs:9:9:\nerror: test failed, to rerun pass `--lib`"
        );
        assert_eq!(finished(stdout, stderr).failing_lines(2).lines().count(), 2);
        assert_eq!(
            finished("one\ntwo\nthree\n", "").failing_lines(2),
            "two\nthree"
        );
    }

    #[test]
    fn the_error_line_is_the_first_that_says_error_never_a_backtrace_tail() {
        let panic = "thread 'main' panicked at src/main.rs:3:5:\nerror: toolchain 'stable' is not installed\nstack backtrace:\n  12: __libc_start_main_impl\n  13: <unknown>\n";
        assert_eq!(
            finished("", panic).first_error_line(),
            "error: toolchain 'stable' is not installed"
        );
        let cargo = "   Compiling strsim v0.11.1\nerror[E0554]: `#![feature]` may not be used on the stable release channel\n --> benches/benches.rs:3:1\nerror: could not compile `strsim`\n";
        assert_eq!(
            finished("", cargo).first_error_line(),
            "error[E0554]: `#![feature]` may not be used on the stable release channel"
        );
        assert_eq!(finished("first\nsecond\n", "").first_error_line(), "first");
        assert_eq!(finished("", "").first_error_line(), "(no output)");
    }

    #[tokio::test]
    async fn output_and_exit_code_are_captured() {
        let spec = CommandSpec::shell(
            "echo out; echo err >&2; exit 3",
            Path::new("."),
            Duration::from_secs(10),
        );
        let finished = run(&spec).await.unwrap();
        assert_eq!(finished.ending, Ending::Exited(Some(3)));
        assert_eq!(finished.stdout.trim(), "out");
        assert_eq!(finished.stderr.trim(), "err");
    }

    #[tokio::test]
    async fn a_timeout_kills_the_whole_group_even_if_sigterm_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("grandchild");
        let script = format!(
            "trap '' TERM; sleep 1000 & echo $! > {}; wait",
            pid_file.display()
        );
        let spec = CommandSpec::shell(&script, dir.path(), Duration::from_millis(300));
        let finished = run(&spec).await.unwrap();
        assert_eq!(finished.ending, Ending::TimedOut);
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The group was SIGKILLed; the grandchild may linger as a zombie for a
        // moment until init reaps it, so poll its state rather than sleeping.
        let gone = (0..200).any(|_| {
            let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|stat| !stat.contains(") Z "))
                .unwrap_or(false);
            if alive {
                std::thread::sleep(Duration::from_millis(10));
            }
            !alive
        });
        assert!(gone, "grandchild {pid} survived the timeout");
    }
}
