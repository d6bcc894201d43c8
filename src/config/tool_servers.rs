//! `[[mcp_servers]]`: the MCP servers whose tools are discovered at start.
//! Each entry is checked into a [`ToolServer`], its program made absolute
//! and its probe arguments turned into the JSON the call sends.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::values::HumanDuration;
use super::{ConfigError, command_line};
use crate::domain::ToolServer;

/// One `[[mcp_servers]]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawToolServer {
    name: String,
    command: Vec<String>,
    #[serde(default)]
    probes: toml::Table,
    timeout: Option<HumanDuration>,
}

impl RawToolServer {
    /// Refuses an entry without a name or a program, and makes the program
    /// absolute.
    pub(super) fn check(self, file: &Path) -> Result<ToolServer, ConfigError> {
        if self.command.is_empty() || self.name.trim().is_empty() {
            return Err(ConfigError::whole_file(
                file,
                format!(
                    "[[mcp_servers]] \"{}\" needs a name and a command (program and arguments), e.g. command = [\"mcp-server-time\"]",
                    self.name
                ),
            ));
        }
        let probes = self.probes(file)?;
        let key = format!("[[mcp_servers]] \"{}\" command", self.name);
        Ok(ToolServer {
            command: command_line(file, &key, self.command)?,
            name: self.name,
            probes,
            timeout: self.timeout.map_or(Duration::from_secs(30), |d| d.0),
        })
    }

    /// Each probe's arguments as the JSON object its call sends; a probe
    /// that is not a table of arguments is refused here, not at the call.
    fn probes(&self, file: &Path) -> Result<BTreeMap<String, String>, ConfigError> {
        let mut probes = BTreeMap::new();
        for (tool, arguments) in &self.probes {
            if !arguments.is_table() {
                return Err(ConfigError::whole_file(
                    file,
                    format!(
                        "[[mcp_servers]] \"{}\": probes.{tool} must be a table of the call's arguments, e.g. {{ timezone = \"UTC\" }}",
                        self.name
                    ),
                ));
            }
            let json = serde_json::to_string(arguments).map_err(|e| {
                ConfigError::whole_file(file, format!("[[mcp_servers]] probes.{tool}: {e}"))
            })?;
            probes.insert(tool.clone(), json);
        }
        Ok(probes)
    }
}
