//! Virtio 1.x drivers over the virtio-mmio transport (version 2, "modern").
//!
//! - [`ring`]: the split virtqueue's bookkeeping (host-tested);
//! - `mmio`: the transport's registers, device initialisation and feature
//!   negotiation;
//! - `queue`: a ring wired to its transport — notification through the
//!   QueueNotify register (an ioeventfd under Bulkhead, so no exit to the
//!   VMM) and completion by polling the used ring or by interrupt;
//! - `blk`, `net`, `console`, `rng`, `fs`, `vsock`: the device drivers.
//!
//! This module holds the numbers the specification (virtio 1.2) fixes.

#[cfg(bulkhead_guest)]
pub mod blk;
#[cfg(bulkhead_guest)]
pub mod console;
#[cfg(bulkhead_guest)]
pub mod fs;
#[cfg(bulkhead_guest)]
pub mod mmio;
#[cfg(bulkhead_guest)]
pub mod net;
#[cfg(bulkhead_guest)]
pub mod queue;
pub mod ring;
#[cfg(bulkhead_guest)]
pub mod rng;
#[cfg(bulkhead_guest)]
pub mod vsock;

/// Device IDs (section 5).
pub const ID_NET: u32 = 1;
pub const ID_BLOCK: u32 = 2;
pub const ID_CONSOLE: u32 = 3;
pub const ID_RNG: u32 = 4;
pub const ID_VSOCK: u32 = 19;
pub const ID_FS: u32 = 26;

/// A device ID's name for reports.
pub fn device_name(id: u32) -> &'static str {
    match id {
        0 => "none",
        ID_NET => "net",
        ID_BLOCK => "blk",
        ID_CONSOLE => "console",
        ID_RNG => "rng",
        5 => "balloon",
        9 => "9p",
        16 => "gpu",
        18 => "input",
        ID_VSOCK => "vsock",
        ID_FS => "fs",
        _ => "other",
    }
}

/// Device status bits (section 2.1).
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    pub const FAILED: u32 = 128;
}

/// Feature bits common to all devices (section 6).
pub const F_VERSION_1: u64 = 1 << 32;

/// Virtio-blk (section 5.2).
pub mod blk_spec {
    pub const F_SIZE_MAX: u64 = 1 << 1;
    pub const F_SEG_MAX: u64 = 1 << 2;
    pub const F_RO: u64 = 1 << 5;
    pub const F_BLK_SIZE: u64 = 1 << 6;
    pub const F_FLUSH: u64 = 1 << 9;
    pub const T_IN: u32 = 0;
    pub const T_OUT: u32 = 1;
    pub const T_FLUSH: u32 = 4;
    pub const S_OK: u8 = 0;
    pub const S_IOERR: u8 = 1;
    pub const S_UNSUPP: u8 = 2;
    /// Requests address the disk in 512-byte sectors whatever its block size.
    pub const SECTOR: u64 = 512;

    /// A request status's name for reports.
    pub fn status_name(s: u8) -> &'static str {
        match s {
            S_OK => "ok",
            S_IOERR => "ioerr",
            S_UNSUPP => "unsupp",
            _ => "invalid",
        }
    }
}

/// Virtio-net (section 5.1).
pub mod net_spec {
    pub const F_MAC: u64 = 1 << 5;
    pub const F_STATUS: u64 = 1 << 16;
    /// `struct virtio_net_hdr` with VIRTIO_F_VERSION_1: flags, gso_type,
    /// hdr_len, gso_size, csum_start, csum_offset, num_buffers (all zero
    /// when sending without offloads).
    pub const HDR_LEN: usize = 12;
    pub const RX_QUEUE: u16 = 0;
    pub const TX_QUEUE: u16 = 1;
}
