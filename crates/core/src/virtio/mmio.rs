//! The virtio-mmio transport, version 2 (virtio 1.2, section 4.2.2): the
//! registers a driver uses to discover a device, negotiate features and set
//! up queues. A page of MMIO per device; accesses trap to the core (control
//! path only). QueueNotify writes go to per-queue ioeventfds registered
//! with KVM and never get here unless their size or value is unusual.
//!
//! InterruptStatus: the backend signals the irqfd directly, so the core
//! cannot know which event it was. Once the device is active the "used
//! buffer" bit reads as set: a driver that reads the register in its
//! interrupt handler (Linux does) then always scans its queues — a spurious
//! scan costs nothing, a missed one would lose an interrupt.
//!
//! Configuration changes: the transport keeps the configuration space as the driver last saw
//! it. When a new backend is put in place ([`MmioTransport::replace_backend`]: a restart, an
//! upgrade, or a backend started with a new configuration, such as a disk swapped for another
//! image) the space it reports at connection (`GET_CONFIG`, where the device's shape takes the
//! configuration from the backend) is compared with that one; if it differs, ConfigGeneration
//! moves on and, on a running device, the configuration-change bit of InterruptStatus is set
//! and the device's interrupt raised (virtio 1.2, 4.2.2 and 2.5.1), so that the driver reads
//! the space again. The transport knows no field of any device's space: a change is any byte.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use vmm_sys_util::eventfd::EventFd;

use super::frontend::{
    avail_index, used_index, Connection, FrontendError, Inflight, QueueConfig, Setup, REPLY_TIMEOUT,
};
use super::{
    DeviceKind, DEVICE_FEATURE_MASK, QUEUE_MAX_SIZE, VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC,
    VIRTIO_F_VERSION_1,
};
use crate::bus::BusDevice;
use crate::memory::GuestRam;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x4b4c_4842; // "BHLK"

/// Device status bits (virtio 1.2, section 2.1).
pub const STATUS_ACKNOWLEDGE: u32 = 1;
pub const STATUS_DRIVER: u32 = 2;
pub const STATUS_DRIVER_OK: u32 = 4;
pub const STATUS_FEATURES_OK: u32 = 8;
pub const STATUS_NEEDS_RESET: u32 = 0x40;
pub const STATUS_FAILED: u32 = 0x80;

/// InterruptStatus bits (virtio 1.2, 4.2.2): a used buffer, a configuration change.
pub const INT_VRING: u32 = 1;
pub const INT_CONFIG: u32 = 2;

/// What the supervisor's watchdog reads of a device's queues: the started queues' addresses,
/// kept apart from the transport so that reading them never waits for its lock (which a vCPU
/// holds through a round trip to the backend when it activates or resets the device).
pub struct QueueWatch {
    ram: Arc<GuestRam>,
    /// The queues the current backend runs (empty while none does).
    queues: Mutex<Vec<(usize, QueueConfig)>>,
}

impl QueueWatch {
    fn set(&self, queues: Vec<(usize, QueueConfig)>) {
        *self.queues.lock().unwrap_or_else(|p| p.into_inner()) = queues;
    }

    /// For each started queue a `kind` device must consume (see
    /// [`DeviceKind::watched_queue`]): its (available, used) indices in guest memory. Empty
    /// unless the queues run.
    pub fn progress(&self, kind: DeviceKind) -> Vec<(u16, u16)> {
        let queues = self.queues.lock().unwrap_or_else(|p| p.into_inner()).clone();
        queues
            .iter()
            .filter(|(i, _)| kind.watched_queue(*i))
            .filter_map(|(_, q)| Some((avail_index(&self.ram, q)?, used_index(&self.ram, q)?)))
            .collect()
    }
}

