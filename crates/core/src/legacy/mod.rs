//! The few legacy devices the core emulates itself: the serial console and
//! the power registers. (Everything else a guest uses is a virtio device.)

pub mod power;
pub mod serial;
