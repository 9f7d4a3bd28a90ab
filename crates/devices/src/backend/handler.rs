//! The vhost-user message handler: the backend's side of the protocol, one per connection.
//!
//! The `vhost` crate's `BackendReqHandler` reads and validates each message and calls the
//! [`VhostUserBackendReqHandlerMut`] method below; this module keeps the state those messages
//! build up: negotiated features, the memory table, the vrings and the inflight region.
//!
//! Failures come in two kinds. A message that asks for something invalid (a queue index out of
//! range, rings outside memory, an unsupported size) fails with `ReqHandlerError`: the frontend
//! gets a failure reply when it asked for one (`REPLY_ACK`), and the connection goes on. A
//! request the frontend waits for an answer to (`GET_*`) that cannot be answered fails with
//! another error kind, and `serve` drops the connection rather than leave the frontend waiting.

use std::fs::File;
use std::sync::Arc;

use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags, VhostUserInflight,
    VhostUserLog, VhostUserMemoryRegion, VhostUserProtocolFeatures, VhostUserShMemConfig,
    VhostUserSharedMsg, VhostUserSingleMemoryRegion, VhostUserVringAddrFlags, VhostUserVringState,
};
use vhost::vhost_user::{Error as VuError, GpuBackend, Result as VuResult};
use vhost::vhost_user::{VhostUserBackendReqHandlerMut, VhostUserVirtioFeatures};
use vhost::VhostUserMemoryRegionBase;
use virtio_queue::QueueT;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::inflight::InflightRegion;
use super::memory::MemoryTable;
use super::vring::Vring;
use super::{CONFIG_SPACE_SIZE, TRANSPORT_FEATURES};
use crate::Device;

const F_INDIRECT_DESC: u64 = 1 << 28;
const F_EVENT_IDX: u64 = 1 << 29;

/// A refused request; the connection goes on.
fn refuse(msg: impl std::fmt::Display) -> VuError {
    log::warn!("refused: {msg}");
    VuError::ReqHandlerError(std::io::Error::other(msg.to_string()))
}

/// Wraps a file descriptor the frontend sent as an eventfd, made non-blocking.
///
/// A worker must never block on it: a frontend may send a blocking eventfd, or one eventfd as
/// the kick of two queues (both workers wake, one reads it empty and the other's read would
/// wait forever — and so would `GET_VRING_BASE` and the end of the connection, which stop that
/// worker), or a call eventfd whose counter it filled (a write would wait forever).
fn eventfd(file: File) -> EventFd {
    use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
    let fd = file.as_raw_fd();
    // SAFETY: F_GETFL/F_SETFL on a descriptor we own; they change only its status flags.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 && flags & libc::O_NONBLOCK == 0 {
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
    }
    // SAFETY: we own the fd (it came with the message). Should the frontend have sent something
    // other than an eventfd, reads and writes on it fail or reach that file, which is its own.
    unsafe { EventFd::from_raw_fd(file.into_raw_fd()) }
}

/// The backend state of one connection.
pub struct Handler {
    device: Arc<dyn Device>,
    acked_features: u64,
    acked_protocol: VhostUserProtocolFeatures,
    mem: GuestMemoryAtomic<GuestMemoryMmap>,
    table: MemoryTable,
    vrings: Vec<Vring>,
    inflight: Option<Arc<InflightRegion>>,
}

impl Handler {
    /// A fresh handler for `device`.
    pub fn new(device: Arc<dyn Device>) -> Handler {
        let max = device.max_queue_size();
        let kind = device.kind();
        let vrings = (0..device.num_queues()).map(|i| Vring::new(kind, i, max)).collect();
        Handler {
            device,
            acked_features: 0,
            acked_protocol: VhostUserProtocolFeatures::empty(),
            mem: GuestMemoryAtomic::new(GuestMemoryMmap::new()),
            table: MemoryTable::default(),
            vrings,
            inflight: None,
        }
    }

    /// Every feature bit offered.
    pub fn offered_features(&self) -> u64 {
        TRANSPORT_FEATURES | self.device.features()
    }

    fn protocol_features_negotiated(&self) -> bool {
        self.acked_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0
    }

    fn vring(&mut self, index: u32) -> VuResult<&mut Vring> {
        let n = self.vrings.len();
        self.vrings
            .get_mut(index as usize)
            .ok_or_else(|| refuse(format!("queue {index} does not exist; the device has {n}")))
    }

