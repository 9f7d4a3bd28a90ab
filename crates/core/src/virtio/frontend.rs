//! The vhost-user frontend: the core's side of the control connection to a
//! device backend (QEMU's `docs/interop/vhost-user.rst`).
//!
//! On connection the core takes ownership (SET_OWNER), reads the device's
//! features and protocol features, negotiates REPLY_ACK (every request is
//! then acknowledged, so failures surface at once) and CONFIG, and reads the
//! device's configuration space. On activation it sends the acked features,
//! the memory table (the guest-RAM memfd, mapped by the backend), then for
//! each queue its size, addresses (as the core's own virtual addresses, as
//! the protocol wants), base index, kick and call eventfds, and enables it.
//! On reset it stops each queue with GET_VRING_BASE.
//!
//! The socket has a receive timeout: a backend that stops answering fails
//! the request instead of stalling the vCPU that made it.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserHeaderFlag, VhostUserInflight, VhostUserProtocolFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use super::{DeviceKind, VHOST_USER_F_PROTOCOL_FEATURES};
use crate::memory::GuestRam;

/// How long the core waits for a backend's reply.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum FrontendError {
    #[error("cannot set the backend socket's timeout")]
    Socket(#[source] std::io::Error),
    #[error("the backend refused or failed {0}")]
    Request(&'static str, #[source] vhost::Error),
    #[error("the backend does not offer VIRTIO_F_VERSION_1")]
    NotModern,
    #[error("the device has no backend running")]
    NoBackend,
    #[error("queue {0}'s {1} address {2:#x} is not in guest memory")]
    BadAddress(usize, &'static str, u64),
}

fn request(what: &'static str) -> impl FnOnce(vhost::Error) -> FrontendError {
    move |e| FrontendError::Request(what, e)
}

/// One queue as the driver configured it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueConfig {
    pub size: u16,
    pub ready: bool,
    pub desc: u64,
    pub driver: u64,
    pub device: u64,
}

/// The region a backend records its in-flight requests in; the core keeps
/// it across backend restarts.
pub struct Inflight {
    info: VhostUserInflight,
    file: std::fs::File,
}

/// The used ring's index of queue `q`, from guest memory.
pub fn used_index(ram: &GuestRam, q: &QueueConfig) -> Option<u16> {
    ram.memory.read_obj::<u16>(GuestAddress(q.device.checked_add(2)?)).ok()
}

/// The available ring's index of queue `q`, from guest memory.
pub fn avail_index(ram: &GuestRam, q: &QueueConfig) -> Option<u16> {
    ram.memory.read_obj::<u16>(GuestAddress(q.driver.checked_add(2)?)).ok()
}

/// A connected backend.
pub struct Connection {
    frontend: Frontend,
    /// Features the backend offers, vhost-user's own bit included.
    pub features: u64,
    pub protocol: VhostUserProtocolFeatures,
    /// The device configuration space as read at connection time.
    pub config: Vec<u8>,
}

impl Connection {
    /// Takes ownership of the backend and reads what it offers.
    pub fn connect(conn: UnixStream, kind: DeviceKind) -> Result<Self, FrontendError> {
        conn.set_read_timeout(Some(REPLY_TIMEOUT)).map_err(FrontendError::Socket)?;
        conn.set_write_timeout(Some(REPLY_TIMEOUT)).map_err(FrontendError::Socket)?;
        let mut frontend = Frontend::from_stream(conn, kind.queues() as u64);
        frontend.set_owner().map_err(request("SET_OWNER"))?;
        let features = frontend.get_features().map_err(request("GET_FEATURES"))?;
        if features & super::VIRTIO_F_VERSION_1 == 0 {
            return Err(FrontendError::NotModern);
        }
        let mut protocol = VhostUserProtocolFeatures::empty();
        if features & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
            let offered =
                frontend.get_protocol_features().map_err(request("GET_PROTOCOL_FEATURES"))?;
            let wanted = VhostUserProtocolFeatures::REPLY_ACK
                | VhostUserProtocolFeatures::CONFIG
                | VhostUserProtocolFeatures::MQ
                | VhostUserProtocolFeatures::INFLIGHT_SHMFD;
            protocol = offered & wanted;
            frontend.set_protocol_features(protocol).map_err(request("SET_PROTOCOL_FEATURES"))?;
            if protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
            }
        }
        let config = read_config(&mut frontend, kind, protocol)?;
        Ok(Connection { frontend, features, protocol, config })
    }

    /// Whether the backend keeps an inflight region (so a successor can
    /// resubmit what it had in flight).
    pub fn keeps_inflight(&self) -> bool {
        self.protocol.contains(VhostUserProtocolFeatures::INFLIGHT_SHMFD)
    }

    /// Asks the backend for a new inflight region for `queues` queues.
    pub fn new_inflight(&mut self, queues: usize) -> Result<Inflight, FrontendError> {
        let want = VhostUserInflight::new(0, 0, queues as u16, super::QUEUE_MAX_SIZE);
        let (info, file) =
            self.frontend.get_inflight_fd(&want).map_err(request("GET_INFLIGHT_FD"))?;
        Ok(Inflight { info, file })
    }

    /// Hands the configured queues to the backend and starts them. With an
    /// inflight region (kept by the core across backend restarts), each
    /// queue restarts from the used ring's index in guest memory and the
    /// backend resubmits what the region records as in flight.
    pub fn activate(
        &mut self,
        ram: &GuestRam,
        acked: u64,
        queues: &[QueueConfig],
        kicks: &[EventFd],
        call: &EventFd,
        inflight: Option<&Inflight>,
    ) -> Result<(), FrontendError> {
        let own = self.features & VHOST_USER_F_PROTOCOL_FEATURES;
        self.frontend.set_features(acked | own).map_err(request("SET_FEATURES"))?;
        self.frontend.set_mem_table(&memory_table(ram)).map_err(request("SET_MEM_TABLE"))?;
        if let Some(inflight) = inflight {
            self.frontend
                .set_inflight_fd(&inflight.info, inflight.file.as_raw_fd())
                .map_err(request("SET_INFLIGHT_FD"))?;
        }
        for (index, q) in queues.iter().enumerate().filter(|(_, q)| q.ready) {
            let addr = |what, gpa| host_address(ram, index, what, gpa);
            let data = VringConfigData {
                queue_max_size: super::QUEUE_MAX_SIZE,
                queue_size: q.size,
                flags: 0,
                desc_table_addr: addr("descriptor table", q.desc)?,
                used_ring_addr: addr("used ring", q.device)?,
                avail_ring_addr: addr("available ring", q.driver)?,
                log_addr: None,
            };
            self.frontend.set_vring_num(index, q.size).map_err(request("SET_VRING_NUM"))?;
            self.frontend.set_vring_addr(index, &data).map_err(request("SET_VRING_ADDR"))?;
            let base = used_index(ram, q).unwrap_or(0);
            self.frontend.set_vring_base(index, base).map_err(request("SET_VRING_BASE"))?;
            self.frontend
                .set_vring_kick(index, &kicks[index])
                .map_err(request("SET_VRING_KICK"))?;
            self.frontend.set_vring_call(index, call).map_err(request("SET_VRING_CALL"))?;
            if own != 0 {
                self.frontend.set_vring_enable(index, true).map_err(request("SET_VRING_ENABLE"))?;
            }
        }
        Ok(())
    }

    /// Stops every started queue (the device reset).
    pub fn reset(&mut self, queues: &[QueueConfig]) -> Result<(), FrontendError> {
        for (index, _) in queues.iter().enumerate().filter(|(_, q)| q.ready) {
            self.frontend.get_vring_base(index).map_err(request("GET_VRING_BASE"))?;
        }
        Ok(())
    }

    /// Writes to the device configuration space.
    pub fn write_config(&mut self, offset: u32, data: &[u8]) -> Result<(), FrontendError> {
        if !self.protocol.contains(VhostUserProtocolFeatures::CONFIG) {
            return Ok(());
        }
        self.frontend
            .set_config(offset, VhostUserConfigFlags::WRITABLE, data)
            .map_err(request("SET_CONFIG"))
    }

    pub fn raw_fd(&self) -> i32 {
        self.frontend.as_raw_fd()
    }
}

