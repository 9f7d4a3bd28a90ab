//! One virtqueue's state and its worker thread.
//!
//! The message thread configures a [`Vring`] (size, addresses, base, call and kick eventfds) and
//! starts it when the kick eventfd arrives. The worker then waits in epoll on the kick eventfd,
//! its own control eventfd and, if the handler has one, a device fd (the tap for net RX); on each
//! wake-up it takes the state's lock and lets the device's [`QueueHandler`] serve the queue, with
//! notifications from the guest off while it works, and signals the call eventfd if the guest
//! wants an interrupt — and once unconditionally after the first pass of a queue that starts
//! (a predecessor may have died between a used entry and its interrupt). `GET_VRING_BASE` stops
//! the worker (the request in progress finishes first) and reports where the available ring
//! stands.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::inflight::{InflightQueue, InflightRegion};
use super::queue::{Ledger, Progress, QueueContext, QueueHandler, QueueId};
use crate::limit::gate::clear_timer;
use crate::DeviceKind;

/// Most passes over a queue in one wake-up before the worker checks whether it should stop.
const MAX_PASSES: usize = 64;

/// The state the message thread and the worker share.
pub struct VringState {
    /// The split virtqueue.
    pub queue: Queue,
    /// Signals the guest (an irqfd, in Bulkhead's core).
    pub call: Option<EventFd>,
    /// `SET_VRING_ENABLE` state.
    pub enabled: bool,
    /// Indirect descriptors negotiated.
    pub indirect: bool,
    inflight: Option<InflightQueue>,
    ledger: Ledger,
    /// Interrupt the guest after the first pass even if nothing was returned: the queue just
    /// started, and a backend before this one may have died between publishing a used entry
    /// and signalling it. The driver would wait for that interrupt forever (Linux does, with
    /// one request in flight); a spurious one costs it a look at the used ring.
    signal_on_start: bool,
    /// The device's logic for this queue while it runs (the worker's, and a peer's: see
    /// [`Vring::start`]).
    handler: Option<Box<dyn QueueHandler>>,
    /// Wakes this queue's worker (work left after a pass that hit the limit).
    control: Option<EventFd>,
}

/// One virtqueue.
pub struct Vring {
    index: usize,
    state: Arc<Mutex<VringState>>,
    kick: Option<EventFd>,
    worker: Option<Worker>,
}

/// Why a queue could not start.
#[derive(Debug, thiserror::Error)]
pub enum VringError {
    /// Its addresses are not inside guest memory (or no memory table was set).
    #[error("queue {0}'s rings are not inside guest memory")]
    InvalidRings(usize),
    /// No kick eventfd was given.
    #[error("queue {0} has no kick eventfd")]
    NoKick(usize),
    /// The device refused to make a handler.
    #[error("queue {0}: {1}")]
    Device(usize, String),
    /// The worker could not be set up.
    #[error("cannot start the worker of queue {0}")]
    Worker(usize, #[source] std::io::Error),
}

impl Vring {
    /// Queue `index` of a `kind` device, at most `max_size` descriptors.
    pub fn new(kind: DeviceKind, index: usize, max_size: u16) -> Vring {
        let queue = Queue::new(max_size).unwrap_or_else(|_| {
            // max_size is checked by the caller (a power of two up to 32768).
            Queue::new(256).expect("256 is a valid queue size")
        });
        let state = VringState {
            queue,
            call: None,
            enabled: false,
            indirect: false,
            inflight: None,
            ledger: Ledger::new(QueueId { kind, index }),
            signal_on_start: false,
            handler: None,
            control: None,
        };
        Vring { index, state: Arc::new(Mutex::new(state)), kick: None, worker: None }
    }

    /// The shared state, locked.
    pub fn lock(&self) -> MutexGuard<'_, VringState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the kick eventfd (the ring is then started by [`Vring::start`]).
    pub fn set_kick(&mut self, kick: EventFd) {
        self.stop();
        self.kick = Some(kick);
    }

