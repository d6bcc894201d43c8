//! The orchestration's own cost:
//! `cargo bench --bench overhead [-- --iterations N] [--retention N] [--json]`.
//!
//! The whole daemon runs in this process as `agent run` runs it — store,
//! supervision tree of six actors, control socket, tracing at the service's
//! level (info, JSON logs to a sink) with OTLP export to a collector served
//! in this process — with an instant cognition backend (one file edited in
//! place, no model, no process) and instant validation and fitness. What is
//! left is the orchestration: every iteration through all six actors, its
//! git commit and its durable store commit.
//!
//! In the same run, after the daemon has stopped, the floor: the work of one
//! iteration that cannot be avoided, done directly on the same worktree and
//! store (the same git reset, edit and commit, the same store transaction
//! and flush, the same number of actor round trips to an actor that only
//! answers). Also measured while iterating: restarts after a panic injected
//! into a random actor (until it answers with its restored state) and the
//! control socket's `status` round trip. Prints a table and, with `--json`,
//! one JSON line of the figures last.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agent::checks::Checks;
use agent::cognition::{Cognition, Job, StartHook};
use agent::config::{Config, Overrides, TreeSpec};
use agent::ctl::client::{self, Connection};
use agent::ctl::protocol::{Command, Outcome, Reply};
use agent::daemon::{self, Embedded, Ending};
use agent::domain::{BackendKind, Capability, JobOutcome, JobStatus, Usage};
use agent::store::{SnapshotRecord, Store};
use agent::workspace::Workspace;
use async_trait::async_trait;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

/// The peers an iteration asks, one round trip each: permit, pending job,
/// prepare, capabilities, advice, research, execute (and the job's end back
/// to the executor), validate, learn, the five peers' snapshots, and the
/// planner's own end-of-iteration and next tick.
const ROUND_TRIPS: usize = 17;
/// The actors a fault is injected into, with a query each answers.
const QUERIES: [(&str, &str); 6] = [
    ("governor", "status"),
    ("learner", "stats"),
    ("researcher", "status"),
    ("executor", "capabilities"),
    ("modifier", "status"),
    ("planner", "status"),
];

struct Args {
    iterations: u64,
    /// `[retention] iterations` (the shipped 10000 unless given).
    retention: u64,
    json: bool,
}

fn args() -> Args {
    let mut args = Args {
        iterations: 10_000,
        retention: 10_000,
        json: false,
    };
    let mut given = std::env::args().skip(1);
    while let Some(arg) = given.next() {
        match arg.as_str() {
            "--json" => args.json = true,
            "--iterations" => args.iterations = number(&mut given, "--iterations", 20),
            "--retention" => args.retention = number(&mut given, "--retention", 1),
            // `cargo bench` passes `--bench`; filters are not used here.
            _ => {}
        }
    }
    args
}

/// The number after `flag`, at least `least`; else the usage, exit 2.
fn number(given: &mut impl Iterator<Item = String>, flag: &str, least: u64) -> u64 {
    given
        .next()
        .and_then(|n| n.parse().ok())
        .filter(|n| *n >= least)
        .unwrap_or_else(|| {
            eprintln!("overhead: {flag} takes a number of at least {least}");
            std::process::exit(2);
        })
}

fn main() {
    let args = args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let figures = runtime.block_on(measure(&args));
    println!("{}", figures.table());
    if args.json {
        println!("{}", figures.json());
    }
}

// ------------------------------------------------------------ the backend --

/// Edits one file in place and reports success at once: no model, no
/// process, no tokens.
struct InstantBackend;

#[async_trait]
impl Cognition for InstantBackend {
    /// A model backend's kind, not offline's: the planner then asks the
    /// researcher each iteration, so every actor is in the measured path as
    /// it was when backends were told apart by name.
    fn kind(&self) -> BackendKind {
        BackendKind::ClaudeCli
    }

    fn capabilities(&self) -> Vec<Capability> {
        vec![Capability {
            id: "edit".into(),
            description: "writes the iteration's number into src/lib.rs".into(),
        }]
    }

    async fn run(&self, job: Job, _started: StartHook) -> JobOutcome {
        let text = format!("pub const JOB: u64 = {};\n", job.id);
        let written = std::fs::write(job.cwd.join("src/lib.rs"), text);
        JobOutcome {
            job_id: job.id,
            status: if written.is_ok() {
                JobStatus::Completed
            } else {
                JobStatus::Failed
            },
            output: String::new(),
            error: written.err().map(|e| e.to_string()),
            usage: Usage::default(),
            claude: Default::default(),
        }
    }
}

