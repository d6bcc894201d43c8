//! Test harness: temporary workspaces and state directories, the real `agent`
//! binary as a child process, `agent ctl` and `agent history` as JSON, and
//! polling with a deadline.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use git2::{IndexAddOption, Repository, Signature};
use serde_json::Value;

pub fn agent_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_agent"))
}

pub fn fake_claude() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bin/claude")
}

/// The stand-in as the program a backend runs.
pub fn fake_claude_program() -> agent::domain::Program {
    agent::domain::Program::resolve(&fake_claude()).unwrap()
}

/// The real Claude Code CLI (npm package `@anthropic-ai/claude-code`) that
/// `.ci/run` installs under `target/claude-code`, or `AGENT_TEST_REAL_CLAUDE`;
/// `None` (said on stderr) where it is not installed, which CI refuses.
pub fn real_claude() -> Option<PathBuf> {
    let installed =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("target/claude-code/node_modules/.bin/claude");
    let claude = std::env::var_os("AGENT_TEST_REAL_CLAUDE")
        .map(PathBuf::from)
        .unwrap_or(installed);
    if claude.exists() {
        return Some(claude);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must install Claude Code at {} (see .ci/run)",
        claude.display()
    );
    eprintln!(
        "skipped: Claude Code is not installed at {} (.ci/run installs it)",
        claude.display()
    );
    None
}

/// The edit jobs the stand-in logged to `FAKE_CLAUDE_LOG` (research runs in
/// plan mode).
pub fn edit_jobs(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(" acceptEdits "))
        .count()
}

/// Polls `check` every 25 ms until it returns `Some`, or panics after
/// `timeout` naming what was awaited.
pub fn poll_until<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A small Rust crate with warnings, committed as a git repository.
pub fn tiny_crate(dir: &Path) -> PathBuf {
    let root = dir.join("workspace");
    std::fs::create_dir_all(root.join("src")).unwrap();
    std::fs::write(
        root.join("Cargo.toml"),
        "[package]\nname = \"tiny\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[workspace]\n",
    )
    .unwrap();
    std::fs::write(
        root.join("src/lib.rs"),
        "use std::collections::HashMap;\n\npub fn add(a: i32, b: i32) -> i32 {\n    let mut x = a;\n    return x + b;\n}\n\n#[cfg(test)]\nmod tests {\n    #[test]\n    fn adds() {\n        assert_eq!(super::add(1, 2), 3);\n    }\n}\n",
    )
    .unwrap();
    std::fs::write(root.join(".gitignore"), "/target\n").unwrap();
    let repo = Repository::init(&root).unwrap();
    let mut index = repo.index().unwrap();
    index.add_all(["*"], IndexAddOption::DEFAULT, None).unwrap();
    index.write().unwrap();
    let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
    let sig = Signature::now("test", "test@localhost").unwrap();
    repo.commit(Some("HEAD"), &sig, &sig, "initial", &tree, &[])
        .unwrap();
    root
}

