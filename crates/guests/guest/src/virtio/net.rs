//! The virtio-net driver (virtio 1.2, section 5.1): receive queue 0,
//! transmit queue 1, no offloads.
//!
//! Every packet in either direction is preceded by the 12-byte
//! `virtio_net_hdr` of VIRTIO_F_VERSION_1 (all zero when sending: no
//! checksum offload, no segmentation). Each buffer is 2 KiB, one
//! descriptor: enough for the header and a 1514-byte frame, since the
//! driver negotiates neither mergeable buffers nor large receives.
//!
//! Receive: every buffer of the receive queue is posted at start; a frame
//! is copied out and its buffer posted again at once. Transmit: a frame is
//! built in a free transmit buffer; buffers come back when the device
//! returns them. Features used: VERSION_1, MAC (the device's address).

use crate::bump::Bump;
use crate::packet::Mac;

use super::mmio::{InitError, Transport};
use super::net_spec::*;
use super::queue::{Completion, IoError, Queue};
use super::ring::{Buf, MAX_QUEUE};

/// One buffer: header and frame.
pub const BUF_BYTES: u32 = 2048;
/// The longest frame (without its FCS) the driver sends or keeps.
pub const FRAME_MAX: usize = 1514;

pub struct Net {
    transport: Transport,
    rx: Queue,
    tx: Queue,
    features: u64,
    device_mac: Option<Mac>,
    rx_base: u64,
    /// Per receive descriptor head: the buffer it carries.
    rx_buf: [u16; MAX_QUEUE],
    tx_base: u64,
    tx_buf: [u16; MAX_QUEUE],
    tx_free: [u16; MAX_QUEUE],
    tx_nfree: usize,
    /// Received frames that were too short or too long to keep.
    pub rx_dropped: u64,
    /// Frames the device has finished sending.
    pub tx_done: u64,
}

impl Net {
    pub fn new(
        transport: Transport,
        completion: Completion,
        bump: &mut Bump,
    ) -> Result<Net, InitError> {
        let features = transport.init(F_MAC)?;
        let device_mac = (features & F_MAC != 0).then(|| {
            let (a, b) =
                (transport.config_u32(0).to_le_bytes(), transport.config_u32(4).to_le_bytes());
            [a[0], a[1], a[2], a[3], b[0], b[1]]
        });
        let rx = transport.setup_queue(RX_QUEUE, MAX_QUEUE as u16, bump)?;
        let tx = transport.setup_queue(TX_QUEUE, MAX_QUEUE as u16, bump)?;
        let (rx_n, tx_n) = (u64::from(rx.size()), u64::from(tx.size()));
        let rx_base = bump.alloc(rx_n * u64::from(BUF_BYTES), 4096).ok_or(InitError::NoMemory)?;
        let tx_base = bump.alloc(tx_n * u64::from(BUF_BYTES), 4096).ok_or(InitError::NoMemory)?;
        let mut net = Net {
            transport,
            rx: Queue::new(rx, transport, RX_QUEUE, completion).receiving(),
            tx: Queue::new(tx, transport, TX_QUEUE, completion),
            features,
            device_mac,
            rx_base,
            rx_buf: [0; MAX_QUEUE],
            tx_base,
            tx_buf: [0; MAX_QUEUE],
            tx_free: [0; MAX_QUEUE],
            tx_nfree: tx_n as usize,
            rx_dropped: 0,
            tx_done: 0,
        };
        // Transmit buffers are reaped lazily: no interrupt per sent frame.
        net.tx.set_interrupts(false);
        for (i, slot) in net.tx_free[..tx_n as usize].iter_mut().enumerate() {
            *slot = i as u16;
        }
        for i in 0..rx_n as u16 {
            net.post_rx(i);
        }
        transport.driver_ok();
        net.rx.kick();
        Ok(net)
    }

    pub fn features(&self) -> u64 {
        self.features
    }

    /// The MAC address in the device's configuration, if it offers one.
    pub fn device_mac(&self) -> Option<Mac> {
        self.device_mac
    }

    pub fn queue_sizes(&self) -> (u16, u16) {
        (self.rx.size(), self.tx.size())
    }

    pub fn transport(&self) -> Transport {
        self.transport
    }

    fn post_rx(&mut self, buf: u16) {
        let addr = self.rx_base + u64::from(buf) * u64::from(BUF_BYTES);
        if let Ok(head) = self.rx.push(&[Buf { addr, len: BUF_BYTES, writable: true }]) {
            self.rx_buf[usize::from(head)] = buf;
        }
    }

