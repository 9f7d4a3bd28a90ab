//! Where device backends run: in a compartment (microkernel mode, a
//! sandboxed process each) or on a thread of the core (monolithic mode,
//! `bulkhead_monolithic`). Both start the same `bulkhead_devices` code and
//! hand the core one end of a unix socket pair; the only difference is the
//! process boundary.

mod broker;
pub mod outside;
mod policy;
mod process;
pub use process::{Kept, KeptState};

use std::sync::Arc;

use bulkhead_core::virtio::{Backend, DeviceKind as CoreKind};

use crate::confine::ThreadClass;
use crate::limits::LimitedDevice;
use crate::partition::Partition;
use bulkhead_devices::console::{ConsoleConfig, ConsoleHost, HostEnds};
use bulkhead_devices::limit::LimitsPage;
use bulkhead_devices::{DeviceConfig, DeviceKind};
use bulkhead_monolithic::ThreadBackend;

pub use policy::{device_rules, policy_for};

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
        DeviceKind::Blk => CoreKind::BLOCK,
        DeviceKind::Net => CoreKind::NET,
        DeviceKind::Rng => CoreKind::RNG,
        DeviceKind::Console => CoreKind::CONSOLE,
    }
}

/// A device the user asked for: its configuration and, for compartments,
/// the command-line arguments that describe it to `bulkhead device`.
pub struct Request {
    pub name: String,
    pub config: DeviceConfig,
    pub args: Vec<String>,
    /// The device's limits page ([`create_limits_pages`]), for a device that has limiters.
    pub limits: Option<Arc<LimitsPage>>,
}

/// Creates the limits page of every device that has rate limiters (blk, net, rng), holding the
/// limits asked for at start; each backend of the device reads it, and the API rewrites it.
pub fn create_limits_pages(requests: &mut [Request]) -> anyhow::Result<Vec<LimitedDevice>> {
    let mut out = Vec::new();
    for r in requests {
        let Some(limits) = r.config.limits() else { continue };
        let page = LimitsPage::create(&limits)
            .map_err(|e| anyhow::anyhow!("cannot create the limits page of {}: {e}", r.name))?;
        let page = Arc::new(page);
        r.limits = Some(page.clone());
        out.push(LimitedDevice { name: r.name.clone(), kind: r.config.kind(), page });
    }
    Ok(out)
}

/// Opens the host side of every console asked for — in the core, which may create the socket
/// or the pty and keeps them for the VM's life, so that a restarted compartment serves the same
/// ones — and says where a pty is (its name is new each time). Returns the sockets' paths, to
/// remove when the VM ends.
pub fn open_consoles(requests: &mut [Request]) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut sockets = Vec::new();
    for r in requests {
        let DeviceConfig::Console(ConsoleConfig { host }) = &mut r.config else { continue };
        if matches!(host, ConsoleHost::Open(_)) {
            continue;
        }
        let ends = HostEnds::open(host)
            .map_err(|e| anyhow::Error::new(e).context(format!("cannot set up {}", r.name)))?;
        if let HostEnds::Pty { .. } = ends {
            eprintln!("bulkhead: {} is on {}", r.name, ends.describe());
        }
        sockets.extend(ends.socket_path().map(std::path::Path::to_path_buf));
        *host = ConsoleHost::Open(Arc::new(ends));
    }
    Ok(sockets)
}

/// One backend per request, in `mode`; compartments get their cgroup
/// below the VM's, with the limits of `partition`, and, with `standby`, a standby compartment
/// each (blk, net, rng).
pub fn build(
    requests: Vec<Request>,
    mode: Mode,
    partition: &Arc<Partition>,
    standby: bool,
    mut kept: Vec<process::KeptState>,
) -> anyhow::Result<Vec<Box<dyn Backend>>> {
    let mut out: Vec<Box<dyn Backend>> = Vec::new();
    for r in requests {
        let adopt = kept.iter().position(|k| k.device == r.name).map(|i| kept.remove(i));
        out.push(match mode {
            Mode::Monolithic => {
                let kind = r.config.kind();
                let confine = Arc::new(move || crate::confine::confine(ThreadClass::Device(kind)));
                let launcher: bulkhead_monolithic::Launcher =
                    Arc::new(|job| crate::confine::launcher::call(job));
                let mut backend =
                    ThreadBackend::new(core_kind(kind), r.name, r.config, confine, launcher);
                if let Some(page) = &r.limits {
                    backend = backend.with_limits(page.view()?);
                }
                Box::new(backend)
            }
            Mode::Microkernel => {
                Box::new(process::CompartmentBackend::new(r, partition.clone(), standby, adopt)?)
            }
        });
    }
    // A kept compartment for a device this VM does not have ends here.
    kept.iter().for_each(KeptState::end);
    Ok(out)
}
