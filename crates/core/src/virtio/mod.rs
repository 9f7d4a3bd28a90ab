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

/// Virtio device IDs (virtio 1.2, section 5) of the devices Bulkhead serves itself.
pub const DEVICE_ID_NET: u32 = 1;
pub const DEVICE_ID_BLOCK: u32 = 2;
pub const DEVICE_ID_CONSOLE: u32 = 3;
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

/// The most queues the core gives one device.
pub const MAX_QUEUES: usize = 64;

/// What the core knows of a virtio device type from the specification (virtio 1.2, section 5):
/// its name, how many queues it has unless the backend says (`GET_QUEUE_NUM`), the size of
/// its configuration space, and which queues hold the driver's buffers until something
/// arrives (a receive queue), so that the watchdog does not take waiting for a hang.
struct Spec {
    id: u32,
    name: &'static str,
    queues: usize,
    config_size: u32,
    waiting_queues: &'static [usize],
}

/// The device types the core attaches by name. Any other ID is attached by number, with what
/// its backend says and the user gives.
const SPECS: &[Spec] = &[
    Spec { id: 1, name: "net", queues: 2, config_size: 12, waiting_queues: &[0] },
    Spec { id: 2, name: "blk", queues: 1, config_size: 60, waiting_queues: &[] },
    Spec { id: 3, name: "console", queues: 2, config_size: 12, waiting_queues: &[0] },
    Spec { id: 4, name: "rng", queues: 1, config_size: 0, waiting_queues: &[] },
    Spec { id: 5, name: "balloon", queues: 3, config_size: 8, waiting_queues: &[2] },
    Spec { id: 8, name: "scsi", queues: 3, config_size: 36, waiting_queues: &[1] },
    Spec { id: 16, name: "gpu", queues: 2, config_size: 16, waiting_queues: &[] },
    Spec { id: 18, name: "input", queues: 2, config_size: 136, waiting_queues: &[0] },
    Spec { id: 19, name: "vsock", queues: 3, config_size: 8, waiting_queues: &[0, 2] },
    Spec { id: 25, name: "sound", queues: 4, config_size: 16, waiting_queues: &[1] },
    Spec { id: 26, name: "fs", queues: 2, config_size: 40, waiting_queues: &[] },
    Spec { id: 27, name: "pmem", queues: 1, config_size: 16, waiting_queues: &[] },
    Spec { id: 32, name: "scmi", queues: 2, config_size: 0, waiting_queues: &[1] },
    Spec { id: 34, name: "i2c", queues: 1, config_size: 0, waiting_queues: &[] },
    Spec { id: 41, name: "gpio", queues: 2, config_size: 8, waiting_queues: &[1] },
];

/// The type of a virtio device: its device ID (virtio 1.2, section 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceKind(u32);

impl DeviceKind {
    pub const BLOCK: DeviceKind = DeviceKind(DEVICE_ID_BLOCK);
    pub const NET: DeviceKind = DeviceKind(DEVICE_ID_NET);
    pub const RNG: DeviceKind = DeviceKind(DEVICE_ID_RNG);
    pub const CONSOLE: DeviceKind = DeviceKind(DEVICE_ID_CONSOLE);

    /// A device type by its name (`blk`, `vsock`, `fs`, …) or its device ID (`26`).
    pub fn parse(text: &str) -> Result<DeviceKind, String> {
        if let Some(spec) = SPECS.iter().find(|s| s.name == text) {
            return Ok(DeviceKind(spec.id));
        }
        match text.parse::<u32>() {
            Ok(id) if (1..=63).contains(&id) => Ok(DeviceKind(id)),
            _ => {
                let names: Vec<&str> = SPECS.iter().map(|s| s.name).collect();
                Err(format!(
                    "unknown device type {text:?}: give one of {}, or a virtio device ID (1-63)",
                    names.join(", ")
                ))
            }
        }
    }

    fn spec(self) -> Option<&'static Spec> {
        SPECS.iter().find(|s| s.id == self.0)
    }

    pub fn device_id(self) -> u32 {
        self.0
    }

    /// Bytes of device configuration space the core shows, as the specification sizes it (0
    /// for a type it does not know: the user gives it).
    pub fn config_size(self) -> u32 {
        self.spec().map_or(0, |s| s.config_size)
    }

    /// Queues the device has when its backend does not say: the specification's number for
    /// the type (blk 1, net 2 — receive and transmit —, vsock 3, …), 1 for a type it does not
    /// know.
    pub fn queues(self) -> usize {
        self.spec().map_or(1, |s| s.queues)
    }

    /// Whether queue `index` is one the device must consume promptly (its progress is watched
    /// for hangs). Not a queue that holds buffers until something arrives (net's receive
    /// queue), and none of a type the core does not know.
    pub fn watched_queue(self, index: usize) -> bool {
        self.spec().is_some_and(|s| !s.waiting_queues.contains(&index))
    }

    /// The type's name (`dev` for one the core does not know), the stem of its devices' names.
    pub fn name(self) -> &'static str {
        self.spec().map_or("dev", |s| s.name)
    }
}

