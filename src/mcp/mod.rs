//! `agent mcp-serve`: an MCP server on stdio (rmcp) that exposes Claude Code
//! as tools — synchronous, asynchronous and batch jobs that can be polled and
//! killed. [`tools`] holds the wire types (shared with the MCP client backend
//! in `cognition::mcp`), [`jobs`] the persisted job table, [`server`] the
//! rmcp handler and the serve loop. [`discovery`] is the client side of
//! other servers: the tools they offer, validated before they are registered.

pub mod discovery;
pub mod jobs;
pub mod server;
pub mod tools;

/// The tools the agent's MCP backend needs from a server.
pub const REQUIRED_TOOLS: [&str; 7] = [
    "claude_run",
    "claude_run_async",
    "claude_status",
    "claude_result",
    "claude_run_batch",
    "claude_kill_job",
    "claude_list_jobs",
];

/// The text parts of a tool's result, joined by spaces.
pub fn result_text(result: &rmcp::model::CallToolResult) -> String {
    result
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join(" ")
}
