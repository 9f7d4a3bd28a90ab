//! virtio-rng (device ID 4): fills each device-writable buffer the guest offers with bytes from
//! the host's `getrandom(2)`, at most [`device::MAX_BYTES_PER_REQUEST`] per request.

pub mod config;
pub mod device;

pub use config::RngConfig;
pub use device::RngDevice;
