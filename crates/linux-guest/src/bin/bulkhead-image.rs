//! `bulkhead-image build|path`: the `bulkhead image` subcommand on its own, for CI and for use
//! before the `bulkhead` binary mounts it.

use clap::Parser;

/// Build or locate Bulkhead's Linux test guest.
#[derive(Parser)]
#[command(name = "bulkhead-image")]
struct Cli {
    #[command(subcommand)]
    command: bulkhead_linux_guest::cli::ImageCommand,
}

fn main() -> anyhow::Result<()> {
    let code = bulkhead_linux_guest::cli::run(Cli::parse().command)?;
    std::process::exit(code)
}
