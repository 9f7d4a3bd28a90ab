//! What a device's queue handler sees of its virtqueue: [`QueueContext`].
//!
//! A handler takes chains with [`QueueContext::pop`] and returns them with
//! [`QueueContext::complete`], in the order it took them. The context keeps the inflight region
//! up to date on both steps, hands out the chains a previous backend left in flight before any
//! new one, and remembers whether the guest needs an interrupt. Request-style devices (blk, rng)
//! implement [`RequestHandler`] and get the loop for free through [`Requests`].
//!
//! **Consistency check.** Each queue keeps a [`Ledger`]: the heads of the chains taken and not
//! yet returned, oldest first. Returning a chain that is not the oldest one taken means the
//! backend's own state is wrong (a bug, or memory corruption): nothing is published and the
//! worker panics — a compartment then aborts (its panic hook), and a successor resubmits the
//! request from the inflight region, which was not touched. The ledger holds only what this
//! process took; nothing a guest writes can make the check fail.

use std::collections::VecDeque;
use std::os::fd::RawFd;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

use super::chain::{self, Chain, Table};
use super::inflight::InflightQueue;
use crate::fault::{self, Returning};
use crate::limit::Gate;
use crate::DeviceKind;

/// How far a call to [`QueueHandler::process`] got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// It took every chain it could; the worker checks for new ones before sleeping.
    Drained,
    /// It stopped with chains left (net RX with no packet to give): sleep until an event.
    Paused,
    /// It needs more chains than are available (net RX: a packet spanning several buffers):
    /// sleep until the driver adds one — the worker asks for a kick on the very next.
    Starved,
}

/// A device's logic for one virtqueue. It runs on the queue's worker thread.
pub trait QueueHandler: Send {
    /// Serves the queue: called after a kick, after [`QueueHandler::event_fd`] became readable,
    /// and once when the queue starts (to resubmit what was in flight).
    fn process(&mut self, queue: &mut QueueContext<'_>) -> Progress;

    /// A file descriptor the worker also waits on for readability (net RX: the tap).
    fn event_fd(&self) -> Option<RawFd> {
        None
    }

    /// How long the worker polls for its next event before it sleeps. A
    /// short poll spares a thread wake-up between requests that follow each
    /// other closely; it costs CPU time, which a host with few cores may
    /// need for the guest and the other queues.
    fn poll_before_sleep(&self) -> std::time::Duration {
        std::time::Duration::from_micros(50)
    }

    /// Whether to wait on [`QueueHandler::event_fd`] now (net RX stops while it has nowhere to
    /// put a packet, and starts again when the guest adds buffers).
    fn wants_event(&self) -> bool {
        true
    }

    /// A rate limiter's timerfd the worker also waits on: the handler stopped taking requests
    /// until it fires ([`crate::limit::gate`]).
    fn timer_fd(&self) -> Option<RawFd> {
        None
    }
}

/// A device that turns each chain into one completed request.
pub trait RequestHandler: Send {
    /// Serves one chain and returns how many bytes it wrote into it.
    fn handle(&mut self, mem: &GuestMemoryMmap, chain: &Chain) -> u32;

    /// The bytes a rate limiter counts for this chain (asked only while one limits bandwidth).
    fn cost(&self, _mem: &GuestMemoryMmap, _chain: &Chain) -> u64 {
        0
    }
}

/// Runs a [`RequestHandler`] over every available chain, in order.
pub struct Requests<H>(pub H);

impl<H: RequestHandler> QueueHandler for Requests<H> {
    fn process(&mut self, queue: &mut QueueContext<'_>) -> Progress {
        while let Some(chain) = queue.pop() {
            let len = self.0.handle(queue.memory(), &chain);
            queue.complete(chain.head, len);
        }
        Progress::Drained
    }
}

/// A [`RequestHandler`] behind a rate limiter: a chain the limiter does not admit yet is held,
/// and no other is taken, until the gate's timer fires.
pub struct Limited<H> {
    handler: H,
    gate: Gate,
    held: Option<Chain>,
}

impl<H: RequestHandler> Limited<H> {
    /// `handler`, limited by `gate`.
    pub fn new(handler: H, gate: Gate) -> Limited<H> {
        Limited { handler, gate, held: None }
    }
}

impl<H: RequestHandler> QueueHandler for Limited<H> {
    fn process(&mut self, queue: &mut QueueContext<'_>) -> Progress {
        self.gate.refresh();
        loop {
            let Some(chain) = self.held.take().or_else(|| queue.pop()) else {
                return Progress::Drained;
            };
            let mem = queue.memory();
            let handler = &self.handler;
            if !self.gate.admit(|| handler.cost(mem, &chain)) {
                self.held = Some(chain);
                return Progress::Paused;
            }
            let len = self.handler.handle(mem, &chain);
            queue.complete(chain.head, len);
        }
    }

    fn timer_fd(&self) -> Option<RawFd> {
        Some(self.gate.timer_fd())
    }
}

/// Which queue of which device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueId {
    /// The device.
    pub kind: DeviceKind,
    /// The queue's index.
    pub index: usize,
}

/// A queue's record of its requests, kept across [`QueueHandler::process`] calls.
#[derive(Debug)]
pub struct Ledger {
    id: QueueId,
    /// Chains a previous backend left in flight, to hand out before any new one.
    resubmit: VecDeque<u16>,
    /// Heads of the chains taken and not yet returned, oldest first.
    taken: VecDeque<u16>,
}

