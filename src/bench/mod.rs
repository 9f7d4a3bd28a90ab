//! `bulkhead bench`: measurements, side by side in one run.

use clap::Subcommand;

#[derive(Subcommand)]
pub enum BenchCommand {}

pub fn run(cmd: BenchCommand) -> anyhow::Result<i32> {
    match cmd {}
}
