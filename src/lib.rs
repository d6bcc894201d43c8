//! `agent`: a long-running, supervised, self-improving agent service. A
//! supervision tree of six actors pursues a goal by improving a git workspace
//! in committed iterations; see `docs/ARCHITECTURE.md` for the map.

#[macro_use]
mod failpoints;

pub mod actors;
pub mod checks;
pub mod claude;
pub mod cli;
pub mod cognition;
pub mod config;
pub mod ctl;
pub mod daemon;
pub mod dashboard;
pub mod domain;
pub mod events;
pub mod learning;
pub mod mcp;
pub mod messages;
pub mod process;
pub mod resources;
pub mod safety;
pub mod sandbox;
pub mod store;
pub mod supervisor;
pub mod telemetry;
pub mod testgen;
pub mod upgrade;
pub mod workers;
pub mod workspace;
