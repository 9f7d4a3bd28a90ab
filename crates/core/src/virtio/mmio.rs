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

use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use super::frontend::{avail_index, used_index, Connection, FrontendError, Inflight, QueueConfig};
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

const INT_VRING: u32 = 1;
const INT_CONFIG: u32 = 2;

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
    queue_sel: usize,
    queues: Vec<QueueConfig>,
    status: u32,
    interrupt_status: u32,
    config_generation: u32,
    /// The backend's inflight region, kept across backend restarts.
    inflight: Option<Inflight>,
    /// The queues are running in the current backend.
    active: bool,
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
        let queues = vec![QueueConfig::default(); kind.queues()];
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
            queue_sel: 0,
            queues,
            status: 0,
            interrupt_status: 0,
            config_generation: 0,
            inflight: None,
            active: false,
        }
    }

    /// The features offered to the driver: the backend's device-specific
    /// bits plus the generic ones this transport supports.
    pub fn device_features(&self) -> u64 {
        let offered = self.backend.as_ref().map_or(0, |b| b.features);
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
        self.active = false;
        let Some(backend) = self.backend.as_mut() else {
            return Err(FrontendError::NoBackend);
        };
        if backend.keeps_inflight() && self.inflight.is_none() {
            self.inflight = Some(backend.new_inflight(self.queues.len())?);
        }
        let inflight = if backend.keeps_inflight() { self.inflight.as_ref() } else { None };
        backend.activate(
            &self.ram,
            self.acked_features,
            &self.queues,
            &self.kicks,
            &self.call,
            inflight,
        )?;
        self.active = true;
        Ok(())
    }

    /// Puts a new backend in place of one that died or is being replaced.
    /// A running device is started again where it stood: same queues, the
    /// kept inflight region (the backend resubmits what was in flight), and
    /// an interrupt in case a completion's was lost with the old backend.
    pub fn replace_backend(&mut self, backend: Connection) -> Result<(), FrontendError> {
        self.backend = Some(backend);
        let running = STATUS_DRIVER_OK | STATUS_FEATURES_OK;
        if self.status & running != running {
            return Ok(());
        }
        self.start_queues()?;
        self.status &= !STATUS_NEEDS_RESET;
        self.interrupt_status |= INT_VRING;
        let _ = self.call.write(1);
        Ok(())
    }

    /// Drops the backend connection (it is dead or being replaced).
    pub fn detach_backend(&mut self) {
        self.backend = None;
        self.active = false;
    }

    /// The backend connection's socket, to watch for its end.
    pub fn backend_fd(&self) -> Option<i32> {
        self.backend.as_ref().map(|b| b.raw_fd())
    }

    /// For each started queue the device must consume (see
    /// [`DeviceKind::watched_queue`]): its (available, used) indices in
    /// guest memory. Empty unless the queues run.
    pub fn progress(&self) -> Vec<(u16, u16)> {
        if !self.active {
            return Vec::new();
        }
        self.queues
            .iter()
            .enumerate()
            .filter(|(i, q)| q.ready && self.kind.watched_queue(*i))
            .filter_map(|(_, q)| Some((avail_index(&self.ram, q)?, used_index(&self.ram, q)?)))
            .collect()
    }

    fn reset(&mut self) {
        if self.status & STATUS_DRIVER_OK != 0 {
            if let Some(backend) = self.backend.as_mut() {
                if let Err(e) = backend.reset(&self.queues) {
                    log::warn!("{}: reset: {e}", self.name);
                }
            }
        }
        self.status = 0;
        self.active = false;
        self.inflight = None;
        self.acked_features = 0;
        self.interrupt_status = 0;
        self.queue_sel = 0;
        self.queues.iter_mut().for_each(|q| *q = QueueConfig::default());
    }

    fn config(&self) -> &[u8] {
        self.backend.as_ref().map_or(&[], |b| &b.config)
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
                if let Some(backend) = self.backend.as_mut() {
                    match backend.write_config(start as u32, data) {
                        Ok(()) => backend.config[start..start + data.len()].copy_from_slice(data),
                        Err(e) => log::warn!("{}: config write: {e}", self.name),
                    }
                }
            }
            return;
        }
        if data.len() == 4 && offset.is_multiple_of(4) {
            self.write_register(offset, u32::from_le_bytes([data[0], data[1], data[2], data[3]]));
        }
    }
}