    /// Starts the worker: checks the rings, recovers the inflight state, and spawns the thread.
    ///
    /// `peer` is another queue of the device that this queue's worker serves too, right after
    /// each pass over its own queue, when no other thread is serving it at that moment (net:
    /// the transmit worker looks for the receive queue's packets, so that a reply the host
    /// produced while the request was sent reaches the guest without a second thread's
    /// wake-up).
    pub fn start(
        &mut self,
        mem: &GuestMemoryAtomic<GuestMemoryMmap>,
        inflight: Option<Arc<InflightRegion>>,
        handler: Box<dyn QueueHandler>,
        name: String,
        peer: Option<Arc<Mutex<VringState>>>,
    ) -> Result<(), VringError> {
        self.stop();
        let index = self.index;
        let kick = self.kick.as_ref().ok_or(VringError::NoKick(index))?;
        let kick = kick.try_clone().map_err(|e| VringError::Worker(index, e))?;
        self.prepare(mem, inflight)?;
        let worker = Worker::spawn(name, self.state.clone(), kick, mem.clone(), handler, peer)
            .map_err(|e| VringError::Worker(index, e))?;
        self.worker = Some(worker);
        Ok(())
    }

    /// The shared state, for another queue's worker to serve this queue (see [`Vring::start`]).
    pub fn shared_state(&self) -> Arc<Mutex<VringState>> {
        self.state.clone()
    }

    /// Checks the rings against guest memory, recovers the inflight state and readies the
    /// queue (what [`Vring::start`] does before it spawns the worker).
    pub fn prepare(
        &mut self,
        mem: &GuestMemoryAtomic<GuestMemoryMmap>,
        inflight: Option<Arc<InflightRegion>>,
    ) -> Result<(), VringError> {
        let index = self.index;
        let m = mem.memory();
        let mut st = self.lock();
        st.queue.set_ready(true);
        let used_idx = match st.queue.used_idx(&*m, Ordering::Acquire) {
            Ok(idx) if st.queue.is_valid(&*m) => idx.0,
            _ => {
                st.queue.set_ready(false);
                return Err(VringError::InvalidRings(index));
            }
        };
        st.queue.set_next_used(used_idx);
        let base = st.queue.next_avail();
        let size = st.queue.size();
        st.inflight = inflight.and_then(|r| InflightQueue::new(r, index, size));
        let resubmit = match st.inflight.as_mut() {
            Some(q) => q.recover(used_idx),
            None => Vec::new(),
        };
        if st.inflight.is_some() {
            // In-order processing: what is in flight directly follows the used ring's idx.
            st.queue.set_next_avail(used_idx.wrapping_add(resubmit.len() as u16));
            if !resubmit.is_empty() {
                log::info!("queue {index}: resubmitting {} requests", resubmit.len());
            }
        }
        log::debug!(
            "queue {index}: used idx {used_idx}, base {base} from the frontend, next available {}",
            st.queue.next_avail()
        );
        st.signal_on_start = true;
        st.ledger.restart(resubmit);
        Ok(())
    }

    /// Wakes the worker (after `SET_VRING_ENABLE`).
    pub fn wake(&self) {
        if let Some(w) = &self.worker {
            let _ = w.control.write(1);
        }
    }

    /// Stops the worker, if it runs, after the request in progress; no thread serves the
    /// queue afterwards (a peer's worker neither: the handler is gone).
    pub fn stop(&mut self) {
        if let Some(w) = self.worker.take() {
            w.stop();
        }
        let mut st = self.lock();
        st.handler = None;
        st.control = None;
    }

    /// Forgets everything but the index: the queue's settings, eventfds and inflight state.
    pub fn reset(&mut self) {
        self.stop();
        self.kick = None;
        let mut st = self.lock();
        st.queue.reset();
        st.call = None;
        st.enabled = false;
        st.inflight = None;
        st.ledger.restart(Vec::new());
        st.signal_on_start = false;
    }
}

impl Drop for Vring {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A queue's worker thread.
struct Worker {
    thread: JoinHandle<()>,
    control: EventFd,
    stop: Arc<AtomicBool>,
}

/// A worker's event-loop tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Token {
    /// The guest kicked the queue.
    Kick = 1,
    /// The worker's own eventfd: stop, or come back for work left.
    Control = 2,
    /// The device's fd (net's tap) has something.
    Device = 3,
    /// The rate limiter's timer fired: the queue may go on.
    Timer = 4,
}

impl Token {
    fn raw(self) -> u64 {
        self as u64
    }

