//! `[telemetry]` and `[http]`: how the agent is watched from outside, as
//! exported traces and as the HTTP listener (dashboard, metrics, health).
//! Checked into [`TelemetryConfig`] and [`HttpConfig`].

use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

use super::ConfigError;

/// How traces reach the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OtlpProtocol {
    /// OTLP over gRPC (port 4317 by convention).
    Grpc,
    /// OTLP over HTTP with protobuf bodies (port 4318, path /v1/traces).
    HttpProtobuf,
}

/// `[telemetry]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTelemetry {
    otlp_endpoint: Option<String>,
    otlp_protocol: Option<OtlpProtocol>,
    service_name: Option<String>,
}

/// `[telemetry]` checked; each field is the [`Config`](super::Config) field
/// of the same name.
pub(super) struct TelemetryConfig {
    pub otlp_endpoint: Option<String>,
    pub otlp_protocol: OtlpProtocol,
    pub service_name: String,
}

impl From<RawTelemetry> for TelemetryConfig {
    /// A blank endpoint is no endpoint: traces stay in the logs.
    fn from(raw: RawTelemetry) -> TelemetryConfig {
        TelemetryConfig {
            otlp_endpoint: raw.otlp_endpoint.filter(|e| !e.trim().is_empty()),
            otlp_protocol: raw.otlp_protocol.unwrap_or(OtlpProtocol::Grpc),
            service_name: raw.service_name.unwrap_or_else(|| "agent".into()),
        }
    }
}

/// `[http]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp {
    listen: Option<String>,
    read_only: Option<bool>,
    jaeger_url: Option<String>,
}

/// `[http]` checked: the [`Config`](super::Config) fields `http_listen`,
/// `dashboard_read_only` and `jaeger_url`.
pub(super) struct HttpConfig {
    pub listen: Option<SocketAddr>,
    pub read_only: bool,
    pub jaeger_url: Option<String>,
}

impl RawHttp {
    /// Reads the listen address, so that a bad one is refused before
    /// anything starts rather than when the listener binds.
    pub(super) fn check(self, file: &Path) -> Result<HttpConfig, ConfigError> {
        let listen = match self.listen.as_deref() {
            None => None,
            Some(text) => Some(text.parse().map_err(|_| {
                ConfigError::whole_file(
                    file,
                    format!("[http] listen \"{text}\" is not an address like \"127.0.0.1:9464\""),
                )
            })?),
        };
        Ok(HttpConfig {
            listen,
            read_only: self.read_only.unwrap_or(false),
            jaeger_url: self.jaeger_url.filter(|u| !u.trim().is_empty()),
        })
    }
}
