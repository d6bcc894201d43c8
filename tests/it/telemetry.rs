//! Observability against real endpoints: an OTLP collector (gRPC, and HTTP)
//! inside the test receiving the real exporter's spans, a dead collector,
//! and the HTTP listener's /metrics (parsed as Prometheus text), /healthz and
//! /readyz.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;

use crate::harness::{Daemon, actors_config, fast_config, poll_until, tiny_crate};

const WAIT: Duration = Duration::from_secs(120);

pub(crate) type Received = Arc<Mutex<Vec<ExportTraceServiceRequest>>>;

#[derive(Clone, Default)]
struct Collector {
    received: Received,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.received.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// Serves `app` on a free loopback port from a thread of its own (the tests
/// around it are synchronous) and returns the address.
fn serve_in_thread<F, Fut>(app: F) -> SocketAddr
where
    F: FnOnce(tokio::net::TcpListener) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            app(listener).await;
        });
    });
    rx.recv().unwrap()
}

/// A gRPC OTLP collector on a free loopback port.
pub(crate) fn grpc_collector() -> (SocketAddr, Received) {
    let received = Received::default();
    let collector = Collector {
        received: received.clone(),
    };
    let address = serve_in_thread(move |listener| async move {
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await
            .unwrap();
    });
    (address, received)
}

/// An OTLP/HTTP receiver (protobuf bodies at /v1/traces).
fn http_collector() -> (SocketAddr, Received) {
    use prost::Message;
    let received = Received::default();
    let store = received.clone();
    let address = serve_in_thread(move |listener| async move {
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| {
                let store = store.clone();
                async move {
                    match ExportTraceServiceRequest::decode(body) {
                        Ok(request) => {
                            store.lock().unwrap().push(request);
                            axum::http::StatusCode::OK
                        }
                        Err(_) => axum::http::StatusCode::BAD_REQUEST,
                    }
                }
            }),
        );
        axum::serve(listener, app).await.unwrap();
    });
    (address, received)
}

pub(crate) fn spans(received: &Received) -> Vec<Span> {
    received
        .lock()
        .unwrap()
        .iter()
        .flat_map(|r| r.resource_spans.iter())
        .flat_map(|r| r.scope_spans.iter())
        .flat_map(|s| s.spans.iter().cloned())
        .collect()
}

pub(crate) fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a AnyValue> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

pub(crate) fn text_of(value: Option<&AnyValue>) -> String {
    match value {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        _ => String::new(),
    }
}

fn start(
    dir: &std::path::Path,
    env: &[(&str, &str)],
    extra: &[&str],
    actors: Option<&std::path::Path>,
) -> Daemon {
    let config = fast_config(dir, &[]);
    let workspace = tiny_crate(dir);
    let mut args = vec![
        "--config",
        config.to_str().unwrap(),
        "--workspace",
        workspace.to_str().unwrap(),
    ];
    if let Some(actors) = actors {
        args.extend(["--actors", actors.to_str().unwrap()]);
    }
    args.extend(extra.iter().copied());
    let args: Vec<String> = args.into_iter().map(String::from).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut env = env.to_vec();
    env.push(("FAKE_CLAUDE_MODE", "edit"));
    Daemon::start(&dir.join("state"), &args, &env)
}

