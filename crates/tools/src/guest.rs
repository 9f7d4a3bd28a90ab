//! `bulkhead guest`: the built-in guest as a file, for other VMMs.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum GuestCommand {
    /// Write the built-in guest's ELF to a file (boot it with QEMU -M microvm -kernel FILE).
    Write {
        /// Where to write it.
        path: PathBuf,
    },
}

pub fn run(cmd: GuestCommand) -> anyhow::Result<i32> {
    match cmd {
        GuestCommand::Write { path } => {
            std::fs::write(&path, bulkhead_guest_elf::GUEST_ELF)
                .with_context(|| format!("cannot write {}", path.display()))?;
            Ok(0)
        }
    }
}