    /// `SET_VRING_ENABLE` that arrived before protocol features were acknowledged (see
    /// `backend::early_vring_enable`); ignored once they are.
    pub fn early_vring_enable(&mut self, index: u32, num: u32) {
        if self.protocol_features_negotiated() || num > 1 {
            return;
        }
        if let Some(vring) = self.vrings.get_mut(index as usize) {
            log::debug!("queue {index}: early SET_VRING_ENABLE {num}");
            vring.lock().enabled = num == 1;
            vring.wake();
        }
    }

    /// Stops every worker (the connection ends).
    pub fn shutdown(&mut self) {
        for v in &mut self.vrings {
            v.stop();
        }
    }

    fn reset(&mut self) {
        for v in &mut self.vrings {
            v.reset();
        }
        self.acked_features = 0;
        self.inflight = None;
    }

    /// Starts queue `index` if it has a kick eventfd and memory is set.
    fn start_vring(&mut self, index: usize) -> VuResult<()> {
        if !self.table.is_set() {
            return Err(refuse(format!("queue {index} started before the memory table was set")));
        }
        let features = self.acked_features;
        let handler = self
            .device
            .queue_handler(index, features)
            .map_err(|e| refuse(format!("queue {index}: {e}")))?;
        let name = format!("bh-{}-q{index}", self.device.kind());
        let auto_enable = !self.protocol_features_negotiated();
        let inflight = self.inflight.clone().filter(|_| self.device.supports_inflight());
        let mem = self.mem.clone();
        let peer = self
            .device
            .peer_queue(index)
            .filter(|&p| p != index)
            .and_then(|p| self.vrings.get(p))
            .map(Vring::shared_state);
        let vring = &mut self.vrings[index];
        {
            let mut st = vring.lock();
            st.indirect = features & F_INDIRECT_DESC != 0;
            st.queue.set_event_idx(features & F_EVENT_IDX != 0);
            if auto_enable {
                st.enabled = true;
            }
        }
        vring.start(&mem, inflight, handler, name, peer).map_err(refuse)?;
        log::info!("queue {index} started (features {features:#x})");
        Ok(())
    }
}

impl VhostUserBackendReqHandlerMut for Handler {
    fn set_owner(&mut self) -> VuResult<()> {
        Ok(())
    }

    fn reset_owner(&mut self) -> VuResult<()> {
        self.reset();
        Ok(())
    }

    fn reset_device(&mut self) -> VuResult<()> {
        self.reset();
        Ok(())
    }

    fn get_features(&mut self) -> VuResult<u64> {
        Ok(self.offered_features())
    }

    fn set_features(&mut self, features: u64) -> VuResult<()> {
        let unknown = features & !self.offered_features();
        if unknown != 0 {
            return Err(refuse(format!("features {unknown:#x} were not offered")));
        }
        self.acked_features = features;
        Ok(())
    }

    fn set_mem_table(
        &mut self,
        regions: &[VhostUserMemoryRegion],
        files: Vec<File>,
        _postcopy: Option<bool>,
    ) -> VuResult<Option<Vec<VhostUserMemoryRegionBase>>> {
        let (mem, table) = MemoryTable::map(regions, files).map_err(refuse)?;
        self.mem.lock().map_err(|_| refuse("the memory lock is poisoned"))?.replace(mem);
        self.table = table;
        Ok(None)
    }

    fn set_vring_num(&mut self, index: u32, num: u32) -> VuResult<()> {
        let vring = self.vring(index)?;
        let num = u16::try_from(num).map_err(|_| refuse(format!("queue size {num}")))?;
        let mut st = vring.lock();
        st.queue
            .try_set_size(num)
            .map_err(|e| refuse(format!("queue {index} cannot have size {num}: {e}")))
    }

    fn set_vring_addr(
        &mut self,
        index: u32,
        _flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        _log: u64,
    ) -> VuResult<()> {
        let translate = |what: &str, va: u64, table: &MemoryTable| {
            table.to_guest_phys(va).ok_or_else(|| {
                refuse(format!("queue {index}'s {what} at {va:#x} is not in the memory table"))
            })
        };
        let desc = translate("descriptor table", descriptor, &self.table)?;
        let avail = translate("available ring", available, &self.table)?;
        let used = translate("used ring", used, &self.table)?;
        let vring = self.vring(index)?;
        let mut st = vring.lock();
        let q = &mut st.queue;
        q.try_set_desc_table_address(desc)
            .and_then(|_| q.try_set_avail_ring_address(avail))
            .and_then(|_| q.try_set_used_ring_address(used))
            .map_err(|e| refuse(format!("queue {index}'s ring addresses: {e}")))
    }