/// The transport's state for one device.
pub struct MmioTransport {
    kind: DeviceKind,
    name: String,
    ram: Arc<GuestRam>,
    backend: Option<Connection>,
    kicks: Vec<EventFd>,
    call: Arc<EventFd>,
    device_features_sel: u32,
    driver_features_sel: u32,
    acked_features: u64,
    /// The device-specific features the backend offers: the current backend's, kept while
    /// none is connected (a driver setting up during a restart or a swap sees the device's).
    offered_features: u64,
    queue_sel: usize,
    queues: Vec<QueueConfig>,
    status: u32,
    interrupt_status: u32,
    config_generation: u32,
    /// The device configuration space as the driver sees it: the current backend's, kept
    /// while none is connected, and compared with each new backend's.
    config: Vec<u8>,
    /// The backend's inflight region, kept across backend restarts.
    inflight: Option<Arc<Inflight>>,
    /// The queues are running in the current backend.
    active: bool,
    /// The running queues, for the supervisor's watchdog.
    watch: Arc<QueueWatch>,
    /// The VM is paused: the queues are stopped and start only when it resumes ([`Self::thaw`]).
    frozen: bool,
}

/// A transport in a snapshot: the registers the driver wrote, the queues, the configuration
/// space it saw and the inflight region.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TransportState {
    pub name: String,
    /// The device type's name (`blk`, `net`, …).
    pub kind: String,
    pub status: u32,
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub acked_features: u64,
    pub queue_sel: u32,
    pub queues: Vec<QueueConfig>,
    pub interrupt_status: u32,
    pub config_generation: u32,
    /// The configuration space as the driver last saw it, in hex.
    pub config: String,
    /// The backend's inflight region, in hex (devices that keep one, once started).
    pub inflight: Option<String>,
}

impl MmioTransport {
    pub fn new(
        kind: DeviceKind,
        name: String,
        ram: Arc<GuestRam>,
        backend: Connection,
        kicks: Vec<EventFd>,
        call: Arc<EventFd>,
    ) -> Self {
        // One queue per kick the caller wired (it wires the backend's count).
        let queues = vec![QueueConfig::default(); backend.queues.min(kicks.len())];
        let watch = Arc::new(QueueWatch { ram: ram.clone(), queues: Mutex::new(Vec::new()) });
        let config = backend.config.clone();
        let offered_features = backend.features;
        MmioTransport {
            kind,
            name,
            ram,
            backend: Some(backend),
            kicks,
            call,
            device_features_sel: 0,
            driver_features_sel: 0,
            acked_features: 0,
            offered_features,
            queue_sel: 0,
            queues,
            status: 0,
            interrupt_status: 0,
            config_generation: 0,
            config,
            inflight: None,
            active: false,
            watch,
            frozen: false,
        }
    }

    /// The transport's state for a snapshot (taken while the VM is paused, its queues stopped).
    pub fn state(&self) -> Result<TransportState, String> {
        let inflight = match &self.inflight {
            Some(region) => Some(crate::state::hex::encode(
                &region
                    .read_all()
                    .map_err(|e| format!("{}: the inflight region: {e}", self.name))?,
            )),
            None => None,
        };
        Ok(TransportState {
            name: self.name.clone(),
            kind: self.kind.name().to_string(),
            status: self.status,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            acked_features: self.acked_features,
            queue_sel: self.queue_sel as u32,
            queues: self.queues.clone(),
            interrupt_status: self.interrupt_status,
            config_generation: self.config_generation,
            config: crate::state::hex::encode(&self.config),
            inflight,
        })
    }

