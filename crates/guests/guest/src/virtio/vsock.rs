//! The virtio socket device (virtio 1.2, section 5.10): receive queue 0, transmit queue 1,
//! event queue 2; stream sockets only.
//!
//! Every packet is a 44-byte header ([`Hdr`]) and, for `RW`, its payload. Both directions use
//! two descriptors per packet, the header's and the payload's, the layout every device
//! implementation accepts. Receive: every buffer of the receive queue is posted at start, and
//! a packet is copied out and its buffers posted again at once. Transmit: one packet at a
//! time per free transmit slot; slots come back when the device returns them. The event
//! queue holds a few buffers the device may fill (a transport reset after its backend
//! restarted); the driver does not act on them.

use crate::bump::Bump;

use super::mmio::{InitError, Transport};
use super::queue::{Completion, IoError, Queue};
use super::ring::{Buf, MAX_QUEUE};

pub const RX_QUEUE: u16 = 0;
pub const TX_QUEUE: u16 = 1;
pub const EVENT_QUEUE: u16 = 2;

/// The header's size.
pub const HDR_LEN: usize = 44;
/// The largest payload of one packet either way.
pub const PAYLOAD_MAX: usize = 4096;
/// Bytes per slot: the header, then the payload, each its own descriptor.
const SLOT_BYTES: u64 = 8192;
/// The host's context ID.
pub const HOST_CID: u64 = 2;
/// The stream socket type.
pub const TYPE_STREAM: u16 = 1;

/// Operations (section 5.10.6).
pub mod op {
    pub const REQUEST: u16 = 1;
    pub const RESPONSE: u16 = 2;
    pub const RST: u16 = 3;
    pub const SHUTDOWN: u16 = 4;
    pub const RW: u16 = 5;
    pub const CREDIT_UPDATE: u16 = 6;
    pub const CREDIT_REQUEST: u16 = 7;
}

/// SHUTDOWN's flags: no more receiving, no more sending.
pub const SHUTDOWN_BOTH: u32 = 3;

