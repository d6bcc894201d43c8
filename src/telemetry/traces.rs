//! Logs and traces. Logs always go to stderr (human or JSON lines); traces
//! are exported over OTLP (gRPC or HTTP/protobuf) when an endpoint is
//! configured, through a batch processor, with a resource naming the service,
//! its version and this instance. Only the agent's own spans are exported
//! (not ractor's actor-lifetime spans nor transport internals), so one
//! iteration is one trace. The provider is shut down on every exit path —
//! spans still in the batch are otherwise lost.

use std::collections::HashMap;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::OtlpProtocol;

/// How long an export may take before it is given up (a dead collector must
/// not hold the agent).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long shutdown waits for the last batch.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Log line format on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

/// Where traces go.
#[derive(Debug, Clone, PartialEq)]
pub struct Export {
    pub endpoint: String,
    pub protocol: OtlpProtocol,
    pub service_name: String,
}

impl Export {
    /// The export asked for by the environment (`OTEL_EXPORTER_OTLP_ENDPOINT`,
    /// `OTEL_EXPORTER_OTLP_PROTOCOL`), which wins, or by the configuration.
    pub fn resolve(
        endpoint: Option<&str>,
        protocol: OtlpProtocol,
        service_name: &str,
    ) -> Option<Export> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let endpoint = env("OTEL_EXPORTER_OTLP_ENDPOINT").or_else(|| endpoint.map(String::from))?;
        let protocol = match env("OTEL_EXPORTER_OTLP_PROTOCOL").as_deref() {
            Some("grpc") => OtlpProtocol::Grpc,
            Some("http/protobuf") => OtlpProtocol::HttpProtobuf,
            _ => protocol,
        };
        Some(Export {
            endpoint,
            protocol,
            service_name: service_name.to_string(),
        })
    }

    /// The endpoint as the exporter needs it: a scheme for gRPC, the
    /// `/v1/traces` path for HTTP.
    pub fn exporter_endpoint(&self) -> String {
        let with_scheme = if self.endpoint.contains("://") {
            self.endpoint.clone()
        } else {
            format!("http://{}", self.endpoint)
        };
        match self.protocol {
            OtlpProtocol::Grpc => with_scheme,
            OtlpProtocol::HttpProtobuf
                if with_scheme.trim_end_matches('/').ends_with("/v1/traces") =>
            {
                with_scheme
            }
            OtlpProtocol::HttpProtobuf => {
                format!("{}/v1/traces", with_scheme.trim_end_matches('/'))
            }
        }
    }
}

/// The installed telemetry; shut it down before exiting.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Flushes and shuts the exporter down (off the runtime's threads: the
    /// SDK blocks while it does).
    pub async fn shutdown(self) {
        if let Some(provider) = self.provider {
            let result = tokio::task::spawn_blocking(move || {
                provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT)
            })
            .await;
            if let Ok(Err(error)) = result {
                eprintln!(
                    "agent: traces may be incomplete: the OTLP exporter did not shut down cleanly ({error})"
                );
            }
        }
    }
}

/// `-v`: log at `info` on a terminal too.
static VERBOSE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Asks for `info` logs even on a terminal (`agent -v`).
pub fn set_verbose(verbose: bool) {
    VERBOSE.store(verbose, std::sync::atomic::Ordering::Relaxed);
}

/// `RUST_LOG` when set; else `info` — or `warn` when a person reads stderr
/// on a terminal (the daemon prints one line per iteration on stdout, the
/// logs would say each twice), unless `-v`.
fn log_filter() -> EnvFilter {
    use std::io::IsTerminal;
    let level =
        if std::io::stderr().is_terminal() && !VERBOSE.load(std::sync::atomic::Ordering::Relaxed) {
            "warn"
        } else {
            "info"
        };
    EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{level},sled=warn,rmcp=warn")))
}

/// Colours only for a person: stderr is a terminal and `NO_COLOR` is unset.
fn colours() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Logs only (every command but `run`, and `run` without an endpoint).
pub fn init_logs(format: LogFormat) {
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(colours())
        .with_target(false);
    let _ = match format {
        LogFormat::Human => tracing_subscriber::registry()
            .with(fmt.with_filter(log_filter()))
            .try_init(),
        LogFormat::Json => tracing_subscriber::registry()
            .with(fmt.json().with_filter(log_filter()))
            .try_init(),
    };
    install_panic_hook();
}

/// Logs, and OTLP traces when `export` is set. Must run inside a tokio
/// runtime (the gRPC exporter needs one).
pub fn init(format: LogFormat, export: Option<&Export>) -> Result<Telemetry, String> {
    let Some(export) = export else {
        init_logs(format);
        return Ok(Telemetry { provider: None });
    };
    init_to(format, export, std::io::stderr)
}

