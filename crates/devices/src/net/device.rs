//! The network device and its two queue handlers.

use std::io::ErrorKind;
use std::os::fd::RawFd;
use std::sync::Arc;

use super::config::{self, features, Mac, NetConfig, TapSource};
use super::tap::{PacketPort, Tap, VNET_HDR_LEN};
use crate::backend::chain::Chain;
use crate::backend::{Progress, QueueContext, QueueHandler};
use crate::limit::{spec, Gate, Limiters, LimitsView};
use crate::{Device, DeviceError, DeviceKind};

/// Largest frame (without header) the device carries.
pub const MAX_FRAME: usize = 65_550;
/// Most packets one queue moves per wake-up before it lets the worker look around.
const BATCH: usize = 64;
const RX: usize = 0;
const TX: usize = 1;

/// A virtio-net device over a tap.
pub struct NetDevice {
    tap: Arc<dyn PacketPort>,
    mac: Mac,
    limiters: Limiters,
}

impl NetDevice {
    /// Opens (or adopts) the tap `cfg` names.
    pub fn open(cfg: &NetConfig) -> Result<NetDevice, DeviceError> {
        let tap = match &cfg.tap {
            TapSource::Name(name) => Tap::open(name)?,
            TapSource::Fd(fd) => Tap::from_fd(*fd)?,
        };
        let device = NetDevice::new(tap, cfg.mac.unwrap_or_else(Mac::random));
        Ok(device.with_limits(LimitsView::fixed(&cfg.limits)))
    }

    /// A device over an open tap (or another packet port), with no rate limit.
    pub fn new(tap: impl PacketPort + 'static, mac: Mac) -> NetDevice {
        let limiters = Limiters::new(LimitsView::fixed(&Default::default()));
        NetDevice { tap: Arc::new(tap), mac, limiters }
    }

    /// The device with the rate limits of `view`.
    pub fn with_limits(mut self, view: LimitsView) -> NetDevice {
        self.limiters = Limiters::new(view);
        self
    }

    /// The guest's MAC address.
    pub fn mac(&self) -> Mac {
        self.mac
    }
}

impl Device for NetDevice {
    fn kind(&self) -> DeviceKind {
        DeviceKind::Net
    }

    fn num_queues(&self) -> usize {
        2
    }

    fn features(&self) -> u64 {
        features::MAC | features::STATUS | features::MRG_RXBUF
    }

    fn supports_inflight(&self) -> bool {
        false
    }

    fn offers_mq(&self) -> bool {
        false
    }

    /// The transmit worker looks at the tap right after sending: the host's kernel often has
    /// produced the reply (an ICMP echo, a TCP ACK) before the tap write returned. Measured in
    /// `bulkhead bench net` (docs/BENCHMARKS.md).
    fn peer_queue(&self, queue: usize) -> Option<usize> {
        (queue == TX).then_some(RX)
    }

    fn config(&self) -> Vec<u8> {
        config::config_space(self.mac)
    }

    fn files(&self) -> Vec<RawFd> {
        vec![self.tap.fd()]
    }

    fn queue_handler(
        &self,
        queue: usize,
        acked_features: u64,
    ) -> Result<Box<dyn QueueHandler>, DeviceError> {
        match queue {
            RX => {
                let gate = self.limiters.gate(spec::RX)?;
                Ok(Box::new(RxQueue::new(self.tap.clone(), acked_features, gate)))
            }
            TX => Ok(Box::new(TxQueue::new(self.tap.clone(), self.limiters.gate(spec::TX)?))),
            _ => Err(DeviceError::Config(format!("net has no queue {queue} (no control queue)"))),
        }
    }
}

/// Receive: tap → guest.
pub struct RxQueue {
    tap: Arc<dyn PacketPort>,
    mergeable: bool,
    /// The packet being delivered: header (12 bytes) then frame.
    buf: Vec<u8>,
    /// Length in `buf` of a packet read from the tap and not yet delivered.
    pending: Option<usize>,
    /// The pending packet got its tokens from the rate limiter.
    admitted: bool,
    gate: Gate,
}

enum Delivery {
    Done,
    NoBuffers,
}

impl RxQueue {
    /// A receive handler; `features` says whether buffers may be merged.
    pub fn new(tap: Arc<dyn PacketPort>, features: u64, gate: Gate) -> RxQueue {
        let mergeable = features & features::MRG_RXBUF != 0;
        let buf = vec![0; VNET_HDR_LEN + MAX_FRAME];
        RxQueue { tap, mergeable, buf, pending: None, admitted: false, gate }
    }

    /// Reads one packet from the tap into `buf`; false when there is none.
    fn read_tap(&mut self) -> bool {
        let at = if self.tap.has_vnet_hdr() { 0 } else { VNET_HDR_LEN };
        match self.tap.read_packet(&mut self.buf[at..]) {
            Ok(n) if at + n > VNET_HDR_LEN => {
                // No offloads were offered: the guest gets a plain, checksummed packet.
                self.buf[..VNET_HDR_LEN].fill(0);
                self.pending = Some(at + n);
                self.admitted = false;
                true
            }
            Ok(_) => true, // empty read: skip it
            Err(e) if e.kind() == ErrorKind::WouldBlock => false,
            Err(e) if e.kind() == ErrorKind::Interrupted => true,
            Err(e) => {
                log::warn!("reading from tap {} failed: {e}", self.tap.name());
                false
            }
        }
    }

