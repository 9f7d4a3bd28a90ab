//! `bulkhead device blk|net|rng`: one device backend as a process — how the
//! core starts a compartment (`--fd`), or by hand on a socket path for any
//! vhost-user frontend (QEMU's `vhost-user-blk-pci`, …). This runs in the
//! compartment, not in the core.

use bulkhead_devices::cli::DeviceCommand;

use crate::backends::policy_for;

/// Runs the backend, entering its sandbox once its files are open.
pub fn run(cmd: DeviceCommand) -> anyhow::Result<i32> {
    // A compartment of a core tells it why it could not start, and the core shows it.
    let told_the_core = cmd.connection().startup_fd.is_some();
    let result = bulkhead_devices::cli::run_with_sandbox(cmd, |spec, _conn| {
        let name = format!("bulkhead-{}", spec.kind.name());
        let policy = policy_for(&name, Some(spec))?;
        let report = bulkhead_sandbox_enter::enter(&policy)?;
        // A layer the host could not give is said, never dropped silently.
        if !report.is_complete() {
            eprintln!("bulkhead device {}: sandbox: {report}", spec.kind.name());
        }
        Ok(())
    });
    match result {
        Err(_) if told_the_core => Ok(1),
        result => result,
    }
}