#[test]
fn each_iteration_is_one_trace_across_all_six_actors_with_genai_tokens_and_the_fault() {
    let (address, received) = grpc_collector();
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("http://{address}");
    let mut daemon = start(
        dir.path(),
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())],
        &["--mode", "debug"],
        None,
    );
    daemon.wait_status("a committed iteration", WAIT, |s| Daemon::committed(s) >= 1);
    assert!(daemon.ctl(&["fault", "learner", "error"]).status.success());
    let after = Daemon::committed(&daemon.status().unwrap());
    daemon.wait_status("two iterations after the fault", WAIT, |s| {
        Daemon::committed(s) >= after + 2
    });
    assert!(daemon.ctl(&["stop"]).status.success());
    assert!(daemon.wait_exit(WAIT).success(), "{}", daemon.logs());
    let committed = crate::harness::history(&dir.path().join("state")).len();

    let spans = spans(&received);
    let roots: Vec<&Span> = spans.iter().filter(|s| s.name == "iteration").collect();
    let accepted: Vec<&Span> = roots
        .iter()
        .copied()
        .filter(|r| text_of(attribute(&r.attributes, "outcome")) == "accepted")
        .collect();
    assert_eq!(
        accepted.len(),
        committed,
        "one root per committed iteration: {:?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    let trace_ids: BTreeSet<&Vec<u8>> = roots.iter().map(|r| &r.trace_id).collect();
    assert_eq!(
        trace_ids.len(),
        roots.len(),
        "each iteration has its own trace"
    );
    for root in &accepted {
        assert!(
            root.parent_span_id.is_empty(),
            "the iteration span is a root"
        );
        let members: Vec<&Span> = spans
            .iter()
            .filter(|s| s.trace_id == root.trace_id)
            .collect();
        let ids: BTreeSet<&Vec<u8>> = members.iter().map(|s| &s.span_id).collect();
        for span in &members {
            if span.span_id != root.span_id {
                assert!(
                    ids.contains(&span.parent_span_id),
                    "{} hangs off the iteration's tree",
                    span.name
                );
            }
        }
        let actors: BTreeSet<String> = members
            .iter()
            .map(|s| text_of(attribute(&s.attributes, "actor")))
            .filter(|a| !a.is_empty())
            .collect();
        let all: BTreeSet<String> = [
            "governor",
            "learner",
            "researcher",
            "executor",
            "modifier",
            "planner",
        ]
        .map(String::from)
        .into();
        assert_eq!(
            actors,
            all,
            "spans of all six actors under iteration {}",
            text_of(attribute(&root.attributes, "iteration"))
        );
        // The model call carries what the stand-in claude reported.
        let cognition = members
            .iter()
            .find(|s| s.name == "cognition.run")
            .expect("a cognition span");
        assert_eq!(
            attribute(&cognition.attributes, "gen_ai.usage.input_tokens"),
            Some(&AnyValue::IntValue(120))
        );
        assert_eq!(
            attribute(&cognition.attributes, "gen_ai.usage.output_tokens"),
            Some(&AnyValue::IntValue(45))
        );
        assert_eq!(
            text_of(attribute(&cognition.attributes, "gen_ai.system")),
            "anthropic"
        );
        assert_eq!(
            attribute(&cognition.attributes, "gen_ai.usage.cost_usd"),
            Some(&AnyValue::DoubleValue(0.0123))
        );
        let validate = members
            .iter()
            .find(|s| s.name == "modifier.validate")
            .expect("a validation span");
        assert_eq!(
            text_of(attribute(&validate.attributes, "verdict")),
            "accepted"
        );
        assert_eq!(
            attribute(&validate.attributes, "files_changed"),
            Some(&AnyValue::IntValue(1))
        );
    }
    // The injected failure is an event, on the span of the request that caused it.
    let failure = spans
        .iter()
        .flat_map(|s| s.events.iter().map(move |e| (s, e)))
        .find(|(_, e)| {
            e.attributes.iter().any(|kv| {
                text_of(kv.value.as_ref().and_then(|v| v.value.as_ref()))
                    .contains("injected error in learner")
            }) || e.name.contains("injected error in learner")
        });
    let (span, _) = failure.expect("the injected failure as a span event");
    assert!(
        span.name == "supervisor.failure" || span.name == "ctl.request",
        "{}",
        span.name
    );
    assert!(
        spans
            .iter()
            .any(|s| s.name == "supervisor.failure"
                && s.status.as_ref().is_some_and(|st| st.code == 2)),
        "failure span with error status"
    );
    assert!(spans.iter().any(|s| s.name == "supervisor.restart"));
    assert!(
        spans
            .iter()
            .any(|s| s.name == "ctl.request"
                && text_of(attribute(&s.attributes, "command")) == "fault"),
        "the fault request has its own span"
    );
    // The resource names the service and this instance.
    let resource = &received.lock().unwrap()[0].resource_spans[0]
        .resource
        .clone()
        .unwrap();
    assert_eq!(
        text_of(attribute(&resource.attributes, "service.name")),
        "agent"
    );
    assert!(!text_of(attribute(&resource.attributes, "service.instance.id")).is_empty());
    assert_eq!(
        text_of(attribute(&resource.attributes, "service.version")),
        env!("CARGO_PKG_VERSION")
    );
}