    /// Puts the pending packet in the guest's buffers.
    fn deliver(&mut self, q: &mut QueueContext<'_>) -> Delivery {
        let Some(len) = self.pending else { return Delivery::Done };
        let mut chains: Vec<Chain> = Vec::new();
        let mut room = 0u64;
        while room < len as u64 {
            let Some(chain) = q.pop() else {
                chains.iter().for_each(|_| q.unpop());
                return Delivery::NoBuffers;
            };
            if chain.error.is_some() || chain.writable_len() == 0 {
                // A broken buffer: give back it and those taken for this packet, empty.
                log::debug!("bad receive buffer at {}: {:?}", chain.head, chain.error);
                chains.iter().chain(Some(&chain)).for_each(|c| q.complete(c.head, 0));
                return Delivery::Done;
            }
            if !self.mergeable && chain.writable_len() < len as u64 {
                q.unpop(); // too small for this packet: keep it for a smaller one
                log::debug!("dropping a {len}-byte packet: receive buffer too small");
                self.pending = None;
                return Delivery::Done;
            }
            room += chain.writable_len();
            chains.push(chain);
        }
        self.write_packet(q, &chains, len);
        self.pending = None;
        Delivery::Done
    }

    fn write_packet(&mut self, q: &mut QueueContext<'_>, chains: &[Chain], len: usize) {
        let count = chains.len() as u16;
        self.buf[10..12].copy_from_slice(&count.to_le_bytes());
        let mem = q.memory();
        let mut at = 0usize;
        for chain in chains {
            let mut w = chain.writer();
            let n = (w.remaining() as usize).min(len - at);
            let ok = w.write_all(mem, &self.buf[at..at + n]);
            at += n;
            q.complete(chain.head, if ok { n as u32 } else { 0 });
        }
    }
}

impl QueueHandler for RxQueue {
    /// No polling (measured: polling here slowed a ping-pong with the host
    /// from ~34K to ~22K round trips/s on a 2-core host, the poller taking
    /// the core the kernel needed to produce the reply).
    fn poll_before_sleep(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }

    fn process(&mut self, q: &mut QueueContext<'_>) -> Progress {
        self.gate.refresh();
        for _ in 0..BATCH {
            if self.pending.is_none() && !self.read_tap() {
                return Progress::Paused;
            }
            if let (Some(len), false) = (self.pending, self.admitted) {
                if !self.gate.admit(|| (len - VNET_HDR_LEN) as u64) {
                    return Progress::Paused; // the timer brings the worker back
                }
                self.admitted = true;
            }
            if let Delivery::NoBuffers = self.deliver(q) {
                return Progress::Starved;
            }
        }
        Progress::Drained
    }

    fn event_fd(&self) -> Option<RawFd> {
        Some(self.tap.fd())
    }

    fn wants_event(&self) -> bool {
        self.pending.is_none()
    }

    fn timer_fd(&self) -> Option<RawFd> {
        Some(self.gate.timer_fd())
    }
}

/// Transmit: guest → tap.
pub struct TxQueue {
    tap: Arc<dyn PacketPort>,
    buf: Vec<u8>,
    gate: Gate,
    /// A chain the rate limiter did not admit yet.
    held: Option<Chain>,
}

impl TxQueue {
    /// A transmit handler.
    pub fn new(tap: Arc<dyn PacketPort>, gate: Gate) -> TxQueue {
        TxQueue { tap, buf: Vec::with_capacity(VNET_HDR_LEN + MAX_FRAME), gate, held: None }
    }

    fn send(&mut self, q: &QueueContext<'_>, chain: &Chain) {
        let len = chain.readable_len();
        if chain.error.is_some() || len <= VNET_HDR_LEN as u64 + 13 {
            log::debug!("dropping a malformed packet at {}: {:?}", chain.head, chain.error);
            return;
        }
        if len > (VNET_HDR_LEN + MAX_FRAME) as u64 {
            log::debug!("dropping an oversized packet of {len} bytes");
            return;
        }
        self.buf.resize(len as usize, 0);
        if !chain.reader().read_exact(q.memory(), &mut self.buf) {
            return;
        }
        // No offloads were negotiated: whatever the header says, the frame is complete.
        self.buf[..VNET_HDR_LEN].fill(0);
        let packet =
            if self.tap.has_vnet_hdr() { &self.buf[..] } else { &self.buf[VNET_HDR_LEN..] };
        if let Err(e) = self.tap.write_packet(packet) {
            log::debug!("tap {} dropped a packet: {e}", self.tap.name());
        }
    }
}

impl QueueHandler for TxQueue {
    /// No polling (see the receive queue).
    fn poll_before_sleep(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }

    fn process(&mut self, q: &mut QueueContext<'_>) -> Progress {
        self.gate.refresh();
        while let Some(chain) = self.held.take().or_else(|| q.pop()) {
            if !self.gate.admit(|| chain.readable_len().saturating_sub(VNET_HDR_LEN as u64)) {
                self.held = Some(chain);
                return Progress::Paused; // the timer brings the worker back
            }
            self.send(q, &chain);
            q.complete(chain.head, 0);
        }
        Progress::Drained
    }

    fn timer_fd(&self) -> Option<RawFd> {
        Some(self.gate.timer_fd())
    }
}
