//! The block device: an opened image and what it offers.

use std::os::fd::RawFd;
use std::sync::Arc;

use bulkhead_disk::{DiskImage, HandedFiles, OpenOptions};
use vm_memory::GuestMemoryMmap;

use super::config::{self, features, BlkConfig, SECTOR};
use super::request::{self, Target, ID_BYTES};
use crate::backend::chain::Chain;
use crate::backend::{Limited, QueueHandler, RequestHandler};
use crate::limit::{spec::MAIN, Limiters, LimitsView};
use crate::{Device, DeviceError, DeviceKind};

/// A virtio-blk device serving one image.
pub struct BlkDevice {
    disk: Arc<dyn DiskImage>,
    read_only: bool,
    queues: u16,
    id: [u8; ID_BYTES],
    limiters: Limiters,
}

impl BlkDevice {
    /// Opens the image `cfg` names (read-only if asked, in the named format or probed), using
    /// the `handed` files of a predecessor (with their locks) rather than opening those names
    /// again; its rate limits are `cfg`'s for good unless given a page ([`BlkDevice::with_limits`]).
    pub fn open(cfg: &BlkConfig, handed: HandedFiles) -> Result<BlkDevice, DeviceError> {
        let opts = OpenOptions {
            read_only: cfg.read_only,
            format: cfg.format,
            locking: cfg.locking,
            ..Default::default()
        };
        let disk = bulkhead_disk::open_with(&cfg.path, &opts, handed)?;
        let serial = match &cfg.serial {
            Some(s) => s.clone(),
            None => {
                cfg.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
            }
        };
        Ok(BlkDevice::new(Arc::from(disk), cfg.read_only, cfg.queues, &serial)
            .with_limits(LimitsView::fixed(&cfg.limits)))
    }

    /// A device over an already opened image.
    pub fn new(disk: Arc<dyn DiskImage>, read_only: bool, queues: u16, serial: &str) -> BlkDevice {
        let mut id = [0u8; ID_BYTES];
        let n = serial.len().min(ID_BYTES);
        id[..n].copy_from_slice(&serial.as_bytes()[..n]);
        let read_only = read_only || disk.is_read_only();
        let limiters = Limiters::new(LimitsView::fixed(&Default::default()));
        BlkDevice { disk, read_only, queues: queues.max(1), id, limiters }
    }

    /// The device with the rate limits of `view`.
    pub fn with_limits(mut self, view: LimitsView) -> BlkDevice {
        self.limiters = Limiters::new(view);
        self
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.disk.virtual_size() / SECTOR
    }
}

impl Device for BlkDevice {
    fn kind(&self) -> DeviceKind {
        DeviceKind::Blk
    }

    fn num_queues(&self) -> usize {
        usize::from(self.queues)
    }

    fn features(&self) -> u64 {
        let mut f = features::SIZE_MAX
            | features::SEG_MAX
            | features::BLK_SIZE
            | features::FLUSH
            | features::MQ
            | features::DISCARD
            | features::WRITE_ZEROES;
        if self.read_only {
            f |= features::RO;
        }
        f
    }

    fn config(&self) -> Vec<u8> {
        config::config_space(self.capacity(), self.queues)
    }

    fn files(&self) -> Vec<RawFd> {
        self.disk.files().iter().map(|f| f.fd).collect()
    }

    fn handover(&self) -> Vec<bulkhead_disk::OpenFile> {
        self.disk.files()
    }

    fn queue_handler(
        &self,
        _queue: usize,
        _acked_features: u64,
    ) -> Result<Box<dyn QueueHandler>, DeviceError> {
        Ok(Box::new(Limited::new(BlkQueue::new(self), self.limiters.gate(MAIN)?)))
    }
}

/// One queue's request handler.
pub struct BlkQueue {
    disk: Arc<dyn DiskImage>,
    read_only: bool,
    id: [u8; ID_BYTES],
    buf: Vec<u8>,
}

impl BlkQueue {
    /// A handler for `device`'s image.
    pub fn new(device: &BlkDevice) -> BlkQueue {
        BlkQueue {
            disk: device.disk.clone(),
            read_only: device.read_only,
            id: device.id,
            buf: Vec::new(),
        }
    }
}

impl RequestHandler for BlkQueue {
    fn handle(&mut self, mem: &GuestMemoryMmap, chain: &Chain) -> u32 {
        let mut target = Target {
            disk: &*self.disk,
            id: &self.id,
            read_only: self.read_only,
            buf: &mut self.buf,
        };
        request::execute(mem, chain, &mut target)
    }

    fn cost(&self, mem: &GuestMemoryMmap, chain: &Chain) -> u64 {
        request::data_bytes(mem, chain)
    }
}