    fn from_raw(raw: u64) -> Option<Token> {
        [Token::Kick, Token::Control, Token::Device, Token::Timer]
            .into_iter()
            .find(|t| t.raw() == raw)
    }
}

impl Worker {
    fn spawn(
        name: String,
        state: Arc<Mutex<VringState>>,
        kick: EventFd,
        mem: GuestMemoryAtomic<GuestMemoryMmap>,
        handler: Box<dyn QueueHandler>,
        peer: Option<Arc<Mutex<VringState>>>,
    ) -> std::io::Result<Worker> {
        let control = EventFd::new(EFD_NONBLOCK)?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut run = WorkerLoop {
            state,
            kick,
            control: control.try_clone()?,
            stop: stop.clone(),
            mem,
            device_fd: handler.event_fd(),
            timer_fd: handler.timer_fd(),
            poll: handler.poll_before_sleep(),
            peer,
            epoll: Epoll::new()?,
            watching_device: false,
        };
        run.register()?;
        {
            let mut st = run.state.lock().unwrap_or_else(|p| p.into_inner());
            st.handler = Some(handler);
            st.control = Some(control.try_clone()?);
        }
        let thread = std::thread::Builder::new().name(name.clone()).spawn(move || {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run.run()));
            match result {
                Ok(Ok(())) => {}
                Ok(Err(e)) => log::error!("{name}: worker stopped: {e}"),
                Err(_) => log::error!("{name}: worker panicked; the queue is stopped"),
            }
        })?;
        Ok(Worker { thread, control, stop })
    }

    fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.control.write(1);
        let _ = self.thread.join();
    }
}

struct WorkerLoop {
    state: Arc<Mutex<VringState>>,
    kick: EventFd,
    control: EventFd,
    stop: Arc<AtomicBool>,
    mem: GuestMemoryAtomic<GuestMemoryMmap>,
    /// The handler's [`QueueHandler::event_fd`].
    device_fd: Option<RawFd>,
    /// The handler's [`QueueHandler::timer_fd`].
    timer_fd: Option<RawFd>,
    /// The handler's [`QueueHandler::poll_before_sleep`].
    poll: std::time::Duration,
    peer: Option<Arc<Mutex<VringState>>>,
    epoll: Epoll,
    watching_device: bool,
}

impl WorkerLoop {
    fn register(&mut self) -> std::io::Result<()> {
        let add = |fd: RawFd, token: Token| {
            let ev = EpollEvent::new(EventSet::IN, token.raw());
            self.epoll.ctl(ControlOperation::Add, fd, ev)
        };
        add(self.kick.as_raw_fd(), Token::Kick)?;
        add(self.control.as_raw_fd(), Token::Control)?;
        if let Some(fd) = self.device_fd {
            let ev = EpollEvent::new(EventSet::empty(), Token::Device.raw());
            self.epoll.ctl(ControlOperation::Add, fd, ev)?;
        }
        if let Some(fd) = self.timer_fd {
            add(fd, Token::Timer)?;
        }
        Ok(())
    }

    fn run(&mut self) -> std::io::Result<()> {
        let mut events = vec![EpollEvent::default(); 4];
        // A first pass: resubmit what was in flight, and catch kicks sent before we listened.
        self.serve();
        loop {
            self.arm_device()?;
            let n = match self.poll_then_wait(&mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            for ev in &events[..n] {
                match Token::from_raw(ev.data()) {
                    Some(Token::Kick) => drop(self.kick.read()),
                    Some(Token::Control) => drop(self.control.read()),
                    Some(Token::Timer) => self.timer_fd.into_iter().for_each(clear_timer),
                    Some(Token::Device) | None => {}
                }
            }
            if self.stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            self.serve();
        }
    }

    /// Polls for events for a short while before sleeping: a request that
    /// follows its predecessor closely (a ping-pong, a queue-depth-1 stream)
    /// then skips a thread wake-up.
    fn poll_then_wait(&mut self, events: &mut [EpollEvent]) -> std::io::Result<usize> {
        let window = self.poll;
        let start = std::time::Instant::now();
        while start.elapsed() < window {
            let n = self.epoll.wait(0, events)?;
            if n > 0 {
                return Ok(n);
            }
            std::hint::spin_loop();
        }
        self.epoll.wait(-1, events)
    }

    /// Watches the device fd only while the queue runs and the handler wants it (the fd is
    /// level-triggered: watching it while nothing reads it would spin).
    fn arm_device(&mut self) -> std::io::Result<()> {
        let Some(fd) = self.device_fd else { return Ok(()) };
        let want = {
            let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            st.enabled && st.queue.ready() && st.handler.as_ref().is_some_and(|h| h.wants_event())
        };
        if want != self.watching_device {
            let set = if want { EventSet::IN } else { EventSet::empty() };
            let ev = EpollEvent::new(set, Token::Device.raw());
            self.epoll.ctl(ControlOperation::Modify, fd, ev)?;
            self.watching_device = want;
        }
        Ok(())
    }

    /// Serves the queue, then the peer queue if it has one and no other thread is serving it.
    fn serve(&mut self) {
        let mem = self.mem.memory();
        {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            serve_with_own_handler(&mut st, &mem, &self.stop);
        }
        if let Some(peer) = &self.peer {
            if let Ok(mut st) = peer.try_lock() {
                serve_with_own_handler(&mut st, &mem, &self.stop);
            }
        }
    }
}

/// Serves a queue with its own handler (for its worker, or for a peer's worker on its behalf)
/// and asks its worker to come back when work is left. Does nothing once the queue stopped.
fn serve_with_own_handler(st: &mut VringState, mem: &GuestMemoryMmap, stop: &AtomicBool) {
    let Some(mut handler) = st.handler.take() else { return };
    let served = st.serve(mem, &mut *handler, stop);
    st.handler = Some(handler);
    if served.more_work {
        // Work is left and no kick will come for it: the worker comes back after other events.
        if let Some(control) = &st.control {
            let _ = control.write(1);
        }
    }
}

/// What one [`VringState::serve`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Served {
    /// The call eventfd was signalled.
    pub signalled: bool,
    /// It stopped at the pass limit with work left: serve again soon.
    pub more_work: bool,
}

