//! `bulkhead-device blk|net|rng …`: the device backends as a stand-alone program, the same
//! command the `bulkhead` binary mounts as `bulkhead device …`. Used by the tests and by hand.

use clap::Parser;

/// One Bulkhead device backend (vhost-user), as a process.
#[derive(Parser)]
#[command(name = "bulkhead-device", version)]
struct Cli {
    #[command(subcommand)]
    cmd: bulkhead_devices::cli::DeviceCommand,
}

fn main() {
    let cli = Cli::parse();
    match bulkhead_devices::cli::run(cli.cmd) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("bulkhead device: {e:#}");
            std::process::exit(1);
        }
    }
}
