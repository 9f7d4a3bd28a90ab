//! Command-line interface: one subcommand per task.

mod limits;
mod run;

use clap::{Parser, Subcommand};

/// Bulkhead: a virtual machine monitor for Linux/KVM built like a microkernel.
#[derive(Parser)]
#[command(name = "bulkhead", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Boot a VM: the built-in guest by default, or your own kernel.
    Run(Box<run::RunArgs>),
    /// Measure Bulkhead (and QEMU, side by side).
    #[command(subcommand)]
    Bench(bulkhead_tools::bench::BenchCommand),
    /// The built-in guest: write it out to boot it under another VMM.
    #[command(subcommand)]
    Guest(bulkhead_tools::guest::GuestCommand),
    /// Linux guest images built from Debian packages (for hardware-virtualization hosts).
    #[command(subcommand)]
    Image(bulkhead_linux_guest::cli::ImageCommand),
    /// Disk images: create, inspect, check, convert and compare raw, qcow2 and VMDK.
    #[command(subcommand)]
    Disk(bulkhead_tools::disk::DiskCommand),
    /// Run one device backend (vhost-user) as a process: how the core starts a compartment.
    #[command(subcommand)]
    Device(bulkhead_devices::cli::DeviceCommand),
    /// The compartment of an outside backend's program (`run --device …,exec=`): started by
    /// the core only.
    #[command(hide = true)]
    Outside(bulkhead_compartment::outside::OutsideArgs),
    /// Control a running VM: status, restart or upgrade a device.
    #[command(subcommand)]
    Ctl(bulkhead_ctl::cli::CtlCommand),
    /// A running VM's status (the same as `bulkhead ctl VM status`): devices, and the
    /// confinement of each process and thread class.
    Status {
        /// The VM: its name, or the path of its control socket.
        vm: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Firecracker's REST API on a unix socket (or its config file), in a process in front
    /// of the core: tools written for Firecracker drive Bulkhead unchanged.
    Firecracker(bulkhead_firecracker::FirecrackerArgs),
    /// Published figures, regenerated: `bulkhead report tcb`.
    #[command(subcommand)]
    Report(bulkhead_tools::report::ReportCommand),
}

impl Command {
    /// Runs the command; the result is the process exit code.
    pub fn run(self) -> anyhow::Result<i32> {
        match self {
            Command::Run(args) => run::run(*args),
            Command::Bench(cmd) => bulkhead_tools::bench::run(cmd),
            Command::Guest(cmd) => bulkhead_tools::guest::run(cmd),
            Command::Image(cmd) => bulkhead_linux_guest::cli::run(cmd),
            Command::Disk(cmd) => bulkhead_tools::disk::run(cmd),
            Command::Device(cmd) => bulkhead_compartment::device::run(cmd, |name, spec| {
                bulkhead_vmm::backends::policy_for(name, Some(spec))
            }),
            Command::Outside(args) => Ok(bulkhead_compartment::outside::run(args)),
            Command::Ctl(cmd) => bulkhead_ctl::cli::run(cmd),
            Command::Status { vm, json } => {
                use bulkhead_ctl::cli::{run_vm, VmAction, VmCommand};
                run_vm(VmCommand { vm, action: VmAction::Status { json } })
            }
            Command::Firecracker(args) => bulkhead_firecracker::run(args),
            Command::Report(cmd) => bulkhead_tools::report::run(cmd),
        }
    }
}

/// Parses a size such as `512M`, `2G` or `1048576K`; a bare number is MiB.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => (&s[..i], &s[i..]),
        None => (s, "M"),
    };
    let shift = match unit.to_ascii_uppercase().trim_end_matches("IB").trim_end_matches('B') {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => {
            return Err(format!("'{s}' is not a size: use a number with K, M, G or T (e.g. 512M)"))
        }
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("'{s}' is not a size: use a number with K, M, G or T (e.g. 512M)"))?;
    n.checked_mul(1 << shift).ok_or_else(|| format!("'{s}' is too large"))
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("256"), Ok(256 << 20));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("4096B"), Ok(4096));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("99999999999999T").is_err());
    }
}