    /// Puts a snapshot's state in place on a transport whose backend has just connected, and
    /// starts a running device's queues where they stood (as a restart does: from the used
    /// index, with the saved inflight region resubmitted), with an interrupt in case a
    /// completion's was not delivered before the snapshot.
    pub fn restore(&mut self, saved: &TransportState) -> Result<(), String> {
        let name = self.name.clone();
        let fail = |what: String| format!("{name}: {what}");
        if saved.kind != self.kind.name() || saved.name != self.name {
            return Err(fail(format!(
                "the snapshot has the {} device {} here",
                saved.kind, saved.name
            )));
        }
        if saved.queues.len() != self.queues.len() {
            return Err(fail(format!(
                "{} queues saved where the device has {}",
                saved.queues.len(),
                self.queues.len()
            )));
        }
        if let Some(q) = saved.queues.iter().find(|q| q.size > QUEUE_MAX_SIZE) {
            return Err(fail(format!("a queue of {} entries", q.size)));
        }
        let config = crate::state::hex::decode(&saved.config).map_err(fail)?;
        if saved.acked_features & !self.device_features() != 0 {
            return Err(fail(format!(
                "the driver acked features {:#x} this backend does not offer",
                saved.acked_features & !self.device_features()
            )));
        }
        self.status = saved.status;
        self.device_features_sel = saved.device_features_sel;
        self.driver_features_sel = saved.driver_features_sel;
        self.acked_features = saved.acked_features;
        self.queue_sel = saved.queue_sel as usize;
        self.queues.clone_from(&saved.queues);
        self.interrupt_status = saved.interrupt_status;
        self.config_generation = saved.config_generation;
        if config != self.config {
            // The backend reports another space (a disk resized since): the driver is told.
            self.config_generation = self.config_generation.wrapping_add(1);
            self.interrupt_status |= INT_CONFIG;
        }
        if !self.driver_running() {
            return Ok(());
        }
        let queues = self.queues.len();
        let Some(backend) = self.backend_for_guest() else {
            return Err(fail("no backend to run the device".into()));
        };
        if let (Some(bytes), true) = (&saved.inflight, backend.keeps_inflight()) {
            let bytes = crate::state::hex::decode(bytes).map_err(fail)?;
            let region = backend.new_inflight(queues).map_err(|e| fail(e.to_string()))?;
            region.write_all(&bytes).map_err(|e| fail(e.to_string()))?;
            self.inflight = Some(Arc::new(region));
        }
        self.start_queues_and_signal().map_err(|e| fail(format!("cannot start the queues: {e}")))
    }

    /// Stops the queues for a pause (each backend's queue stopped with `GET_VRING_BASE`, the
    /// request in progress finished first): nothing is written to guest memory until
    /// [`Self::thaw`]. A backend put in place meanwhile (a restart) waits too.
    pub fn freeze(&mut self) -> Result<(), FrontendError> {
        self.frozen = true;
        if !self.active {
            return Ok(());
        }
        self.set_active(false);
        let queues = self.queues.clone();
        match self.backend_for_guest() {
            Some(backend) => backend.reset(&queues),
            None => Ok(()),
        }
    }

    /// Starts the queues [`Self::freeze`] stopped, where they stood, with an interrupt.
    pub fn thaw(&mut self) -> Result<(), FrontendError> {
        self.frozen = false;
        if self.active || !self.driver_running() || self.backend_for_guest().is_none() {
            return Ok(());
        }
        self.start_queues_and_signal()
    }

    /// Whether the driver has the device running (DRIVER_OK with FEATURES_OK).
    fn driver_running(&self) -> bool {
        let running = STATUS_DRIVER_OK | STATUS_FEATURES_OK;
        self.status & running == running
    }

    /// Starts the queues in the current backend and raises the device's interrupt: a
    /// completion's may have gone with the old backend, or to a vCPU parked for a pause.
    fn start_queues_and_signal(&mut self) -> Result<(), FrontendError> {
        self.start_queues()?;
        self.interrupt_status |= INT_VRING;
        let _ = self.call.write(1);
        Ok(())
    }

    /// The running queues, readable without this transport's lock.
    pub fn watch(&self) -> Arc<QueueWatch> {
        self.watch.clone()
    }

    /// The features offered to the driver: the backend's device-specific
    /// bits plus the generic ones this transport supports.
    pub fn device_features(&self) -> u64 {
        let offered = self.offered_features;
        let generic = VIRTIO_F_VERSION_1 | VIRTIO_F_INDIRECT_DESC | VIRTIO_F_EVENT_IDX;
        offered & (DEVICE_FEATURE_MASK | generic)
    }

    pub fn status(&self) -> u32 {
        self.status
    }

    fn queue(&mut self) -> Option<&mut QueueConfig> {
        self.queues.get_mut(self.queue_sel)
    }