/// A packet header (all fields little-endian in the packet).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Hdr {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub kind: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl Hdr {
    fn write(&self, out: &mut [u8]) {
        out[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        out[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        out[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        out[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        out[24..28].copy_from_slice(&self.len.to_le_bytes());
        out[28..30].copy_from_slice(&self.kind.to_le_bytes());
        out[30..32].copy_from_slice(&self.op.to_le_bytes());
        out[32..36].copy_from_slice(&self.flags.to_le_bytes());
        out[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        out[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
    }

    fn read(b: &[u8]) -> Hdr {
        let u64_at = |i: usize| {
            u64::from_le_bytes([
                b[i],
                b[i + 1],
                b[i + 2],
                b[i + 3],
                b[i + 4],
                b[i + 5],
                b[i + 6],
                b[i + 7],
            ])
        };
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Hdr {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            kind: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }
}

pub struct Vsock {
    transport: Transport,
    rx: Queue,
    tx: Queue,
    _event: Queue,
    /// The guest's context ID, from the configuration space.
    pub guest_cid: u64,
    rx_base: u64,
    /// Per receive descriptor head: the slot it carries.
    rx_slot: [u16; MAX_QUEUE],
    tx_base: u64,
    tx_slot: [u16; MAX_QUEUE],
    tx_free: [u16; MAX_QUEUE],
    tx_nfree: usize,
    /// Packets received that were malformed (dropped).
    pub rx_dropped: u64,
}

impl Vsock {
    pub fn new(
        transport: Transport,
        completion: Completion,
        bump: &mut Bump,
    ) -> Result<Vsock, InitError> {
        transport.init(0)?;
        let guest_cid = transport.config_u64(0);
        let rx = transport.setup_queue(RX_QUEUE, 64, bump)?;
        let tx = transport.setup_queue(TX_QUEUE, 64, bump)?;
        let event = transport.setup_queue(EVENT_QUEUE, 4, bump)?;
        // Receive chains take two descriptors each.
        let rx_n = u64::from(rx.size() / 2);
        let tx_n = u64::from(tx.size() / 2);
        let rx_base = bump.alloc(rx_n * SLOT_BYTES, 4096).ok_or(InitError::NoMemory)?;
        let tx_base = bump.alloc(tx_n * SLOT_BYTES, 4096).ok_or(InitError::NoMemory)?;
        let event_base = bump.alloc(4096, 4096).ok_or(InitError::NoMemory)?;
        let mut v = Vsock {
            transport,
            rx: Queue::new(rx, transport, RX_QUEUE, completion).receiving(),
            tx: Queue::new(tx, transport, TX_QUEUE, completion),
            _event: Queue::new(event, transport, EVENT_QUEUE, completion).receiving(),
            guest_cid,
            rx_base,
            rx_slot: [0; MAX_QUEUE],
            tx_base,
            tx_slot: [0; MAX_QUEUE],
            tx_free: [0; MAX_QUEUE],
            tx_nfree: tx_n as usize,
            rx_dropped: 0,
        };
        v.tx.set_interrupts(false);
        for (i, slot) in v.tx_free[..tx_n as usize].iter_mut().enumerate() {
            *slot = i as u16;
        }
        for i in 0..rx_n as u16 {
            v.post_rx(i);
        }
        for i in 0..4u64 {
            let _ = v._event.push(&[Buf { addr: event_base + 8 * i, len: 8, writable: true }]);
        }
        transport.driver_ok();
        v.rx.kick();
        v._event.kick();
        Ok(v)
    }

    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// Notifies the device of the receive and transmit queues again, with nothing new in
    /// them: a device that missed a notification (one that came before it was ready) looks at
    /// its rings again.
    pub fn renotify(&mut self) {
        self.transport.notify(RX_QUEUE);
        self.transport.notify(TX_QUEUE);
    }

    fn post_rx(&mut self, slot: u16) {
        let addr = self.rx_base + u64::from(slot) * SLOT_BYTES;
        let bufs = [
            Buf { addr, len: HDR_LEN as u32, writable: true },
            Buf { addr: addr + 4096, len: PAYLOAD_MAX as u32, writable: true },
        ];
        if let Ok(head) = self.rx.push(&bufs) {
            self.rx_slot[usize::from(head)] = slot;
        }
    }

    /// The next received packet: its header, and its payload copied into `out` (its length is
    /// `hdr.len`, capped at [`PAYLOAD_MAX`]); `None` if nothing has arrived.
    pub fn recv(&mut self, out: &mut [u8; PAYLOAD_MAX]) -> Result<Option<Hdr>, IoError> {
        loop {
            let used = match self.rx.pop() {
                None => return Ok(None),
                Some(r) => r?,
            };
            let slot = self.rx_slot[usize::from(used.id)];
            let addr = self.rx_base + u64::from(slot) * SLOT_BYTES;
            let written = used.len as usize;
            let packet = (written >= HDR_LEN).then(|| {
                // SAFETY: the device returned this slot (SLOT_BYTES of guest memory owned by
                // the receive queue) and writes it no more until it is posted again below.
                let hdr = unsafe { core::slice::from_raw_parts(addr as *const u8, HDR_LEN) };
                let mut hdr = Hdr::read(hdr);
                let len = (hdr.len as usize).min(PAYLOAD_MAX).min(written - HDR_LEN);
                hdr.len = len as u32;
                // SAFETY: as above; the payload's descriptor is PAYLOAD_MAX bytes at +4096.
                let payload =
                    unsafe { core::slice::from_raw_parts((addr + 4096) as *const u8, len) };
                out[..len].copy_from_slice(payload);
                hdr
            });
            self.post_rx(slot);
            self.rx.kick();
            match packet {
                Some(hdr) => return Ok(Some(hdr)),
                None => self.rx_dropped += 1,
            }
        }
    }

    /// Waits until a packet may have arrived or `deadline` passes (a receive queue: no packet
    /// is no fault).
    pub fn wait_rx(&mut self, deadline: u64) -> Result<(), IoError> {
        match self.rx.wait(deadline) {
            Err(IoError::Timeout) => Ok(()),
            r => r,
        }
    }

    /// Takes back the transmit slots the device has finished with.
    fn reclaim(&mut self) -> Result<(), IoError> {
        while let Some(used) = self.tx.pop() {
            let used = used?;
            if self.tx_nfree < self.tx_free.len() {
                self.tx_free[self.tx_nfree] = self.tx_slot[usize::from(used.id)];
                self.tx_nfree += 1;
            }
        }
        Ok(())
    }

    /// Sends `hdr` with `payload` (its `len` is set here), waiting up to `deadline` for a free
    /// transmit slot.
    pub fn send(&mut self, mut hdr: Hdr, payload: &[u8], deadline: u64) -> Result<(), IoError> {
        let payload = &payload[..payload.len().min(PAYLOAD_MAX)];
        self.reclaim()?;
        while self.tx_nfree == 0 {
            self.tx.set_interrupts(true);
            let waited = self.tx.wait(deadline);
            self.tx.set_interrupts(false);
            waited?;
            self.reclaim()?;
        }
        let slot = self.tx_free[self.tx_nfree - 1];
        let addr = self.tx_base + u64::from(slot) * SLOT_BYTES;
        hdr.len = payload.len() as u32;
        hdr.kind = TYPE_STREAM;
        // SAFETY: the slot is free (not in the transmit ring): SLOT_BYTES of guest memory owned
        // by this driver.
        let mem = unsafe { core::slice::from_raw_parts_mut(addr as *mut u8, SLOT_BYTES as usize) };
        hdr.write(&mut mem[..HDR_LEN]);
        mem[4096..4096 + payload.len()].copy_from_slice(payload);
        let header = Buf { addr, len: HDR_LEN as u32, writable: false };
        let data = Buf { addr: addr + 4096, len: payload.len() as u32, writable: false };
        let head = if payload.is_empty() {
            self.tx.push(&[header])?
        } else {
            self.tx.push(&[header, data])?
        };
        self.tx_slot[usize::from(head)] = slot;
        self.tx_nfree -= 1;
        self.tx.kick();
        Ok(())
    }
}
