//! The virtio-blk driver (virtio 1.2, section 5.2): one request queue.
//!
//! A request is a chain of a 16-byte header the device reads (`type: u32`
//! — IN 0, OUT 1, FLUSH 4 —, `reserved: u32`, `sector: u64` in 512-byte
//! units), the data (read by the device for OUT, written for IN; absent for
//! FLUSH), split into pieces of at most `size_max` bytes if the device
//! says so, and one status byte the device writes (OK 0, IOERR 1, UNSUPP 2).
//!
//! The driver keeps up to [`MAX_SLOTS`] requests in flight; each slot owns
//! its header, status byte and data buffer in guest memory, so a request
//! needs no allocation. Features used: VERSION_1, RO, FLUSH, BLK_SIZE,
//! SIZE_MAX and SEG_MAX (limits the driver honours).
//!
//! A configuration change (virtio 1.2, 2.5.1: the disk's capacity changed, say because its
//! image was swapped for a larger one) sets bit 1 of InterruptStatus and raises the device's
//! interrupt. [`Blk::config_change`] looks for it — the bit, or a ConfigGeneration other than
//! the one it last read, in case the bit was acknowledged by someone else —, acknowledges it
//! and reads the capacity again, both halves under one generation (read the generation, the
//! field, the generation again, and retry while it moved).

use crate::bump::Bump;

use super::blk_spec::*;
use super::mmio::{InitError, Transport};
use super::queue::{Completion, IoError, Queue};
use super::ring::{Buf, MAX_QUEUE};

/// InterruptStatus's configuration-change bit.
const INT_CONFIG: u32 = 2;

/// The capacity in bytes, and the ConfigGeneration it was read under: the generation before
/// and after the two halves must agree (virtio 1.2, 4.2.2.2), or it is read again.
fn read_capacity(transport: Transport) -> (u64, u32) {
    loop {
        let generation = transport.config_generation();
        let low = transport.config_u32(0);
        let high = transport.config_u32(4);
        if transport.config_generation() == generation {
            let sectors = (u64::from(high) << 32) | u64::from(low);
            return (sectors.saturating_mul(SECTOR), generation);
        }
    }
}

/// The most requests in flight.
pub const MAX_SLOTS: usize = 64;
/// The most data descriptors in one request.
const MAX_SEGS: usize = 64;

/// What a request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
    Flush,
}

/// What the device told the driver about the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Info {
    pub features: u64,
    pub capacity: u64,
    pub read_only: bool,
    pub flush: bool,
    pub block_size: u32,
    /// The most bytes in one data descriptor, and data descriptors per request.
    pub seg_bytes: u32,
    pub max_segs: u32,
    pub queue_size: u16,
}

#[derive(Clone, Copy)]
struct Slot {
    /// Header at `meta`, status byte at `meta + 16`.
    meta: u64,
    data: u64,
    cap: u32,
    busy: bool,
    started: u64,
}

const IDLE: Slot = Slot { meta: 0, data: 0, cap: 0, busy: false, started: 0 };

/// A finished request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Done {
    pub slot: usize,
    pub status: u8,
    /// The TSC when it was submitted.
    pub started: u64,
}

pub struct Blk {
    transport: Transport,
    queue: Queue,
    info: Info,
    slots: [Slot; MAX_SLOTS],
    head_slot: [u8; MAX_QUEUE],
    /// The ConfigGeneration the capacity was last read under.
    generation: u32,
}

impl Blk {
    pub fn new(
        transport: Transport,
        completion: Completion,
        bump: &mut Bump,
    ) -> Result<Blk, InitError> {
        let features = transport.init(F_RO | F_FLUSH | F_BLK_SIZE | F_SIZE_MAX | F_SEG_MAX)?;
        let (capacity, generation) = read_capacity(transport);
        let size_max = if features & F_SIZE_MAX != 0 { transport.config_u32(8) } else { 0 };
        let seg_max = if features & F_SEG_MAX != 0 { transport.config_u32(12) } else { 0 };
        let block_size = if features & F_BLK_SIZE != 0 { transport.config_u32(20) } else { 512 };
        let ring = transport.setup_queue(0, MAX_QUEUE as u16, bump)?;
        let queue = Queue::new(ring, transport, 0, completion);
        let meta = bump.alloc(32 * MAX_SLOTS as u64, 4096).ok_or(InitError::NoMemory)?;
        let mut slots = [IDLE; MAX_SLOTS];
        for (i, s) in slots.iter_mut().enumerate() {
            s.meta = meta + 32 * i as u64;
        }
        let info = Info {
            features,
            capacity,
            read_only: features & F_RO != 0,
            flush: features & F_FLUSH != 0,
            block_size: if block_size.is_power_of_two() && block_size >= 512 {
                block_size
            } else {
                512
            },
            seg_bytes: if size_max >= 512 { size_max & !511 } else { !511 },
            max_segs: if seg_max == 0 { MAX_SEGS as u32 } else { seg_max.min(MAX_SEGS as u32) },
            queue_size: queue.size(),
        };
        transport.driver_ok();
        Ok(Blk { transport, queue, info, slots, head_slot: [0; MAX_QUEUE], generation })
    }

    /// If the device changed its configuration since the driver last looked (see the module
    /// docs): acknowledges it, reads the capacity again and returns it (bytes).
    pub fn config_change(&mut self) -> Option<u64> {
        let raised = self.transport.interrupt_status() & INT_CONFIG != 0;
        if !raised && self.transport.config_generation() == self.generation {
            return None;
        }
        if raised {
            self.transport.ack(INT_CONFIG);
        }
        let (capacity, generation) = read_capacity(self.transport);
        self.generation = generation;
        self.info.capacity = capacity;
        Some(capacity)
    }