impl Ledger {
    /// An empty ledger for queue `id`.
    pub fn new(id: QueueId) -> Ledger {
        Ledger { id, resubmit: VecDeque::new(), taken: VecDeque::new() }
    }

    /// Starts over (the queue starts): `resubmit` are the chains left in flight, oldest first.
    pub fn restart(&mut self, resubmit: Vec<u16>) {
        self.resubmit = resubmit.into();
        self.taken.clear();
    }

    fn took(&mut self, head: u16) {
        let mut recorded = head;
        fault::taken(self.id, &mut recorded);
        self.taken.push_back(recorded);
    }

    /// The consistency check: `head` must be the oldest chain taken.
    fn returns(&mut self, head: u16) {
        match self.taken.pop_front() {
            Some(oldest) if oldest == head => {}
            oldest => panic!(
                "the backend's state is inconsistent: {} queue {} is returning chain {head}, \
                 but the oldest chain it took is {oldest:?}; nothing was published",
                self.id.kind, self.id.index
            ),
        }
    }
}

/// One virtqueue, as a handler may use it during one [`QueueHandler::process`] call.
pub struct QueueContext<'a> {
    queue: &'a mut Queue,
    mem: &'a GuestMemoryMmap,
    table: Table,
    inflight: Option<&'a mut InflightQueue>,
    ledger: &'a mut Ledger,
    popped: usize,
    used: bool,
}

impl<'a> QueueContext<'a> {
    /// A context over `queue`; `indirect` says whether indirect descriptors were negotiated.
    pub fn new(
        queue: &'a mut Queue,
        mem: &'a GuestMemoryMmap,
        indirect: bool,
        inflight: Option<&'a mut InflightQueue>,
        ledger: &'a mut Ledger,
    ) -> QueueContext<'a> {
        let table = Table {
            addr: vm_memory::GuestAddress(queue.desc_table()),
            size: queue.size(),
            indirect,
        };
        QueueContext { queue, mem, table, inflight, ledger, popped: 0, used: false }
    }

    /// Guest memory.
    pub fn memory(&self) -> &'a GuestMemoryMmap {
        self.mem
    }

    /// The next chain: first those a previous backend left in flight, then the available ring's.
    pub fn pop(&mut self) -> Option<Chain> {
        let head = match self.ledger.resubmit.pop_front() {
            Some(head) => head,
            None => {
                let head = self.queue.pop_descriptor_chain(self.mem)?.head_index();
                if let Some(inflight) = self.inflight.as_deref_mut() {
                    inflight.begin(head);
                }
                head
            }
        };
        self.ledger.took(head);
        self.popped += 1;
        Some(chain::walk(self.mem, self.table, head))
    }

    /// Puts the last chain taken from the available ring back (net RX, when a packet does not
    /// fit). Only for queues without an inflight region.
    pub fn unpop(&mut self) {
        debug_assert!(self.inflight.is_none());
        self.queue.go_to_previous_position();
        self.ledger.taken.pop_back();
        self.popped = self.popped.saturating_sub(1);
    }

    /// Returns the chain at `head` to the driver with `len` bytes written.
    ///
    /// # Panics
    ///
    /// If `head` is not the oldest chain taken and not returned (the consistency check).
    pub fn complete(&mut self, head: u16, len: u32) {
        self.ledger.returns(head);
        if let Some(inflight) = self.inflight.as_deref_mut() {
            inflight.before_used(head);
        }
        fault::returning(self.ledger.id, head, Returning::BeforeUsed);
        if let Err(e) = self.queue.add_used(self.mem, head, len) {
            log::warn!("cannot return descriptor {head} to the used ring: {e}");
            return;
        }
        fault::returning(self.ledger.id, head, Returning::AfterUsed);
        let used_idx = self.queue.next_used();
        if let Some(inflight) = self.inflight.as_deref_mut() {
            inflight.after_used(head, used_idx);
        }
        self.used = true;
    }

    /// Chains taken during this context's life.
    pub(crate) fn popped(&self) -> usize {
        self.popped
    }

    /// Whether any chain was returned during this context's life.
    pub(crate) fn used(&self) -> bool {
        self.used
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! Runs a handler over a `MockSplitQueue`, for the devices' unit tests.
    use super::*;
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    /// An empty ledger for a test queue.
    pub fn ledger() -> Ledger {
        Ledger::new(QueueId { kind: crate::DeviceKind::Blk, index: 0 })
    }

    /// 16 MiB of guest memory; queues at 0, buffers from 1 MiB.
    pub fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap()
    }

    /// A descriptor (`next` is filled in by the mock).
    pub fn desc(addr: u64, len: u32, writable: bool) -> RawDescriptor {
        let flags = if writable { 2 } else { 0 };
        RawDescriptor::from(Descriptor::new(addr, len, flags, 0))
    }

    /// Puts one chain of `descs` in a fresh queue of 16, runs `handler` over it, and returns
    /// the used length (None if nothing was returned).
    pub fn run_one<H: QueueHandler>(
        mem: &GuestMemoryMmap,
        handler: &mut H,
        descs: &[RawDescriptor],
    ) -> Option<u32> {
        let mock = MockSplitQueue::new(mem, 16);
        mock.build_desc_chain(descs).unwrap();
        let mut queue: Queue = mock.create_queue().unwrap();
        let mut ledger = ledger();
        let mut ctx = QueueContext::new(&mut queue, mem, true, None, &mut ledger);
        handler.process(&mut ctx);
        (mock.used().idx().load() == 1).then(|| mock.used().ring().ref_at(0).unwrap().load().len())
    }
}
