//! virtio-net (device ID 1) over a tap device.
//!
//! Two queues: 0 receives (tap → guest), 1 transmits (guest → tap). The header is the
//! VERSION_1 one (12 bytes, with `num_buffers`). Features: `MAC` (the configuration space holds
//! the MAC), `STATUS` (link always up) and `MRG_RXBUF` (a packet may span several receive
//! buffers). No offloads are offered: every packet crosses fully checksummed and unsegmented.
//!
//! The tap is opened by whoever has the privilege to (the core, or `--tap NAME` by hand) and
//! only its file descriptor is used: the backend needs neither the host's network namespace nor
//! any capability. A tap opened with `IFF_VNET_HDR` carries the header across; one without it
//! carries bare frames, and the header is stripped or added here ([`tap`]).
//!
//! Receiving never loses the tap's readiness: a packet read from the tap while the guest has
//! no receive buffer is kept, the worker stops watching the tap, and the guest's next kick
//! (it added buffers) delivers it and resumes watching.

pub mod config;
pub mod device;
pub mod tap;

pub use config::NetConfig;
pub use device::NetDevice;

#[cfg(test)]
mod tests;
