//! The `agent` binary: parses the command line and hands over to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    agent::cli::main(agent::cli::Cli::parse())
}
