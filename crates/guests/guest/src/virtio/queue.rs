//! A split ring wired to its transport: how the driver tells the device
//! about new buffers and learns that the device finished some.
//!
//! Notification: after publishing new chains the driver writes the queue's
//! index to QueueNotify, unless the device set `VIRTQ_USED_F_NO_NOTIFY`.
//! Under Bulkhead (and QEMU) that register is an ioeventfd: the write wakes
//! the backend without an exit to the VMM's user space.
//!
//! Completion, chosen per device by `bulkhead.irq=`:
//! - **polling** (default): the driver sets `VIRTQ_AVAIL_F_NO_INTERRUPT` and
//!   spins on the used ring's index, which lives in guest memory: no exits,
//!   the lowest latency, one CPU busy;
//! - **interrupts**: the device's interrupt is routed to a vector on this
//!   CPU and the driver halts (the `Wait` system call) until that vector's
//!   count moves. It reads the count *before* it looks at the used ring, and
//!   halts only if the count is unchanged since, with interrupts off in the
//!   check (`Wait` does that), so an interrupt that lands between the look
//!   and the halt is never lost. It never reads InterruptStatus (vhost-user
//!   devices may not keep it): every wake-up is followed by a look at the
//!   used ring.
//!
//! Interrupts are routed edge-triggered. Bulkhead's are MSIs, one per
//! signal; QEMU's microvm holds a level-triggered line up until the driver
//! writes InterruptACK, but raises it again on every notification, which
//! KVM's I/O APIC turns into an edge each time. So the driver does not
//! acknowledge every interrupt (that MMIO exit to the VMM costs ~25 us per
//! request under QEMU on KVM-PVM); it writes InterruptACK only when a wait
//! has made no progress for 100 ms, so that a device whose line is stuck up
//! gets a fresh edge for its next completion.
//!
//! Every wait has a deadline on the TSC. A periodic local APIC timer wakes a
//! halted CPU (see `irq::wake_start`), and every 100 ms of waiting the
//! driver reads the device status: DEVICE_NEEDS_RESET ends the wait with an
//! error instead of a hang.
//!
//! What a deadline means depends on the queue. On a queue of requests
//! (blk, rng, net transmit) every chain the driver made available is owed
//! back: one that is not returned in time means the device failed, and the
//! driver gives up on it. On a receive queue (net receive) the device
//! returns a buffer only when a packet arrives, and no packet is no fault:
//! a peer that does not answer, or a packet lost on the way (a network
//! device may drop what it held when it restarts, as a link drops frames),
//! ends the wait with [`IoError::Timeout`] and leaves the device working.

use crate::arch::rdtsc;
use crate::{irq, time};

use super::mmio::Transport;
use super::ring::{Buf, RingError, SplitRing, Used};

/// How completions are noticed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Completion {
    Poll,
    /// Interrupts, counted on this vector.
    Irq(u8),
}

/// Why an I/O did not complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoError {
    /// The deadline passed.
    Timeout,
    /// The device set DEVICE_NEEDS_RESET.
    NeedsReset,
    /// The device broke the ring's rules.
    Ring(RingError),
    /// The request does not fit the queue or the driver's limits.
    TooBig,
    /// An earlier error left the device in an unknown state.
    Broken,
}

impl core::fmt::Display for IoError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            IoError::Timeout => write!(f, "the device did not answer before the deadline"),
            IoError::NeedsReset => write!(f, "the device set DEVICE_NEEDS_RESET"),
            IoError::Ring(e) => write!(f, "{e}"),
            IoError::TooBig => write!(f, "the request does not fit in the queue"),
            IoError::Broken => {
                write!(f, "an earlier request on this device failed; the guest gave up on it")
            }
        }
    }
}

/// One virtqueue of a device.
pub struct Queue {
    ring: SplitRing,
    transport: Transport,
    index: u16,
    completion: Completion,
    /// QueueNotify writes made.
    pub notifies: u64,
    /// Set when the device timed out, asked for a reset or broke the ring's
    /// rules: the queue takes no more requests (the device gets FAILED).
    broken: bool,
    /// A receive queue: the device owes nothing by a deadline (see the
    /// module docs).
    receive: bool,
}