#[test]
fn a_ctl_request_links_the_iteration_it_affects_and_http_export_works() {
    let (address, received) = http_collector();
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("http://{address}");
    let mut daemon = start(
        dir.path(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ],
        &[],
        None,
    );
    daemon.wait_status("a committed iteration", WAIT, |s| Daemon::committed(s) >= 1);
    assert!(daemon.ctl(&["goal", "A linked goal"]).status.success());
    let committed = Daemon::committed(&daemon.status().unwrap());
    daemon.wait_status("the iteration after the goal change", WAIT, |s| {
        Daemon::committed(s) > committed + 1
    });
    assert!(daemon.ctl(&["stop"]).status.success());
    assert!(daemon.wait_exit(WAIT).success(), "{}", daemon.logs());
    let spans = spans(&received);
    let goal = spans
        .iter()
        .find(|s| s.name == "ctl.request" && text_of(attribute(&s.attributes, "command")) == "goal")
        .expect("the goal request's span");
    let linked: Vec<&Span> = spans
        .iter()
        .filter(|s| {
            s.name == "iteration"
                && s.links
                    .iter()
                    .any(|l| l.span_id == goal.span_id && l.trace_id == goal.trace_id)
        })
        .collect();
    assert_eq!(
        linked.len(),
        1,
        "the next iteration links the request that changed its goal"
    );
    assert_eq!(
        text_of(attribute(&linked[0].attributes, "goal")),
        "A linked goal"
    );
}

#[test]
fn a_refused_change_names_its_rule_on_the_spans_and_its_archived_commit_names_the_trace() {
    let (address, received) = grpc_collector();
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("http://{address}");
    let mut daemon = start(
        dir.path(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("FAKE_CLAUDE_EDIT_TEXT", "pub fn raw() {\n    unsafe {}\n}"),
        ],
        &["--max-iterations", "1"],
        None,
    );
    assert!(daemon.wait_exit(WAIT).success(), "{}", daemon.logs());
    let spans = spans(&received);
    let named = |name: &str| {
        spans
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no {name} span"))
    };
    let validate = named("modifier.validate");
    assert_eq!(
        text_of(attribute(&validate.attributes, "rule")),
        "no-new-unsafe"
    );
    assert_eq!(
        text_of(attribute(&validate.attributes, "verdict")),
        "rejected"
    );
    assert_eq!(
        text_of(attribute(&named("modifier.scope").attributes, "result")),
        "passed"
    );
    assert_eq!(
        text_of(attribute(&named("modifier.syntax").attributes, "result")),
        "refused"
    );
    assert!(
        !spans.iter().any(|s| s.name == "modifier.validation"),
        "no build after a refusal"
    );
    let records = crate::harness::history(&dir.path().join("state"));
    let variant = records[0]["variant"].as_str().unwrap();
    let repo = git2::Repository::open(dir.path().join("workspace")).unwrap();
    let message = repo
        .find_commit(git2::Oid::from_str(variant).unwrap())
        .unwrap()
        .message()
        .unwrap()
        .to_string();
    let trace: String = validate
        .trace_id
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(message.contains(&format!("Trace: {trace}")), "{message}");
}