impl std::fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.spec() {
            Some(s) => f.write_str(s.name),
            None => write!(f, "virtio device {}", self.0),
        }
    }
}

/// Where a device's configuration space comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigSpace {
    /// The backend's (`GET_CONFIG`), of the type's size, or zeros when it offers none.
    Backend,
    /// These bytes, as the user gave them.
    Bytes(Vec<u8>),
    /// virtio-fs's (virtio 1.2, section 5.11.4): the tag the guest mounts and the number of
    /// request queues, which QEMU's frontend also supplies itself (virtiofsd has none).
    FsTag(String),
}

/// What the core must know of a device before it can show it to the guest, beyond what its
/// backend says: its type, its queue count if the user fixed it, its configuration space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceShape {
    pub kind: DeviceKind,
    /// The queue count; `None`: the backend's (`GET_QUEUE_NUM`), else the type's.
    pub queues: Option<usize>,
    pub config: ConfigSpace,
}

impl DeviceShape {
    /// A device of `kind` as its backend describes it.
    pub fn of(kind: DeviceKind) -> DeviceShape {
        DeviceShape { kind, queues: None, config: ConfigSpace::Backend }
    }
}

/// The longest virtio-fs tag, in bytes.
pub const FS_TAG_MAX: usize = 36;

/// virtio-fs's configuration space for `tag` with `request_queues` request queues.
pub fn fs_config(tag: &str, request_queues: u32) -> Vec<u8> {
    let mut config = vec![0u8; FS_TAG_MAX];
    let bytes = &tag.as_bytes()[..tag.len().min(FS_TAG_MAX)];
    config[..bytes.len()].copy_from_slice(bytes);
    config.extend_from_slice(&request_queues.to_le_bytes());
    config
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

/// A backend kept for the next core ([`Backend::keep_for_successor`]), opaque to the core.
pub type Kept = Box<dyn std::any::Any + Send>;

/// A new configuration for a device's backend, opaque to the core: what it holds is the VMM's
/// business (a disk's new image, say). See [`Backend::prepare`].
pub type Reconfiguration = Box<dyn std::any::Any + Send>;

/// Starts a device's backend, wherever it runs. The VMM (`bulkhead-vmm`)
/// provides two: compartments (a sandboxed process each) and threads
/// (monolithic mode).
pub trait Backend: Send {
    fn kind(&self) -> DeviceKind;
    /// The device as the core shows it; by default as the backend describes it.
    fn shape(&self) -> DeviceShape {
        DeviceShape::of(self.kind())
    }
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
    /// Called by the device's supervisor at each tick (100 ms) while the backend runs, for
    /// what a backend watches on its own (a compartment reads which files its process says
    /// it uses now). Must not wait.
    fn tick(&mut self) {}
    /// Lets the running backend go on under the next core (a core update): returns what the
    /// VMM needs to hand it over, its descriptors held open, and lets go of it. `None` for a
    /// backend that cannot be kept: it ends with this core and the next starts another.
    fn keep_for_successor(&mut self) -> Option<Kept> {
        None
    }
    /// Whether the running backend was kept from a previous core (see
    /// [`Backend::keep_for_successor`]) and not started since.
    fn adopted(&self) -> bool {
        false
    }
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
    /// Makes the next [`Backend::launch`] start the backend with a new configuration, and
    /// checks all it can of that configuration while the running backend still serves (a
    /// compartment on a new disk image is started and has opened and locked it; a thread's
    /// device is opened), so that a change that cannot work is refused — a sentence for the
    /// user — with the running backend untouched. By default nothing can be changed.
    fn prepare(&mut self, change: Reconfiguration) -> Result<(), String> {
        let _ = change;
        Err(format!("{}'s backend cannot be started with another configuration", self.name()))
    }
    /// Whether it runs in a process of its own, a thread, or elsewhere.
    fn mode(&self) -> &'static str {
        "external"
    }
    /// The process started ahead to take over at the next launch, if there is one.
    fn standby_pid(&self) -> Option<u32> {
        None
    }
    /// The standby's vhost-user socket (a second descriptor of the one the launch that takes
    /// it will return), for the supervisor to hand it the device's set-up ahead
    /// ([`frontend::Connection::prepare`]).
    fn standby_connection(&self) -> Option<UnixStream> {
        None
    }
    /// Lets the standby go, because it could not be handed the set-up (`why`): recoveries go
    /// on without one, starting each successor then.
    fn discard_standby(&mut self, why: &str) {
        let _ = why;
    }
}

