//! `agent ctl`: the control plane. [`protocol`] holds the wire types and
//! [`replies`] the reply type of each `send` entry (the dashboard reads the
//! same ones), [`server`] is the socket inside the daemon, [`commands`]
//! carries out each command beside the rendering of its reply, [`catalog`] is what `send` can deliver,
//! [`operations`] the one path of each operator action, [`client`] is the
//! command-line side.

pub mod catalog;
pub mod client;
pub mod commands;
pub mod operations;
pub mod protocol;
pub mod replies;
pub mod server;
