//! The `agent` binary: parses the command line and hands over to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = agent::cli::Cli::parse();
    agent::logging::init(cli.log_format);
    agent::cli::main(cli)
}