impl Queue {
    pub fn new(
        mut ring: SplitRing,
        transport: Transport,
        index: u16,
        completion: Completion,
    ) -> Queue {
        ring.set_interrupts(matches!(completion, Completion::Irq(_)));
        Queue { ring, transport, index, completion, notifies: 0, broken: false, receive: false }
    }

    /// Makes this a receive queue: a wait that ends with nothing received
    /// is not a failure of the device.
    pub fn receiving(mut self) -> Queue {
        self.receive = true;
        self
    }

    pub fn size(&self) -> u16 {
        self.ring.size()
    }

    /// With interrupt completion, whether the device should interrupt for
    /// this queue: a queue the driver reaps lazily (transmit) needs an
    /// interrupt only while the driver waits on it. [`Queue::wait`] looks
    /// at the used ring before it halts, so a completion that came while
    /// interrupts were off is not missed.
    pub fn set_interrupts(&mut self, on: bool) {
        if let Completion::Irq(_) = self.completion {
            self.ring.set_interrupts(on);
        }
    }

    pub fn free_descriptors(&self) -> u16 {
        self.ring.free_descriptors()
    }

    pub fn outstanding(&self) -> u16 {
        self.ring.outstanding()
    }

    /// Queues a chain (not yet visible to the device: see [`Queue::kick`]).
    pub fn push(&mut self, bufs: &[Buf]) -> Result<u16, IoError> {
        if self.broken {
            return Err(IoError::Broken);
        }
        self.ring.push(bufs).ok_or(IoError::TooBig)
    }

    /// Interrupts taken on this queue's vector so far (0 when polling; a
    /// vector is shared by all queues of a device).
    pub fn interrupts(&self) -> u64 {
        match self.completion {
            Completion::Poll => 0,
            Completion::Irq(vector) => irq::count(vector),
        }
    }

    /// `Err(Broken)` once the driver gave up on the device.
    pub fn check(&self) -> Result<(), IoError> {
        if self.broken {
            return Err(IoError::Broken);
        }
        Ok(())
    }

    /// Gives up on the device after `e`; returns `e`.
    fn give_up(&mut self, e: IoError) -> IoError {
        if !self.broken {
            self.broken = true;
            self.transport.fail();
        }
        e
    }

    /// Publishes the chains pushed so far and notifies the device if it
    /// wants to be.
    pub fn kick(&mut self) {
        if self.ring.publish() {
            self.transport.notify(self.index);
            self.notifies += 1;
        }
    }

    /// The next finished chain, if any.
    pub fn pop(&mut self) -> Option<Result<Used, IoError>> {
        if self.broken {
            return Some(Err(IoError::Broken));
        }
        match self.ring.pop()? {
            Ok(used) => Some(Ok(used)),
            Err(e) => Some(Err(self.give_up(IoError::Ring(e)))),
        }
    }

    /// Waits until the device has returned a chain or `deadline` (TSC)
    /// passes; see the module docs for what a missed deadline means.
    pub fn wait(&mut self, deadline: u64) -> Result<(), IoError> {
        if self.broken {
            return Err(IoError::Broken);
        }
        let check_every = time::deadline_ms(100) - rdtsc();
        loop {
            let until = rdtsc().saturating_add(check_every).min(deadline);
            match self.completion {
                Completion::Poll => {
                    while !self.ring.has_used() && !time::passed(until) {
                        core::hint::spin_loop();
                    }
                }
                Completion::Irq(vector) => loop {
                    let seen = irq::count(vector);
                    if self.ring.has_used() || time::passed(until) {
                        break;
                    }
                    irq::wait_for(vector, seen, until);
                },
            }
            if self.ring.has_used() {
                return Ok(());
            }
            if let Completion::Irq(_) = self.completion {
                self.transport.ack_interrupts();
            }
            if self.transport.needs_reset() {
                return Err(self.give_up(IoError::NeedsReset));
            }
            if time::passed(deadline) {
                if self.receive {
                    return Err(IoError::Timeout);
                }
                return Err(self.give_up(IoError::Timeout));
            }
        }
    }
}