    fn read_register(&self, offset: u64) -> u32 {
        let q = self.queues.get(self.queue_sel);
        match offset {
            0x000 => MAGIC,
            0x004 => VERSION,
            0x008 => self.kind.device_id(),
            0x00c => VENDOR_ID,
            0x010 => match self.device_features_sel {
                0 => self.device_features() as u32,
                1 => (self.device_features() >> 32) as u32,
                _ => 0,
            },
            0x034 => q.map_or(0, |_| u32::from(QUEUE_MAX_SIZE)),
            0x044 => q.map_or(0, |q| u32::from(q.ready)),
            0x060 => self.interrupt_status,
            0x070 => self.status,
            0x0b0 | 0x0b4 => u32::MAX, // no shared memory regions: length -1
            0x0fc => self.config_generation,
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        // Queue and feature set-up is only allowed before DRIVER_OK.
        let setting_up = self.status & STATUS_DRIVER_OK == 0;
        match offset {
            0x014 => self.device_features_sel = value,
            0x024 => self.driver_features_sel = value,
            0x020 if setting_up && self.status & STATUS_FEATURES_OK == 0 => {
                let shift = match self.driver_features_sel {
                    0 => 0,
                    1 => 32,
                    _ => return,
                };
                self.acked_features &= !(0xffff_ffff_u64 << shift);
                self.acked_features |= u64::from(value) << shift;
            }
            0x030 => self.queue_sel = value as usize,
            0x038 if setting_up => {
                if let Some(q) = self.queue() {
                    q.size = value.min(u32::from(QUEUE_MAX_SIZE)) as u16;
                }
            }
            0x044 if setting_up => {
                if let Some(q) = self.queue() {
                    q.ready = value == 1;
                }
            }
            0x050 => self.notify(value),
            0x064 => self.interrupt_status &= !(value & INT_CONFIG),
            0x070 => self.set_status(value),
            0x080 | 0x084 | 0x090 | 0x094 | 0x0a0 | 0x0a4 if setting_up => {
                if let Some(q) = self.queue() {
                    let field = match offset & !0xf {
                        0x080 => &mut q.desc,
                        0x090 => &mut q.driver,
                        _ => &mut q.device,
                    };
                    let shift = if offset & 4 == 0 { 0 } else { 32 };
                    *field = (*field & !(0xffff_ffff_u64 << shift)) | (u64::from(value) << shift);
                }
            }
            _ => {}
        }
    }

    /// A notify that did not hit the ioeventfd (unusual size): forward it.
    fn notify(&self, queue: u32) {
        if let Some(kick) = self.kicks.get(queue as usize) {
            let _ = kick.write(1);
        }
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let newly = value & !self.status;
        let mut value = value;
        if newly & STATUS_FEATURES_OK != 0 && !self.features_acceptable() {
            value &= !STATUS_FEATURES_OK;
        }
        self.status = value;
        if newly & STATUS_DRIVER_OK != 0 && value & STATUS_FEATURES_OK != 0 {
            self.activate();
        }
    }

    fn features_acceptable(&self) -> bool {
        self.acked_features & !self.device_features() == 0
            && self.acked_features & VIRTIO_F_VERSION_1 != 0
    }

    fn activate(&mut self) {
        // Between two backends (a restart, a swap) the queues start when the next one connects
        // (`replace_backend`): the driver sees a device that runs, a little later.
        if self.backend.is_none() {
            log::debug!("{}: DRIVER_OK with no backend connected: started on the next", self.name);
            return;
        }
        // The driver's vCPU waits for the whole activation: one deadline for all its messages.
        self.backend_for_guest();
        match self.start_queues() {
            Ok(()) => self.interrupt_status |= INT_VRING,
            Err(e) => {
                log::error!("{}: cannot start the device: {e}", self.name);
                eprintln!("bulkhead: {}: cannot start the device: {e}", self.name);
                self.status |= STATUS_NEEDS_RESET;
            }
        }
    }

    /// Hands the queues to the current backend, with the inflight region.
    fn start_queues(&mut self) -> Result<(), FrontendError> {
        self.set_active(false);
        let Some(backend) = self.backend.as_mut() else {
            return Err(FrontendError::NoBackend);
        };
        if backend.keeps_inflight() && self.inflight.is_none() {
            self.inflight = Some(Arc::new(backend.new_inflight(self.queues.len())?));
        }
        let setup = Setup {
            ram: self.ram.clone(),
            acked: Some(self.acked_features),
            queues: self.queues.clone(),
            inflight: self.inflight.clone(),
        };
        backend.activate(&setup, &self.kicks, &self.call)?;
        self.set_active(true);
        // A kick for every started queue, as QEMU's frontend gives each new backend: a backend
        // without an inflight region (qemu-storage-daemon, say) does not look at its rings
        // until kicked, and the guest's kick for a request the old backend took with it was
        // consumed by that backend. A spurious kick costs one look at an empty ring.
        for (kick, _) in self.kicks.iter().zip(&self.queues).filter(|(_, q)| q.ready) {
            let _ = kick.write(1);
        }
        Ok(())
    }

    /// Whether the queues run in the current backend (the watchdog follows).
    fn set_active(&mut self, active: bool) {
        self.active = active;
        let running = match active {
            true => self.queues.iter().copied().enumerate().filter(|(_, q)| q.ready).collect(),
            false => Vec::new(),
        };
        self.watch.set(running);
    }

    /// Puts a new backend in place of one that died or is being replaced.
    /// A running device is started again where it stood: same queues, the
    /// kept inflight region (the backend resubmits what was in flight), and
    /// an interrupt in case a completion's was lost with the old backend.
    pub fn replace_backend(
        &mut self,
        mut backend: Connection,
        deadline: Instant,
    ) -> Result<(), FrontendError> {
        backend.set_deadline(deadline);
        if backend.queues < self.queues.len() {
            return Err(FrontendError::FewerQueues {
                got: backend.queues,
                want: self.queues.len(),
            });
        }
        let missing = self.acked_features & DEVICE_FEATURE_MASK & !backend.features;
        if self.status & STATUS_FEATURES_OK != 0 && missing != 0 {
            return Err(FrontendError::FeaturesMissing(missing));
        }
        let config_changed = backend.config != self.config;
        if config_changed {
            self.config = backend.config.clone();
            self.config_generation = self.config_generation.wrapping_add(1);
        }
        self.offered_features = backend.features;
        self.backend = Some(backend);
        let running = self.driver_running();
        if config_changed && running {
            // Raised with the queues' interrupt: one signal for both causes.
            self.interrupt_status |= INT_CONFIG;
        }
        if !running || self.frozen {
            // Paused: `thaw` starts the queues (and raises the interrupt) when the VM resumes.
            return Ok(());
        }
        self.start_queues_and_signal()?;
        self.status &= !STATUS_NEEDS_RESET;
        Ok(())
    }

    /// What a standby backend can be sent ahead of taking the device over
    /// ([`Connection::prepare`]): the driver's features and queues once it has set them up.
    pub fn standby_setup(&self) -> Setup {
        let running = self.driver_running();
        Setup {
            ram: self.ram.clone(),
            acked: running.then_some(self.acked_features),
            queues: if running { self.queues.clone() } else { Vec::new() },
            inflight: self.inflight.clone(),
        }
    }

    /// Drops the backend connection (it is dead or being replaced).
    pub fn detach_backend(&mut self) {
        self.backend = None;
        self.set_active(false);
    }

    /// What a restart of the current backend keeps of the requests it has in flight.
    pub fn restart_guarantee(&self) -> &'static str {
        match &self.backend {
            Some(b) if b.keeps_inflight() => {
                "in-flight requests resubmitted (the backend keeps a vhost-user inflight region)"
            }
            Some(_) => {
                "queues replayed from the used index: nothing lost if the device completes \
                 requests in order (the backend keeps no inflight region)"
            }
            None => "unknown: no backend connected",
        }
    }