    fn set_vring_base(&mut self, index: u32, base: u32) -> VuResult<()> {
        let vring = self.vring(index)?;
        let base = u16::try_from(base).map_err(|_| refuse(format!("vring base {base}")))?;
        vring.lock().queue.set_next_avail(base);
        Ok(())
    }

    fn get_vring_base(&mut self, index: u32) -> VuResult<VhostUserVringState> {
        let vring = self.vrings.get_mut(index as usize).ok_or(VuError::InvalidParam)?;
        vring.stop();
        log::info!("queue {index} stopped");
        let mut st = vring.lock();
        st.queue.set_ready(false);
        Ok(VhostUserVringState::new(index, u32::from(st.queue.next_avail())))
    }

    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> VuResult<()> {
        let file =
            fd.ok_or_else(|| refuse("polling queues (no kick eventfd) are not supported"))?;
        let index = usize::from(index);
        let vring = self.vring(index as u32)?;
        vring.set_kick(eventfd(file));
        self.start_vring(index)
    }

    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> VuResult<()> {
        let vring = self.vring(u32::from(index))?;
        if let Some(f) = &fd {
            crate::fault::flood::call(std::os::fd::AsRawFd::as_raw_fd(f));
        }
        vring.lock().call = fd.map(eventfd);
        Ok(())
    }

    fn set_vring_err(&mut self, index: u8, _fd: Option<File>) -> VuResult<()> {
        self.vring(u32::from(index)).map(|_| ())
    }

    fn get_protocol_features(&mut self) -> VuResult<VhostUserProtocolFeatures> {
        let mut f = VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::RESET_DEVICE;
        if self.device.offers_mq() {
            f |= VhostUserProtocolFeatures::MQ;
        }
        if self.device.supports_inflight() {
            f |= VhostUserProtocolFeatures::INFLIGHT_SHMFD;
        }
        Ok(f)
    }

    fn set_protocol_features(&mut self, features: u64) -> VuResult<()> {
        // Unknown bits are ignored, as the specification asks of a backend.
        self.acked_protocol = VhostUserProtocolFeatures::from_bits_truncate(features);
        Ok(())
    }

    fn get_queue_num(&mut self) -> VuResult<u64> {
        Ok(self.vrings.len() as u64)
    }

    fn set_vring_enable(&mut self, index: u32, enable: bool) -> VuResult<()> {
        let vring = self.vring(index)?;
        vring.lock().enabled = enable;
        vring.wake();
        Ok(())
    }

    fn get_config(
        &mut self,
        offset: u32,
        size: u32,
        _flags: VhostUserConfigFlags,
    ) -> VuResult<Vec<u8>> {
        let mut config = self.device.config();
        config.resize(CONFIG_SPACE_SIZE, 0);
        let end = offset.checked_add(size).filter(|&e| e as usize <= CONFIG_SPACE_SIZE);
        let end = end.ok_or_else(|| refuse(format!("config bytes {offset}+{size}")))?;
        Ok(config[offset as usize..end as usize].to_vec())
    }

    fn set_config(
        &mut self,
        offset: u32,
        _buf: &[u8],
        _flags: VhostUserConfigFlags,
    ) -> VuResult<()> {
        Err(refuse(format!("the configuration space is read-only (write at {offset})")))
    }

    fn set_gpu_socket(&mut self, _gpu_backend: GpuBackend) -> VuResult<()> {
        Err(refuse("not a GPU"))
    }

    fn get_shared_object(&mut self, _uuid: VhostUserSharedMsg) -> VuResult<File> {
        Err(VuError::InvalidOperation("shared objects are not supported"))
    }

    fn get_inflight_fd(&mut self, msg: &VhostUserInflight) -> VuResult<(VhostUserInflight, File)> {
        let too_many = usize::from(msg.num_queues) > self.vrings.len();
        let too_big = msg.queue_size > self.device.max_queue_size();
        if !self.device.supports_inflight() || too_many || too_big {
            return Err(VuError::InvalidParam);
        }
        let region = InflightRegion::create(msg.num_queues, msg.queue_size)
            .map_err(|_| VuError::InvalidParam)?;
        let file = region.file().try_clone().map_err(|_| VuError::InvalidParam)?;
        let reply = VhostUserInflight::new(region.size(), 0, msg.num_queues, msg.queue_size);
        self.inflight = Some(Arc::new(region));
        Ok((reply, file))
    }