#[test]
fn a_dead_collector_changes_nothing_and_the_agent_exits_promptly() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("http://{dead}");
    let mut daemon = start(
        dir.path(),
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())],
        &["--max-iterations", "2"],
        None,
    );
    let started = Instant::now();
    assert!(daemon.wait_exit(WAIT).success(), "{}", daemon.logs());
    assert_eq!(crate::harness::history(&dir.path().join("state")).len(), 2);
    // Two quick iterations plus at most the exporter's shutdown deadline.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// Prometheus samples by name and labels.
fn samples(text: &str) -> HashMap<(String, Vec<(String, String)>), f64> {
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
    scrape
        .samples
        .into_iter()
        .map(|s| {
            let mut labels: Vec<(String, String)> = s
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            labels.sort();
            let value = match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            };
            ((s.metric, labels), value)
        })
        .collect()
}

#[test]
fn metrics_match_ctl_status_and_readyz_flips_during_an_escalation() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let listen = format!("listen = \"127.0.0.1:{port}\"");
    let config = fast_config(dir.path(), &[("# listen = \"127.0.0.1:9464\"", &listen)]);
    let actors = actors_config(
        dir.path(),
        &[
            ("max_restarts = 5", "max_restarts = 1"),
            ("within = \"30s\"", "within = \"5m\""),
        ],
    );
    let workspace = tiny_crate(dir.path());
    let state = dir.path().join("state");
    let args = [
        "--config",
        config.to_str().unwrap(),
        "--workspace",
        workspace.to_str().unwrap(),
        "--actors",
        actors.to_str().unwrap(),
        "--mode",
        "debug",
    ];
    let mut daemon = Daemon::start(&state, &args, &[("FAKE_CLAUDE_MODE", "edit")]);
    daemon.wait_status("two committed iterations", WAIT, |s| {
        Daemon::committed(s) >= 2
    });
    assert_eq!(get(port, "/healthz"), Some((200, "ok\n".into())));
    assert_eq!(get(port, "/readyz").map(|r| r.0), Some(200));

    assert!(daemon.ctl(&["fault", "learner", "panic"]).status.success());
    daemon.wait_status("the restart", WAIT, |s| {
        Daemon::actor(s, "learner")["restarts"] == 1
    });
    assert!(daemon.ctl(&["pause"]).status.success());
    let status = daemon.wait_status("idle", WAIT, |s| {
        s["in_flight"].is_null() && s["run_state"] == "paused"
    });
    // Metrics follow the event bus, a moment behind `status`: scrape until
    // they have caught up with the last commit and the restart.
    let committed = status["iteration"].as_f64().unwrap();
    let text = poll_until("the metrics to catch up", WAIT, || {
        let (code, text) = get(port, "/metrics")?;
        assert_eq!(code, 200);
        let caught_up = text
            .lines()
            .any(|l| l == format!("agent_iterations_committed {committed}"))
            && text.contains("agent_actor_restarts_total{actor=\"learner\"} 1");
        caught_up.then_some(text)
    });
    let metrics = samples(&text);
    let value = |name: &str, labels: &[(&str, &str)]| {
        let mut labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        labels.sort();
        metrics.get(&(name.to_string(), labels)).copied()
    };
    assert_eq!(
        value("agent_iterations_committed", &[]),
        Some(committed),
        "{text}"
    );
    let by_outcome: f64 = metrics
        .iter()
        .filter(|((n, _), _)| n == "agent_iterations_total")
        .map(|(_, v)| v)
        .sum();
    assert_eq!(
        by_outcome, committed,
        "a fresh run counts every committed iteration"
    );
    assert_eq!(
        value("agent_actor_restarts_total", &[("actor", "learner")]),
        Some(1.0)
    );
    assert_eq!(
        value(
            "agent_tokens_total",
            &[("backend", "claude-cli"), ("direction", "input")]
        ),
        Some(120.0 * committed)
    );
    assert!(value("agent_process_resident_memory_bytes", &[]).unwrap() > 1_000_000.0);
    assert!(value("agent_budget_tokens_remaining", &[]).unwrap() < 2_000_000.0);
    assert!(
        metrics
            .keys()
            .any(|(n, _)| n == "agent_iteration_duration_seconds_count")
    );

    // Escalation: a hung researcher keeps the tree stopping for its shutdown
    // timeout, long enough to see /readyz say no while /healthz still says yes.
    assert!(
        daemon
            .ctl(&["fault", "researcher", "hang"])
            .status
            .success()
    );
    assert!(daemon.ctl(&["fault", "learner", "panic"]).status.success());
    let (code, body) = poll_until("/readyz to flip", WAIT, || {
        get(port, "/readyz").filter(|(c, _)| *c == 503)
    });
    assert_eq!(code, 503);
    assert!(body.starts_with("escalating"), "{body}");
    assert_eq!(daemon.wait_exit(WAIT).code(), Some(1), "{}", daemon.logs());
}