/// An `agent.toml` for fast runs with the stand-in claude: validation always
/// passes and fitness is constant, so every edit is accepted.
pub fn fast_config(dir: &Path, extra: &[(&str, &str)]) -> PathBuf {
    let mut text = agent::config::DEFAULT_AGENT_TOML
        .replace("backend = \"auto\"", "backend = \"claude-cli\"")
        .replace(
            "claude_bin = \"claude\"",
            &format!("claude_bin = \"{}\"", fake_claude().display()),
        )
        .replace("command = \"cargo test --quiet\"", "command = \"true\"")
        .replace("fitness = \"cargo-warnings\"", "fitness = \"echo 1\"")
        .replace("job_timeout = \"10m\"", "job_timeout = \"20s\"")
        .replace("retry_after = \"2s\"", "retry_after = \"100ms\"")
        .replace("shutdown_timeout = \"30s\"", "shutdown_timeout = \"10s\"")
        .replace("max_iterations = 4\n", "")
        // One model capability (`claude-edit`), so plans are predictable.
        .replace(
            "prompts = [\"iteration\", \"fix-warning\", \"add-test\"]",
            "prompts = [\"iteration\"]",
        )
        // The stand-in's logs and marks live in the test's directory.
        .replace(
            "writable = []",
            &format!("writable = [\"{}\"]", dir.display()),
        );
    for (from, to) in extra {
        assert!(text.contains(from), "config has no {from}");
        text = text.replace(from, to);
    }
    let path = dir.join("agent.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The `fast_config` replacement that turns the sandbox off, for the tests
/// that watch the stand-in's own pids: in the sandbox's PID namespace the
/// pid a process writes of itself is not the one this test can see.
pub const UNCONFINED: (&str, &str) = ("enabled = \"auto\"", "enabled = \"off\"");

/// An `actors.toml` with the given replacements of the default.
pub fn actors_config(dir: &Path, extra: &[(&str, &str)]) -> PathBuf {
    let mut text = agent::config::DEFAULT_ACTORS_TOML.to_string();
    for (from, to) in extra {
        assert!(text.contains(from), "actors.toml has no {from}");
        text = text.replace(from, to);
    }
    let path = dir.join("actors.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Removes what the test's own environment could leak into a daemon: trace
/// export, the stand-in's knobs, failpoints and instance marks. Each test
/// passes what it means explicitly.
pub fn clean_environment(command: &mut Command) {
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy().into_owned();
        if ["OTEL_", "FAKE_CLAUDE_", "FAILPOINTS", "AGENT_INSTANCE"]
            .iter()
            .any(|prefix| name.starts_with(prefix))
        {
            command.env_remove(&name);
        }
    }
}

/// A running `agent run`.
pub struct Daemon {
    child: Option<Child>,
    pub state: PathBuf,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

impl Daemon {
    /// Starts a run of `workspace` with `config` bounded to `iterations`.
    pub fn bounded(
        state: &Path,
        config: &Path,
        workspace: &Path,
        iterations: u64,
        env: &[(&str, &str)],
    ) -> Daemon {
        let iterations = iterations.to_string();
        let mut args = Daemon::run_args(config, workspace);
        args.extend(["--max-iterations", &iterations]);
        Daemon::start(state, &args, env)
    }

    /// Starts a run of `workspace` with `config` that goes on until stopped.
    pub fn unbounded(
        state: &Path,
        config: &Path,
        workspace: &Path,
        env: &[(&str, &str)],
    ) -> Daemon {
        Daemon::start(state, &Daemon::run_args(config, workspace), env)
    }

    fn run_args<'a>(config: &'a Path, workspace: &'a Path) -> Vec<&'a str> {
        vec![
            "--config",
            config.to_str().unwrap(),
            "--workspace",
            workspace.to_str().unwrap(),
        ]
    }

    /// Starts `agent run --state <state> <args>` with extra environment.
    pub fn start(state: &Path, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let logs = state.with_extension("logs");
        std::fs::create_dir_all(&logs).unwrap();
        let n = std::fs::read_dir(&logs).unwrap().count();
        let stdout = logs.join(format!("{n}.stdout"));
        let stderr = logs.join(format!("{n}.stderr"));
        let mut command = Command::new(agent_bin());
        clean_environment(&mut command);
        command
            .arg("run")
            .arg("--state")
            .arg(state)
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap());
        Daemon {
            child: Some(command.spawn().unwrap()),
            state: state.to_path_buf(),
            stdout,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn ctl(&self, args: &[&str]) -> Output {
        ctl(&self.state, args)
    }

    /// `ctl status --json`, or `None` while the daemon does not answer.
    pub fn status(&self) -> Option<Value> {
        let output = self.ctl(&["status", "--json"]);
        if !output.status.success() {
            return None;
        }
        serde_json::from_slice(&output.stdout).ok()
    }

    /// Polls `status` until `check` holds.
    pub fn wait_status(
        &mut self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        poll_until(what, timeout, || {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "the daemon exited ({status}) while waiting for {what}:\n{}",
                    self.logs()
                );
            }
            self.status().filter(|s| check(s))
        })
    }

    pub fn committed(status: &Value) -> u64 {
        status["iteration"].as_u64().unwrap()
    }

    pub fn actor<'a>(status: &'a Value, name: &str) -> &'a Value {
        status["actors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == name)
            .unwrap_or_else(|| panic!("no actor {name} in {status}"))
    }

    pub fn kill9(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().unwrap();
        let status = poll_until("the daemon to exit", timeout, || child.try_wait().unwrap());
        self.child = None;
        status
    }

    /// The address of its HTTP listener (`[http] listen`), from its log.
    pub fn http_address(&self) -> String {
        poll_until(
            "the HTTP listener's address in the log",
            Duration::from_secs(120),
            || {
                let logs = self.logs();
                let line = logs.lines().find(|l| l.contains("serving the dashboard"))?;
                let at = line.find("address=")? + "address=".len();
                Some(
                    line[at..]
                        .split_whitespace()
                        .next()?
                        .trim_matches('"')
                        .to_string(),
                )
            },
        )
    }

    pub fn logs(&self) -> String {
        format!(
            "--- stdout\n{}\n--- stderr\n{}",
            std::fs::read_to_string(&self.stdout).unwrap_or_default(),
            std::fs::read_to_string(&self.stderr).unwrap_or_default()
        )
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn ctl(state: &Path, args: &[&str]) -> Output {
    Command::new(agent_bin())
        .arg("ctl")
        .arg("--state")
        .arg(state)
        .args(args)
        .output()
        .unwrap()
}

/// `agent history --json` of a stopped daemon's state.
/// The audit chain of a stopped daemon, as JSON Lines (`agent audit tail`).
pub fn audit_chain(state: &Path) -> String {
    let output = Command::new(agent_bin())
        .args([
            "audit",
            "tail",
            "--state",
            state.to_str().unwrap(),
            "--last",
            "100000",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    text(&output.stdout)
}

pub fn history(state: &Path) -> Vec<Value> {
    let output = Command::new(agent_bin())
        .args(["history", "--last", "100000", "--json", "--state"])
        .arg(state)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "history failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// Commit messages of the agent's worktree branch, newest first.
pub fn worktree_log(state: &Path) -> Vec<String> {
    agent::workspace::Workspace {
        path: state.join("worktree"),
    }
    .log()
    .unwrap()
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Whether process `pid` runs (a zombie waiting for its reaper does not).
///
/// A zombie counts as gone only once it is its last thread: after a
/// SIGKILL the leader of a threaded process turns zombie while its other
/// threads are still exiting and holding its files (the store's lock).
pub fn alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    if !stat.contains(") Z ") {
        return true;
    }
    std::fs::read_dir(format!("/proc/{pid}/task")).is_ok_and(|tasks| tasks.count() > 1)
}

/// Waits until process `pid` is gone (or a zombie about to be reaped).
pub fn wait_gone(pid: i32) {
    poll_until(
        &format!("process {pid} to be gone"),
        Duration::from_secs(10),
        || (!alive(pid)).then_some(()),
    );
}

/// Pids of running processes whose command line contains every needle.
pub fn processes_with(needles: &[&str]) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.contains(") Z "));
            !zombie && needles.iter().all(|n| cmdline.contains(n))
        })
        .collect()
}

/// The JSON a successful `agent ctl … --json` printed.
pub fn json_of(output: &std::process::Output) -> Value {
    assert!(
        output.status.success(),
        "exit {:?}: {}{}",
        output.status.code(),
        text(&output.stdout),
        text(&output.stderr)
    );
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(&output.stdout)))
}

/// `agent ctl send <actor> <message> --arg …` and the actor's reply.
pub fn send(daemon: &Daemon, actor: &str, message: &str, args: &[&str]) -> Value {
    let mut argv = vec!["send", actor, message, "--json"];
    for arg in args {
        argv.extend(["--arg", arg]);
    }
    let reply = json_of(&daemon.ctl(&argv));
    assert_eq!(reply["actor"], actor);
    assert_eq!(reply["message"], message);
    reply["reply"].clone()
}
