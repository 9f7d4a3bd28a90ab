//! Bulkhead's device backends: virtio-blk, virtio-net, virtio-rng and virtio-console, each a
//! **vhost-user backend** that any conformant frontend (Bulkhead's core, QEMU) can drive.
//!
//! The same code runs in two modes. In a **compartment** (microkernel mode) a process runs
//! `bulkhead device blk …`: it [`open`]s what the device serves (image, tap), enters its sandbox,
//! and [`serve`]s the frontend on an inherited socket or a listening socket path. In
//! **monolithic** mode the core calls [`open`] and [`serve`] on a thread of its own, with its end
//! of a `UnixStream` socket pair. The only difference is the process boundary.
//!
//! ```text
//!  frontend ──vhost-user messages (unix socket)──▶ serve(): one thread, backend::handler
//!  guest ──notify──▶ kick eventfd ──▶ queue worker thread (one per virtqueue) ──▶ device logic
//!  guest ◀──interrupt── call eventfd ◀──────────────┘
//! ```
//!
//! Each device lives in a folder of the same shape: `config.rs` (what the user asks for, parsed
//! from `key=value` lists), `device.rs` (the [`Device`] and its queue handlers), and tests. The
//! vhost-user protocol, guest memory, descriptor chains and the inflight region are in
//! [`backend`]; what each device needs from a sandbox (files, namespaces, seccomp allow-list) is
//! in [`sandbox`]. Test builds (debug, or the `fault-injection` feature) also have `fault`: the
//! `BULKHEAD_FAULT` injector that makes a backend die, hang or corrupt itself mid-request.

pub mod backend;
pub mod blk;
pub mod cli;
pub mod console;
#[cfg(any(debug_assertions, feature = "fault-injection"))]
pub mod fault;
pub mod limit;
pub mod net;
pub mod rng;
pub mod sandbox;
pub mod startup;

use std::fmt;
use std::os::fd::RawFd;
use std::str::FromStr;
use std::sync::Arc;

/// Release builds without the `fault-injection` feature: the hooks the queue code calls do
/// nothing, and nothing of the injector is compiled in.
#[cfg(not(any(debug_assertions, feature = "fault-injection")))]
mod fault {
    use crate::backend::queue::QueueId;

    pub(crate) enum Returning {
        BeforeUsed,
        AfterUsed,
    }

    pub(crate) fn init() {}

    #[inline(always)]
    pub(crate) fn taken(_: QueueId, _: &mut u16) {}

    #[inline(always)]
    pub(crate) fn returning(_: QueueId, _: u16, _: Returning) {}

    pub(crate) mod flood {
        #[inline(always)]
        pub(crate) fn socket(_: std::os::fd::RawFd) {}

        #[inline(always)]
        pub(crate) fn call(_: std::os::fd::RawFd) {}
    }
}

pub use backend::{serve, QueueHandler, ServeEnd};
pub use blk::BlkConfig;
pub use console::ConsoleConfig;
pub use net::NetConfig;
pub use rng::RngConfig;
pub use sandbox::SandboxSpec;

/// The kinds of device this crate implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeviceKind {
    /// virtio-blk over a disk image.
    Blk,
    /// virtio-net over a tap device.
    Net,
    /// virtio-rng from the host's `getrandom(2)`.
    Rng,
    /// virtio-console on a unix socket, a pty or standard input and output.
    Console,
}

impl DeviceKind {
    /// Every kind, in the order reports list them.
    pub const ALL: [DeviceKind; 4] =
        [DeviceKind::Blk, DeviceKind::Net, DeviceKind::Rng, DeviceKind::Console];

