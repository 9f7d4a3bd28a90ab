//! Virtio devices as the core sees them: the virtio-mmio transport the
//! guest's driver programs ([`mmio`]) and the vhost-user frontend that hands
//! the configured queues to the device's backend ([`frontend`]).
//!
//! The core holds no device logic. Each device is a vhost-user backend —
//! a compartment process, or a thread of this process in monolithic mode —
//! reached through a [`Backend`] the caller supplies. When the driver sets
//! DRIVER_OK, the core sends the backend the guest-memory memfd, the queue
//! addresses, an ioeventfd per queue (KVM signals it on the guest's
//! QueueNotify write) and an irqfd (KVM turns it into the device's
//! interrupt). From then on requests and completions flow between guest and
//! backend without passing through the core.

pub mod alarm;
pub mod attach;
pub mod frontend;
pub mod mmio;

use std::os::unix::net::UnixStream;

/// Virtio device IDs (virtio 1.2, section 5).
pub const DEVICE_ID_NET: u32 = 1;
pub const DEVICE_ID_BLOCK: u32 = 2;
pub const DEVICE_ID_RNG: u32 = 4;

/// Feature bits the transport understands (virtio 1.2, section 6).
pub const VIRTIO_F_INDIRECT_DESC: u64 = 1 << 28;
pub const VIRTIO_F_EVENT_IDX: u64 = 1 << 29;
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// Device-specific feature bits occupy 0–23.
pub const DEVICE_FEATURE_MASK: u64 = (1 << 24) - 1;
/// vhost-user's own feature bit, never shown to the guest.
pub const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;

/// The largest queue the core offers the driver.
pub const QUEUE_MAX_SIZE: u16 = 256;

/// What kind of device a backend serves, and the shape of its config space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    Block,
    Net,
    Rng,
}

impl DeviceKind {
    pub fn device_id(self) -> u32 {
        match self {
            DeviceKind::Block => DEVICE_ID_BLOCK,
            DeviceKind::Net => DEVICE_ID_NET,
            DeviceKind::Rng => DEVICE_ID_RNG,
        }
    }

    /// Bytes of device configuration space the core reads from the backend.
    pub fn config_size(self) -> u32 {
        match self {
            DeviceKind::Block => 60,
            DeviceKind::Net => 12,
            DeviceKind::Rng => 0,
        }
    }

    /// Queues the device has: blk 1, net 2 (receive, transmit), rng 1.
    pub fn queues(self) -> usize {
        match self {
            DeviceKind::Net => 2,
            _ => 1,
        }
    }

    /// Whether queue `index` is one the device must consume promptly (its
    /// progress is watched for hangs). Not net's receive queue: it holds
    /// buffers until packets arrive.
    pub fn watched_queue(self, index: usize) -> bool {
        !(self == DeviceKind::Net && index == 0)
    }

    pub fn name(self) -> &'static str {
        match self {
            DeviceKind::Block => "blk",
            DeviceKind::Net => "net",
            DeviceKind::Rng => "rng",
        }
    }
}

/// A started backend: the frontend's end of its vhost-user socket, and how
/// to describe it.
pub struct Launched {
    pub conn: UnixStream,
    /// The compartment's process ID (none in monolithic mode).
    pub pid: Option<u32>,
    /// One line on how it runs (process and sandbox layers, or thread).
    pub description: String,
}

/// Starts a device's backend, wherever it runs. The VMM (`bulkhead-vmm`)
/// provides two: compartments (a sandboxed process each) and threads
/// (monolithic mode).
pub trait Backend: Send {
    fn kind(&self) -> DeviceKind;
    /// A short name for messages, e.g. `blk0`.
    fn name(&self) -> String;
    /// Starts the backend (again, after a failure) and connects to it.
    fn launch(&mut self) -> std::io::Result<Launched>;
    /// How the running backend stands now, as seen from outside (for a
    /// compartment: its sandbox as `/proc/PID/status` shows it).
    fn status(&self) -> Option<String> {
        None
    }
    /// After the backend's connection ended: reaps it and says how it
    /// ended (e.g. `killed by signal 9`).
    fn exit_reason(&mut self) -> Option<String> {
        None
    }
    /// The running backend process's pidfd (readable once it exits), for
    /// the supervisor to watch; none for threads and outside backends.
    fn pidfd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
    /// Kills the running backend process now (a hung one); it is reaped by
    /// [`Backend::exit_reason`] or the next launch.
    fn kill(&mut self) {}
    /// Whether the supervisor may start it again. Threads of the core
    /// (monolithic mode) may not: a device fault there ends the VM.
    fn restartable(&self) -> bool {
        true
    }
    /// Runs `program` for the next launch (a live upgrade).
    fn set_program(&mut self, program: &std::path::Path) -> Result<(), String> {
        let _ = program;
        Err(format!("{} does not run in a process of its own", self.name()))
    }
    /// Whether it runs in a process of its own, a thread, or elsewhere.
    fn mode(&self) -> &'static str {
        "external"
    }
}

/// A backend someone else started, listening on a unix socket: another
/// project's vhost-user backend of a kind the core attaches (blk, net, rng:
/// qemu-storage-daemon's vhost-user-blk export, say) or a `bulkhead device`
/// started by hand.
pub struct ExternalBackend {
    pub kind: DeviceKind,
    pub name: String,
    pub socket: std::path::PathBuf,
}

impl Backend for ExternalBackend {
    fn kind(&self) -> DeviceKind {
        self.kind
    }

    fn name(&self) -> String {
        self.name.clone()
    }

    fn launch(&mut self) -> std::io::Result<Launched> {
        let conn = UnixStream::connect(&self.socket).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot connect to {}: {e}", self.socket.display()),
            )
        })?;
        Ok(Launched {
            conn,
            pid: None,
            description: format!("external backend on {}", self.socket.display()),
        })
    }
}
