//! Telemetry: logs and OTLP traces ([`tracing`] set-up), Prometheus metrics
//! ([`metrics`]), the HTTP listener for metrics and health ([`http`]) and
//! alert rules ([`alerts`]). Names of spans, attributes and metrics follow
//! the scheme written in `docs/telemetry.md`.

pub mod alerts;
pub mod http;
pub mod metrics;