impl VringState {
    /// One wake-up of the worker, without the thread: lets `handler` serve the queue until it is
    /// empty, paused, or at the pass limit (or `stop` is set), then signals the call eventfd if
    /// the guest wants an interrupt. (The worker calls this after each event; the fuzz targets
    /// call it directly.)
    pub fn serve(
        &mut self,
        mem: &GuestMemoryMmap,
        handler: &mut dyn QueueHandler,
        stop: &AtomicBool,
    ) -> Served {
        let st = self;
        if !st.enabled || !st.queue.ready() {
            return Served::default();
        }
        let mut used = false;
        let mut idle_passes = 0;
        let mut exhausted = true;
        for _ in 0..MAX_PASSES {
            let _ = st.queue.disable_notification(mem);
            let mut ctx = QueueContext::new(
                &mut st.queue,
                mem,
                st.indirect,
                st.inflight.as_mut(),
                &mut st.ledger,
            );
            let progress = handler.process(&mut ctx);
            used |= ctx.used();
            let popped = ctx.popped();
            let mut more = st.queue.enable_notification(mem).unwrap_or(false);
            if progress == Progress::Starved {
                more = ask_for_next_chain(&mut st.queue, mem);
            }
            // Two passes in a row that take nothing while the ring claims more: a broken
            // available index, not a race. Wait for the next kick rather than spin.
            idle_passes = if popped == 0 { idle_passes + 1 } else { 0 };
            let stop = stop.load(Ordering::SeqCst);
            if progress == Progress::Paused || !more || idle_passes == 2 || stop {
                exhausted = false;
                break;
            }
        }
        let started = std::mem::take(&mut st.signal_on_start);
        let mut signalled = false;
        if started || (used && st.queue.needs_notification(mem).unwrap_or(true)) {
            if let Some(call) = &st.call {
                let _ = call.write(1);
                signalled = true;
            }
        }
        Served { signalled, more_work: exhausted }
    }
}

/// After the handler took every available chain and put them back (it needs more): with
/// `VIRTIO_RING_F_EVENT_IDX`, `avail_event` = the driver's current index, so that the very next
/// chain it adds is kicked (the queue's own `avail_event` = our position was passed already).
/// Returns whether chains were added meanwhile.
fn ask_for_next_chain(queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
    use vm_memory::{Bytes, GuestAddress};
    let Ok(avail) = queue.avail_idx(mem, Ordering::Acquire) else { return false };
    if queue.event_idx_enabled() {
        let at = queue.used_ring() + 4 + 8 * u64::from(queue.size());
        let _ = mem.write_obj(avail.0.to_le(), GuestAddress(at));
        std::sync::atomic::fence(Ordering::SeqCst);
    }
    queue.avail_idx(mem, Ordering::Acquire).is_ok_and(|now| now != avail)
}
