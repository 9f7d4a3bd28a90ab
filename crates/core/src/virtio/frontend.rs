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
//! A standby backend (`bulkhead run --standby on`) is connected and handed all of that but the
//! queues' start ahead ([`Connection::prepare`]): the features, the memory table, the inflight
//! region, each queue's size and addresses. A connection remembers what it was sent, so the
//! activation that makes it the device's backend sends only the rest: each queue's base index,
//! kick and call eventfds, and enable.
//!
//! Every operation has one deadline (a guest's activation or reset: 5 s; a
//! restart's whole hand-over: the supervisor's), which each of its messages
//! is armed with ([`super::alarm`]): a backend that stops answering fails
//! the operation instead of stalling the thread that made it, and its delays
//! do not add up message after message.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserHeaderFlag, VhostUserInflight, VhostUserProtocolFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use super::{ConfigSpace, DeviceKind, DeviceShape, MAX_QUEUES, VHOST_USER_F_PROTOCOL_FEATURES};
use crate::memory::GuestRam;

/// How long an operation the guest starts (activating or resetting a device, writing its
/// configuration) may wait for the backend, all its messages together.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum FrontendError {
    #[error("the backend did not answer {0} in time")]
    Deadline(&'static str),
    #[error("the backend refused or failed {0}")]
    Request(&'static str, #[source] vhost::Error),
    #[error("the backend does not offer VIRTIO_F_VERSION_1")]
    NotModern,
    #[error("the device has no backend running")]
    NoBackend,
    #[error("queue {0}'s {1} address {2:#x} is not in guest memory")]
    BadAddress(usize, &'static str, u64),
    #[error("the backend has {0} queues; a device has 1 to {MAX_QUEUES}")]
    QueueCount(u64),
    #[error("the backend lacks features the driver uses ({0:#x}); it cannot take the device over")]
    FeaturesMissing(u64),
    #[error("the backend serves {got} queues where the device has {want}")]
    FewerQueues { got: usize, want: usize },
}

fn request(what: &'static str) -> impl FnOnce(vhost::Error) -> FrontendError {
    move |e| FrontendError::Request(what, e)
}

/// One queue as the driver configured it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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

impl Inflight {
    /// The region's bytes, for a snapshot.
    pub fn read_all(&self) -> std::io::Result<Vec<u8>> {
        let mut bytes = vec![0u8; self.info.mmap_size as usize];
        std::os::unix::fs::FileExt::read_exact_at(&self.file, &mut bytes, self.info.mmap_offset)?;
        Ok(bytes)
    }

    /// Writes a snapshot's bytes into the region; refused unless they fill it exactly.
    pub fn write_all(&self, bytes: &[u8]) -> std::io::Result<()> {
        if bytes.len() as u64 != self.info.mmap_size {
            return Err(std::io::Error::other(format!(
                "the saved inflight region has {} bytes where the backend's has {}",
                bytes.len(),
                self.info.mmap_size
            )));
        }
        std::os::unix::fs::FileExt::write_all_at(&self.file, bytes, self.info.mmap_offset)
    }
}

/// What a device's backend needs before its queues start, all of which can be sent to a
/// standby ahead ([`Connection::prepare`]).
#[derive(Clone)]
pub struct Setup {
    pub ram: Arc<GuestRam>,
    /// The features the driver acked, once it has.
    pub acked: Option<u64>,
    pub queues: Vec<QueueConfig>,
    pub inflight: Option<Arc<Inflight>>,
}

/// What a connection has been sent of its [`Setup`], so that no message is sent twice.
#[derive(Default)]
struct Sent {
    features: Option<u64>,
    mem_table: bool,
    inflight: Option<Arc<Inflight>>,
    /// Each queue's size and addresses, by index.
    rings: Vec<Option<QueueConfig>>,
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
    /// The device's queue count: the user's, else the backend's, else its type's.
    pub queues: usize,
    /// The device configuration space as read at connection time.
    pub config: Vec<u8>,
    /// When the operation under way must be done.
    deadline: Instant,
    sent: Sent,
}

impl Connection {
    /// Takes ownership of the backend and reads what it offers, within [`REPLY_TIMEOUT`].
    pub fn connect(conn: UnixStream, shape: &DeviceShape) -> Result<Self, FrontendError> {
        Self::connect_within(conn, shape, Instant::now() + REPLY_TIMEOUT)
    }

    /// [`Connection::connect`], done by `deadline`.
    pub fn connect_within(
        conn: UnixStream,
        shape: &DeviceShape,
        deadline: Instant,
    ) -> Result<Self, FrontendError> {
        let frontend = Frontend::from_stream(conn, MAX_QUEUES as u64);
        let mut c = Connection {
            frontend,
            features: 0,
            protocol: VhostUserProtocolFeatures::empty(),
            queues: 0,
            config: Vec::new(),
            deadline,
            sent: Sent::default(),
        };
        c.call("SET_OWNER", |f| f.set_owner())?;
        let features = c.call("GET_FEATURES", |f| f.get_features())?;
        if features & super::VIRTIO_F_VERSION_1 == 0 {
            return Err(FrontendError::NotModern);
        }
        c.features = features;
        if features & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
            let offered = c.call("GET_PROTOCOL_FEATURES", |f| f.get_protocol_features())?;
            let wanted = VhostUserProtocolFeatures::REPLY_ACK
                | VhostUserProtocolFeatures::CONFIG
                | VhostUserProtocolFeatures::MQ
                | VhostUserProtocolFeatures::INFLIGHT_SHMFD;
            let protocol = offered & wanted;
            c.call("SET_PROTOCOL_FEATURES", |f| f.set_protocol_features(protocol))?;
            if protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                c.frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
            }
            c.protocol = protocol;
        }
        let queues = match shape.queues {
            Some(n) => n as u64,
            None if c.protocol.contains(VhostUserProtocolFeatures::MQ) => {
                c.call("GET_QUEUE_NUM", |f| f.get_queue_num())?
            }
            None => shape.kind.queues() as u64,
        };
        if queues == 0 || queues > MAX_QUEUES as u64 {
            return Err(FrontendError::QueueCount(queues));
        }
        c.queues = queues as usize;
        c.config = match &shape.config {
            ConfigSpace::Backend => c.read_config(shape.kind)?,
            ConfigSpace::Bytes(bytes) => bytes.clone(),
            ConfigSpace::FsTag(tag) => super::fs_config(tag, c.queues as u32 - 1),
        };
        Ok(c)
    }

    /// Gives the operations that follow until `deadline` (see the module docs).
    pub fn set_deadline(&mut self, deadline: Instant) {
        self.deadline = deadline;
    }

    /// Sends one request, armed with the operation's deadline (see [`super::alarm`]).
    fn call<T>(
        &mut self,
        what: &'static str,
        f: impl FnOnce(&mut Frontend) -> Result<T, vhost::Error>,
    ) -> Result<T, FrontendError> {
        if Instant::now() >= self.deadline {
            return Err(FrontendError::Deadline(what));
        }
        let guard = super::alarm::arm(self.frontend.as_raw_fd(), self.deadline);
        let result = f(&mut self.frontend);
        match result {
            Err(_) if guard.fired() => Err(FrontendError::Deadline(what)),
            result => result.map_err(request(what)),
        }
    }

    /// Whether the backend keeps an inflight region (so a successor can
    /// resubmit what it had in flight).
    pub fn keeps_inflight(&self) -> bool {
        self.protocol.contains(VhostUserProtocolFeatures::INFLIGHT_SHMFD)
    }

    /// Asks the backend for a new inflight region for `queues` queues.
    pub fn new_inflight(&mut self, queues: usize) -> Result<Inflight, FrontendError> {
        let want = VhostUserInflight::new(0, 0, queues as u16, super::QUEUE_MAX_SIZE);
        let (info, file) = self.call("GET_INFLIGHT_FD", |f| f.get_inflight_fd(&want))?;
        Ok(Inflight { info, file })
    }

    /// Sends `setup` but for the queues' start: the features (once acked), the memory table,
    /// the inflight region and each ready queue's size and addresses — what a standby is handed
    /// ahead of taking over, leaving only each queue's base, eventfds and enable for
    /// [`Connection::activate`]. Sends only what differs from what this backend was sent.
    pub fn prepare(&mut self, setup: &Setup) -> Result<(), FrontendError> {
        if let Some(acked) = setup.acked {
            let acked = acked | (self.features & VHOST_USER_F_PROTOCOL_FEATURES);
            if self.sent.features != Some(acked) {
                self.call("SET_FEATURES", |f| f.set_features(acked))?;
                self.sent.features = Some(acked);
            }
        }
        if !self.sent.mem_table {
            let table = memory_table(&setup.ram);
            self.call("SET_MEM_TABLE", |f| f.set_mem_table(&table))?;
            self.sent.mem_table = true;
        }
        if let Some(inflight) = setup.inflight.as_ref().filter(|_| self.keeps_inflight()) {
            if !self.sent.inflight.as_ref().is_some_and(|sent| Arc::ptr_eq(sent, inflight)) {
                let fd = inflight.file.as_raw_fd();
                self.call("SET_INFLIGHT_FD", |f| f.set_inflight_fd(&inflight.info, fd))?;
                self.sent.inflight = Some(inflight.clone());
            }
        }
        for (index, q) in setup.queues.iter().enumerate().filter(|(_, q)| q.ready) {
            if self.sent.rings.get(index) == Some(&Some(*q)) {
                continue;
            }
            let addr = |what, gpa| host_address(&setup.ram, index, what, gpa);
            let data = VringConfigData {
                queue_max_size: super::QUEUE_MAX_SIZE,
                queue_size: q.size,
                flags: 0,
                desc_table_addr: addr("descriptor table", q.desc)?,
                used_ring_addr: addr("used ring", q.device)?,
                avail_ring_addr: addr("available ring", q.driver)?,
                log_addr: None,
            };
            self.call("SET_VRING_NUM", |f| f.set_vring_num(index, q.size))?;
            self.call("SET_VRING_ADDR", |f| f.set_vring_addr(index, &data))?;
            if self.sent.rings.len() <= index {
                self.sent.rings.resize(index + 1, None);
            }
            self.sent.rings[index] = Some(*q);
        }
        Ok(())
    }

    /// Hands the configured queues to the backend and starts them (what
    /// [`Connection::prepare`] sent ahead is not sent again). With an
    /// inflight region (kept by the core across backend restarts), each
    /// queue restarts from the used ring's index in guest memory and the
    /// backend resubmits what the region records as in flight.
    pub fn activate(
        &mut self,
        setup: &Setup,
        kicks: &[EventFd],
        call: &EventFd,
    ) -> Result<(), FrontendError> {
        // The queues a standby was handed ahead: it has taken their size and addresses.
        let handed: Vec<bool> = (setup.queues.iter().enumerate())
            .map(|(index, q)| self.sent.rings.get(index) == Some(&Some(*q)))
            .collect();
        self.prepare(setup)?;
        let own = self.features & VHOST_USER_F_PROTOCOL_FEATURES;
        for (index, q) in setup.queues.iter().enumerate().filter(|(_, q)| q.ready) {
            // A queue it has taken the rest of starts in one round trip: its base and
            // eventfds go unacknowledged (a backend processes its messages in order), the
            // last message is acknowledged — as QEMU's frontend does for all four.
            let quick = handed[index];
            let base = used_index(&setup.ram, q).unwrap_or(0);
            self.call_maybe_unacked(quick, "SET_VRING_BASE", |f| f.set_vring_base(index, base))?;
            self.call_maybe_unacked(quick, "SET_VRING_KICK", |f| {
                f.set_vring_kick(index, &kicks[index])
            })?;
            let last = own == 0;
            self.call_maybe_unacked(quick && !last, "SET_VRING_CALL", |f| {
                f.set_vring_call(index, call)
            })?;
            if own != 0 {
                self.call("SET_VRING_ENABLE", |f| f.set_vring_enable(index, true))?;
            }
        }
        Ok(())
    }

    /// [`Connection::call`], without asking for an acknowledgement when `unacked`.
    fn call_maybe_unacked<T>(
        &mut self,
        unacked: bool,
        what: &'static str,
        f: impl FnOnce(&mut Frontend) -> Result<T, vhost::Error>,
    ) -> Result<T, FrontendError> {
        let acks = self.protocol.contains(VhostUserProtocolFeatures::REPLY_ACK);
        if !(unacked && acks) {
            return self.call(what, f);
        }
        self.frontend.set_hdr_flags(VhostUserHeaderFlag::empty());
        let result = self.call(what, f);
        self.frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        result
    }

    /// Stops every started queue (the device reset). The next activation sends everything
    /// again, as QEMU's frontend does at each start.
    pub fn reset(&mut self, queues: &[QueueConfig]) -> Result<(), FrontendError> {
        self.sent = Sent::default();
        for (index, _) in queues.iter().enumerate().filter(|(_, q)| q.ready) {
            self.call("GET_VRING_BASE", |f| f.get_vring_base(index))?;
        }
        Ok(())
    }

    /// Writes to the device configuration space.
    pub fn write_config(&mut self, offset: u32, data: &[u8]) -> Result<(), FrontendError> {
        if !self.protocol.contains(VhostUserProtocolFeatures::CONFIG) {
            return Ok(());
        }
        self.call("SET_CONFIG", |f| f.set_config(offset, VhostUserConfigFlags::WRITABLE, data))
    }

    /// Reads the device's configuration space (as much as the core shows of it).
    fn read_config(&mut self, kind: DeviceKind) -> Result<Vec<u8>, FrontendError> {
        let size = kind.config_size();
        if size == 0 || !self.protocol.contains(VhostUserProtocolFeatures::CONFIG) {
            return Ok(vec![0; size as usize]);
        }
        let zeros = vec![0u8; size as usize];
        let flags = VhostUserConfigFlags::WRITABLE;
        let (_, config) = self.call("GET_CONFIG", |f| f.get_config(0, size, flags, &zeros))?;
        Ok(config)
    }

    pub fn raw_fd(&self) -> i32 {
        self.frontend.as_raw_fd()
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::fake;

    /// A backend that offers protocol features MQ and CONFIG (no REPLY_ACK, so only GET_*
    /// requests are answered), says it has `queues` queues, and answers GET_CONFIG with a
    /// configuration space of `config_len` bytes, whatever was asked.
    fn backend(queues: u64, config_len: usize) -> UnixStream {
        fake::backend(move |request, body| match request {
            fake::GET_FEATURES => Some(
                (super::super::VIRTIO_F_VERSION_1 | VHOST_USER_F_PROTOCOL_FEATURES)
                    .to_le_bytes()
                    .to_vec(),
            ),
            fake::GET_PROTOCOL_FEATURES => {
                let mq_and_config: u64 = 1 | (1 << 9);
                Some(mq_and_config.to_le_bytes().to_vec())
            }
            fake::GET_QUEUE_NUM => Some(queues.to_le_bytes().to_vec()),
            // offset, size, flags, then the space.
            fake::GET_CONFIG => {
                let mut reply = body[..4].to_vec();
                reply.extend_from_slice(&(config_len as u32).to_le_bytes());
                reply.extend_from_slice(&body[8..12]);
                reply.extend(std::iter::repeat_n(0xab, config_len));
                Some(reply)
            }
            _ => None,
        })
    }

    /// The messages a fake backend has seen: request code, and whether it asked for a reply.
    type Seen = std::sync::Mutex<Vec<(u32, bool)>>;

    /// A backend that offers protocol features with REPLY_ACK, acknowledges every message that
    /// asks for it, and records each message's request code and whether it asked.
    fn recording_backend() -> (UnixStream, Arc<Seen>) {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = seen.clone();
        let conn = fake::backend_seeing_flags(move |request, flags, _| {
            let need_reply = flags & 0x8 != 0;
            record.lock().unwrap().push((request, need_reply));
            match request {
                fake::GET_FEATURES => Some(
                    (super::super::VIRTIO_F_VERSION_1 | VHOST_USER_F_PROTOCOL_FEATURES)
                        .to_le_bytes()
                        .to_vec(),
                ),
                fake::GET_PROTOCOL_FEATURES => Some((1u64 << 3).to_le_bytes().to_vec()),
                _ if need_reply => Some(0u64.to_le_bytes().to_vec()),
                _ => None,
            }
        });
        (conn, seen)
    }

    /// vhost-user request codes (QEMU's `docs/interop/vhost-user.rst`).
    const SET_FEATURES: u32 = 2;
    const SET_MEM_TABLE: u32 = 5;
    const SET_VRING_NUM: u32 = 8;
    const SET_VRING_ADDR: u32 = 9;
    const SET_VRING_BASE: u32 = 10;
    const SET_VRING_KICK: u32 = 12;
    const SET_VRING_CALL: u32 = 13;
    const SET_VRING_ENABLE: u32 = 18;

    /// Waits until the fake has seen `n` messages, and takes them.
    fn take(seen: &Seen, n: usize) -> Vec<(u32, bool)> {
        let start = Instant::now();
        while seen.lock().unwrap().len() < n && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::mem::take(&mut *seen.lock().unwrap())
    }

    /// A standby is sent all but the queues' start ahead; taking over then sends each queue's
    /// base, kick and call unacknowledged and its enable acknowledged, and nothing else. What
    /// changed since (a guest's reset set the queue up elsewhere) is sent again, acknowledged.
    #[test]
    fn a_prepared_standby_is_only_sent_the_queues_start() {
        super::super::alarm::start(|| {}).unwrap();
        let ram = Arc::new(GuestRam::new(16 << 20).unwrap());
        let queue =
            QueueConfig { size: 16, ready: true, desc: 0x1000, driver: 0x2000, device: 0x3000 };
        let mut setup = Setup {
            ram,
            acked: Some(super::super::VIRTIO_F_VERSION_1),
            queues: vec![queue],
            inflight: None,
        };
        let (conn, seen) = recording_backend();
        let mut c = Connection::connect(conn, &DeviceShape::of(DeviceKind::RNG)).unwrap();
        take(&seen, 4);
        c.prepare(&setup).unwrap();
        let codes: Vec<u32> = take(&seen, 4).iter().map(|m| m.0).collect();
        assert_eq!(codes, [SET_FEATURES, SET_MEM_TABLE, SET_VRING_NUM, SET_VRING_ADDR]);
        // Nothing changed: a second preparation sends nothing.
        c.prepare(&setup).unwrap();
        let kicks = [EventFd::new(0).unwrap()];
        let call = EventFd::new(0).unwrap();
        c.activate(&setup, &kicks, &call).unwrap();
        let start = [
            (SET_VRING_BASE, false),
            (SET_VRING_KICK, false),
            (SET_VRING_CALL, false),
            (SET_VRING_ENABLE, true),
        ];
        assert_eq!(take(&seen, 4), start);
        // After a reset, the same queue elsewhere: its size and addresses again, all acked.
        c.reset(&[]).unwrap();
        setup.queues[0].desc = 0x4000;
        c.activate(&setup, &kicks, &call).unwrap();
        let codes: Vec<(u32, bool)> = take(&seen, 8);
        assert!(codes.iter().all(|m| m.1), "{codes:?}");
        let codes: Vec<u32> = codes.iter().map(|m| m.0).collect();
        assert_eq!(
            codes,
            [
                SET_FEATURES,
                SET_MEM_TABLE,
                SET_VRING_NUM,
                SET_VRING_ADDR,
                SET_VRING_BASE,
                SET_VRING_KICK,
                SET_VRING_CALL,
                SET_VRING_ENABLE
            ]
        );
    }

    fn vsock() -> DeviceShape {
        DeviceShape::of(DeviceKind::parse("vsock").unwrap())
    }

    #[test]
    fn the_queue_count_and_config_come_from_the_backend() {
        let c = Connection::connect(backend(3, 8), &vsock()).unwrap();
        assert_eq!((c.queues, c.config), (3, vec![0xab; 8]));
        // The user's count wins over the backend's.
        let shape = DeviceShape { queues: Some(2), ..vsock() };
        assert_eq!(Connection::connect(backend(3, 8), &shape).unwrap().queues, 2);
    }

    #[test]
    fn a_backend_with_no_queues_or_too_many_is_refused() {
        for queues in [0, MAX_QUEUES as u64 + 1] {
            match Connection::connect(backend(queues, 8), &vsock()) {
                Err(FrontendError::QueueCount(n)) => assert_eq!(n, queues),
                Err(e) => panic!("{queues} queues: {e}"),
                Ok(_) => panic!("{queues} queues were taken"),
            }
        }
    }

    /// A reply shorter or longer than asked is an error, never a config space of another size:
    /// refused at once, or (shorter: the vhost crate waits for the bytes it was promised) at
    /// the operation's deadline.
    #[test]
    fn a_config_space_of_another_size_than_asked_is_refused() {
        super::super::alarm::start(|| {}).unwrap();
        for len in [4, 64] {
            let deadline = Instant::now() + Duration::from_millis(300);
            match Connection::connect_within(backend(3, len), &vsock(), deadline) {
                Err(FrontendError::Request("GET_CONFIG", e)) => eprintln!("{len}: refused: {e}"),
                Err(FrontendError::Deadline("GET_CONFIG")) => eprintln!("{len}: deadline"),
                Err(e) => panic!("{len} bytes: {e}"),
                Ok(c) => panic!("{len} bytes of config taken as {:?}", c.config),
            }
        }
    }
}
