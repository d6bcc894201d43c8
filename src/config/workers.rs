//! `[workers]`: jobs sent to `agent worker` processes through NATS
//! JetStream instead of run here. Checked into [`WorkersConfig`]; a URL set
//! here turns the `nats` backend on.

use std::path::Path;

use serde::Deserialize;

use super::ConfigError;
use super::values::{HumanDuration, Positive};
use crate::workers::{OnUnreachable, WorkersConfig};

/// `[workers]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWorkers {
    nats: Option<String>,
    stream: Option<String>,
    ack_wait: Option<HumanDuration>,
    max_deliver: Option<Positive>,
    slots: Option<Positive>,
    on_unreachable: Option<RawOnUnreachable>,
    connect_timeout: Option<HumanDuration>,
}

/// `[workers] on_unreachable` as written.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawOnUnreachable {
    Exit,
    Wait,
}

impl RawWorkers {
    /// Refuses a URL NATS could not dial and a stream name JetStream
    /// refuses, naming the key.
    pub(super) fn check(self, file: &Path) -> Result<WorkersConfig, ConfigError> {
        let default = WorkersConfig::default();
        if let Some(url) = &self.nats
            && let Err(why) = crate::workers::check_url(url)
        {
            return Err(ConfigError::whole_file(
                file,
                format!("[workers] nats \"{url}\": {why}"),
            ));
        }
        let stream = self.stream.unwrap_or(default.stream);
        if stream.is_empty()
            || !stream
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(ConfigError::whole_file(
                file,
                format!(
                    "[workers] stream \"{stream}\" must be letters, digits, '_' or '-', e.g. \"AGENT_JOBS\""
                ),
            ));
        }
        Ok(WorkersConfig {
            nats: self.nats,
            stream,
            ack_wait: self.ack_wait.map_or(default.ack_wait, |d| d.0),
            max_deliver: self
                .max_deliver
                .map_or(default.max_deliver, |n| n.get() as i64),
            slots: self.slots.map_or(default.slots, |n| n.get() as i64),
            on_unreachable: match self.on_unreachable {
                Some(RawOnUnreachable::Wait) => OnUnreachable::Wait,
                Some(RawOnUnreachable::Exit) | None => OnUnreachable::Exit,
            },
            connect_timeout: self
                .connect_timeout
                .map_or(default.connect_timeout, |d| d.0),
        })
    }
}