    /// The backend connection's socket, to watch for its end.
    pub fn backend_fd(&self) -> Option<i32> {
        self.backend.as_ref().map(|b| b.raw_fd())
    }

    /// For each started queue the device must consume: its (available, used) indices in
    /// guest memory (see [`QueueWatch::progress`]).
    pub fn progress(&self) -> Vec<(u16, u16)> {
        self.watch.progress(self.kind)
    }

    /// The current backend, with [`REPLY_TIMEOUT`] for the guest's operation that starts.
    fn backend_for_guest(&mut self) -> Option<&mut Connection> {
        let backend = self.backend.as_mut()?;
        backend.set_deadline(Instant::now() + REPLY_TIMEOUT);
        Some(backend)
    }

    fn reset(&mut self) {
        if self.status & STATUS_DRIVER_OK != 0 {
            let queues = self.queues.clone();
            if let Some(backend) = self.backend_for_guest() {
                if let Err(e) = backend.reset(&queues) {
                    log::warn!("{}: reset: {e}", self.name);
                }
            }
        }
        self.status = 0;
        self.set_active(false);
        self.inflight = None;
        self.acked_features = 0;
        self.interrupt_status = 0;
        self.queue_sel = 0;
        self.queues.iter_mut().for_each(|q| *q = QueueConfig::default());
    }