    pub fn info(&self) -> &Info {
        &self.info
    }

    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// Descriptors one request of `bytes` needs.
    fn descriptors(&self, bytes: u32) -> u32 {
        2 + bytes.div_ceil(self.info.seg_bytes)
    }

    /// Makes slots `0..count` hold data buffers of at least `bytes`,
    /// checking that `count` such requests fit the device's limits.
    pub fn buffers(&mut self, count: usize, bytes: u32, bump: &mut Bump) -> Result<(), InitError> {
        if count > MAX_SLOTS || bytes.div_ceil(self.info.seg_bytes) > self.info.max_segs {
            return Err(InitError::Unsupported(
                "requests this large exceed the device's segment limits",
            ));
        }
        if count as u32 * self.descriptors(bytes) > u32::from(self.info.queue_size) {
            return Err(InitError::Unsupported(
                "this many requests in flight do not fit in the queue",
            ));
        }
        for slot in self.slots[..count].iter_mut().filter(|s| s.cap < bytes) {
            slot.data = bump.alloc(bytes.into(), 4096).ok_or(InitError::NoMemory)?;
            slot.cap = bytes;
        }
        Ok(())
    }

    /// Slot `slot`'s data buffer; empty while its request is in flight.
    pub fn data(&mut self, slot: usize) -> &mut [u8] {
        match self.slots.get(slot) {
            Some(s) if !s.busy && s.cap > 0 => {
                // SAFETY: the buffer was allocated for this slot alone (bump
                // allocator, identity-mapped RAM) and the device touches it
                // only while the slot is busy, which it is not; the borrow
                // of `self` keeps a new request from starting meanwhile.
                unsafe { core::slice::from_raw_parts_mut(s.data as *mut u8, s.cap as usize) }
            }
            _ => &mut [],
        }
    }

    /// Queues a request on `slot` for `len` bytes at byte `offset` (both
    /// multiples of 512; ignored for a flush). Call [`Blk::kick`] after.
    pub fn submit(
        &mut self,
        slot: usize,
        op: Op,
        offset: u64,
        len: u32,
        now: u64,
    ) -> Result<(), IoError> {
        self.queue.check()?;
        let s = *self.slots.get(slot).ok_or(IoError::TooBig)?;
        if s.busy || (op != Op::Flush && (len > s.cap || len == 0)) {
            return Err(IoError::TooBig);
        }
        let (kind, data_len) = match op {
            Op::Read => (T_IN, len),
            Op::Write => (T_OUT, len),
            Op::Flush => (T_FLUSH, 0),
        };
        let sector = if op == Op::Flush { 0 } else { offset / SECTOR };
        // SAFETY: `meta` is this slot's 32 bytes of guest memory (allocated
        // in `new`); the device reads the header and writes the status only
        // while the slot is busy, which it is not yet.
        unsafe {
            core::ptr::write_volatile(s.meta as *mut u32, kind);
            core::ptr::write_volatile((s.meta + 4) as *mut u32, 0);
            core::ptr::write_volatile((s.meta + 8) as *mut u64, sector);
            core::ptr::write_volatile((s.meta + 16) as *mut u8, 0xff);
        }
        let mut bufs = [Buf { addr: 0, len: 0, writable: false }; MAX_SEGS + 2];
        bufs[0] = Buf { addr: s.meta, len: 16, writable: false };
        let mut n = 1;
        let mut done = 0u32;
        while done < data_len {
            let piece = (data_len - done).min(self.info.seg_bytes);
            if n > MAX_SEGS {
                return Err(IoError::TooBig);
            }
            bufs[n] = Buf { addr: s.data + u64::from(done), len: piece, writable: op == Op::Read };
            n += 1;
            done += piece;
        }
        bufs[n] = Buf { addr: s.meta + 16, len: 1, writable: true };
        let head = self.queue.push(&bufs[..=n])?;
        self.head_slot[usize::from(head)] = slot as u8;
        self.slots[slot].busy = true;
        self.slots[slot].started = now;
        Ok(())
    }

    /// Makes the submitted requests visible to the device and notifies it.
    pub fn kick(&mut self) {
        self.queue.kick();
    }

    /// The next finished request, if any.
    pub fn poll(&mut self) -> Option<Result<Done, IoError>> {
        let used = match self.queue.pop()? {
            Ok(u) => u,
            Err(e) => return Some(Err(e)),
        };
        let slot = usize::from(self.head_slot[usize::from(used.id)]);
        let s = &mut self.slots[slot % MAX_SLOTS];
        s.busy = false;
        // SAFETY: the status byte is in this slot's metadata (see `submit`);
        // the device has finished with the chain.
        let status = unsafe { core::ptr::read_volatile((s.meta + 16) as *const u8) };
        Some(Ok(Done { slot, status, started: s.started }))
    }

    /// Waits for a request to finish (see [`Queue::wait`]).
    pub fn wait(&mut self, deadline: u64) -> Result<(), IoError> {
        self.queue.wait(deadline)
    }

    /// QueueNotify writes and interrupts so far.
    pub fn counters(&self) -> (u64, u64) {
        (self.queue.notifies, self.queue.interrupts())
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> u16 {
        self.queue.outstanding()
    }

    /// Runs one request on `slot` to completion; returns its status.
    pub fn run(
        &mut self,
        slot: usize,
        op: Op,
        offset: u64,
        len: u32,
        deadline: u64,
    ) -> Result<u8, IoError> {
        self.submit(slot, op, offset, len, 0)?;
        self.kick();
        loop {
            match self.poll() {
                Some(Ok(done)) if done.slot == slot => return Ok(done.status),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => self.wait(deadline)?,
            }
        }
    }
}
