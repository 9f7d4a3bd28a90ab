//! `bulkhead device blk|net|rng`: one device backend as a process — how the
//! core starts a compartment (`--fd`), or by hand on a socket path for any
//! vhost-user frontend (QEMU's `vhost-user-blk-pci`, …).

use bulkhead_devices::cli::DeviceCommand;
use bulkhead_devices::SandboxSpec;
use bulkhead_sandbox::Policy;

/// Runs the backend, entering its sandbox once its files are open, under
/// the policy `policy` makes of a device named `name` (the VMM's, which the
/// core uses to start the compartment too).
pub fn run(
    cmd: DeviceCommand,
    policy: impl FnOnce(&str, &SandboxSpec) -> anyhow::Result<Policy>,
) -> anyhow::Result<i32> {
    // A compartment of a core tells it why it could not start, and the core shows it.
    let told_the_core = cmd.connection().startup_fd.is_some();
    let result = bulkhead_devices::cli::run_with_sandbox(cmd, |spec, _conn| {
        let policy = policy(&format!("bulkhead-{}", spec.kind.name()), spec)?;
        let report = crate::enter(&policy)?;
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
