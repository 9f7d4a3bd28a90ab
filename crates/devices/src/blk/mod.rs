//! virtio-blk (device ID 2) over a [`bulkhead_disk::DiskImage`]: raw, qcow2 or VMDK.
//!
//! Requests: IN, OUT, FLUSH, GET_ID, DISCARD, WRITE_ZEROES ([`request`]). Features:
//! `SIZE_MAX`, `SEG_MAX`, `BLK_SIZE`, `FLUSH`, `MQ`, `DISCARD`, `WRITE_ZEROES`, and `RO` for a
//! read-only disk ([`config`]). Each queue's requests are carried out one at a time, in order,
//! on that queue's worker thread; the image serves several queues at once through `&self`.

pub mod config;
pub mod device;
pub mod request;

pub use config::{BlkConfig, DiskSwap};
pub use device::BlkDevice;

#[cfg(test)]
mod tests;
