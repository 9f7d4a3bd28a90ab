//! The `bulkhead` binary: parses the command line and hands a typed
//! configuration to the crate that does the work.

mod cli;

use clap::Parser;

fn main() {
    let cli = cli::Cli::parse();
    let code = match cli.command.run() {
        Ok(code) => code,
        Err(e) => {
            // The error and its causes, on one line.
            eprintln!("bulkhead: {e:#}");
            1
        }
    };
    std::process::exit(code);
}