fn read_config(
    frontend: &mut Frontend,
    kind: DeviceKind,
    protocol: VhostUserProtocolFeatures,
) -> Result<Vec<u8>, FrontendError> {
    let size = kind.config_size();
    if size == 0 || !protocol.contains(VhostUserProtocolFeatures::CONFIG) {
        return Ok(vec![0; size as usize]);
    }
    let zeros = vec![0u8; size as usize];
    let (_, config) = frontend
        .get_config(0, size, VhostUserConfigFlags::WRITABLE, &zeros)
        .map_err(request("GET_CONFIG"))?;
    Ok(config)
}

/// The memory table: every RAM region, by its offset in the memfd.
fn memory_table(ram: &GuestRam) -> Vec<VhostUserMemoryRegionInfo> {
    let fd = ram.file.as_raw_fd();
    ram.memory
        .iter()
        .map(|region| {
            let host =
                ram.memory.get_host_address(region.start_addr()).expect("region start is mapped");
            VhostUserMemoryRegionInfo {
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
                mmap_offset: region.file_offset().map_or(0, |f| f.start()),
                mmap_handle: fd,
            }
        })
        .collect()
}

/// The core's virtual address for guest-physical `gpa` (vhost-user ring
/// addresses are frontend virtual addresses).
fn host_address(
    ram: &GuestRam,
    queue: usize,
    what: &'static str,
    gpa: u64,
) -> Result<u64, FrontendError> {
    ram.memory
        .get_host_address(GuestAddress(gpa))
        .map(|p| p as u64)
        .map_err(|_| FrontendError::BadAddress(queue, what, gpa))
}
