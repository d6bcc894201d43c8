//! Capabilities discovered over MCP: each server listed in `[[mcp_servers]]`
//! is started, asked for `tools/list`, and each tool it lists is validated
//! by one call with the arguments configured for it. Only a tool whose call
//! succeeds is registered; a tool that fails, or has no call configured, is
//! kept in the registry as not registered, with the reason. The server runs
//! in its own process group and is killed with it when discovery ends.

use std::process::Stdio;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use rmcp::transport::{ConfigureCommandExt, TokioChildProcess};

use crate::domain::{DiscoveredTool, ToolServer};

/// Asks `server` for its tools and validates each: the registry's entries
/// for this server. An error is the server itself failing (not found, no
/// MCP on stdio, no answer in time), said in one line.
pub async fn discover(server: &ToolServer, now_ms: u64) -> Result<Vec<DiscoveredTool>, String> {
    let (program, args) = server
        .command
        .split_first()
        .ok_or_else(|| format!("server `{}` has an empty command", server.name))?;
    let command = crate::process::group_command(program).configure(|command| {
        command.args(args);
    });
    let (transport, _) = TokioChildProcess::builder(command)
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start `{}`: {e}", server.command.join(" ")))?;
    let group = transport.id().map(|pid| pid as i32);
    let result = talk(server, transport, now_ms).await;
    if let Some(group) = group {
        let _ = killpg(Pid::from_raw(group), Signal::SIGKILL);
    }
    result
}

async fn talk(
    server: &ToolServer,
    transport: TokioChildProcess,
    now_ms: u64,
) -> Result<Vec<DiscoveredTool>, String> {
    let deadline = server.timeout;
    let within = |what: &str| {
        format!(
            "{what} did not answer within {}",
            humantime::format_duration(deadline)
        )
    };
    let service = tokio::time::timeout(deadline, ().serve(transport))
        .await
        .map_err(|_| within("initialize"))?
        .map_err(|e| format!("MCP initialization failed: {e}"))?;
    let listed = tokio::time::timeout(deadline, service.list_all_tools())
        .await
        .map_err(|_| within("tools/list"))?
        .map_err(|e| format!("tools/list failed: {e}"))?;
    let mut found = Vec::new();
    for tool in listed {
        let name = tool.name.to_string();
        let description = tool
            .description
            .as_deref()
            .and_then(|d| d.lines().next())
            .unwrap_or_default()
            .to_string();
        let (registered, detail) = match server.probes.get(&name) {
            None => (
                false,
                "not validated: no validation call configured for it".to_string(),
            ),
            Some(arguments) => validate(&service, &name, arguments, deadline).await,
        };
        if registered {
            tracing::info!(server = %server.name, tool = %name, "MCP tool registered");
        } else {
            tracing::warn!(server = %server.name, tool = %name, %detail, "MCP tool not registered");
        }
        found.push(DiscoveredTool {
            server: server.name.clone(),
            tool: name,
            description,
            registered,
            detail,
            checked_at_ms: now_ms,
        });
    }
    let _ = service.cancel().await;
    Ok(found)
}

/// One validation call: (whether it succeeded, what it answered).
async fn validate(
    service: &rmcp::service::RunningService<rmcp::RoleClient, ()>,
    tool: &str,
    arguments: &str,
    deadline: std::time::Duration,
) -> (bool, String) {
    let arguments = match serde_json::from_str::<serde_json::Value>(arguments) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => {
            return (
                false,
                "its validation arguments are not a JSON object".into(),
            );
        }
    };
    let request = CallToolRequestParams::new(tool.to_string()).with_arguments(arguments);
    let result = match tokio::time::timeout(deadline, service.call_tool(request)).await {
        Err(_) => {
            return (
                false,
                format!(
                    "validation call did not answer within {}",
                    humantime::format_duration(deadline)
                ),
            );
        }
        Ok(Err(error)) => return (false, format!("validation call failed: {error}")),
        Ok(Ok(result)) => result,
    };
    let text = crate::mcp::result_text(&result);
    // One line: the answer with its whitespace collapsed, shortened.
    let first = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(400)
        .collect::<String>();
    if result.is_error == Some(true) {
        (false, format!("validation call failed: {first}"))
    } else {
        (true, format!("validation call succeeded: {first}"))
    }
}
