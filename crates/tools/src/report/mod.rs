//! `bulkhead report …`: figures the project publishes, regenerated from the
//! source tree and the code itself.

mod crates;
mod loc;
mod tcb;

use std::path::PathBuf;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum ReportCommand {
    /// The trusted core: lines of code in the core, the compartments and the rest, and the
    /// system calls each thread class and compartment may make, in both modes (Markdown).
    Tcb {
        /// The source tree to count (the repository's root).
        #[arg(long, default_value = ".")]
        root: PathBuf,
        /// Rewrite the report between the `tcb-report` marker comments of this file
        /// (docs/ARCHITECTURE.md) instead of printing it.
        #[arg(long, value_name = "FILE")]
        update: Option<PathBuf>,
    },
}

pub fn run(command: ReportCommand) -> anyhow::Result<i32> {
    match command {
        ReportCommand::Tcb { root, update } => {
            let report = tcb::report(&root)?;
            match update {
                Some(file) => {
                    tcb::update(&file, &report)?;
                    eprintln!("bulkhead: {} updated", file.display());
                }
                None => print!("{report}"),
            }
            Ok(0)
        }
    }
}
