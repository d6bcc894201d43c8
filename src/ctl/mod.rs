//! `agent ctl`: the control plane. [`protocol`] holds the wire types,
//! [`server`] answers them inside the daemon, [`client`] is the command-line
//! side.

pub mod catalog;
pub mod client;
pub mod protocol;
pub mod server;
