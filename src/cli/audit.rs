//! `agent audit`: checks the audit chain of a stopped daemon's store or of
//! an exported file and names the first broken entry, shows its last
//! entries, and exports it as JSON Lines for archiving off the machine.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{exit, open_offline};
use crate::store::audit::{self, AuditEntry};

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the chain: every entry follows the one before and matches its hash.
    Verify(VerifyArgs),
    /// The last entries, oldest first.
    Tail {
        /// The state directory.
        #[arg(long, value_name = "DIR", default_value = "state")]
        state: PathBuf,
        /// How many entries.
        #[arg(long, value_name = "N", default_value_t = 20)]
        last: usize,
        /// One JSON object per line (the export's format).
        #[arg(long)]
        json: bool,
    },
    /// Write the whole chain as JSON Lines (to standard output without --to).
    Export {
        /// The state directory.
        #[arg(long, value_name = "DIR", default_value = "state")]
        state: PathBuf,
        #[arg(long, value_name = "FILE")]
        to: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct VerifyArgs {
    /// The state directory whose store holds the chain.
    #[arg(long, value_name = "DIR")]
    state: Option<PathBuf>,
    /// An export written by `agent audit export`.
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
}

pub fn run(command: &AuditCommand) -> u8 {
    match command {
        AuditCommand::Verify(args) => verify(args),
        AuditCommand::Tail { state, last, json } => match entries(state) {
            Ok(entries) => {
                for entry in &entries[entries.len().saturating_sub(*last)..] {
                    if *json {
                        println!("{}", serde_json::to_string(entry).unwrap_or_default());
                    } else {
                        println!("{}", line(entry));
                    }
                }
                exit::OK
            }
            Err(status) => status,
        },
        AuditCommand::Export { state, to } => match entries(state) {
            Ok(entries) => export(&entries, to.as_ref()),
            Err(status) => status,
        },
    }
}

fn entries(state: &std::path::Path) -> Result<Vec<AuditEntry>, u8> {
    let store = open_offline(state)?;
    store.audit_entries().map_err(|error| {
        eprintln!("agent: {error}");
        exit::FAILED
    })
}

fn verify(args: &VerifyArgs) -> u8 {
    let (checked, source) = match (&args.state, &args.file) {
        (Some(state), _) => match entries(state) {
            Ok(entries) => (audit::verify(&entries), state.display().to_string()),
            Err(status) => return status,
        },
        (None, Some(file)) => match std::fs::read_to_string(file) {
            Ok(text) => (audit::verify_lines(&text), file.display().to_string()),
            Err(error) => {
                eprintln!("agent: cannot read {}: {error}", file.display());
                return exit::USAGE;
            }
        },
        (None, None) => unreachable!("clap requires --state or --file"),
    };
    match checked {
        Ok(count) => {
            println!(
                "ok: the audit chain of {source} holds {count} entries, each following the one before"
            );
            exit::OK
        }
        Err(broken) => {
            eprintln!("agent: {source}: {broken}");
            exit::FAILED
        }
    }
}

fn export(entries: &[AuditEntry], to: Option<&PathBuf>) -> u8 {
    let mut text = String::new();
    for entry in entries {
        text.push_str(&serde_json::to_string(entry).unwrap_or_default());
        text.push('\n');
    }
    match to {
        None => {
            use std::io::Write;
            // A closed pipe (`| head`) is the reader's choice, not an error.
            let _ = std::io::stdout().write_all(text.as_bytes());
            exit::OK
        }
        Some(path) => match crate::store::write_backup(path, text.as_bytes()) {
            Ok(()) => {
                println!(
                    "agent: {} audit entries written to {}",
                    entries.len(),
                    path.display()
                );
                exit::OK
            }
            Err(error) => {
                eprintln!("agent: {error}");
                exit::FAILED
            }
        },
    }
}

/// One entry for a person.
pub fn line(entry: &AuditEntry) -> String {
    format!(
        "{:>6}  {}  {:<9} {:<22} {}",
        entry.seq,
        humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(entry.at_ms)
        ),
        entry.actor,
        entry.action,
        entry.detail
    )
}