    fn config(&self) -> &[u8] {
        &self.config
    }

    /// The device configuration space as the driver sees it now.
    pub fn config_space(&self) -> Vec<u8> {
        self.config.clone()
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= 0x100 {
            let config = self.config();
            let start = (offset - 0x100) as usize;
            for (i, b) in data.iter_mut().enumerate() {
                *b = config.get(start + i).copied().unwrap_or(0);
            }
            return;
        }
        let value = if data.len() == 4 && offset.is_multiple_of(4) {
            self.read_register(offset)
        } else {
            0
        };
        let bytes = value.to_le_bytes();
        let n = data.len().min(4);
        data[..n].copy_from_slice(&bytes[..n]);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= 0x100 {
            let start = (offset - 0x100) as usize;
            if start + data.len() <= self.config().len() {
                let written = self.backend_for_guest().map(|backend| {
                    let written = backend.write_config(start as u32, data);
                    if written.is_ok() && start + data.len() <= backend.config.len() {
                        backend.config[start..start + data.len()].copy_from_slice(data);
                    }
                    written
                });
                match written {
                    Some(Ok(())) => self.config[start..start + data.len()].copy_from_slice(data),
                    Some(Err(e)) => log::warn!("{}: config write: {e}", self.name),
                    None => {}
                }
            }
            return;
        }
        if data.len() == 4 && offset.is_multiple_of(4) {
            self.write_register(offset, u32::from_le_bytes([data[0], data[1], data[2], data[3]]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::{fake, DeviceShape};
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    /// A vhost-user backend that offers only VIRTIO_F_VERSION_1 (no protocol features, so
    /// nothing but GET_FEATURES and GET_VRING_BASE is answered); with `silent`, it never answers
    /// GET_VRING_BASE.
    fn fake_backend(silent: bool) -> UnixStream {
        crate::virtio::fake::backend(move |request, body| match request {
            fake::GET_FEATURES => Some(VIRTIO_F_VERSION_1.to_le_bytes().to_vec()),
            fake::GET_VRING_BASE if !silent => {
                Some([&body[0..4], &7u32.to_le_bytes()[..]].concat())
            }
            _ => None,
        })
    }

    fn transport(silent: bool) -> MmioTransport {
        let ram = Arc::new(GuestRam::new(16 << 20).unwrap());
        let conn =
            Connection::connect(fake_backend(silent), &DeviceShape::of(DeviceKind::RNG)).unwrap();
        let kicks = vec![EventFd::new(libc::EFD_NONBLOCK).unwrap()];
        let call = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        MmioTransport::new(DeviceKind::RNG, "rng0".into(), ram, conn, kicks, call)
    }

    fn read(t: &mut MmioTransport, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        t.read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    fn write(t: &mut MmioTransport, offset: u64, value: u32) {
        t.write(offset, &value.to_le_bytes());
    }

    /// The driver's steps up to FEATURES_OK (VERSION_1 acked) and one ready queue at 1 MiB.
    fn negotiate(t: &mut MmioTransport) {
        write(t, 0x070, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        write(t, 0x024, 1);
        write(t, 0x020, 1);
        write(t, 0x070, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
        write(t, 0x030, 0);
        write(t, 0x038, 64);
        for (reg, at) in [(0x080, 0x10_0000), (0x090, 0x10_1000), (0x0a0, 0x10_2000)] {
            write(t, reg, at);
        }
        write(t, 0x044, 1);
    }

    #[test]
    fn the_registers_identify_a_version_2_device() {
        let mut t = transport(false);
        assert_eq!(read(&mut t, 0x000), MAGIC);
        assert_eq!(read(&mut t, 0x004), 2);
        assert_eq!(read(&mut t, 0x008), DeviceKind::RNG.device_id());
        assert_eq!(read(&mut t, 0x00c), VENDOR_ID);
        write(&mut t, 0x014, 1);
        assert_eq!(read(&mut t, 0x010), 1, "VIRTIO_F_VERSION_1 is bit 32");
        write(&mut t, 0x030, 0);
        assert_eq!(read(&mut t, 0x034), u32::from(QUEUE_MAX_SIZE));
        write(&mut t, 0x030, 1);
        assert_eq!(read(&mut t, 0x034), 0, "the rng has one queue");
        // Unaligned and odd-sized accesses read as zero and write nothing.
        let mut two = [0xffu8; 2];
        t.read(0x000, &mut two);
        assert_eq!(two, [0, 0]);
        t.write(0x070, &[1, 0]);
        assert_eq!(read(&mut t, 0x070), 0);
    }

    #[test]
    fn features_without_version_1_are_refused() {
        let mut t = transport(false);
        write(&mut t, 0x070, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        write(&mut t, 0x070, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
        assert_eq!(read(&mut t, 0x070) & STATUS_FEATURES_OK, 0);
        write(&mut t, 0x024, 0);
        write(&mut t, 0x020, 1 << 5); // not offered
        write(&mut t, 0x024, 1);
        write(&mut t, 0x020, 1);
        write(&mut t, 0x070, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
        assert_eq!(read(&mut t, 0x070) & STATUS_FEATURES_OK, 0, "a bit not offered");
    }

    #[test]
    fn driver_ok_starts_the_queues_and_a_reset_stops_them() {
        let mut t = transport(false);
        negotiate(&mut t);
        assert!(t.watch().progress(DeviceKind::RNG).is_empty(), "nothing runs before DRIVER_OK");
        write(
            &mut t,
            0x070,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        );
        assert_eq!(read(&mut t, 0x070) & STATUS_NEEDS_RESET, 0);
        assert_eq!(t.watch().progress(DeviceKind::RNG), vec![(0, 0)], "the watchdog sees it");
        assert_eq!(read(&mut t, 0x060) & INT_VRING, INT_VRING);
        // Queue set-up is ignored once the driver is running.
        write(&mut t, 0x038, 8);
        write(&mut t, 0x044, 0);
        assert_eq!(read(&mut t, 0x044), 1);
        write(&mut t, 0x070, 0);
        assert_eq!(read(&mut t, 0x070), 0);
        assert_eq!(read(&mut t, 0x044), 0, "a reset forgets the queues");
        assert!(t.watch().progress(DeviceKind::RNG).is_empty());
    }

    /// A blk backend that offers feature bit 0 and the CONFIG protocol feature, and answers
    /// GET_CONFIG with its whole space filled with `fill`.
    fn config_backend(fill: u8) -> UnixStream {
        crate::virtio::fake::backend(move |request, body| match request {
            fake::GET_FEATURES => {
                let features = VIRTIO_F_VERSION_1 | super::super::VHOST_USER_F_PROTOCOL_FEATURES;
                Some((features | 1).to_le_bytes().to_vec())
            }
            fake::GET_PROTOCOL_FEATURES => Some((1u64 << 9).to_le_bytes().to_vec()),
            // offset, size, flags, then the space.
            fake::GET_CONFIG => {
                let size = u32::from_le_bytes(body[4..8].try_into().unwrap()) as usize;
                let mut reply = body[..12].to_vec();
                reply.extend(std::iter::repeat_n(fill, size));
                Some(reply)
            }
            fake::GET_VRING_BASE => Some([&body[0..4], &0u32.to_le_bytes()[..]].concat()),
            _ => None,
        })
    }

    fn blk_connection(fill: u8) -> Connection {
        Connection::connect(config_backend(fill), &DeviceShape::of(DeviceKind::BLOCK)).unwrap()
    }

    #[test]
    fn a_new_backend_with_another_config_space_tells_the_driver() {
        let ram = Arc::new(GuestRam::new(16 << 20).unwrap());
        let kicks = vec![EventFd::new(libc::EFD_NONBLOCK).unwrap()];
        let call = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let mut t = MmioTransport::new(
            DeviceKind::BLOCK,
            "blk0".into(),
            ram,
            blk_connection(1),
            kicks,
            call.clone(),
        );
        let deadline = || Instant::now() + Duration::from_secs(5);
        // Before DRIVER_OK: the generation moves, no interrupt is due.
        t.replace_backend(blk_connection(3), deadline()).unwrap();
        assert_eq!(read(&mut t, 0x0fc), 1);
        assert_eq!(read(&mut t, 0x060) & INT_CONFIG, 0);
        assert!(call.read().is_err(), "no interrupt before the driver runs");
        write(&mut t, 0x070, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        write(&mut t, 0x024, 0);
        write(&mut t, 0x020, 1);
        negotiate(&mut t);
        write(
            &mut t,
            0x070,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        );
        assert_eq!(read(&mut t, 0x070) & STATUS_NEEDS_RESET, 0);
        let generation = read(&mut t, 0x0fc);
        assert_eq!(read(&mut t, 0x100), u32::from_le_bytes([3; 4]));
        let _ = call.read();

        // The same space again (a plain restart): nothing for the driver to see.
        t.replace_backend(blk_connection(3), deadline()).unwrap();
        assert_eq!(read(&mut t, 0x0fc), generation);
        assert_eq!(read(&mut t, 0x060) & INT_CONFIG, 0);
        let _ = call.read();

        // Another space (a disk of another size): a new generation, the interrupt status's
        // configuration bit, the device's interrupt, and the new bytes.
        t.replace_backend(blk_connection(7), deadline()).unwrap();
        assert_eq!(read(&mut t, 0x0fc), generation.wrapping_add(1));
        assert_eq!(read(&mut t, 0x060) & INT_CONFIG, INT_CONFIG);
        assert!(call.read().is_ok(), "the configuration change raised the interrupt");
        assert_eq!(read(&mut t, 0x100), u32::from_le_bytes([7; 4]));
        assert_eq!(read(&mut t, 0x138), u32::from_le_bytes([7; 4]), "the whole space");
        write(&mut t, 0x064, INT_CONFIG);
        assert_eq!(read(&mut t, 0x060) & INT_CONFIG, 0, "acknowledged");

        // While no backend is connected the driver reads what it last saw.
        t.detach_backend();
        assert_eq!(read(&mut t, 0x100), u32::from_le_bytes([7; 4]));

        // A backend that lacks a feature the driver acked cannot take the device over.
        let lacking =
            Connection::connect(fake_backend(false), &DeviceShape::of(DeviceKind::BLOCK)).unwrap();
        match t.replace_backend(lacking, deadline()) {
            Err(FrontendError::FeaturesMissing(1)) => {}
            other => panic!("{:?}", other.err()),
        }
    }

    #[test]
    fn a_driver_that_sets_up_between_two_backends_runs_on_the_second() {
        let mut t = transport(false);
        // The backend goes (killed, or a swap under way) before the driver has started.
        t.detach_backend();
        write(&mut t, 0x014, 1);
        assert_eq!(read(&mut t, 0x010), (VIRTIO_F_VERSION_1 >> 32) as u32, "features kept");
        negotiate(&mut t);
        assert_ne!(read(&mut t, 0x070) & STATUS_FEATURES_OK, 0, "the features are taken");
        write(
            &mut t,
            0x070,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        );
        assert_eq!(read(&mut t, 0x070) & STATUS_NEEDS_RESET, 0, "no backend is not a failure");
        assert!(!t.active, "nothing runs yet");
        let next = Connection::connect(fake_backend(false), &DeviceShape::of(DeviceKind::RNG));
        t.replace_backend(next.unwrap(), Instant::now() + Duration::from_secs(5)).unwrap();
        assert!(t.active, "the queues run on the next backend");
        assert_eq!(read(&mut t, 0x070) & STATUS_NEEDS_RESET, 0);
    }

    #[test]
    fn a_reset_that_the_backend_never_answers_ends_at_its_deadline() {
        super::super::alarm::start(|| {}).unwrap();
        let mut t = transport(true);
        negotiate(&mut t);
        write(
            &mut t,
            0x070,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        );
        let start = std::time::Instant::now();
        write(&mut t, 0x070, 0);
        let took = start.elapsed();
        assert!(took >= REPLY_TIMEOUT && took < REPLY_TIMEOUT + Duration::from_secs(2), "{took:?}");
        assert_eq!(read(&mut t, 0x070), 0, "reset all the same");
    }
}
