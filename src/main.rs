//! The `bulkhead` binary: parses the command line and hands a typed
//! configuration to the crate that does the work.

mod backends;
mod bench;
mod cli;
mod confine;
mod control;
mod report;

use clap::Parser;

fn main() {
    let cli = cli::Cli::parse();
    let code = match cli.command.run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bulkhead: {}", cli::describe(&e));
            1
        }
    };
    std::process::exit(code);
}