    /// Copies the next received frame (without the virtio header) into
    /// `out`; returns its length, or `None` if nothing has arrived.
    pub fn recv(&mut self, out: &mut [u8; FRAME_MAX]) -> Result<Option<usize>, IoError> {
        loop {
            let used = match self.rx.pop() {
                None => return Ok(None),
                Some(r) => r?,
            };
            let buf = self.rx_buf[usize::from(used.id)];
            let addr = self.rx_base + u64::from(buf) * u64::from(BUF_BYTES);
            let len = used.len as usize; // capped at BUF_BYTES by the ring
            let frame_len = len.saturating_sub(HDR_LEN);
            let kept = (14..=FRAME_MAX).contains(&frame_len);
            if kept {
                // SAFETY: the device returned this buffer (BUF_BYTES of guest
                // memory owned by the receive queue) and writes it no more
                // until it is posted again below; HDR_LEN + frame_len <= len
                // <= BUF_BYTES.
                let frame = unsafe {
                    core::slice::from_raw_parts((addr + HDR_LEN as u64) as *const u8, frame_len)
                };
                out[..frame_len].copy_from_slice(frame);
            } else {
                self.rx_dropped += 1;
            }
            self.post_rx(buf);
            self.rx.kick();
            if kept {
                return Ok(Some(frame_len));
            }
        }
    }

    /// Takes back the transmit buffers the device has finished with.
    pub fn reclaim(&mut self) -> Result<usize, IoError> {
        let mut n = 0;
        while let Some(used) = self.tx.pop() {
            let used = used?;
            if self.tx_nfree < self.tx_free.len() {
                self.tx_free[self.tx_nfree] = self.tx_buf[usize::from(used.id)];
                self.tx_nfree += 1;
            }
            n += 1;
        }
        self.tx_done += n as u64;
        Ok(n)
    }

    /// Builds a frame with `build` (given a buffer of [`FRAME_MAX`] bytes,
    /// it returns the frame's length) and queues it; with `kick`, makes it
    /// visible to the device at once. `Ok(false)` if no transmit buffer is
    /// free or `build` returned 0.
    pub fn send(
        &mut self,
        kick: bool,
        build: impl FnOnce(&mut [u8]) -> usize,
    ) -> Result<bool, IoError> {
        if self.tx_nfree == 0 {
            self.reclaim()?;
        }
        if self.tx_nfree == 0 {
            return Ok(false);
        }
        let buf = self.tx_free[self.tx_nfree - 1];
        let addr = self.tx_base + u64::from(buf) * u64::from(BUF_BYTES);
        // SAFETY: the buffer is free (not in the transmit ring), BUF_BYTES
        // of guest memory owned by this driver.
        let mem = unsafe { core::slice::from_raw_parts_mut(addr as *mut u8, HDR_LEN + FRAME_MAX) };
        mem[..HDR_LEN].fill(0);
        let len = build(&mut mem[HDR_LEN..]).min(FRAME_MAX);
        if len == 0 {
            return Ok(false);
        }
        let head = match self.tx.push(&[Buf { addr, len: (HDR_LEN + len) as u32, writable: false }])
        {
            Ok(head) => head,
            Err(IoError::TooBig) => return Ok(false),
            Err(e) => return Err(e),
        };
        self.tx_buf[usize::from(head)] = buf;
        self.tx_nfree -= 1;
        if kick {
            self.tx.kick();
        }
        Ok(true)
    }

    /// QueueNotify writes (both queues) and interrupts so far.
    pub fn counters(&self) -> (u64, u64) {
        (self.rx.notifies + self.tx.notifies, self.rx.interrupts())
    }

    /// Makes queued frames visible to the device.
    pub fn kick_tx(&mut self) {
        self.tx.kick();
    }

    /// Frames queued and not yet returned by the device.
    pub fn tx_in_flight(&self) -> u16 {
        self.tx.outstanding()
    }

    /// Waits for a received frame (see [`Queue::wait`]): `Err(Timeout)` when
    /// none came, which leaves the device working.
    pub fn wait_rx(&mut self, deadline: u64) -> Result<(), IoError> {
        self.rx.wait(deadline)
    }

    /// Waits for the device to return a transmit buffer.
    pub fn wait_tx(&mut self, deadline: u64) -> Result<(), IoError> {
        self.tx.set_interrupts(true);
        let r = self.tx.wait(deadline);
        self.tx.set_interrupts(false);
        r
    }
}
