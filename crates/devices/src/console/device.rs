//! The console device and its two queue handlers.

use std::fs::File;
use std::os::fd::RawFd;
use std::sync::Arc;

use super::config::ConsoleConfig;
use super::host::HostEnds;
use super::port::{Port, CLIENT_NAME};
use crate::backend::{Progress, QueueContext, QueueHandler};
use crate::startup::Startup;
use crate::{Device, DeviceError, DeviceKind};

/// The receive queue (host → guest) of port 0.
const RX: usize = 0;
/// The transmit queue (guest → host) of port 0.
const TX: usize = 1;
/// The most input read from the host at a time.
const READ_CHUNK: usize = 4096;
/// The most reads of input in one pass of the receive queue.
const READS_PER_PASS: usize = 64;
/// The most output taken from one transmit buffer; the rest of a larger one is dropped (a
/// driver writes a console's output a page at a time).
pub const MAX_BYTES_PER_BUFFER: u64 = 1 << 20;

/// A virtio-console device with one port.
pub struct ConsoleDevice {
    port: Arc<Port>,
}

impl ConsoleDevice {
    /// Opens the host side `cfg` names (see [`HostEnds::open`]), with `client` connected: the
    /// one a predecessor had, handed over.
    pub fn open(cfg: &ConsoleConfig, client: Option<File>) -> Result<ConsoleDevice, DeviceError> {
        let ends = HostEnds::open(&cfg.host)?;
        if client.is_some() && !matches!(ends, HostEnds::Listener { .. }) {
            return Err(DeviceError::Config("only a console on a socket has a client".into()));
        }
        Ok(ConsoleDevice { port: Arc::new(Port::new(ends, client)?) })
    }

    /// Guest output dropped so far (no room while nobody read it, or an output that failed).
    pub fn dropped(&self) -> u64 {
        self.port.dropped()
    }

    /// The host side both queues share.
    #[cfg(test)]
    pub(crate) fn port(&self) -> Arc<Port> {
        self.port.clone()
    }
}

impl Device for ConsoleDevice {
    fn kind(&self) -> DeviceKind {
        DeviceKind::Console
    }

    fn num_queues(&self) -> usize {
        2
    }

    /// No size, no multiple ports, no emergency write.
    fn features(&self) -> u64 {
        0
    }

    /// Bytes in flight are not resubmitted: the receive queue's buffers come back to a
    /// successor (it starts at the used ring's index), and output taken is written at once.
    fn supports_inflight(&self) -> bool {
        false
    }

    /// `cols`, `rows`, `max_nr_ports`, `emerg_wr`: none is offered (no feature), all zero.
    fn config(&self) -> Vec<u8> {
        vec![0; 12]
    }

    fn files(&self) -> Vec<RawFd> {
        self.port.fds()
    }

    /// The connected client: the core keeps it, so that the connection outlives this process.
    fn handover(&self) -> Vec<bulkhead_disk::OpenFile> {
        let client = self.port.client_fd();
        client
            .map(|fd| bulkhead_disk::OpenFile { path: CLIENT_NAME.into(), writable: true, fd })
            .into_iter()
            .collect()
    }

    fn tell_core(&self, core: Startup) {
        self.port.tell_core(core);
    }

    fn queue_handler(
        &self,
        queue: usize,
        _acked_features: u64,
    ) -> Result<Box<dyn QueueHandler>, DeviceError> {
        match queue {
            RX => Ok(Box::new(RxQueue::new(self.port.clone()))),
            TX => Ok(Box::new(TxQueue::new(self.port.clone()))),
            _ => Err(DeviceError::Config(format!(
                "the console has no queue {queue} (one port, no control queues)"
            ))),
        }
    }
}

/// Receive: host → guest. Input is read only when the guest has a buffer for it; what was read
/// and does not fit the buffers there are waits here for the next, and the host's input is not
/// watched meanwhile.
pub struct RxQueue {
    port: Arc<Port>,
    buf: Vec<u8>,
    /// Bytes read from the host and not yet given to the guest: `buf[start..end]`.
    start: usize,
    end: usize,
}

impl RxQueue {
    /// A receive handler over `port`.
    pub fn new(port: Arc<Port>) -> RxQueue {
        RxQueue { port, buf: vec![0; READ_CHUNK], start: 0, end: 0 }
    }

    /// Gives what waits to the guest's buffers; false when they ran out first.
    fn deliver(&mut self, q: &mut QueueContext<'_>) -> bool {
        while self.start < self.end {
            let Some(chain) = q.pop() else { return false };
            if chain.error.is_some() || chain.writable_len() == 0 {
                log::debug!("bad receive buffer at {}: {:?}", chain.head, chain.error);
                q.complete(chain.head, 0);
                continue;
            }
            let mut writer = chain.writer();
            let n = (writer.remaining() as usize).min(self.end - self.start);
            let written = writer.write_all(q.memory(), &self.buf[self.start..self.start + n]);
            q.complete(chain.head, if written { n as u32 } else { 0 });
            if written {
                self.start += n;
            }
        }
        true
    }
}

impl QueueHandler for RxQueue {
    fn process(&mut self, q: &mut QueueContext<'_>) -> Progress {
        let port = self.port.clone();
        let mut port = port.lock();
        let woken = port.woken();
        port.set_input_paused(false);
        port.accept();
        port.flush();
        for _ in 0..READS_PER_PASS {
            if self.start == self.end {
                let n = port.read(&mut self.buf, woken.input_hung_up);
                if n == 0 {
                    return Progress::Paused;
                }
                (self.start, self.end) = (0, n);
            }
            if !self.deliver(q) {
                port.set_input_paused(true);
                return Progress::Starved;
            }
        }
        Progress::Drained
    }

    /// The port's epoll set: the listener, the input, the output, as the port needs them.
    fn event_fd(&self) -> Option<RawFd> {
        Some(self.port.epoll_fd())
    }

    /// No polling: console bytes come at human speed, or in bursts a wake-up serves whole.
    fn poll_before_sleep(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
}

/// Transmit: guest → host. Every buffer is taken at once and returned empty; its bytes go to
/// the host, or wait in the port (see `port.rs`).
pub struct TxQueue {
    port: Arc<Port>,
    buf: Vec<u8>,
}

impl TxQueue {
    /// A transmit handler over `port`.
    pub fn new(port: Arc<Port>) -> TxQueue {
        TxQueue { port, buf: Vec::new() }
    }
}

impl QueueHandler for TxQueue {
    fn process(&mut self, q: &mut QueueContext<'_>) -> Progress {
        let port = self.port.clone();
        let mut port = port.lock();
        while let Some(chain) = q.pop() {
            if chain.error.is_some() {
                log::debug!("skipping a malformed chain at {}: {:?}", chain.head, chain.error);
            } else {
                let len = chain.readable_len().min(MAX_BYTES_PER_BUFFER) as usize;
                self.buf.resize(len, 0);
                if chain.reader().read_exact(q.memory(), &mut self.buf) {
                    port.write(&self.buf);
                }
            }
            q.complete(chain.head, 0);
        }
        Progress::Drained
    }

    /// No polling (see the receive queue).
    fn poll_before_sleep(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
}
