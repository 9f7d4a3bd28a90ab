//! The few legacy devices the core emulates itself: the serial console,
//! the power registers and, when asked for, the boot timer. (Everything else
//! a guest uses is a virtio device.)

pub mod boot_timer;
pub mod power;
pub mod serial;