/// A backend someone else started, listening on a unix socket: another
/// project's vhost-user backend of a kind the core attaches (blk, net, rng:
/// qemu-storage-daemon's vhost-user-blk export, say) or a `bulkhead device`
/// started by hand.
pub struct ExternalBackend {
    pub shape: DeviceShape,
    pub name: String,
    pub socket: std::path::PathBuf,
}

impl Backend for ExternalBackend {
    fn kind(&self) -> DeviceKind {
        self.shape.kind
    }

    fn shape(&self) -> DeviceShape {
        self.shape.clone()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_are_named_or_numbered() {
        assert_eq!(DeviceKind::parse("blk"), Ok(DeviceKind::BLOCK));
        assert_eq!(DeviceKind::parse("2"), Ok(DeviceKind::BLOCK));
        let fs = DeviceKind::parse("fs").unwrap();
        assert_eq!((fs.device_id(), fs.queues(), fs.config_size(), fs.name()), (26, 2, 40, "fs"));
        let vsock = DeviceKind::parse("vsock").unwrap();
        assert_eq!((vsock.device_id(), vsock.queues()), (19, 3));
        assert!(!vsock.watched_queue(0) && vsock.watched_queue(1) && !vsock.watched_queue(2));
        // A type the core has no table entry for: attached by number, its queues unwatched.
        let other = DeviceKind::parse("42").unwrap();
        assert_eq!((other.queues(), other.config_size(), other.name()), (1, 0, "dev"));
        assert!(!other.watched_queue(0));
        assert_eq!(other.to_string(), "virtio device 42");
        for bad in ["", "0", "64", "floppy", "-1"] {
            assert!(DeviceKind::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_are_unique_and_ids_match_the_specification() {
        for (i, a) in SPECS.iter().enumerate() {
            assert!(SPECS[i + 1..].iter().all(|b| b.name != a.name && b.id != a.id), "{}", a.name);
        }
        assert_eq!(DeviceKind::NET.name(), "net");
        assert_eq!(DeviceKind::RNG.config_size(), 0);
    }

    #[test]
    fn the_fs_config_holds_the_tag_and_the_request_queues() {
        let config = fs_config("share", 3);
        assert_eq!(config.len(), DeviceKind::parse("fs").unwrap().config_size() as usize);
        assert_eq!(&config[..6], b"share\0");
        assert_eq!(&config[36..], &3u32.to_le_bytes());
        assert_eq!(&fs_config(&"x".repeat(40), 1)[..36], "x".repeat(36).as_bytes());
    }
}

/// A scripted vhost-user backend for the frontend's and the transport's unit tests.
#[cfg(test)]
mod fake {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    /// Request codes the fakes answer (QEMU's `docs/interop/vhost-user.rst`).
    pub const GET_FEATURES: u32 = 1;
    pub const GET_VRING_BASE: u32 = 11;
    pub const GET_PROTOCOL_FEATURES: u32 = 15;
    pub const GET_QUEUE_NUM: u32 = 17;
    pub const GET_CONFIG: u32 = 24;

    /// A backend on the other end of the returned socket, on a thread of its own: for each
    /// message, `reply(request, body)` gives the body of its answer, or `None` for no answer.
    /// Reads every message, with or without descriptors, until the socket closes.
    pub fn backend(reply: impl Fn(u32, &[u8]) -> Option<Vec<u8>> + Send + 'static) -> UnixStream {
        backend_seeing_flags(move |request, _, body| reply(request, body))
    }

    /// [`backend`], whose `reply` also sees each message's header flags.
    pub fn backend_seeing_flags(
        reply: impl Fn(u32, u32, &[u8]) -> Option<Vec<u8>> + Send + 'static,
    ) -> UnixStream {
        let (core, mut backend) = UnixStream::pair().unwrap();
        std::thread::spawn(move || loop {
            let mut header = [0u8; 12];
            if backend.read_exact(&mut header).is_err() {
                return;
            }
            let request = u32::from_le_bytes(header[0..4].try_into().unwrap());
            let flags = u32::from_le_bytes(header[4..8].try_into().unwrap());
            let size = u32::from_le_bytes(header[8..12].try_into().unwrap());
            let mut body = vec![0u8; size as usize];
            if backend.read_exact(&mut body).is_err() {
                return;
            }
            let Some(reply_body) = reply(request, flags, &body) else { continue };
            let mut message = request.to_le_bytes().to_vec();
            message.extend_from_slice(&(0x1u32 | 0x4).to_le_bytes()); // version 1, a reply
            message.extend_from_slice(&(reply_body.len() as u32).to_le_bytes());
            message.extend_from_slice(&reply_body);
            if backend.write_all(&message).is_err() {
                return;
            }
        });
        core
    }
}
