//! `bulkhead bench`: measurements taken side by side in one run, medians
//! over several runs, as tables ready for `docs/BENCHMARKS.md`.

mod boot;
mod peer;
mod stats;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Boot time and memory: Bulkhead vs QEMU microvm, same built-in guest.
    Boot {
        /// Boots per VMM (each also gets one memory run).
        #[arg(long, default_value_t = 20)]
        runs: usize,
        /// Guest memory in MiB.
        #[arg(long, default_value_t = 256)]
        memory: u64,
        /// Measure Bulkhead alone.
        #[arg(long)]
        no_qemu: bool,
    },
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<i32> {
    match cmd {
        BenchCommand::Boot { runs, memory, no_qemu } => {
            boot::run(&boot::Options { runs: runs.max(1), memory_mib: memory, with_qemu: !no_qemu })
        }
    }
}
