//! The virtio entropy device (virtio 1.2, section 5.4): one request queue
//! of device-writable buffers, which the device fills with random bytes (it
//! may fill fewer than offered; the used length says how many).

use crate::bump::Bump;

use super::mmio::{InitError, Transport};
use super::queue::{Completion, IoError, Queue};
use super::ring::Buf;

/// The buffer offered per request.
pub const BUF_BYTES: u32 = 4096;

pub struct Rng {
    transport: Transport,
    queue: Queue,
    buf: u64,
    features: u64,
}

impl Rng {
    pub fn new(
        transport: Transport,
        completion: Completion,
        bump: &mut Bump,
    ) -> Result<Rng, InitError> {
        let features = transport.init(0)?;
        let ring = transport.setup_queue(0, 8, bump)?;
        let buf = bump.alloc(BUF_BYTES.into(), 4096).ok_or(InitError::NoMemory)?;
        transport.driver_ok();
        Ok(Rng { transport, queue: Queue::new(ring, transport, 0, completion), buf, features })
    }

    pub fn features(&self) -> u64 {
        self.features
    }

    pub fn queue_size(&self) -> u16 {
        self.queue.size()
    }

    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// Asks for up to `out.len()` bytes (at most [`BUF_BYTES`]) and copies
    /// what the device gave into `out`; returns how many.
    pub fn read(&mut self, out: &mut [u8], deadline: u64) -> Result<usize, IoError> {
        let want = out.len().min(BUF_BYTES as usize) as u32;
        if want == 0 {
            return Ok(0);
        }
        self.queue.push(&[Buf { addr: self.buf, len: want, writable: true }])?;
        self.queue.kick();
        loop {
            match self.queue.pop() {
                Some(used) => {
                    let n = used?.len as usize; // capped at `want` by the ring
                                                // SAFETY: the device returned the buffer (BUF_BYTES of
                                                // guest memory owned by this driver) and no request is
                                                // outstanding; n <= want <= BUF_BYTES.
                    let got = unsafe { core::slice::from_raw_parts(self.buf as *const u8, n) };
                    out[..n].copy_from_slice(got);
                    return Ok(n);
                }
                None => self.queue.wait(deadline)?,
            }
        }
    }
}
