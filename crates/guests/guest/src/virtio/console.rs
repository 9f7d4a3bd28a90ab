//! The virtio console device (virtio 1.2, section 5.3), port 0 only (`hvc0` in a Linux guest):
//! receive queue 0 (host → guest), transmit queue 1 (guest → host); no feature is asked for
//! (no console size, no multiple ports, no emergency write).
//!
//! The bytes are a stream with no framing: a receive buffer holds whatever the device had,
//! and a transmit buffer is any run of bytes. Receive: every buffer of the receive queue is
//! posted at start ([`BUF_BYTES`] each), and one the device returned is copied out and posted
//! again at once. Transmit: one run of at most [`BUF_BYTES`] per free transmit slot; slots come
//! back when the device returns them (it does at once: a console's transmit buffer is never
//! held for the host).

use crate::bump::Bump;

use super::mmio::{InitError, Transport};
use super::queue::{Completion, IoError, Queue};
use super::ring::{Buf, MAX_QUEUE};

pub const RX_QUEUE: u16 = 0;
pub const TX_QUEUE: u16 = 1;

/// Bytes per buffer, either way.
pub const BUF_BYTES: usize = 4096;
/// Buffers per queue.
const QUEUE_SIZE: u16 = 16;

pub struct Console {
    rx: Queue,
    tx: Queue,
    rx_base: u64,
    /// Per receive descriptor head: the slot it carries.
    rx_slot: [u16; MAX_QUEUE],
    tx_base: u64,
    tx_slot: [u16; MAX_QUEUE],
    tx_free: [u16; MAX_QUEUE],
    tx_nfree: usize,
}

impl Console {
    pub fn new(
        transport: Transport,
        completion: Completion,
        bump: &mut Bump,
    ) -> Result<Console, InitError> {
        transport.init(0)?;
        let rx = transport.setup_queue(RX_QUEUE, QUEUE_SIZE, bump)?;
        let tx = transport.setup_queue(TX_QUEUE, QUEUE_SIZE, bump)?;
        let (rx_n, tx_n) = (u64::from(rx.size()), u64::from(tx.size()));
        let rx_base = bump.alloc(rx_n * BUF_BYTES as u64, 4096).ok_or(InitError::NoMemory)?;
        let tx_base = bump.alloc(tx_n * BUF_BYTES as u64, 4096).ok_or(InitError::NoMemory)?;
        let mut c = Console {
            rx: Queue::new(rx, transport, RX_QUEUE, completion).receiving(),
            tx: Queue::new(tx, transport, TX_QUEUE, completion),
            rx_base,
            rx_slot: [0; MAX_QUEUE],
            tx_base,
            tx_slot: [0; MAX_QUEUE],
            tx_free: [0; MAX_QUEUE],
            tx_nfree: tx_n as usize,
        };
        c.tx.set_interrupts(false);
        for (i, slot) in c.tx_free[..tx_n as usize].iter_mut().enumerate() {
            *slot = i as u16;
        }
        for i in 0..rx_n as u16 {
            c.post_rx(i);
        }
        transport.driver_ok();
        c.rx.kick();
        Ok(c)
    }

    /// The queues' sizes: receive, transmit.
    pub fn queue_sizes(&self) -> (u16, u16) {
        (self.rx.size(), self.tx.size())
    }

    fn post_rx(&mut self, slot: u16) {
        let addr = self.rx_base + u64::from(slot) * BUF_BYTES as u64;
        if let Ok(head) = self.rx.push(&[Buf { addr, len: BUF_BYTES as u32, writable: true }]) {
            self.rx_slot[usize::from(head)] = slot;
        }
    }

    /// Copies the bytes of the next buffer the device returned into `out`: how many (a buffer
    /// may come back empty); `None` if none has come back.
    pub fn recv(&mut self, out: &mut [u8; BUF_BYTES]) -> Result<Option<usize>, IoError> {
        let used = match self.rx.pop() {
            None => return Ok(None),
            Some(r) => r?,
        };
        let slot = self.rx_slot[usize::from(used.id)];
        let addr = self.rx_base + u64::from(slot) * BUF_BYTES as u64;
        // The ring caps the length at the buffer's already.
        let n = (used.len as usize).min(BUF_BYTES);
        // SAFETY: the device returned this slot (BUF_BYTES of guest memory owned by the
        // receive queue) and writes it no more until it is posted again below; n <= BUF_BYTES.
        let got = unsafe { core::slice::from_raw_parts(addr as *const u8, n) };
        out[..n].copy_from_slice(got);
        self.post_rx(slot);
        self.rx.kick();
        Ok(Some(n))
    }

    /// Waits until a buffer may have come back or `deadline` passes (a receive queue: nothing
    /// received is no fault).
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

    /// Sends `bytes`, [`BUF_BYTES`] per buffer, waiting up to `deadline` for free transmit
    /// slots.
    pub fn send(&mut self, bytes: &[u8], deadline: u64) -> Result<(), IoError> {
        for chunk in bytes.chunks(BUF_BYTES) {
            self.reclaim()?;
            while self.tx_nfree == 0 {
                self.tx.set_interrupts(true);
                let waited = self.tx.wait(deadline);
                self.tx.set_interrupts(false);
                waited?;
                self.reclaim()?;
            }
            let slot = self.tx_free[self.tx_nfree - 1];
            let addr = self.tx_base + u64::from(slot) * BUF_BYTES as u64;
            // SAFETY: the slot is free (not in the transmit ring): BUF_BYTES of guest memory
            // owned by this driver; chunk.len() <= BUF_BYTES.
            let mem = unsafe { core::slice::from_raw_parts_mut(addr as *mut u8, chunk.len()) };
            mem.copy_from_slice(chunk);
            let head = self.tx.push(&[Buf { addr, len: chunk.len() as u32, writable: false }])?;
            self.tx_slot[usize::from(head)] = slot;
            self.tx_nfree -= 1;
            self.tx.kick();
        }
        Ok(())
    }
}