    fn set_inflight_fd(&mut self, msg: &VhostUserInflight, file: File) -> VuResult<()> {
        if !self.device.supports_inflight() {
            return Err(refuse("this device keeps no inflight region"));
        }
        let region = InflightRegion::map(
            file,
            msg.mmap_offset,
            msg.mmap_size,
            msg.num_queues,
            msg.queue_size,
        )
        .map_err(refuse)?;
        self.inflight = Some(Arc::new(region));
        Ok(())
    }

    fn get_max_mem_slots(&mut self) -> VuResult<u64> {
        Err(VuError::InvalidOperation("memory slots are not supported"))
    }

    fn add_mem_region(
        &mut self,
        _region: &VhostUserSingleMemoryRegion,
        _fd: File,
        _postcopy: Option<bool>,
    ) -> VuResult<Option<VhostUserMemoryRegionBase>> {
        Err(refuse("memory slots are not supported"))
    }

    fn remove_mem_region(&mut self, _region: &VhostUserSingleMemoryRegion) -> VuResult<()> {
        Err(refuse("memory slots are not supported"))
    }

    fn set_device_state_fd(
        &mut self,
        _direction: VhostTransferStateDirection,
        _phase: VhostTransferStatePhase,
        _fd: File,
    ) -> VuResult<Option<File>> {
        Err(refuse("device state transfer is not supported"))
    }

    fn check_device_state(&mut self) -> VuResult<()> {
        Err(refuse("device state transfer is not supported"))
    }

    fn get_shmem_config(&mut self) -> VuResult<VhostUserShMemConfig> {
        Err(VuError::InvalidOperation("shared memory regions are not supported"))
    }

    fn set_log_base(&mut self, _log: &VhostUserLog, _file: File) -> VuResult<()> {
        Err(VuError::InvalidOperation("dirty logging is not supported"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `vhost_backend` fuzz target: one blocking eventfd as the kick of two queues
    /// could leave a worker blocked in `read` after the other had emptied it (both woke on the
    /// same signal), and the end of the connection, which stops every worker, waited for it
    /// forever. Eventfds from the frontend are now made non-blocking.
    #[test]
    fn eventfds_from_the_frontend_never_block() {
        use std::os::fd::{AsRawFd, FromRawFd};
        let blocking = EventFd::new(0).unwrap();
        // SAFETY: a dup of a live eventfd, owned by the File from here on.
        let file = unsafe { File::from_raw_fd(libc::dup(blocking.as_raw_fd())) };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let e = eventfd(file);
            let _ = tx.send(e.read().map_err(|e| e.kind()));
        });
        let got = rx.recv_timeout(std::time::Duration::from_secs(10));
        assert_eq!(got, Ok(Err(std::io::ErrorKind::WouldBlock)), "reading an empty eventfd");
        assert_eq!(
            blocking.read().map_err(|e| e.kind()).unwrap_err(),
            std::io::ErrorKind::WouldBlock
        );
    }

    #[test]
    fn config_reads_are_bounded_and_features_checked() {
        let dev = crate::open(&crate::DeviceConfig::Rng(Default::default())).unwrap();
        let mut h = Handler::new(dev);
        let flags = VhostUserConfigFlags::WRITABLE;
        assert_eq!(h.get_config(0, 256, flags).unwrap(), vec![0; 256]);
        assert!(h.get_config(250, 16, flags).is_err());
        assert!(h.get_config(u32::MAX, 2, flags).is_err(), "offset + size overflows");
        assert!(h.set_features(1 << 63).is_err(), "not offered");
        assert!(h.set_features(h.offered_features()).is_ok());
        assert!(matches!(h.get_vring_base(9), Err(VuError::InvalidParam)));
        assert!(matches!(h.set_vring_num(9, 256), Err(VuError::ReqHandlerError(_))));
        assert!(h.set_vring_base(0, 70000).is_err());
        let bad = VhostUserInflight::new(0, 0, 4, 256);
        assert!(h.get_inflight_fd(&bad).is_err(), "more queues than the device has");
        let ok = VhostUserInflight::new(0, 0, 1, 256);
        let (reply, file) = h.get_inflight_fd(&ok).unwrap();
        assert_eq!(file.metadata().unwrap().len(), reply.mmap_size);
    }
}
