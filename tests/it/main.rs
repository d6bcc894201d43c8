//! The integration tests: one binary, one module per area. `harness` starts
//! the real `agent` binary on temporary directories and polls for conditions
//! instead of sleeping; `tidy` checks the architecture's invariants.
#![allow(
    clippy::disallowed_methods,
    reason = "tests run the real binary, git and the stand-in claude as a user would, outside the agent's process wrappers"
)]

mod archive;
mod audit;
mod candidates;
// Holds a backup open through a failpoint: only with `--features failpoints`.
#[cfg(feature = "failpoints")]
mod backup;
mod claude_cli;
mod config_errors;
mod crash;
mod ctl;
mod daemon;
mod dashboard;
mod deploy;
mod governance;
mod harness;
mod instances;
mod kill9;
mod learning;
mod mcp;
mod reliability;
mod runtime;
mod safety;
mod sandbox;
mod self_upgrade;
mod telemetry;
mod tidy;
mod unattended;
mod upgrade;
mod workers;