/// Validation passes and fitness stays the same: every change is kept.
struct InstantChecks;

#[async_trait]
impl Checks for InstantChecks {
    async fn validate(&self, _cwd: &Path) -> Result<(), String> {
        Ok(())
    }

    async fn fitness(&self, _cwd: &Path) -> Result<f64, String> {
        Ok(1.0)
    }
}

// ------------------------------------------------------------ OTLP sink --

/// An OTLP/gRPC collector in this process that counts the spans it gets.
struct SpanSink(Arc<AtomicU64>);

#[tonic::async_trait]
impl TraceService for SpanSink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans: usize = request
            .into_inner()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.0.fetch_add(spans as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

async fn span_sink() -> (String, Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let spans = Arc::new(AtomicU64::new(0));
    let service = TraceServiceServer::new(SpanSink(spans.clone()));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    (format!("http://{address}"), spans)
}

// ---------------------------------------------------------- the workspace --

/// A one-file crate under git, and the agent's configuration for it.
fn setup(root: &Path, args: &Args) -> (Config, TreeSpec) {
    let iterations = args.iterations;
    let source = root.join("crate");
    std::fs::create_dir_all(source.join("src")).unwrap();
    std::fs::write(
        source.join("Cargo.toml"),
        "[package]\nname = \"bench\"\nversion = \"0.1.0\"\nedition = \"2021\"\n",
    )
    .unwrap();
    std::fs::write(source.join("src/lib.rs"), "pub const JOB: u64 = 0;\n").unwrap();
    let repo = git2::Repository::init(&source).expect("a git repository");
    let mut index = repo.index().unwrap();
    index
        .add_all(["*"], git2::IndexAddOption::DEFAULT, None)
        .unwrap();
    index.write().unwrap();
    let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
    let signature = git2::Signature::now("bench", "bench@localhost").unwrap();
    repo.commit(Some("HEAD"), &signature, &signature, "start", &tree, &[])
        .unwrap();
    // The shipped configuration, with the workspace, the run's length and
    // fault injection (for the restarts) set; validation and fitness are
    // handed in, the sandbox has nothing to confine, and the hourly rate
    // limit is lifted.
    let text = agent::config::DEFAULT_AGENT_TOML
        .replace(
            "# max_iterations = 4",
            &format!("max_iterations = {iterations}"),
        )
        .replace(
            "workspace = \"examples/tidy-stats\"",
            &format!("workspace = \"{}\"", source.display()),
        )
        .replace(
            "state = \"state\"",
            &format!("state = \"{}\"", root.join("state").display()),
        )
        .replace("fault_injection = false", "fault_injection = true")
        .replace(
            "iterations = 10000",
            &format!("iterations = {}", args.retention),
        )
        // The shipped rate limit (120 an hour) is a budget, not a cost.
        .replace(
            "iterations_per_hour = 120",
            "iterations_per_hour = 1000000000",
        )
        .replace("enabled = \"auto\"", "enabled = \"off\"")
        // Every change is kept at a constant fitness, by design: the loop
        // check would rightly call that no progress.
        .replace("loop_no_progress = 30", "loop_no_progress = 0")
        .replace("command = \"cargo test --quiet\"", "command = \"true\"")
        .replace("fitness = \"cargo-warnings\"", "fitness = \"echo 1\"");
    let file = root.join("agent.toml");
    std::fs::write(&file, text).unwrap();
    let config = Config::load(&file).expect("the bench's configuration");
    // The shipped tree, with room for the injected faults: the shipped
    // intensity (5 restarts in 30 s) would rightly give up on this many.
    let tree = TreeSpec::parse(
        Path::new("actors.toml"),
        &agent::config::DEFAULT_ACTORS_TOML.replace("max_restarts = 5", "max_restarts = 100"),
    )
    .expect("the shipped actors.toml");
    (config, tree)
}

// -------------------------------------------------------------- measures --

#[derive(Default)]
struct Figures {
    iterations: u64,
    iteration_ms: Vec<f64>,
    floor_ms: Vec<f64>,
    restart_ms: Vec<f64>,
    ctl_rtt_ms: Vec<f64>,
    sample_at: u64,
    rss_mb_start: f64,
    rss_mb_end: f64,
    store_bytes_start: u64,
    store_bytes_end: u64,
    flushes_start: u64,
    flushes_end: u64,
    /// The six actors' snapshots as committed with each iteration, at the end.
    snapshot_bytes: usize,
    spans_exported: u64,
    abandoned: u64,
    seconds: f64,
}

fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank]
}

fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

async fn measure(args: &Args) -> Figures {
    let iterations = args.iterations;
    let root = tempfile::tempdir().unwrap();
    let (sink, spans) = span_sink().await;
    let export = agent::telemetry::traces::Export {
        endpoint: sink,
        protocol: agent::config::OtlpProtocol::Grpc,
        service_name: "agent-bench".into(),
    };
    // The level a service runs with (info), whatever this terminal is.
    agent::telemetry::traces::set_verbose(true);
    // Logs are formatted as a service formats them, then dropped; with
    // OVERHEAD_LOG=<file> they are kept there.
    let log = std::env::var_os("OVERHEAD_LOG").map(|path| {
        Arc::new(std::fs::File::create(path).expect("OVERHEAD_LOG is a file to create"))
    });
    let writer = move || -> Box<dyn std::io::Write> {
        match &log {
            Some(file) => Box::new(file.clone()),
            None => Box::new(std::io::sink()),
        }
    };
    let telemetry = agent::telemetry::traces::init_to(
        agent::telemetry::traces::LogFormat::Json,
        &export,
        writer,
    )
    .expect("tracing with OTLP export");
    // The agent's hook logs panics (to the sink here); the bench's own
    // failures must still be seen.
    let logged = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !info.to_string().contains("injected panic") {
            eprintln!("overhead: {info}");
        }
        logged(info);
    }));

    let (config, tree) = setup(root.path(), args);
    let socket = config.socket_path();
    let state_dir = config.state_dir.clone();
    let started = Instant::now();
    let run = tokio::spawn(daemon::run_embedded(
        config,
        tree,
        Overrides::default(),
        Some(Embedded {
            backend: Arc::new(InstantBackend),
            checks: Some(Arc::new(InstantChecks)),
            console: false,
        }),
    ));
    let mut watch = loop {
        match Connection::open(&socket).await {
            Ok(connection) => break connection,
            Err(_) if !run.is_finished() => tokio::time::sleep(Duration::from_millis(5)).await,
            Err(error) => panic!("the daemon did not start: {error}"),
        }
    };
    watch.send(Command::Watch).await.unwrap();

    // `status` over the socket while iterations run.
    let rtt = tokio::spawn({
        let socket = socket.clone();
        async move {
            let mut rtt = Vec::new();
            loop {
                let asked = Instant::now();
                match client::request(&socket, Command::Status).await {
                    Ok(Outcome::Ok(Reply::Status(_))) => rtt.push(ms(asked)),
                    _ => return rtt,
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });

    let mut figures = Figures {
        iterations,
        sample_at: (iterations / 10).min(1000),
        ..Figures::default()
    };
    let faults = (iterations / 500).clamp(6, 30);
    let fault_every = iterations / (faults + 1);
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut last_commit: Option<Instant> = None;
    let mut committed = 0;
    while committed < iterations {
        let event = match watch.next(Some(Duration::from_secs(60))).await {
            Ok(Some(Outcome::Ok(Reply::Event(event)))) => event,
            other => panic!("the watch stream ended: {other:?}"),
        };
        match event.event.as_str() {
            "iteration_committed" => {}
            "iteration_abandoned" => {
                figures.abandoned += 1;
                continue;
            }
            "run_paused" | "escalated" | "permit_waiting" => {
                panic!("the run stopped: {} {}", event.event, event.detail)
            }
            _ => continue,
        }
        committed = event.iteration.unwrap_or(committed + 1);
        let now = Instant::now();
        if let Some(before) = last_commit {
            figures
                .iteration_ms
                .push(now.duration_since(before).as_secs_f64() * 1000.0);
        }
        last_commit = Some(now);
        if committed == figures.sample_at {
            figures.rss_mb_start = rss_mb();
            figures.store_bytes_start = dir_bytes(&state_dir.join("store"));
            figures.flushes_start = Store::flushes();
        }
        if committed % fault_every == 0 && committed < iterations - 5 {
            // xorshift: a different actor each time, the same sequence each run.
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let (actor, query) = QUERIES[(seed % QUERIES.len() as u64) as usize];
            figures
                .restart_ms
                .push(restart(&socket, actor, query).await);
            // The gap the fault made is not an iteration's cost.
            last_commit = None;
        }
    }
    figures.rss_mb_end = rss_mb();
    figures.flushes_end = Store::flushes();
    let ending = run.await.expect("the daemon task").expect("the run");
    assert!(matches!(ending, Ending::Finished(_)), "{ending:?}");
    figures.seconds = started.elapsed().as_secs_f64();
    figures.ctl_rtt_ms = rtt.await.unwrap();
    figures.store_bytes_end = dir_bytes(&state_dir.join("store"));
    (figures.floor_ms, figures.snapshot_bytes) =
        floor(&state_dir, (iterations / 10).clamp(20, 1000)).await;
    telemetry.shutdown().await;
    figures.spans_exported = spans.load(Ordering::Relaxed);
    figures
}

/// Injects a panic into `actor` and waits until it answers `query` again
/// (restarted, its state loaded from the store); milliseconds.
async fn restart(socket: &Path, actor: &str, query: &str) -> f64 {
    let fault = Command::Fault {
        actor: actor.into(),
        fault: "panic".into(),
    };
    match client::request(socket, fault).await {
        Ok(Outcome::Ok(_)) => {}
        other => panic!("fault into {actor} refused: {other:?}"),
    }
    let injected = Instant::now();
    loop {
        let ask = Command::Send {
            actor: actor.into(),
            message: query.into(),
            args: Default::default(),
        };
        if let Ok(Outcome::Ok(Reply::Sent { .. })) = client::request(socket, ask).await {
            return ms(injected);
        }
        assert!(
            injected.elapsed() < Duration::from_secs(30),
            "{actor} did not come back"
        );
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

// ----------------------------------------------------------------- floor --

/// An actor that only answers: the cost of a round trip.
struct Echo;

impl Actor for Echo {
    type Msg = RpcReplyPort<()>;
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<Self::Msg>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        reply: RpcReplyPort<()>,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        let _ = reply.send(());
        Ok(())
    }
}

/// The unavoidable work of `count` iterations, done directly on the run's
/// worktree and store; milliseconds each.
async fn floor(state_dir: &Path, count: u64) -> (Vec<f64>, usize) {
    // sled lets go of its lock when its background flusher has noticed the
    // last handle is gone.
    let opened = Instant::now();
    let store = loop {
        match Store::open(state_dir) {
            Ok(store) => break store,
            Err(error) if opened.elapsed() > Duration::from_secs(30) => {
                panic!("the run's store stays locked: {error}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    };
    let workspace = Workspace {
        path: state_dir.join("worktree"),
    };
    let snapshots: Vec<SnapshotRecord> = QUERIES
        .iter()
        .filter_map(|(actor, _)| store.snapshot(actor).unwrap())
        .collect();
    let last = store
        .last_iteration()
        .unwrap()
        .expect("a committed iteration");
    let experience = store.experiences(1).unwrap().pop();
    let (echo, _) = Actor::spawn(None, Echo, ()).await.unwrap();
    let mut head = workspace.head().unwrap();
    let mut took = Vec::new();
    for n in 1..=count {
        let started = Instant::now();
        workspace.reset_to(&head).unwrap();
        let file: PathBuf = workspace.path.join("src/lib.rs");
        std::fs::write(&file, format!("pub const JOB: u64 = {};\n", 1_000_000 + n)).unwrap();
        assert!(!workspace.changed_files().unwrap().is_empty());
        let message = format!("floor {n}\n\nIteration: {}", last.number + n);
        head = workspace.commit_all(&message, &head).unwrap();
        for _ in 0..ROUND_TRIPS {
            ractor::call!(echo, |reply| reply).unwrap();
        }
        let mut iteration = last.clone();
        iteration.number = last.number + n;
        iteration.commit = Some(head.clone());
        store
            .commit_iteration(&iteration, experience.as_ref(), &[], &snapshots)
            .await
            .unwrap();
        took.push(ms(started));
    }
    echo.stop(None);
    (took, snapshots.iter().map(|s| s.body.len()).sum())
}

// ---------------------------------------------------------------- output --

impl Figures {
    fn split(&self) -> (f64, f64) {
        let n = (self.sample_at as usize)
            .max(1)
            .min(self.iteration_ms.len());
        let first = percentile(&self.iteration_ms[..n], 50.0);
        let last = percentile(&self.iteration_ms[self.iteration_ms.len() - n..], 50.0);
        (first, last)
    }

    /// Store flushes per iteration after the sample point (the injected
    /// faults' own audit entries included).
    fn flushes_per_iteration(&self) -> f64 {
        let span = self.iterations.saturating_sub(self.sample_at).max(1);
        self.flushes_end.saturating_sub(self.flushes_start) as f64 / span as f64
    }

    fn store_bytes_per_iteration(&self) -> f64 {
        let span = self.iterations.saturating_sub(self.sample_at).max(1);
        self.store_bytes_end.saturating_sub(self.store_bytes_start) as f64 / span as f64
    }

    fn table(&self) -> String {
        let (first, last) = self.split();
        let it50 = percentile(&self.iteration_ms, 50.0);
        let floor50 = percentile(&self.floor_ms, 50.0);
        let row = |name: &str, value: String| format!("  {name:<42} {value}\n");
        let p50_p99 = |values: &[f64]| {
            format!(
                "{:.3} ms / {:.3} ms",
                percentile(values, 50.0),
                percentile(values, 99.0)
            )
        };
        let mut out = format!(
            "overhead: {} iterations in {:.1} s, in-process instant backend, tracing at info with OTLP export\n",
            self.iterations, self.seconds
        );
        out += &row("iteration p50 / p99", p50_p99(&self.iteration_ms));
        out += &row(
            "floor p50 / p99 (same work, done directly)",
            p50_p99(&self.floor_ms),
        );
        out += &row(
            "overhead ratio (iteration p50 / floor p50)",
            format!("{:.2}", it50 / floor50),
        );
        out += &row(
            &format!("iteration p50, first / last {}", self.sample_at),
            format!("{first:.3} ms / {last:.3} ms"),
        );
        out += &row(
            &format!(
                "restart after a panic p50 / p99 ({})",
                self.restart_ms.len()
            ),
            p50_p99(&self.restart_ms),
        );
        out += &row(
            &format!(
                "ctl status round trip p50 / p99 ({})",
                self.ctl_rtt_ms.len()
            ),
            p50_p99(&self.ctl_rtt_ms),
        );
        out += &row(
            &format!("RSS at {} / at the end", self.sample_at),
            format!("{:.1} MB / {:.1} MB", self.rss_mb_start, self.rss_mb_end),
        );
        out += &row(
            "store: bytes per iteration / at the end",
            format!(
                "{:.0} B / {:.1} MB",
                self.store_bytes_per_iteration(),
                self.store_bytes_end as f64 / 1e6
            ),
        );
        out += &row(
            "the six snapshots committed each iteration",
            format!("{} B", self.snapshot_bytes),
        );
        out += &row(
            "store flushes per iteration",
            format!("{:.3}", self.flushes_per_iteration()),
        );
        out += &row(
            "iterations abandoned (by the faults)",
            self.abandoned.to_string(),
        );
        out += &row("spans exported", self.spans_exported.to_string());
        out
    }

    fn json(&self) -> String {
        let (first, last) = self.split();
        serde_json::json!({
            "iterations": self.iterations,
            "iteration_p50_ms": percentile(&self.iteration_ms, 50.0),
            "iteration_p99_ms": percentile(&self.iteration_ms, 99.0),
            "floor_p50_ms": percentile(&self.floor_ms, 50.0),
            "floor_p99_ms": percentile(&self.floor_ms, 99.0),
            "overhead_ratio": percentile(&self.iteration_ms, 50.0) / percentile(&self.floor_ms, 50.0),
            "restart_p50_ms": percentile(&self.restart_ms, 50.0),
            "restart_p99_ms": percentile(&self.restart_ms, 99.0),
            "restarts": self.restart_ms.len(),
            "ctl_rtt_p50_ms": percentile(&self.ctl_rtt_ms, 50.0),
            "ctl_rtt_p99_ms": percentile(&self.ctl_rtt_ms, 99.0),
            "iteration_p50_ms_first": first,
            "iteration_p50_ms_last": last,
            "sample_iterations": self.sample_at,
            "rss_mb_start": self.rss_mb_start,
            "rss_mb_end": self.rss_mb_end,
            "store_bytes_per_iteration": self.store_bytes_per_iteration(),
            "store_mb_end": self.store_bytes_end as f64 / 1e6,
            "flushes_per_iteration": self.flushes_per_iteration(),
            "snapshot_bytes": self.snapshot_bytes,
            "abandoned": self.abandoned,
            "spans_exported": self.spans_exported,
            "seconds": self.seconds,
        })
        .to_string()
    }
}
