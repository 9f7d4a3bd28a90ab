//! virtio-console (device ID 3): one port (`hvc0` in a Linux guest), no multiport, no console
//! size, no emergency write.
//!
//! Two queues: 0 receives (host → guest), 1 transmits (guest → host). The host side is a
//! listening unix socket (one client at a time is the console), a pseudo-terminal, or the
//! core's standard input and output ([`host`]); whoever runs the device opens it — the core,
//! which hands a compartment only the descriptors, so that a restarted compartment serves the
//! same socket or terminal ([`config::ConsoleHost`]). How bytes cross, what waits when nobody
//! reads, and what is dropped: [`port`].
//!
//! **Restarts.** Neither queue keeps an inflight region: a successor starts each queue at the
//! used ring's index, so receive buffers the predecessor held come back to it, and a transmit
//! buffer it took and had not returned is written again. What the predecessor held in its
//! memory is lost: guest output waiting for the host (at most [`port::OUTPUT_MAX`] bytes) and
//! input it had read and not yet given to the guest (at most a read of 4 KiB). The connected
//! client is not: the compartment tells the core of it (`startup`'s `uses`), the core keeps a
//! descriptor of it and hands it to the successor with the others, so the client's connection
//! survives, and what it sent meanwhile waits in the socket.

pub mod config;
pub mod device;
pub mod host;
pub mod port;

pub use config::{ConsoleConfig, ConsoleHost};
pub use device::ConsoleDevice;
pub use host::HostEnds;

#[cfg(test)]
mod tests;