    /// The name on the command line: `blk`, `net`, `rng`, `console`.
    pub fn name(self) -> &'static str {
        match self {
            DeviceKind::Blk => "blk",
            DeviceKind::Net => "net",
            DeviceKind::Rng => "rng",
            DeviceKind::Console => "console",
        }
    }

    /// The kind named `name` (see [`DeviceKind::name`]).
    pub fn from_name(name: &str) -> Option<DeviceKind> {
        DeviceKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The virtio device ID.
    pub fn virtio_id(self) -> u32 {
        match self {
            DeviceKind::Net => 1,
            DeviceKind::Blk => 2,
            DeviceKind::Console => 3,
            DeviceKind::Rng => 4,
        }
    }
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the user asks for: one device and its options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceConfig {
    /// A block device.
    Blk(BlkConfig),
    /// A network device.
    Net(NetConfig),
    /// An entropy device.
    Rng(RngConfig),
    /// A console.
    Console(ConsoleConfig),
}

impl DeviceConfig {
    /// The kind of device this configures.
    pub fn kind(&self) -> DeviceKind {
        match self {
            DeviceConfig::Blk(_) => DeviceKind::Blk,
            DeviceConfig::Net(_) => DeviceKind::Net,
            DeviceConfig::Rng(_) => DeviceKind::Rng,
            DeviceConfig::Console(_) => DeviceKind::Console,
        }
    }

    /// The rate limits asked for at start; `None` for a device that has no limiter (console).
    pub fn limits(&self) -> Option<limit::DeviceLimits> {
        match self {
            DeviceConfig::Blk(c) => Some(c.limits),
            DeviceConfig::Net(c) => Some(c.limits),
            DeviceConfig::Rng(c) => Some(c.limits),
            DeviceConfig::Console(_) => None,
        }
    }
}

/// Parses `KIND[,OPTIONS]`: `blk,path=disk.qcow2,readonly,format=qcow2`, `net,tap=tap0`, `rng`,
/// `console,socket=PATH`.
impl FromStr for DeviceConfig {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<Self, DeviceError> {
        let (kind, rest) = s.split_once(',').unwrap_or((s, ""));
        match kind {
            "blk" => Ok(DeviceConfig::Blk(rest.parse()?)),
            "net" => Ok(DeviceConfig::Net(rest.parse()?)),
            "rng" => Ok(DeviceConfig::Rng(rest.parse()?)),
            "console" => Ok(DeviceConfig::Console(rest.parse()?)),
            other => Err(DeviceError::Config(format!(
                "unknown device kind {other:?}; use blk, net, rng or console"
            ))),
        }
    }
}

/// A device, opened: its files and taps are held, and it can serve a frontend.
///
/// The backend runtime asks it for what it offers (features, configuration space, queues) and
/// for one [`QueueHandler`] per virtqueue when the frontend starts that queue.
pub trait Device: Send + Sync {
    /// The kind of device.
    fn kind(&self) -> DeviceKind;

    /// The virtio device ID (1 net, 2 blk, 3 console, 4 rng).
    fn device_id(&self) -> u32 {
        self.kind().virtio_id()
    }

    /// Number of virtqueues the device offers.
    fn num_queues(&self) -> usize;

    /// Largest virtqueue size the device accepts.
    fn max_queue_size(&self) -> u16 {
        backend::MAX_QUEUE_SIZE
    }

    /// Device-type virtio feature bits offered (the runtime adds the transport's own bits).
    fn features(&self) -> u64;

    /// Whether the device keeps requests in the inflight region (so that a restarted backend
    /// resubmits them). Net does not: a lost packet is retransmitted by the guest's protocols.
    fn supports_inflight(&self) -> bool {
        true
    }

    /// Whether to offer `VHOST_USER_PROTOCOL_F_MQ` (`GET_QUEUE_NUM`). Net does not: QEMU's net
    /// frontend reads the answer as a number of queue *pairs*, and the device has one pair.
    fn offers_mq(&self) -> bool {
        true
    }

    /// Another queue that queue `queue`'s worker serves too, right after each pass over its
    /// own (when no other thread is serving it then). Net: the transmit worker delivers what
    /// the tap has for the receive queue, so that a reply produced while a request was being
    /// sent reaches the guest without waking a second thread.
    fn peer_queue(&self, _queue: usize) -> Option<usize> {
        None
    }

    /// The virtio configuration space, as the driver reads it.
    fn config(&self) -> Vec<u8>;

    /// Every file descriptor the device holds (image files, tap), for the sandbox to keep.
    fn files(&self) -> Vec<RawFd>;

    /// The files a successor of this compartment must be handed rather than open again (a
    /// disk's image files, whose locks must not lapse; see [`startup`]). None by default.
    fn handover(&self) -> Vec<bulkhead_disk::OpenFile> {
        Vec::new()
    }

    /// Keeps `core`, the compartment's start-up socket, to tell the core later which files it
    /// uses when they change (`startup`'s `uses`: the console's connected client, which the
    /// core then hands to a successor). Most devices have nothing to tell: by default the
    /// socket is closed.
    fn tell_core(&self, core: startup::Startup) {
        drop(core);
    }

    /// What the device needs from a sandbox.
    fn sandbox(&self) -> SandboxSpec {
        sandbox::spec_for(self.kind(), self.files())
    }

    /// A handler for virtqueue `queue`, given the features the driver acknowledged.
    fn queue_handler(
        &self,
        queue: usize,
        acked_features: u64,
    ) -> Result<Box<dyn QueueHandler>, DeviceError>;
}

/// Opens what `cfg` names (image files, tap device). This runs before the sandbox is applied:
/// afterwards the device needs no new files.
pub fn open(cfg: &DeviceConfig) -> Result<Arc<dyn Device>, DeviceError> {
    open_with(cfg, bulkhead_disk::HandedFiles::default())
}

/// [`open`], using the files a predecessor handed over ([`Device::handover`]) instead of
/// opening their names again (a disk's image files; a console's connected client).
pub fn open_with(
    cfg: &DeviceConfig,
    handed: bulkhead_disk::HandedFiles,
) -> Result<Arc<dyn Device>, DeviceError> {
    open_limited(cfg, handed, None)
}

/// [`open_with`], the device's rate limits read from the limits page `limits` (the core's:
/// changeable while the device serves) rather than fixed at `cfg`'s. A console has none.
pub fn open_limited(
    cfg: &DeviceConfig,
    mut handed: bulkhead_disk::HandedFiles,
    limits: Option<limit::LimitsView>,
) -> Result<Arc<dyn Device>, DeviceError> {
    let client = match cfg {
        DeviceConfig::Console(_) => handed.take(std::path::Path::new(console::port::CLIENT_NAME)),
        _ => None,
    };
    if !handed.is_empty() && !matches!(cfg, DeviceConfig::Blk(_)) {
        return Err(DeviceError::Config(format!("a {} device takes no such files", cfg.kind())));
    }
    match cfg {
        DeviceConfig::Blk(c) => {
            let d = blk::BlkDevice::open(c, handed)?;
            Ok(Arc::new(match limits {
                Some(view) => d.with_limits(view),
                None => d,
            }))
        }
        DeviceConfig::Net(c) => {
            let d = net::NetDevice::open(c)?;
            Ok(Arc::new(match limits {
                Some(view) => d.with_limits(view),
                None => d,
            }))
        }
        DeviceConfig::Rng(c) => {
            let d = rng::RngDevice::open(c)?;
            Ok(Arc::new(match limits {
                Some(view) => d.with_limits(view),
                None => d,
            }))
        }
        DeviceConfig::Console(c) => Ok(Arc::new(console::ConsoleDevice::open(c, client)?)),
    }
}

/// Why a device could not be configured, opened or served.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// A configuration string or value is wrong; the message says which and what is accepted.
    #[error("{0}")]
    Config(String),
    /// The disk image could not be opened.
    #[error("cannot open the disk image")]
    Disk(#[from] bulkhead_disk::DiskError),
    /// The tap device could not be opened or set up.
    #[error("cannot set up the tap device {name}")]
    Tap {
        /// The interface name, or the fd number.
        name: String,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// The console's host side (a socket, a pty, standard input and output) could not be set
    /// up; the message says which and what was being done.
    #[error("{what}")]
    Host {
        /// What was being done.
        what: String,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// A system call for the backend's own plumbing (epoll, eventfd, socket options) failed.
    #[error("{what} failed")]
    Io {
        /// What was being done.
        what: &'static str,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
}

impl DeviceError {
    pub(crate) fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> DeviceError {
        move |source| DeviceError::Io { what, source }
    }
}

/// Splits a `key=value,flag,…` option list into pairs (a flag has an empty value).
pub(crate) fn options(s: &str) -> impl Iterator<Item = (&str, &str)> {
    s.split(',').filter(|p| !p.is_empty()).map(|p| p.split_once('=').unwrap_or((p, "")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_config_parses_kind_and_options() {
        let c: DeviceConfig = "blk,path=/d/a.qcow2,readonly,format=qcow2".parse().unwrap();
        let DeviceConfig::Blk(b) = &c else { panic!("{c:?}") };
        assert_eq!(b.path.to_str(), Some("/d/a.qcow2"));
        assert!(b.read_only);
        assert_eq!(b.format, Some(bulkhead_disk::Format::Qcow2));
        assert_eq!(c.kind(), DeviceKind::Blk);
        assert_eq!("rng".parse::<DeviceConfig>().unwrap().kind(), DeviceKind::Rng);
        assert_eq!("net,tap=tap0".parse::<DeviceConfig>().unwrap().kind(), DeviceKind::Net);
        let c: DeviceConfig = "console,socket=/run/c.sock".parse().unwrap();
        assert_eq!(c.kind(), DeviceKind::Console);
        let err = "gpu".parse::<DeviceConfig>().unwrap_err().to_string();
        assert!(err.contains("use blk, net, rng or console"), "{err}");
    }

    #[test]
    fn virtio_ids() {
        assert_eq!(DeviceKind::Net.virtio_id(), 1);
        assert_eq!(DeviceKind::Blk.virtio_id(), 2);
        assert_eq!(DeviceKind::Console.virtio_id(), 3);
        assert_eq!(DeviceKind::Rng.virtio_id(), 4);
        for kind in DeviceKind::ALL {
            assert_eq!(DeviceKind::from_name(kind.name()), Some(kind));
        }
    }
}
