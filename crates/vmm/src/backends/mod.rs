//! Where device backends run: in a compartment (microkernel mode, a
//! sandboxed process each) or on a thread of the core (monolithic mode).
//! Both start the same `bulkhead_devices` code and hand the core one end of
//! a unix socket pair; the only difference is the process boundary.

mod policy;
mod process;
mod thread;

use std::sync::Arc;

use bulkhead_core::virtio::{Backend, DeviceKind as CoreKind};

use crate::partition::Partition;
use bulkhead_devices::{DeviceConfig, DeviceKind};

pub use policy::policy_for;

/// `--mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Each device in its own sandboxed process (the default).
    Microkernel,
    /// Devices on threads inside the core: the same code, no process boundary.
    Monolithic,
}

/// The core's name for a device kind.
pub fn core_kind(kind: DeviceKind) -> CoreKind {
    match kind {
        DeviceKind::Blk => CoreKind::Block,
        DeviceKind::Net => CoreKind::Net,
        DeviceKind::Rng => CoreKind::Rng,
    }
}

/// In monolithic mode a panic in device code ends the VM, naming the
/// device (in microkernel mode it ends only its compartment, which the
/// supervisor restarts).
pub fn end_vm_on_device_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("");
        if thread::ThreadBackend::is_device_thread(name) {
            eprintln!(
                "bulkhead: device thread {name} panicked: {info}\nbulkhead: the VM stops: in monolithic mode a device fault ends the VM"
            );
            std::process::exit(1);
        }
        default(info);
    }));
}

/// A device the user asked for: its configuration and, for compartments,
/// the command-line arguments that describe it to `bulkhead device`.
pub struct Request {
    pub name: String,
    pub config: DeviceConfig,
    pub args: Vec<String>,
}

/// One backend per request, in `mode`; compartments get their cgroup
/// below the VM's, with the limits of `partition`.
pub fn build(
    requests: Vec<Request>,
    mode: Mode,
    partition: &Arc<Partition>,
) -> anyhow::Result<Vec<Box<dyn Backend>>> {
    let mut out: Vec<Box<dyn Backend>> = Vec::new();
    for r in requests {
        out.push(match mode {
            Mode::Monolithic => Box::new(thread::ThreadBackend::new(r)),
            Mode::Microkernel => Box::new(process::CompartmentBackend::new(r, partition.clone())?),
        });
    }
    Ok(out)
}