#[test]
fn an_alert_reaches_the_log_and_the_webhook_and_a_dead_webhook_blocks_nothing() {
    // A webhook receiver that keeps what it is sent.
    let bodies = Arc::new(Mutex::new(Vec::<serde_json::Value>::new()));
    let store = bodies.clone();
    let address = serve_in_thread(move |listener| async move {
        let app = axum::Router::new().route(
            "/alerts",
            axum::routing::post(move |body: axum::body::Bytes| {
                let store = store.clone();
                async move {
                    store
                        .lock()
                        .unwrap()
                        .push(serde_json::from_slice(&body).unwrap());
                    axum::http::StatusCode::OK
                }
            }),
        );
        axum::serve(listener, app).await.unwrap();
    });
    for (webhook, live) in [
        (format!("http://{address}/alerts"), true),
        ("http://127.0.0.1:9/alerts".to_string(), false),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let hook = format!("webhook = \"{webhook}\"");
        // Every change is rejected, so there is never progress.
        let config = fast_config(
            dir.path(),
            &[
                ("# webhook = \"http://127.0.0.1:9000/alerts\"", &hook),
                ("no_progress_iterations = 5", "no_progress_iterations = 2"),
                ("command = \"true\"", "command = \"false\""),
                // It fails at the base too: go on rather than pause there.
                ("failing_base = \"pause\"", "failing_base = \"proceed\""),
                // The same change refused three times is a loop that would
                // pause the run before its third iteration ends; this test
                // is about the alert, not the pause.
                (
                    "loop_same_refused_change = 3",
                    "loop_same_refused_change = 0",
                ),
            ],
        );
        let workspace = tiny_crate(dir.path());
        let args = [
            "--config",
            config.to_str().unwrap(),
            "--workspace",
            workspace.to_str().unwrap(),
            "--max-iterations",
            "3",
        ];
        let mut daemon = Daemon::start(
            &dir.path().join("state"),
            &args,
            &[("FAKE_CLAUDE_MODE", "edit")],
        );
        assert!(daemon.wait_exit(WAIT).success(), "{}", daemon.logs());
        let logs = daemon.logs();
        assert!(
            logs.contains("alert")
                && logs.contains("2 iterations in a row without an accepted change"),
            "{logs}"
        );
        if live {
            let body = poll_until("the webhook to be called", WAIT, || {
                bodies.lock().unwrap().first().cloned()
            });
            assert_eq!(body["rule"], "no_progress");
            assert_eq!(body["service"], "agent");
        } else {
            assert!(logs.contains("alert webhook failed"), "{logs}");
        }
        assert_eq!(
            crate::harness::history(&dir.path().join("state")).len(),
            3,
            "the run went on"
        );
    }
}
