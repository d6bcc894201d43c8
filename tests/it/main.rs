//! The integration tests: one binary, one module per area. `harness` starts
//! the real `agent` binary on temporary directories and polls for conditions
//! instead of sleeping.

mod claude_cli;
mod config_errors;
mod ctl;
mod daemon;
mod harness;
mod kill9;
mod mcp;
mod runtime;
mod telemetry;