/// Logs to `writer` and OTLP traces to `export`: what `init` installs for
/// `agent run`, for a program that embeds the agent and keeps its own
/// stderr (the overhead benchmark).
pub fn init_to<W>(format: LogFormat, export: &Export, writer: W) -> Result<Telemetry, String>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let provider = provider(export)?;
    let tracer = provider.tracer("agent");
    // Only the agent's own spans: ractor's actor-lifetime spans would make
    // every message of an actor's life one trace.
    let ours = Targets::new().with_target("agent", tracing::Level::INFO);
    let otel = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(ours);
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(colours())
        .with_target(false);
    let registry = tracing_subscriber::registry().with(otel);
    let installed = match format {
        LogFormat::Human => registry.with(fmt.with_filter(log_filter())).try_init(),
        LogFormat::Json => registry
            .with(fmt.json().with_filter(log_filter()))
            .try_init(),
    };
    installed.map_err(|e| format!("cannot install the tracing subscriber: {e}"))?;
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    install_panic_hook();
    tracing::info!(endpoint = %export.exporter_endpoint(), protocol = ?export.protocol, "exporting traces over OTLP");
    Ok(Telemetry {
        provider: Some(provider),
    })
}

fn provider(export: &Export) -> Result<SdkTracerProvider, String> {
    let endpoint = export.exporter_endpoint();
    let exporter = match export.protocol {
        OtlpProtocol::Grpc => SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .with_timeout(EXPORT_TIMEOUT)
            .build(),
        OtlpProtocol::HttpProtobuf => SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(endpoint.clone())
            .with_timeout(EXPORT_TIMEOUT)
            .build(),
    }
    .map_err(|e| format!("cannot build the OTLP exporter for {endpoint}: {e}"))?;
    let processor = BatchSpanProcessor::builder(exporter)
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_scheduled_delay(Duration::from_secs(1))
                .build(),
        )
        .build();
    // The builder reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; the
    // configured name applies only when the environment names none.
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(export.service_name.clone());
    }
    let resource = resource
        .with_attributes([
            KeyValue::new("service.version", service_version()),
            KeyValue::new("service.instance.id", instance_id()),
        ])
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource)
        .build())
}

/// Host name and process id: stable enough to tell instances apart.
/// The package version, with the release a keeper runs it as (`0.1.0+upgrade-…`):
/// traces of a handed-over release say which one they came from.
fn service_version() -> String {
    match crate::upgrade::keeper::running_release() {
        Some(release) if release != crate::upgrade::releases::INSTALLED => {
            format!("{}+{release}", env!("CARGO_PKG_VERSION"))
        }
        _ => env!("CARGO_PKG_VERSION").to_string(),
    }
}

fn instance_id() -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}:{}", std::process::id())
}

/// A panic inside an actor is a supervision event, not the end: log it as
/// one line with its place (inside the span it happened in) instead of the
/// default dump to stderr.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into());
        let place = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        tracing::error!(%place, "panic: {message}");
    }));
}

/// A span another span links to (an operator's request, for the iteration
/// it affected).
#[derive(Debug, Clone)]
pub struct SpanLink(SpanContext);

/// A link to the current span if it is a control request.
pub fn current_link() -> Option<SpanLink> {
    let span = tracing::Span::current();
    if span.metadata().map(|m| m.name()) != Some("ctl.request") {
        return None;
    }
    let context = span.context().span().span_context().clone();
    context.is_valid().then_some(SpanLink(context))
}

/// Adds the links to a span that has not started yet.
pub fn link_pending(span: &tracing::Span, links: Vec<SpanLink>) {
    for SpanLink(context) in links {
        span.add_link(context);
    }
}

/// Makes `span` a child of a W3C `traceparent` from another process.
pub fn set_remote_parent(span: &tracing::Span, traceparent: &str) {
    let carrier = HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
    let parent = TraceContextPropagator::new().extract(&carrier);
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// The trace id of the current span, in hex; `None` without export.
pub fn current_trace_id() -> Option<String> {
    let context = tracing::Span::current().context();
    let span = context.span();
    let span_context = span.span_context();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

/// The W3C `traceparent` of the current span (empty without export).
pub fn current_traceparent() -> Option<String> {
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&tracing::Span::current().context(), &mut carrier);
    carrier.remove("traceparent")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_get_the_scheme_and_path_the_exporters_need() {
        let export = |endpoint: &str, protocol| Export {
            endpoint: endpoint.into(),
            protocol,
            service_name: "agent".into(),
        };
        assert_eq!(
            export("127.0.0.1:4317", OtlpProtocol::Grpc).exporter_endpoint(),
            "http://127.0.0.1:4317"
        );
        assert_eq!(
            export("http://collector:4318", OtlpProtocol::HttpProtobuf).exporter_endpoint(),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            export(
                "http://collector:4318/v1/traces",
                OtlpProtocol::HttpProtobuf
            )
            .exporter_endpoint(),
            "http://collector:4318/v1/traces"
        );
    }
}
